#!/usr/bin/env python3
"""test_bad_input.py — the llmint8 binary on damaged and unusual checkpoints.

Copies the fixtures (tests/data/fixtures) into temporary directories, damages them one
way at a time (truncated or malformed safetensors, shapes that disagree with the config,
missing tensors and fields, hostile shard indexes, ...) and checks that `llmint8 info` and
`llmint8 ppl` refuse each with exit status 1 and a message naming the file / tensor /
field, never a crash. Unusual but valid variants (names without the "model." prefix,
sharded, unaligned data) must still load.

Usage (from the repository root): python3 tests/test_bad_input.py BUILD/llmint8
Prints "ok - NAME" or "not ok - NAME: WHY" per case; exits 1 if any failed.
"""
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile

from clitest import BIN, SANITIZER, check, finish, run
FIX = "tests/data/fixtures"


# ---- safetensors files, read and written with the standard library ------------------------

def read_st(path):
    """Returns (header dict in file order, data section bytes)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_st(path, header, data, pad=True, header_text=None):
    text = header_text if header_text is not None else json.dumps(header, separators=(",", ":"))
    blob = text.encode()
    if pad:
        blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + data)


def edit_st(path, fn):
    """Applies fn(header) -> header (or (header, data)) to a safetensors file."""
    header, data = read_st(path)
    out = fn(header)
    if isinstance(out, tuple):
        header, data = out
    else:
        header = out
    write_st(path, header, data)


def edit_json(path, fn):
    with open(path) as f:
        obj = json.load(f)
    obj = fn(obj) or obj
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def rename_all(header, fn):
    return {(k if k == "__metadata__" else fn(k)): v for k, v in header.items()}


def set_entry(name, **fields):
    def fn(h):
        h[name].update(fields)
        return h
    return fn


def drop(name):
    def fn(h):
        del h[name]
        return h
    return fn


def set_cfg(**kv):
    def fn(c):
        c.update(kv)
    return fn


def del_cfg(*keys):
    def fn(c):
        for k in keys:
            c.pop(k, None)
    return fn


# ---- the cases ------------------------------------------------------------------------------

tmp_root = tempfile.mkdtemp(prefix="llmint8-bad-")
ids_file = os.path.join(tmp_root, "ids.txt")
with open(ids_file, "w") as f:
    f.write("2 31 415 92 65 35 89 79 323 84 626 433 83 279 502 88\n")
counter = 0


def fresh(fixture):
    """A writable copy of a fixture directory."""
    global counter
    counter += 1
    d = os.path.join(tmp_root, f"{counter:03d}-{fixture}")
    shutil.copytree(os.path.join(FIX, fixture), d)
    return d


def expect_fail(name, d, words, commands=("info", "ppl")):
    """Every command must exit 1..125 (an error, not a signal) with 'error' and each word."""
    for cmd in commands:
        args = ["info", d] if cmd == "info" else ["ppl", d, "--ids", ids_file, "--precision", "fp16"]
        rc, out, err = run(*args)
        missing = [w for w in ["error", *words] if w not in err]
        sanitizer = "Sanitizer" in err or "runtime error:" in err
        ok = 1 <= rc <= 125 and not missing and not sanitizer
        why = f"exit {rc}, missing {missing} in stderr {err.strip()[-400:]!r}"
        check(f"{name} ({cmd})", ok, why)


def nll_mean(d):
    rc, out, err = run("ppl", d, "--ids", ids_file, "--precision", "fp16", "--json")
    try:
        return json.loads(out)["nll_mean"], ""
    except (ValueError, KeyError):
        return None, f"exit {rc}: {out.strip()[-200:]!r} {err.strip()[-300:]!r}"


def expect_ok(name, d, same_ppl_as=None):
    """`info` succeeds and, given the original, `ppl` gives exactly the original's result."""
    rc, out, err = run("info", d)
    check(f"{name} (info)", rc == 0, f"exit {rc}: {err.strip()[-400:]!r}")
    if same_ppl_as:
        mine, why1 = nll_mean(d)
        theirs, why2 = nll_mean(same_ppl_as)
        check(f"{name} (ppl same as the original)", mine is not None and mine == theirs,
              f"{mine} vs {theirs} {why1} {why2}")


