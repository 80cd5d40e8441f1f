#!/usr/bin/env python3
"""test_corrupt_sweep.py — corrupted checkpoints never crash llmint8.

A checkpoint is untrusted input. This test copies the opt-tiny and bloom-tiny fixtures into
temporary directories, breaks them in many ways (truncation at many offsets, bit flips in the
safetensors header, absurd header lengths, offsets past the end, overlapping tensors, shapes
that do not match the bytes, unknown dtypes, duplicate names, an 8-bit checkpoint with a
wrong SCB, config.json with missing / negative / zero / huge / inconsistent dimensions, ...),
does the same to PyTorch .bin checkpoints (truncations and byte flips of the files PyTorch wrote
in tests/data/fixtures-bin; archives written by torchbin_writer.py with forbidden pickle globals,
deep nesting, views outside their storage, wrong storage sizes and types, compressed members)
and runs `llmint8 info DIR` (which loads and validates everything) and, for some cases,
`llmint8 ppl DIR --ids FILE` (which also runs the model). Every case must end with:

  * exit status 1..125 and "llmint8: error: ..." naming the file (or, for the cases marked
    "may load", exit 0: a bit flip can leave a valid file),
  * no signal, no sanitizer report, no hang,
  * no huge allocation before validation: the process runs under RLIMIT_AS = 2 GB, and an
    "out of memory" error counts as a failure (it means something tried to allocate what the
    file claims before checking it). Under LLMINT8_TEST_SANITIZER=1 the rlimit is off (ASan
    reserves terabytes of address space) and ASan's max_allocation_size_mb=2048 plays its role;
    fewer random cases run.

Run from the repository root: python3 tests/test_corrupt_sweep.py BUILD/llmint8
LLMINT8_SWEEP_SEED=N changes the random cases (the seed is printed).
"""
import json
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import zipfile

import torchbin_writer as tw
from clitest import check, finish

BIN = os.path.abspath(sys.argv[1])
FIX = "tests/data/fixtures"
SANITIZER = os.environ.get("LLMINT8_TEST_SANITIZER") == "1"
SEED = int(os.environ.get("LLMINT8_SWEEP_SEED", "20240611"))
TIMEOUT = 120 if SANITIZER else 60
MEM_LIMIT = 2 << 30
SANITIZER_WORDS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer", "runtime error:",
                   "MemorySanitizer", "ThreadSanitizer")
rng = random.Random(SEED)


