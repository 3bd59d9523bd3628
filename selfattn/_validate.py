"""Argument checks shared by every public function: the policy half of each call.

Each public function (selfattn/_api.py, _backward.py, _multihead.py, _masks.py) follows the same
steps, and the rules for them live here, once:

1. read each argument as an array and reject kinds we cannot compute with (TypeError);
2. check the shapes, naming the function, the argument, the shapes received and the rule
   (ValueError);
3. pick the result dtype (float32 stays float32, float64 stays float64, float16 is computed in
   float32, ints and bools become float64, mixed floats promote as NumPy does);
4. refuse results too large to address before any work, and broadcast the batch dimensions.

Running the kernels (kernel-ready operands, outputs) is selfattn/_kernels.py's part.
"""
from __future__ import annotations

import functools
import inspect
import math
import operator
import sys
import warnings
from collections.abc import Mapping

import numpy as np

# ---- step 1: arguments as arrays -------------------------------------------------------------

_KIND_NAMES = {
    "c": "complex",
    "O": "object",
    "U": "string",
    "S": "bytes",
    "M": "datetime",
    "m": "timedelta",
    "V": "structured (void)",
}


# NumPy before 1.24 warns (VisibleDeprecationWarning) on a ragged nested list and makes an object
# array of it, where newer ones raise ValueError; both end in the same clear error of ours, which
# the warning would only precede. Its home moved to np.exceptions in 1.25 (and left np in 2.0).
# None where NumPy raises: no warnings context (a few microseconds a list) is needed there.
_RAGGED_WARNING = (None if np.lib.NumpyVersion(np.__version__) >= "1.24.0" else
                   getattr(np, "VisibleDeprecationWarning", None))


def _as_ndarray(value):
    """np.asarray(value), without NumPy's warning about a ragged nested list (_RAGGED_WARNING);
    an ndarray passes through untouched (no warnings context on the common path)."""
    if isinstance(value, np.ndarray) or _RAGGED_WARNING is None:
        return np.asarray(value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _RAGGED_WARNING)
        return np.asarray(value)


# How an object converts itself to an array (NumPy's protocols), rather than being read as nested
# sequences of numbers
_ARRAY_HOOKS = ("__array__", "__array_interface__", "__array_struct__")


def _refuse_masked(func, name, value, lengths=False):
    """A TypeError for a numpy.ma masked array, whose mask np.asarray would silently drop:
    honouring it has no single meaning here (hide a key? a value? a score?), so the caller says
    what they mean."""
    # (numpy imports numpy.ma lazily: asking np.ma here would import it, half a MiB, on a
    # learner's first call; a masked array exists only once numpy.ma has been imported)
    masked = sys.modules.get("numpy.ma")
    if masked is not None and isinstance(value, masked.MaskedArray):
        raise TypeError(
            f"{func}: {name} is a masked array (numpy.ma), whose mask selfattn would ignore; pass "
            f"{name}.filled(value) to choose what the masked entries hold"
            + ("" if lengths else
               ", or, to hide keys from attention, a boolean mask= argument (True = may attend)")
        )


def _read_array(func, name, value):
    """_as_ndarray(value), where an object's own conversion that refuses (torch: a tensor that
    requires grad, on a GPU, or in bfloat16) is a TypeError naming the call and the argument,
    in the object's words (NumPy's own errors pass through)."""
    try:
        return _as_ndarray(value)
    except RecursionError:
        raise
    except (ValueError, TypeError, RuntimeError) as exc:
        if not any(hasattr(value, hook) for hook in _ARRAY_HOOKS):
            raise
        kind = type(value)
        fix = (f"; convert it to float32 first: {name}.float()"  # torch says no more
               if "ScalarType BFloat16" in str(exc) else "")
        raise TypeError(
            f"{func}: {name}, a {kind.__module__}.{kind.__qualname__}, could not be converted "
            f"to a NumPy array; it says: {exc}{fix}"
        ) from None


