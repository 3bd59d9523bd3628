"""Accuracy of each tier's vectorised exp (the one softmax and attention use), via _core.vexp.

The error is measured in ulps of the result against np.longdouble's exp over the whole range
where the result is a normal number, plus the edges: -inf and large negative -> 0, 0 -> 1,
+inf and large positive -> +inf, NaN -> NaN, and never a subnormal result.
The bounds asserted here are the ones stated in csrc/vexp_fast.inc. Modes: 0 e^x, 1 2^x, and
the variants the kernels run on arguments <= 0 (2: softmax's e^(x - max), 3: the fused kernel's
2^(s - m)), checked on x <= 0 only.
"""
import math

import numpy as np
import pytest

from selfattn import _core

pytestmark = pytest.mark.c_backend  # about the C extension itself (conftest.py)

FAST_TIERS = [t for t in _core.supported_isas() if t != "reference"]
LD = np.longdouble

EXP, EXP2, EXP_NONPOS, EXP2_NONPOS = 0, 1, 2, 3
MODES = [EXP, EXP2, EXP_NONPOS, EXP2_NONPOS]

# (dtype, base2): (lowest x whose result is not flushed, highest finite x)
RANGES = {
    (np.float32, False): (-86.64, 88.72),
    (np.float32, True): (-125.0, 127.99),
    (np.float64, False): (-707.7, 709.78),
    (np.float64, True): (-1021.0, 1023.99),
}


def mode_range(dtype, mode):
    lo, hi = RANGES[(dtype, mode in (EXP2, EXP2_NONPOS))]
    return lo, (0.0 if mode in (EXP_NONPOS, EXP2_NONPOS) else hi)


def ulp_bound(tier):
    """Measured: <= 0.93 ulp with FMA (avx2, avx512, neon), <= 1.2 ulp without (generic)."""
    return 1.25 if tier == "generic" else 1.0


def vexp(x, tier, mode):
    out = np.empty_like(x)
    _core.vexp(out, x, _core.isa_code(tier), mode)
    return out


def ulp_error(got, x, dtype, mode):
    base2 = mode in (EXP2, EXP2_NONPOS)
    exact = np.exp2(x.astype(LD)) if base2 else np.exp(x.astype(LD))
    spacing = np.spacing(exact.astype(dtype)).astype(LD)
    return np.abs(got.astype(LD) - exact) / spacing


@pytest.mark.parametrize("tier", FAST_TIERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", MODES)
def test_max_ulp_error_over_useful_range(tier, dtype, mode):
    lo, hi = mode_range(dtype, mode)
    bound = ulp_bound(tier)
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(lo, hi, 400_001), rng.uniform(lo, hi, 200_000),
                        rng.uniform(-1, 1, 100_000), rng.uniform(-20, 0, 100_000)]).astype(dtype)
    x = x[(x >= lo) & (x <= hi)]
    got = vexp(x, tier, mode)
    err = ulp_error(got, x, dtype, mode)
    worst = float(err.max())
    where = x[err.argmax()]
    assert worst <= bound, f"{tier} {dtype.__name__} mode={mode}: {worst:.3f} ulp at x={where!r}"
    # a real vectorised exp: not exact everywhere (it is not libm)
    assert np.isfinite(got).all()


