#!/usr/bin/env python3
"""test_ppl_batch.py — `ppl --batch N` (N windows per forward call, as N sequences of the
batched engine, docs/ENGINE.md) against the same command without it.

* fp16 and LLM.int8() with --outliers per-token: nll_mean bit for bit equal (as printed by
  --json, 17 significant digits) for N = 3 and 8, including a last batch with fewer windows,
  and the same window and token counts.
* LLM.int8() with per-call outliers: within 1e-3 relative (columns are chosen over every row
  of a call, so other windows can add columns; the result must still be close).
* --batch 0 and 65 are refused with a usage error.

Runs on models/opt-gutenberg-7m-outliers (in the repository), 896 tokens in windows of 128 (8 windows).
"""
import json
import sys

from clitest import check, finish, run

MODEL = "models/opt-gutenberg-7m-outliers"
TEXT = "tests/data/eval/wiki.test.raw"
BASE = [MODEL, "-f", TEXT, "--ctx", "128", "--max-tokens", "896", "--json", "--threads", "2"]


def ppl(*extra):
    rc, out, err = run("ppl", *BASE, *extra)
    try:
        return rc, json.loads(out), err
    except ValueError:
        return rc, None, err


for mode in (["--precision", "fp16"], ["--quant", "llm.int8", "--outliers", "per-token"]):
    rc, alone, err = ppl(*mode)
    check(f"{' '.join(mode)}: ppl runs", rc == 0 and alone is not None, err)
    for n in (3, 8):
        rc, batched, err = ppl(*mode, "--batch", str(n))
        ok = rc == 0 and batched is not None and alone is not None
        check(f"{' '.join(mode)} --batch {n}: nll_mean bit for bit the unbatched one",
              ok and batched["nll_mean"] == alone["nll_mean"]
              and batched["tokens_scored"] == alone["tokens_scored"] and batched["windows"] == alone["windows"],
              f"{batched} vs {alone} {err}")

rc, alone, err = ppl("--quant", "llm.int8", "--outliers", "per-call")
rc2, batched, err2 = ppl("--quant", "llm.int8", "--outliers", "per-call", "--batch", "4")
check("per-call outliers --batch 4: within 1e-3 of the unbatched ppl",
      rc == 0 and rc2 == 0 and abs(batched["ppl"] / alone["ppl"] - 1) <= 1e-3, f"{batched} vs {alone} {err}{err2}")

for bad in ("0", "65"):
    rc, out, err = run("ppl", *BASE, "--batch", bad)
    check(f"--batch {bad} refused", rc == 2 and "--batch" in err, f"rc {rc} {err}")

finish()