def _as_array(func, name, value, lengths=False):
    """`value` as an ndarray of a kind we can compute with, or a clear TypeError/ValueError.
    `lengths`: the value holds lengths, so the messages ask for integers (the caller refuses
    floats and booleans)."""
    if value is None:
        raise TypeError(
            f"{func}: {name} is None; pass an array (a function that ends without `return`, "
            f"like the notebook's unfinished `pass` stubs, returns None)"
        )
    _refuse_masked(func, name, value, lengths)
    if isinstance(value, Mapping):
        raise TypeError(
            f"{func}: {name} is a {type(value).__name__}, not an array-like; pass a NumPy array "
            f"or a nested list of numbers (e.g. list({name}.values()) if the values are rows)"
        )
    try:
        arr = _read_array(func, name, value)
    except RecursionError:
        raise
    except (ValueError, TypeError) as exc:
        if any(hasattr(value, hook) for hook in _ARRAY_HOOKS):
            raise
        why = ("it is not rectangular: rows of different lengths, or a list where a number "
               "should be" if "inhomogeneous" in str(exc) else f"NumPy says: {exc}")
        raise ValueError(
            f"{func}: {name} could not be read as an array ({why}); pass a NumPy array or a "
            f"rectangular nested list of numbers"
        ) from None
    kind = arr.dtype.kind
    if kind in "biu" or (kind == "f" and arr.dtype.itemsize <= 8):
        return arr
    if lengths and (kind == "f" or _packaged_number(arr.dtype)):
        raise TypeError(f"{func}: {name} has dtype {arr.dtype}; it must hold integers (one "
                        f"length per sequence)")
    if kind == "f" or _packaged_number(arr.dtype):
        raise TypeError(
            f"{func}: {name} has dtype {arr.dtype}, which selfattn does not compute in; "
            f"convert it with {name}.astype({'np.float64' if kind == 'f' else 'np.float32'})"
        )
    what = _KIND_NAMES.get(kind, str(arr.dtype))
    hint = ""
    if kind == "O" and arr.ndim == 0:
        kind_name = type(value).__name__
        hint = f" ({'an' if kind_name[:1] in 'aeiouAEIOU' else 'a'} {kind_name} object, not an array-like)"
    elif kind == "O":
        odd = [x for x in arr.flat if not isinstance(x, (int, float, np.number))][:1]
        if not odd and lengths:
            hint = (" (integers beyond int64, which no length is)"
                    if all(isinstance(x, (int, np.integer)) for x in arr.flat) else
                    " (numbers that NumPy keeps as objects: floats beside integers beyond int64)")
        elif not odd:
            hint = (" (Python numbers that NumPy keeps as objects, such as integers beyond int64: "
                    f"convert with np.asarray({name}, dtype=float))")
        elif odd[0] is None:
            hint = " (it holds None where a number should be)"
        elif isinstance(odd[0], (list, tuple, np.ndarray)):
            hint = " (a ragged nested list, with rows of different lengths, becomes an object array)"
        else:
            hint = (f" (it holds {odd[0]!r}, a {type(odd[0]).__name__}, which NumPy does not "
                    f"compute with: convert the entries with {'int' if lengths else 'float'}())")
    if lengths:
        raise TypeError(f"{func}: {name} has dtype {arr.dtype} ({what}){hint}; it must hold "
                        f"integers (one length per sequence)")
    raise TypeError(
        f"{func}: {name} has dtype {arr.dtype} ({what}){hint}; selfattn needs real numbers: "
        f"float32, float64, float16, or integers and booleans (computed as float64)"
    )


def _packaged_number(dtype):
    """Whether `dtype` is a number type of a dtype package (ml_dtypes' bfloat16, float8 and int4,
    as JAX arrays convert to): kind "V" as structured data is, but float32 holds each of them."""
    return dtype.kind == "V" and dtype.type is not np.void


def _QKV(Q, K, V):
    """The (name, value, expected shape) of attention's three operands, for _as_matrices."""
    return ("Q", Q, "(n_q, d_k)"), ("K", K, "(n_k, d_k)"), ("V", V, "(n_k, d_v)")


def _as_matrices(func, *named):
    """Each (name, value, expected shape) as an array of at least 2 dimensions, all read (step 1)
    before any is checked (step 2)."""
    arrays = [_as_array(func, name, value) for name, value, _ in named]
    for (name, _, expected), arr in zip(named, arrays):
        _require_matrix(func, name, arr, expected)
    return arrays


# ---- step 2: shapes and options ---------------------------------------------------------------

def _require_matrix(func, name, arr, expected):
    if arr.ndim < 2:
        hint = ""
        if arr.ndim == 1 and name.startswith("W_"):  # a weight's rows are its inputs
            hint = (f"; for a projection to a single column use {name}[:, None] "
                    f"(shape ({arr.shape[0]}, 1))")
        elif arr.ndim == 1:
            hint = f"; for a single token use {name}[None, :] (shape (1, {arr.shape[0]}))"
        raise ValueError(
            f"{func}: {name} must have at least 2 dimensions {expected}, got {name}.shape={arr.shape}"
            + hint
        )


def _scalar_of(value):
    """A 0-d array of numbers or booleans (NumPy's; torch's tensor(0.5), jax's jnp.sqrt(4.0),
    jnp.bool_(True)) as the NumPy scalar it holds, as an option's value; anything else as it is."""
    if isinstance(value, (bool, int, float, str, np.generic)) or value is None:
        return value
    if not isinstance(value, np.ndarray):
        if not any(hasattr(value, hook) for hook in _ARRAY_HOOKS) or getattr(value, "ndim", 0):
            return value
        try:
            value = np.asarray(value)
        except Exception:   # noqa: BLE001 -- its own conversion refused: refused as it is
            return value
    return value[()] if value.ndim == 0 and value.dtype.kind in "biuf" else value