def model_file(d):
    return os.path.join(d, "model.safetensors")


def cfg_file(d):
    return os.path.join(d, "config.json")


# -- the safetensors container ---------------------------------------------------------------
d = fresh("opt-tiny")
size = os.path.getsize(model_file(d))
with open(model_file(d), "r+b") as f:
    f.truncate(size // 2)
expect_fail("truncated model file", d, ["model.safetensors", "do not fit"])

d = fresh("opt-tiny")
with open(model_file(d), "r+b") as f:
    f.truncate(5)
expect_fail("model file of 5 bytes", d, ["model.safetensors", "too short"])

d = fresh("opt-tiny")
open(model_file(d), "wb").close()
expect_fail("empty model file", d, ["model.safetensors", "too short"])

d = fresh("opt-tiny")
with open(model_file(d), "r+b") as f:
    f.write(struct.pack("<Q", size))
expect_fail("header length past EOF", d, ["model.safetensors", "past the end"])

d = fresh("opt-tiny")
with open(model_file(d), "r+b") as f:
    f.write(struct.pack("<Q", 2**64 - 1))
expect_fail("header length 2^64-1", d, ["model.safetensors", "header length"])

d = fresh("opt-tiny")
with open(model_file(d), "r+b") as f:
    f.seek(8)
    f.write(b"{\"model.decoder.x\": [1, 2,, ")
expect_fail("bad JSON header", d, ["model.safetensors", "JSON"])

d = fresh("opt-tiny")
header, data = read_st(model_file(d))
write_st(model_file(d), None, data, header_text="[" * 50000 + "]" * 50000)
expect_fail("deeply nested header", d, ["model.safetensors", "JSON"])

d = fresh("opt-tiny")
edit_st(model_file(d), set_entry("model.decoder.layers.0.fc1.bias", data_offsets=[0, 10**9]))
expect_fail("offsets out of range", d, ["model.safetensors", "decoder.layers.0.fc1.bias", "data_offsets"])

d = fresh("opt-tiny")
h, _ = read_st(model_file(d))
b0 = h["model.decoder.layers.0.fc1.bias"]["data_offsets"][0]
edit_st(model_file(d), set_entry("model.decoder.layers.0.fc2.bias", data_offsets=[b0, b0 + 128]))
expect_fail("overlapping tensors", d, ["model.safetensors", "overlap"])

d = fresh("opt-tiny")
h, _ = read_st(model_file(d))
b0, e0 = h["model.decoder.layers.0.fc1.bias"]["data_offsets"]
edit_st(model_file(d), set_entry("model.decoder.layers.0.fc1.bias", data_offsets=[b0, e0 - 2]))
expect_fail("byte length != shape x dtype", d, ["model.safetensors", "decoder.layers.0.fc1.bias", "bytes"])

d = fresh("opt-tiny")
edit_st(model_file(d), set_entry("model.decoder.layers.0.fc1.weight", dtype="F64", shape=[64, 64]))
expect_fail("unsupported dtype F64", d, ["model.safetensors", "decoder.layers.0.fc1.weight", "F64"])

d = fresh("opt-tiny")
edit_st(model_file(d), set_entry("model.decoder.layers.0.fc1.weight", shape=[-256, 64]))
expect_fail("negative dimension", d, ["model.safetensors", "decoder.layers.0.fc1.weight"])

d = fresh("opt-tiny")
h, data = read_st(model_file(d))
text = json.dumps(h, separators=(",", ":"))
dup = '"model.decoder.layers.0.fc1.bias":' + json.dumps(h["model.decoder.layers.0.fc1.bias"], separators=(",", ":"))
write_st(model_file(d), None, data, header_text=text[:-1] + "," + dup + "}")
expect_fail("duplicate tensor name", d, ["model.safetensors", "decoder.layers.0.fc1.bias", "twice"])

d = fresh("opt-tiny")
edit_st(model_file(d), lambda h: {**h, "__metadata__": {"format": 1}})
expect_fail("metadata that is not strings", d, ["model.safetensors", "__metadata__"])

# -- tensors against the config --------------------------------------------------------------
d = fresh("opt-tiny")
edit_st(model_file(d), set_entry("model.decoder.layers.0.fc1.weight", shape=[128, 128]))
expect_fail("shape mismatch vs config", d, ["decoder.layers.0.fc1.weight", "[256, 64]", "[128, 128]"])

d = fresh("opt-tiny")
edit_json(cfg_file(d), set_cfg(ffn_dim=128))
expect_fail("config ffn_dim disagrees with the tensors", d, ["decoder.layers.0.fc1.weight", "[128, 64]"])

d = fresh("opt-tiny")
edit_json(cfg_file(d), set_cfg(vocab_size=1001))
expect_fail("config vocab_size disagrees with the embedding", d, ["embed_tokens", "1001"])

d = fresh("opt-tiny")
edit_st(model_file(d), drop("model.decoder.layers.1.fc2.bias"))
expect_fail("missing tensor", d, ["decoder.layers.1.fc2.bias", "missing"])

d = fresh("opt-tiny")
h, _ = read_st(model_file(d))
b0 = h["model.decoder.layers.1.fc2.bias"]["data_offsets"][0]
edit_st(model_file(d), set_entry("model.decoder.layers.1.fc2.bias", dtype="I8", data_offsets=[b0, b0 + 64]))
expect_fail("wrong dtype for a 16-bit checkpoint", d, ["decoder.layers.1.fc2.bias", "I8", "F16"])

d = fresh("opt-tiny")
edit_json(cfg_file(d), set_cfg(quantization_config={"quant_method": "bitsandbytes", "load_in_8bit": True}))
expect_fail("8-bit config over 16-bit tensors", d, ["model.safetensors", "F16", "I8"])

d = fresh("opt-tiny")
edit_json(cfg_file(d), set_cfg(quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True}))
expect_fail("4-bit checkpoint", d, ["config.json", "4-bit"])

