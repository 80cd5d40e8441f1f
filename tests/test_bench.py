#!/usr/bin/env python3
"""test_bench.py — `llmint8 bench` runs end to end on tiny shapes and reports what it should.

No timing is asserted (the numbers depend on the machine); the checks are that both parts
run, the JSON has the documented keys with sane values, the temporary checkpoint is
deleted, and bad options are usage errors. Run from the repository root with the binary's
path as argv[1].
"""
import json
import os
import tempfile

from clitest import check, finish, run as run_llmint8


def run(*args, timeout=600):
    return run_llmint8("bench", *args, timeout=timeout)


QUICK = ["--iters", "1", "--prompt-tokens", "8", "--ppl-tokens", "16", "--decode-tokens", "4", "--threads", "2"]

# --- the tiny shape, both parts, JSON -----------------------------------------------------------
with tempfile.TemporaryDirectory() as tmp:
    rc, out, err = run("--shape", "tiny", "--tokens", "1,5", "--json", "--tmpdir", tmp, *QUICK)
    check("bench --shape tiny --json exits 0", rc == 0, err[-500:])
    try:
        j = json.loads(out)
    except ValueError:
        j = {}
    check("the output is one JSON object", isinstance(j, dict) and j, out[:300])
    check("the temporary checkpoint is deleted", os.listdir(tmp) == [], str(os.listdir(tmp)))

if j:
    check("top-level keys", all(k in j for k in ("shape", "machine", "device", "threads", "gemm", "model",
                                                   "ratios", "targets")), str(list(j)))
    check("shape", j["shape"].get("name") == "tiny" and j["shape"].get("hidden") == 64
          and j["shape"].get("layers") == 2, str(j["shape"]))
    gemm = j.get("gemm") or []
    check("4 linear-layer cells (ffn, attn) x (1, 5)", len(gemm) == 4
          and sorted((c["shape"], c["tokens"]) for c in gemm) == [("attn", 1), ("attn", 5), ("ffn", 1), ("ffn", 5)],
          str(gemm)[:300])
    cell_keys = ("K", "N", "outlier_cols", "fp16_gops", "int8_gops", "int8_decomp_gops", "fp16_ms", "int8_calls")
    check("cell keys and positive GOP/s", all(all(k in c for k in cell_keys) and c["fp16_gops"] > 0
                                               and c["int8_gops"] > 0 and c["int8_decomp_gops"] > 0
                                               and c["int8_calls"] == 1 for c in gemm), str(gemm)[:300])
    check("ffn cell is K=64, N=256 with one planted outlier column",
          any(c["shape"] == "ffn" and c["K"] == 64 and c["N"] == 256 and c["outlier_cols"] == 1 for c in gemm),
          str(gemm)[:300])
    model = j.get("model") or {}
    fp16, int8 = model.get("fp16", {}), model.get("int8", {})
    per_prec = ("prompt_tokens_per_second", "ppl_tokens_per_second", "decode_tokens_per_second", "weight_bytes",
                "kv_cache_bytes", "peak_rss_generate_bytes", "load_seconds")
    check("model keys for fp16 and int8", all(k in fp16 and k in int8 for k in per_prec), str(model)[:400])
    check("model counts", model.get("prompt_tokens") == 8 and model.get("ppl_tokens") == 16
          and model.get("decode_tokens") == 4, str(model)[:200])
    check("throughputs are positive", all(fp16.get(k, 0) > 0 and int8.get(k, 0) > 0 for k in per_prec[:3]),
          str(model)[:400])
    # int8 keeps the projections at 1 byte per weight (+ scales), embeddings stay 16-bit.
    check("int8 weights are smaller than fp16", 0 < int8.get("weight_bytes", 0) < fp16.get("weight_bytes", 0),
          str(model)[:400])
    check("the planted LayerNorm gains produce outlier columns",
          int8.get("outlier_cols_max", 0) >= 1, str(int8))
    targets = j.get("targets") or []
    check("four targets with a pass flag", len(targets) == 4 and all(isinstance(t.get("pass"), bool) for t in targets),
          str(targets))
    check("ratios", all(isinstance(j["ratios"].get(k), (int, float)) for k in
                        ("decode", "prompt", "decomp_overhead", "memory", "ppl", "weights")), str(j["ratios"]))

# --- --model-tau0: a third whole-model run, int8 without the decomposition ---------------------
rc, out, err = run("--shape", "tiny", "--model-only", "--model-tau0", "--json", *QUICK)
try:
    j = json.loads(out)
except ValueError:
    j = {}
check("--model-tau0 adds int8_tau0 and the whole-model decomposition cost",
      rc == 0 and "int8_tau0" in (j.get("model") or {}) and j["model"]["int8_tau0"].get("decode_tokens_per_second", 0) > 0
      and isinstance(j.get("ratios", {}).get("decomp_overhead_decode"), float), out[:400] + err[-300:])

# --- explicit dimensions, BLOOM, text output, one part at a time ------------------------------
rc, out, err = run("--arch", "bloom", "--hidden", "32", "--layers", "1", "--heads", "2", "--vocab", "300",
                   "--model-only", *QUICK)
check("explicit BLOOM dims, --model-only, text", rc == 0 and "decode, tokens/s" in out and "GOP/s" not in out
      and "Targets" in out, out[-600:] + err[-300:])
rc, out, err = run("--hidden", "48", "--ffn", "96", "--heads", "3", "--gemm-only", "--tokens", "3", "--iters", "2")
check("explicit dims, --gemm-only, text", rc == 0 and "GOP/s" in out and "decode, tokens/s" not in out
      and " 48 " in out and " 96 " in out, out[-600:] + err[-300:])