def _flag(func, name, value):
    given, value = value, _scalar_of(value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{func}: {name} must be True or False, got {given!r}")


_CAUSAL = {True: "top_left", False: None, None: None, "top_left": "top_left",
           "bottom_right": "bottom_right"}


def _visibility(func, is_causal, window=None):
    """Which keys each query may see, as the Python layer states it: None (every key) or
    (diagonal, left, right): query i sees the keys d - left <= j <= d + right around its
    diagonal d, which is i ("top_left") or i + n_k - n_q ("bottom_right", only with
    is_causal="bottom_right"); a side of None is unbounded. This is the one home of the rule:
    is_causal is right = 0 (True is "top_left"; "bottom_right" is torch's causal_lower_right, the
    last query seeing every key, as when decoding with a KV cache), window=(left, right) bounds
    both sides, and together a key must pass both. selfattn/_kernels.py's _band turns it into the
    kernels' band (lo, hi)."""
    given, is_causal = is_causal, _scalar_of(is_causal)
    if isinstance(is_causal, np.bool_):
        is_causal = bool(is_causal)
    if not isinstance(is_causal, (bool, str, type(None))) or is_causal not in _CAUSAL:
        raise (ValueError if isinstance(is_causal, str) else TypeError)(
            f"{func}: is_causal must be True, False, None, 'top_left' or 'bottom_right', got "
            f"{given!r} (True is 'top_left': query i sees the keys j <= i; 'bottom_right': "
            f"j <= i + n_k - n_q, the last query seeing every key, as when decoding with a "
            f"KV cache)"
        )
    causal = _CAUSAL[is_causal]
    left, right = _window(func, window)
    if causal is not None:
        right = 0 if right is None else min(right, 0)
    if left is None and right is None:
        return None
    return causal or "top_left", left, right


def _window(func, window):
    """window= as (left, right), each a non-negative int or None (unbounded); None is (None, None)."""
    if window is None:
        return None, None
    rule = (f"window must be a pair (left, right) of non-negative integers or None (None = "
            f"unbounded on that side), got {window!r}; query i sees the keys i - left .. i + right")
    if not isinstance(window, (tuple, list, np.ndarray)) or (isinstance(window, np.ndarray)
                                                             and window.ndim != 1):
        raise TypeError(f"{func}: {rule}")
    if len(window) != 2:
        raise ValueError(f"{func}: {rule}")
    return tuple(None if side is None else _integer(func, f"window[{k}] ({name})", side, 0)
                 for k, (name, side) in enumerate(zip(("left", "right"), window)))


_LABEL_MAX = 20   # characters of a token shown as a label; a longer one is cut, ending in "…"


def _short_label(token):
    """A token (str) as a row or column label of a table or a plot: on one line (a newline split
    explain's table), cut at _LABEL_MAX characters (one 60-character token made every column of
    explain's tables that wide; 300 collapsed plot_attention's axes)."""
    text = token.replace("\n", "↵")
    return text if len(text) <= _LABEL_MAX else text[:_LABEL_MAX - 1] + "…"


def _label_list(func, name, tokens, count, what):
    """tokens= (one label per `what`, `count` of them; None: no labels) as a list of str, read
    once (a generator is used up by its first reading). The count is the caller's to check."""
    if tokens is None:
        return None
    rule = f"{func}: {name} must be a list of {count} labels, one per {what}"
    if isinstance(tokens, str):
        raise TypeError(f"{rule}, not a single string; for words use {name}=sentence.split()")
    try:
        items = list(tokens)
    except TypeError:
        raise TypeError(f"{rule}, got {tokens!r}") from None
    return [str(t) for t in items]


def _item_lengths(func, name, lengths, batch, n):
    """One side's lengths as the kernels take them: None, or one intp per batch item (C order).

    `lengths` is an int or an integer array whose shape is a prefix of the batch shape (each
    axis its extent or 1): a 1-D array holds one length per entry of the FIRST batch axis (one
    per sequence, as jax's query_seq_lengths and flash-attn's cu_seqlens), shared by the axes
    after it (heads); each length is in [0, n]."""
    if lengths is None:
        return None
    # (a subclass, numpy.ma's masked array, goes through _as_array, which refuses it)
    arr = (np.asarray(lengths) if isinstance(lengths, (int, np.integer)) or type(lengths) is np.ndarray
           else _as_array(func, name, lengths, lengths=True))
    if arr.size == 0 and not isinstance(lengths, np.ndarray):
        # the lengths of an empty batch, [len(s) for s in batch]: NumPy reads [] as float64
        arr = arr.astype(np.intp)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iu":
        raise TypeError(f"{func}: {name} must hold integers (one length per sequence), got "
                        f"dtype {arr.dtype}")
    if not batch and arr.ndim:
        raise ValueError(f"{func}: {name}.shape={arr.shape}, but these inputs have no batch axis "
                         f"(one sequence): pass its length as an int")
    if arr.ndim > len(batch) or any(a not in (1, b) for a, b in zip(arr.shape, batch)):
        raise ValueError(
            f"{func}: {name}.shape={arr.shape} must be a prefix of the batch shape {batch} (one "
            f"length per entry of the first batch axis: shape ({batch[0]},)), or a scalar")
    distinct = _distinct(arr)
    if arr.size and (distinct.min() < 0 or distinct.max() > n):
        raise ValueError(f"{func}: {name} must lie in [0, {n}], got values from {distinct.min()} "
                         f"to {distinct.max()}")
    full = np.broadcast_to(arr.reshape(arr.shape + (1,) * (len(batch) - arr.ndim)), batch)
    return np.ascontiguousarray(full, dtype=np.intp).reshape(-1)


def _distinct(arr):
    """The elements of `arr` with its broadcast axes (stride 0, np.broadcast_to's) taken once:
    what a scan of its values (min, max) needs, however large the view."""
    if arr.ndim == 0:  # (arr[()] would be a NumPy scalar, whose min() grew traced memory)
        return arr
    return arr[tuple(0 if stride == 0 and extent > 1 else slice(None)
                     for stride, extent in zip(arr.strides, arr.shape))]


def _lengths(func, query_lengths, key_lengths, batch, n_q, n_k):
    """The kernels' (query_lengths, key_lengths) for a call of batch shape `batch` (each None or
    one per batch item: _item_lengths), or None when neither is given."""
    if query_lengths is None and key_lengths is None:
        return None
    return (_item_lengths(func, "query_lengths", query_lengths, batch, n_q),
            _item_lengths(func, "key_lengths", key_lengths, batch, n_k))


def _scale(func, scale, d_k):
    """The factor applied to Q.K^T; None means 1/sqrt(d_k) (1.0 when d_k is 0)."""
    if scale is None:
        return 1.0 / math.sqrt(d_k) if d_k > 0 else 1.0
    given, scale = scale, _scalar_of(scale)
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"{func}: scale must be a real number or None, got {given!r}")
    try:
        scale = float(scale)
    except OverflowError:  # an int beyond float's range, e.g. 10**400
        raise ValueError(f"{func}: scale must be finite, got an integer too large for a float "
                         f"({scale.bit_length()} bits)") from None
    if not math.isfinite(scale):
        raise ValueError(f"{func}: scale must be finite, got {scale}")
    return scale