d = fresh("bloom-tiny")
edit_st(model_file(d), set_entry("transformer.h.1.self_attention.query_key_value.weight", shape=[64, 192]))
expect_fail("bloom qkv shape mismatch", d, ["h.1.self_attention.query_key_value.weight", "[192, 64]"])

d = fresh("bloom-tiny")
edit_st(model_file(d), drop("transformer.ln_f.bias"))
expect_fail("bloom missing ln_f.bias", d, ["ln_f.bias", "missing"])

# -- config.json -------------------------------------------------------------------------------
for fixture, field in [("opt-tiny", "ffn_dim"), ("opt-tiny", "hidden_size"), ("opt-tiny", "vocab_size"),
                       ("opt-tiny", "max_position_embeddings"), ("bloom-tiny", "n_head"),
                       ("bloom-tiny", "n_layer")]:
    d = fresh(fixture)
    edit_json(cfg_file(d), del_cfg(field))
    expect_fail(f"{fixture}: missing config field {field}", d, ["config.json", field])

for field, value in [("hidden_size", "64"), ("hidden_size", -64), ("hidden_size", 0), ("hidden_size", 64.5),
                     ("num_attention_heads", 5), ("num_hidden_layers", 10**9), ("vocab_size", [1000]),
                     ("enable_bias", "yes"), ("do_layer_norm_before", 1), ("activation_function", "swish"),
                     ("model_type", "llama"), ("model_type", None)]:
    d = fresh("opt-tiny")
    edit_json(cfg_file(d), set_cfg(**{field: value}))
    word = "swish" if field == "activation_function" else "llama" if value == "llama" else field
    expect_fail(f"config {field} = {value!r}", d, ["config.json", word])

