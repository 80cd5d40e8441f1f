#!/usr/bin/env python3
"""test_convert_kill.py — `llmint8 convert` never leaves a partial OUT_DIR.

convert writes into OUT_DIR.tmp-XXXXXX next to OUT_DIR and renames it at the end. This test
interrupts it at random moments and checks what is left:

  * SIGKILL at a random point: OUT_DIR does not exist, or it is complete (byte-identical to
    an undisturbed conversion). With --force over an existing OUT_DIR: OUT_DIR is the
    complete previous copy or the complete new one. A stale OUT_DIR.tmp-* may remain
    (nothing can clean up after SIGKILL); the test counts them and removes them.
  * SIGINT / SIGTERM: the process stops, removes its temporary directory, and OUT_DIR is
    untouched (absent, or the previous copy with --force) — or complete if the signal came
    after the rename.
  * A full disk (a 4 MB tmpfs, mounted when running as root and `mount` works; skipped with
    a message otherwise): exit 1 with an error, and nothing left on the tmpfs; with --force
    the previous copy survives.

Run from the repository root: python3 tests/test_convert_kill.py BUILD/llmint8
LLMINT8_TEST_SANITIZER=1 runs fewer trials. LLMINT8_KILL_SEED=N changes the kill times.
"""
import filecmp
import glob
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from clitest import check, finish

BIN = os.path.abspath(sys.argv[1])
MODEL = "models/opt-gutenberg-7m"   # 14 MB of 16-bit weights: a conversion takes a few tenths of a second
SANITIZER = os.environ.get("LLMINT8_TEST_SANITIZER") == "1"
SEED = int(os.environ.get("LLMINT8_KILL_SEED", "7"))
TRIALS = 8 if SANITIZER else 30
SANITIZER_WORDS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer", "runtime error:")
rng = random.Random(SEED)


def convert(out, *extra, timeout=300):
    p = subprocess.run([BIN, "convert", MODEL, "-o", out, *extra], capture_output=True, timeout=timeout)
    return p.returncode, p.stderr.decode("utf-8", "replace")