def _scale_fits(func, scale, compute):
    """A ValueError where the scale is beyond the range of the dtype the call computes in (a float32
    call's scale of 1e39 would be inf there: every score inf or NaN), else the scale."""
    largest = float(np.finfo(compute).max)
    if abs(scale) > largest:
        raise ValueError(
            f"{func}: scale={scale!r} is beyond the range of {np.dtype(compute).name} (largest "
            f"{largest:.4g}), the precision this call computes in; pass a smaller scale, or "
            f"float64 arrays"
        )
    return scale


def _real(func, name, value, what):
    """`value` as a float: a real number (not a bool), a NumPy scalar or a 0-d array of one; an
    integer beyond float's range becomes inf. A TypeError naming `what` it must be, otherwise."""
    given, value = value, _scalar_of(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{func}: {name} must be {what}, got {given!r}")
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _softcap(func, softcap):
    """The soft-cap as the kernels take it: None means none (0.0); else a finite real number > 0."""
    if softcap is None:
        return 0.0
    value = _real(func, "softcap", softcap, "a positive real number or None")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{func}: softcap must be a finite number > 0 (or None for no cap), "
                         f"got {softcap!r}")
    return value


_SEED_LIMIT = 2 ** 64


def _dropout(func, dropout_p, seed, backward=False):
    """(dropout_p, seed) as the kernels take them: dropout_p a real number in [0, 1] (0: none, and
    the seed is not used); seed an integer in [0, 2**64). Without a seed the forward draws one from
    NumPy's global generator (np.random, as torch draws from its global one: np.random.seed makes
    calls reproducible); the backward cannot recover a drawn seed, so there it is required."""
    p = _real(func, "dropout_p", dropout_p, "a number in [0, 1]")
    if not 0 <= p <= 1:
        raise ValueError(f"{func}: dropout_p must be in [0, 1], got {dropout_p!r}")
    if seed is not None:
        seed = _integer(func, "seed", seed, 0)
        if seed >= _SEED_LIMIT:
            raise ValueError(f"{func}: seed must be in [0, 2**64), got {seed}")
    if p == 0:
        return 0.0, 0
    if seed is None:
        if backward:
            raise ValueError(
                f"{func}: dropout_p={dropout_p} needs the forward's seed: pass the same seed= to "
                f"the forward and the backward, so that the backward drops the same weights")
        seed = int(np.random.randint(0, 2 ** 63, dtype=np.int64))
    return p, seed


def _integer(func, name, value, at_least=None):
    """`value` as a Python int >= at_least (0: a size; 1: a count such as num_heads; None: any,
    as an axis). True and False are refused, as NumPy refuses them for an axis."""
    what = "a non-negative integer" if at_least == 0 else "an integer"
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{func}: {name} must be {what}, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{func}: {name} must be {what}, got {value!r}") from None
    if at_least is not None and value < at_least:
        raise ValueError(f"{func}: {name} must be a non-negative integer, got {value}" if at_least == 0
                         else f"{func}: {name} must be at least {at_least}, got {name}={value}")
    return value


def _score_term(func, name, value, arr, n_q, n_k):
    """mask= or bias= (`value`, read as `arr`) with at least 2 dims, the last two broadcasting to
    (n_q, n_k)."""
    if arr.ndim < 2:
        arr = arr.reshape((1,) * (2 - arr.ndim) + arr.shape)
    rows, cols = arr.shape[-2:]
    if rows not in (1, n_q) or cols not in (1, n_k):
        raise ValueError(
            f"{func}: {name}.shape={np.shape(value)} does not broadcast to the scores' shape "
            f"(..., n_q, n_k) = (..., {n_q}, {n_k}); its last two dimensions must be "
            f"{n_q} (or 1) and {n_k} (or 1)"
        )
    return arr


def _mask(func, mask, n_q, n_k, compute, bias=None):
    """The kernels' one mask (None, bool, or additive in the compute dtype) from mask= and bias=,
    ready to broadcast. This is the one place the two meet: a bias alone is an additive mask; with
    a bool mask it becomes bias where the mask allows and -inf where it does not; with a float
    mask the two are added. The merged array is as large as the two broadcast together: an
    (n_q, n_k) array where one varies along the queries only and the other along the keys only
    (the README says so; the kernels take one mask operand)."""
    arr = None
    if mask is not None:
        arr = _as_array(func, "mask", mask)
        if arr.dtype.kind in "iu":
            raise TypeError(
                f"{func}: mask has integer dtype {arr.dtype}, whose meaning is ambiguous; pass a "
                f"boolean mask (True = may attend), e.g. mask.astype(bool), or a float mask that "
                f"is added to the scores (0 = keep, -inf = hide)"
            )
        arr = _score_term(func, "mask", mask, arr, n_q, n_k)
        if arr.dtype.kind == "f":
            arr = _additive(arr, compute)
    if bias is None:
        return arr
    bias_arr = _as_array(func, "bias", bias)
    if bias_arr.dtype.kind == "b":
        raise TypeError(
            f"{func}: bias has dtype bool; bias= is a float added to the scores (e.g. ALiBi); "
            f"a boolean that says which keys a query may attend to goes in mask="
        )
    bias_arr = _additive(_score_term(func, "bias", bias, bias_arr, n_q, n_k), compute)
    if arr is None:
        return bias_arr
    try:
        merged = _broadcast_shapes([arr.shape, bias_arr.shape])
    except ValueError:
        raise ValueError(
            f"{func}: mask.shape={np.shape(mask)} and bias.shape={np.shape(bias)} do not "
            f"broadcast together; both broadcast against the scores (..., n_q, n_k)"
        ) from None
    if math.prod(merged) * compute.itemsize > np.iinfo(np.intp).max:
        raise ValueError(
            f"{func}: mask.shape={np.shape(mask)} and bias.shape={np.shape(bias)} broadcast to "
            f"{merged} ({math.prod(merged):,} elements), which is too large to allocate"
        )
    if arr.dtype.kind == "b":
        return np.where(arr, bias_arr, compute.type(-np.inf))
    # -inf + inf is NaN, as the scores' own sum makes it, silently as the kernels do (NumPy's
    # "invalid value encountered in add" pointed inside selfattn, and raised under all="raise")
    with np.errstate(over="ignore", invalid="ignore"):
        total = arr + bias_arr
    return _finite_where_finite(total, arr, bias_arr)


