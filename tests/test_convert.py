#!/usr/bin/env python3
"""test_convert.py — `llmint8 convert` writes the transformers + bitsandbytes 8-bit layout.

For each fixture: the output's tensor names, dtypes and shapes (docs/MODELS.md), the per-row
scales and int8 weights against a re-computation from the 16-bit weights, config.json's
quantization_config block (docs/MODELS.md), and that the converted model gives exactly the
same perplexity as quantizing the original on load. Then the command's promises:
refusing to overwrite, --force, atomicity (an error, a signal or a full disk leaves
nothing behind), sharding with a valid index.

Usage (from the repository root): python3 tests/test_convert.py BUILD/llmint8
Prints "ok - NAME" / "not ok - NAME: WHY" per check; exits 1 if any failed.
"""
import glob
import json
import math
import re
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

from clitest import BIN, check, finish, run
FIX = "tests/data/fixtures"

# docs/MODELS.md: what transformers writes for a default load_in_8bit=True model.
QUANT_BLOCK = {
    "_load_in_4bit": False, "_load_in_8bit": True, "bnb_4bit_compute_dtype": "float32",
    "bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False,
    "llm_int8_enable_fp32_cpu_offload": False, "llm_int8_has_fp16_weight": False, "llm_int8_skip_modules": None,
    "llm_int8_threshold": 6.0, "load_in_4bit": False, "load_in_8bit": True, "quant_method": "bitsandbytes",
}
OPT_PROJ = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "project_in", "project_out")
BLOOM_PROJ = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
DTYPE_SIZE = {"F16": 2, "BF16": 2, "F32": 4, "I8": 1, "U8": 1}


# ---- reading checkpoints ----------------------------------------------------------------------

def read_st(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8:8 + n]), raw[8 + n:]


def write_st(path, header, data):
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + data)


def load_dir(d):
    """{name: (dtype, shape, bytes)} over model.safetensors or all shards of the index."""
    files = [os.path.join(d, "model.safetensors")]
    if not os.path.exists(files[0]):
        with open(os.path.join(d, "model.safetensors.index.json")) as f:
            files = [os.path.join(d, s) for s in sorted(set(json.load(f)["weight_map"].values()))]
    out = {}
    for path in files:
        n, header, data = read_st(path)
        for name, e in header.items():
            if name != "__metadata__":
                b, end = e["data_offsets"]
                out[name] = (e["dtype"], e["shape"], data[b:end])
    return out


def floats(dtype, raw):
    if dtype == "F16":
        return list(struct.unpack(f"<{len(raw) // 2}e", raw))
    if dtype == "BF16":
        return [struct.unpack("<f", b"\0\0" + raw[i:i + 2])[0] for i in range(0, len(raw), 2)]
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def f16(x):
    return struct.unpack("<e", struct.pack("<e", x))[0]


def short(name):
    for p in ("model.", "transformer."):
        if name.startswith(p):
            return name[len(p):]
    return name


def nll_mean(d, *extra):
    rc, out, err = run("ppl", d, "--ids", IDS, "--json", *extra)
    try:
        return json.loads(out)["nll_mean"]
    except (ValueError, KeyError):
        return f"exit {rc}: {err.strip()[-300:]}"


# ---- the conversions ----------------------------------------------------------------------------

tmp_root = tempfile.mkdtemp(prefix="llmint8-convert-")
IDS = os.path.join(tmp_root, "ids.txt")
with open(IDS, "w") as f:
    f.write("2 31 415 92 65 35 89 79 323 84 626 433 83 279 502 88\n")


def leftovers(out):
    """Anything convert may have left next to OUT_DIR (the directory or its temporaries)."""
    return glob.glob(glob.escape(out) + "*")


# The keys an 8-bit save changes; every other value of config.json keeps its text.
SAVE_CHANGES = ("torch_dtype", "dtype", "quantization_config")


def raw_config(text):
    """config.json's values with every number as (type, the text it was written with), so that
    0.0 and 0, or 1e-05 and 1E-5, differ: the comparison is of the written values, not of what
    they mean."""
    return json.loads(text, parse_float=lambda t: ("float", t), parse_int=lambda t: ("int", t),
                      parse_constant=lambda t: ("constant", t))