d = fresh("opt-tiny")
with open(cfg_file(d), "w") as f:
    f.write('{"model_type": "opt", "vocab_size": 1000,')
expect_fail("invalid config JSON", d, ["config.json", "JSON"])

d = fresh("opt-tiny")
os.remove(cfg_file(d))
expect_fail("no config.json", d, ["config.json"])

d = fresh("opt-tiny")
os.remove(model_file(d))
expect_fail("no weights", d, ["model.safetensors"])

expect_fail("model directory that does not exist", os.path.join(tmp_root, "nope"), ["nope"])

# -- sharded checkpoints -------------------------------------------------------------------------
INDEX = "model.safetensors.index.json"

d = fresh("opt-tiny-sharded")
os.remove(os.path.join(d, "model-00002-of-00002.safetensors"))
expect_fail("index naming a missing shard", d, ["model-00002-of-00002.safetensors"])


def point_first_at(shard):
    def fn(idx):
        first = next(iter(idx["weight_map"]))
        idx["weight_map"][first] = shard
    return fn


d = fresh("opt-tiny-sharded")
edit_json(os.path.join(d, INDEX), point_first_at("../opt-tiny/model.safetensors"))
expect_fail("shard path with ..", d, ["..", INDEX])

d = fresh("opt-tiny-sharded")
edit_json(os.path.join(d, INDEX), point_first_at("/etc/passwd"))
expect_fail("absolute shard path", d, ["/etc/passwd", INDEX])

d = fresh("opt-tiny-sharded")
edit_json(os.path.join(d, INDEX), point_first_at("model-00002-of-00002.safetensors"))
expect_fail("index names the wrong shard", d, ["model-00002-of-00002.safetensors", "does not contain"])

d = fresh("opt-tiny-sharded")
with open(os.path.join(d, INDEX), "w") as f:
    f.write('{"weight_map": {')
expect_fail("invalid index JSON", d, [INDEX])

d = fresh("opt-tiny-sharded")
with open(os.path.join(d, "model-00001-of-00002.safetensors"), "r+b") as f:
    f.truncate(1000)
expect_fail("truncated shard", d, ["model-00001-of-00002.safetensors"])

# -- unusual but valid: must load ---------------------------------------------------------------
expect_ok("opt-tiny-sharded", os.path.join(FIX, "opt-tiny-sharded"), same_ppl_as=os.path.join(FIX, "opt-tiny"))

d = fresh("opt-tiny")
edit_st(model_file(d), lambda h: rename_all(h, lambda k: k[len("model."):] if k.startswith("model.") else k))
expect_ok("opt names without 'model.'", d, same_ppl_as=os.path.join(FIX, "opt-tiny"))


def add_lm_head(h):
    """Unprefixed names plus an explicit lm_head.weight pointing at a copy of the embedding."""
    hdr, data = h
    emb = hdr["model.decoder.embed_tokens.weight"]
    b, e = emb["data_offsets"]
    hdr = rename_all(hdr, lambda k: k[len("model."):])
    hdr["lm_head.weight"] = {"dtype": emb["dtype"], "shape": emb["shape"], "data_offsets": [len(data), len(data) + e - b]}
    return hdr, data + data[b:e]


d = fresh("opt-tiny")
write_st(model_file(d), *add_lm_head(read_st(model_file(d))))
expect_ok("opt with an explicit tied lm_head.weight", d, same_ppl_as=os.path.join(FIX, "opt-tiny"))

d = fresh("bloom-tiny")
edit_st(model_file(d), lambda h: rename_all(h, lambda k: k[len("transformer."):]))
expect_ok("bloom names without 'transformer.'", d, same_ppl_as=os.path.join(FIX, "bloom-tiny"))

d = fresh("opt-tiny")
h, data = read_st(model_file(d))
text = json.dumps(h, separators=(",", ":"))
write_st(model_file(d), None, data, pad=False, header_text=text + " " * ((1 - len(text)) % 8))  # 8 + N odd
expect_ok("unaligned data section", d, same_ppl_as=os.path.join(FIX, "opt-tiny"))

