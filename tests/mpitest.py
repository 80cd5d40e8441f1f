"""mpitest.py — llmint8 under mpirun, for the pipeline tests (test_pipeline.py,
test_pipeline_serve.py): where mpirun is, the arguments and environment every run takes, and a
probe that tells whether ranks can start here at all."""
import os
import shutil

from clitest import BIN, SANITIZER, run_argv

MPIRUN = shutil.which("mpirun")
MPI_ARGS = ["--oversubscribe", "--allow-run-as-root"]
ENV = dict(os.environ, LLMINT8_MPI_TIMEOUT="20")
if SANITIZER:
    # Open MPI keeps memory past MPI_Finalize: its libraries' leaks are suppressed, found by
    # full stack traces (MPI's components have no frame pointers), and MPI waits longer.
    supp = os.path.abspath("tests/data/lsan-mpi.supp")
    ENV["LSAN_OPTIONS"] = f"suppressions={supp}:print_suppressions=0:fast_unwind_on_malloc=0"
    ENV["ASAN_OPTIONS"] = (os.environ.get("ASAN_OPTIONS", "") + ":fast_unwind_on_malloc=0").lstrip(":")
    ENV["LLMINT8_MPI_TIMEOUT"] = "60"
    MPI_ARGS += ["-x", "LSAN_OPTIONS", "-x", "ASAN_OPTIONS"]


def mpi(np, *args, env=None, timeout=120):
    """Runs llmint8 ARGS under mpirun with np ranks: (status, stdout, stderr), as clitest.run."""
    return run_argv([MPIRUN, *MPI_ARGS, "-np", str(np), BIN, *args], timeout=timeout, env=env or ENV)


def mpi_works(*probe):
    """True when `mpirun -np 2 llmint8 PROBE...` can run here; otherwise says why (skipped)."""
    if not MPIRUN:
        print("# mpirun not found: the MPI checks are skipped")
        return False
    rc, out, err = mpi(2, *probe)
    if "built without MPI" in err:
        print("# this llmint8 was built without MPI: the MPI checks are skipped")
        return False
    if rc != 0 and ("not enough slots" in err or "ORTE" in err or "PMIx" in err or "orted" in err):
        print(f"# mpirun cannot start ranks here: the MPI checks are skipped\n# {err[:300]}")
        return False
    return True
