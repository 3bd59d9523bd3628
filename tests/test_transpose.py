"""_core.transpose (csrc/transpose.c, selfattn/_numpy_core.py): the transposed copies the
gradients' products read. A copy, so every case must give NumPy's swapaxes bit for bit."""
import os

import numpy as np
import pytest

import selfattn
from selfattn import _core
from selfattn._kernels import _transpose


def transposed(A):
    out = np.empty(A.shape[:-2] + (A.shape[-1], A.shape[-2]), A.dtype)
    _core.transpose(out, A, -1)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (17, 33), (130, 77), (64, 64),
                                   (3, 2, 40, 70), (0, 5, 4)])
def test_gives_numpy_swapaxes(dtype, shape):
    A = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    assert np.array_equal(transposed(A), np.swapaxes(A, -1, -2))


def test_strided_rows_and_broadcast_batch_axes():
    rng = np.random.default_rng(1)
    wide = rng.standard_normal((150, 100)).astype(np.float32)
    A = wide[::2, 10:90]                          # rows 200 elements apart
    assert np.array_equal(transposed(A), A.T)
    B = np.broadcast_to(wide[:70, :50], (3, 70, 50))    # a batch stride of 0
    assert np.array_equal(transposed(B), np.swapaxes(B, -1, -2))


def test_the_same_bytes_for_any_thread_count(threads):
    A = np.random.default_rng(2).standard_normal((2, 600, 333))
    got = []
    for n in (1, 2, max(3, os.cpu_count() or 1)):
        selfattn.set_num_threads(n)
        got.append(transposed(A).tobytes())
    assert got[0] == got[1] == got[2]


def test_the_layer_helper_takes_any_layout():
    """_kernels._transpose: native floats of any size and layout, other dtypes through NumPy."""
    rng = np.random.default_rng(3)
    for A in (rng.standard_normal((90, 80)), np.asfortranarray(rng.standard_normal((90, 80))),
              rng.standard_normal((80, 90)).astype(np.float32)[:, ::-1],
              rng.standard_normal((90, 80)).astype(">f8"), np.arange(20).reshape(4, 5)):
        got = _transpose(A)
        assert got.flags.c_contiguous and np.array_equal(got, np.swapaxes(A, -1, -2))


@pytest.mark.parametrize("dtype,rows,padded", [(np.float64, 512, True), (np.float32, 256, True),
                                               (np.float32, 512, True), (np.float64, 500, False)])
def test_the_layer_helper_pads_rows_of_a_multiple_of_1_kib(dtype, rows, padded):
    """A transposed copy whose rows are a multiple of 1 KiB gets one cache line more between its
    rows (_kernels._empty_rows): read in place as a product's A operand, 12 rows 4 KiB apart
    fall on one L1 set. The values are the transpose's, each row still contiguous."""
    A = np.random.default_rng(4).standard_normal((rows, 96)).astype(dtype)
    got = _transpose(A)
    row_bytes = rows * A.itemsize
    assert got.strides == (row_bytes + 64 if padded else row_bytes, A.itemsize)
    assert np.array_equal(got, A.T)


def test_bad_operands_are_refused():
    A = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="wrong shape"):
        _core.transpose(np.empty((4, 3), np.float32), A, -1)
    with pytest.raises(TypeError, match="float32"):
        _core.transpose(np.empty((3, 4), np.float32), A.astype(np.float64), -1)
    with pytest.raises(ValueError, match="writeable"):
        out = np.empty((3, 4), np.float32)
        out.flags.writeable = False
        _core.transpose(out, A, -1)
