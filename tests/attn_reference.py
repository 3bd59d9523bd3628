"""The tests' one oracle: NumPy in extended precision (np.longdouble), with rigorous error bounds.

Nothing here calls selfattn. It states the conventions the package promises (scaled scores, mask
polarity, causal alignment, fully masked rows, NaN rows, zero-weight keys) as directly as NumPy
allows, so a test failing against it points at the package. Two ways to use it (not a test file):

- `REFERENCES[name](*args, **kw)` and `mismatches` (the fuzzer: test_fuzz.py, tests/fuzz.py): per
  entry, the exact value, an error bound and the entries whose value depends on the order of the
  operations, as described below.
- `ref_scores`, `ref_softmax`, `ref_output`, `ref_attention`, `ref_layer` and `assert_close` (the
  value tests: test_values, test_layouts, test_dtypes, test_properties): the exact value from the
  operands as given, compared normwise, within ~1e-12 for float64 and ~2e-5 for float32.

Every reference works in np.longdouble (64-bit mantissa, exponent range 1e+-4932, so no product of
two float64 values overflows or underflows in it) and returns, next to the exact value, an error
BOUND for a kernel that computes in the compute dtype (float32 or float64) in any summation order,
and a mask of entries that are UNCERTAIN: ones whose value depends on the order of the operations
(an intermediate sum may overflow, a weight may underflow to 0 next to an infinite value). The
comparison skips uncertain entries and demands everything else: the exact NaN/inf pattern, and
finite values within the bound. The bounds are the textbook ones (gamma_n = n*u for a sum of n
products, Higham ch. 3), doubled for safety, plus an absolute floor for gradual underflow.

The dtype rules mirrored here are selfattn's: float32 stays float32, float64 stays float64, float16
is computed in float32 and returned as float16, integers and bools are computed as float64; mixed
floats promote as NumPy does.
"""
from __future__ import annotations

import math
import operator

import numpy as np

LD = np.longdouble


class Ref:
    """An exact value with an error bound and an uncertainty mask (all the same shape)."""

    def __init__(self, value, tol=None, uncertain=None):
        self.value = np.asarray(value, dtype=LD)
        self.tol = np.zeros(self.value.shape, LD) if tol is None else np.asarray(tol, LD)
        self.uncertain = (np.zeros(self.value.shape, bool) if uncertain is None
                          else np.asarray(uncertain, bool))


# ---- dtype rules ---------------------------------------------------------------------------------

def as_input(x):
    """np.asarray(x) with selfattn's accepted kinds, else None (the reference cannot read it)."""
    try:
        arr = np.asarray(x)
    except Exception:
        return None
    if arr.dtype.kind in "biu" or (arr.dtype.kind == "f" and arr.dtype.itemsize <= 8):
        return arr
    return None


def dtypes(*arrays):
    """(result dtype, compute dtype) by selfattn's rules."""
    floats = [np.dtype(np.float64) if a.dtype.kind in "biu" else a.dtype.newbyteorder("=")
              for a in arrays]
    result = np.result_type(*floats)
    compute = np.dtype(np.float32) if result == np.float16 else result
    return result, compute


def rounding(dtype):
    """(u, eta, big): unit roundoff, subnormal spacing and an overflow-safe magnitude."""
    fi = np.finfo(dtype)
    return LD(fi.eps) / 2, LD(fi.smallest_subnormal), LD(fi.max) / 16


def to_compute(arr, compute):
    """The operand as the kernel sees it (rounded to the compute dtype), in long double."""
    with np.errstate(over="ignore", invalid="ignore"):
        return arr.astype(compute).astype(LD)