def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT, MEM_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run(*args, timeout=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if SANITIZER:
        env["ASAN_OPTIONS"] = ":".join(x for x in (env.get("ASAN_OPTIONS", ""), "max_allocation_size_mb=2048",
                                                   "allocator_may_return_null=0") if x)
        env.setdefault("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")
    try:
        p = subprocess.run([BIN, *args], capture_output=True, timeout=timeout or TIMEOUT, env=env,
                           preexec_fn=None if SANITIZER else limit_memory)
    except subprocess.TimeoutExpired:
        return None, "", f"timed out after {timeout or TIMEOUT} s"
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def describe(rc):
    if rc is None:
        return "hang"
    if rc < 0:
        return f"killed by signal {signal.Signals(-rc).name}"
    return f"exit {rc}"


def judge(name, rc, err, names, may_load):
    """The rules every case obeys; `names` are words the error must contain (the file)."""
    tail = err.strip()[-400:]
    if rc is None or rc < 0 or rc > 125:
        return check(name, False, f"{describe(rc)}; stderr {tail!r}")
    if any(w in err for w in SANITIZER_WORDS):
        return check(name, False, f"sanitizer report: {tail!r}")
    if rc == 0:
        return check(name, may_load, "exit 0 on a broken checkpoint")
    low = err.lower()
    if "out of memory" in low or "cannot allocate" in low:
        return check(name, False, f"an allocation failed before validation: {tail!r}")
    ok = "llmint8: error:" in err and all(n in err for n in names)
    check(name, ok, f"{describe(rc)}; expected an error naming {names}: {tail!r}")


# ---- safetensors surgery -------------------------------------------------------------------

def read_st(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def pack_header(header_text):
    return struct.pack("<Q", len(header_text)) + header_text


def write_st(path, header, data, pad_to=8):
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad_to:
        text += b" " * (-len(text) % pad_to)
    open(path, "wb").write(pack_header(text) + data)


def tensors(header):
    return [k for k in header if k != "__metadata__"]


class Case:
    """A fresh copy of a fixture directory to break."""

    def __init__(self, root, fixture, label):
        self.dir = os.path.join(root, label.replace(" ", "_").replace("/", "_")[:80])
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        for f in os.listdir(os.path.join(FIX, fixture)):
            if f.endswith(".json") and f != "golden.json" or f.endswith(".safetensors"):
                shutil.copy(os.path.join(FIX, fixture, f), self.dir)
        self.st = os.path.join(self.dir, "model.safetensors")
        self.cfg = os.path.join(self.dir, "config.json")


def sweep(root, fixture, label, mutate, names=("model.safetensors",), may_load=False, ppl=False, ids=None,
          timeout=None):
    """Copies `fixture`, applies mutate(case), runs info (and ppl --ids), judges both."""
    case = Case(root, fixture, f"{fixture}-{label}")
    mutate(case)
    rc, out, err = run("info", case.dir, timeout=timeout)
    judge(f"{fixture}: {label}: info", rc, err, names, may_load)
    if ppl:
        ids_file = os.path.join(case.dir, "prompt.ids")
        open(ids_file, "w").write(ids or "2 10 20 30 40 50 60 70\n")
        rc, out, err = run("ppl", case.dir, "--ids", ids_file)
        judge(f"{fixture}: {label}: ppl --ids", rc, err, names, may_load)
    shutil.rmtree(case.dir, ignore_errors=True)


def edit_header(fn):
    """mutate() that applies fn(header, data) -> (header, data) to model.safetensors."""
    def mutate(case):
        h, d = read_st(case.st)
        h, d = fn(h, d)
        write_st(case.st, h, d)
    return mutate


def raw_header(text):
    """mutate() that replaces the header with the given bytes (data kept)."""
    def mutate(case):
        h, d = read_st(case.st)
        open(case.st, "wb").write(pack_header(text) + d)
    return mutate


def set_field(tensor_index, field, value):
    def fn(h, d):
        h[tensors(h)[tensor_index]][field] = value
        return h, d
    return fn


def edit_config(**changes):
    """mutate() that sets (value) or removes (None via DELETE) fields of config.json."""
    def mutate(case):
        cfg = json.load(open(case.cfg))
        for k, v in changes.items():
            if v is DELETE:
                cfg.pop(k, None)
            else:
                cfg[k] = v
        json.dump(cfg, open(case.cfg, "w"))
    return mutate


DELETE = object()


# ---- an 8-bit checkpoint made from opt-tiny (SPEC §2.1: weight I8 [out,in], SCB F32 [out],
# weight_format U8 scalar) ---------------------------------------------------------------------

PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2")


def make_int8(case, scb_dtype="F32", scb_extra=0, weight_format=0, scb_value=None, drop_scb=False,
              fmt_dtype="U8"):
    h, d = read_st(case.st)
    nh, nd = {"__metadata__": {"format": "pt"}}, bytearray()

    def add(name, dtype, shape, blob):
        nh[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(nd), len(nd) + len(blob)]}
        nd.extend(blob)

    for name in tensors(h):
        t = h[name]
        b, e = t["data_offsets"]
        blob = d[b:e]
        prefix = name[:-len(".weight")] if name.endswith(".weight") else None
        if prefix and prefix.split("layers.")[-1].split(".", 1)[-1] in PROJ:
            rows, cols = t["shape"]
            w = struct.unpack(f"<{rows * cols}e", blob)
            q, scb = bytearray(), []
            for r in range(rows):
                row = w[r * cols:(r + 1) * cols]
                amax = max(abs(x) for x in row) or 1.0
                scb.append(amax)
                q.extend(struct.pack(f"<{cols}b", *(max(-127, min(127, round(127 * x / amax))) for x in row)))
            add(name, "I8", [rows, cols], bytes(q))
            if drop_scb:
                continue
            n = rows + scb_extra
            vals = [scb_value if scb_value is not None else s for s in (scb + scb[:scb_extra])[:n]]
            fmt = {"F32": "f", "F16": "e", "I8": "b", "U8": "B", "BF16": None}[scb_dtype]
            if fmt is None:
                sb = b"".join(struct.pack("<f", v)[2:] for v in vals)
            elif fmt in "bB":
                sb = struct.pack(f"<{n}{fmt}", *(max(0, min(127, int(v))) for v in vals))
            else:
                sb = struct.pack(f"<{n}{fmt}", *vals)
            add(prefix + ".SCB", scb_dtype, [n], sb)
            if weight_format is not None:
                fb = struct.pack("<B", weight_format) if fmt_dtype == "U8" else struct.pack("<f", weight_format)
                add(prefix + ".weight_format", fmt_dtype, [], fb)
        else:
            add(name, t["dtype"], t["shape"], blob)
    write_st(case.st, nh, bytes(nd))
    cfg = json.load(open(case.cfg))
    cfg["quantization_config"] = {"_load_in_4bit": False, "_load_in_8bit": True, "llm_int8_threshold": 6.0,
                                  "load_in_4bit": False, "load_in_8bit": True, "quant_method": "bitsandbytes",
                                  "llm_int8_skip_modules": None, "llm_int8_has_fp16_weight": False}
    json.dump(cfg, open(case.cfg, "w"))


# ---- the sweep ---------------------------------------------------------------------------

def container_cases(root, fixture):
    path = os.path.join(FIX, fixture, "model.safetensors")
    h0, d0 = read_st(path)
    hlen = struct.unpack("<Q", open(path, "rb").read(8))[0]
    size = 8 + hlen + len(d0)

    # The untouched fixture loads (otherwise every case below proves nothing).
    rc, _, err = run("info", os.path.join(FIX, fixture))
    check(f"{fixture}: unmodified fixture loads", rc == 0, err[-300:])

    # Truncation inside the length, inside the header, at its end, inside the data.
    cuts = [0, 1, 4, 7, 8, 9, 8 + hlen // 3, 8 + hlen // 2, 8 + hlen - 1, 8 + hlen, 8 + hlen + 1,
            8 + hlen + len(d0) // 2, size - 2, size - 1]
    n_random = 4 if SANITIZER else 16
    cuts += sorted(rng.randrange(0, size) for _ in range(n_random))
    for cut in cuts:
        def trunc(case, cut=cut):
            with open(case.st, "r+b") as f:
                f.truncate(cut)
        sweep(root, fixture, f"truncated at {cut} of {size}", trunc)

    # Header length near 2^64 and other absurd lengths.
    for n in (2**64 - 1, 2**64 - 8, 2**63, 2**63 - 1, 2**32, 2**32 + hlen, 100_000_001, size, size - 8 + 1,
              hlen + 1, hlen - 1, 0, 1):
        def bad_len(case, n=n):
            raw = bytearray(open(case.st, "rb").read())
            raw[:8] = struct.pack("<Q", n)
            open(case.st, "wb").write(raw)
        # hlen - 1 drops the last padding space: a valid file whose data starts a byte earlier.
        sweep(root, fixture, f"header length {n}", bad_len, may_load=n == hlen - 1)

    # Random bit flips in the header (a flip may leave a valid file: then info may succeed).
    n_flips = 12 if SANITIZER else 60
    for _ in range(n_flips):
        pos, bit = rng.randrange(8, 8 + hlen), rng.randrange(8)
        def flip(case, pos=pos, bit=bit):
            raw = bytearray(open(case.st, "rb").read())
            raw[pos] ^= 1 << bit
            open(case.st, "wb").write(raw)
        sweep(root, fixture, f"bit {bit} of header byte {pos - 8} flipped", flip, may_load=True, names=())
    for _ in range(4 if SANITIZER else 12):   # flips in the length itself
        pos, bit = rng.randrange(0, 8), rng.randrange(8)
        def flip_len(case, pos=pos, bit=bit):
            raw = bytearray(open(case.st, "rb").read())
            raw[pos] ^= 1 << bit
            open(case.st, "wb").write(raw)
        sweep(root, fixture, f"bit {bit} of length byte {pos} flipped", flip_len)

    last = len(tensors(h0)) - 1
    # Offsets past the end, reversed, huge, negative, not numbers.
    for label, offs in (("end past the data", lambda b, e: [b, len(d0) + 1]),
                        ("begin and end past the data", lambda b, e: [len(d0) + 64, len(d0) + 64 + (e - b)]),
                        ("begin > end", lambda b, e: [e, b]),
                        ("offsets near 2^64", lambda b, e: [2**64 - 16, 2**64 - 16 + (e - b)]),
                        ("end = 2^64 - 1", lambda b, e: [b, 2**64 - 1]),
                        ("offsets 2^63", lambda b, e: [2**63, 2**63 + (e - b)]),
                        ("negative begin", lambda b, e: [-(e - b), 0]),
                        ("float offsets", lambda b, e: [b + 0.5, e + 0.5]),
                        ("string offsets", lambda b, e: [str(b), str(e)]),
                        ("one offset", lambda b, e: [b]),
                        ("three offsets", lambda b, e: [b, e, e]),
                        ("offsets missing", None)):
        for idx in (0, last):
            def fn(h, d, offs=offs, idx=idx):
                t = h[tensors(h)[idx]]
                if offs is None:
                    del t["data_offsets"]
                else:
                    t["data_offsets"] = offs(*t["data_offsets"])
                return h, d
            sweep(root, fixture, f"tensor {idx}: {label}", edit_header(fn))

    # Overlapping tensors: the second one points into the first; and an exact alias.
    def overlap(h, d):
        a, b = tensors(h)[0], tensors(h)[1]
        ab, ae = h[a]["data_offsets"]
        n = h[b]["data_offsets"][1] - h[b]["data_offsets"][0]
        h[b]["data_offsets"] = [ab, ab + n] if n <= ae - ab else [ae - 2, ae - 2 + n]
        return h, d
    sweep(root, fixture, "overlapping tensors", edit_header(overlap), names=("model.safetensors", "overlap"))

    def alias(h, d):
        names = [n for n in tensors(h) if h[n]["shape"] == h[tensors(h)[0]]["shape"]]
        a = names[0]
        for n in tensors(h):
            if n != a and h[n]["shape"] == h[a]["shape"]:
                h[n]["data_offsets"] = list(h[a]["data_offsets"])
                break
        else:   # no twin: overlap the first two by one element instead
            return overlap(h, d)
        return h, d
    sweep(root, fixture, "two tensors on the same bytes", edit_header(alias))

    # Shapes that do not match the byte length.
    big = [t for t in tensors(h0) if len(h0[t]["shape"]) == 2][0]
    shape_cases = (("one more row", lambda s: [s[0] + 1] + s[1:]),
                   ("one fewer column", lambda s: s[:-1] + [s[-1] - 1]),
                   ("negative dim", lambda s: [-s[0]] + s[1:]),
                   ("dim 2^62", lambda s: [2**62] + s[1:]),
                   # (2^32+1)(2^32-1) = 2^64-1 = -1 mod 2^64, twice: the product wraps to the real one
                   ("product wraps around 2^64 to the right size", lambda s: [2**32 + 1, 2**32 - 1] * 2 + s),
                   ("product overflows 2^64", lambda s: [2**32, 2**32] + s),
                   ("9 dims", lambda s: [1] * 7 + s),
                   ("zero dim", lambda s: [0] + s[1:]),
                   ("float dim", lambda s: [s[0] + 0.5] + s[1:]),
                   ("string dim", lambda s: [str(s[0])] + s[1:]),
                   ("shape not a list", lambda s: s[0]),
                   ("shape missing", None))
    for label, fn_shape in shape_cases:
        def fn(h, d, fn_shape=fn_shape):
            if fn_shape is None:
                del h[big]["shape"]
            else:
                h[big]["shape"] = fn_shape(h[big]["shape"])
            return h, d
        sweep(root, fixture, f"{big}: {label}", edit_header(fn))

    # A tensor the model needs with the right byte length but the wrong shape (transposed).
    def transpose(h, d):
        t = h[big]
        t["shape"] = t["shape"][::-1]
        return h, d
    sweep(root, fixture, f"{big}: transposed shape", edit_header(transpose), names=(big.split(".")[-2],))

    # Unknown / wrong dtypes (byte length kept where the element size allows).
    for dt in ("F64", "I64", "BOOL", "f16", "", "F8_E4M3", "Q4", 5, None):
        sweep(root, fixture, f"dtype {dt!r}", edit_header(set_field(0, "dtype", dt)))
    sweep(root, fixture, "F16 tensor relabelled BF16", edit_header(set_field(0, "dtype", "BF16")), may_load=True)
    sweep(root, fixture, "F16 tensor relabelled I8", edit_header(set_field(0, "dtype", "I8")))

    # Duplicate names (JSON allows them textually; the last would silently win in most parsers).
    def dup(case):
        h, d = read_st(case.st)
        names = tensors(h)
        text = json.dumps(h, separators=(",", ":"))
        a = json.dumps(names[0])
        entry = json.dumps(h[names[1]], separators=(",", ":"))
        text = text[:-1] + "," + a + ":" + entry + "}"
        b = text.encode()
        b += b" " * (-len(b) % 8)
        open(case.st, "wb").write(pack_header(b) + d)
    sweep(root, fixture, "duplicate tensor name", dup, names=("model.safetensors", "twice"))

    def dup_meta(case):
        h, d = read_st(case.st)
        text = json.dumps(h, separators=(",", ":"))
        text = text[:-1] + ',"__metadata__":{"format":"pt"}}'
        open(case.st, "wb").write(pack_header(text.encode()) + d)
    sweep(root, fixture, "duplicate __metadata__", dup_meta)

    # Headers that are not a JSON object of objects.
    for label, text in (("empty header", b""), ("header []", b"[]"), ("header null", b"null"),
                        ("header 'x'", b"x"), ("header with NUL", b'{"a":\x00}'),
                        ("header not UTF-8", b'{"\xff\xfe":{"dtype":"F16","shape":[0],"data_offsets":[0,0]}}'),
                        ("entry is a number", b'{"w":5}'), ("metadata not strings", b'{"__metadata__":{"a":1}}'),
                        ("metadata a list", b'{"__metadata__":[]}'),
                        ("deeply nested", b"[" * 100000 + b"]" * 100000),
                        ("deeply nested object", b'{"a":' * 50000 + b"1" + b"}" * 50000),
                        ("unterminated string", b'{"a'), ("huge number", b'{"w":{"dtype":"F16","shape":[1e999],'
                                                          b'"data_offsets":[0,2]}}')):
        sweep(root, fixture, label, raw_header(text))
    # An empty header object: a valid file without tensors, so the model is missing them all.
    sweep(root, fixture, "header {} (no tensors)", raw_header(b"{}"), names=())

    # Misaligned data (an odd header length): still a valid file; must load without UB.
    def misalign(case):
        h, d = read_st(case.st)
        text = json.dumps(h, separators=(",", ":")).encode()
        text += b" " * ((-len(text) % 8) + 1)   # 8k + 1 bytes: every tensor starts at an odd address
        open(case.st, "wb").write(pack_header(text) + d)
    sweep(root, fixture, "odd header length (misaligned tensors)", misalign, may_load=True, ppl=True)

    # Files that are not files.
    def empty_file(case):
        open(case.st, "wb").close()
    sweep(root, fixture, "empty model.safetensors", empty_file)

    def directory(case):
        os.remove(case.st)
        os.mkdir(case.st)
    sweep(root, fixture, "model.safetensors is a directory", directory)

    def devzero(case):
        os.remove(case.st)
        os.symlink("/dev/zero", case.st)
    sweep(root, fixture, "model.safetensors -> /dev/zero", devzero)

    def fifo(case):
        os.remove(case.st)
        os.mkfifo(case.st)
    # open() of a FIFO blocks until someone writes to it: the loader must check the file type first.
    sweep(root, fixture, "model.safetensors is a FIFO", fifo, timeout=10)

    def missing(case):
        os.remove(case.st)
    sweep(root, fixture, "model.safetensors missing", missing, names=("model.safetensors",))


def config_cases(root, fixture):
    opt = fixture.startswith("opt")
    hidden = "hidden_size"
    heads = "num_attention_heads" if opt else "n_head"
    layers = "num_hidden_layers" if opt else "n_layer"
    dims = [hidden, heads, layers, "vocab_size"] + (["ffn_dim", "max_position_embeddings", "word_embed_proj_dim"]
                                                     if opt else [])
    values = [0, -1, -64, 10**12, 2**31, 2**31 - 1, 2**63, 1e308, 64.5, "64", True, [64], {"a": 1}]
    if SANITIZER:
        values = [0, -1, 10**12, 2**31 - 1, 64.5, "64"]
    for field in dims:
        sweep(root, fixture, f"config {field} missing", edit_config(**{field: DELETE}),
              names=("config.json",) if field in (hidden, heads, layers, "vocab_size") else (),
              may_load=field in ("word_embed_proj_dim", "max_position_embeddings", "ffn_dim"))
        for v in values:
            # 2^31 - 1 may pass the config's range check and fail on the tensors instead.
            names = () if v == 2**31 - 1 else ("config.json",)
            sweep(root, fixture, f"config {field} = {json.dumps(v)}", edit_config(**{field: v}), names=names)
    # Heads not dividing hidden; consistent dims that do not match the tensors.
    sweep(root, fixture, "config heads 5 do not divide hidden 64", edit_config(**{heads: 5}), names=("config.json",))
    sweep(root, fixture, "config heads 128 > hidden 64", edit_config(**{heads: 128}), names=("config.json",))
    sweep(root, fixture, "config hidden 128 (tensors are 64)", edit_config(**{hidden: 128}), names=("model.safetensors",))
    sweep(root, fixture, "config 3 layers (file has 2)", edit_config(**{layers: 3}), names=("missing",))
    sweep(root, fixture, "config 1 layer (file has 2)", edit_config(**{layers: 1}), may_load=True, ppl=True)
    sweep(root, fixture, "config vocab 999 (file has 1000)", edit_config(vocab_size=999), names=("embed",))
    if not opt:
        sweep(root, fixture, "config n_embed disagrees with hidden_size", edit_config(n_embed=32), names=("config.json",))
    sweep(root, fixture, "config model_type gpt2", edit_config(model_type="gpt2"), names=("config.json", "gpt2"))
    sweep(root, fixture, "config model_type missing", edit_config(model_type=DELETE), names=("config.json",))
    sweep(root, fixture, "config model_type 5", edit_config(model_type=5), names=("config.json",))
    sweep(root, fixture, "config torch_dtype 10 KB string", edit_config(torch_dtype="x" * 10000), may_load=True)
    sweep(root, fixture, "config activation 'swish'", edit_config(activation_function="swish"),
          names=("config.json",), may_load=not opt)
    sweep(root, fixture, "config layer_norm_epsilon -1", edit_config(layer_norm_epsilon=-1), may_load=True, names=())
    sweep(root, fixture, "config bos_token_id 10^9", edit_config(bos_token_id=10**9), may_load=True, ppl=True)
    sweep(root, fixture, "config eos_token_id -7", edit_config(eos_token_id=-7), may_load=True, ppl=True)
    for q in ({"quant_method": "bitsandbytes", "load_in_4bit": True}, {"quant_method": "gptq", "bits": 4},
              {"quant_method": "bitsandbytes", "load_in_8bit": True, "llm_int8_threshold": -1.0},
              {"quant_method": "bitsandbytes", "load_in_8bit": True, "llm_int8_threshold": "six"},
              [], "8bit"):
        sweep(root, fixture, f"config quantization_config {json.dumps(q)}", edit_config(quantization_config=q),
              names=("config.json",) if not (isinstance(q, dict) and q.get("load_in_8bit")) else ())

    # config.json that is not a config.
    for label, text in (("empty", b""), ("[]", b"[]"), ("not JSON", b"{hidden_size: 64"),
                        ("NUL bytes", b"{\x00\x00}"), ("not UTF-8", b'{"model_type":"opt\xff"}'),
                        ("deeply nested", b"[" * 100000), ("17 MB of spaces", b" " * (17 << 20))):
        def write_cfg(case, text=text):
            open(case.cfg, "wb").write(text)
        sweep(root, fixture, f"config.json {label}", write_cfg, names=("config.json",))

    def cfg_dir(case):
        os.remove(case.cfg)
        os.mkdir(case.cfg)
    sweep(root, fixture, "config.json is a directory", cfg_dir, names=("config.json",))

    def cfg_fifo(case):
        os.remove(case.cfg)
        os.mkfifo(case.cfg)
    sweep(root, fixture, "config.json is a FIFO", cfg_fifo, names=("config.json",), timeout=10)

    def cfg_missing(case):
        os.remove(case.cfg)
    sweep(root, fixture, "config.json missing", cfg_missing, names=("config.json",))


def int8_cases(root):
    f = "opt-tiny"
    sweep(root, f, "int8 checkpoint", make_int8, may_load=True, ppl=True)
    case = Case(root, f, "int8-base")
    make_int8(case)
    rc, _, err = run("info", case.dir)
    check("opt-tiny: the int8 checkpoint made by this test loads (else the int8 cases prove little)", rc == 0,
          err[-300:])
    shutil.rmtree(case.dir)
    for dt in ("I8", "U8", "F16", "BF16"):
        sweep(root, f, f"int8 SCB dtype {dt}", lambda c, dt=dt: make_int8(c, scb_dtype=dt), names=("SCB",))
    sweep(root, f, "int8 SCB one element too many", lambda c: make_int8(c, scb_extra=1), names=("SCB",))
    sweep(root, f, "int8 SCB missing", lambda c: make_int8(c, drop_scb=True), names=("SCB",))
    for v in (1, 2, 3, 200):
        sweep(root, f, f"int8 weight_format {v}", lambda c, v=v: make_int8(c, weight_format=v),
              names=("weight_format",))
    sweep(root, f, "int8 weight_format F32", lambda c: make_int8(c, fmt_dtype="F32"), names=("weight_format",))
    sweep(root, f, "int8 without weight_format", lambda c: make_int8(c, weight_format=None), may_load=True)
    for v in (float("nan"), float("inf"), -1.0, 1e30):
        sweep(root, f, f"int8 SCB values {v}", lambda c, v=v: make_int8(c, scb_value=v), names=("SCB",))
    sweep(root, f, "int8 SCB values 0", lambda c: make_int8(c, scb_value=0.0), may_load=True, ppl=True)

    def int8_no_config(case):
        make_int8(case)
        cfg = json.load(open(case.cfg))
        del cfg["quantization_config"]
        json.dump(cfg, open(case.cfg, "w"))
    sweep(root, f, "int8 weights without quantization_config", int8_no_config, names=("I8",))

    def fp16_with_config(case):
        cfg = json.load(open(case.cfg))
        cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_8bit": True}
        json.dump(cfg, open(case.cfg, "w"))
    sweep(root, f, "16-bit weights with an 8-bit quantization_config", fp16_with_config, names=("I8",))


def sharded_cases(root):
    f = "opt-tiny-sharded"
    idx = "model.safetensors.index.json"

    def edit_index(fn):
        def mutate(case):
            p = os.path.join(case.dir, idx)
            j = json.load(open(p))
            fn(j)
            json.dump(j, open(p, "w"))
        return mutate

    first = "model.decoder.embed_tokens.weight"
    sweep(root, f, "index points outside the directory",
          edit_index(lambda j: j["weight_map"].__setitem__(first, "../../../../etc/passwd")), names=(idx,))
    sweep(root, f, "index names a missing shard",
          edit_index(lambda j: j["weight_map"].__setitem__(first, "model-00003-of-00002.safetensors")), names=("00003",))
    sweep(root, f, "index puts a tensor in the wrong shard",
          edit_index(lambda j: j["weight_map"].__setitem__(first, "model-00002-of-00002.safetensors")),
          names=("00002",))
    sweep(root, f, "index weight_map empty", edit_index(lambda j: j.__setitem__("weight_map", {})), names=(idx,))
    sweep(root, f, "index weight_map a list", edit_index(lambda j: j.__setitem__("weight_map", [])), names=(idx,))
    sweep(root, f, "index shard name a number", edit_index(lambda j: j["weight_map"].__setitem__(first, 7)),
          names=(idx,))

    def idx_text(case):
        open(os.path.join(case.dir, idx), "wb").write(b"{\"weight_map\": {")
    sweep(root, f, "index not JSON", idx_text, names=(idx,))

    def dup_across(case):   # the same tensor stored in both shards
        p1 = os.path.join(case.dir, "model-00001-of-00002.safetensors")
        p2 = os.path.join(case.dir, "model-00002-of-00002.safetensors")
        h1, d1 = read_st(p1)
        h2, d2 = read_st(p2)
        t = h1["model.decoder.final_layer_norm.bias"]
        b, e = t["data_offsets"]
        h2["model.decoder.final_layer_norm.bias"] = {"dtype": t["dtype"], "shape": t["shape"],
                                                     "data_offsets": [len(d2), len(d2) + e - b]}
        write_st(p2, h2, d2 + d1[b:e])
    sweep(root, f, "a tensor stored in two shards", dup_across, names=("twice",))

    def trunc_shard(case):
        p = os.path.join(case.dir, "model-00002-of-00002.safetensors")
        with open(p, "r+b") as fh:
            fh.truncate(os.path.getsize(p) // 2)
    sweep(root, f, "second shard truncated", trunc_shard, names=("00002",))


# ---- PyTorch .bin checkpoints ---------------------------------------------------------------

BIN_FIX = "tests/data/fixtures-bin"


def bin_sweep(root, label, mutate, fixture="opt-tiny-bin", names=("pytorch_model.bin",), may_load=False,
              ppl=False):
    """Copies a .bin fixture (config, index, .bin files), applies mutate(dir, bin_path), runs info
    (and ppl --ids), judges."""
    d = os.path.join(root, "bin-" + label.replace(" ", "_").replace("/", "_")[:80])
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for f in os.listdir(os.path.join(BIN_FIX, fixture)):
        if f.endswith(".json") and f != "golden.json" or f.endswith(".bin"):
            shutil.copy(os.path.join(BIN_FIX, fixture, f), d)
    mutate(d, os.path.join(d, "pytorch_model.bin"))
    rc, _, err = run("info", d)
    judge(f"{fixture}: {label}: info", rc, err, names, may_load)
    if ppl:
        ids_file = os.path.join(d, "prompt.ids")
        open(ids_file, "w").write("2 10 20 30 40 50 60 70\n")
        rc, _, err = run("ppl", d, "--ids", ids_file)
        judge(f"{fixture}: {label}: ppl --ids", rc, err, names, may_load)
    shutil.rmtree(d, ignore_errors=True)


def archive(entries=None, storages=None, pkl=None, **kw):
    """mutate() that replaces pytorch_model.bin with an archive written by torchbin_writer; by
    default the opt-tiny tensors, one storage each (a file that loads)."""
    base_entries, base_storages = tw.from_safetensors(os.path.join(FIX, "opt-tiny", "model.safetensors"))

    def mutate(d, path):
        e = base_entries if entries is None else entries(list(base_entries))
        st = base_storages if storages is None else storages(dict(base_storages))
        tw.write_archive(path, pkl if pkl is not None else tw.state_dict_pickle(e), st, **kw)
    return mutate


def first_tensor(which=None, **changes):
    """entries() that rebuilds the first tensor (or the one named `which`) with changed view fields."""
    def fn(entries):
        i = [n for n, _ in entries].index(which) if which else 0
        name, t = entries[i]
        fields = dict(key=t.key, size=t.size, stride=t.stride, offset=t.offset, storage=t.storage, numel=t.numel)
        fields.update(changes)
        entries[i] = (name, tw.Tensor(**fields))
        return entries
    return fn


def pickle_with(body):
    """A whole data.pkl: PROTO 2, `body`, STOP."""
    return b"\x80\x02" + body + b"."


def bin_cases(root):
    # The files PyTorch wrote load, and so does the archive torchbin_writer writes (otherwise
    # the cases made from it prove nothing).
    for fixture in sorted(os.listdir(BIN_FIX)):
        if os.path.isdir(os.path.join(BIN_FIX, fixture)) and "legacy" not in fixture:
            rc, _, err = run("info", os.path.join(BIN_FIX, fixture))
            check(f"{fixture}: unmodified fixture loads", rc == 0, err[-300:])
    bin_sweep(root, "archive written by torchbin_writer", archive(), may_load=True, ppl=True)
    rc, _, err = run("info", os.path.join(BIN_FIX, "opt-tiny-legacy-bin"))
    judge("opt-tiny-legacy-bin: refused", rc, err, ("pytorch_model.bin", "legacy"), False)

    # Truncations of a real file: inside the local headers, data.pkl, the storages, the
    # central directory and its end record.
    real = os.path.join(BIN_FIX, "opt-tiny-bin", "pytorch_model.bin")
    raw = open(real, "rb").read()
    size = len(raw)
    cuts = [0, 1, 3, 4, 30, 100, 2000, 3900, 4000, size // 2, size - 5000, size - 3000, size - 100, size - 23,
            size - 22, size - 1]
    cuts += sorted(rng.randrange(0, size) for _ in range(4 if SANITIZER else 12))
    for cut in cuts:
        def trunc(d, path, cut=cut):
            with open(path, "r+b") as f:
                f.truncate(cut)
        bin_sweep(root, f"truncated at {cut} of {size}", trunc)

    # Byte flips inside data.pkl (a flip may leave a valid pickle, e.g. in a name, so exit 0 is
    # allowed), in the central directory, and in the local header of a storage.
    pkl_at = raw.index(b"\x80\x02")                 # data.pkl starts the archive
    pkl_len = raw.index(b".PK", pkl_at) + 1 - pkl_at if b".PK" in raw else 3800
    cd_at = raw.rindex(b"PK\x01\x02")
    spots = [("data.pkl", pkl_at + rng.randrange(pkl_len)) for _ in range(8 if SANITIZER else 40)]
    spots += [("central directory", cd_at - rng.randrange(2000)) for _ in range(4 if SANITIZER else 12)]
    spots += [("storage local header", raw.index(b"PK\x03\x04", 100) + i) for i in (4, 8, 18, 22, 26, 28)]
    for where, at in spots:
        for mask in (0x01, 0x80, 0xff):
            def flip(d, path, at=at, mask=mask):
                b = bytearray(open(path, "rb").read())
                b[at] ^= mask
                open(path, "wb").write(b)
            bin_sweep(root, f"{where} byte {at} ^ {mask:#x}", flip, may_load=True)

    # The same flips with the CRC made right again, so that they reach the pickle reader.
    def repickle(fn):
        def mutate(d, path):
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
                prefix = names[0].split("/")[0]
                pkl = z.read(f"{prefix}/data.pkl")
                storages = {n.split("/data/")[1]: z.read(n) for n in names if "/data/" in n}
            tw.write_archive(path, fn(pkl), storages, prefix=prefix)
        return mutate
    for at in [rng.randrange(3800) for _ in range(10 if SANITIZER else 60)]:
        for mask in (0x01, 0x80, 0xff):
            def flip_pkl(pkl, at=at, mask=mask):
                b = bytearray(pkl)
                b[at % len(b)] ^= mask
                return bytes(b)
            bin_sweep(root, f"data.pkl byte {at} ^ {mask:#x} (CRC fixed)", repickle(flip_pkl), may_load=True)

    # Hostile pickles: globals that would run code, by GLOBAL and by STACK_GLOBAL.
    for mod, name in (("os", "system"), ("posix", "system"), ("builtins", "eval"), ("__builtin__", "exec"),
                      ("subprocess", "Popen"), ("torch", "load"), ("collections", "OrderedDictX")):
        body = b"c" + mod.encode() + b"\n" + name.encode() + b"\n(X\x0b\x00\x00\x00touch pwnedtR"
        bin_sweep(root, f"pickle global {mod}.{name}", archive(pkl=pickle_with(body)),
                  names=("pytorch_model.bin", f"pickle global '{mod}.{name}' is not allowed"))
    stack_global = b"X\x02\x00\x00\x00osX\x06\x00\x00\x00system\x93N\x85R"
    bin_sweep(root, "pickle STACK_GLOBAL os.system", archive(pkl=pickle_with(stack_global)),
              names=("pickle global 'os.system' is not allowed",))
    # An allowed call hiding a forbidden one as a tensor's backward hook.
    hooked = tw.Raw(b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nHalfStorage\n"
                    b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQK\x00K\x04\x85K\x01\x85\x89"
                    b"cos\nsystem\nN\x85RtR")
    bin_sweep(root, "forbidden global as a backward hook", archive(entries=lambda e: [("x", hooked)] + e),
              names=("os.system",))
    # Opcodes that create arbitrary objects, and unknown ones.
    for label, body in (("INST", b"(ios\nsystem\n"), ("OBJ", b"(o"), ("NEWOBJ", b"N)\x81"),
                        ("EXT1", b"\x82\x01"), ("text PERSID", b"P0\n"), ("unknown 0xff", b"\xff")):
        bin_sweep(root, f"pickle opcode {label}", archive(pkl=pickle_with(body)),
                  names=("pytorch_model.bin", "data.pkl", "pickle byte"))
    # Deep nesting and big counts: marks, nested tuples (no marks), self-referencing lists, a
    # memo "billion laughs", a huge memo index, a stack of millions of values.
    n = 200_000 if SANITIZER else 1_000_000
    for label, body in (
            ("100000 nested MARKs", b"(" * 100_000),
            (f"{n} nested 1-tuples", b"N" + b"\x85" * n),
            ("list containing itself", b"]q\x00h\x00a"),
            ("memo doubling 60 times", b"N" + b"q\x00h\x00h\x00\x86" * 60),
            ("memo index 2^32-1", b"Nr\xff\xff\xff\xff"),
            ("BINGET of an empty slot", b"h\x05"),
            (f"{3 * n} values on the stack", b"N" * (3 * n)),
            ("2^31-byte string claimed", b"X\x00\x00\x00\x80abc"),
            ("LONG1 of 200 bytes", b"\x8a\xc8" + b"\x01" * 200),
            ("no STOP", b"N")):
        pkl = pickle_with(body)[:-1] if label == "no STOP" else pickle_with(body)
        bin_sweep(root, f"pickle {label}", archive(pkl=pkl), names=("pytorch_model.bin", "data.pkl"))
    # Well-formed pickles of things that are not a state_dict.
    for label, body, word in (("root is a list", b"]", "found: list"), ("root is None", b"N", "found: None"),
                              ("entry is an int", b"}X\x01\x00\x00\x00aK\x01s", "not a tensor"),
                              ("key is an int", b"}K\x01K\x01s", "key"),
                              ("empty dict", b"}", "no tensors")):
        bin_sweep(root, label, archive(pkl=pickle_with(body)), names=("pytorch_model.bin", word))

    # Views that reach outside their storage, and overflowing sizes, strides and offsets.
    big = 2**40
    for label, changes in (
            ("offset past the storage", dict(offset=64000)),
            ("offset near 2^62", dict(offset=2**62)),
            ("negative offset", dict(offset=-1)),
            ("size larger than the storage", dict(size=(1001, 64))),
            ("stride reaching past the end", dict(stride=(65, 1))),
            ("huge stride", dict(stride=(big, 1))),
            ("sizes whose product overflows", dict(size=(big, big), stride=(1, 1))),
            ("stride x size overflows", dict(size=(1000, 64), stride=(2**62, 1))),
            ("negative size", dict(size=(-1000, 64))),
            ("9 dimensions", dict(size=(1,) * 9, stride=(1,) * 9)),
            ("stride count differs from the size", dict(stride=(64,))),
            ("expanded view (stride 0)", dict(size=(100000, 64), stride=(0, 1))),
            ("storage numel larger than the member", dict(numel=64001)),
            ("storage numel 2^62", dict(numel=2**62)),
            ("storage key with a slash", dict(key="../0")),
            ("storage key missing from the archive", dict(key="999")),
            ("float64 storage", dict(storage="DoubleStorage")),
            ("int64 storage", dict(storage="LongStorage")),
            ("a class that is not a storage", dict(storage="Tensor"))):
        bin_sweep(root, label, archive(entries=first_tensor(**changes)), names=("pytorch_model.bin",))
    # A tensor in range but transposed relative to what the model needs: loads, then the shape
    # check names it.
    bin_sweep(root, "embedding stored transposed", archive(entries=first_tensor(
        "model.decoder.embed_tokens.weight", size=(64, 1000), stride=(1, 64))),
              names=("embed_tokens", "shape"))
    # Archive-level problems.
    bin_sweep(root, "storages compressed", archive(compress=True), names=("pytorch_model.bin", "compressed"))
    bin_sweep(root, "two data.pkl", archive(extra_members=[("other/data.pkl", b"\x80\x02N.")]),
              names=("more than one data.pkl",))

    def no_pkl(d, p):
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("archive/data/0", bytes(16))
    bin_sweep(root, "byteorder big", archive(extra_members=[("archive/byteorder", b"big")]),
              names=("pytorch_model.bin", "little-endian"))
    bin_sweep(root, "byteorder little", archive(extra_members=[("archive/byteorder", b"little")]), may_load=True)
    bin_sweep(root, "no data.pkl", no_pkl, names=("pytorch_model.bin", "data.pkl"))
    bin_sweep(root, "an empty zip archive", lambda d, p: open(p, "wb").write(b"PK\x05\x06" + bytes(18)),
              names=("pytorch_model.bin",))
    bin_sweep(root, "random bytes behind a zip signature", lambda d, p: open(p, "wb").write(
        b"PK\x03\x04" + bytes(rng.randrange(256) for _ in range(5000))), names=("pytorch_model.bin",))
    bin_sweep(root, "empty file", lambda d, p: open(p, "wb").close(), names=("pytorch_model.bin",))

    def fifo(d, p):
        os.remove(p)
        os.mkfifo(p)
    bin_sweep(root, "pytorch_model.bin is a FIFO", fifo)

    # Sharded: the index names a missing shard; a shard truncated.
    idx = "pytorch_model.bin.index.json"

    def missing_shard(d, p):
        j = json.load(open(os.path.join(d, idx)))
        j["weight_map"]["model.decoder.embed_tokens.weight"] = "pytorch_model-00003-of-00002.bin"
        json.dump(j, open(os.path.join(d, idx), "w"))
    bin_sweep(root, "index names a missing shard", missing_shard, fixture="opt-tiny-sharded-bin", names=("00003",))

    def trunc_shard(d, p):
        p = os.path.join(d, "pytorch_model-00002-of-00002.bin")
        with open(p, "r+b") as fh:
            fh.truncate(os.path.getsize(p) // 2)
    bin_sweep(root, "second shard truncated", trunc_shard, fixture="opt-tiny-sharded-bin", names=("00002",))


def main():
    print(f"# seed {SEED}{' (sanitizer run: fewer random cases, no rlimit)' if SANITIZER else ''}")
    with tempfile.TemporaryDirectory(prefix="llmint8-sweep-") as root:
        for fixture in ("opt-tiny", "bloom-tiny"):
            container_cases(root, fixture)
            config_cases(root, fixture)
        int8_cases(root)
        sharded_cases(root)
        bin_cases(root)
    finish()


main()
