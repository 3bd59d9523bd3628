"""Process-wide settings: threads and the instruction-set tier the kernels run on."""
from __future__ import annotations

import os
import warnings

import numpy as np

from . import _core
from ._validate import _integer

__all__ = ["set_num_threads", "get_num_threads", "set_isa", "get_isa", "config"]


def set_num_threads(n):
    """Set how many threads selfattn's kernels may use (``1 <= n <= 1024``).

    The default is the number of CPUs this process may run on, or ``SELFATTN_NUM_THREADS`` if
    that is set when selfattn is imported. Results are bitwise identical for every thread count;
    small problems run on one thread whatever the setting. On the pure-NumPy backend
    (``config()["backend"] == "numpy"``) the setting is kept and reported, but NumPy's BLAS
    chooses its own threads.

    Examples
    --------
    >>> import selfattn
    >>> before = selfattn.get_num_threads()
    >>> selfattn.set_num_threads(1)
    >>> selfattn.get_num_threads()
    1
    >>> selfattn.set_num_threads(before)
    """
    _core.set_num_threads(_integer("set_num_threads", "n", n))


def get_num_threads():
    """The number of threads selfattn's kernels may use (see :func:`set_num_threads`)."""
    return _core.get_num_threads()


def set_isa(name):
    """Choose the instruction-set tier: ``"avx512"``, ``"avx2"``, ``"neon"`` (ARM), ``"generic"``
    or ``"reference"``.

    By default selfattn picks the fastest tier this CPU supports, or ``SELFATTN_ISA`` if that is
    set when selfattn is imported. ``"reference"`` runs the plain scalar kernels every other tier
    is tested against. A tier the CPU lacks raises ValueError. On the pure-NumPy backend
    (``config()["backend"] == "numpy"``) the only tier is ``"numpy"``.
    """
    if not isinstance(name, str):
        raise TypeError(f"set_isa: name must be a string, got {name!r}")
    try:
        _core.set_isa(name.strip().lower())  # "AVX2" as SELFATTN_ISA=AVX2 takes it
    except ValueError as exc:
        raise ValueError(f"{exc}; this machine's tiers: "
                         f"{', '.join(_core.supported_isas())}") from None


def get_isa():
    """The instruction-set tier the kernels run on now (see :func:`set_isa`)."""
    return _core.get_isa()


def config():
    """The build's facts as a dict: version, NumPy version, backend (``"c"``, the compiled
    extension, or ``"numpy"``, the pure-NumPy backend), tiers supported and in use, threads."""
    from . import __version__

    return {
        "selfattn": __version__,
        "numpy": np.__version__,
        "backend": "numpy" if _core.__name__ == "selfattn._numpy_core" else "c",
        "isa": get_isa(),
        "supported_isas": list(_core.supported_isas()),
        "threads": get_num_threads(),
        "available_cpus": _core.available_cpus(),
    }


def _apply_environment():
    """Read SELFATTN_NUM_THREADS and SELFATTN_ISA once, at import."""
    threads = os.environ.get("SELFATTN_NUM_THREADS")
    if threads:
        # digits only: int() also reads "4_0" as 40 and other scripts' digits ("１")
        digits = threads.strip()
        if not (digits.isascii() and digits.isdigit()):
            warnings.warn(f"selfattn: ignoring SELFATTN_NUM_THREADS={threads!r}: not a whole "
                          f"number of threads", RuntimeWarning, stacklevel=3)
        elif len(digits.lstrip("0")) > 9:
            warnings.warn(f"selfattn: ignoring SELFATTN_NUM_THREADS={threads!r}: far more threads "
                          f"than any machine has", RuntimeWarning, stacklevel=3)
        else:
            count = int(digits)
            try:
                set_num_threads(count)
            except ValueError as exc:
                warnings.warn(f"selfattn: ignoring SELFATTN_NUM_THREADS={threads!r}: {exc}",
                              RuntimeWarning, stacklevel=3)
    isa = os.environ.get("SELFATTN_ISA")
    if isa:
        try:
            set_isa(isa)
        except ValueError as exc:
            warnings.warn(f"selfattn: ignoring SELFATTN_ISA={isa!r}: {exc}; using "
                          f"{get_isa()!r}", RuntimeWarning, stacklevel=3)
