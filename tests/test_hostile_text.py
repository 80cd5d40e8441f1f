#!/usr/bin/env python3
"""test_hostile_text.py — prompts, texts and id files that try to break llmint8.

Invalid UTF-8, NUL bytes, empty input, a 100 MB single line, a very long word, ids outside
the vocabulary, malformed id files, ppl on a text shorter than two tokens, prompts longer
than the context. Each must give either a clear error (exit 1 and "llmint8: error: ...") or
a defined result (exit 0 with sensible output) — never a signal, a sanitizer report or a hang.

Run from the repository root: python3 tests/test_hostile_text.py BUILD/llmint8
Under LLMINT8_TEST_SANITIZER=1 the big inputs shrink (2 MB instead of 100 MB).
"""
import os
import signal
import subprocess
import sys
import tempfile

from clitest import check, finish

BIN = os.path.abspath(sys.argv[1])
MODEL = "models/opt-gutenberg-7m"          # has a tokenizer, 512 positions, vocab 8192
TINY = "tests/data/fixtures/opt-tiny"      # no tokenizer, vocab 1000
SANITIZER = os.environ.get("LLMINT8_TEST_SANITIZER") == "1"
BIG = (2 << 20) if SANITIZER else (100 << 20)
LONG_WORD = (64 << 10) if SANITIZER else (1 << 20)
SANITIZER_WORDS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer", "runtime error:")