def check_config_text(label, src_text, out_text):
    """Key by key: each value of the source config appears in the output written exactly as in
    the source, except those SAVE_CHANGES names; the output adds nothing else."""
    src, out = raw_config(src_text), raw_config(out_text)
    differ = [k for k in src if k not in SAVE_CHANGES and (k not in out or out[k] != src[k])]
    check(f"{label}: every config value but the dtype and quantization_config is written as in the source",
          not differ, "; ".join(f"{k}: {src[k]!r} -> {out.get(k, 'missing')!r}" for k in differ[:5]))
    added = [k for k in out if k not in src and k not in SAVE_CHANGES]
    check(f"{label}: no other key added", not added, str(added))


def check_projection(label, name, src, dst):
    """One projection: I8 weight + F32 SCB + U8 scalar 0, consistent with the 16-bit weight."""
    dt, shape, raw = dst[name + ".weight"]
    sdt, sshape, sraw = dst.get(name + ".SCB", (None, None, b""))
    fdt, fshape, fraw = dst.get(name + ".weight_format", (None, None, b""))
    ok = dt == "I8" and sdt == "F32" and sshape == [shape[0]] and fdt == "U8" and fshape == [] and fraw == b"\0"
    check(f"{label}: {short(name)} is I8 {shape} + SCB F32 + weight_format U8 scalar 0", ok,
          f"{dt} {shape}, {sdt} {sshape}, {fdt} {fshape} {fraw!r}")
    wdt, wshape, wraw = src[short(name) + ".weight"]
    rows, cols = wshape
    w = [f16(v) for v in floats(wdt, wraw)]       # bitsandbytes quantizes the fp16 copy
    scb = floats("F32", sraw)
    cb = struct.unpack(f"<{len(raw)}b", raw)
    worst_scb = worst_cb = off_by_one = 0
    for r in range(rows):
        row = w[r * cols:(r + 1) * cols]
        absmax = max(abs(v) for v in row)
        worst_scb = max(worst_scb, abs(scb[r] - absmax))
        # quant.h: scale = (1/absmax) * 127 in float32, as PyTorch evaluates 127.0 / SCB
        scale = f32(f32(1.0 / absmax) * 127.0) if absmax else 0.0
        for c in range(cols):
            want = round(f32(row[c] * scale))   # Python's round() is half-to-even, like rint
            d = abs(cb[r * cols + c] - want)
            worst_cb = max(worst_cb, d)
            off_by_one += d == 1
    # SCB is exact. CB may differ by one where this double-precision emulation of float32
    # rounds a tie differently: allow a handful, never more than one step.
    check(f"{label}: {short(name)} SCB = row absmax, CB = rne(w*127/SCB)",
          worst_scb == 0 and worst_cb <= 1 and off_by_one <= max(1, rows * cols // 1000),
          f"worst SCB error {worst_scb}, worst CB error {worst_cb}, {off_by_one} codes off by one")


def check_conversion(fixture, extra=()):
    src_dir = os.path.join(FIX, fixture)
    out = os.path.join(tmp_root, fixture + "-int8")
    rc, _, err = run("convert", src_dir, "-o", out, *extra)
    check(f"{fixture}: convert exits 0", rc == 0, err.strip()[-400:])
    if rc != 0:
        return None
    check(f"{fixture}: no temporary directory left", leftovers(out) == [out], str(leftovers(out)))
    with open(os.path.join(src_dir, "config.json")) as f:
        src_cfg = json.load(f)
    with open(os.path.join(out, "config.json")) as f:
        text = f.read()
    cfg = json.loads(text)
    arch = src_cfg["model_type"]
    prefix = "model." if arch == "opt" else "transformer."
    projs = OPT_PROJ if arch == "opt" else BLOOM_PROJ

    # config.json: original fields + torch_dtype + the exact block
    kept = all(cfg.get(k) == v for k, v in src_cfg.items() if k not in ("torch_dtype", "quantization_config"))
    check(f"{fixture}: config keeps the original fields", kept)
    with open(os.path.join(src_dir, "config.json")) as f:
        check_config_text(fixture, f.read(), text)
    check(f"{fixture}: config torch_dtype float16", cfg.get("torch_dtype") == "float16", str(cfg.get("torch_dtype")))
    check(f"{fixture}: quantization_config block", cfg.get("quantization_config") == QUANT_BLOCK,
          str(cfg.get("quantization_config")))
    check(f"{fixture}: llm_int8_threshold written as a float (6.0, not 6)",
          isinstance(cfg["quantization_config"]["llm_int8_threshold"], float), text[-200:])
    for name in ("generation_config.json",):
        if os.path.exists(os.path.join(src_dir, name)):
            same = open(os.path.join(src_dir, name), "rb").read() == open(os.path.join(out, name), "rb").read()
            check(f"{fixture}: {name} copied", same)

    # tensors
    src = {short(k): v for k, v in load_dir(src_dir).items()}
    dst = load_dir(out)
    check(f"{fixture}: every name carries the {prefix!r} prefix",
          all(k.startswith(prefix) for k in dst), str([k for k in dst if not k.startswith(prefix)][:3]))
    check(f"{fixture}: tied lm_head.weight not written", not any("lm_head" in k for k in dst))
    proj_names = sorted(k[:-len(".weight")] for k in dst
                        if k.endswith(".weight") and k.split(".")[-2] in projs)
    expected = set()
    for k in src:
        if k == "lm_head.weight":
            continue
        module = k.rsplit(".", 1)[0]
        if k.endswith(".weight") and module.split(".")[-1] in projs:
            expected |= {prefix + k, prefix + module + ".SCB", prefix + module + ".weight_format"}
        else:
            expected.add(prefix + k)
    check(f"{fixture}: output names = input names + SCB/weight_format", set(dst) == expected,
          f"extra {sorted(set(dst) - expected)[:4]} missing {sorted(expected - set(dst))[:4]}")
    n_layers = src_cfg.get("num_hidden_layers", src_cfg.get("n_layer"))
    per_layer = 6 if arch == "opt" else 4
    extra_proj = 2 if src_cfg.get("word_embed_proj_dim", src_cfg.get("hidden_size")) != src_cfg.get("hidden_size") else 0
    check(f"{fixture}: {len(proj_names)} projections quantized", len(proj_names) == n_layers * per_layer + extra_proj,
          str(proj_names))
    for name, (dt, shape, raw) in dst.items():
        if name.endswith((".SCB", ".weight_format")) or name[:-len(".weight")] in proj_names:
            continue
        sdt, sshape, sraw = src[short(name)]
        same = dt == "F16" and shape == sshape and (sdt != "F16" or raw == sraw)
        if same and sdt != "F16":
            same = floats("F16", raw) == [f16(v) for v in floats(sdt, sraw)]
        if not same:
            check(f"{fixture}: {name} is F16 {sshape} with the original values", False, f"{dt} {shape}")
            break
    else:
        check(f"{fixture}: other tensors are F16 with the original values", True)
    for name in proj_names[:3] + proj_names[-1:]:
        check_projection(fixture, name, src, dst)

    # alignment: every tensor starts at a multiple of its element size within the file
    files = [os.path.join(out, "model.safetensors")] if os.path.exists(os.path.join(out, "model.safetensors")) \
        else sorted(glob.glob(os.path.join(out, "model-*.safetensors")))
    misaligned = []
    for path in files:
        n, header, data = read_st(path)
        check(f"{fixture}: {os.path.basename(path)} header padded to 8 bytes", n % 8 == 0, str(n))
        check(f"{fixture}: {os.path.basename(path)} metadata format pt", header.get("__metadata__") == {"format": "pt"})
        spans = sorted(tuple(e["data_offsets"]) for k, e in header.items() if k != "__metadata__")
        contiguous = spans[0][0] == 0 and spans[-1][1] == len(data) and \
            all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        check(f"{fixture}: {os.path.basename(path)} data contiguous", contiguous)
        misaligned += [k for k, e in header.items()
                       if k != "__metadata__" and (8 + n + e["data_offsets"][0]) % DTYPE_SIZE[e["dtype"]]]
    check(f"{fixture}: tensors aligned in the file", not misaligned, str(misaligned[:3]))
    return out


results = {}
for fx in ("opt-tiny", "opt-tiny-postln", "opt-tiny-sharded", "bloom-tiny", "bloom-tiny-bf16"):
    results[fx] = check_conversion(fx)

# PyTorch .bin twins (tests/data/fixtures-bin: the same weights as torch.save wrote them, with
# views, shared storages and shards) convert to exactly the same files as their safetensors twin.
for bin_fx, twin in (("opt-tiny-bin", "opt-tiny"), ("opt-tiny-noprefix-bin", "opt-tiny"),
                     ("opt-tiny-views-bin", "opt-tiny"), ("opt-tiny-sharded-bin", "opt-tiny"),
                     ("opt-tiny-postln-bin", "opt-tiny-postln"), ("bloom-tiny-bin", "bloom-tiny"),
                     ("bloom-tiny-bf16-bin", "bloom-tiny-bf16")):
    out = os.path.join(tmp_root, bin_fx + "-int8")
    rc, _, err = run("convert", os.path.join("tests/data/fixtures-bin", bin_fx), "-o", out)
    same = rc == 0 and results.get(twin) and load_dir(out) == load_dir(results[twin]) and \
        open(os.path.join(out, "config.json")).read() == open(os.path.join(results[twin], "config.json")).read()
    check(f"{bin_fx}: convert gives the same int8 checkpoint as {twin}", same, err.strip()[-300:])

# The converted model runs exactly like quantize-on-load (same int8 weights, same 16-bit rest;
# BF16 inputs differ in their 16-bit tensors, which become F16).
for fx in ("opt-tiny", "opt-tiny-postln", "opt-tiny-sharded", "bloom-tiny"):
    if results.get(fx):
        a, b = nll_mean(os.path.join(FIX, fx)), nll_mean(results[fx])
        check(f"{fx}: converted int8 ppl identical to quantize-on-load", a == b and isinstance(a, float), f"{a} vs {b}")
        rc, out, err = run("info", results[fx], "--json")
        check(f"{fx}: info sees an int8 checkpoint", rc == 0 and json.loads(out or "{}").get("int8_checkpoint"),
              out + err)

# ---- config.json: values written as in the source --------------------------------------------
# opt-tiny with a config.json that re-printing would change: floats with zero fractions, an
# upper-case exponent, trailing zeros, an integer beyond 64 bits, a float beyond double's
# precision, nested objects and arrays, escapes, unusual spacing; once with transformers 4's
# "torch_dtype" and once with transformers 5's "dtype".
TRICKY = """{ "_name_or_path" : "facebook/opt-tiny\\u00e9\\n",
  "activation_function": "relu", "architectures": ["OPTForCausalLM"],
  "attention_dropout":0.0, "dropout": 0.0 ,"layerdrop": 0.00, "init_std": 2.0E-2,
  "bos_token_id": 2, "eos_token_id": 2, "pad_token_id": 1, "do_layer_norm_before": true,
  "enable_bias": true, "layer_norm_elementwise_affine": true, "_remove_final_layer_norm": false,
  "ffn_dim": 256, "hidden_size": 64, "max_position_embeddings": 128, "model_type": "opt",
  "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 1000, "word_embed_proj_dim": 64,
  "custom_list": [1.0, 2, 3.50e0, -0.0, {"deep": [1.10, null]}],
  "custom_obj": {"a": 0.0, "b": "x\\"y}", "c": {"d": 1e400}},
  "huge_int": 123456789012345678901234567890, "precise": 0.1000000000000000055511151231257827,
  "negative": -5e-1, DTYPE_KEY "float32",
  "use_cache": true
}
"""
for key in ("torch_dtype", "dtype"):
    src_dir = os.path.join(tmp_root, f"tricky-{key}")
    shutil.copytree(os.path.join(FIX, "opt-tiny"), src_dir)
    src_text = TRICKY.replace("DTYPE_KEY", f'"{key}":')
    with open(os.path.join(src_dir, "config.json"), "w") as f:
        f.write(src_text)
    out = os.path.join(tmp_root, f"tricky-{key}-int8")
    rc, _, err = run("convert", src_dir, "-o", out)
    check(f"tricky config ({key}): convert exits 0", rc == 0, err.strip()[-400:])
    if rc != 0:
        continue
    out_text = open(os.path.join(out, "config.json")).read()
    check_config_text(f"tricky config ({key})", src_text, out_text)
    cfg = json.loads(out_text)
    other = "dtype" if key == "torch_dtype" else "torch_dtype"
    check(f"tricky config ({key}): {key} is float16, {other} not added", cfg.get(key) == "float16" and other not in cfg,
          out_text[-300:])
    check(f"tricky config ({key}): the 8-bit block", cfg.get("quantization_config") == QUANT_BLOCK, out_text[-600:])
    check(f"tricky config ({key}): 0.0 stays 0.0 in the text", re.search(r'"dropout": 0\.0 ,', out_text) is not None,
          out_text[:400])
    rc, out_json, err = run("info", out, "--json")
    check(f"tricky config ({key}): the converted model opens", rc == 0 and json.loads(out_json or "{}").get("int8_checkpoint"),
          err[-300:])

# A config with both spellings: both become float16.
src_dir = os.path.join(tmp_root, "tricky-both")
shutil.copytree(os.path.join(FIX, "opt-tiny"), src_dir)
src_text = TRICKY.replace("DTYPE_KEY", '"dtype": "bfloat16", "torch_dtype":')
with open(os.path.join(src_dir, "config.json"), "w") as f:
    f.write(src_text)
out = os.path.join(tmp_root, "tricky-both-int8")
rc, _, err = run("convert", src_dir, "-o", out)
out_text = open(os.path.join(out, "config.json")).read() if rc == 0 else "{}"
cfg = json.loads(out_text)
check("config with dtype and torch_dtype: both float16", rc == 0 and cfg.get("dtype") == "float16" and
      cfg.get("torch_dtype") == "float16", err[-300:] + out_text[-300:])
if rc == 0:
    check_config_text("config with both dtype keys", src_text, out_text)

# ---- options and promises -----------------------------------------------------------------------
opt_tiny = os.path.join(FIX, "opt-tiny")

out = os.path.join(tmp_root, "thr")
rc, _, err = run("convert", opt_tiny, "-o", out, "--threshold", "4.5")
cfg = json.load(open(os.path.join(out, "config.json"))) if rc == 0 else {}
check("--threshold 4.5 is stored", rc == 0 and cfg["quantization_config"]["llm_int8_threshold"] == 4.5, err)
out = os.path.join(tmp_root, "thr0")
rc, _, err = run("convert", opt_tiny, "-o", out, "--threshold", "0")
text = open(os.path.join(out, "config.json")).read() if rc == 0 else ""
check("--threshold 0 is stored as 0.0", rc == 0 and re.search(r'"llm_int8_threshold":\s*0\.0\b', text), text[-300:])
if rc == 0:
    a = nll_mean(opt_tiny, "--threshold", "0")
    b = nll_mean(out)
    check("the stored threshold is used when running the converted model", a == b, f"{a} vs {b}")

existing = results.get("opt-tiny") or os.path.join(tmp_root, "missing")
marker = os.path.join(existing, "marker.txt")
open(marker, "w").write("old")
rc, _, err = run("convert", opt_tiny, "-o", existing)
check("refuses to overwrite an existing OUT_DIR", rc == 1 and "exists" in err and "--force" in err
      and os.path.exists(marker), err)
# --force replaces only a checkpoint directory: a file convert never wrote stops it (issue 10)
rc, _, err = run("convert", opt_tiny, "-o", existing, "--force")
check("--force refuses a previous output holding a foreign file, naming it", rc == 1 and "'marker.txt'" in err
      and open(marker).read() == "old" and os.path.exists(os.path.join(existing, "model.safetensors"))
      and leftovers(existing) == [existing], err + str(leftovers(existing)))
os.remove(marker)
old_card = os.path.join(existing, "README.md")   # a checkpoint file: replaced with the rest
open(old_card, "w").write("old")
rc, _, err = run("convert", opt_tiny, "-o", existing, "--force")
check("--force replaces a previous output", rc == 0 and not os.path.exists(old_card)
      and os.path.exists(os.path.join(existing, "model.safetensors")) and leftovers(existing) == [existing],
      err + str(leftovers(existing)))
open(os.path.join(tmp_root, "a-file"), "w").write("x")
rc, _, err = run("convert", opt_tiny, "-o", os.path.join(tmp_root, "a-file"), "--force")
check("--force does not replace a plain file", rc == 1 and open(os.path.join(tmp_root, "a-file")).read() == "x", err)

if results.get("opt-tiny"):
    out = os.path.join(tmp_root, "twice")
    rc, _, err = run("convert", results["opt-tiny"], "-o", out)
    check("an int8 checkpoint is refused", rc == 1 and "already" in err and not leftovers(out), err)

rc, _, err = run("convert", opt_tiny, "-o", opt_tiny, "--force")
check("output = input is refused", rc == 1 and os.path.exists(os.path.join(opt_tiny, "model.safetensors")), err)

# --force never replaces MODEL_DIR, a directory above it or the current directory, however
# the path is spelled; nor a directory holding anything but checkpoint files. Each refusal
# leaves everything as it was.
tree = os.path.join(tmp_root, "tree")
parent = os.path.join(tree, "parent")
model = os.path.join(parent, "in")
shutil.copytree(opt_tiny, model)
open(os.path.join(parent, "notes.txt"), "w").write("precious")
os.symlink(tree, os.path.join(tmp_root, "link-to-tree"))
prev = os.path.join(tmp_root, "prev-out")   # a previous output: replaceable, except as the cwd
rc, _, err = run("convert", opt_tiny, "-o", prev)
check("a previous output to replace", rc == 0, err)


def snapshot():
    return sorted((os.path.relpath(os.path.join(r, f), tmp_root), os.path.getsize(os.path.join(r, f)))
                  for base in (tree, prev) for r, _, fs in os.walk(base) for f in fs)


def convert_in(cwd, model_dir, out):
    p = subprocess.run([BIN, "convert", model_dir, "-o", out, "--force"], cwd=cwd, capture_output=True)
    return p.returncode, p.stderr.decode("utf-8", "replace")


before = snapshot()
for name, cwd, model_dir, out, words in [
    ("MODEL_DIR itself", None, model, model, ["input directory"]),
    ("MODEL_DIR as '.'", model, ".", ".", ["input directory"]),
    ("the parent of MODEL_DIR", None, model, parent, ["contains the input directory"]),
    ("the parent, spelled MODEL_DIR/..", None, model, os.path.join(model, ".."), ["contains the input directory"]),
    ("the grandparent", None, model, tree, ["contains the input directory"]),
    ("'/'", None, model, "/", ["contains the input directory"]),
    ("a symlink to the grandparent", None, model, os.path.join(tmp_root, "link-to-tree"), ["not a directory"]),
    ("a path through a symlink to the grandparent", None, model, os.path.join(tmp_root, "link-to-tree", "."),
     ["contains the input directory"]),
    ("the current directory as '.'", prev, model, ".", ["current directory"]),
    ("the current directory by its full path", prev, model, prev, ["current directory"]),
    ("the parent as '..' from MODEL_DIR", model, ".", "..", ["contains the input directory"]),
]:
    rc, err = convert_in(cwd, model_dir, out)
    check(f"--force refuses {name}", rc == 1 and all(w in err for w in words) and snapshot() == before,
          f"exit {rc}: {err.strip()[-300:]!r}")
check("after the refusals: notes.txt, the model and the previous output are intact",
      snapshot() == before and open(os.path.join(parent, "notes.txt")).read() == "precious", str(snapshot())[:300])
os.mkdir(os.path.join(prev, "sub"))
rc, err = convert_in(None, opt_tiny, prev)
check("--force refuses a directory holding a subdirectory, naming it", rc == 1 and "'sub'" in err
      and os.path.isdir(os.path.join(prev, "sub")), err)
os.rmdir(os.path.join(prev, "sub"))
os.symlink(os.path.join(opt_tiny, "config.json"), os.path.join(prev, "generation_config.json.bak"))
rc, err = convert_in(None, opt_tiny, prev)
check("--force refuses an unknown name even as a symlink", rc == 1 and "generation_config.json.bak" in err, err)
os.remove(os.path.join(prev, "generation_config.json.bak"))
for f in ("pytorch_model-00001-of-00002.bin", "pytorch_model.bin.index.json", ".gitattributes", "tokenizer.json"):
    open(os.path.join(prev, f), "w").write("x")
os.symlink(os.path.join(opt_tiny, "config.json"), os.path.join(prev, "added_tokens.json"))
rc, err = convert_in(None, opt_tiny, prev)
check("--force replaces a hub-style checkpoint directory (.bin shards, .gitattributes, symlinks); the symlink's "
      "target stays", rc == 0 and sorted(os.listdir(prev)) == sorted(os.listdir(existing))
      and os.path.exists(os.path.join(opt_tiny, "config.json")), err + str(os.listdir(prev)))
empty = os.path.join(tmp_root, "empty-dir")
os.mkdir(empty)
rc, err = convert_in(None, opt_tiny, empty)
check("--force replaces an empty directory", rc == 0 and os.path.exists(os.path.join(empty, "model.safetensors")), err)

# corrupt input: an error and nothing left behind
bad = os.path.join(tmp_root, "bad-input")
shutil.copytree(opt_tiny, bad)
n, header, data = read_st(os.path.join(bad, "model.safetensors"))
del header["model.decoder.layers.1.fc2.weight"]
write_st(os.path.join(bad, "model.safetensors"), header, data)
out = os.path.join(tmp_root, "from-bad")
rc, _, err = run("convert", bad, "-o", out)
check("missing tensor: error names it, nothing left", rc == 1 and "decoder.layers.1.fc2.weight" in err
      and not leftovers(out), err + str(leftovers(out)))
with open(os.path.join(bad, "model.safetensors"), "r+b") as f:
    f.truncate(100000)
rc, _, err = run("convert", bad, "-o", out)
check("truncated input: error, nothing left", rc == 1 and "model.safetensors" in err and not leftovers(out),
      err + str(leftovers(out)))

# an extra, unknown tensor is reported and left out
extra = os.path.join(tmp_root, "extra-input")
shutil.copytree(opt_tiny, extra)
n, header, data = read_st(os.path.join(extra, "model.safetensors"))
header["model.decoder.version"] = {"dtype": "F32", "shape": [1], "data_offsets": [len(data), len(data) + 4]}
write_st(os.path.join(extra, "model.safetensors"), header, data + struct.pack("<f", 1.0))
out = os.path.join(tmp_root, "from-extra")
rc, _, err = run("convert", extra, "-o", out)
check("unknown tensor: warning, not copied", rc == 0 and "decoder.version" in err and "warning" in err
      and "model.decoder.version" not in load_dir(out), err)

# usage errors
rc, _, err = run("convert", opt_tiny)
check("no -o: usage error", rc == 2, err)
rc, _, err = run("convert", opt_tiny, "-o", os.path.join(tmp_root, "x"), "--shard-size", "12XB")
check("bad --shard-size: usage error", rc == 2 and "shard-size" in err, err)
rc, _, err = run("convert", opt_tiny, "-o", os.path.join(tmp_root, "no", "such", "parent"))
check("missing parent directory: error", rc == 1 and "parent" in err, err)
rc, out_text, _ = run("convert", "--help")
check("convert --help has an example", rc == 0 and "Example" in out_text)

# sharding
out = os.path.join(tmp_root, "sharded")
rc, _, err = run("convert", os.path.join(FIX, "bloom-tiny"), "-o", out, "--shard-size", "50KB")
shards = sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, "model-*.safetensors")))
check("--shard-size 50KB gives several shards", rc == 0 and len(shards) >= 4, err + str(shards))
if rc == 0 and shards:
    idx = json.load(open(os.path.join(out, "model.safetensors.index.json")))
    names = {f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)}
    check("shard names model-0000i-of-0000N", set(shards) == names, str(shards))
    check("no model.safetensors next to the shards", not os.path.exists(os.path.join(out, "model.safetensors")))
    where = {}
    total = 0
    for s in shards:
        n, header, data = read_st(os.path.join(out, s))
        check(f"{s} no larger than 50KB (unless one tensor is)", len(data) <= 50000 or len(header) == 2, str(len(data)))
        for k, e in header.items():
            if k != "__metadata__":
                where[k] = s
                total += e["data_offsets"][1] - e["data_offsets"][0]
    check("index weight_map names every tensor's shard", idx.get("weight_map") == where,
          str(set(idx.get("weight_map", {}).items()) ^ set(where.items()))[:300])
    check("index total_size", idx.get("metadata", {}).get("total_size") == total, f"{idx.get('metadata')} vs {total}")
    a, b = nll_mean(results.get("bloom-tiny") or out), nll_mean(out)
    check("sharded output runs like the single file", a == b and isinstance(a, float), f"{a} vs {b}")