@pytest.mark.parametrize("tier", FAST_TIERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("base2", [False, True])
def test_edges(tier, dtype, base2):
    lo, hi = RANGES[(dtype, base2)]
    special = np.array([-np.inf, np.inf, np.nan, 0.0, -0.0, 1.0, -1.0, lo - 1, lo * 2,
                        -1e30, 1e30, hi + 2, np.finfo(dtype).max, -np.finfo(dtype).max,
                        np.finfo(dtype).tiny, -np.finfo(dtype).tiny], dtype)
    mode = EXP2 if base2 else EXP
    # odd lengths exercise the partial-vector tail
    for n in (len(special), 1, 3):
        x = special[:n]
        got = vexp(x, tier, mode)
        assert got.shape == x.shape
        np.testing.assert_array_equal(got, vexp(special, tier, mode)[:n])
    got = vexp(special, tier, mode)
    assert got[0] == 0 and not np.signbit(got[0])
    assert got[1] == np.inf
    assert np.isnan(got[2])
    assert got[3] == 1 and got[4] == 1
    np.testing.assert_allclose(got[5:7], (np.exp2 if base2 else np.exp)(np.array([1.0, -1.0])),
                               rtol=4 * np.finfo(dtype).eps)
    assert got[7] == 0 and got[8] == 0 and got[9] == 0
    assert got[10] == np.inf and got[11] == np.inf and got[12] == np.inf
    assert got[13] == 0
    assert got[14] == 1 and got[15] == 1
    # the kernels' variants agree on every argument <= 0 (and NaN)
    nonpos = special[(special <= 0) | np.isnan(special)]
    np.testing.assert_array_equal(vexp(nonpos, tier, EXP2_NONPOS if base2 else EXP_NONPOS),
                                  vexp(nonpos, tier, mode))


@pytest.mark.parametrize("tier", FAST_TIERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", MODES)
def test_no_subnormal_results(tier, dtype, mode):
    """Arguments around and below the flush threshold give 0 or a normal number, never a
    subnormal one (those are slow in the products that follow)."""
    lo, _ = mode_range(dtype, mode)
    x = np.linspace(lo - 60, lo + 2, 300_001).astype(dtype)
    got = vexp(x, tier, mode)
    assert (got >= 0).all()
    tiny = np.finfo(dtype).tiny
    assert not ((got > 0) & (got < tiny)).any()
    # above the threshold nothing is flushed and the results are accurate
    above = x >= lo
    assert (got[above] >= tiny).all()
    assert float(ulp_error(got[above], x[above], dtype, mode).max()) <= ulp_bound(tier)
    # below it, everything is 0
    np.testing.assert_array_equal(got[x < lo - 1], 0)


FMA_TIERS = [t for t in FAST_TIERS if t in ("avx2", "avx512")]


@pytest.mark.skipif(len(FMA_TIERS) < 2, reason="needs the avx2 and avx512 tiers on this CPU")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", MODES)
def test_fma_tiers_give_the_same_bits(dtype, mode):
    """avx512 ends its exps with one VSCALEF (vexp_fast.inc's exp_finish) where avx2 builds 2^n
    in the exponent bits, masks and adds the NaNs back: the same bits for every argument (for the
    variants on x <= 0, every such argument and NaN), flushed ones and edges included."""
    lo, hi = mode_range(dtype, mode)
    rng = np.random.default_rng(11)
    x = np.concatenate([rng.uniform(lo - 40, hi + 40, 400_000), np.linspace(lo - 2, lo + 2, 4001),
                        [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, lo, hi]]).astype(dtype)
    if mode in (EXP_NONPOS, EXP2_NONPOS):
        x = x[~(x > 0)]
    a, b = vexp(x, FMA_TIERS[0], mode), vexp(x, FMA_TIERS[1], mode)
    nan = np.isnan(a)
    np.testing.assert_array_equal(nan, np.isnan(b))
    np.testing.assert_array_equal(a[~nan], b[~nan])
    assert (np.signbit(a[~nan]) == np.signbit(b[~nan])).all()


def test_reference_tier_is_libm():
    x = np.linspace(-50, 50, 1001)
    np.testing.assert_array_equal(vexp(x, "reference", EXP), [math.exp(v) for v in x])
    x32 = x.astype(np.float32)
    err = ulp_error(vexp(x32, "reference", EXP), x32, np.float32, EXP)
    assert err.max() <= 1


def test_mode_is_checked():
    x = np.zeros(4)
    with pytest.raises(ValueError, match="mode"):
        _core.vexp(np.empty_like(x), x, _core.isa_code("reference"), 7)


def test_misaligned_arrays_are_refused():
    # the kernels load whole elements: a float64 array at an odd address was a misaligned load
    # (UBSan); NumPy makes one from a buffer at an offset
    buffer = np.zeros(8 * 4 + 1, np.uint8)
    x = np.frombuffer(buffer.data, np.float64, count=4, offset=1)
    assert not x.flags.aligned
    with pytest.raises(ValueError, match="aligned"):
        _core.vexp(np.empty(4), x, _core.isa_code("reference"), 0)
    out = np.frombuffer(bytearray(8 * 4 + 1), np.float64, count=4, offset=1)
    with pytest.raises(ValueError, match="aligned"):
        _core.vexp(out, np.zeros(4), _core.isa_code("reference"), 0)