def run(*args, stdin=None, timeout=120, stdout_file=None):
    """Returns (rc, stdout bytes, stderr text); rc None on a timeout."""
    env = dict(os.environ, OMP_NUM_THREADS="2")
    try:
        if stdout_file:
            with open(stdout_file, "wb") as out:
                p = subprocess.run([BIN, *args], input=stdin, stdout=out, stderr=subprocess.PIPE,
                                   timeout=timeout, env=env)
            return p.returncode, b"", p.stderr.decode("utf-8", "replace")
        p = subprocess.run([BIN, *args], input=stdin, capture_output=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None, b"", f"timed out after {timeout} s"
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


def sane(rc, err):
    """'' if the process ended in a defined way, else what went wrong."""
    if rc is None:
        return "hang (" + err + ")"
    if rc < 0:
        return f"killed by signal {signal.Signals(-rc).name}"
    if any(w in err for w in SANITIZER_WORDS):
        return "sanitizer report: " + err[-400:]
    if rc not in (0, 1):
        return f"exit {rc}: {err[-300:]!r}"
    if rc == 1 and "llmint8: error:" not in err:
        return f"exit 1 without 'llmint8: error:': {err[-300:]!r}"
    return ""


def expect_ok(name, rc, err, cond=True, detail=""):
    bad = sane(rc, err)
    check(name, not bad and rc == 0 and cond, bad or detail or err[-300:])


def expect_error(name, rc, err, words=()):
    bad = sane(rc, err)
    ok = not bad and rc == 1 and all(w.lower() in err.lower() for w in words)
    check(name, ok, bad or f"exit {rc}, expected an error mentioning {words}: {err[-300:]!r}")


def expect_defined(name, rc, err):
    """Either outcome is fine as long as it is a clean one."""
    bad = sane(rc, err)
    check(name, not bad, bad)


def ids_of(out):
    try:
        return [int(x) for x in out.split()]
    except ValueError:
        return None


with tempfile.TemporaryDirectory(prefix="llmint8-hostile-") as tmp:
    def write(name, data):
        p = os.path.join(tmp, name)
        open(p, "wb").write(data)
        return p

    # --- tokenize: any bytes are text ----------------------------------------------------
    invalid = b"caf\xc3 \xff\xfe\xfd \xc0\xaf \xed\xa0\x80 \xf4\x90\x80\x80 \xe2\x82 end\n"
    rc, out, err = run("tokenize", MODEL, "-f", write("invalid.txt", invalid))
    ids = ids_of(out)
    expect_ok("tokenize invalid UTF-8", rc, err, ids is not None and len(ids) > 10 and ids[0] == 2, out[:200])
    rc, out, err = run("tokenize", MODEL, "-p", invalid)   # argv may hold any bytes but NUL
    expect_ok("tokenize invalid UTF-8 given with -p", rc, err, ids_of(out) == ids, out[:200])
    # byte-level BPE keeps every byte: --show gives the bytes back
    rc, out, err = run("tokenize", MODEL, "-f", write("nul.txt", b"a\x00b\x00\x00c\n"), "--no-bos")
    n_nul = len(ids_of(out) or [])
    expect_ok("tokenize NUL bytes (kept as tokens)", rc, err, n_nul >= 3, out[:200])
    rc, out, err = run("tokenize", MODEL, "-f", "-", stdin=b"x\x00y")
    expect_ok("tokenize NUL bytes from stdin", rc, err, len(ids_of(out) or []) >= 3, out[:200])
    rc, out, err = run("tokenize", MODEL, "-p", "")
    expect_ok("tokenize empty -p: just BOS", rc, err, ids_of(out) == [2], out[:200])
    rc, out, err = run("tokenize", MODEL, "-f", write("empty.txt", b""), "--no-bos")
    expect_ok("tokenize empty file --no-bos: no ids", rc, err, ids_of(out) == [], out[:200])
    rc, out, err = run("tokenize", MODEL, "-f", write("ws.txt", b" \t\r\n\v\f\n\n   "))
    expect_ok("tokenize whitespace only", rc, err, len(ids_of(out) or []) >= 2, out[:200])
    specials = "</s><s><pad><unk></s"
    rc, out, err = run("tokenize", MODEL, "-p", specials, "--show")
    expect_ok("tokenize special tokens written in the text", rc, err)

    # A 100 MB single line of ordinary words (no newline); ids go to a file.
    words = open("tests/data/eval/wiki.test.raw", "rb").read(1 << 20).replace(b"\n", b" ")
    big = write("big.txt", (words * (BIG // len(words) + 1))[:BIG])
    out_file = os.path.join(tmp, "big.ids")
    rc, _, err = run("tokenize", MODEL, "-f", big, timeout=600, stdout_file=out_file)
    n_bytes = os.path.getsize(out_file) if os.path.exists(out_file) else 0
    expect_ok(f"tokenize a {BIG >> 20} MB single line", rc, err, n_bytes > BIG // 8, f"{n_bytes} bytes of ids")
    os.remove(big)
    if os.path.exists(out_file):
        os.remove(out_file)
    # One very long word: BPE must not be quadratic in the word length.
    word = write("word.txt", bytes(97 + (i * 7919 >> 3) % 26 for i in range(LONG_WORD)))
    rc, out, err = run("tokenize", MODEL, "-f", word, timeout=120)
    expect_ok(f"tokenize one {LONG_WORD >> 10} KB word (within 120 s)", rc, err, len(ids_of(out) or []) > 1000)
    word = write("spaces.txt", b" " * LONG_WORD + b"x")
    rc, out, err = run("tokenize", MODEL, "-f", word, timeout=120)
    expect_ok(f"tokenize {LONG_WORD >> 10} KB of spaces (within 120 s)", rc, err)
    os.remove(word)

    # Tokenizer files that are not regular files (a FIFO would block a plain open()).
    tokdir = os.path.join(tmp, "tok")
    os.mkdir(tokdir)
    open(os.path.join(tokdir, "merges.txt"), "wb").write(open(os.path.join(MODEL, "merges.txt"), "rb").read())
    for kind in ("fifo", "dir"):
        vocab = os.path.join(tokdir, "vocab.json")
        os.mkfifo(vocab) if kind == "fifo" else os.mkdir(vocab)
        rc, out, err = run("tokenize", tokdir, "-p", "hi", timeout=10)
        expect_error(f"tokenizer vocab.json is a {kind}", rc, err, ("vocab.json",) if kind == "dir" else ())
        os.remove(vocab) if kind == "fifo" else os.rmdir(vocab)

    # --- generate: hostile prompts ----------------------------------------------------------
    rc, out, err = run("generate", MODEL, "-f", write("inv.txt", invalid), "-n", "4", "--greedy")
    expect_ok("generate from an invalid UTF-8 prompt", rc, err)
    # The prompt may be echoed as given; what the model generates is decoded text, where
    # invalid bytes become U+FFFD, so it is valid UTF-8.
    new = out[len(invalid):] if out.startswith(invalid) else out
    try:
        new.decode("utf-8")
        utf8 = True
    except UnicodeDecodeError:
        utf8 = False
    check("generate writes valid UTF-8 after the prompt (invalid bytes become U+FFFD)", utf8, repr(out[:200]))
    rc, out, err = run("generate", MODEL, "-p", "", "-n", "4", "--greedy")
    expect_defined("generate from an empty prompt (BOS only)", rc, err)
    rc, out, err = run("generate", MODEL, "-f", write("nulp.txt", b"Once\x00 upon\x00"), "-n", "4", "--greedy")
    expect_ok("generate from a prompt with NUL bytes", rc, err)
    long_prompt = write("long.txt", b"the " * 5000)
    rc, out, err = run("generate", MODEL, "-f", long_prompt, "-n", "4", "--greedy")
    expect_defined("generate with a prompt longer than the 512 positions (error, or truncated)", rc, err)
    rc, out, err = run("generate", MODEL, "-f", long_prompt, "-n", "4", "--greedy", "--truncate")
    expect_ok("generate --truncate with a prompt longer than the context", rc, err)

    # --- --ids files --------------------------------------------------------------------------
    def ids_case(name, data, cmd="ppl", model=TINY, ok=False, words=()):
        path = write("case.ids", data)
        args = [cmd, model, "--ids", path] + (["-n", "2", "--greedy", "--print-ids"] if cmd == "generate" else [])
        rc, out, err = run(*args)
        if ok:
            expect_ok(f"{cmd} --ids {name}", rc, err)
        else:
            expect_error(f"{cmd} --ids {name}", rc, err, ("case.ids",) + tuple(words))

    for cmd in ("ppl", "generate"):
        ids_case("id = vocab size (1000)", b"2 5 1000\n", cmd, words=("1000",))
        ids_case("id 2^31", b"2 5 2147483648\n", cmd)
        ids_case("id 2^64 + 5", b"2 18446744073709551621\n", cmd)
        ids_case("100-digit id", b"2 " + b"9" * 100 + b"\n", cmd)
        ids_case("negative id", b"2 -1 5\n", cmd)
        ids_case("empty file", b"", cmd)
        ids_case("only whitespace", b" \n\t\r\n ", cmd)
        ids_case("letters", b"2 5 seven\n", cmd)
        ids_case("hex", b"2 0x10\n", cmd)
        ids_case("float", b"2 5.0\n", cmd)
        ids_case("NUL byte", b"2 5\x00 7\n", cmd)
        ids_case("invalid UTF-8", b"2 5 \xff\n", cmd)
    ids_case("1 id (nothing to score)", b"2\n", "ppl", words=())
    ids_case("2 ids, comma separated", b"2,5\n", "ppl", ok=True)
    ids_case("10000 ids (several windows)", b" ".join(str(2 + i % 990).encode() for i in range(10000)), "ppl", ok=True)
    ids_case("1 id", b"2\n", "generate", ok=True)

    # --- ppl on texts shorter than 2 tokens --------------------------------------------------
    rc, out, err = run("ppl", MODEL, "-f", write("e.txt", b""))
    expect_error("ppl on an empty text", rc, err)
    rc, out, err = run("ppl", MODEL, "-f", write("one.txt", b"a"))
    expect_defined("ppl on a one-token text (BOS + 1: one token scored, or an error)", rc, err)
    rc, out, err = run("ppl", MODEL, "-f", write("nulonly.txt", b"\x00"))
    expect_defined("ppl on a text that is one NUL byte", rc, err)
    rc, out, err = run("ppl", MODEL, "-f", write("inv2.txt", invalid * 20), "--ctx", "64")
    expect_ok("ppl on invalid UTF-8", rc, err)

finish()
