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
