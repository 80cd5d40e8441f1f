#!/usr/bin/env python3
"""test_pipeline_serve.py — the continuous-batching engine over a pipeline (docs/PIPELINE.md):
`llmint8 serve` and `generate --prompts` with the model's layers in stages.

* `generate --prompts` (several prompts, --parallel 3, a small --prefill-chunk so that prompts
  are cut into pieces between other prompts' decode steps, per-token outliers): the JSON lines
  of `--device cpu,cpu`, `--device cpu,cpu,cpu --split 0,3,3` (an empty first stage) and, under
  mpirun, `-np 2` and `-np 3` equal the single-process run's byte for byte (greedy and seeded,
  float32 and 16-bit KV cache, stop strings).
* `serve`: several greedy requests sent at once (different prompts and lengths, with the
  chosen tokens' logprobs) get the same text, tokens, logprobs and finish reasons from
  `serve --device cpu,cpu` and from `mpirun -np 2 llmint8 serve` as from one process.
  Echo with logprobs is refused under mpirun with a message (400), and the server stays up.
* SIGTERM to rank 0 of `mpirun -np 2 llmint8 serve` ends every rank: mpirun exits 0 within a
  time-out, rank 0 says "stopped". Rank 1 killed while serving ends the job non-zero within a
  time-out, with a message naming rank 1.
* A hostile rank 0 (tests/pipeline_fake_rank0.c) that removes a sequence rank 1 lacks, claims
  another slot, runs a sequence from another position, or sends a step table of the wrong
  size: rank 1 ends the run with a message saying which.
Exits 77 when neither serve nor mpirun can run.
"""
import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from clitest import BIN, SANITIZER, check, finish, run
from mpitest import ENV, MPI_ARGS, MPIRUN, mpi, mpi_works
import servetest

MODEL = "models/opt-gutenberg-7m"

PROMPTS = [
    "It was a dark and stormy night",
    "The old man",
    "Once upon a time there lived a king who had three daughters, and the youngest was so "
    "beautiful that the sun itself, which has seen so much, was astonished",
    "A",
    "She looked at him for a long time, and then she said",
]
if SANITIZER:
    PROMPTS = PROMPTS[:3]




HAVE_MPI = mpi_works("generate", MODEL, "-p", "A", "-n", "2", "--greedy", "--threads", "1")
ran_any = False
tmp = tempfile.mkdtemp(prefix="llmint8-pipeline-serve-")
atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # ours: made just above

# ---- generate --prompts ----------------------------------------------------------------
prompts_file = os.path.join(tmp, "prompts.txt")
with open(prompts_file, "w", encoding="utf-8") as f:
    f.write("\n".join(PROMPTS) + "\n")
n_new = "12" if SANITIZER else "24"
for label, opts in [("greedy", ["--greedy"]), ("seeded f16 cache", ["--temperature", "0.8", "--kv-cache", "f16"]),
                    ("stop strings", ["--greedy", "--stop", "the", "--stop", "\n\n"])]:
    base = ["generate", MODEL, "--prompts", prompts_file, "-n", n_new, "--parallel", "3", "--prefill-chunk", "5",
            "--outliers", "per-token", "--seed", "7", "--threads", "1", *opts]
    rc, ref, err = run(*base)
    check(f"generate --prompts {label}: one process runs", rc == 0 and len(ref.splitlines()) == len(PROMPTS), err)
    variants = [("--device cpu,cpu", lambda: run(*base, "--device", "cpu,cpu")),
                ("--device cpu,cpu,cpu --split 0,3,3", lambda: run(*base, "--device", "cpu,cpu,cpu", "--split", "0,3,3"))]
    if HAVE_MPI:
        variants.append(("mpirun -np 2", lambda: mpi(2, *base, timeout=300)))
        if not SANITIZER:
            variants.append(("mpirun -np 3", lambda: mpi(3, *base, timeout=300)))
    for name, fn in variants:
        rc, out, err = fn()
        check(f"generate --prompts {label}, {name}: the same JSON lines as one process", rc == 0 and out == ref,
              f"rc={rc}\n{out[:500]}\n---\n{ref[:500]}\n{err[-1500:]}")
    ran_any = True

# ---- a hostile rank 0 (tests/pipeline_fake_rank0.c): rank 1 checks the engine's commands --
fake = os.path.join(os.path.dirname(BIN), "tests", "pipeline_fake_rank0")
if HAVE_MPI and not os.path.exists(fake):
    print(f"# {fake} not built: the hostile rank 0 checks are skipped")
for mode, want in (("remove", "rank 0 removed a sequence this rank does not have"),
                   ("slot", "rank 0 added sequence slot 5, this rank slot 1: out of step"),
                   ("pos", "rank 0 runs sequence 1 from position 7, this rank has it at 0: out of step"),
                   ("size", "rank 0 sent 4 bytes for a step's sequences, expected 12")):
    if not HAVE_MPI or not os.path.exists(fake):
        break
    try:
        p = subprocess.run([MPIRUN, *MPI_ARGS, "-np", "1", fake, mode, ":", "-np", "1", BIN, "serve", MODEL,
                            "--threads", "1"], capture_output=True, timeout=120, env=ENV)
        rc, err = p.returncode, p.stderr.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        rc, err = -999, "timed out"
    check(f"a hostile rank 0 ({mode}): rank 1 ends the run with a message", rc not in (0, -999) and want in err
          and "Sanitizer" not in err and "runtime error" not in err, f"rc={rc}\n{err[-1500:]}")