def _additive(arr, compute):
    """A float mask or bias in the compute dtype. A finite value beyond its range becomes its
    largest finite value, not inf: finfo(float64).min in a float32 call still only shifts the
    scores, as it does in a float64 call (a row it covers whole keeps its weights), where a cast
    made it -inf, which hides the key, with a bare "overflow encountered in cast"."""
    if arr.dtype == compute:
        return arr
    block = _repeated_block(arr)  # a broadcast mask stays one: cast what it repeats
    with np.errstate(over="ignore"):
        out = block.astype(compute)
    if arr.dtype.itemsize > compute.itemsize:
        out = _finite_where_finite(out, block)
    return np.broadcast_to(out, arr.shape) if block.shape != arr.shape else out


def _repeated_block(a):
    """The part of `a` that a broadcast view (stride 0 along some axes) repeats: `a` itself
    where it has no such axis."""
    return a[tuple(slice(0, 1) if step == 0 and n > 1 else slice(None)
                   for step, n in zip(a.strides, a.shape))]


def _finite_where_finite(out, *terms):
    """`out` (a new array, computed from `terms`) with each inf that no term holds, an overflow
    of finite values, made the largest finite value of its sign; boolean temporaries only."""
    overflowed = np.isinf(out)
    if overflowed.any():
        for term in terms:
            overflowed &= np.isfinite(term)
        big = np.finfo(out.dtype).max
        out[overflowed & (out > 0)] = big
        out[overflowed & (out < 0)] = -big
    return out


def _check_projections(func, X, W_q, W_k, W_v, heads=None, KV=None, kv_heads=None):
    """X is (..., n, d_model) and each W is (..., d_model, width), W_q and W_k of one width (which
    `heads`, when given, divides). With KV (cross-attention), W_k and W_v take KV's rows instead:
    (..., kdim, width) for KV of shape (..., n_k, kdim). With kv_heads (grouped-query attention),
    W_k and W_v have kv_heads heads of the queries' d_head (W_k is then narrower than W_q)."""
    _require_matrix(func, "X", X, "(seq_len, d_model)")
    if KV is not None:
        _require_matrix(func, "kv", KV, "(n_k, kdim)")
    width = "num_heads * d_head" if heads is not None else "d"
    for name, W in (("W_q", W_q), ("W_k", W_k), ("W_v", W_v)):
        src, src_name, dim = (X, "X", "d_model") if KV is None or name == "W_q" else (KV, "kv", "kdim")
        d_in = src.shape[-1]
        _require_matrix(func, name, W, f"({dim}, {width})")
        if W.shape[-2] != d_in:
            hint = ""
            if W.shape[-1] == d_in:
                hint = (f" {name} looks transposed: selfattn computes {src_name} @ {name}, so it "
                        f"must be ({dim}, {width}); transpose it ({name}.T, or drop a .T you "
                        f"added)")
            elif src.shape[-2] == W.shape[-2]:
                hint = (f" {src_name} looks transposed: its rows must be the tokens, "
                        f"({'seq_len' if src_name == 'X' else 'n_k'}, {dim}); transpose it "
                        f"({src_name}.T, or drop a .T you added)")
            raise ValueError(
                f"{func}: {src_name} has {dim}={d_in} ({src_name}.shape={src.shape}) but {name} "
                f"has {W.shape[-2]} rows ({name}.shape={W.shape}); each projection must be "
                f"({dim}, {width}) so that {src_name} @ {name} works.{hint}"
            )
        count, count_name = ((kv_heads, "num_kv_heads") if kv_heads is not None and name != "W_q"
                             else (heads, "num_heads"))
        if heads is not None and W.shape[-1] % count:
            raise ValueError(
                f"{func}: {name} has width {W.shape[-1]} ({name}.shape={W.shape}), which "
                f"{count_name}={count} does not divide; head h takes columns "
                f"[h * d_head, (h + 1) * d_head), so the width must be {count_name} * d_head"
            )
    if kv_heads is not None:
        if W_q.shape[-1] // heads != W_k.shape[-1] // kv_heads:
            raise ValueError(
                f"{func}: W_q makes query heads of d_head={W_q.shape[-1] // heads} "
                f"(W_q.shape={W_q.shape}, num_heads={heads}) but W_k makes key heads of "
                f"d_head={W_k.shape[-1] // kv_heads} (W_k.shape={W_k.shape}, "
                f"num_kv_heads={kv_heads}); W_k must be (kdim, num_kv_heads * d_head) with the "
                f"queries' d_head"
            )
    elif W_q.shape[-1] != W_k.shape[-1]:
        what = "d_k=" if heads is None else "width "
        raise ValueError(
            f"{func}: W_q makes queries of {what}{W_q.shape[-1]} (W_q.shape={W_q.shape}) but W_k "
            f"makes keys of {what}{W_k.shape[-1]} (W_k.shape={W_k.shape}); queries and keys must "
            f"have the same width to be compared"
        )


