#!/usr/bin/env python3
"""test_cli.py — the llmint8 binary end to end, on real files.

Golden values come from outside this project: the demo model's eval.json (Hugging Face
transformers' perplexities and greedy generations), the fixtures' golden.json, and the
OPT tokenizer's published ids. Run from the repository root with the binary's path as
argv[1]. LLMINT8_TEST_SANITIZER=1 (the ASan/UBSan run) scores fewer tokens so it stays fast.
"""
import json
import math
import os
import subprocess
import tempfile

import clitest
from clitest import SANITIZER, check, finish, run

MODEL = "models/opt-gutenberg-7m"
FIX = "tests/data/fixtures"


def expect_error(name, args, words, code=1, stdin=None):
    rc, out, err = run(*args, stdin=stdin)
    ok = rc == code and all(w in err for w in words)
    check(name, ok, f"exit {rc}, stderr {err.strip()[:300]!r}")


eval_json = json.load(open(os.path.join(MODEL, "eval.json")))

# --- basics -------------------------------------------------------------------------------
rc, out, err = run("--version")
check("--version lists the cpu backend", rc == 0 and "cpu" in out, out)
rc, out, err = run("--help")
check("--help lists the commands", rc == 0 and all(c in out for c in ("generate", "ppl", "convert", "info")), out)
for cmd in ("generate", "ppl", "tokenize", "info"):
    rc, out, err = run(cmd, "--help")
    check(f"{cmd} --help has examples", rc == 0 and "Example" in out and "--threads" in out,
          out[:200])
expect_error("unknown command", ["frobnicate"], ["not a command"], code=2)
expect_error("unknown option", ["ppl", MODEL, "--bogus"], ["unrecognized", "--help"], code=2)

# --- tokenize: ids published for the real OPT tokenizer and the demo model's own ------------
rc, out, err = run("tokenize", f"{FIX}/opt-tiny-v50272", "--tokenizer", "tests/data/tokenizers/opt-125m",
                   "-p", "Today is a beautiful day and I want")
check("tokenize opt-125m", out.split() == "2 5625 16 10 2721 183 8 38 236".split(), out + err)
rc, out, err = run("tokenize", f"{FIX}/opt-tiny-v50272", "--tokenizer", "tests/data/tokenizers/opt-125m",
                   "-p", "Hello world")
check("tokenize Hello world", out.split() == ["2", "31414", "232"], out + err)
for prompt, res in eval_json["generation"]["results"].items():
    rc, out, err = run("tokenize", MODEL, "-p", prompt)
    check(f"tokenize demo model {prompt!r}", [int(x) for x in out.split()] == res["prompt_ids"], out + err)

# --- info ----------------------------------------------------------------------------------
rc, out, err = run("info", MODEL, "--json")
try:
    info = json.loads(out)
except ValueError:
    info = {}
check("info --json", rc == 0 and info.get("architecture") == "opt" and info.get("layers") == 6, out + err)
check("info parameter count (README: 6.97M)", abs(info.get("parameters", 0) / 1e6 - 6.97) < 0.01, str(info))

# --- ppl against transformers' perplexities (eval.json: windows of [BOS] + 255 tokens) ------
n_tokens = 4096 if SANITIZER else 65536
for key, path in (("wikitext2_test_raw", "tests/data/eval/wiki.test.raw"), ("c4_excerpt", "tests/data/eval/c4.utf8")):
    if SANITIZER and key != "wikitext2_test_raw":
        continue
    rc, out, err = run("ppl", MODEL, "-f", path, "--ctx", "256", "--max-tokens", str(n_tokens),
                       "--precision", "fp16", "--json")
    try:
        res = json.loads(out)
    except ValueError:
        res = {}
    gold = eval_json["perplexity"][key]
    if SANITIZER:
        check(f"ppl fp16 {key} (sanitizer run: finite, scored)",
              rc == 0 and res.get("tokens_scored") == n_tokens and math.isfinite(res.get("ppl", math.nan)), out + err)
        continue
    rel = abs(res.get("ppl", 0) / gold["ppl"] - 1)
    check(f"ppl fp16 {key} = transformers' {gold['ppl']:.4f} (rel <= 1e-4)",
          rc == 0 and res.get("tokens_scored") == gold["scored_tokens"] and rel <= 1e-4, f"{out} {err} rel={rel:.2e}")
    print(f"# fp16 {key}: ppl {res.get('ppl')} vs {gold['ppl']} (rel {rel:.2e}), "
          f"{res.get('tokens_per_second', 0):.0f} tokens/s")
    # LLM.int8(): no loss of perplexity on a trained model (paper §3.4): within 1% of 16-bit.
    rc, out, err = run("ppl", MODEL, "-f", path, "--ctx", "256", "--max-tokens", str(n_tokens), "--json")
    try:
        res8 = json.loads(out)
    except ValueError:
        res8 = {}
    rel8 = abs(res8.get("ppl", 0) / gold["ppl"] - 1)
    check(f"ppl int8 {key} within 1% of transformers' fp ppl", rc == 0 and rel8 <= 0.01, f"{out} {err} rel={rel8:.2e}")
    print(f"# int8 {key}: ppl {res8.get('ppl')} vs {gold['ppl']} (rel {rel8:.2e}), "
          f"{res8.get('tokens_per_second', 0):.0f} tokens/s")

