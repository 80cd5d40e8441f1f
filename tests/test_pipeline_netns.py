#!/usr/bin/env python3
"""test_pipeline_netns.py — a pipeline across two "hosts" over TCP (docs/PIPELINE.md).

Two network namespaces joined by a veth pair stand for two machines, each with its own address
(10.201.N.1 and 10.201.N.2) and host name (its own UTS namespace). mpirun runs in the first;
Open MPI reaches the second through a launch agent (what ssh would be between real hosts) that
enters that namespace, and the ranks talk over TCP on the veth only (btl tcp,self). Checks:
* `ppl --json --token-nll` and greedy `generate` across the two hosts: every token's NLL and
  every id bit for bit the one-process run (OPT and BLOOM fixtures);
* the ranks ran on both hosts (their host names), and the residual streams crossed the veth
  (its byte counters grew by more than they hold).
Needs root (ip netns), iproute2, unshare, mpirun and an llmint8 built with MPI: exits 77
(skipped) with a message otherwise.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

from clitest import BIN, SANITIZER, check, finish, run

FIX = "tests/data/fixtures"


def skip(why):
    print(f"skipped: {why}")
    sys.exit(77)


def sh(*cmd, check_rc=True):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if check_rc and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip()}")
    return p


for tool in ("ip", "unshare", "mpirun"):
    if not shutil.which(tool):
        skip(f"{tool} not found")
if os.geteuid() != 0:
    skip("network namespaces need root")

pid = os.getpid()
net = 10 + pid % 200
A, B = f"l8a{pid}", f"l8b{pid}"
VA, VB = f"l8va{pid % 100000}", f"l8vb{pid % 100000}"
IP_A, IP_B = f"10.201.{net}.1", f"10.201.{net}.2"
tmp = tempfile.mkdtemp(prefix="llmint8-netns-")
made = []
try:
    try:
        sh("ip", "netns", "add", A)
        made.append(A)
        sh("ip", "netns", "add", B)
        made.append(B)
        sh("ip", "link", "add", VA, "type", "veth", "peer", "name", VB)
        sh("ip", "link", "set", VA, "netns", A)
        sh("ip", "link", "set", VB, "netns", B)
        sh("ip", "-n", A, "addr", "add", f"{IP_A}/24", "dev", VA)
        sh("ip", "-n", B, "addr", "add", f"{IP_B}/24", "dev", VB)
        for ns, dev in ((A, VA), (B, VB)):
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
    except RuntimeError as e:
        skip(f"cannot make network namespaces here ({e})")

    # The launch agent: Open MPI calls it as `AGENT HOST COMMAND...` to start its daemon on HOST.
    agent = os.path.join(tmp, "agent.sh")
    with open(agent, "w") as f:
        f.write("#!/bin/sh\nhost=$1; shift\n"
                f'if [ "$host" = {IP_B} ]; then exec ip netns exec {B} unshare --uts sh -c '
                '\'hostname hostb; exec sh -c "$0"\' "$*"; fi\n'
                'exec sh -c "$*"\n')
    os.chmod(agent, 0o755)
    mpirun = ("mpirun --allow-run-as-root --oversubscribe "
              f"--mca plm_rsh_agent {agent} --mca btl tcp,self "
              f"--mca btl_tcp_if_include 10.201.{net}.0/24 --mca oob_tcp_if_include 10.201.{net}.0/24 "
              f"--host {IP_A}:1,{IP_B}:1 -np 2")

    env = dict(os.environ, LLMINT8_MPI_TIMEOUT="20")
    if SANITIZER:  # Open MPI's own leaks suppressed, as in test_pipeline.py
        env["LSAN_OPTIONS"] = (f"suppressions={os.path.abspath('tests/data/lsan-mpi.supp')}:print_suppressions=0:"
                               "fast_unwind_on_malloc=0")
        env["ASAN_OPTIONS"] = (os.environ.get("ASAN_OPTIONS", "") + ":fast_unwind_on_malloc=0").lstrip(":")
        env["LLMINT8_MPI_TIMEOUT"] = "60"
        mpirun += " -x LSAN_OPTIONS -x ASAN_OPTIONS"

    def veth_bytes():
        p = sh("ip", "-n", B, "-j", "-s", "link", "show", VB, check_rc=False)
        try:
            stats = json.loads(p.stdout)[0]["stats64"]
            return stats["rx"]["bytes"] + stats["tx"]["bytes"]
        except (ValueError, KeyError, IndexError):
            return -1

    def across(*args):
        """llmint8 ARGS under mpirun from host A: (status, stdout, stderr)."""
        inner = " ".join(["sh", "-c", "'echo host $(hostname) rank $OMPI_COMM_WORLD_RANK >&2; exec \"$0\" \"$@\"'",
                          BIN, *args])
        cmd = ["ip", "netns", "exec", A, "unshare", "--uts", "sh", "-c", f"hostname hosta; {mpirun} {inner}"]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        except subprocess.TimeoutExpired:
            return -999, "", "timed out"
        if "Sanitizer" in p.stderr or "runtime error:" in p.stderr:
            return -1000, "", p.stderr
        return p.returncode, p.stdout, p.stderr

    tmpids = os.path.join(tmp, "ids")
    for model in ("opt-tiny", "bloom-tiny"):
        d = f"{FIX}/{model}"
        vocab = json.load(open(f"{d}/config.json"))["vocab_size"]
        with open(tmpids, "w") as f:
            f.write(" ".join(str((i * 7919 + 13) % vocab) for i in range(150)))
        rc, out, err = run("ppl", d, "--ids", tmpids, "--ctx", "64", "--json", "--token-nll", "--threads", "1")
        ref = json.loads(out) if rc == 0 else None
        before = veth_bytes()
        rc, out, err = across("ppl", d, "--ids", tmpids, "--ctx", "64", "--json", "--token-nll", "--threads", "1")
        after = veth_bytes()
        if "built without MPI" in err:
            skip("llmint8 was built without MPI")
        try:
            got = json.loads(out)
        except ValueError:
            got = None
        check(f"{model}: ppl across two hosts, every token's NLL bit for bit the one-process one",
              rc == 0 and got is not None and ref is not None and got["token_nll"] == ref["token_nll"],
              f"rc {rc}: {err[-1500:]}")
        check(f"{model}: the ranks ran on both hosts", "host hosta rank 0" in err and "host hostb rank 1" in err,
              err[-1500:])
        hidden = json.load(open(f"{d}/config.json")).get("hidden_size", 0)
        check(f"{model}: the residual streams crossed the veth",
              before >= 0 and after - before > 150 * hidden * 4, f"{before} -> {after} bytes")

        with open(tmpids, "w") as f:
            f.write(" ".join(str((i * 31 + 5) % vocab) for i in range(10)))
        rc, gref, err = run("generate", d, "--ids", tmpids, "-n", "20", "--greedy", "--ignore-eos", "--print-ids",
                            "--threads", "1")
        rc2, gout, err2 = across("generate", d, "--ids", tmpids, "-n", "20", "--greedy", "--ignore-eos",
                                 "--print-ids", "--threads", "1")
        check(f"{model}: greedy ids across two hosts the one-process ones",
              rc == 0 and rc2 == 0 and gout.split() == gref.split() and len(gref.split()) == 20,
              f"rc {rc2}: {gout!r} vs {gref!r}: {err2[-1500:]}")
finally:
    for ns in made:
        sh("ip", "netns", "del", ns, check_rc=False)
    shutil.rmtree(tmp, ignore_errors=True)
finish()