def _bias(func, name, b, W, what):
    """A projection bias: None, or an array (..., width) for the projection W (..., rows, width);
    its leading axes broadcast with W's batch axes."""
    if b is None:
        return None
    b = _as_array(func, name, b)
    if b.ndim < 1 or b.shape[-1] != W.shape[-1]:
        raise ValueError(
            f"{func}: {name}.shape={b.shape} but {what} has width {W.shape[-1]} "
            f"({what}.shape={W.shape}); {name} is added to every row of that projection, so it "
            f"must be ({W.shape[-1]},) (or (..., {W.shape[-1]}) with batch axes)"
        )
    return b


def _check_grad_shape(func, name, grad, expected, what):
    if grad.shape != tuple(expected):
        raise ValueError(
            f"{func}: {name} must have the shape of the forward {what}, {tuple(expected)}, got "
            f"{name}.shape={grad.shape}; {name} is the gradient of the loss with respect to that "
            f"{what}, one entry per entry of it"
        )


def _kv_groups(func, Q, K, V, enable_gqa, names=("Q", "K", "V")):
    """Grouped-query attention: (kv_heads, group) when K and V have fewer heads (axis -3) than Q,
    kv_heads dividing Q's heads (query head h uses K/V head h // group, as torch's enable_gqa);
    None when the head counts are equal or GQA is off. An array of 2 dimensions has one head."""
    q_name, k_name, v_name = names
    enable_gqa = _flag(func, "enable_gqa", enable_gqa)
    heads, kv_heads, v_heads = (A.shape[-3] if A.ndim >= 3 else 1 for A in (Q, K, V))
    if not enable_gqa:
        if (Q.ndim >= 3 and K.ndim >= 3 and 1 < kv_heads < heads and heads % kv_heads == 0
                and v_heads in (1, kv_heads)):
            raise ValueError(
                f"{func}: {q_name} has {heads} heads ({q_name}.shape={Q.shape}) but {k_name} has "
                f"{kv_heads} ({k_name}.shape={K.shape}); for grouped-query attention (query head "
                f"h uses key/value head h // {heads // kv_heads}) pass enable_gqa=True"
            )
        return None
    if kv_heads != v_heads:
        raise ValueError(
            f"{func}: with enable_gqa=True {k_name} and {v_name} must have the same number of "
            f"heads (axis -3), got {k_name}.shape={K.shape} and {v_name}.shape={V.shape}"
        )
    if kv_heads == heads:
        return None
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(
            f"{func}: enable_gqa=True needs the number of key/value heads to divide the number "
            f"of query heads (axis -3), got {heads} query heads ({q_name}.shape={Q.shape}) and "
            f"{kv_heads} key/value heads ({k_name}.shape={K.shape}); query head h uses key/value "
            f"head h // (num_heads / num_kv_heads)"
        )
    ndim, name = max(zip((Q.ndim, K.ndim, V.ndim), names))
    _axes_fit(func, name, ndim, 1, "groups of query heads sharing a key/value head")
    return kv_heads, heads // kv_heads


def _axes_fit(func, what, ndim, added, heads="heads"):
    """Refuses a call whose arrays of `ndim` dimensions (`what`'s, the largest) get `added` more
    inside it (the heads split out of a width, a group axis for shared K/V heads) past NumPy's
    limit on an array's dimensions (64; 32 before NumPy 2), where its bare ValueError named no
    function or argument."""
    limit = _max_dims()
    if ndim + added > limit:
        raise ValueError(
            f"{func}: {what} has {ndim} dimensions, and the {heads} take {added} more inside the "
            f"call: {ndim + added}, past NumPy's limit of {limit} dimensions for an array; merge batch "
            f"axes first (A.reshape(-1, *A.shape[-2:]), and the result back with .reshape)")


@functools.lru_cache(maxsize=None)
def _max_dims():
    """The most dimensions NumPy gives an array (NPY_MAXDIMS)."""
    for n in (64, 32):
        try:
            np.empty((1,) * n)
            return n
        except ValueError:
            continue
    return 32


def _kv_heads(func, num_kv_heads, heads):
    """multi_head_attention's num_kv_heads: None, or an int >= 1 that divides num_heads."""
    if num_kv_heads is None:
        return None
    kv_heads = _integer(func, "num_kv_heads", num_kv_heads, 1)
    if heads % kv_heads:
        raise ValueError(
            f"{func}: num_kv_heads={kv_heads} does not divide num_heads={heads}; in grouped-query "
            f"attention each key/value head serves num_heads / num_kv_heads query heads (query "
            f"head h uses key/value head h // (num_heads / num_kv_heads))"
        )
    return kv_heads


def _group_heads(A, kv_heads, group):
    """The view (..., kv_heads, group, n, d) of A (..., kv_heads * group, n, d): the query heads
    that share one K/V head side by side (group=1 for K and V themselves). No copy: splitting an
    axis is always a view."""
    return A.reshape(A.shape[:-3] + (kv_heads, group) + A.shape[-2:])


def _ungroup_heads(A):
    """(..., kv_heads, group, n, d) back to (..., kv_heads * group, n, d)."""
    return A.reshape(A.shape[:-4] + (A.shape[-4] * A.shape[-3],) + A.shape[-2:])


def _ungrouped_batch(batch, groups):
    """The caller's batch shape (..., heads) of a grouped call's batch (..., kv_heads, group): the
    shape its per-head arguments (dO, lengths) have. Its items, in C order, are the grouped
    batch's, one for one."""
    return batch if groups is None else batch[:-2] + (batch[-2] * batch[-1],)