# --- ppl --ids on the fixtures equals golden.json nll.ppl ----------------------------------
with tempfile.TemporaryDirectory() as tmp:
    for name in ("opt-tiny", "opt-tiny-postln", "bloom-tiny", "bloom-tiny-bf16"):
        g = json.load(open(f"{FIX}/{name}/golden.json"))
        ids_file = os.path.join(tmp, name + ".ids")
        open(ids_file, "w").write(" ".join(map(str, g["input_ids"])) + "\n")
        rc, out, err = run("ppl", f"{FIX}/{name}", "--ids", ids_file, "--precision", "fp16", "--json")
        try:
            res = json.loads(out)
        except ValueError:
            res = {}
        rel = abs(res.get("ppl", 0) / g["nll"]["ppl"] - 1)
        check(f"ppl --ids {name} fp16 = golden (rel <= 1e-4)", rc == 0 and res.get("tokens_scored") == 31 and rel <= 1e-4,
              f"{out} {err} rel={rel:.2e}")
        if "int8" in g:
            rc, out, err = run("ppl", f"{FIX}/{name}", "--ids", ids_file, "--json")
            try:
                res = json.loads(out)
            except ValueError:
                res = {}
            rel = abs(res.get("ppl", 0) / g["int8"]["nll"]["ppl"] - 1)
            check(f"ppl --ids {name} int8 within 2% of the int8 golden", rc == 0 and rel <= 0.02, f"{out} {err} rel={rel:.2e}")

    # greedy ids of the fixtures (generate --ids --print-ids --greedy)
    for name in ("opt-tiny", "bloom-tiny"):
        g = json.load(open(f"{FIX}/{name}/golden.json"))
        ids_file = os.path.join(tmp, name + ".prompt")
        open(ids_file, "w").write(" ".join(map(str, g["greedy"]["prompt_ids"])))
        rc, out, err = run("generate", f"{FIX}/{name}", "--ids", ids_file, "--print-ids", "--greedy", "-n", "16",
                           "--ignore-eos", "--precision", "fp16")
        check(f"generate --print-ids {name} = golden greedy ids", [int(x) for x in out.split()] == g["greedy"]["new_ids"],
              out + err)

    # out-of-range ids are a clear error
    bad = os.path.join(tmp, "bad.ids")
    open(bad, "w").write("2 5 999999\n")
    expect_error("ppl --ids out of vocabulary", ["ppl", f"{FIX}/opt-tiny", "--ids", bad], ["outside the vocabulary"])
    open(bad, "w").write("2 abc\n")
    expect_error("ppl --ids not a number", ["ppl", f"{FIX}/opt-tiny", "--ids", bad], ["not a whole number"])
    open(bad, "w").write("2\n")
    expect_error("ppl on one token", ["ppl", f"{FIX}/opt-tiny", "--ids", bad], ["at least 2"])

# --- generate on the demo model: transformers' greedy continuations (fp32 reference) --------
for prompt, res in eval_json["generation"]["results"].items():
    rc, out, err = run("generate", MODEL, "-p", prompt, "-n", "40", "--greedy", "--precision", "fp16", "--ignore-eos")
    check(f"generate greedy fp16 {prompt!r} = transformers", rc == 0 and out[:-1] == res["greedy"],
          f"\n got: {out!r}\nwant: {res['greedy']!r}\n{err}")
    if SANITIZER:
        break

rc, out, err = run("generate", MODEL, "-p", "The old man", "-n", "20", "--seed", "7")
rc2, out2, err2 = run("generate", MODEL, "-p", "The old man", "-n", "20", "--seed", "7")
check("generate with a seed is reproducible", rc == 0 and out == out2 and out.startswith("The old man"), out + err)
check("generate prints a stats line", "tokens/s" in err, err)
rc, out, err = run("generate", MODEL, "-n", "8", "--greedy", stdin=b"The old man")
check("generate reads the prompt from stdin", rc == 0 and out.startswith("The old man") and len(out) > 12, out + err)
rc, out, err = run("generate", MODEL, "-p", "It was", "-n", "30", "--temperature", "0.7", "--top-p", "0.9",
                   "--top-k", "0", "--repetition-penalty", "1.2", "--seed", "1")
check("generate with sampling options", rc == 0 and out.startswith("It was"), out + err)