d = fresh("opt-tiny")
edit_json(cfg_file(d), del_cfg("enable_bias", "layer_norm_elementwise_affine", "_remove_final_layer_norm",
                               "word_embed_proj_dim", "activation_function"))
expect_ok("old config without the newer OPT fields", d, same_ppl_as=os.path.join(FIX, "opt-tiny"))

d = fresh("bloom-tiny")
edit_json(cfg_file(d), lambda c: {("n_embed" if k == "hidden_size" else "num_attention_heads" if k == "n_head" else k): v
                                  for k, v in c.items()})
expect_ok("bloom legacy config names", d, same_ppl_as=os.path.join(FIX, "bloom-tiny"))

# ---- files that are not what they should be: tokenizer files and the text input -----------
# A model's or tokenizer's file must be a regular file (a FIFO would block a plain open());
# errors give the system's reason (a symlink loop is not "not found"); "-" is standard input.
MODEL = "models/opt-gutenberg-7m"
tok = os.path.join(tmp_root, "tok")
os.mkdir(tok)
shutil.copy(os.path.join(MODEL, "vocab.json"), tok)
os.mkfifo(os.path.join(tok, "merges.txt"))
rc, out, err = run("tokenize", tok, "-p", "hi", timeout=20)
check("a FIFO as merges.txt is refused at once", rc == 1 and "merges.txt: not a regular file (a FIFO)" in err,
      f"exit {rc}: {err.strip()[-300:]!r}")
os.remove(os.path.join(tok, "merges.txt"))
shutil.copy(os.path.join(MODEL, "merges.txt"), tok)
os.symlink("tokenizer.json", os.path.join(tok, "tokenizer.json"))
rc, out, err = run("tokenize", tok, "-p", "hi", timeout=20)
check("a symlink loop as tokenizer.json says so", rc == 1 and "tokenizer.json" in err
      and "too many levels of symbolic links" in err.lower(), f"exit {rc}: {err.strip()[-300:]!r}")
rc, out, err = run("tokenize", tok, "-f", os.path.join(tok, "tokenizer.json"), timeout=20)
check("a symlink loop as the text file says so", rc == 1 and "too many levels of symbolic links" in err.lower(),
      f"exit {rc}: {err.strip()[-300:]!r}")
p = subprocess.run([BIN, "tokenize", MODEL, "-f", "-"], stdin=None, capture_output=True, timeout=60,
                   preexec_fn=lambda: os.close(0))
err = p.stderr.decode("utf-8", "replace")
check("a closed standard input is named as such", p.returncode == 1 and "standard input" in err
      and "-:" not in err, f"exit {p.returncode}: {err.strip()[-300:]!r}")
if not SANITIZER:  # ASan reserves far more address space than the limit
    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (128 << 20, 128 << 20))
    p = subprocess.run([BIN, "tokenize", MODEL, "-f", "-"], input=b"a" * (150 << 20), capture_output=True,
                       timeout=120, preexec_fn=limit_memory)
    err = p.stderr.decode("utf-8", "replace")
    check("standard input larger than the memory limit is an error, not a truncated text",
          p.returncode == 1 and "standard input: out of memory" in err and not p.stdout,
          f"exit {p.returncode}: {err.strip()[-300:]!r}, {len(p.stdout)} bytes out")

