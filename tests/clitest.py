"""clitest.py — what the command-line tests share: running llmint8, counting checks.

A test script is run from the repository root as `python3 tests/test_NAME.py BINARY`. It
calls check() once per assertion (one "ok - ..." / "not ok - ..." line each) and ends with
finish(), which prints "N passed, N failed" and sets the exit status.
"""
import os
import subprocess
import sys

BIN = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else "llmint8"
SANITIZER = os.environ.get("LLMINT8_TEST_SANITIZER") == "1"  # the ASan/UBSan run: keep work small
_counts = {"checks": 0, "failures": 0}


def check(name, cond, detail=""):
    _counts["checks"] += 1
    if cond:
        print(f"ok - {name}")
    else:
        _counts["failures"] += 1
        print(f"not ok - {name}: {detail}")
    sys.stdout.flush()


def run_argv(argv, stdin=None, timeout=900, env=None):
    """Runs a command; returns (exit status, stdout, stderr) as text. A sanitizer report
    counts as a failure whatever the exit status (-1000); a time-out gives -999."""
    try:
        p = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return -999, "", "timed out"
    err = p.stderr.decode("utf-8", "replace")
    if "Sanitizer" in err or "runtime error:" in err:
        return -1000, "", err
    return p.returncode, p.stdout.decode("utf-8", "replace"), err


def run(*args, stdin=None, timeout=900):
    """Runs llmint8 ARGS (see run_argv)."""
    return run_argv([BIN, *args], stdin=stdin, timeout=timeout)


def failures():
    return _counts["failures"]


def finish():
    n, f = _counts["checks"], _counts["failures"]
    print(f"{n - f} passed, {f} failed")
    sys.exit(1 if f else 0)