def additive_to_compute(arr, compute):
    """A float mask as the kernel sees it: rounded to the compute dtype, where a finite value
    beyond its range becomes its largest finite value of that sign, not inf (the package's rule
    for additive masks, selfattn/_validate.py's _additive: finfo(float64).min in a float32 call
    only shifts the scores), in long double."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(compute)
    overflowed = np.isinf(out) & np.isfinite(arr)
    out[overflowed] = np.copysign(np.finfo(compute).max, arr[overflowed])
    return out.astype(LD)


def default_scale(scale, d_k):
    if scale is None:
        return 1.0 / math.sqrt(d_k) if d_k > 0 else 1.0
    if isinstance(scale, np.ndarray):
        scale = scale.item()
    return float(scale)


def flag(value):
    return bool(value)


def causal(value):
    """is_causal as the reference reads it: None, "top_left" (True) or "bottom_right"."""
    if isinstance(value, str):
        return value
    return "top_left" if value else None


def hidden_keys(n_q, n_k, is_causal=False, window=None):
    """The (n_q, n_k) keys hidden by is_causal and window, stated directly. Query i's own
    position is d = i, or d = i + n_k - n_q with is_causal="bottom_right" (the last query on the
    last key); causality hides the keys j > d, and window=(left, right) the keys j < d - left
    and j > d + right (a side of None hides nothing)."""
    align = causal(is_causal)
    j = np.arange(n_k)[None, :]
    d = np.arange(n_q)[:, None] + (n_k - n_q if align == "bottom_right" else 0)
    hide = (j > d) if align else np.zeros((n_q, n_k), bool)
    left, right = (None, None) if window is None else window
    if left is not None:
        hide = hide | (j < d - left)
    if right is not None:
        hide = hide | (j > d + right)
    return hide


# ---- the building blocks -------------------------------------------------------------------------

def dot(A, B, compute, ta=None, tb=None, ua=None, ub=None):
    """Ref of A @ B^T over the last axis: A (..., m, k), B (..., n, k), both long double.

    ta, tb: error bounds already carried by A and B; ua, ub: their uncertain entries."""
    u, eta, big = rounding(compute)
    k = A.shape[-1]
    ta = np.zeros(A.shape, LD) if ta is None else ta
    tb = np.zeros(B.shape, LD) if tb is None else tb
    a, b = A[..., :, None, :], B[..., None, :, :]
    with np.errstate(all="ignore"):
        terms = a * b
        finite = np.isfinite(terms)
        abs_fin = np.where(finite, np.abs(terms), 0)
        aa = np.where(np.isfinite(a), np.abs(a), 0)
        ba = np.where(np.isfinite(b), np.abs(b), 0)
        bound_terms = np.where(finite, (aa + ta[..., :, None, :]) * (ba + tb[..., None, :, :]), 0)
        carried = np.where(finite, ta[..., :, None, :] * ba + aa * tb[..., None, :, :]
                           + ta[..., :, None, :] * tb[..., None, :, :], 0).sum(-1)
        value = terms.sum(-1)
        A_fin = bound_terms.sum(-1)
        has_nan = np.isnan(terms).any(-1)
        pinf = (terms == np.inf).any(-1)
        ninf = (terms == -np.inf).any(-1)
    tol = 2 * (k + 2) * u * A_fin + (k + 2) * eta + carried
    # The order of a float sum decides overflow once partial sums can reach the dtype's max.
    overflow_risk = A_fin >= big / (k + 1)
    nan_certain = has_nan | (pinf & ninf)
    uncertain = ~nan_certain & overflow_risk
    # An infinite factor with a carried error, or a carried uncertainty, makes a term uncertain.
    if ua is not None or ub is not None:
        ua = np.zeros(A.shape, bool) if ua is None else ua
        ub = np.zeros(B.shape, bool) if ub is None else ub
        uncertain = uncertain | (ua[..., :, None, :] | ub[..., None, :, :]).any(-1)
    with np.errstate(all="ignore"):
        inf_with_tol = (~np.isfinite(terms)) & ((ta[..., :, None, :] > 0) | (tb[..., None, :, :] > 0))
    uncertain = uncertain | inf_with_tol.any(-1)
    tol = np.where(np.isfinite(value), tol, 0)
    return Ref(value, tol, uncertain)


def round_to(ref, dtype):
    """Adds the error of rounding ref's value to `dtype`; entries that may overflow become uncertain."""
    u, eta, big = rounding(dtype)
    with np.errstate(all="ignore"):
        tol = ref.tol + u * np.abs(np.where(np.isfinite(ref.value), ref.value, 0)) + eta
        unc = ref.uncertain | (np.isfinite(ref.value) & (np.abs(ref.value) + ref.tol >= LD(np.finfo(dtype).max) * 0.99))
    return Ref(ref.value, np.where(np.isfinite(ref.value), tol, 0), unc)


def scale_scores(ref, scale_c, compute):
    u, eta, big = rounding(compute)
    with np.errstate(all="ignore"):
        value = ref.value * scale_c
        tol = ref.tol * abs(scale_c) + u * np.abs(np.where(np.isfinite(value), value, 0)) + eta
        unc = ref.uncertain | (np.isfinite(value) & (np.abs(value) + tol >= big))
    if not np.isfinite(scale_c):
        unc = np.ones(value.shape, bool)
    return Ref(value, np.where(np.isfinite(value), tol, 0), unc)


def prescale_risk(Qc, Kc, scale_c, compute):
    """Entries a kernel may overflow by folding the scale into Q or K before the dot product."""
    _, _, big = rounding(compute)
    with np.errstate(all="ignore"):
        q = np.where(np.isfinite(Qc), np.abs(Qc), 0).max(-1, initial=0) * abs(scale_c)
        k = np.where(np.isfinite(Kc), np.abs(Kc), 0).max(-1, initial=0) * abs(scale_c)
    return (q >= big)[..., :, None] | (k >= big)[..., None, :]


