#!/usr/bin/env python3
"""test_mixed8bit.py — 8-bit checkpoints whose projections are not all int8.

transformers + bitsandbytes save such checkpoints when `llm_int8_skip_modules` keeps some
projections as float nn.Linear, when `llm_int8_has_fp16_weight` is true, or when
`llm_int8_enable_fp32_cpu_offload` kept modules in float32 (docs/MODELS.md, "8-bit
checkpoints"). We build them from the fixtures: `convert` writes the all-int8 checkpoint, and
we put the fixture's own 16-bit (or float32) weights back for chosen projections.

The references are the fixtures' goldens from transformers: a checkpoint whose every
projection is skipped must give the 16-bit golden perplexity and greedy ids (skipped modules
run unquantized); float weights that are not skipped are quantized on load, so they must
give what the all-int8 checkpoint gives, within today's int8 tolerance of the int8 golden.

Usage (from the repository root): python3 tests/test_mixed8bit.py BUILD/llmint8
"""
import json
import os
import shutil
import struct
import tempfile

from clitest import check, finish, run

FIX = "tests/data/fixtures"
PREFIX = {"opt-tiny": "model.", "bloom-tiny": "transformer."}


def read_st(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_st(path, tensors):
    """tensors: {name: (dtype, shape, bytes)} written in name order."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        dtype, shape, data = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + b"".join(blobs))


def tensors_of(path):
    header, data = read_st(path)
    return {k: (e["dtype"], e["shape"], data[e["data_offsets"][0]:e["data_offsets"][1]])
            for k, e in header.items() if k != "__metadata__"}


def f16_to_f32(raw):
    vals = struct.unpack(f"<{len(raw) // 2}e", raw)
    return struct.pack(f"<{len(vals)}f", *vals)


def projections(tensors):
    """Module names (stored, with prefix) of the int8 projections."""
    return sorted(k[:-len(".SCB")] for k in tensors if k.endswith(".SCB"))


def mixed(fixture, converted, tmp, label, modules, dtype="F16", skip=None, quant_extra=None):
    """A copy of the converted checkpoint with `modules` (stored names) back in float."""
    d = os.path.join(tmp, f"{fixture}-{label}")
    shutil.copytree(converted, d)
    src = tensors_of(os.path.join(FIX, fixture, "model.safetensors"))
    dst = tensors_of(os.path.join(d, "model.safetensors"))
    for m in modules:
        for k in (m + ".SCB", m + ".weight_format"):
            dst.pop(k, None)
        sdt, shape, raw = src[m + ".weight"]
        assert sdt == "F16"
        dst[m + ".weight"] = ("F32", shape, f16_to_f32(raw)) if dtype == "F32" else (sdt, shape, raw)
    write_st(os.path.join(d, "model.safetensors"), dst)
    cfg_path = os.path.join(d, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    q = cfg["quantization_config"]
    q["llm_int8_skip_modules"] = skip
    q.update(quant_extra or {})
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2)
    return d


def ppl(d, ids_file, *extra):
    rc, out, err = run("ppl", d, "--ids", ids_file, "--json", *extra)
    try:
        return json.loads(out)["ppl"], ""
    except (ValueError, KeyError):
        return None, f"exit {rc}: {err.strip()[-300:]!r}"


def greedy_ids(d, prompt_file):
    rc, out, err = run("generate", d, "--ids", prompt_file, "--print-ids", "--greedy", "-n", "16", "--ignore-eos")
    try:
        return [int(x) for x in out.split()], err
    except ValueError:
        return None, err


tmp = tempfile.mkdtemp(prefix="llmint8-mixed8-")
for fixture in ("opt-tiny", "bloom-tiny"):
    g = json.load(open(os.path.join(FIX, fixture, "golden.json")))
    ids_file = os.path.join(tmp, fixture + ".ids")
    with open(ids_file, "w") as f:
        f.write(" ".join(map(str, g["input_ids"])) + "\n")
    prompt_file = os.path.join(tmp, fixture + ".prompt")
    with open(prompt_file, "w") as f:
        f.write(" ".join(map(str, g["greedy"]["prompt_ids"])))
    converted = os.path.join(tmp, fixture + "-int8")
    rc, out, err = run("convert", os.path.join(FIX, fixture), "-o", converted)
    check(f"{fixture}: convert", rc == 0, err)
    if rc != 0:
        continue
    proj = projections(tensors_of(os.path.join(converted, "model.safetensors")))
    all_int8, why = ppl(converted, ids_file)
    gold8, gold16 = g["int8"]["nll"]["ppl"], g["nll"]["ppl"]
    check(f"{fixture}: all-int8 checkpoint within 2% of the int8 golden",
          all_int8 is not None and abs(all_int8 / gold8 - 1) <= 0.02, f"{all_int8} vs {gold8} {why}")

    # 1. Every projection listed in llm_int8_skip_modules (by its last component, as users
    #    write them): all run unquantized, so the result is the 16-bit golden.
    last = sorted({m.rsplit(".", 1)[1] for m in proj})
    d = mixed(fixture, converted, tmp, "skip-all", proj, skip=last)
    p, why = ppl(d, ids_file)
    check(f"{fixture}: every projection skipped = the 16-bit golden ppl (rel <= 1e-4)",
          p is not None and abs(p / gold16 - 1) <= 1e-4, f"{p} vs {gold16} {why}")
    ids, err = greedy_ids(d, prompt_file)
    check(f"{fixture}: every projection skipped: greedy ids = the 16-bit golden", ids == g["greedy"]["new_ids"],
          f"{ids} {err[-300:]}")
    p_fp16, why = ppl(d, ids_file, "--quant", "fp16")
    check(f"{fixture}: every projection skipped: --quant fp16 gives the same (skipped = unquantized)",
          p_fp16 is not None and p_fp16 == p, f"{p_fp16} vs {p} {why}")
    rc, out, err = run("info", d)
    check(f"{fixture}: info says 0 of {len(proj)} projections are int8, names the skipped ones",
          rc == 0 and f"0 of {len(proj)} projections stored as int8" in out and "llm_int8_skip_modules" in out,
          out + err)

    # 2. One layer's projections skipped by a module path with the prefix (the full name),
    #    in float32 as llm_int8_enable_fp32_cpu_offload leaves them: between the two goldens.
    layer0 = [m for m in proj if ".0." in m]
    d = mixed(fixture, converted, tmp, "skip-layer0-f32", layer0, dtype="F32",
              skip=[layer0[0].rsplit(".", 1)[0]], quant_extra={"llm_int8_enable_fp32_cpu_offload": True})
    p, why = ppl(d, ids_file)
    lo, hi = min(gold8, gold16) * 0.98, max(gold8, gold16) * 1.02
    check(f"{fixture}: layer 0 skipped (F32): ppl within today's int8 tolerance of the goldens",
          p is not None and lo <= p <= hi, f"{p} not in [{lo}, {hi}] {why}")
    rc, out, err = run("info", d)
    n8 = len(proj) - len(layer0)
    short0 = layer0[0][len(PREFIX[fixture]):]
    check(f"{fixture}: info: {n8} of {len(proj)} int8, layer 0 kept in 16-bit",
          rc == 0 and f"{n8} of {len(proj)} projections stored as int8" in out and short0 + " (F32)" in out,
          out + err)

    # 3. Float weights that are not skipped (llm_int8_has_fp16_weight; fp32 offload saves) are
    #    quantized on load: the same numbers as the int8 checkpoint (fp16 values, the same
    #    row-wise quantization), in F16 and in F32.
    for dtype, flag in (("F16", "llm_int8_has_fp16_weight"), ("F32", "llm_int8_enable_fp32_cpu_offload")):
        d = mixed(fixture, converted, tmp, f"fp16-weights-{dtype}", proj, dtype=dtype, skip=None,
                  quant_extra={flag: True})
        p, why = ppl(d, ids_file)
        check(f"{fixture}: all {dtype} weights, none skipped: quantized on load = the int8 checkpoint",
              p is not None and p == all_int8, f"{p} vs {all_int8} {why}")
        rc, out, err = run("info", d)
        check(f"{fixture}: info ({dtype}): 0 int8, quantized on load",
              rc == 0 and "quantized on load" in out and f"0 of {len(proj)}" in out, out + err)

    # 4. Contradictions are errors that name the tensor. A float weight that neither the skip
    #    list nor one of the two flags explains: the config promises int8.
    d = mixed(fixture, converted, tmp, "float-unexplained", [proj[2]])
    rc, out, err = run("ppl", d, "--ids", ids_file)
    check(f"{fixture}: a float weight no flag explains is an error (F16, expected I8)",
          rc == 1 and proj[2][len(PREFIX[fixture]):] in err and "F16" in err and "I8" in err, err)
    d = mixed(fixture, converted, tmp, "int8-but-skipped", [], skip=[proj[0].rsplit(".", 1)[1]])
    rc, out, err = run("ppl", d, "--ids", ids_file)
    check(f"{fixture}: an int8 weight of a skipped module is an error",
          rc == 1 and "llm_int8_skip_modules" in err and proj[0][len(PREFIX[fixture]):] in err, err)
    d = mixed(fixture, converted, tmp, "float-with-scb", [proj[1]], quant_extra={"llm_int8_has_fp16_weight": True})
    t = tensors_of(os.path.join(d, "model.safetensors"))
    t[proj[1] + ".SCB"] = tensors_of(os.path.join(converted, "model.safetensors"))[proj[1] + ".SCB"]
    write_st(os.path.join(d, "model.safetensors"), t)
    rc, out, err = run("ppl", d, "--ids", ids_file)
    check(f"{fixture}: a float weight with an SCB is an error", rc == 1 and ".SCB" in err and "F16" in err, err)

shutil.rmtree(tmp, ignore_errors=True)
finish()