# -- the checkpoint's own files: a symlink loop, a dangling link, a FIFO are named as such ---------
d = fresh("opt-tiny")
os.remove(cfg_file(d))
os.symlink("config.json", cfg_file(d))
expect_fail("config.json a symlink loop", d, ["config.json", "oo many levels of symbolic links"])
os.remove(cfg_file(d))
os.symlink("gone.json", cfg_file(d))
expect_fail("config.json a dangling symlink", d, ["config.json", "symbolic link to nothing"])
os.remove(cfg_file(d))
os.mkfifo(cfg_file(d))
expect_fail("config.json a FIFO", d, ["config.json", "not a regular file (a FIFO)"])
d = fresh("opt-tiny")
os.remove(model_file(d))
os.symlink("model.safetensors", model_file(d))
expect_fail("model.safetensors a symlink loop", d, ["model.safetensors", "oo many levels of symbolic links"])
loop_dir = os.path.join(tmp_root, "loop-dir")
os.symlink("loop-dir", loop_dir)
expect_fail("a symlink-loop model directory", loop_dir, ["loop-dir", "oo many levels of symbolic links"])
dangling_dir = os.path.join(tmp_root, "dangling-dir")
os.symlink("no-such-dir", dangling_dir)
expect_fail("a dangling-symlink model directory", dangling_dir, ["dangling-dir", "symbolic link to nothing"])
expect_fail("a regular file as the model directory", ids_file, ["ids.txt", "not a directory"])

# -- config and checkpoint that disagree: layers beyond the config's count, unused tensors ---------
for fixture, key in (("opt-tiny", "num_hidden_layers"), ("bloom-tiny", "n_layer")):
    d = fresh(fixture)
    edit_json(cfg_file(d), set_cfg(**{key: 1}))
    layer1 = "model.decoder.layers.1." if fixture == "opt-tiny" else "transformer.h.1."
    expect_fail(f"{fixture}: config with 1 layer over a 2-layer checkpoint", d,
                [layer1, "layer 1", "1 layers", "num_hidden_layers"], commands=("info", "ppl"))
    rc, out, err = run("convert", d, "-o", os.path.join(tmp_root, f"conv-1layer-{fixture}"))
    check(f"{fixture}: convert refuses the 1-layer config too", rc == 1 and layer1 in err, f"exit {rc}: {err[-300:]!r}")


def add_tensors(*names):
    def fn(h):
        _, data = read_st(model_file(d))
        for name in names:
            h[name] = {"dtype": "F16", "shape": [4], "data_offsets": [len(data), len(data) + 8]}
            data += struct.pack("<4e", 1, 2, 3, 4)
        return h, data
    return fn


d = fresh("opt-tiny")
extras = ["model.decoder.extra.weight", "model.decoder.layers.0.adapter.weight", "rotary.inv_freq",
          "model.decoder.layers.1.fc1.lora_A"]
edit_st(model_file(d), add_tensors(*extras))
rc, out, err = run("info", d)
check("unused tensors: info lists every one of them, exit 0, no warning",
      rc == 0 and "4 stored tensors not read" in out and all(e in out for e in extras) and "warning" not in err,
      f"exit {rc}: {out[-600:]!r} {err[-300:]!r}")
rc, out, err = run("info", d, "--json")
try:
    listed = json.loads(out).get("unused_tensors")
except ValueError:
    listed = None
check("unused tensors: info --json lists them", rc == 0 and sorted(listed or []) == sorted(extras), out[-400:])
mine, why = nll_mean(d)
theirs, why2 = nll_mean(os.path.join(FIX, "opt-tiny"))
check("unused tensors: ppl is unchanged", mine is not None and mine == theirs, f"{mine} vs {theirs} {why} {why2}")
rc, out, err = run("ppl", d, "--ids", ids_file, "--quant", "all")
warnings = [line for line in err.splitlines() if "warning" in line]
check("unused tensors: ppl (--quant all: several loads) warns once, one line with the count and the first names",
      rc == 0 and len(warnings) == 1 and "4 stored tensors are not used" in warnings[0]
      and "model.decoder.extra.weight" in warnings[0] and "..." in warnings[0],
      f"exit {rc}: {warnings!r} {err[-300:]!r}")

# -- non-finite weights: the loader names the tensor, the element and the value, in every mode ------
DEMO = "models/opt-gutenberg-7m-outliers"


