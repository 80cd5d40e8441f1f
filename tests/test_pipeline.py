#!/usr/bin/env python3
"""test_pipeline.py — a model's layers in stages (docs/PIPELINE.md) against the whole model in
one process.

* `--device cpu,cpu` (two stages in one process) and, when mpirun is installed and this llmint8
  was built with MPI, `mpirun -np 2` and `-np 3` (ranks oversubscribed on this machine): greedy
  token ids of `generate` equal, and `ppl`'s per-token NLLs and nll_mean bit for bit equal (as
  --json prints them, digits enough to read back the same double), on the fixtures (OPT, OPT post-LN, BLOOM) and the
  demo model, in LLM.int8() and fp16 (every token's NLL from `ppl --json --token-nll`, as
  doubles that JSON writes exactly); `--split` picks the layers (an empty stage included).
* `ppl --batch 4` in a pipeline (windows in flight through the stages): the same NLLs.
* Hostile input under mpirun: a rank that answers the handshake with a message of another size,
  or with a bad header (tests/pipeline_fake_rank.c), is refused with a message.
* Faults under mpirun, each bounded by a time-out: one rank given a modified checkpoint (through
  LLMINT8_MODEL_DIR on that rank) fails on every rank with a message naming it; one rank killed
  mid-generation ends the run non-zero within seconds, with a message naming the rank; a bad
  --split is refused on every rank.
Without mpirun (or MPI in the build) the MPI parts are skipped; with nothing run, exit 77.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from clitest import BIN, SANITIZER, check, finish, run
from mpitest import ENV, MPI_ARGS, MPIRUN, mpi, mpi_works

FIX = "tests/data/fixtures"
DEMO = "models/opt-gutenberg-7m"
TEXT = "tests/data/eval/wiki.test.raw"


def ids_file(tmp, n, vocab, name):
    """n token ids from a fixed linear congruential sequence (the fixtures have no tokenizer)."""
    path = os.path.join(tmp, name)
    x, out = 12345, []
    for _ in range(n):
        x = (1103515245 * x + 12345) % 2**31
        out.append(str(x % vocab))
    with open(path, "w") as f:
        f.write(" ".join(out) + "\n")
    return path




def mpirun_through(wrapper, np, *args):
    """`mpirun -np NP WRAPPER llmint8 ARGS...`: (exit status, stderr text), or (-999, "timed out")
    after 90 s. The wrapper script sets what differs per rank, then execs its arguments."""
    try:
        p = subprocess.run([MPIRUN, *MPI_ARGS, "-np", str(np), wrapper, BIN, *args], capture_output=True,
                           timeout=90, env=ENV)
        return p.returncode, p.stderr.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        return -999, "timed out"


def as_json(out):
    try:
        return json.loads(out)
    except ValueError:
        return None


tmp = tempfile.mkdtemp(prefix="llmint8-pipeline-")
MODELS = {  # name: (dir, ppl input args, generate prompt args)
    "opt-tiny": f"{FIX}/opt-tiny",
    "opt-tiny-postln": f"{FIX}/opt-tiny-postln",
    "bloom-tiny": f"{FIX}/bloom-tiny",
}
IDS, PROMPTS = {}, {}
for name, d in MODELS.items():
    vocab = json.load(open(f"{d}/config.json"))["vocab_size"]
    IDS[name] = ids_file(tmp, 200, vocab, name + ".ids")
    PROMPTS[name] = ids_file(tmp, 12, vocab, name + ".prompt")

HAVE_MPI = mpi_works("ppl", f"{FIX}/opt-tiny", "--ids", IDS["opt-tiny"], "--json", "--threads", "1")
ran_any = False


def cases():
    """(label, model dir, ppl args, generate args) for every model (the fixtures only under the
    sanitizers, where everything runs many times slower)."""
    for name, d in MODELS.items():
        yield name, d, ["--ids", IDS[name], "--ctx", "64"], ["--ids", PROMPTS[name], "-n", "24", "--ignore-eos"]
    if not SANITIZER:
        yield "demo", DEMO, ["-f", TEXT, "--ctx", "128", "--max-tokens", "384"], ["-p", "It was a dark and stormy",
                                                                                  "-n", "24"]


for label, model, ppl_args, gen_args in cases():
    for prec in (["--precision", "int8"], ["--precision", "fp16"]) if not SANITIZER else (["--precision", "int8"],):
        common = [model, *prec, "--threads", "1"]
        rc, out, err = run("ppl", *common, *ppl_args, "--json", "--token-nll")
        ref = as_json(out)
        check(f"{label} {prec[1]}: ppl in one process runs", rc == 0 and ref is not None, err)
        rc, gref, err = run("generate", *common, *gen_args, "--greedy", "--print-ids")
        check(f"{label} {prec[1]}: generate in one process runs", rc == 0 and len(gref.split()) > 0, err)

        variants = [("--device cpu,cpu", lambda *a: run(*a, "--device", "cpu,cpu"))]
        variants.append(("--device cpu,cpu,cpu --split 0,1,1" if label != "demo" else "--device cpu,cpu,cpu --split 0,3,3",
                         lambda *a, lab=label: run(*a, "--device", "cpu,cpu,cpu", "--split",
                                                   "0,1,1" if lab != "demo" else "0,3,3")))
        if HAVE_MPI:
            variants.append(("mpirun -np 2", lambda *a: mpi(2, *a)))
            variants.append(("mpirun -np 3", lambda *a: mpi(3, *a)))
        for vname, runner in variants:
            ran_any = True
            rc, out, err = runner("ppl", *common, *ppl_args, "--json", "--token-nll")
            got = as_json(out)
            check(f"{label} {prec[1]} {vname}: every token's NLL bit for bit the one-process one",
                  rc == 0 and got is not None and ref is not None and got["token_nll"] == ref["token_nll"]
                  and got["nll_mean"] == ref["nll_mean"] and len(ref["token_nll"]) == ref["tokens_scored"]
                  and got["windows"] == ref["windows"],
                  f"rc {rc}: {got} vs {ref}: {err[-800:]}")
            rc, gout, err = runner("generate", *common, *gen_args, "--greedy", "--print-ids")
            check(f"{label} {prec[1]} {vname}: greedy ids the one-process ones",
                  rc == 0 and gout.split() == gref.split(), f"rc {rc}: {gout!r} vs {gref!r}: {err[-800:]}")
            if vname.startswith("--device cpu,cpu") and prec[1] == "int8":
                check(f"{label} {vname}: a busy line per stage on stderr", err.count("llmint8: stage ") >= 2, err)

# Micro-batches: --batch 4 keeps four windows in flight through the stages; the same NLLs.
common = [DEMO, "--threads", "1", "-f", TEXT, "--ctx", "64", "--max-tokens", "600" if not SANITIZER else "320", "--json",
          "--token-nll"]
rc, out, err = run("ppl", *common)
ref = as_json(out)
batch_runs = [("--device cpu,cpu", lambda *a: run(*a, "--device", "cpu,cpu"))]
if HAVE_MPI:
    batch_runs += [("mpirun -np 2", lambda *a: mpi(2, *a)), ("mpirun -np 3", lambda *a: mpi(3, *a))]
for vname, runner in batch_runs:
    rc, out, err = runner("ppl", *common, "--batch", "4")
    got = as_json(out)
    check(f"demo {vname} --batch 4 (windows in flight): every token's NLL bit for bit the one-process one",
          rc == 0 and got is not None and ref is not None and got["token_nll"] == ref["token_nll"]
          and got["windows"] == ref["windows"] and ref["windows"] > 4, f"rc {rc}: {err[-800:]}")

# On a GPU (when this llmint8 has the CUDA backend and a GPU is usable): two stages on the
# device, `--device cuda,cuda`, against `--device cuda` alone, bit for bit.
common = [f"{FIX}/opt-tiny", "--ids", IDS["opt-tiny"], "--ctx", "64", "--json", "--token-nll"]
rc, out, err = run("ppl", *common, "--device", "cuda")
if rc == 0:
    ran_any = True
    ref = as_json(out)
    rc, out, err = run("ppl", *common, "--device", "cuda,cuda")
    got = as_json(out)
    check("--device cuda,cuda: every token's NLL bit for bit --device cuda's",
          rc == 0 and got is not None and ref is not None and got["token_nll"] == ref["token_nll"], err[-800:])
else:
    print("# no usable GPU (or no CUDA backend): the cuda,cuda check is skipped")

# Bad input to the pipeline options.
rc, out, err = run("ppl", f"{FIX}/opt-tiny", "--ids", IDS["opt-tiny"], "--device", "cpu,cpu", "--split", "1,2")
check("--split that does not add up to the layers: an error naming it", rc == 1 and "--split" in err, err)
rc, out, err = run("ppl", f"{FIX}/opt-tiny", "--ids", IDS["opt-tiny"], "--device", "cpu,gpu")
check("--device cpu,gpu: a usage error", rc == 2 and "--device" in err, err)
rc, out, err = run("ppl", f"{FIX}/opt-tiny", "--ids", IDS["opt-tiny"], "--split", "1,1")
check("--split without a pipeline: an error", rc == 1 and "--split" in err, err)
rc, out, err = run("ppl", f"{FIX}/opt-tiny", "--ids", IDS["opt-tiny"], "--device", "cpu,cpu", "--compare", "fp16")
check("--compare with a pipeline: a usage error", rc == 2 and "--compare" in err, err)
# (generate --prompts runs the engine over a pipeline: tests/test_pipeline_serve.py)
rc, out, err = run("generate", DEMO, "-p", "It was", "--stop", "x", "--device", "cpu,cpu")
check("generate --stop with one prompt in a pipeline: a usage error", rc == 2 and "--stop" in err, err)
# Two GPUs in one process (the paper's setup): cuda:0,cuda:1 against cuda alone, bit for bit; where
# a second GPU is not usable, cuda:1 is refused with a message naming it.
rc, out, err = run("ppl", *common, "--device", "cuda:0,cuda:1")
if rc == 0:
    ran_any = True
    rc_ref, out_ref, _ = run("ppl", *common, "--device", "cuda")
    got, ref = as_json(out), as_json(out_ref)
    check("--device cuda:0,cuda:1: every token's NLL bit for bit --device cuda's",
          rc_ref == 0 and got is not None and ref is not None and got["token_nll"] == ref["token_nll"], err[-800:])
else:
    check("--device cuda:0,cuda:1 without two usable GPUs: refused with a message naming the device",
          rc == 1 and "cuda" in err.lower(), err)
rc, out, err = run("ppl", f"{FIX}/opt-tiny", "--ids", IDS["opt-tiny"], "--device", "cpu,cuda:999")
check("--device cpu,cuda:999: refused with a message", rc == 1 and "cuda:999" in err, err)

if HAVE_MPI:
    ran_any = True
    # A bad --split: every rank says so and the run ends non-zero.
    each = os.path.join(tmp, "each-stderr.sh")
    with open(each, "w") as f:
        f.write(f'#!/bin/sh\nexec "$@" 2> "{tmp}/split.$OMPI_COMM_WORLD_RANK"\n')
    os.chmod(each, 0o755)
    rc, _ = mpirun_through(each, 3, "ppl", f"{FIX}/opt-tiny", "--ids", IDS["opt-tiny"], "--split", "1,0,2")
    said = [open(f"{tmp}/split.{r}").read() if os.path.exists(f"{tmp}/split.{r}") else "" for r in range(3)]
    check("mpirun: a bad --split is an error on every rank", rc not in (0, -999)
          and all("llmint8: error: " in x and "--split '1,0,2'" in x for x in said), f"rc {rc}: {said}")

    # One rank with a modified checkpoint (another config.json), through LLMINT8_MODEL_DIR.
    other = os.path.join(tmp, "opt-tiny-modified")
    shutil.copytree(f"{FIX}/opt-tiny", other)
    cfg = json.load(open(f"{other}/config.json"))
    cfg["layer_norm_eps"] = 1e-3
    json.dump(cfg, open(f"{other}/config.json", "w"))
    wrapper = os.path.join(tmp, "rank1-other-model.sh")
    with open(wrapper, "w") as f:
        # each rank's stderr straight to a file of its own: what every rank said, whatever
        # mpirun forwards before it ends the job
        f.write(f'#!/bin/sh\n[ "$OMPI_COMM_WORLD_RANK" = 1 ] && export LLMINT8_MODEL_DIR="{other}"\n'
                f'exec "$@" 2> "{tmp}/stderr.$OMPI_COMM_WORLD_RANK"\n')
    os.chmod(wrapper, 0o755)
    rc, err = mpirun_through(wrapper, 2, "ppl", f"{FIX}/opt-tiny", "--ids", IDS["opt-tiny"], "--threads", "1")
    said = [open(f"{tmp}/stderr.{r}").read() if os.path.exists(f"{tmp}/stderr.{r}") else "" for r in (0, 1)]
    check("mpirun: a rank with another checkpoint fails on every rank, naming it",
          rc not in (0, -999) and "llmint8: error: rank 1 sees a different checkpoint" in said[0]
          and "llmint8: error: rank 1: rank 1 sees a different checkpoint" in said[1], f"rc {rc}: {said} {err[-1500:]}")

    # A rank whose checkpoint directory does not exist: the error names the rank.
    with open(wrapper, "w") as f:
        f.write('#!/bin/sh\n[ "$OMPI_COMM_WORLD_RANK" = 1 ] && export LLMINT8_MODEL_DIR=/nonexistent-llmint8\nexec "$@"\n')
    rc, err = mpirun_through(wrapper, 2, "ppl", f"{FIX}/opt-tiny", "--ids", IDS["opt-tiny"], "--threads", "1")
    check("mpirun: a rank without its checkpoint: an error naming the rank and the directory",
          rc not in (0, -999) and "llmint8: error: rank 1: /nonexistent-llmint8" in err, f"rc {rc}: {err[-1500:]}")

    # --quant all loads the pipeline once per mode: the same table as one process.
    args = [f"{FIX}/opt-tiny", "--ids", IDS["opt-tiny"], "--quant", "all", "--threads", "1", "--json"]
    rc, one, err = run("ppl", *args)
    rc2, three, err2 = mpi(3, "ppl", *args)
    one, three = as_json(one), as_json(three)
    means = lambda j: [(r["quant"], r["nll_mean"]) for r in j["results"]] if j else None
    check("mpirun -np 3 ppl --quant all: every mode's nll_mean the one-process one (a load per mode)",
          rc == 0 and rc2 == 0 and means(one) == means(three) and len(means(one)) > 5,
          f"rc {rc2}: {means(three)} vs {means(one)} {err2[-800:]}")

    # A hostile rank 1 (tests/pipeline_fake_rank.c) answers the handshake wrongly: rank 0
    # refuses what arrives, names the rank, and the run ends.
    fake = os.path.join(os.path.dirname(BIN), "tests", "pipeline_fake_rank")
    for mode, want in (("short", "rank 1 sent 10 bytes for the handshake, expected"),
                       ("magic", "rank 1 answered the handshake with a bad header")):
        if not os.path.exists(fake):
            print(f"# {fake} not built: the hostile-rank checks are skipped")
            break
        try:
            p = subprocess.run([MPIRUN, *MPI_ARGS, "-np", "1", BIN, "ppl", f"{FIX}/opt-tiny", "--ids", IDS["opt-tiny"],
                                ":", "-np", "1", fake, mode], capture_output=True, timeout=90, env=ENV)
            rc, err = p.returncode, p.stderr.decode("utf-8", "replace")
        except subprocess.TimeoutExpired:
            rc, err = -999, "timed out"
        check(f"mpirun with a hostile rank 1 ({mode}): rank 0 refuses it with a message", rc not in (0, -999)
              and want in err, f"rc {rc}: {err[-1500:]}")

    # Faults in the middle of a generation: rank 1's pid is recorded by a wrapper.
    pids = os.path.join(tmp, "pids")
    os.mkdir(pids)
    wrapper = os.path.join(tmp, "record-pid.sh")
    with open(wrapper, "w") as f:
        f.write(f'#!/bin/sh\necho $$ > "{pids}/$OMPI_COMM_WORLD_RANK"\nexec "$@"\n')
    os.chmod(wrapper, 0o755)

    def signal_rank1_mid_generation(sig, env):
        """Starts a 3-rank generation, sends sig to rank 1 once the first tokens are out, and
        waits at most 60 s: (signal sent, exit status or -999, stderr, seconds waited)."""
        for f in os.listdir(pids):
            os.unlink(os.path.join(pids, f))
        p = subprocess.Popen([MPIRUN, *MPI_ARGS, "-np", "3", wrapper, BIN, "generate", DEMO, "-p", "Once upon a time",
                              "-n", "480", "--ignore-eos", "--greedy", "--print-ids", "--threads", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        first = p.stdout.read(8)  # the first new tokens: the generation is under way
        sent = False
        if first and os.path.exists(f"{pids}/1"):
            try:
                os.kill(int(open(f"{pids}/1").read()), sig)
                sent = True
            except (ProcessLookupError, ValueError):
                pass
        t0 = time.time()
        try:
            _, err = p.communicate(timeout=60)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
            rc = -999
        return sent, rc, err.decode("utf-8", "replace"), time.time() - t0

    # One rank killed (SIGKILL).
    killed, rc, err, took = signal_rank1_mid_generation(signal.SIGKILL, ENV)
    check("mpirun: rank 1 killed mid-generation: the run ends non-zero within 60 s, naming rank 1",
          killed and rc not in (0, -999) and "rank 1" in err, f"killed {killed} rc {rc} after {took:.1f} s: {err[-1500:]}")

    # One rank stopped (SIGSTOP: alive but silent): the others give up after LLMINT8_MPI_TIMEOUT
    # and the message names it.
    stopped, rc, err, _ = signal_rank1_mid_generation(signal.SIGSTOP, dict(ENV, LLMINT8_MPI_TIMEOUT="3"))
    check("mpirun: rank 1 stopped mid-generation: the others time out, non-zero, naming rank 1",
          stopped and rc not in (0, -999) and "rank 1 died or hangs" in err, f"stopped {stopped} rc {rc}: {err[-1500:]}")

shutil.rmtree(tmp, ignore_errors=True)
if not ran_any:
    print("nothing to run")
    sys.exit(77)
finish()