def apply_mask(S, mask, is_causal, compute, window=None):
    """Bool masks, causality and the window set -inf (certainly); float masks are added in the
    compute dtype."""
    u, eta, big = rounding(compute)
    shape = S.value.shape if mask is None else np.broadcast_shapes(S.value.shape, mask.shape)
    value, tol, unc = (np.array(np.broadcast_to(x, shape)) for x in (S.value, S.tol, S.uncertain))
    n_q, n_k = shape[-2:]
    if mask is not None and mask.dtype == bool:
        hide = np.broadcast_to(~mask, shape)
        value[hide], tol[hide], unc[hide] = -np.inf, 0, False
    elif mask is not None:
        m = np.broadcast_to(additive_to_compute(mask, compute), shape)
        with np.errstate(all="ignore"):
            new = value + m
            t = tol + u * np.abs(np.where(np.isfinite(new), new, 0)) + eta
            risky = np.isfinite(new) & (np.abs(value) + np.abs(m) + t >= big)
            # NaN in the mask gives NaN, and -inf gives -inf next to a sure finite score, whatever
            # the score's rounding
            settled = np.isnan(m) | ((m == -np.inf) & np.isfinite(value) & ~unc)
            unc = (unc | risky) & ~settled
        value, tol = new, np.where(np.isfinite(new), t, 0)
    if causal(is_causal) or window is not None:
        hide = np.broadcast_to(hidden_keys(n_q, n_k, is_causal, window), shape)
        value[hide], tol[hide], unc[hide] = -np.inf, 0, False
    return Ref(value, tol, unc)


def softmax(S, compute):
    """Ref of the row softmax of S (last axis), with the kernels' policy for special rows:
    a NaN in a row makes it NaN; all -inf gives zeros; +inf (max - max = NaN) gives NaN."""
    u, eta, big = rounding(compute)
    x, tol, unc = S.value, S.tol, S.uncertain
    n = x.shape[-1]
    with np.errstate(all="ignore"):
        row_nan = np.isnan(x).any(-1, keepdims=True)
        xmax = np.where(np.isnan(x), -np.inf, x).max(-1, keepdims=True) if n else np.full(x.shape[:-1] + (1,), -np.inf, LD)
        all_masked = xmax == -np.inf
        row_pinf = xmax == np.inf
        e = np.exp(x - np.where(np.isfinite(xmax), xmax, 0))
        s = e.sum(-1, keepdims=True)
        w = e / s
        w = np.where(row_nan | row_pinf, np.nan, np.where(all_masked, 0, w))
        w = np.where(x == -np.inf, np.where(row_nan | row_pinf, np.nan, 0), w)
        delta = np.where(np.isfinite(x), tol, 0).max(-1, keepdims=True) if n else np.zeros(x.shape[:-1] + (1,), LD)
        # exp(x - max) is computed through its argument (as exp2 of (x - max) * log2 e, or after
        # a subtraction), whose rounding is worth |x - max| * u in relative terms of the result;
        # the row sum carries the weights' average of that
        spread = np.where(np.isfinite(x), np.abs(x - np.where(np.isfinite(xmax), xmax, 0)), 0)
        arg = 4 * u * spread
        arg_sum = np.where(np.isfinite(w), w, 0) * arg
        rel = (np.expm1(np.minimum(2 * delta, LD(11000))) + 4 * (n + 8) * u + arg
               + arg_sum.sum(-1, keepdims=True))
        wtol = np.where(np.isfinite(w), w * rel + (n + 4) * eta, 0)
        # the fast kernels flush exponentials below the smallest normal numbers (times 4) to 0,
        # so that no subnormal weight reaches a product: such a weight may come out as 0
        flushable = np.isfinite(w) & (e < 4 * LD(np.finfo(compute).smallest_normal))
        wtol = np.where(flushable, np.maximum(wtol, w), wtol)
        # a row is uncertain when one of its scores is (an uncertain -inf included: masks and
        # causality set theirs as certain), unless a certain NaN decides the row anyway
        row_unc = unc.any(-1, keepdims=True) & ~(np.isnan(x) & ~unc).any(-1, keepdims=True)
    wtol = np.where(x == -np.inf, 0, wtol)
    return Ref(w, wtol, np.broadcast_to(row_unc, w.shape))


