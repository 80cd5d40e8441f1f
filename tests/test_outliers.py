#!/usr/bin/env python3
"""test_outliers.py — `llmint8 outliers` on models whose outlier features are known.

Every fixture's per-layer LayerNorms plant two channels with weight +-7 (golden.json
init.per_layer_layernorm_outlier_channels), so the attention and FFN inputs carry |x| >= 6 in
exactly those hidden dimensions on a good share of the tokens: the paper's criteria must find
them and nothing else. The 16-bit pass must also reproduce the fixture's golden perplexity
(Hugging Face transformers), and the SVG must be well-formed XML.
Run from the repository root with the binary's path as argv[1].
"""
import atexit
import json
import math
import os
import shutil
import random
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

from clitest import BIN, SANITIZER, check, finish, run
FIX = "tests/data/fixtures"
MODEL = "models/opt-gutenberg-7m"


def outliers(*args, timeout=600):
    return run("outliers", *args, timeout=timeout)


def run_json(name, *args):
    rc, out, err = outliers(*args, "--json")
    if rc != 0:
        check(f"{name}: runs", False, f"exit {rc}, stderr {err.strip()[:300]!r}")
        return None
    try:
        return json.loads(out)
    except json.JSONDecodeError as e:
        check(f"{name}: --json parses", False, f"{e}: {out[:300]!r}")
        return None


def check_svg(name, path, dims):
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        check(f"{name}: SVG is well-formed XML", False, str(e))
        return
    check(f"{name}: SVG is well-formed XML with an <svg> root", root.tag == "{http://www.w3.org/2000/svg}svg",
          root.tag)
    titles = [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}title")]
    marked = sorted(int(t.split(":")[0].split()[1]) for t in titles if t.startswith("dim "))
    check(f"{name}: SVG marks the outlier dimensions", marked == sorted(dims), f"{marked} vs {dims}")


tmp = tempfile.mkdtemp(prefix="llmint8-outliers-")
atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # ours: made just above

# --- usage ---------------------------------------------------------------------------------
p = subprocess.run([BIN, "outliers", "--help"], capture_output=True)
out = p.stdout.decode()
check("--help exits 0 with examples and the criteria options",
      p.returncode == 0 and "Example" in out and "--svg" in out and "--min-layers" in out, out[:200])
ids_opt = os.path.join(tmp, "ids.txt")
with open(ids_opt, "w") as f:
    f.write(" ".join(map(str, json.load(open(f"{FIX}/opt-tiny/golden.json"))["input_ids"])))
for name, args, code, words in [
    ("no text", [f"{FIX}/opt-tiny"], 2, ["-f FILE"]),
    ("threshold 0", [f"{FIX}/opt-tiny", "--ids", ids_opt, "--threshold", "0"], 2, ["--threshold"]),
    ("int8 refused", [f"{FIX}/opt-tiny", "--ids", ids_opt, "--precision", "int8"], 2, ["16-bit"]),
    ("bad share", [f"{FIX}/opt-tiny", "--ids", ids_opt, "--min-tokens", "1.5"], 2, ["--min-tokens"]),
    ("svg in a missing folder", [f"{FIX}/opt-tiny", "--ids", ids_opt, "--svg", "/nonexistent/dir/x.svg"], 1,
     ["/nonexistent/dir/x.svg"]),
]:
    rc, _, err = outliers(*args)
    check(f"error: {name} (exit {code})", rc == code and all(w in err for w in words), f"exit {rc}, {err.strip()!r}")

