#!/usr/bin/env python3
"""test_reliability.py — nothing lost, nothing hidden (issue 10).

  - every command's output checked: stdout on /dev/full (and files on it) is an error naming
    "standard output" or the file, exit 1; a reader that goes away (EPIPE, SIGPIPE) stays quiet;
  - every --json output is JSON (python3 -m json.tool), also on a degenerate model whose final
    LayerNorm weight is 65504 everywhere (perplexity beyond a double: null and the reason);
  - non-finite and beyond-float16 weights: convert names the tensor, the element and the value;
    a forward pass that gives non-finite logits is an error naming the position, never a
    perplexity or token ids;
  - numbers on the command line: --seed 0..2^64-1 exactly, the real limit in every message;
  - strings from files in messages: control characters escaped (no raw ESC on the terminal);
  - JSON strings with \\u0000 are refused; a tokenizer that does not fit the model, or whose
    named BOS is missing, is refused before any work.

Run from the repository root: python3 tests/test_reliability.py BUILD/llmint8
"""
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile

from clitest import BIN, check, finish, run

MODEL = "models/opt-gutenberg-7m"       # tokenizer, vocab 8192, 6 layers of 256
TINY = "tests/data/fixtures/opt-tiny"   # no tokenizer, vocab 1000
FIX = "tests/data/fixtures"

# Checks that need the model loader to call dtype_first_beyond_f16 and config.c /
# checkpoint.c to parse through json_parse (another branch): skipped until that is merged.
LOADER_CHECKS_VALUES = False
CONFIG_AND_INDEX_USE_JSON_PARSE = True


def skip(name, why):
    print(f"ok - {name} # SKIP {why}")


# ---- checkpoints, edited with the standard library ---------------------------------------------

