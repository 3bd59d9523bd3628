"""return_lse=True: each row's log-sum-exp of its scaled, masked scores, against a direct
logsumexp in long double on every tier (fused and with the weights), with masks, causal, bias and
lengths; -inf for a row that sees no key, NaN for a NaN row; the order of the returned tuple."""
import numpy as np
import pytest

from attn_reference import LD, assert_close, ref_lse, ref_scores
from selfattn import scaled_dot_product_attention as sdpa

# The `isa` fixture (every supported tier) comes from conftest.py.

B, N_Q, N_K, D, DV = 2, 70, 90, 6, 5


def operands(rng, dtype=np.float64):
    return (rng.standard_normal((B, N_Q, D)).astype(dtype),
            rng.standard_normal((B, N_K, D)).astype(dtype),
            rng.standard_normal((B, N_K, DV)).astype(dtype))


CASES = {
    "plain": {},
    "causal": dict(is_causal=True),
    "bool mask, a row hidden": dict(mask=np.arange(N_Q)[:, None] != 3),
    "float mask": dict(mask=np.where(np.arange(N_K) % 7 == 0, -np.inf, 0.25)),
    "bias and causal": dict(bias=np.linspace(-2, 2, N_Q * N_K).reshape(N_Q, N_K),
                            is_causal=True),
    "lengths": dict(query_lengths=[70, 30], key_lengths=[50, 0]),
    "large scale": dict(scale=40.0),
}


def _scores_kw(kw):
    """ref_scores' arguments for a call's keywords (bias is added as a float mask is)."""
    kw = dict(kw)
    if "bias" in kw:
        kw["mask"] = kw.pop("bias")
    return kw


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lse_matches_a_long_double_logsumexp(case, dtype, isa):
    rng = np.random.default_rng(1)
    Q, K, V = operands(rng, dtype)
    kw = CASES[case]
    want = ref_lse(ref_scores(Q, K, **_scores_kw(kw)))
    out, lse = sdpa(Q, K, V, return_lse=True, **kw)
    assert lse.shape == (B, N_Q) and lse.dtype == dtype
    assert_close(lse, want)
    np.testing.assert_array_equal(out, sdpa(Q, K, V, **kw))       # the output is unchanged
    out_w, weights, lse_w = sdpa(Q, K, V, return_weights=True, return_lse=True, **kw)
    assert_close(lse_w, want)
    # the weights are exp(scores - lse): the quantity the backward and flash-decoding use
    with np.errstate(invalid="ignore"):
        rebuilt = np.exp(ref_scores(Q, K, **_scores_kw(kw)) - want[..., None])
    assert_close(weights, np.where(np.isneginf(want)[..., None], LD(0), rebuilt))


def test_fully_masked_nan_and_inf_rows(isa):
    """-inf for a row that sees no key; NaN for a row holding NaN, or +inf (a +inf float mask
    entry: that row's weights are NaN), on the fused and the weights' paths alike."""
    rng = np.random.default_rng(2)
    Q, K, V = operands(rng)
    Q[1, 5, 2] = np.nan
    mask = np.zeros((N_Q, N_K))
    mask[7] = -np.inf
    mask[9, 4] = np.inf
    for kw in (dict(mask=mask), dict(mask=mask, return_weights=True)):
        *_, lse = sdpa(Q, K, V, return_lse=True, **kw)
        assert np.isneginf(lse[:, 7]).all()
        assert np.isnan(lse[1, 5]) and np.isnan(lse[:, 9]).all() and np.isnan(lse).sum() == 3
        assert np.isfinite(np.delete(lse, [5, 7, 9], axis=1)).all()


def test_no_keys_and_no_value_columns(isa):
    rng = np.random.default_rng(3)
    Q = rng.standard_normal((3, 4))
    out, lse = sdpa(Q, np.zeros((0, 4)), np.zeros((0, 2)), return_lse=True)
    assert not out.any() and np.isneginf(lse).all() and lse.shape == (3,)
    K = rng.standard_normal((5, 4))
    out, lse = sdpa(Q, K, np.zeros((5, 0)), return_lse=True)     # d_v = 0: lse all the same
    assert out.shape == (3, 0)
    assert_close(lse, ref_lse(ref_scores(Q, K)))


def test_lse_of_one_key_is_its_score():
    Q, K, V = np.array([[2.0, 0.0]]), np.array([[3.0, 1.0]]), np.array([[1.0]])
    out, lse = sdpa(Q, K, V, scale=1.0, return_lse=True)
    assert lse.shape == (1,) and abs(lse[0] - 6.0) <= 4e-15     # the fused kernel's log2 units
    assert sdpa(Q, K, V, scale=1.0, return_lse=True, return_weights=True)[2].tolist() == [6.0]


def test_float16_lse_is_float16():
    rng = np.random.default_rng(4)
    Q, K, V = (a.astype(np.float16) for a in operands(rng))
    out, lse = sdpa(Q, K, V, return_lse=True)
    assert lse.dtype == np.float16
    assert_close(lse, ref_lse(ref_scores(Q, K)), np.float16)


def test_return_lse_must_be_a_bool():
    Q = np.ones((2, 2))
    with pytest.raises(TypeError, match="return_lse must be True or False"):
        sdpa(Q, Q, Q, return_lse=1)