def _grouped_operands(func, Q, K, V, enable_gqa):
    """(groups, Q, K, V): _kv_groups of the call and Q, K, V grouped by it (unchanged if None)."""
    groups = _kv_groups(func, Q, K, V, enable_gqa)
    if groups is None:
        return None, Q, K, V
    kv_heads, group = groups
    return groups, _group_heads(Q, kv_heads, group), _group_heads(K, kv_heads, 1), \
        _group_heads(V, kv_heads, 1)


def _group_mask(func, name, mask, groups):
    """The merged mask (..., heads or 1, n_q, n_k) grouped as the queries are (_group_heads)."""
    if groups is None or mask is None or mask.ndim < 3:
        return mask
    kv_heads, group = groups
    if mask.shape[-3] == 1:
        return _group_heads(mask, 1, 1)
    if mask.shape[-3] != kv_heads * group:
        raise ValueError(
            f"{func}: {name}.shape={mask.shape} has {mask.shape[-3]} along the head axis (-3) "
            f"but there are {kv_heads * group} query heads; a {name}'s head axis must be the "
            f"number of query heads or 1"
        )
    return _group_heads(mask, kv_heads, group)


# ---- step 3: dtypes ----------------------------------------------------------------------------

def _dtypes(*arrays):
    """(result dtype, compute dtype) for these inputs."""
    float_dtypes = [np.dtype(np.float64) if a.dtype.kind in "biu" else a.dtype for a in arrays]
    result = np.result_type(*float_dtypes).newbyteorder("=")
    compute = np.dtype(np.float32) if result == np.float16 else result
    return result, compute


# ---- step 4: batch shapes and sizes -----------------------------------------------------------

def _batch_shape(func, named):
    """Broadcast the leading (batch) dimensions of (name, array, core_ndim) triples."""
    shapes = [a.shape[: a.ndim - core] for _, a, core in named]
    try:
        return _broadcast_shapes(shapes)
    except ValueError:
        listed = ", ".join(f"{name}.shape[:-{core}]={s}" for (name, _, core), s in zip(named, shapes))
        raise ValueError(
            f"{func}: the batch (leading) dimensions do not broadcast: {listed}; each must be "
            f"equal or 1, as in np.matmul"
        ) from None


def _broadcast_shapes(shapes):
    """np.broadcast_shapes, for any number of dimensions: NumPy's stops at 32 (a RuntimeError
    naming no function), where NumPy 2's arrays, and np.matmul, take up to 64."""
    out = [1] * max((len(s) for s in shapes), default=0)
    for shape in shapes:
        for axis, extent in enumerate(shape, len(out) - len(shape)):
            if extent != 1:
                if out[axis] not in (1, extent):
                    raise ValueError("shapes do not broadcast")
                out[axis] = extent
    return tuple(out)


def _check_size(func, shape, dtype):
    count = math.prod(shape)
    if count * dtype.itemsize > np.iinfo(np.intp).max:
        raise ValueError(
            f"{func}: the result would have shape {tuple(shape)} ({count:,} elements), which is "
            f"too large to allocate"
        )


def _public_call(function=None, *, name=None, float32_helps=True):
    """`function` (a public one that computes) as the learner calls it; the wrapper's frame is
    hidden in pytest's tracebacks (and IPython's, but for the last frame), and _public_caller
    finds it on the stack.

    - A MemoryError names the call: the one rule for running out of memory, wherever the call
      ran out (NumPy's "Unable to allocate 335. GiB for an array with shape ...", or a kernel's
      scratch space, a bare MemoryError). _check_size refuses what no machine could address;
      this tells a learner which call asked for too much on this one. float32_helps=False for
      the mask makers, whose dtypes the caller does not choose.
    - An input error (a TypeError or ValueError whose message starts with the call's name, as
      every message of the checks does, or Python's for arguments the call does not take)
      leaves selfattn's frames out of its traceback but this one: the learner's line, then the
      message, which says all there is to fix. Any other error keeps its frames, for whoever
      debugs it."""
    if function is None:
        return functools.partial(_public_call, name=name, float32_helps=float32_helps)
    name = name or function.__name__
    # "f's backward" reports its own checks as "f's backward: ...", its forward's as "f: ..."
    prefixes = (f"{name}: ", f"{name.partition(chr(39) + 's ')[0]}: ")

    @functools.wraps(function)
    def call(*args, **kwargs):
        __tracebackhide__ = True
        try:
            return function(*args, **kwargs)
        except (TypeError, ValueError, FloatingPointError) as error:
            # ours by its message, or Python's for the arguments (raised before the call ran,
            # in this frame or, under _one_tier, a few frames down); a FloatingPointError of
            # ours: a float16 result's overflow under np.errstate(over="raise") (_narrowed)
            arguments = isinstance(error, TypeError) and not _binds(function, args, kwargs)
            if not (str(error).startswith(prefixes) or arguments):
                raise
            required = [p.name for p in inspect.signature(function).parameters.values()
                        if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty]
            if arguments and "required positional argument" in str(error) and len(required) > 1:
                # Python names the last argument missing, which is rarely the one left out
                # (backward(Q, K, V) lacks dO, not V): the arguments in their order say which
                raise TypeError(f"{error}; {name} takes {', '.join(required)}, in this order"
                                + (f" ({required[0]}, the gradient of the output, first)"
                                   if required[0] in ("dO", "dY") else "")) from None
            raise error.with_traceback(None)  # the learner's input: see the message
        except MemoryError as error:
            # from a public call inside this one: the outermost, the learner's call, is named
            what = (getattr(error, "_selfattn_what", None) or str(error)
                    or "the kernel could not allocate its scratch space")
            # float32 where NumPy's account says the array was float64, the one case it helps
            smaller = (", or float32 inputs (half the bytes)"
                       if float32_helps and "float64" in what else "")
            named = MemoryError(
                f"{name}: not enough memory for this call: {what}. Try smaller inputs (fewer "
                f"or shorter sequences, a smaller batch){smaller}.")
            named._selfattn_what = what
            raise named from None
    return call