# SIGTERM in the middle: the temporary directory goes away. A synthetic 50 MB OPT model
# takes long enough to convert that the signal arrives mid-way.
big = os.path.join(tmp_root, "big")
os.makedirs(big)
D, F_, L_, V = 512, 2048, 8, 1000
cfg = {"model_type": "opt", "vocab_size": V, "hidden_size": D, "num_hidden_layers": L_, "num_attention_heads": 8,
       "ffn_dim": F_, "max_position_embeddings": 64, "enable_bias": False}
json.dump(cfg, open(os.path.join(big, "config.json"), "w"))
pattern = struct.pack("<8e", 0.5, -0.25, 0.125, 1.0, -2.0, 0.0, 0.75, -0.5)
header, chunks, off = {}, [], 0


def add(name, *shape):
    global off
    n = math.prod(shape) * 2
    header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [off, off + n]}
    chunks.append(pattern * (n // len(pattern)) + pattern[:n % len(pattern)])
    off += n


add("model.decoder.embed_tokens.weight", V, D)
add("model.decoder.embed_positions.weight", 66, D)
add("model.decoder.final_layer_norm.weight", D)
add("model.decoder.final_layer_norm.bias", D)
for l in range(L_):
    p = f"model.decoder.layers.{l}."
    for m in ("q_proj", "k_proj", "v_proj", "out_proj"):
        add(p + f"self_attn.{m}.weight", D, D)
    add(p + "fc1.weight", F_, D)
    add(p + "fc2.weight", D, F_)
    for ln in ("self_attn_layer_norm", "final_layer_norm"):
        add(p + ln + ".weight", D)
        add(p + ln + ".bias", D)
write_st(os.path.join(big, "model.safetensors"), header, b"".join(chunks))
del chunks
out = os.path.join(tmp_root, "big-int8")
proc = subprocess.Popen([BIN, "convert", big, "-o", out], stderr=subprocess.PIPE)
t0 = time.time()
while not glob.glob(glob.escape(out) + ".tmp-*") and proc.poll() is None and time.time() - t0 < 30:
    time.sleep(0.002)
proc.send_signal(signal.SIGTERM)
proc.wait(timeout=60)
err = proc.stderr.read().decode("utf-8", "replace")
if proc.returncode == 0:
    print("ok - SIGTERM mid-conversion # SKIP finished before the signal arrived")
else:
    check("SIGTERM mid-conversion: dies of the signal, nothing left",
          proc.returncode == -signal.SIGTERM and not leftovers(out), f"exit {proc.returncode} {err!r} {leftovers(out)}")

# A full disk: a 128 KB tmpfs (needs root and mount permission; skipped otherwise).
mnt = os.path.join(tmp_root, "tiny-fs")
os.makedirs(mnt)
mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", mnt], capture_output=True).returncode == 0
if mounted:
    try:
        out = os.path.join(mnt, "out")
        rc, _, err = run("convert", opt_tiny, "-o", out)
        check("full disk: error with the path and the reason, nothing left",
              rc == 1 and "No space left" in err and mnt in err and os.listdir(mnt) == [], err + str(os.listdir(mnt)))
    finally:
        subprocess.run(["umount", mnt])
else:
    print("ok - full disk # SKIP cannot mount a tmpfs here")

shutil.rmtree(tmp_root, ignore_errors=True)
finish()