def start(out, *extra):
    return subprocess.Popen([BIN, "convert", MODEL, "-o", out, *extra], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def same_tree(a, b):
    """True if directories a and b hold the same files with the same bytes."""
    if not os.path.isdir(a) or not os.path.isdir(b):
        return False
    fa, fb = sorted(os.listdir(a)), sorted(os.listdir(b))
    if fa != fb:
        return False
    match, mismatch, errors = filecmp.cmpfiles(a, b, fa, shallow=False)
    return not mismatch and not errors


def leftovers(out, kind):
    return glob.glob(f"{glob.escape(out)}.{kind}-*")


def clear(out):
    for p in [out] + leftovers(out, "tmp") + leftovers(out, "old"):
        shutil.rmtree(p, ignore_errors=True)


def mark_previous(out, ref):
    """Makes `out` a complete previous conversion with a marker file in it."""
    clear(out)
    shutil.copytree(ref, out)
    open(os.path.join(out, "PREVIOUS"), "w").write("the previous copy\n")


def is_previous(out, ref):
    if not os.path.exists(os.path.join(out, "PREVIOUS")):
        return False
    tmp = [f for f in os.listdir(out) if f != "PREVIOUS"]
    return sorted(tmp) == sorted(os.listdir(ref)) and all(
        filecmp.cmp(os.path.join(out, f), os.path.join(ref, f), shallow=False) for f in tmp)


with tempfile.TemporaryDirectory(prefix="llmint8-convert-") as root:
    ref = os.path.join(root, "ref")
    t0 = time.monotonic()
    rc, err = convert(ref)
    duration = time.monotonic() - t0
    check("an undisturbed conversion succeeds", rc == 0 and os.path.isfile(os.path.join(ref, "model.safetensors")),
          err[-300:])
    if rc != 0:
        finish()
    rc2 = subprocess.run([BIN, "info", ref], capture_output=True).returncode
    check("the converted checkpoint loads (info)", rc2 == 0)
    check("no temporary directory is left after a conversion", not leftovers(ref, "tmp") and not leftovers(ref, "old"))
    print(f"# one conversion takes {duration:.2f} s; kills land uniformly in [0, {1.3 * duration:.2f}] s")

    out = os.path.join(root, "out")

    # --- SIGKILL at random points ----------------------------------------------------------
    for force in (False, True):
        what = "--force over a previous copy" if force else "fresh OUT_DIR"
        stale = mid = finished = 0
        bad = []
        for trial in range(TRIALS):
            if force:
                mark_previous(out, ref)
            else:
                clear(out)
            p = start(out, *(["--force"] if force else []))
            time.sleep(rng.uniform(0, 1.3 * duration))
            p.send_signal(signal.SIGKILL)
            p.wait()
            p.stderr.close()
            tmps = leftovers(out, "tmp")
            stale += bool(tmps)
            if p.returncode == 0:
                finished += 1
            elif tmps:
                mid += 1
            if force:
                ok = os.path.isdir(out) and (is_previous(out, ref) or same_tree(out, ref))
                if not os.path.exists(out):
                    olds = leftovers(out, "old")
                    bad.append(f"trial {trial}: OUT_DIR missing after SIGKILL (previous copy "
                               f"{'in ' + os.path.basename(olds[0]) if olds else 'lost'})")
                elif not ok:
                    bad.append(f"trial {trial}: OUT_DIR is neither the previous nor a complete copy")
            else:
                if os.path.exists(out) and not same_tree(out, ref):
                    bad.append(f"trial {trial}: partial OUT_DIR ({sorted(os.listdir(out))})")
        check(f"SIGKILL x{TRIALS} ({what}): OUT_DIR absent/previous or complete", not bad, "; ".join(bad))
        print(f"# {what}: {mid} kills mid-conversion, {finished} conversions finished first, "
              f"{stale} stale OUT_DIR.tmp-* left (expected after SIGKILL)")
        clear(out)

    # --- SIGINT / SIGTERM: the temporary directory is removed -------------------------------
    for sig in (signal.SIGINT, signal.SIGTERM):
        for force in (False, True):
            what = f"{sig.name}{' --force' if force else ''}"
            bad, interrupted = [], 0
            for trial in range(TRIALS // 2):
                if force:
                    mark_previous(out, ref)
                else:
                    clear(out)
                p = start(out, *(["--force"] if force else []))
                time.sleep(rng.uniform(0.02, 0.9 * duration))
                p.send_signal(sig)
                try:
                    _, errb = p.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.communicate()
                    bad.append(f"trial {trial}: did not stop within 60 s of {sig.name}")
                    continue
                errt = errb.decode("utf-8", "replace")
                if any(w in errt for w in SANITIZER_WORDS):
                    bad.append(f"trial {trial}: sanitizer report {errt[-300:]!r}")
                tmps, olds = leftovers(out, "tmp"), leftovers(out, "old")
                if p.returncode == 0:
                    if not same_tree(out, ref):
                        bad.append(f"trial {trial}: exit 0 but OUT_DIR incomplete")
                else:
                    interrupted += 1
                    if p.returncode not in (-sig, 128 + sig, 1):
                        bad.append(f"trial {trial}: exit {p.returncode}")
                    if force and not is_previous(out, ref):
                        bad.append(f"trial {trial}: previous OUT_DIR not intact")
                    if not force and os.path.exists(out):
                        bad.append(f"trial {trial}: OUT_DIR exists after an interrupted conversion")
                if tmps or olds:
                    bad.append(f"trial {trial}: left {[os.path.basename(x) for x in tmps + olds]}")
            check(f"{what} x{TRIALS // 2}: temporary directory removed, OUT_DIR untouched or complete", not bad,
                  "; ".join(bad))
            print(f"# {what}: {interrupted} of {TRIALS // 2} conversions interrupted")
            clear(out)

    # --- a full disk -------------------------------------------------------------------------
    mnt = os.path.join(root, "mnt")
    os.mkdir(mnt)
    mounted = False
    if os.geteuid() == 0:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt], capture_output=True)
        mounted = r.returncode == 0
    if not mounted:
        print("# skipped the full-disk cases: cannot mount a small tmpfs here (needs root and mount permission)")
    else:
        try:
            full = os.path.join(mnt, "out")
            rc, err = convert(full)
            check("full disk: exit 1 with an error", rc == 1 and "llmint8: error:" in err and
                  not any(w in err for w in SANITIZER_WORDS), f"exit {rc}: {err[-300:]!r}")
            check("full disk: the error says so", "space" in err.lower(), err[-300:])
            check("full disk: nothing left behind", os.listdir(mnt) == [], str(os.listdir(mnt)))
            # A small previous copy fits; replacing it with the big one does not.
            small = os.path.join(root, "small")
            r = subprocess.run([BIN, "convert", "tests/data/fixtures/opt-tiny", "-o", small], capture_output=True)
            if r.returncode == 0:
                shutil.copytree(small, full)
                open(os.path.join(full, "PREVIOUS"), "w").write("x")
                rc, err = convert(full, "--force")
                check("full disk with --force: exit 1", rc == 1 and "llmint8: error:" in err, f"exit {rc}: {err[-300:]!r}")
                intact = os.path.exists(os.path.join(full, "PREVIOUS")) and all(
                    os.path.isfile(os.path.join(full, f)) and
                    filecmp.cmp(os.path.join(small, f), os.path.join(full, f), shallow=False) for f in os.listdir(small))
                check("full disk with --force: the previous copy is intact", intact, str(os.listdir(full)))
                check("full disk with --force: no temporary directory left", sorted(os.listdir(mnt)) == ["out"],
                      str(os.listdir(mnt)))
        finally:
            subprocess.run(["umount", mnt], capture_output=True)

finish()