def _binds(function, args, kwargs):
    """Whether Python takes these arguments for `function` (the one under its wrappers)."""
    try:
        inspect.signature(function).bind(*args, **kwargs)
    except TypeError:
        return False
    return True


_PUBLIC_CALL = _public_call(lambda: None, name="").__code__  # every public wrapper's frame runs it


def _public_caller():
    """(name, stacklevel) for a message about the public call running now: the outermost
    public function on the stack (the learner's call, as a MemoryError names it) and the
    stacklevel that makes warnings.warn, called by this function's caller, point at the line
    that called it. ("selfattn", 2) outside any public call. Walks the stack: only for the
    rare warning, never on a call's normal path."""
    name, level = "selfattn", 2
    frame, depth = sys._getframe(1), 1
    while frame is not None:
        if frame.f_code is _PUBLIC_CALL:
            name, level = frame.f_locals["name"], depth + 1
        frame, depth = frame.f_back, depth + 1
    return name, level


def _narrowed(out, dtype, what="result"):
    """out.astype(dtype) where dtype is narrower than the computation's (float16 results, computed
    in float32): the one rule for values beyond its range. They become inf, as NumPy's casts make
    them, and the overflow is reported as NumPy reports its own, by np.errstate's "over":
    ignored, a RuntimeWarning, FloatingPointError, printed, logged, or its call ("overflow",
    2), but naming the call and its remedy at the learner's line, where NumPy's bare "overflow
    encountered in cast" pointed inside selfattn (and NumPy before 1.24 said nothing). `what`
    names the array in the message: a call with several (a backward's gradients) says which."""
    mode = np.geterr()["over"]
    with np.errstate(over="ignore"):
        narrow = out.astype(dtype)
    if mode == "ignore":
        return narrow
    where = np.isinf(narrow) & np.isfinite(out)
    overflowed = np.count_nonzero(where)
    if not overflowed:
        return narrow
    if mode == "call":
        np.geterrcall()("overflow", 2)  # NumPy's arguments: the error's name, its FPE flag
        return narrow
    name, level = _public_caller()
    largest = float(np.finfo(dtype).max)
    negative = np.count_nonzero(np.signbit(narrow[where]))
    became = "-inf" if negative == overflowed else "inf or -inf" if negative else "inf"
    message = (
        f"{name}: {overflowed} of the {narrow.size} values of its {dtype} {what} "
        f"{'is' if overflowed == 1 else 'are'} beyond {dtype}'s range (largest {largest:g}) and "
        f"became {became}; selfattn computes {dtype} inputs in float32, so float32 inputs "
        f"(x.astype(np.float32)) keep them"
    )
    if mode == "raise":
        raise FloatingPointError(message)
    if mode == "warn":
        warnings.warn(message, RuntimeWarning, stacklevel=level)
    elif mode == "log":
        np.geterrcall().write(f"Warning: {message}\n")
    else:  # "print"
        sys.stderr.write(f"Warning: {message}\n")
    return narrow


# ---- the shared attention front end -----------------------------------------------------------

def _attention_operands(func, Q, K, V, mask, is_causal, scale, names=("Q", "K", "V"),
                        bias=None, window=None, groups=None):
    """Validated options and shapes for scores (V is None) or full attention:
    (batch, scale, visibility, mask, result dtype, compute dtype); the mask is mask= and bias=
    merged (_mask). With groups (_kv_groups), Q, K, V are already grouped (_group_heads) and the
    mask is grouped the same way."""
    q_name, k_name, v_name = names
    d_k = Q.shape[-1]
    if K.shape[-1] != d_k:
        hint = ""
        if K.shape[-2] == d_k:
            hint = (f" {k_name} looks transposed: pass {k_name} as (n_k, d_k), not {k_name}.T; "
                    f"selfattn transposes it for you")
        raise ValueError(
            f"{func}: {q_name} has d_k={d_k} ({q_name}.shape={Q.shape}) but {k_name} has "
            f"d_k={K.shape[-1]} ({k_name}.shape={K.shape}); the last dimensions of {q_name} and "
            f"{k_name} must match.{hint}"
        )
    n_q, n_k = Q.shape[-2], K.shape[-2]
    named = [(q_name, Q, 2), (k_name, K, 2)]
    arrays = [Q, K]
    if V is not None:
        if V.shape[-2] != n_k:
            raise ValueError(
                f"{func}: {k_name} has n_k={n_k} keys ({k_name}.shape={K.shape}) but {v_name} has "
                f"{V.shape[-2]} rows ({v_name}.shape={V.shape}); every key needs one value row, "
                f"so {v_name}.shape[-2] must equal {k_name}.shape[-2]"
            )
        named.append((v_name, V, 2))
        arrays.append(V)
    visibility = _visibility(func, is_causal, window)
    result, compute = _dtypes(*arrays)
    scale = _scale_fits(func, _scale(func, scale, d_k), compute)
    mask = _group_mask(func, "mask" if bias is None else "mask and bias",
                       _mask(func, mask, n_q, n_k, compute, bias), groups)
    if mask is not None:
        named.append(("mask" if bias is None else "mask and bias", mask, 2))
    batch = _batch_shape(func, named)
    return batch, scale, visibility, mask, result, compute