def weighted_sum(W, V, compute, tv=None, uv=None):
    """Ref of out[i] = sum over keys j with a nonzero weight of W[i, j] * V[j] (attention's rule:
    a key whose weight is exactly 0 contributes nothing, even an inf/NaN value row)."""
    u, eta, big = rounding(compute)
    w, wt, wu = W.value, W.tol, W.uncertain
    n_k = w.shape[-1]
    tv = np.zeros(V.shape, LD) if tv is None else tv
    uv = np.zeros(V.shape, bool) if uv is None else uv
    with np.errstate(all="ignore"):
        wz = (w == 0) & (wt == 0) & ~wu                               # certainly zero
        w_lo = np.where(np.isfinite(w), w - wt, 0)
        nonzero_sure = np.isnan(w) | (w_lo > 2 * LD(np.finfo(compute).smallest_normal))
        maybe_zero = ~wz & ~nonzero_sure
        wb = w[..., :, :, None]
        vb = V[..., None, :, :]
        terms = np.where(wz[..., :, :, None], 0, wb * vb)
        value = terms.sum(-2)
        fin = np.isfinite(terms)
        # bounds use |v| only where it is finite (a skipped key's NaN must not poison them)
        vabs = np.where(np.isfinite(vb), np.abs(vb), 0)
        wabs = np.where(np.isfinite(wb), np.abs(wb), 0)
        absb = np.where(fin, (wabs + wt[..., :, :, None]) * (vabs + tv[..., None, :, :]), 0)
        A = absb.sum(-2)
        carried = np.where(fin, wt[..., :, :, None] * vabs + wabs * tv[..., None, :, :]
                           + wt[..., :, :, None] * tv[..., None, :, :], 0).sum(-2)
        tol = 2 * (n_k + 2) * u * A + carried + (n_k + 2) * eta
        has_nan = np.isnan(terms).any(-2)
        pinf = (terms == np.inf).any(-2)
        ninf = (terms == -np.inf).any(-2)
        nan_certain = has_nan | (pinf & ninf)
        # a value row that is not finite, next to a weight that might be 0, decides nothing
        risky = (maybe_zero[..., :, :, None] & ~np.isfinite(vb)).any(-2)
        unc = (~nan_certain & (A >= big / (n_k + 1))) | risky
        unc = unc | (wu[..., :, :, None] & ~wz[..., :, :, None]).any(-2)
        unc = unc | (uv[..., None, :, :] & ~wz[..., :, :, None]).any(-2)
        # an infinite value times a weight with a bound: the sign is sure, but NaN from 0*inf is not
        unc = unc | ((~np.isfinite(vb)) & (wt[..., :, :, None] > 0) & ~nonzero_sure[..., :, :, None]).any(-2)
    tol = np.where(np.isfinite(value), tol, 0)
    return Ref(value, tol, unc)


def matmul(A, B, compute):
    """Ref of the plain (IEEE) product A @ B, 0 * inf included."""
    return dot(A, np.swapaxes(B, -1, -2), compute)


# ---- references of the public functions ------------------------------------------------------------
# Each returns (result dtype, [Ref, ...]) for the outputs, or raises LookupError when the inputs
# are not something the reference can interpret (then selfattn must not succeed either).

def _inputs(*xs):
    arrs = [as_input(x) for x in xs]
    if any(a is None for a in arrs) or any(a.ndim < 2 for a in arrs):
        raise LookupError("reference cannot read these inputs")
    return arrs


def _mask(mask):
    if mask is None:
        return None
    m = as_input(mask)
    if m is None or m.dtype.kind in "iu":
        raise LookupError("mask")
    return m


def _scores_ref(Q, K, scale, mask, is_causal, compute, window=None):
    d_k = Q.shape[-1]
    scale_c = LD(np.asarray(default_scale(scale, d_k), dtype=compute))
    Qc, Kc = to_compute(Q, compute), to_compute(K, compute)
    S = scale_scores(dot(Qc, Kc, compute), scale_c, compute)
    S.uncertain = S.uncertain | prescale_risk(Qc, Kc, scale_c, compute)
    return apply_mask(S, mask, is_causal, compute, window)


def ref_compute_self_attention_scores(Q, K, *, scale=None, mask=None, is_causal=False,
                                      window=None):
    Q, K = _inputs(Q, K)
    mask = _mask(mask)
    result, compute = dtypes(Q, K)
    return result, [round_to(_scores_ref(Q, K, scale, mask, causal(is_causal), compute, window), result)]


def ref_softmax_attention_weights(attn_scores, *, axis=-1):
    x = as_input(attn_scores)
    if x is None or x.ndim < 1:
        raise LookupError("scores")
    axis = operator.index(axis)
    result, compute = dtypes(x)
    moved = np.moveaxis(x, axis, -1)
    W = softmax(Ref(to_compute(moved, compute)), compute)
    W = Ref(*(np.moveaxis(np.asarray(t), -1, axis) for t in (W.value, W.tol, W.uncertain)))
    return result, [round_to(W, result)]


def ref_compute_attention_output(attn_weights, V):
    W, V = _inputs(attn_weights, V)
    result, compute = dtypes(W, V)
    # issue 9's rule C: a weight of exactly 0 contributes nothing, here as in attention
    out = weighted_sum(Ref(to_compute(W, compute)), to_compute(V, compute), compute)
    return result, [round_to(out, result)]


