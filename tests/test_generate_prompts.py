#!/usr/bin/env python3
"""test_generate_prompts.py — `generate --prompts FILE`: many prompts through the engine at
once, each JSON line equal to what `generate` prints for that prompt alone.

With fp16 and with --outliers per-token (float32 and 16-bit KV cache), greedy and seeded
sampling, prompts run --parallel at a time with a small --prefill-chunk (so long prompts are
cut into pieces between other prompts' decode steps): every line's ids are the solo run's
--print-ids, and its text is what the solo run prints after the prompt. Also: input order,
JSON Lines with per-line seed and max_tokens, --stop, and bad input. Run from the repository
root with the binary's path as argv[1].
"""
import atexit
import json
import os
import shutil
import tempfile

from clitest import SANITIZER, check, finish, run

MODEL = "models/opt-gutenberg-7m"
FIX = "tests/data/fixtures"

PROMPTS = [
    "It was a dark and stormy night",
    "The old man",
    "\u201cOh, said the Queen, \u201cthat is a different matter",
    "Once upon a time there lived a king who had three daughters, and the youngest was so "
    "beautiful that the sun itself, which has seen so much, was astonished whenever it shone "
    "in her face. Near the castle of the king lay a great dark forest, and under an old "
    "lime-tree in the forest was a well, and when the day was very warm, the king's child "
    "went out into the forest and sat down by the side of the cool fountain",
    "A",
    "She looked at him for a long time, and then she said",
]
if SANITIZER:
    PROMPTS = PROMPTS[:4]

tmp = tempfile.mkdtemp()
atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # ours: made just above


