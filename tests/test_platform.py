"""The platform layer (csrc/platform.c): CPU count, fork safety of the thread pool, CPU features."""
import os
import pathlib
import platform
import subprocess
import sys

import numpy as np
import pytest

import selfattn
from selfattn import _core


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="the OS has no affinity mask")
def test_available_cpus_honours_the_affinity_mask():
    # A child pinned to one CPU must see one CPU, and default to one thread.
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); import selfattn; "
            "c = selfattn.config(); print(c['available_cpus'], c['threads'])")
    env = {k: v for k, v in os.environ.items() if k != "SELFATTN_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    assert out == ["1", "1"]
    assert _core.available_cpus() == len(os.sched_getaffinity(0))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the OS has no fork()")
def test_the_pool_works_in_a_child_after_fork(threads):
    # The parent's workers do not exist in a forked child: the pool must start over there, and
    # give the same bits, rather than wait forever for the parent's threads.
    rng = np.random.default_rng(7)
    Q, K, V = (rng.standard_normal((300, 64)) for _ in range(3))
    selfattn.set_num_threads(2)
    want = selfattn.scaled_dot_product_attention(Q, K, V)      # the pool is running now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                                                # the child
        status = 1
        try:
            os.close(read)
            got = selfattn.scaled_dot_product_attention(Q, K, V)
            os.write(write, b"same" if np.array_equal(got, want) else b"differ")
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    answer = os.read(read, 16)
    os.close(read)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert answer == b"same"


_FORK_WITH_THE_POOL_IDLE = """
import os, sys, warnings
import numpy as np
import selfattn

def threads():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))

Q = np.random.default_rng(0).standard_normal((2, 300, 64))
selfattn.set_num_threads(3)
want = selfattn.scaled_dot_product_attention(Q, Q, Q)
before = threads()
with warnings.catch_warnings():
    warnings.simplefilter("error")  # Python 3.12+: a DeprecationWarning for other threads
    pid = os.fork()
if pid == 0:
    same = np.array_equal(selfattn.scaled_dot_product_attention(Q, Q, Q), want)
    os._exit(0 if same else 3)
_, status = os.waitpid(pid, 0)
after = threads()
same = np.array_equal(selfattn.scaled_dot_product_attention(Q, Q, Q), want)
print(before, after, threads(), os.waitstatus_to_exitcode(status), same)
"""


@pytest.mark.c_backend
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="counts threads in /proc")
def test_fork_with_the_pool_idle_stops_its_workers_and_the_next_call_restarts_them():
    """The workers ran on through a fork(): a process that forks with other threads may deadlock
    in the child, and Python 3.12+ warns (DeprecationWarning: "This process is multi-threaded,
    use of fork() may lead to deadlocks"), an error under -W error. An idle pool's workers are
    now stopped before the fork; the child and the parent's next call compute the same bits,
    with the workers started again. (NumPy's OpenBLAS stops its threads too, so none is left.)"""
    env = {k: v for k, v in os.environ.items() if k != "SELFATTN_NUM_THREADS"}
    env["OPENBLAS_NUM_THREADS"] = "1"     # NumPy's own threads are not the point
    out = subprocess.run([sys.executable, "-c", _FORK_WITH_THE_POOL_IDLE], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    before, after, restarted, child, same = (int(x) if x.isdigit() else x
                                             for x in out.stdout.split())
    # 3 threads: the caller and 2 workers (qemu-user, as CI's arm64 check runs, adds one of its
    # own to every count: 4 2 4 there)
    assert after == before - 2 and restarted == before, out.stdout
    assert child == 0 and same == "True"


def test_omp_num_threads_does_not_set_selfattns_threads():
    """As the README says: selfattn's pool is its own (SELFATTN_NUM_THREADS, set_num_threads)."""
    env = {k: v for k, v in os.environ.items() if k != "SELFATTN_NUM_THREADS"}
    code = "import selfattn; print(selfattn.get_num_threads())"
    default = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, check=True).stdout
    omp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, "OMP_NUM_THREADS": "1"}, check=True).stdout
    assert omp == default


@pytest.mark.c_backend
def test_every_listed_tier_is_supported_and_the_best_is_chosen_by_default():
    tiers = list(_core.supported_isas())
    assert tiers[-1] == "reference" and "generic" in tiers
    assert _core.best_isa() == tiers[0]


@pytest.mark.c_backend
def test_the_tiers_of_this_architecture():
    """x86 tiers only on x86, NEON only on 64-bit ARM, where it is the default."""
    tiers = list(_core.supported_isas())
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        assert tiers == ["neon", "generic", "reference"] and _core.best_isa() == "neon"
    else:
        assert "neon" not in tiers
    if machine not in ("x86_64", "amd64", "i386", "i686"):
        assert "avx2" not in tiers and "avx512" not in tiers
    with pytest.raises(ValueError, match="neon"):
        selfattn.set_isa("sve")          # the message names every tier, neon included


OS_HEADERS = ("pthread.h", "sched.h", "unistd.h", "windows.h", "time.h", "sys/")


def test_only_the_platform_layer_includes_os_headers():
    csrc = pathlib.Path(__file__).resolve().parents[1] / "csrc"
    if not csrc.is_dir():
        pytest.skip("the C sources are not beside the tests")
    offenders = []
    for path in sorted(csrc.iterdir()):
        if path.name == "platform.c" or path.suffix not in (".c", ".h", ".inc"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.startswith("#include <") and any(h in line for h in OS_HEADERS):
                offenders.append(f"{path.name}:{number}: {line}")
    assert not offenders, "OS headers outside csrc/platform.c:\n" + "\n".join(offenders)