rc, out, err = run("--shape", "tiny", "--gemm-only", "--tokens", "2", "--iters", "1", "--json", "--outlier-frac", "0")
try:
    j = json.loads(out)
except ValueError:
    j = {}
check("--outlier-frac 0 plants no outliers; model is null with --gemm-only",
      rc == 0 and j.get("model") is None and all(c["outlier_cols"] == 0 for c in j.get("gemm", [])),
      out[:300] + err[-300:])

# --- usage errors -------------------------------------------------------------------------------
for args, words in [
    (["--shape", "opt-7b"], ["opt-1.3b", "bloom-560m"]),
    (["--tokens", "1,0"], ["--tokens"]),
    (["--tokens", "1,,2"], ["--tokens"]),
    (["--hidden", "30", "--heads", "4"], ["heads", "30"]),
    (["--arch", "bloom", "--hidden", "64", "--ffn", "100"], ["BLOOM"]),
    (["--outlier-frac", "2"], ["--outlier-frac"]),
    (["--precision", "fp16"], ["do not apply"]),
    (["--gemm-only", "--model-only"], ["at most one"]),
    (["somedir"], ["unexpected argument"]),
    (["--prompt-tokens", "2000", "--decode-tokens", "100"], ["positions"]),
]:
    rc, out, err = run(*args)
    check(f"usage error: {' '.join(args)}", rc == 2 and all(w in err for w in words), f"exit {rc}: {err.strip()[:300]}")
# --- --busy-core: default vs one thread, idle and with a spinner (no timing asserted) ---------
with tempfile.TemporaryDirectory() as tmp:
    rc, out, err = run("--shape", "tiny", "--busy-core", "--json", "--tmpdir", tmp, "--prompt-tokens", "8",
                       "--ppl-tokens", "16", "--decode-tokens", "4")
    try:
        b = json.loads(out).get("busy_core", {})
    except ValueError:
        b = {}
    check("bench --busy-core --json: four runs with positive speeds", rc == 0 and all(
        b.get(c, {}).get(w, {}).get(k, 0) > 0 for c in ("idle", "busy") for w in ("given", "one")
        for k in ("prompt_tokens_per_second", "ppl_tokens_per_second", "decode_tokens_per_second")),
        f"exit {rc}: {out[:300]} {err[-300:]}")
# --- --batch: many sequences through the step API, fp16 and int8 side by side -----------------
with tempfile.TemporaryDirectory() as tmp:
    rc, out, err = run("--shape", "tiny", "--batch", "1,3,16", "--batch-context", "6", "--decode-tokens", "3",
                       "--threads", "2", "--json", "--tmpdir", tmp)
    check("the temporary checkpoint is deleted (--batch)", os.listdir(tmp) == [], str(os.listdir(tmp)))
try:
    b = json.loads(out).get("batch", {})
except ValueError:
    b = {}
rows = b.get("rows") or []
check("bench --batch --json: one row per batch size with positive speeds", rc == 0 and [r.get("batch") for r in rows]
      == [1, 3, 16] and all(r.get(f"{p}_{w}_tokens_per_second", 0) > 0 for r in rows for p in ("fp16", "int8")
                            for w in ("prompt", "decode")), f"exit {rc}: {out[:400]} {err[-300:]}")
# the tiny shape: 2 layers x hidden 64 x (key + value) x 2 bytes
check("KV bytes per token: 16-bit cache, float32 twice that", b.get("kv_bytes_per_token_f16") == 2 * 2 * 64 * 2
      and b.get("kv_bytes_per_token_f32") == 2 * 2 * 64 * 4, str(b)[:300])
tg = {t.get("name"): t for t in b.get("targets") or []}
check("--batch targets: batch 16 vs batch 1 and vs fp16, each with a pass flag",
      set(tg) == {"batch16_vs_batch1", "batch16_vs_fp16"} and all(isinstance(t.get("pass"), bool) for t in tg.values()),
      str(b.get("targets"))[:300])
check("bandwidth measured (CPU)", b.get("stream_read_bytes_per_second", 0) > 0, str(b)[:300])
rc, out, err = run("--shape", "tiny", "--batch", "2", "--batch-context", "4", "--decode-tokens", "2", "--threads", "1")
check("bench --batch, text: the table and the targets not measured without batch 1 and 16",
      rc == 0 and "prompt f16" in out and "not measured" in out, out[-600:] + err[-300:])
for args, words in [
    (["--batch", "0"], ["--batch"]),
    (["--batch", "65"], ["--batch", "64"]),
    (["--batch", "1,,2"], ["--batch"]),
    (["--batch", "1", "--gemm-only"], ["--batch"]),
    (["--batch", "1", "--decode-tokens", "0"], ["--decode-tokens"]),
    (["--batch", "1", "--batch-context", "0"], ["--batch-context"]),
]:
    rc, out, err = run(*args)
    check(f"usage error: {' '.join(args)}", rc == 2 and all(w in err for w in words), f"exit {rc}: {err.strip()[:300]}")

rc, out, err = run("--busy-core", "--gemm-only")
check("usage error: --busy-core --gemm-only", rc == 2 and "--busy-core" in err, err.strip()[:300])
rc, out, err = run("--help")
check("--help has examples and the common options", rc == 0 and "Example" in out and "--threads" in out, out[:200])
with tempfile.TemporaryDirectory() as tmp:
    rc, out, err = run("--shape", "tiny", "--model-only", "--tmpdir", os.path.join(tmp, "missing"), *QUICK)
    check("a missing --tmpdir is an error naming it", rc == 1 and "missing" in err, err.strip()[:300])

finish()