def poke_f16(d, name, index, value):
    """Sets element `index` of the F16 tensor `name` in d's model.safetensors."""
    path = model_file(d)
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        e = json.loads(f.read(n))[name]
        assert e["dtype"] == "F16"
        f.seek(8 + n + e["data_offsets"][0] + 2 * index)
        f.write(struct.pack("<e", value))


def demo_copy(label):
    d = os.path.join(tmp_root, "demo-" + label)
    os.mkdir(d)
    for f in os.listdir(DEMO):
        if f == "model.safetensors":
            shutil.copy(os.path.join(DEMO, f), d)
        else:
            os.symlink(os.path.abspath(os.path.join(DEMO, f)), os.path.join(d, f))
    return d


demo_ids = os.path.join(tmp_root, "demo-ids.txt")
with open(demo_ids, "w") as f:
    f.write("2 31 415 92 65 35 89 79 323 84 626 433 83 279 502 88 1000 2000 3000 4000\n")
FC1 = "model.decoder.layers.0.fc1.weight"
for label, value, shown in (("inf", float("inf"), "is inf"), ("NaN", float("nan"), "is nan")):
    d = demo_copy(label)
    poke_f16(d, FC1, 12345, value)
    expected = f"tensor '{FC1}': element 12345 (row 48, column 57) {shown}, not a finite number"
    messages = []
    for args in (["ppl", d, "--ids", demo_ids], ["ppl", d, "--ids", demo_ids, "--precision", "fp16"],
                 ["generate", d, "--ids", demo_ids, "-n", "3", "--greedy", "--print-ids"],
                 ["generate", d, "--ids", demo_ids, "-n", "3", "--greedy", "--print-ids", "--precision", "fp16"]):
        rc, out, err = run(*args)
        line = err.strip().splitlines()[-1] if err.strip() else ""
        messages.append(line)
        check(f"an {label} fp16 weight: {' '.join(a for a in args[2:] if not a.startswith(tmp_root))} fails naming "
              "tensor, element and value", rc == 1 and expected in err and out.strip() == "",
              f"exit {rc}: {out[-200:]!r} {err[-400:]!r}")
    check(f"an {label} fp16 weight: int8 ppl, fp16 ppl and generate give the same message",
          len(set(messages)) == 1, repr(messages))
d = demo_copy("inf-embedding")
poke_f16(d, "model.decoder.embed_tokens.weight", 31 * 256 + 7, float("inf"))
for precision in ("int8", "fp16"):
    rc, out, err = run("generate", d, "--ids", demo_ids, "-n", "3", "--greedy", "--print-ids", "--precision",
                       precision)
    check(f"an inf in an embedding row ({precision}): an error naming it, no ids",
          rc == 1 and out.strip() == "" and "embed_tokens.weight': element 7943 (row 31, column 7) is inf" in err,
          f"exit {rc}: {out[-200:]!r} {err[-300:]!r}")
d = fresh("opt-tiny")
h, data = read_st(model_file(d))
e = h["model.decoder.layers.1.fc2.weight"]
b, end = e["data_offsets"]
vals = list(struct.unpack(f"<{(end - b) // 2}e", data[b:end]))
vals[70] = 1e5
raw32 = struct.pack(f"<{len(vals)}f", *vals)
h["model.decoder.layers.1.fc2.weight"] = {"dtype": "F32", "shape": e["shape"],
                                          "data_offsets": [len(data), len(data) + len(raw32)]}
write_st(model_file(d), h, data + raw32)
rc, out, err = run("ppl", d, "--ids", ids_file)
check("an F32 projection weight of 1e5: int8 ppl refuses it as convert does (beyond float16)",
      rc == 1 and "fc2.weight': element 70" in err and "65504" in err, f"exit {rc}: {err[-300:]!r}")
rc, out, err = run("ppl", d, "--ids", ids_file, "--precision", "fp16")
check("an F32 projection weight of 1e5: fp16 ppl uses it as stored", rc == 0, f"exit {rc}: {err[-300:]!r}")

shutil.rmtree(tmp_root, ignore_errors=True)
finish()