def write(name, text):
    path = os.path.join(tmp, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def lines_of(out):
    try:
        return [json.loads(l) for l in out.splitlines()]
    except ValueError:
        return []


def compare_solo(name, model, lines, prompts, opts, check_text=True):
    """Each JSON line against `generate` of its prompt alone with the line's seed."""
    bad = []
    for i, (line, prompt) in enumerate(zip(lines, prompts)):
        base = ["generate", model, "-p", prompt, "--seed", str(line["seed"]), *opts]
        rc, out, err = run(*base, "--print-ids")
        ids = [int(x) for x in out.split()] if rc == 0 else None
        if ids != line["ids"]:
            bad.append(f"prompt {i}: ids {line['ids']} vs solo {ids} ({err.strip()[-200:]})")
            continue
        if check_text:
            rc, out, err = run(*base)
            if rc != 0 or out != prompt + line["text"] + "\n":
                bad.append(f"prompt {i}: text {line['text']!r} vs solo {out!r}")
        if line["completion_tokens"] != len(line["ids"]):
            bad.append(f"prompt {i}: completion_tokens {line['completion_tokens']} for {len(line['ids'])} ids")
    check(name, not bad and len(lines) == len(prompts), "; ".join(bad)[:1500] + f" ({len(lines)} lines)")


# --- many prompts at once = each alone --------------------------------------------------------
plain = write("prompts.txt", "\n".join(PROMPTS) + "\n")
CASES = [
    ("fp16 greedy", ["--precision", "fp16", "--greedy", "-n", "24"]),
    ("int8 per-token seeded", ["--outliers", "per-token", "-n", "24", "--temperature", "0.9", "--top-k", "30",
                               "--repetition-penalty", "1.2"]),
    ("int8 per-token f16 cache top-p", ["--outliers", "per-token", "--kv-cache", "f16", "-n", "20",
                                        "--top-p", "0.8", "--top-k", "0"]),
    ("fp16 seeded, --stop", ["--precision", "fp16", "-n", "30", "--stop", "the", "--stop", "\n\n"]),
]
if SANITIZER:
    CASES = CASES[:2]
for name, opts in CASES:
    rc, out, err = run("generate", MODEL, "--prompts", plain, "--parallel", "3", "--prefill-chunk", "7",
                       "--seed", "11", *opts)
    lines = lines_of(out)
    check(f"--prompts {name}: one line per prompt, in input order",
          rc == 0 and [l.get("index") for l in lines] == list(range(len(PROMPTS)))
          and all(l["seed"] == 11 for l in lines) and "tokens/s" in err, out[:500] + err[-500:])
    if len(lines) == len(PROMPTS):
        compare_solo(f"--prompts {name}: every line = generate of its prompt alone", MODEL, lines, PROMPTS, opts)
    if "--stop" in opts:
        check("--stop: no output holds a stop string, and one stopped",
              all("the" not in l["text"] and "\n\n" not in l["text"] for l in lines)
              and any(l["finish_reason"] == "stop" for l in lines), str(lines)[:800])

# a real-size vocabulary: the fixture with the OPT tokenizer
fx = f"{FIX}/opt-tiny-v50272"
tok = ["--tokenizer", "tests/data/tokenizers/opt-125m"]
for name, opts in [("fixture fp16", ["--precision", "fp16", "--greedy", "-n", "12", "--ignore-eos", *tok]),
                   ("fixture int8 per-token", ["--outliers", "per-token", "-n", "12", "--ignore-eos", *tok])]:
    rc, out, err = run("generate", fx, "--prompts", plain, "--parallel", "4", "--prefill-chunk", "3", "--seed", "5",
                       *opts)
    lines = lines_of(out)
    check(f"--prompts {name}", rc == 0 and len(lines) == len(PROMPTS), out[:300] + err[-300:])
    if len(lines) == len(PROMPTS):
        compare_solo(f"--prompts {name}: every line = generate alone", fx, lines, PROMPTS, opts, check_text=False)

# per-call outliers (the default) one prompt at a time, each in one piece: the same calls as alone
rc, out, err = run("generate", MODEL, "--prompts", plain, "--parallel", "1", "--prefill-chunk", "100000",
                   "--greedy", "-n", "16")
lines = lines_of(out)
if rc == 0 and len(lines) == len(PROMPTS):
    compare_solo("--parallel 1, whole prompts, per-call outliers = alone", MODEL, lines, PROMPTS,
                 ["--greedy", "-n", "16"], check_text=False)
else:
    check("--parallel 1", False, out[:300] + err[-300:])

# --- JSON Lines: per-line seed and max_tokens ------------------------------------------------
jl = write("prompts.jsonl", "\n".join(json.dumps(o) for o in [
    {"prompt": PROMPTS[0], "seed": 3},
    {"prompt": PROMPTS[1], "max_tokens": 5},
    {"prompt": "two\nlines", "seed": 4, "max_tokens": 0},
]) + "\n")
rc, out, err = run("generate", MODEL, "--prompts", jl, "--outliers", "per-token", "--seed", "9", "-n", "10")
lines = lines_of(out)
ok = rc == 0 and len(lines) == 3
check("JSON Lines: seeds and max_tokens per line",
      ok and [l["seed"] for l in lines] == [3, 9, 4] and len(lines[0]["ids"]) == 10 and len(lines[1]["ids"]) == 5
      and lines[2]["ids"] == [] and lines[2]["finish_reason"] == "length" and lines[2]["prompt_tokens"] >= 3,
      out + err)
if ok:
    rc, o1, _ = run("generate", MODEL, "-p", PROMPTS[1], "--outliers", "per-token", "--seed", "9", "-n", "5",
                    "--print-ids")
    check("JSON Lines: the max_tokens line = alone", [int(x) for x in o1.split()] == lines[1]["ids"], o1)

# --- the KV cache's bytes per token: 2 (keys, values) x 6 layers x 256 hidden x 4 or 2 bytes --------
for kv, want in (("f32", 12288), ("f16", 6144)):
    rc, out, err = run("info", MODEL, "--json", "--kv-cache", kv)
    try:
        got = json.loads(out).get("kv_cache_bytes_per_token")
    except ValueError:
        got = None
    check(f"info --kv-cache {kv}: {want} bytes per token", rc == 0 and got == want, out + err)

# --- bad input -------------------------------------------------------------------------------
def expect_error(name, args, words, code=1):
    rc, out, err = run(*args)
    check(name, rc == code and all(w in err for w in words), f"exit {rc}, {err.strip()[:300]!r}")


expect_error("no \"prompt\" field", ["generate", MODEL, "--prompts", write("b1.jsonl", '{"text": "x"}\n')],
             ["line 1", "prompt"])
expect_error("not JSON on a JSON Lines line", ["generate", MODEL, "--prompts",
             write("b2.jsonl", '{"prompt": "x"}\n{"prompt": \n')], ["line 2"])
expect_error("a bad seed", ["generate", MODEL, "--prompts", write("b3.jsonl", '{"prompt": "x", "seed": -1}\n')],
             ["seed"])
expect_error("an empty prompts file", ["generate", MODEL, "--prompts", write("b4.txt", "\n\n")], ["no prompts"])
expect_error("a missing prompts file", ["generate", MODEL, "--prompts", os.path.join(tmp, "none.txt")], ["none.txt"])
expect_error("a prompt longer than the model", ["generate", MODEL, "--prompts",
             write("b5.txt", "a\n" + "word " * 600 + "\n")], ["line 2", "--truncate"])
expect_error("--parallel without --prompts", ["generate", MODEL, "-p", "x", "--parallel", "2"], ["--prompts"], 2)
expect_error("--parallel 0", ["generate", MODEL, "--prompts", plain, "--parallel", "0"], ["--parallel"], 2)
expect_error("--parallel 65", ["generate", MODEL, "--prompts", plain, "--parallel", "65"], ["--parallel"], 2)
expect_error("--prefill-chunk 0", ["generate", MODEL, "-p", "x", "--prefill-chunk", "0"], ["--prefill-chunk"], 2)
expect_error("an empty --stop", ["generate", MODEL, "-p", "x", "--stop", ""], ["--stop"], 2)
expect_error("--kv-cache f8", ["generate", MODEL, "-p", "x", "--kv-cache", "f8"], ["--kv-cache"], 2)
rc, out, err = run("generate", MODEL, "--prompts", write("t.txt", "a\n" + "word " * 600 + "\n"), "--truncate",
                   "-n", "3", "--greedy")
check("--truncate with --prompts", rc == 0 and len(lines_of(out)) == 2 and "truncated" in err, out + err)

finish()
