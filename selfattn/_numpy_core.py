"""selfattn's pure-NumPy backend: the entry points of selfattn._core, in NumPy.

selfattn runs on it when the C extension was not built (no C compiler when `pip install .` ran)
or when SELFATTN_BACKEND=numpy asks for it (selfattn/_backend.py decides). The Python layer above
is the same for both backends, so validation, dtype rules and messages are shared; this module
only computes, with the conventions of the C kernels (csrc/attn.h):

* scores = scale * Q @ K^T; one that is inf or NaN although its rows of Q and K are finite is
  computed again without overflow on the way, and is NaN where it overflows itself (attn.h's
  sa_overflowed_score); with a soft-cap c (attention only) it
  becomes c * tanh(score / c) (attn.h's sa_score_mods); then a float mask is added, a boolean one
  sets -inf where it is False, keys outside the band (query i sees i + lo <= j <= i + hi) are -inf;
* softmax subtracts each row's maximum; a row of -inf (every key masked) gives weights 0, a row
  holding NaN gives NaN;
* a weight of exactly 0 takes nothing from the values it weighs, even inf or NaN (the output
  product, attention and its gradients), while matmul and the projections are IEEE products.

Memory: every kernel works on blocks of output rows sized so that a block's scores, weights or
products hold at most PANEL_BYTES (the C tiers' panel budget, SA_BACKWARD_PANEL_BYTES), so the
attention without weights and the backward need O(n * d + block * n_k) memory, never the
(n_q, n_k) weights. Between blocks Python checks for signals, so Ctrl-C stops a long call.

The arithmetic is NumPy's (BLAS for the products), in the compute dtype: float64 results agree
with the C tiers to about 1e-15 relative, float32 to about 1e-6; there is one "instruction set",
"numpy", and the thread count is a setting only (NumPy's BLAS picks its own threads, and every
result is the same whatever the setting).
"""
from __future__ import annotations

import functools
import math
import os

import numpy as np

NAME = "numpy"                 # the backend's one tier
PANEL_BYTES = 2 << 20          # the most bytes a block of scores or weights may hold

_settings = {"threads": None}  # set at import from available_cpus()


# ---- settings ------------------------------------------------------------------------------------

def available_cpus():
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def set_num_threads(n):
    if not 1 <= n <= 1024:
        raise ValueError(f"set_num_threads: n must be between 1 and 1024, got {n!r}")
    _settings["threads"] = int(n)


def get_num_threads():
    return _settings["threads"]


def _tier(name, func):
    if not isinstance(name, str):
        raise TypeError(f"{func}: name must be a string, got {name!r}")
    if name != NAME:
        raise ValueError(f"{func}: unknown instruction set {name!r} for the NumPy backend; "
                         f"expected {NAME!r} (the C extension's tiers need it built)")
    return 0


def set_isa(name):
    _tier(name, "set_isa")


def get_isa():
    return NAME


def isa_code(name):
    return _tier(name, "isa_code")


def supported_isas():
    return [NAME]


def best_isa():
    return NAME


# ---- the kernel contract: what the Python layer hands over ---------------------------------------

def _out(obj):
    if not isinstance(obj, np.ndarray):
        raise TypeError("_core: out must be an ndarray")
    if obj.dtype not in (np.float32, np.float64):
        raise TypeError("_core: out must be float32 or float64")
    return _operand(obj, obj.dtype, obj.shape, "out", writeable=True)


def _operand(obj, dtype, shape, name, writeable=False):
    """obj, checked as csrc/module.c checks an operand: an aligned native array of `dtype` and
    `shape` with contiguous rows (the contract of csrc/attn.h, kept so both backends accept and
    refuse the same calls)."""
    if not isinstance(obj, np.ndarray):
        raise TypeError(f"_core: {name} must be an ndarray")
    if obj.dtype != dtype or not obj.dtype.isnative or not obj.flags.aligned:
        raise TypeError(f"_core: {name} must be an aligned native {np.dtype(dtype).name} array")
    if writeable and not obj.flags.writeable:
        raise ValueError(f"_core: {name} must be writeable")
    if obj.ndim < 2:
        raise ValueError(f"_core: {name} must have at least 2 dimensions")
    if obj.shape != tuple(shape):
        raise ValueError(f"_core: {name} has the wrong shape")
    if obj.shape[-1] > 1 and obj.size and obj.strides[-1] != obj.itemsize:
        raise ValueError(f"_core: the rows of {name} must be contiguous")
    return obj


