"""An independent reference for the tests: plain NumPy in extended precision (np.longdouble).

Nothing here calls selfattn. It states the conventions the package promises (scaled scores,
mask polarity, causal alignment, fully masked rows, NaN rows, zero-weight keys) as directly as
NumPy allows, so a test failing against it points at the package.
"""
import numpy as np

EXT = np.longdouble

# Normwise tolerances for comparing a result with the extended-precision reference.
RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 2e-5, np.dtype(np.float16): 2e-3}


def ref_scores(Q, K, scale=None, mask=None, is_causal=False):
    Q = np.asarray(Q).astype(EXT)
    K = np.asarray(K).astype(EXT)
    d_k = Q.shape[-1]
    if scale is None:
        scale = 1 / np.sqrt(EXT(d_k)) if d_k else EXT(1)
    scores = np.matmul(Q, np.swapaxes(K, -1, -2)) * EXT(scale)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype == bool:
            scores = np.where(mask, scores, -np.inf)
        else:
            scores = scores + mask.astype(EXT)
    if is_causal:
        n_q, n_k = scores.shape[-2:]
        visible = np.arange(n_k)[None, :] <= np.arange(n_q)[:, None]
        scores = np.where(visible, scores, -np.inf)
    return scores


def ref_softmax(scores, axis=-1):
    s = np.asarray(scores).astype(EXT)
    if s.shape[axis] == 0:
        return s.copy()
    has_nan = np.isnan(s).any(axis=axis, keepdims=True)
    clean = np.where(np.isnan(s), -np.inf, s)
    row_max = clean.max(axis=axis, keepdims=True)
    row_max = np.where(np.isneginf(row_max), 0, row_max)
    e = np.exp(clean - row_max)
    total = e.sum(axis=axis, keepdims=True)
    weights = e / np.where(total == 0, 1, total)
    return np.where(has_nan, np.nan, weights)


def ref_output(weights, V):
    return np.matmul(np.asarray(weights).astype(EXT), np.asarray(V).astype(EXT))


def ref_attention(Q, K, V, scale=None, mask=None, is_causal=False):
    """(output, weights); a key whose weight is 0 contributes nothing, even a non-finite V row.

    The weights are broadcast to the batch shape of the output (V's batch dims included)."""
    weights = ref_softmax(ref_scores(Q, K, scale, mask, is_causal))
    V = np.asarray(V).astype(EXT)
    if np.isfinite(V).all():
        out = np.matmul(weights, V)
    else:
        with np.errstate(invalid="ignore"):
            terms = weights[..., :, :, None] * V[..., None, :, :]
        out = np.where(weights[..., :, :, None] == 0, 0, terms).sum(axis=-2)
    return out, np.broadcast_to(weights, out.shape[:-1] + weights.shape[-1:])


def ref_layer(X, W_q, W_k, W_v, **kw):
    X = np.asarray(X).astype(EXT)
    Q, K, V = (np.matmul(X, np.asarray(W).astype(EXT)) for W in (W_q, W_k, W_v))
    return ref_attention(Q, K, V, **kw)


def assert_close(actual, desired, dtype=None, rtol=None):
    """Same shape, same NaN and inf positions, finite values within a normwise tolerance."""
    actual = np.asarray(actual)
    desired = np.asarray(desired)
    assert actual.shape == desired.shape, f"shape {actual.shape} != {desired.shape}"
    dtype = np.dtype(dtype or actual.dtype)
    rtol = RTOL[dtype] if rtol is None else rtol
    a = actual.astype(EXT)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(desired), err_msg="NaN positions differ")
    np.testing.assert_array_equal(np.isposinf(a), np.isposinf(desired), err_msg="+inf positions")
    np.testing.assert_array_equal(np.isneginf(a), np.isneginf(desired), err_msg="-inf positions")
    finite = np.isfinite(desired)
    if not finite.any():
        return
    scale = max(float(np.max(np.abs(desired[finite]))), float(np.finfo(dtype).tiny))
    err = float(np.max(np.abs(a[finite] - desired[finite])))
    assert err <= rtol * scale, f"max abs error {err:.3e} > {rtol:.1e} * {scale:.3e}"