def read_st(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_st(path, header, data, header_text=None):
    """header_text, if given, is used as is; else the header is written with JSON escapes,
    except that an escaped lone surrogate \\udcXX (Python's spelling of a byte that is not
    UTF-8) becomes the raw byte XX."""
    text = header_text if header_text is not None else json.dumps(header, separators=(",", ":"))
    blob = re.sub(rb"\\udc([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), text.encode())
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + data)


tmp_root = tempfile.mkdtemp(prefix="llmint8-reliab-")
counter = 0


def fresh(src):
    """A writable copy of a checkpoint directory."""
    global counter
    counter += 1
    d = os.path.join(tmp_root, f"{counter:03d}-{os.path.basename(src)}")
    shutil.copytree(src, d)
    return d


def set_values(d, tensor, values):
    """Writes {flat index: value} into a tensor of d/model.safetensors, in its own dtype."""
    path = os.path.join(d, "model.safetensors")
    header, data = read_st(path)
    e = header[tensor]
    data = bytearray(data)
    fmt, size = {"F16": ("<e", 2), "F32": ("<f", 4), "BF16": (None, 2)}[e["dtype"]]
    for i, v in values.items():
        at = e["data_offsets"][0] + i * size
        if fmt:
            data[at:at + size] = struct.pack(fmt, v)
        else:  # bfloat16: the top half of a float32
            data[at:at + size] = struct.pack("<f", v)[2:]
    write_st(path, header, bytes(data))


def fill(d, tensor, value):
    header, _ = read_st(os.path.join(d, "model.safetensors"))
    n = 1
    for s in header[tensor]["shape"]:
        n *= s
    set_values(d, tensor, {i: value for i in range(n)})


def write(name, data):
    p = os.path.join(tmp_root, name)
    with open(p, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    return p


IDS = write("ids.txt", "2 31 415 92 65 35 89 79 323 84 626 433 83 279 502 88\n")
TEXT = write("text.txt", "It was a dark and stormy night; the rain fell in torrents.\n")

# ---- §2 output on a full disk -------------------------------------------------------------------
HAVE_FULL = os.path.exists("/dev/full")


def run_to(path, *args):
    with open(path, "wb") as out:
        p = subprocess.run([BIN, *args], stdout=out, stderr=subprocess.PIPE, timeout=600)
    return p.returncode, p.stderr.decode("utf-8", "replace")


out_cases = [
    ("--help",), ("--version",),
    ("generate", MODEL, "-p", "The old man", "-n", "5", "--greedy"),
    ("generate", TINY, "--ids", IDS, "-n", "3", "--greedy", "--print-ids"),
    ("ppl", TINY, "--ids", IDS), ("ppl", TINY, "--ids", IDS, "--json"),
    ("ppl", TINY, "--ids", IDS, "--quant", "all"),
    ("tokenize", MODEL, "-f", "tests/data/eval/c4.utf8"), ("tokenize", MODEL, "-p", "Hello", "--show"),
    ("info", MODEL), ("info", MODEL, "--json"),
    ("outliers", TINY, "--ids", IDS), ("outliers", TINY, "--ids", IDS, "--json"),
    ("bench", "--shape", "tiny", "--gemm-only", "--tokens", "2", "--iters", "1", "--json", "--outlier-frac", "0"),
] + [(cmd, "--help") for cmd in ("generate", "ppl", "convert", "tokenize", "info", "bench", "outliers")]
if HAVE_FULL:
    for args in out_cases:
        rc, err = run_to("/dev/full", *args)
        check(f"stdout on /dev/full: {' '.join(args[:2])}{' ...' if len(args) > 2 else ''} {' '.join(args[2:])[-30:]}",
              rc == 1 and "error writing standard output: No space left on device" in err, f"exit {rc}: {err[-300:]!r}")
    rc, out, err = run("outliers", TINY, "--ids", IDS, "--svg", "/dev/full")
    check("outliers --svg /dev/full: error names the file and the reason",
          rc == 1 and "/dev/full" in err and "No space left on device" in err, f"exit {rc}: {err[-300:]!r}")
else:
    skip("stdout on /dev/full", "no /dev/full here")


def closed_pipe(args, ignore_sigpipe):
    """Runs llmint8 with stdout a pipe whose reader leaves after 3 bytes."""
    pre = (lambda: signal.signal(signal.SIGPIPE, signal.SIG_IGN)) if ignore_sigpipe else None
    p = subprocess.Popen([BIN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=pre)
    p.stdout.read(3)
    p.stdout.close()
    err = p.stderr.read().decode("utf-8", "replace")
    return p.wait(timeout=600), err


for args in (("generate", MODEL, "-p", "x", "-n", "200", "--greedy"),
             ("tokenize", MODEL, "-f", "tests/data/eval/c4.utf8")):
    rc, err = closed_pipe(args, False)
    check(f"closed pipe: {args[0]} dies of SIGPIPE quietly", rc in (0, -signal.SIGPIPE) and "error" not in err,
          f"exit {rc}: {err[-300:]!r}")
    rc, err = closed_pipe(args, True)
    check(f"closed pipe, SIGPIPE ignored: {args[0]} stops quietly (EPIPE)", rc == 0 and "error" not in err,
          f"exit {rc}: {err[-300:]!r}")

# ---- §3 every --json parses, also on a degenerate model --------------------------------------------
degen_tiny = fresh(TINY)
fill(degen_tiny, "model.decoder.final_layer_norm.weight", 65504.0)
degen_demo = fresh(MODEL)
fill(degen_demo, "model.decoder.final_layer_norm.weight", 65504.0)


def json_tool(name, args):
    """Runs llmint8 ARGS, checks exit 0 and that stdout passes python3 -m json.tool; returns the object."""
    rc, out, err = run(*args)
    path = write("out.json", out)
    p = subprocess.run([sys.executable, "-m", "json.tool", path], capture_output=True)
    check(f"--json parses with json.tool: {name}", rc == 0 and p.returncode == 0,
          f"exit {rc}, json.tool {p.returncode} {p.stderr.decode()[-200:]!r}: {out[:300]!r} {err[-300:]!r}")
    try:
        return json.loads(out)
    except ValueError:
        return {}


json_cases = {
    "ppl": ["ppl", TINY, "--ids", IDS, "--json"],
    "ppl --quant all": ["ppl", TINY, "--ids", IDS, "--json", "--quant", "all"],
    "ppl -f (demo)": ["ppl", MODEL, "-f", TEXT, "--json", "--precision", "fp16"],
    "info": ["info", TINY, "--json"],
    "outliers": ["outliers", TINY, "--ids", IDS, "--json"],
    "outliers, no features": ["outliers", TINY, "--ids", IDS, "--json", "--threshold", "60000"],
    "bench": ["bench", "--shape", "tiny", "--gemm-only", "--tokens", "2", "--iters", "1", "--json",
              "--outlier-frac", "0"],
}
for name, args in json_cases.items():
    json_tool(name, args)
for name, args in json_cases.items():
    if name.startswith(("ppl", "info", "outliers")):
        args = [degen_demo if a == MODEL else degen_tiny if a == TINY else a for a in args]
        obj = json_tool("degenerate model (final LayerNorm 65504): " + name, args)
        if name == "ppl":
            check("degenerate model: ppl is null with a reason, nll_mean finite",
                  obj.get("ppl", 0) is None and "ppl_null_reason" in obj and isinstance(obj.get("nll_mean"), float),
                  str(obj))
rc, out, err = run("ppl", degen_tiny, "--ids", IDS)
check("degenerate model: the text output says the perplexity overflows", rc == 0 and "ppl = inf" in out
      and "too large" in out, out + err)

# A model directory whose name is not UTF-8 and holds an ESC: the JSON string stays valid UTF-8.
odd = os.path.join(tmp_root.encode(), b"opt-\xff\x1b[2J")
os.symlink(os.path.abspath(TINY).encode(), odd)
p = subprocess.run([BIN, "outliers", odd, "--ids", IDS, "--json"], capture_output=True)
p2 = subprocess.run([sys.executable, "-m", "json.tool"], input=p.stdout, capture_output=True,
                    env=dict(os.environ, PYTHONIOENCODING="utf-8"))
check("outliers --json with a non-UTF-8 model path: valid JSON", p.returncode == 0 and p2.returncode == 0,
      f"{p.returncode} {p2.stderr.decode()[-200:]!r} {p.stdout[:200]!r}")

# ---- §4 values a checkpoint must not hold; forward passes that overflow ---------------------------
FC1 = "model.decoder.layers.0.fc1.weight"
for label, value, words in (("NaN", float("nan"), ["nan", "not a finite number"]),
                            ("inf", float("inf"), ["inf", "not a finite number"])):
    d = fresh(MODEL)
    set_values(d, FC1, {12345: value})
    out_dir = os.path.join(tmp_root, "conv-" + label)
    rc, out, err = run("convert", d, "-o", out_dir)
    check(f"convert refuses an fp16 {label} weight, naming tensor, element and value",
          rc == 1 and FC1 in err and "12345" in err and all(w in err for w in words) and not os.path.exists(out_dir),
          f"exit {rc}: {err[-400:]!r}")
    # Loading: the loader's check names the tensor. Until it is there, a forward pass that
    # overflows is still an error (the position); a NaN that the ReLU after fc1 swallows, or
    # that int8 quantization turns into 0, gives a plausible perplexity.
    for precision in ("fp16", "int8"):
        rc, out, err = run("ppl", d, "-f", TEXT, "--precision", precision)
        if LOADER_CHECKS_VALUES or rc != 0:
            check(f"{precision} ppl with an {label} weight: an error, no perplexity",
                  rc == 1 and "ppl" not in out and (FC1 in err or "position" in err), f"exit {rc}: {out!r} {err[-300:]!r}")
        else:
            skip(f"{precision} ppl with an {label} weight", "pending: the loader calls dtype_first_beyond_f16")

d = fresh("tests/data/fixtures/bloom-tiny-bf16")
header, _ = read_st(os.path.join(d, "model.safetensors"))
name = next(k for k in header if k.endswith("dense_h_to_4h.weight"))
set_values(d, name, {70: float("nan")})
rc, out, err = run("convert", d, "-o", os.path.join(tmp_root, "conv-bf16"))
check("convert refuses a BF16 NaN", rc == 1 and name in err and "70" in err and "nan" in err, err[-300:])

d = fresh(TINY)
header, data = read_st(os.path.join(d, "model.safetensors"))
e = header["model.decoder.layers.1.fc2.bias"]
b, end = e["data_offsets"]
vals = list(struct.unpack(f"<{(end - b) // 2}e", data[b:end]))
vals[3] = 1e5
f32 = struct.pack(f"<{len(vals)}f", *vals)
header["model.decoder.layers.1.fc2.bias"] = {"dtype": "F32", "shape": e["shape"], "data_offsets": [len(data), len(data) + len(f32)]}
write_st(os.path.join(d, "model.safetensors"), header, data + f32)
rc, out, err = run("convert", d, "-o", os.path.join(tmp_root, "conv-f32"))
check("convert refuses an F32 1e5 (beyond float16), naming it", rc == 1 and "fc2.bias" in err and "element 3" in err
      and "100000" in err and "65504" in err, err[-300:])

# an infinite embedding row: the forward pass overflows; generate must not emit ids from it
d = fresh(MODEL)
rc, out, err = run("tokenize", MODEL, "-p", "The old man", "--no-bos")
first_id = int(out.split()[0]) if rc == 0 else 5
set_values(d, "model.decoder.embed_tokens.weight", {first_id * 256 + 7: float("inf")})
for extra in (["--greedy"], ["--temperature", "0.8", "--seed", "1"], ["--greedy", "--precision", "fp16"]):
    rc, out, err = run("generate", d, "-p", "The old man", "-n", "5", "--print-ids", *extra)
    check(f"generate {' '.join(extra)} with an infinite embedding: an error, no ids",
          rc == 1 and out.strip() == "" and "error" in err and ("position" in err or "embed_tokens" in err),
          f"exit {rc}: {out!r} {err[-300:]!r}")
rc, out, err = run("ppl", d, "-f", TEXT, "--precision", "fp16")
check("ppl with an infinite embedding: an error naming the position, no perplexity",
      rc == 1 and "ppl" not in out and ("position" in err or "embed_tokens" in err), f"exit {rc}: {out!r} {err[-300:]!r}")
rc, out, err = run("outliers", d, "-f", TEXT)
check("outliers with an infinite embedding: an error naming the position",
      rc == 1 and ("position" in err or "embed_tokens" in err), f"exit {rc}: {err[-300:]!r}")

# ---- §6 numbers on the command line ---------------------------------------------------------------
for cmd, extra in (("generate", ["-p", "x", "-n", "1"]), ("outliers", ["--ids", IDS, "--no-ablation"])):
    for bad in ("-1", "18446744073709551616", "100000000000000000000000", "1e23", "+5", " 5", "", "0x10"):
        rc, out, err = run(cmd, TINY if cmd == "outliers" else MODEL, *extra, "--seed", bad)
        check(f"{cmd} --seed {bad!r} refused with the range", rc == 2 and "--seed" in err
              and "0 to 18446744073709551615" in err, f"exit {rc}: {err[-300:]!r}")
    rc, out, err = run(cmd, TINY if cmd == "outliers" else MODEL, *extra, "--seed", "18446744073709551615")
    check(f"{cmd} --seed 2^64-1 accepted", rc == 0, f"exit {rc}: {err[-300:]!r}")
rc, out, err = run("outliers", TINY, "--ids", IDS, "--json", "--seed", "18446744073709551615")
check("outliers --json prints the 64-bit seed exactly", rc == 0 and '"seed": 18446744073709551615' in out, out[-300:])

for args, words in ((["generate", MODEL, "-p", "x", "-n", "1000001"], ["-n", "0 to 1000000"]),
                    (["generate", MODEL, "-p", "x", "--top-k", "-1"], ["--top-k", "0 to 1073741824"]),
                    (["ppl", TINY, "--ids", IDS, "--stride", "0"], ["--stride", "1 to 1048576"]),
                    (["ppl", TINY, "--ids", IDS, "--ctx", "1"], ["--ctx", "2 to 1048576"]),
                    (["ppl", TINY, "--ids", IDS, "--threads", "2000"], ["--threads", "1 to 1024"]),
                    (["convert", TINY, "-o", os.path.join(tmp_root, "x"), "--shard-size", "0"], ["--shard-size", "1 byte"])):
    rc, out, err = run(*args)
    check(f"{' '.join(args[:1] + args[-2:])}: the message states the real limit", rc == 2 and all(w in err for w in words),
          f"exit {rc}: {err[-300:]!r}")

# ---- §6 strings from files are escaped in messages ------------------------------------------------
ESC_NAME = "model.decoder.\x1b]0;pwned\x07\x1b[2J\u009b31m\udcff"   # OSC, CSI, C1 CSI, a lone 0xff byte


def no_raw_controls(err):
    return not any(c in err for c in ("\x1b", "\x07", "\u009b", "\ufffd"))


d = fresh(TINY)
header, data = read_st(os.path.join(d, "model.safetensors"))
header[ESC_NAME] = {"dtype": "F64", "shape": [1], "data_offsets": [len(data), len(data) + 8]}
write_st(os.path.join(d, "model.safetensors"), header, data + b"\0" * 8)
rc, out, err = run("info", d)
check("a tensor name with ESC sequences: error escaped", rc == 1 and no_raw_controls(err) and "\\x1b]0;pwned\\x07" in err
      and "\\u009b" in err and "\\xff" in err, repr(err[-300:]))
d = fresh(TINY)
header, data = read_st(os.path.join(d, "model.safetensors"))
header[ESC_NAME] = {"dtype": "F16", "shape": [1], "data_offsets": [len(data), len(data) + 2]}
write_st(os.path.join(d, "model.safetensors"), header, data + b"\0\0")
rc, out, err = run("convert", d, "-o", os.path.join(tmp_root, "conv-esc"))
check("convert's warning about an unknown tensor with ESC sequences: escaped", rc == 0 and "warning" in err
      and no_raw_controls(err) and "\\x1b[2J" in err, repr(err[-300:]))
d = fresh(TINY)
cfg = json.load(open(os.path.join(d, "config.json")))
cfg["model_type"] = "\x1b[31mllama\nfake line"
json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
rc, out, err = run("info", d)
check("a config value with ESC and a newline: error escaped, on one line", rc == 1 and no_raw_controls(err)
      and "\\x1b[31mllama\\nfake line" in err and err.count("\n") == 1, repr(err))
rc, out, err = run("\x1b[31mfrobnicate")
check("an unknown command with ESC: escaped", rc == 2 and no_raw_controls(err) and "\\x1b[31mfrobnicate" in err, repr(err[:200]))
rc, out, err = run("ppl", TINY, "--ids", IDS, "--precision", "\x1b[2J")
check("a bad option value with ESC: escaped", rc == 2 and no_raw_controls(err) and "\\x1b[2J" in err, repr(err))

# ---- §6 JSON strings with \u0000 ------------------------------------------------------------------
d = fresh(TINY)
header, data = read_st(os.path.join(d, "model.safetensors"))
text = json.dumps(header, separators=(",", ":")).replace('"model.decoder.layers.1.fc2.bias"', '"x\\u0000evil"')
write_st(os.path.join(d, "model.safetensors"), None, data, header_text=text)
rc, out, err = run("info", d)
check("safetensors tensor name \"x\\u0000evil\": refused", rc == 1 and "model.safetensors" in err and "\\u0000" in err,
      repr(err[-300:]))
d = fresh(TINY)
cfg_text = open(os.path.join(d, "config.json")).read().replace('"model_type": "opt"', '"model_type": "opt\\u0000xyz"')
write(os.path.join(d, "config.json"), cfg_text)
d_idx = fresh(os.path.join(FIX, "opt-tiny-sharded"))
idx_path = os.path.join(d_idx, "model.safetensors.index.json")
idx = json.load(open(idx_path))
first = next(iter(idx["weight_map"]))
idx_text = json.dumps(idx).replace(json.dumps(first) + ": " + json.dumps(idx["weight_map"][first]),
                                   json.dumps(first) + ': "' + idx["weight_map"][first] + '\\u0000../../etc/passwd"')
write(idx_path, idx_text)
for label, path in (("config model_type \"opt\\u0000xyz\"", d), ("index entry \"shard\\u0000../../etc/passwd\"", d_idx)):
    rc, out, err = run("info", path)
    if CONFIG_AND_INDEX_USE_JSON_PARSE or rc != 0:
        check(f"{label}: refused", rc == 1 and "\\u0000" in err, repr(err[-300:]))
    else:
        skip(label, "pending: config.c and checkpoint.c parse through json_parse")

# ---- §6 a tokenizer that does not fit the model ----------------------------------------------------
for cmd, extra in (("generate", ["-p", "hello", "-n", "3"]), ("ppl", ["-f", TEXT]), ("outliers", ["-f", TEXT])):
    rc, out, err = run(cmd, TINY, "--tokenizer", MODEL, *extra)
    check(f"{cmd} with another model's tokenizer (8192 ids, model 1000): refused before any work",
          rc == 1 and "8191" in err and "1000" in err and out == "", f"exit {rc}: {out[:100]!r} {err[-300:]!r}")
tok = os.path.join(tmp_root, "tok-nobos")
os.makedirs(tok)
for f in ("vocab.json", "merges.txt", "tokenizer_config.json"):
    shutil.copy(os.path.join(MODEL, f), tok)
tc = json.load(open(os.path.join(tok, "tokenizer_config.json")))
tc["bos_token"] = "<s-not-there>"
json.dump(tc, open(os.path.join(tok, "tokenizer_config.json"), "w"))
for args in (["tokenize", tok, "-p", "hi"], ["generate", MODEL, "--tokenizer", tok, "-p", "hi", "-n", "2"]):
    rc, out, err = run(*args)
    check(f"{args[0]}: a BOS named in the tokenizer config but missing from the vocabulary is an error",
          rc == 1 and "<s-not-there>" in err and "BOS" in err, f"exit {rc}: {err[-300:]!r}")
tc["add_bos_token"] = False
json.dump(tc, open(os.path.join(tok, "tokenizer_config.json"), "w"))
rc, out, err = run("tokenize", tok, "-p", "hi")
check("... unless the tokenizer does not add a BOS (add_bos_token false)", rc == 0 and out.split()[0] != "2", out + err)

shutil.rmtree(tmp_root, ignore_errors=True)
finish()
