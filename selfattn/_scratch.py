"""Reused memory for the arrays a call makes for itself and drops before it returns.

A multi-head backward makes a dozen intermediate arrays of a few hundred KiB to a few MiB (the
projections, the heads' output, the gradients side by side, transposed copies) and frees them
again. glibc then often gives the top of its heap back to the system, and the next call takes
every page again with a fault: 1,350 faults a call for float32, n = 512, d_model = 256, a fifth
of its 14 ms on a virtual machine where a fault costs a few microseconds. Here such arrays are
views of buffers that each thread keeps between its calls.

A buffer is handed out again only when nothing refers to it: every view of it holds a reference
to it (NumPy's base), so an array that outlives its call, or one a caller still holds, keeps its
buffer out of use; the pool never needs to be told when an array is done. A thread's pool holds
at most POOL_BYTES (the least recently used free buffers are dropped first; past that an array
comes from np.empty); arrays under MIN_BYTES come from np.empty as before (glibc reuses small
blocks well), and so does every array while tracemalloc traces: a buffer allocated before it
started would be invisible to it, and the memory it measures (the tests', the bench's) would be
less than what the call uses.
"""
from __future__ import annotations

import math
import sys
import threading
import tracemalloc

import numpy as np

MIN_BYTES = 64 << 10
POOL_BYTES = 64 << 20
_ALIGN = 64         # a cache line: the kernels' rows start where np.empty's would, or better

_local = threading.local()


def _buffers():
    pool = getattr(_local, "buffers", None)
    if pool is None:
        pool = _local.buffers = []
    return pool


def _free(pool, i):
    """Whether nothing but the pool refers to buffer i: its references are then the list's and
    getrefcount's argument (no local name may hold it while this is asked)."""
    return sys.getrefcount(pool[i]) <= 2


def empty(shape, dtype):
    """An uninitialised array like np.empty(shape, dtype), C-ordered, from this thread's pool
    where it is large enough to be worth it."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES or tracemalloc.is_tracing():
        return np.empty(shape, dtype)
    pool = _buffers()
    want = nbytes + _ALIGN
    found = None
    for i in range(len(pool)):
        # a free buffer of the size, or at most a quarter larger (no large buffer held by a small array)
        if want <= pool[i].nbytes <= want * 5 // 4 and _free(pool, i):
            found = pool.pop(i)
            break
    if found is None:
        if _trim(pool, POOL_BYTES - want) + want > POOL_BYTES:
            return np.empty(shape, dtype)       # the buffers in use fill the budget
        found = np.empty(want, np.uint8)
    pool.append(found)      # the most recently used last
    start = -found.ctypes.data % _ALIGN
    return found[start: start + nbytes].view(dtype).reshape(shape)


def _trim(pool, keep):
    """Drops free buffers, the least recently used first, until the pool holds at most `keep`
    bytes (never one that is in use); returns the bytes it holds then."""
    total = sum(buf.nbytes for buf in pool)
    i = 0
    while total > keep and i < len(pool):
        if _free(pool, i):
            total -= pool.pop(i).nbytes
        else:
            i += 1
    return total