# ---- serve ---------------------------------------------------------------------------
serve_built = True
p = subprocess.run([BIN, "serve", "--help"], capture_output=True)
if p.returncode != 0 and b"not built" in p.stderr:
    print("# llmint8 was built without libmicrohttpd: the serve checks are skipped")
    serve_built = False

SERVE_ARGS = ["--threads", "1", "--parallel", "4", "--prefill-chunk", "6", "--quiet"]


def concurrent_completions(srv):
    """Every prompt at once, greedy, each its own max_tokens; the parts that must agree."""
    results = [None] * len(PROMPTS)

    def one(i):
        st, body = srv.complete(prompt=PROMPTS[i], max_tokens=6 + 3 * i, temperature=0, logprobs=1)
        if st == 200:
            c = body["choices"][0]
            results[i] = (c["text"], c.get("logprobs"), c["finish_reason"], body["usage"])
        else:
            results[i] = (st, body)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return results


def rank_pid(mpirun_pid, rank=0):
    """The pid of a rank among mpirun's descendants (its environment names the rank)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if f"OMPI_COMM_WORLD_RANK={rank}".encode() in env and cmd and cmd[0].endswith(b"llmint8") and b"serve" in cmd:
            # a descendant of this mpirun
            ppid = pid
            for _ in range(8):
                try:
                    with open(f"/proc/{ppid}/stat") as f:
                        ppid = f.read().rsplit(")", 1)[1].split()[1]
                except OSError:
                    break
                if int(ppid) == mpirun_pid:
                    return int(pid)
    return None


if serve_built:
    ref_srv = servetest.Server(*SERVE_ARGS)
    ref = concurrent_completions(ref_srv)
    ref_srv.stop("serve, one process")
    check("serve, one process: every request answered", all(r and len(r) == 4 for r in ref), str(ref))

    local = servetest.Server(*SERVE_ARGS, "--device", "cpu,cpu")
    got = concurrent_completions(local)
    check("serve --device cpu,cpu: text, logprobs, finish reasons equal to one process", got == ref,
          f"{got}\n---\n{ref}")
    st, body = local.complete(prompt="The old man", max_tokens=2, temperature=0, echo=True, logprobs=1)
    check("serve --device cpu,cpu: echo with logprobs works (one process holds every stage)", st == 200, body)
    local.stop("serve --device cpu,cpu")
    ran_any = True

    if HAVE_MPI:
        srv = servetest.Server(*SERVE_ARGS, launcher=[MPIRUN, *MPI_ARGS, "-np", "2"], env={
            k: v for k, v in ENV.items() if k.startswith(("LLMINT8_", "LSAN_", "ASAN_"))})
        got = concurrent_completions(srv)
        check("mpirun -np 2 serve: text, logprobs, finish reasons equal to one process", got == ref,
              f"{got}\n---\n{ref}")
        st, body = srv.complete(prompt="The old man", max_tokens=2, temperature=0, echo=True, logprobs=1)
        check("mpirun -np 2 serve: echo with logprobs refused with a message",
              st == 400 and "pipeline" in json.dumps(body), f"{st} {body}")
        check("mpirun -np 2 serve: still serving after the refusal", srv.alive())
        pid = rank_pid(srv.proc.pid)
        check("mpirun -np 2 serve: rank 0 found", pid is not None)
        if pid:
            os.kill(pid, signal.SIGTERM)
            rc, log = srv.wait_exit(60)
            check("mpirun -np 2 serve: SIGTERM to rank 0 ends every rank, exit 0",
                  rc == 0 and "serve: stopped" in log and "Sanitizer" not in log and "runtime error" not in log,
                  f"rc={rc}\n{log[-3000:]}")
        else:
            srv.proc.kill()

        # a rank that dies while serving: the job ends non-zero within seconds, naming it
        srv = servetest.Server(*SERVE_ARGS, launcher=[MPIRUN, *MPI_ARGS, "-np", "2"], env={
            k: v for k, v in ENV.items() if k.startswith(("LLMINT8_", "LSAN_", "ASAN_"))})
        st, _ = srv.complete(prompt="It was", max_tokens=2, temperature=0)
        pid = rank_pid(srv.proc.pid, 1)
        check("mpirun -np 2 serve: answers, rank 1 found", st == 200 and pid is not None)
        if pid:
            os.kill(pid, signal.SIGKILL)
            try:
                srv.complete(prompt="It was a dark", max_tokens=4, temperature=0)
            except OSError:
                pass
            rc, log = srv.wait_exit(90)
            check("mpirun -np 2 serve: rank 1 killed ends the job non-zero with a message naming it",
                  rc not in (0, -999) and "rank 1" in log, f"rc={rc}\n{log[-2000:]}")
        else:
            srv.proc.kill()

if not ran_any:
    print("SKIP: nothing could run")
    sys.exit(77)
finish()