def _attention(Qc, Kc, Vc, scale_c, mask, is_causal, compute, tq=None, tk=None, tv=None,
               uq=None, uk=None, uv=None, window=None):
    S = scale_scores(dot(Qc, Kc, compute, tq, tk, uq, uk), scale_c, compute)
    S.uncertain = S.uncertain | prescale_risk(Qc, Kc, scale_c, compute)
    S = apply_mask(S, mask, is_causal, compute, window)
    W = softmax(S, compute)
    O = weighted_sum(W, Vc, compute, tv, uv)
    return O, W


def ref_scaled_dot_product_attention(Q, K, V, *, scale=None, mask=None, is_causal=False,
                                     return_weights=False, window=None):
    Q, K, V = _inputs(Q, K, V)
    mask = _mask(mask)
    result, compute = dtypes(Q, K, V)
    scale_c = LD(np.asarray(default_scale(scale, Q.shape[-1]), dtype=compute))
    O, W = _attention(to_compute(Q, compute), to_compute(K, compute), to_compute(V, compute),
                      scale_c, mask, causal(is_causal), compute, window=window)
    outs = [round_to(O, result)]
    if flag(return_weights):
        outs.append(round_to(_weights_like(W, O), result))
    return result, outs


def _weights_like(W, O):
    """The weights with the batch shape of the output (every operand broadcasts to one batch)."""
    shape = np.broadcast_shapes(W.value.shape[:-2], O.value.shape[:-2]) + W.value.shape[-2:]
    return Ref(*(np.broadcast_to(x, shape) for x in (W.value, W.tol, W.uncertain)))


def _project(X, W, compute):
    P = matmul(X, W, compute)
    u, eta, _ = rounding(compute)
    return Ref(P.value, np.where(np.isfinite(P.value), P.tol + u * np.abs(np.where(np.isfinite(P.value), P.value, 0)) + eta, 0),
               P.uncertain)


def ref_self_attention_layer(X, W_q, W_k, W_v, *, scale=None, mask=None, is_causal=False,
                             return_weights=False, window=None):
    X, W_q, W_k, W_v = _inputs(X, W_q, W_k, W_v)
    mask = _mask(mask)
    result, compute = dtypes(X, W_q, W_k, W_v)
    Xc = to_compute(X, compute)
    Q, K, V = (_project(Xc, to_compute(W, compute), compute) for W in (W_q, W_k, W_v))
    scale_c = LD(np.asarray(default_scale(scale, W_q.shape[-1]), dtype=compute))
    O, W = _attention(Q.value, K.value, V.value, scale_c, mask, causal(is_causal), compute,
                      Q.tol, K.tol, V.tol, Q.uncertain, K.uncertain, V.uncertain, window)
    outs = [round_to(O, result)]
    if flag(return_weights):
        outs.append(round_to(_weights_like(W, O), result))
    return result, outs