def _mask(obj, dtype, shape):
    if obj is None:
        return None
    kind = np.bool_ if isinstance(obj, np.ndarray) and obj.dtype == np.bool_ else dtype
    if not isinstance(obj, np.ndarray) or obj.dtype != kind or not obj.flags.aligned:
        raise TypeError(f"_core: mask must be an aligned native {np.dtype(kind).name} array")
    if obj.shape != tuple(shape):
        raise ValueError("_core: mask has the wrong shape")
    return obj


def _isa(isa):
    if isa not in (-1, 0):
        raise ValueError(f"instruction set {isa} is not supported by the NumPy backend")


def _matrix(obj, name):
    if not isinstance(obj, np.ndarray) or obj.ndim < 2:
        raise ValueError(f"_core: {name} must be a matrix")
    return obj


# ---- the arithmetic, one block of rows at a time -----------------------------------------------

def _row_blocks(n_rows, row_elements, itemsize):
    """Slices of [0, n_rows) whose rows hold at most PANEL_BYTES together (one row at least)."""
    rows = max(1, PANEL_BYTES // max(1, row_elements * itemsize))
    return [slice(start, min(start + rows, n_rows)) for start in range(0, n_rows, rows)]


def _items(batch):
    """The number of matrices in a batch shape."""
    return math.prod(batch)


def _nonfinite_columns(B):
    """The columns of B (..., k, n) that hold inf or NaN in some row of some batch item."""
    bad = ~np.isfinite(B)
    if not bad.any():
        return ()
    return np.flatnonzero(bad.any(axis=tuple(range(B.ndim - 1))))


def _weigh(W, B, bad_columns, out=None):
    """W @ B where a weight of exactly 0 takes nothing from B, even inf or NaN: the IEEE product,
    then each column of B that holds inf or NaN recomputed without the zero weights (summed in
    float64, as csrc/dispatch.c's sa_output_zero_weights does)."""
    out = np.matmul(W, B, out=out)
    if len(bad_columns):
        for col in bad_columns:
            # (the products in float64 too: a float32 -2 * 3e38 is -inf, and inf - inf NaN)
            terms = np.where(W != 0, np.multiply(W, B[..., None, :, col], dtype=np.float64), 0)
            out[..., col] = terms.sum(axis=-1, dtype=np.float64)
    return out


def _band_hidden(band, batch, rows, n_q, n_k):
    """Where the band (lo, hi) or (lo, hi, from_end, query_lengths, key_lengths) hides key j from
    query i of rows `rows`, broadcastable to batch + (rows, n_k) (csrc/attn.h's sa_band): query i
    of item b sees i + lo + shift <= j <= i + hi + shift, i < R[b], j < K[b], with R, K the
    item's lengths (n_q, n_k where None) and shift = K - R with from_end, else 0."""
    lo, hi, from_end, query_lengths, key_lengths = (tuple(band) + (False, None, None))[:5]
    far = n_q + n_k                 # as csrc/module.c clamps the band
    lo, hi = (min(max(side, -far), far) for side in band[:2])
    item = batch + (1, 1)
    R = n_q if query_lengths is None else np.asarray(query_lengths).reshape(item)
    K = n_k if key_lengths is None else np.asarray(key_lengths).reshape(item)
    shift = K - R if from_end else 0
    query = np.arange(rows.start, rows.stop)[:, None]
    key = np.arange(n_k)[None, :]
    return (key < query + lo + shift) | (key > query + hi + shift) | (query >= R) | (key >= K)


_F32_ROUNDS_TO_INF = float.fromhex("0x1.ffffffp127")


def _overflow_rule(S, Q, K, where, scale):
    """attn.h's sa_overflowed_score on S[where], scores that came out inf or NaN from finite rows
    of Q (..., rows, d) and K (..., n_k, d), with the same arithmetic: q and k scaled down by
    powers of 2 only as far as a sum of d products of their largest elements needs to stay
    finite, each product's rounding error kept (Dekker's split, as fma keeps it) and the sum
    compensated (Neumaier), the powers and the scale (as S's dtype holds it) put back by one
    ldexp; that value where it is finite in S's dtype, else NaN (the score itself overflows).
    In chunks of scores, so that many overflowing scores take little memory."""
    at = np.nonzero(np.broadcast_to(where, S.shape))
    d = Q.shape[-1]
    Qb = np.broadcast_to(Q, S.shape[:-1] + (d,))
    Kb = np.broadcast_to(K, S.shape[:-2] + (K.shape[-2], d))
    fraction, scale_exp = math.frexp(float(S.dtype.type(scale)))
    chunk = max(1, (PANEL_BYTES // 16) // max(d, 1))
    for start in range(0, len(at[0]), chunk):
        part = tuple(i[start:start + chunk] for i in at)
        q = Qb[part[:-1]].astype(np.float64)
        k = Kb[part[:-2] + part[-1:]].astype(np.float64)
        S[part] = _rescored(q, k, d, fraction, scale_exp, S.dtype)


def _rescored(q, k, d, fraction, scale_exp, dtype):
    """_overflow_rule's scores of rows q, k (m, d) in float64."""
    exponent = lambda x: np.frexp(np.abs(x).max(axis=-1, initial=0.0))[1]  # noqa: E731
    shift = np.maximum(exponent(q) + exponent(k) + math.frexp(float(d))[1] - 1020, 0)
    q = np.ldexp(q, -(shift // 2)[:, None])
    k = np.ldexp(k, -(shift - shift // 2)[:, None])
    total, err = np.zeros(len(q)), np.zeros(len(q))
    with np.errstate(all="ignore"):
        for c in range(d):
            x, y = q[:, c], k[:, c]
            p = x * y
            t = total + p
            err += np.where(np.abs(total) >= np.abs(p), (total - t) + p, (p - t) + total)
            err += _product_error(x, y, p)
            total = t
        exact = np.ldexp((total + err) * fraction, shift + scale_exp)
    # past float32's largest value once rounded: from 0x1.ffffffp127, which rounds to inf
    fits = np.abs(exact) < _F32_ROUNDS_TO_INF if dtype == np.float32 else np.isfinite(exact)
    return np.where(fits, exact, np.nan).astype(dtype)


def _product_error(x, y, p):
    """x * y - p exactly, p = x * y rounded (fma(x, y, -p)), by Dekker's split of x and y into
    halves of 26 bits (|x|, |y| < 2^1000 here, so the split cannot overflow)."""
    def split(v):
        big = v * 134217729.0           # 2^27 + 1
        high = big - (big - v)
        return high, v - high
    xh, xl = split(x)
    yh, yl = split(y)
    return ((xh * yh - p) + xh * yl + xl * yh) + xl * yl


def _scores_block(Q, K, rows, mask, scale, band, softcap=0.0, slope=None):
    """The scores of query rows `rows` against every key: scaled, overflow made NaN, soft-capped
    (softcap > 0), masked, and -inf where the band hides the key (_band_hidden). With a soft-cap
    and a list `slope`, the capped scores' derivatives 1 - tanh^2(score / c) are appended to it
    (for the backward)."""
    n_q, n_k = Q.shape[-2], K.shape[-2]
    Q = Q[..., rows, :]
    S = np.matmul(Q, np.swapaxes(K, -1, -2))
    S *= S.dtype.type(scale)
    overflowed = ~np.isfinite(S)
    if overflowed.any():
        finite_q = np.isfinite(Q).all(axis=-1)[..., :, None]
        finite_k = np.isfinite(K).all(axis=-1)[..., None, :]
        _overflow_rule(S, Q, K, overflowed & finite_q & finite_k, scale)
    if softcap:
        # in double, as the C tiers' reference (attn.h's sa_softcap_score and sa_softcap_slope)
        x = S.astype(np.float64) / softcap
        if slope is not None:
            g = 2 / (np.exp(2 * np.abs(x)) + 1)
            slope.append((g * (2 - g)).astype(S.dtype))
        S = (softcap * np.tanh(x)).astype(S.dtype)
    if mask is not None:
        block = mask[..., rows, :]
        if block.dtype == np.bool_:
            S = np.where(block, S, -np.inf).astype(S.dtype, copy=False)
        else:
            S += block
    hidden = _band_hidden(band, S.shape[:-2], rows, n_q, n_k)
    if hidden.any():
        S[np.broadcast_to(hidden, S.shape)] = -np.inf
    return S


def _philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 (csrc/philox.h) on arrays of 32-bit counters (held in uint64), one key."""
    c0, c1, c2, c3 = (np.asarray(c, np.uint64) for c in (c0, c1, c2, c3))
    low, k0, k1 = np.uint64(0xFFFFFFFF), np.uint64(k0), np.uint64(k1)
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c0
        p1 = np.uint64(0xCD9E8D57) * c2
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & low,
                          (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & low)
        k0 = (k0 + np.uint64(0x9E3779B9)) & low
        k1 = (k1 + np.uint64(0xBB67AE85)) & low
    return c0, c1, c2, c3


def _dropout_factors(batch, rows, n_k, dropout_p, seed, dtype):
    """Each weight's dropout factor for query rows `rows` of every batch item, (batch, rows, n_k):
    0 where dropped, else 1 / (1 - p) (csrc/attn.h's sa_dropout: key j of row i of item b is
    dropped when word j % 4 of Philox(counter {j // 4, i, b low, b high}, key {seed low, high})
    is below p * 2^32)."""
    items = np.arange(_items(batch), dtype=np.uint64).reshape(batch + (1, 1))
    i = np.arange(rows.start, rows.stop, dtype=np.uint64)[:, None]
    q = np.arange((n_k + 3) // 4, dtype=np.uint64)[None, :]
    words = _philox4x32_10(q, i, items & np.uint64(0xFFFFFFFF), items >> np.uint64(32),
                           seed & 0xFFFFFFFF, seed >> 32)
    words = np.stack(np.broadcast_arrays(*words), axis=-1)      # (batch, rows, quads, 4)
    words = words.reshape(batch + (rows.stop - rows.start, -1))
    keep = words[..., :n_k] >= np.uint64(int(dropout_p * 4294967296.0))
    scale = dtype.type(1 / (1 - dropout_p) if dropout_p < 1 else 0)
    return np.where(keep, scale, dtype.type(0))


def _drop(P, factors):
    """P times its dropout factors, a dropped weight exactly 0 (even NaN), as sa_dropout_apply."""
    return np.where(factors == 0, 0, P * factors).astype(P.dtype, copy=False)


def _softmax_rows(S):
    """Softmax of each row of S: max subtracted; a row of -inf gives 0, a row with NaN gives NaN."""
    top = np.max(S, axis=-1, keepdims=True, initial=-np.inf)
    masked = top == -np.inf
    E = np.exp(S - np.where(masked, 0, top).astype(S.dtype, copy=False))
    E *= 1 / E.sum(axis=-1, keepdims=True)
    E[np.broadcast_to(masked, E.shape)] = 0
    return E


# ---- the entry points (the signatures of csrc/module.c's) ----------------------------------------


def _quiet(kernel):
    """An entry point run under np.errstate(all="ignore"): the C kernels compute with the IEEE
    rules and signal nothing, whatever np.seterr says, and so does this backend (a learner's
    np.seterr(all="raise") made a softmax's underflow in exp a FloatingPointError). Overflow is
    handled by the rules above, not by warnings."""
    @functools.wraps(kernel)
    def run(*args, **kwargs):
        with np.errstate(all="ignore"):
            return kernel(*args, **kwargs)
    return run


@_quiet
def scores(out, Q, K, mask, scale, band, isa):
    """out[...] = scale * Q @ K^T with the mask applied."""
    _isa(isa)
    out = _out(out)
    batch, (n_q, n_k) = out.shape[:-2], out.shape[-2:]
    d_k = _matrix(Q, "Q").shape[-1]
    Q = _operand(Q, out.dtype, batch + (n_q, d_k), "Q")
    K = _operand(K, out.dtype, batch + (n_k, d_k), "K")
    mask = _mask(mask, out.dtype, out.shape)
    for rows in _row_blocks(n_q, _items(batch) * n_k, out.itemsize):
        out[..., rows, :] = _scores_block(Q, K, rows, mask, scale, band)


def read_memory(words):
    """The OR of a 1-d uint64 array (the bench's read-bandwidth probe): NumPy's reduction, which
    reads more slowly than the C extension's four streams asked for ahead."""
    return int(np.bitwise_or.reduce(words))


@_quiet
def softmax(out, x, isa):
    """out[...] = softmax over the last axis of x; out may be x."""
    _isa(isa)
    out = _out(out)
    x = _operand(x, out.dtype, out.shape, "x")
    for rows in _row_blocks(out.shape[-2], _items(out.shape[:-2]) * out.shape[-1], out.itemsize):
        out[..., rows, :] = _softmax_rows(x[..., rows, :])


def _product(out, A, B, isa, weighs_values, layout=0):
    _isa(isa)
    out = _out(out)
    if not isinstance(layout, int) or layout & ~7:
        raise ValueError("_core: layout must OR 1, 2 and 4")
    a_t, b_t, add = layout & 1, layout & 2, layout & 4
    batch, (m, n) = out.shape[:-2], out.shape[-2:]
    k = _matrix(A, "A").shape[-2 if a_t else -1]
    A = _operand(A, out.dtype, batch + ((k, m) if a_t else (m, k)), "A")
    B = _operand(B, out.dtype, batch + ((n, k) if b_t else (k, n)), "B")
    A, B = (np.swapaxes(A, -1, -2) if a_t else A), (np.swapaxes(B, -1, -2) if b_t else B)
    bad = _nonfinite_columns(B) if weighs_values else ()
    for rows in _row_blocks(m, _items(batch) * max(n, k), out.itemsize):
        if add:
            out[..., rows, :] += np.matmul(A[..., rows, :], B)
        else:
            _weigh(A[..., rows, :], B, bad, out=out[..., rows, :])


@_quiet
def matmul(out, A, B, isa, layout=0):
    """out[...] = A @ B (IEEE products: 0 * inf is NaN); layout ORs 1 (A given as A^T, shape
    (..., k, m)), 2 (B given as B^T, shape (..., n, k)) and 4 (out[...] += A @ B)."""
    _product(out, A, B, isa, weighs_values=False, layout=layout)


@_quiet
def output(out, weights, V, isa):
    """out[...] = weights @ V, where a weight of exactly 0 takes nothing from V, even inf or NaN."""
    _product(out, weights, V, isa, weighs_values=True)


@_quiet
def project(QKV, X, Ws, bias, isa):
    """QKV[...] = X @ [W_1 | ...] + bias for the 1 to 3 matrices of the tuple Ws, one product per
    W into its columns of QKV (bias None, or (..., 1, width of QKV)); the W's and the bias share
    one batch shape whose axes are QKV's or 1."""
    _isa(isa)
    QKV = _out(QKV)
    if not isinstance(Ws, tuple) or not 1 <= len(Ws) <= 3:
        raise ValueError("_core: Ws must hold 1 to 3 matrices")
    names = [f"Ws[{i}]" for i in range(len(Ws))]
    Ws = [_matrix(W, name) for W, name in zip(Ws, names)]
    if sum(W.shape[-1] for W in Ws) != QKV.shape[-1]:
        raise ValueError("_core: QKV must be as wide as the W's together")
    w_batch = Ws[0].shape[:-2]
    if len(w_batch) != QKV.ndim - 2 or any(w not in (1, b) for w, b in zip(w_batch, QKV.shape[:-2])):
        raise ValueError("_core: the W's must have QKV's batch axes or 1")
    Ws = [_operand(W, QKV.dtype, w_batch + W.shape[-2:], name) for W, name in zip(Ws, names)]
    if QKV.size:
        start = 0
        for W in Ws:
            width = W.shape[-1]
            matmul(QKV[..., start: start + width], X,
                   np.broadcast_to(W, QKV.shape[:-2] + W.shape[-2:]), isa)
            start += width
        if bias is not None:
            QKV += _operand(bias, QKV.dtype, w_batch + (1, QKV.shape[-1]), "bias")


def _attention_operands(out_shape, dtype, Q, K, V, mask):
    batch, n_q = out_shape[:-2], out_shape[-2]
    d_v = out_shape[-1]
    if not isinstance(Q, np.ndarray) or Q.ndim < 2 or not isinstance(K, np.ndarray) or K.ndim < 2:
        raise ValueError("_core: Q and K must be matrices")
    d_k, n_k = Q.shape[-1], K.shape[-2]
    return (_operand(Q, dtype, batch + (n_q, d_k), "Q"), _operand(K, dtype, batch + (n_k, d_k), "K"),
            _operand(V, dtype, batch + (n_k, d_v), "V"), _mask(mask, dtype, batch + (n_q, n_k)))


def _lse_rows(S):
    """Each row's log-sum-exp: -inf for a row of -inf, NaN for a row holding NaN or +inf (whose
    weights are NaN), as csrc/attn.h's sa_row_lse."""
    top = np.max(S, axis=-1, keepdims=True, initial=-np.inf)
    finite = np.isfinite(top)
    total = np.exp(S - np.where(finite, top, 0).astype(S.dtype, copy=False)).sum(axis=-1)
    lse = np.where(finite[..., 0], top[..., 0] + np.log(total), top[..., 0])
    return np.where(lse == np.inf, np.nan, lse).astype(S.dtype, copy=False)


def _mods(softcap, dropout_p):
    """module.c's mods_ok: what the Python layer validates, checked by the private calls too."""
    if not (math.isfinite(softcap) and softcap >= 0 and 0 <= dropout_p <= 1):
        raise ValueError("_core: softcap must be finite and >= 0 (0: none), dropout_p within "
                         "[0, 1]")


@_quiet
def attention(out, weights, Q, K, V, mask, scale, band, isa, lse=None, softcap=0.0, dropout_p=0.0,
              seed=0):
    """out[...] = softmax(scale * Q @ K^T + mask) @ V, block by block of query rows; weights is
    None (only one block of weights exists at a time) or an output for the weights; lse None or
    an output (batch..., n_q) for each row's log-sum-exp; softcap > 0 caps the scores before the
    mask; dropout_p > 0 drops weights after the softmax."""
    _isa(isa)
    _mods(softcap, dropout_p)
    out = _out(out)
    Q, K, V, mask = _attention_operands(out.shape, out.dtype, Q, K, V, mask)
    n_q, n_k = Q.shape[-2], K.shape[-2]
    if weights is not None:
        weights = _operand(weights, out.dtype, out.shape[:-2] + (n_q, n_k), "weights",
                           writeable=True)
    if lse is not None:
        if (not isinstance(lse, np.ndarray) or lse.dtype != out.dtype or not lse.flags.writeable
                or not lse.flags.c_contiguous or lse.size != _items(out.shape[:-1])):
            raise ValueError("_core: lse must be None or a writeable contiguous array of out's "
                             "type with one element per row of out")
        lse = lse.reshape(out.shape[:-1])
    bad = _nonfinite_columns(V)
    for rows in _row_blocks(n_q, _items(out.shape[:-2]) * n_k, out.itemsize):
        S = _scores_block(Q, K, rows, mask, scale, band, softcap)
        if lse is not None:
            lse[..., rows] = _lse_rows(S)
        P = _softmax_rows(S)
        if dropout_p:
            P = _drop(P, _dropout_factors(out.shape[:-2], rows, n_k, dropout_p, seed, out.dtype))
        if weights is not None:
            weights[..., rows, :] = P
        _weigh(P, V, bad, out=out[..., rows, :])


@_quiet
def attention_backward(dQ, dK, dV, dO, Q, K, V, mask, scale, band, isa, softcap=0.0,
                       dropout_p=0.0, seed=0, out=None):
    """dQ, dK, dV[...] = the gradients of softmax(scale * Q @ K^T + mask) @ V given dO, and
    out[...] = that output (of the dropped weights) where out is an array:
    P = softmax(S), dP = dO V^T, D = rowsum(P * dP), dS = P * (dP - D) (times the soft-cap's
    slope 1 - tanh^2 with softcap > 0), dQ = scale * dS K; with dropout factors Z, dP = Z dO V^T
    and dV = (P Z)^T dO,
    dK = scale * dS^T Q, dV = P^T dO, where a weight of exactly 0 contributes nothing.
    One pass over blocks of query rows: dQ block by block, dK and dV summed over the blocks."""
    _isa(isa)
    _mods(softcap, dropout_p)
    dQ = _out(dQ)
    for grad in (dK, dV):
        if not isinstance(grad, np.ndarray) or grad.ndim < 2:
            raise ValueError("_core: dK and dV must be matrices")
    batch, dtype = dQ.shape[:-2], dQ.dtype
    (n_q, d_k), n_k, d_v = dQ.shape[-2:], dK.shape[-2], dV.shape[-1]
    dK = _operand(dK, dtype, batch + (n_k, d_k), "dK", writeable=True)
    dV = _operand(dV, dtype, batch + (n_k, d_v), "dV", writeable=True)
    dO = _operand(dO, dtype, batch + (n_q, d_v), "dO")
    if out is not None:
        out = _operand(out, dtype, batch + (n_q, d_v), "out", writeable=True)
    Q, K, V, mask = _attention_operands(batch + (n_q, d_v), dtype, Q, K, V, mask)
    scale_c = dtype.type(scale)
    bad_K = _nonfinite_columns(K)
    bad_V = _nonfinite_columns(V) if out is not None else None
    dK[...] = 0
    dV[...] = 0
    for rows in _row_blocks(n_q, 3 * _items(batch) * n_k, dQ.itemsize):
        slope = []
        P = _softmax_rows(_scores_block(Q, K, rows, mask, scale, band, softcap, slope))
        PT = np.swapaxes(P, -1, -2)
        dO_block, Q_block = dO[..., rows, :], Q[..., rows, :]
        # 1. dP and D, zero where the weight is
        dP = np.where(P == 0, 0, np.matmul(dO_block, np.swapaxes(V, -1, -2)))
        if dropout_p:
            Z = _dropout_factors(batch, rows, n_k, dropout_p, seed, dtype)
            dP = _drop(dP, Z)
            PT = np.swapaxes(_drop(P, Z), -1, -2)
        if out is not None:
            _weigh(np.swapaxes(PT, -1, -2), V, bad_V, out=out[..., rows, :])
        D = (P * dP).sum(axis=-1, keepdims=True)
        dS = P * (dP - D)
        if slope:               # a hidden key's slope may be NaN (its raw score is): inside the where
            dS *= slope[0]
        dS = np.where(P == 0, 0, dS).astype(dtype, copy=False)
        # 2. this block's dQ, and its share of dK and dV
        dQ[..., rows, :] = _weigh(dS, K, bad_K) * scale_c
        dV += _weigh(PT, dO_block, _nonfinite_columns(dO_block))
        dK += _weigh(np.swapaxes(dS, -1, -2), Q_block, _nonfinite_columns(Q_block))
    dK *= scale_c



# ---- the plain entry points: the C extension's fast path for 2-D calls ------------------------

def _decline(*args):
    """The C extension's plain_* entry points take the notebook's 2-D calls without the Python
    layer; here the general path is as fast, so they decline every call (None)."""
    return None


plain_scores = plain_softmax = plain_output = plain_sdpa = plain_layer = _decline

_settings["threads"] = available_cpus()