# --- every fixture: exactly the planted channels --------------------------------------------
for fx in sorted(os.listdir(FIX)):
    gpath = os.path.join(FIX, fx, "golden.json")
    if not os.path.exists(gpath):
        continue
    g = json.load(open(gpath))
    planted = sorted(g["init"]["per_layer_layernorm_outlier_channels"])
    ids_path = os.path.join(tmp, f"{fx}.ids")
    with open(ids_path, "w") as f:
        f.write(" ".join(map(str, g["input_ids"])))
    svg = os.path.join(tmp, f"{fx}.svg")
    r = run_json(fx, f"{FIX}/{fx}", "--ids", ids_path, "--svg", svg)
    if r is None:
        continue
    found = [o["dim"] for o in r["outliers"]]
    check(f"{fx}: finds exactly the planted channels {planted}", found == planted and r["count"] == len(planted),
          f"found {found}")
    check(f"{fx}: they reach the threshold and meet the layer and token criteria",
          all(o["max_abs"] >= 6 and o["layer_share"] >= 0.25 and o["token_share_max"] >= 0.06 for o in r["outliers"]),
          r["outliers"])
    # The 32 golden ids are one window with nothing added: the 16-bit pass is the golden forward.
    base = r["ablation"]["baseline"]
    check(f"{fx}: 16-bit pass reproduces the golden perplexity",
          base["predictions"] == len(g["input_ids"]) - 1 and abs(base["ppl"] / g["nll"]["ppl"] - 1) < 1e-4,
          f"{base} vs {g['nll']['ppl']}")
    zr = r["ablation"]["zero_random"]
    check(f"{fx}: ablation ran, random dims disjoint from the features and as many",
          r["ablation"]["zero_outliers"] is not None and zr is not None and len(zr["dims"]) == len(planted)
          and not set(zr["dims"]) & set(planted) and all(0 <= d < r["hidden"] for d in zr["dims"]), r["ablation"])
    vs = r["value_shares"]
    check(f"{fx}: value shares are consistent",
          0 < vs["above_threshold_in_outliers"] <= vs["above_threshold"] <= vs["decomposed_16bit"] < 1
          and abs(vs["int8"] + vs["decomposed_16bit"] - 1) < 1e-9 and vs["outlier_dims"] == len(planted) / r["hidden"],
          vs)
    check_svg(fx, svg, planted)
    if fx == "opt-tiny-postln":
        # Post-LN: layer 0's attention reads the raw embeddings (no LayerNorm before it), so the
        # planted channels first appear at its FFN input; layer 1's attention reads layer 0's
        # final_layer_norm output. Every layer still counts.
        pl = r["per_layer"]
        check("opt-tiny-postln: features start at layer 0's FFN input (post-LN)",
              pl[0]["attn"]["dims"] == [] and pl[0]["ffn"]["dims"] == planted and pl[1]["attn"]["dims"] == planted,
              pl)
    else:
        # Pre-LN: every attention and FFN input is a LayerNorm output carrying the planted
        # channels (at opt-tiny's layer 1 FFN input channel 37 stays below 6 on these 32
        # tokens, so that one input does not count, but the layer still does).
        check(f"{fx}: pre-LN: the features are present in every layer",
              all(o["in_layers"] == list(range(r["layers"])) for o in r["outliers"])
              and all(layer["attn"]["dims"] == planted for layer in r["per_layer"]), r["per_layer"])

# --- several windows, a higher threshold, the text report --------------------------------------
rng = random.Random(7)
long_ids = os.path.join(tmp, "long.ids")
with open(long_ids, "w") as f:
    f.write(" ".join(str(rng.randrange(1000)) for _ in range(300)))
r = run_json("opt-tiny 300 ids", f"{FIX}/opt-tiny", "--ids", long_ids, "--ctx", "64")
if r:
    check("opt-tiny, 300 ids in windows of 64: 5 windows, the same two features",
          r["windows"] == 5 and r["tokens"] == 300 and [o["dim"] for o in r["outliers"]] == [5, 37], r["outliers"])
    check("opt-tiny, 300 ids: every window position but the last of each scored",
          r["ablation"]["baseline"]["predictions"] == 300 - 5, r["ablation"]["baseline"])
r = run_json("threshold 1000", f"{FIX}/opt-tiny", "--ids", ids_opt, "--threshold", "1000")
if r:
    check("threshold 1000: no features, nothing ablated",
          r["count"] == 0 and r["outliers"] == [] and r["ablation"]["zero_outliers"] is None
          and r["value_shares"]["above_threshold"] == 0, r)
r = run_json("no ablation", f"{FIX}/opt-tiny", "--ids", ids_opt, "--no-ablation")
if r:
    check("--no-ablation: features found, no scores", r["count"] == 2 and r["ablation"]["baseline"] is None, r)
rc, out, err = outliers(f"{FIX}/bloom-tiny", "--ids", ids_opt)
check("text report names the features and the ablation",
      rc == 0 and "outlier features: 2 of 64" in out and "random dimension" in out and "ppl" in out, out + err)

# --- the demo model on real text (its tokenizer, BOS-first windows) -----------------------------
n = "256" if SANITIZER else "1024"
svg = os.path.join(tmp, "demo.svg")
r = run_json("demo model", MODEL, "-f", "tests/data/eval/wiki.test.raw", "--max-tokens", n, "--ctx", "256",
             "--svg", svg)
if r:
    check("demo model: windows of 256 with BOS", r["tokens"] == int(n) and r["bos"] == 2
          and r["windows"] == math.ceil(int(n) / 255), r)
    check("demo model: baseline perplexity is sane", 1 < r["ablation"]["baseline"]["ppl"] < 1000, r["ablation"])
    check_svg("demo model", svg, [o["dim"] for o in r["outliers"]])

finish()