p = subprocess.run([clitest.BIN, "generate", MODEL, "-p", "\u201cOh,", "-n", "40", "--seed", "3"], capture_output=True)
try:
    p.stdout.decode("utf-8")
    utf8_ok = p.returncode == 0
except UnicodeDecodeError:
    utf8_ok = False
check("streamed text is valid UTF-8 (characters split across tokens are held back)", utf8_ok, repr(p.stdout[:200]))

long_prompt = "word " * 2000
expect_error("prompt longer than the model's positions", ["generate", MODEL, "-p", long_prompt, "-n", "4"],
             ["positions", "--truncate"])
rc, out, err = run("generate", MODEL, "-p", long_prompt, "-n", "4", "--truncate", "--greedy")
check("--truncate keeps the end of a long prompt", rc == 0 and "truncated" in err, err)
expect_error("missing model directory", ["generate", "no/such/dir", "-p", "x"], ["no/such/dir"])
expect_error("bad --threads", ["generate", MODEL, "-p", "x", "--threads", "0"], ["--threads"], code=2)
expect_error("bad --precision", ["ppl", MODEL, "-f", "x", "--precision", "int4"], ["--precision"], code=2)
# the text options ppl and outliers share (cli_text_option)
for cmd in ("ppl", "outliers"):
    expect_error(f"{cmd} --max-tokens 1", [cmd, MODEL, "-f", "x", "--max-tokens", "1"], ["--max-tokens", "'1'"], code=2)
    expect_error(f"{cmd} --ctx 1", [cmd, MODEL, "-f", "x", "--ctx", "1"], ["--ctx", "'1'"], code=2)
    expect_error(f"{cmd} without a text", [cmd, MODEL], ["-f FILE", "--ids FILE"], code=2)
    expect_error(f"{cmd} with two texts", [cmd, MODEL, "-f", "x", "--ids", "y"], ["exactly one"], code=2)

# --- convert: the int8 checkpoint gives bit-identical results to quantize-on-load ------------
with tempfile.TemporaryDirectory() as tmp:
    for name in ("opt-tiny", "opt-tiny-postln", "bloom-tiny"):
        g = json.load(open(f"{FIX}/{name}/golden.json"))
        ids_file = os.path.join(tmp, name + ".ids")
        open(ids_file, "w").write(" ".join(map(str, g["input_ids"])))
        out_dir = os.path.join(tmp, name + "-int8")
        rc, out, err = run("convert", f"{FIX}/{name}", "-o", out_dir)
        check(f"convert {name}", rc == 0 and os.path.isdir(out_dir), err)
        if rc != 0:
            continue
        results = []
        for d in (f"{FIX}/{name}", out_dir):
            rc, out, err = run("ppl", d, "--ids", ids_file, "--json")
            try:
                results.append(json.loads(out)["nll_mean"])
            except (ValueError, KeyError):
                results.append(None)
        check(f"convert {name}: int8 checkpoint == quantize-on-load (nll to 17 digits)",
              results[0] is not None and results[0] == results[1], str(results))
        p = os.path.join(tmp, name + ".prompt")
        open(p, "w").write(" ".join(map(str, g["greedy"]["prompt_ids"])))
        gens = [run("generate", d, "--ids", p, "--print-ids", "--greedy", "-n", "16", "--ignore-eos")[1]
                for d in (f"{FIX}/{name}", out_dir)]
        check(f"convert {name}: same greedy tokens", gens[0] == gens[1] and gens[0].strip(), str(gens))
        size_in = sum(os.path.getsize(os.path.join(f"{FIX}/{name}", f)) for f in os.listdir(f"{FIX}/{name}")
                      if f.endswith(".safetensors"))
        size_out = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir) if f.endswith(".safetensors"))
        print(f"# convert {name}: {size_in} -> {size_out} bytes ({size_out / size_in:.2f}x)")

# --- the paper's ablation table runs every mode ---------------------------------------------
g = json.load(open(f"{FIX}/opt-tiny/golden.json"))
with tempfile.TemporaryDirectory() as tmp:
    ids_file = os.path.join(tmp, "ids")
    open(ids_file, "w").write(" ".join(map(str, g["input_ids"])))
    rc, out, err = run("ppl", f"{FIX}/opt-tiny", "--ids", ids_file, "--quant", "all", "--json")
    try:
        table = json.loads(out)["results"]
    except (ValueError, KeyError):
        table = []
    modes = {r["quant"]: r["ppl"] for r in table}
    check("ppl --quant all runs all 9 modes", rc == 0 and len(modes) == 9, out + err)
    if modes:
        fp = modes.get("fp16", 0)
        check("--quant all: fp16 row equals the golden ppl", abs(fp / g["nll"]["ppl"] - 1) <= 1e-4, str(modes))
        check("--quant all: llm.int8 row within 2% of the int8 golden",
              abs(modes.get("llm.int8", 0) / g["int8"]["nll"]["ppl"] - 1) <= 0.02, str(modes))

finish()