def ref_multi_head_attention(X, W_q, W_k, W_v, W_o, *, num_heads, scale=None, mask=None,
                             is_causal=False, return_weights=False, window=None):
    """Issue 4's definition: head h uses columns [h*d_head, (h+1)*d_head) of W_q, W_k, W_v; the
    heads' outputs are concatenated in head order and multiplied by W_o. The heads are a batch
    axis just before (n, n), so a mask broadcasts against (..., num_heads, n, n)."""
    X, W_q, W_k, W_v, W_o = _inputs(X, W_q, W_k, W_v, W_o)
    mask = _mask(mask)
    h = operator.index(num_heads)
    if h < 1 or W_q.shape[-1] % h or W_v.shape[-1] % h:
        raise LookupError("num_heads")
    result, compute = dtypes(X, W_q, W_k, W_v, W_o)
    Xc = to_compute(X, compute)
    P = [_project(Xc, to_compute(W, compute), compute) for W in (W_q, W_k, W_v)]

    def heads(a):  # (..., n, h*d) -> (..., h, n, d)
        return np.moveaxis(a.reshape(a.shape[:-1] + (h, a.shape[-1] // h)), -2, -3)

    (Q, tq, uq), (K, tk, uk), (V, tv, uv) = ((heads(p.value), heads(p.tol), heads(p.uncertain))
                                            for p in P)
    scale_c = LD(np.asarray(default_scale(scale, W_q.shape[-1] // h), dtype=compute))
    O, W = _attention(Q, K, V, scale_c, mask, causal(is_causal), compute, tq, tk, tv, uq, uk, uv,
                      window)
    u, eta, _ = rounding(compute)

    def concat(a):  # (..., h, n, d) -> (..., n, h*d)
        a = np.moveaxis(np.asarray(a), -3, -2)
        return a.reshape(a.shape[:-2] + (a.shape[-2] * a.shape[-1],))

    cv, ct, cu = concat(O.value), concat(O.tol), concat(np.broadcast_to(O.uncertain, O.value.shape))
    with np.errstate(all="ignore"):
        ct = np.where(np.isfinite(cv), ct + u * np.abs(np.where(np.isfinite(cv), cv, 0)) + eta, 0)
    Wo = to_compute(W_o, compute)
    Y = dot(cv, np.swapaxes(Wo, -1, -2), compute, ct, None, cu, None)
    outs = [round_to(Y, result)]
    if flag(return_weights):
        # the weights have the batch of every input, V's included (as the output has)
        shape = O.value.shape[:-2] + W.value.shape[-2:]
        outs.append(round_to(Ref(np.broadcast_to(W.value, shape), np.broadcast_to(W.tol, shape),
                                 np.broadcast_to(W.uncertain, shape)), result))
    return result, outs


REFERENCES = {
    "compute_self_attention_scores": ref_compute_self_attention_scores,
    "softmax_attention_weights": ref_softmax_attention_weights,
    "compute_attention_output": ref_compute_attention_output,
    "scaled_dot_product_attention": ref_scaled_dot_product_attention,
    "self_attention_layer": ref_self_attention_layer,
    "multi_head_attention": ref_multi_head_attention,
}


# ---- the comparison --------------------------------------------------------------------------------

def mismatches(got, ref, result_dtype):
    """A list of human-readable problems (empty when `got` honours `ref`)."""
    problems = []
    if not isinstance(got, np.ndarray):
        return [f"result is {type(got).__name__}, not an ndarray"]
    if got.dtype != result_dtype:
        problems.append(f"dtype {got.dtype}, expected {result_dtype}")
    if got.shape != ref.value.shape:
        return problems + [f"shape {got.shape}, expected {ref.value.shape}"]
    g = got.astype(LD)
    v, tol = ref.value, ref.tol
    sure = ~np.broadcast_to(ref.uncertain, v.shape)
    with np.errstate(all="ignore"):
        nan_bad = sure & (np.isnan(v) != np.isnan(g))
        inf_bad = sure & np.isinf(v) & (g != v)
        fin = sure & np.isfinite(v)
        err = np.abs(g - v)
        close_bad = fin & ~(err <= tol)
    for what, bad in (("NaN pattern", nan_bad), ("infinity", inf_bad), ("value", close_bad)):
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            problems.append(f"{what} differs at {idx}: got {g[idx]!r}, expected {v[idx]!r} "
                            f"+- {tol[idx]!r} ({int(bad.sum())} entries)")
    return problems


# ---- the exact values alone, and a normwise comparison ---------------------------------------------
# The same building blocks with long double as the compute dtype: no rounding to model, so each
# returns the exact value of its operands as given (long double ones included).

# Normwise tolerances for comparing a result with the extended-precision reference.
RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 2e-5, np.dtype(np.float16): 2e-3}


def lengths_visible(batch, n_q, n_k, query_lengths=None, key_lengths=None, bottom_right=False,
                    is_causal=False, window=None):
    """Where per-sequence lengths let query i see key j, shape batch + (n_q, n_k): i < R and
    j < K, R and K one per batch item (an int, or an array whose shape is a prefix of batch,
    broadcast over the axes after it; None: n_q, n_k); with is_causal and window (hidden_keys'
    rule) measured from each sequence's own diagonal: d = i, or d = i + K - R bottom-right
    (flash-attn's varlen). bottom_right=True is is_causal="bottom_right"."""
    def per_item(lengths, n):
        arr = np.asarray(n if lengths is None else lengths)
        return arr.reshape(arr.shape + (1,) * (len(batch) - arr.ndim) + (1, 1))
    R, K = per_item(query_lengths, n_q), per_item(key_lengths, n_k)
    i, j = np.arange(n_q)[:, None], np.arange(n_k)[None, :]
    align = causal("bottom_right" if bottom_right else is_causal)
    d = i + (K - R if align == "bottom_right" else 0)
    visible = (i < R) & (j < K)
    if align:
        visible = visible & (j <= d)
    left, right = (None, None) if window is None else window
    if left is not None:
        visible = visible & (j >= d - left)
    if right is not None:
        visible = visible & (j <= d + right)
    return np.broadcast_to(visible, tuple(batch) + (n_q, n_k))


def _raw_scores(Q, K, scale):
    Q = np.asarray(Q).astype(LD)
    K = np.asarray(K).astype(LD)
    d_k = Q.shape[-1]
    scale = 1 / np.sqrt(LD(d_k)) if scale is None and d_k else LD(1 if scale is None else scale)
    return np.matmul(Q, np.swapaxes(K, -1, -2)) * scale


def ref_scores(Q, K, scale=None, mask=None, is_causal=False, window=None, query_lengths=None,
               key_lengths=None, softcap=None):
    """The scores as attention uses them: scaled, soft-capped (softcap * tanh(s / softcap), before
    the mask, so masked keys stay -inf), then masked: mask, is_causal, window and the lengths
    (lengths_visible)."""
    scores = _raw_scores(Q, K, scale)
    if softcap is not None:
        scores = LD(softcap) * np.tanh(scores / LD(softcap))
    mask = None if mask is None else np.asarray(mask)
    if query_lengths is None and key_lengths is None:
        return apply_mask(Ref(scores), mask, is_causal, LD, window).value
    scores = apply_mask(Ref(scores), mask, False, LD).value
    visible = lengths_visible(scores.shape[:-2], *scores.shape[-2:], query_lengths, key_lengths,
                              is_causal=is_causal, window=window)
    return np.where(visible, scores, LD(-np.inf))



def ref_lse(scores):
    """Each row's log-sum-exp of (long double) scores: -inf for a row of -inf, NaN for a row
    holding NaN or +inf (the kernels' policy: that row's weights are NaN)."""
    S = np.asarray(scores).astype(LD)
    with np.errstate(all="ignore"):
        top = np.where(np.isnan(S), LD(-np.inf), S).max(-1, keepdims=True, initial=LD(-np.inf))
        finite = np.isfinite(top)
        total = np.exp(S - np.where(finite, top, 0)).sum(-1)
        lse = np.where(finite[..., 0], top[..., 0] + np.log(total), top[..., 0])
    return np.where(np.isnan(S).any(-1) | (lse == np.inf), LD(np.nan), lse)

def ref_softmax(scores, axis=-1):
    s = np.moveaxis(np.asarray(scores).astype(LD), axis, -1)
    return np.moveaxis(softmax(Ref(s), LD).value, -1, axis)


def ref_output(weights, V):
    return np.matmul(np.asarray(weights).astype(LD), np.asarray(V).astype(LD))


PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)


def philox4x32_10(counter, key):
    """Philox4x32-10 (Salmon et al., SC 2011) in NumPy: counter a tuple of 4 arrays of 32-bit
    words (broadcasting), key 2 ints; returns the 4 output words as uint64 arrays."""
    c = [np.asarray(x, np.uint64) for x in counter]
    k0, k1 = int(key[0]), int(key[1])
    low = np.uint64(0xFFFFFFFF)
    for _ in range(10):
        p0 = np.uint64(PHILOX_M[0]) * c[0]
        p1 = np.uint64(PHILOX_M[1]) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ np.uint64(k0), p1 & low,
             (p0 >> np.uint64(32)) ^ c[3] ^ np.uint64(k1), p0 & low]
        k0, k1 = (k0 + PHILOX_W[0]) & 0xFFFFFFFF, (k1 + PHILOX_W[1]) & 0xFFFFFFFF
    return c


def dropout_keep(batch, n_q, n_k, dropout_p, seed):
    """The package's dropout pattern (csrc/attn.h's sa_dropout), bool (batch, n_q, n_k), True =
    kept: key j of query i of batch item b (C order over `batch`) is dropped when word j % 4 of
    Philox4x32-10(counter (j // 4, i, b mod 2^32, b // 2^32), key (seed mod 2^32, seed // 2^32))
    is below dropout_p * 2^32."""
    batch = tuple(batch)
    count = int(np.prod(batch, dtype=np.int64))
    items = np.arange(count, dtype=np.uint64).reshape(batch + (1, 1, 1))
    i = np.arange(n_q, dtype=np.uint64)[:, None, None]
    quad = np.arange((n_k + 3) // 4, dtype=np.uint64)[None, :, None]
    words = philox4x32_10((quad, i, items & np.uint64(0xFFFFFFFF), items >> np.uint64(32)),
                          (seed & 0xFFFFFFFF, seed >> 32))
    words = np.stack(np.broadcast_arrays(*words), axis=-1)   # (batch, n_q, quads, 4)
    words = words.reshape(batch + (n_q, -1))[..., :n_k]
    return words >= np.uint64(int(dropout_p * 2 ** 32))


def dropout_factors(batch, n_q, n_k, dropout_p, seed):
    """Z: 0 where a weight is dropped, 1 / (1 - dropout_p) where kept (exact, long double)."""
    if not dropout_p:
        return LD(1)
    keep = dropout_keep(batch, n_q, n_k, dropout_p, seed)
    return np.where(keep, LD(1) / (1 - LD(dropout_p)) if dropout_p < 1 else LD(0), LD(0))



def repeat_kv_heads(A, heads):
    """Grouped-query attention's definition: A (..., H_kv, n, d) with each head repeated for the
    heads / H_kv query heads that share it (query head h uses head h // (heads / H_kv)); a 2-d A
    has one head."""
    A = np.asarray(A)
    if A.ndim < 3:
        A = A[None]
    assert heads % A.shape[-3] == 0
    return np.repeat(A, heads // A.shape[-3], axis=-3)


def ref_attention(Q, K, V, scale=None, mask=None, is_causal=False, window=None, enable_gqa=False,
                  query_lengths=None, key_lengths=None, softcap=None, dropout_p=0.0, seed=0):
    """(output, weights); a key whose weight is 0 contributes nothing, even a non-finite V row.
    With dropout_p, the weights after the dropout (the output is weights @ V).

    The weights are broadcast to the batch shape of the output (V's batch dims included). With
    enable_gqa, K and V have fewer heads (axis -3) than Q: repeat_kv_heads."""
    if enable_gqa:
        K, V = (repeat_kv_heads(A, np.shape(Q)[-3]) for A in (K, V))
    weights = ref_softmax(ref_scores(Q, K, scale, mask, is_causal, window, query_lengths,
                                     key_lengths, softcap))
    if dropout_p:
        batch = np.broadcast_shapes(weights.shape[:-2], np.shape(V)[:-2])
        weights = weights * dropout_factors(batch, *weights.shape[-2:], dropout_p, seed)
    V = np.asarray(V).astype(LD)
    if np.isfinite(V).all():
        out = np.matmul(weights, V)
    else:
        out = weighted_sum(Ref(weights), V, LD).value
    return out, np.broadcast_to(weights, out.shape[:-1] + weights.shape[-1:])


def ref_layer(X, W_q, W_k, W_v, **kw):
    X = np.asarray(X).astype(LD)
    Q, K, V = (np.matmul(X, np.asarray(W).astype(LD)) for W in (W_q, W_k, W_v))
    return ref_attention(Q, K, V, **kw)


def ref_attention_grads(dO, Q, K, V, scale=None, mask=None, is_causal=False, window=None,
                        query_lengths=None, key_lengths=None, softcap=None, dropout_p=0.0, seed=0):
    """(dQ, dK, dV) of ref_attention given dO, with the batch shape every operand broadcasts to
    (sum over broadcast axes to compare with an input's gradient). With P the weights,
    dP = dO V^T, dS = P (dP - rowsum(P dP)) times the soft-cap's slope 1 - tanh^2(R / softcap)
    (R the raw scaled scores), dQ = scale dS K, dK = scale dS^T Q, dV = P^T dO; with dropout
    factors Z (dropout_factors), dP = Z (dO V^T) and dV = (P Z)^T dO."""
    d_k = np.shape(Q)[-1]
    scale = 1 / np.sqrt(LD(d_k)) if scale is None and d_k else LD(1 if scale is None else scale)
    _, P = ref_attention(Q, K, V, scale, mask, is_causal, window, query_lengths=query_lengths,
                         key_lengths=key_lengths, softcap=softcap)
    dO, Q, K, V = (np.asarray(a).astype(LD) for a in (dO, Q, K, V))
    T = lambda a: np.swapaxes(a, -1, -2)  # noqa: E731
    P = np.where(np.isnan(P), 0, P)
    Z = dropout_factors(P.shape[:-2], *P.shape[-2:], dropout_p, seed)
    dP = np.matmul(dO, T(V)) * Z
    dS = P * (dP - (P * dP).sum(axis=-1, keepdims=True))
    if softcap is not None:
        dS = dS * (1 - np.tanh(_raw_scores(Q, K, scale) / LD(softcap)) ** 2)
    return np.matmul(dS, K) * scale, np.matmul(T(dS), Q) * scale, np.matmul(T(P * Z), dO)


def assert_close(actual, desired, dtype=None, rtol=None):
    """Same shape, same NaN and inf positions, finite values within a normwise tolerance: the
    largest error at most rtol (RTOL[dtype] unless given) times the largest finite |desired|."""
    actual = np.asarray(actual)
    desired = np.asarray(desired)
    assert actual.shape == desired.shape, f"shape {actual.shape} != {desired.shape}"
    dtype = np.dtype(dtype or actual.dtype)
    rtol = RTOL[dtype] if rtol is None else rtol
    a = actual.astype(LD)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(desired), err_msg="NaN positions differ")
    np.testing.assert_array_equal(np.isposinf(a), np.isposinf(desired), err_msg="+inf positions")
    np.testing.assert_array_equal(np.isneginf(a), np.isneginf(desired), err_msg="-inf positions")
    finite = np.isfinite(desired)
    if not finite.any():
        return
    scale = max(float(np.max(np.abs(desired[finite]))), float(np.finfo(dtype).tiny))
    err = float(np.max(np.abs(a[finite] - desired[finite])))
    assert err <= rtol * scale, f"max abs error {err:.3e} > {rtol:.1e} * {scale:.3e}"


def numeric_grad(f, x, eps=1e-6):
    """d f() / d x by central differences, x changed in place and restored entry by entry."""
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        hi = f()
        x[i] = old - eps
        lo = f()
        x[i] = old
        g[i] = (hi - lo) / (2 * eps)
    return g
