"""The cases :func:`check` runs: named inputs with the output selfattn expects."""
from __future__ import annotations

import difflib
import itertools
import math
import re
from dataclasses import dataclass, field

import numpy as np

from .. import _api
from .._validate import _visibility
from .compare import TOLERANCES, _errors_at_the_call

_TOLERANCE_F32 = TOLERANCES[np.dtype(np.float32)]

#: The functions ``check`` knows, by their public names.
NAMES = (
    "compute_self_attention_scores",
    "softmax_attention_weights",
    "compute_attention_output",
    "self_attention_layer",
    "scaled_dot_product_attention",
)

# The functions whose result depends on the scale convention; they also take a band of visible
# keys (is_causal=, window=), where a learner writes causal or windowed attention.
_SCALED = ("compute_self_attention_scores", "self_attention_layer", "scaled_dot_product_attention")

_ARG_NAMES = {
    "compute_self_attention_scores": ("Q", "K"),
    "softmax_attention_weights": ("attn_scores",),
    "compute_attention_output": ("attn_weights", "V"),
    "self_attention_layer": ("X", "W_q", "W_k", "W_v"),
    "scaled_dot_product_attention": ("Q", "K", "V"),
}

#: ``(rtol, atol)`` by dtype: two results agree where ``|actual - desired| <= atol + rtol * |desired|``.
#: The coarser dtype of the two arrays decides; integers and booleans count as float64.

@dataclass(frozen=True, repr=False, eq=False)
class Case:
    """One input set for one function, with the output selfattn expects.

    Attributes
    ----------
    name : str
        The function this case is for, e.g. ``"softmax_attention_weights"``.
    id : str
        A short identifier, usable as a pytest id (``str(case)`` returns it).
    label : str
        A description in words, e.g. ``"unequal sizes n_q=3, n_k=5, d_k=4 (float64)"``.
    args : tuple of ndarray
        The positional arguments, in the notebook's order.
    expected : ndarray
        selfattn's result for ``args`` (with ``scale`` where the function has one), computed in
        float64 and rounded to the dtype of ``args``.
    scale : float or None
        The scale the expected result was computed with (None for functions without one).
    batched : bool
        The inputs have a leading batch dimension. The notebook's functions take one sequence, so
        :func:`check` reports these cases as notes, never as failures.
    large : bool
        The scores are large (hundreds to thousands) to catch a softmax that overflows.
    kwargs : dict
        The keyword arguments the case is for (``is_causal``, ``window``), passed to the function
        checked as ``fn(*case.args, **case.kwargs)``; empty for the notebook's plain cases.
    grouped : bool
        Grouped-query attention (``cases(..., gqa=True)``): K and V have fewer heads (axis -3)
        than Q, query head ``h`` using K/V head ``h // (H / H_kv)``.
    """
    name: str
    id: str
    label: str
    args: tuple
    expected: np.ndarray
    scale: float | None = None
    batched: bool = False
    large: bool = False
    kwargs: dict = field(default_factory=dict)
    grouped: bool = False

    @property
    def arg_names(self):
        return _ARG_NAMES[self.name]

    @property
    def inputs(self):
        """The arguments as a dict, by their names in the notebook."""
        return dict(zip(self.arg_names, self.args))

    @property
    def dtype(self):
        return self.expected.dtype

    def shapes(self):
        """``"Q (3, 4), K (5, 4)"``: the input shapes, as the report shows them."""
        return ", ".join(f"{n} {tuple(a.shape)}" for n, a in zip(self.arg_names, self.args))

    def call(self):
        """``"f(Q (3, 4), K (5, 4), is_causal=True)"``: the call check() makes, as the report
        shows it."""
        kwargs = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.name}({self.shapes()}{kwargs})"

    def __str__(self):
        return self.id

    def __repr__(self):
        return f"<Case {self.name}[{self.id}]: {self.shapes()} -> {tuple(self.expected.shape)}>"


_BACKWARD_HINT = ("{func} covers the forward functions ({names}). To check gradients you wrote, "
                  "compare each with selfattn's: assert_attention_close(your_dQ, "
                  "selfattn.scaled_dot_product_attention_backward(dO, Q, K, V)[0]), or for a "
                  "layer's, assert_attention_close(your_dW_q, "
                  "selfattn.self_attention_layer_backward(dY, X, W_q, W_k, W_v)[1]) (the "
                  "README's \"Checking a backward you wrote\")")


# the words of several notebook names, which tell none of them apart
_SHARED_WORDS = {"compute", "self", "attention"}
# words that make a name another operation than the notebook name it shares a word with
# (log_softmax is not the softmax)
_OTHER_OPERATION_WORDS = {"log", "logsumexp", "lse"}


def _check_name(func, name, fn=None):
    given = name is not None
    if not given:
        name = getattr(fn, "__name__", None)
    if name in NAMES:
        return name
    names = ", ".join(NAMES)
    words = set(re.split(r"[^a-z]+", re.sub(r"(?<=[a-z])(?=[A-Z])", "_", str(name)).lower()))
    if words & {"backward", "bwd", "grad", "grads", "gradient", "gradients", "vjp", "backprop"}:
        # the closest name is a forward one: "did you mean" would send the learner there
        raise ValueError(f"{func}: {name!r} looks like a backward; "
                         + _BACKWARD_HINT.format(func=func, names=names))
    close = difflib.get_close_matches(str(name), NAMES, n=1)
    if words & _OTHER_OPERATION_WORDS:
        close = []
    elif not close:   # "softmax", "my_scores": a word that one name alone has
        close = [n for n in NAMES if words & (set(n.split("_")) - _SHARED_WORDS)]
        close = close if len(close) == 1 else []
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    if not given:
        raise ValueError(
            f"{func}: cannot tell which function {name!r} implements{hint}; pass its name, "
            f"e.g. {func}(fn, 'softmax_attention_weights'). Known names: {names}"
        )
    raise ValueError(f"{func}: unknown name {name!r}{hint}; known names: {names}")


#: The scale conventions by name: raw dot products, or divided by sqrt(d_k) (None, as in selfattn).
CONVENTIONS = {"raw": 1.0, "scaled": None}


def _check_scale(func, scale, either=False):
    """`scale` as a number or None (scaled), or "either" where `either` allows it."""
    if scale is None:
        return None
    if isinstance(scale, str):
        if scale == "either" and either:
            return scale
        if scale == "either":
            raise ValueError(f'{func}: scale="either" is for check and assert_implementation, '
                             f'which try both conventions; each case here has one expected '
                             f'result, so pick one: "raw" (the notebook\'s Q @ K.T) or "scaled" '
                             f'(divided by sqrt(d_k), the default)')
        if scale in CONVENTIONS:
            return CONVENTIONS[scale]
        words = '"raw", "scaled"' + (' or "either"' if either else "")
        raise ValueError(f"{func}: scale must be {words} or a positive number, got {scale!r}")
    real = isinstance(scale, (int, float, np.integer, np.floating))
    if isinstance(scale, (bool, np.bool_)) or not real:
        raise TypeError(f"{func}: scale must be a positive number or None, got {scale!r}")
    scale = float(scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{func}: scale must be a finite positive number or None, got {scale}")
    return scale


def _effective_scale(scale, d_k):
    return 1.0 / math.sqrt(d_k) if scale is None else scale


def _normal(rng, shape, dtype, s=1.0):
    return (rng.standard_normal(shape) * s).astype(dtype)


def _large_integer_inputs(rng, shapes, low, high, scores_of, power, target=2400.0, qkv_of=None):
    """Integer-valued inputs whose scores reach +-`target` (before scaling), exact in float32 and
    float64 so that a learner's rounding cannot matter.

    The first array is multiplied by a small integer c to reach the target; it enters the scores
    `power` times (Q: once, X: twice). With `qkv_of` (Q, K and V from the arrays), a draw is kept
    only where a correct float32 answer cannot miss the float32 tolerance (_float32_safe).
    """
    for _ in range(1000):
        arrays = [rng.integers(low, high + 1, size=s).astype(np.float64) for s in shapes]
        scores = scores_of(arrays)
        reach = min(scores.max(), -scores.min())
        if reach < target / 16:
            continue  # too small to scale up by a small factor
        c = math.ceil((target / reach) ** (1.0 / power))
        arrays[0] *= c
        if np.abs(scores_of(arrays)).max() >= 2.0 ** 24:  # every product exact in float32
            continue
        if qkv_of is None or _float32_safe(*qkv_of(arrays)):
            return arrays
    raise RuntimeError("selfattn.testing: could not draw large-score inputs")  # pragma: no cover


def _float32_safe(q, k, v):
    """Whether any float32 computation of softmax(Q K^T * scale) @ V, at either convention's scale
    (1 or 1/sqrt(d_k)), stays within a quarter of the float32 tolerance of the exact result.

    The exact scores are representable, but a float32 kernel may round on the way (Q pre-scaled,
    the sum in another order): a score off by a few eps times sum_k |q_k k_k| moves an output by
    its weight times the distance of its V row from the output, which is large where two large
    scores (nearly) tie. And each weight carries a few roundings of its own, (n_k + 3) eps of the
    sum of w |v|. A draw where those bounds pass a quarter of atol + rtol |output| is drawn again:
    a learner's exact answer failed against selfattn's float32 one on 1-2% of the seeds.
    """
    rtol, atol = _TOLERANCE_F32
    eps = float(np.finfo(np.float32).eps)
    scores, terms = q @ k.T, np.abs(q) @ np.abs(k).T
    for scale in (1.0, 1.0 / math.sqrt(q.shape[-1])):
        weights = _softmax_np(scores * scale)
        out = weights @ v
        score_error = 4 * eps * scale * terms                              # (n_q, n_k)
        moved = np.einsum("ij,ij,ijc->ic", weights, score_error,
                          np.abs(v[None, :, :] - out[:, None, :]))
        rounded = (k.shape[0] + 3) * eps * (weights @ np.abs(v))
        if np.any(moved + rounded > 0.25 * (atol + rtol * np.abs(out))):
            return False
    return True


def _softmax_np(s, axis=-1):
    m = np.max(s, axis=axis, keepdims=True)
    e = np.exp(s - m)
    return e / e.sum(axis=axis, keepdims=True)


def _band_kwargs(func, name, is_causal, window):
    """The keyword arguments of a banded case (only those given), checked as selfattn checks
    them; only the functions with scores take them."""
    kwargs = {k: v for k, v in (("is_causal", is_causal), ("window", window))
              if v is not None and v is not False}
    if kwargs and name not in _SCALED:
        raise ValueError(f"{func}: is_causal and window apply to the functions with scores "
                         f"({', '.join(_SCALED)}), not to {name}")
    _visibility(func, is_causal, window)
    return kwargs


@_errors_at_the_call
def cases(name, *, scale=None, seed=0, batched=True, is_causal=False, window=None, gqa=False):
    """The named cases ``check`` runs for function `name`: inputs and expected output.

    For graders who write their own tests, one per case::

        @pytest.mark.parametrize("case", cases("softmax_attention_weights", batched=False), ids=str)
        def test_softmax(case):
            got = student.softmax_attention_weights(*[a.copy() for a in case.args])
            assert_attention_close(got, case.expected)

    The arrays of a case are read-only, so that one test cannot change the next one's inputs;
    pass copies to a function that may write to its arguments.

    Parameters
    ----------
    name : str
        One of :data:`NAMES`.
    scale : float or str, optional
        The convention the expected scores use: None or ``"scaled"`` means ``1/sqrt(d_k)``
        (selfattn's default), ``"raw"`` or ``1.0`` raw dot products ``Q @ K.T`` (what the
        notebook's text asks for: a student's raw scores fail every scaled case), another number
        that factor. Ignored by functions without scores.
    seed : int, optional
        Seed of the random inputs (the same seed gives the same cases).
    batched : bool, optional
        Include the cases with a leading batch dimension (optional for the notebook's 2-D functions).
    is_causal, window : optional
        For causal or windowed attention (the functions with scores): the expected results use
        them as selfattn does (``is_causal=True`` or ``"top_left"``, ``"bottom_right"``;
        ``window=(left, right)``), and each case's ``kwargs`` holds them for the call.
    gqa : bool, optional
        Add grouped-query and multi-query attention cases (scaled_dot_product_attention only):
        Q of shape ``(H, n_q, d_k)``, K and V of ``(H_kv, n_k, d)`` with fewer heads, query head
        ``h`` using K/V head ``h // (H / H_kv)``; the function is called ``fn(Q, K, V)`` and must
        group the heads itself (as jax does). :func:`check` adds ``enable_gqa=True`` for a function
        whose signature takes it (``selfattn``'s and torch's way).

    Returns
    -------
    list of Case
    """
    name = _check_name("cases", name)
    scale = _check_scale("cases", scale)
    kwargs = _band_kwargs("cases", name, is_causal, window)
    gqa = _check_gqa("cases", name, gqa)
    seed = _check_seed("cases", seed)
    # the draws and the expected results signal nothing whatever the caller's np.seterr (a
    # notebook's np.seterr(all="raise") made the float32 filter's underflow a FloatingPointError)
    with np.errstate(all="ignore"):
        return _build(name, scale, seed, batched, kwargs, gqa)


def _check_seed(func, seed):
    """The seed of the random inputs: a whole number >= 0 (NumPy's own refusal named neither the
    function nor the argument)."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{func}: seed must be a whole number, 0 or more (the seed of the random "
                         f"inputs), got {seed!r}")
    return int(seed)


def _build(name, scale, seed, batched, kwargs, gqa):
    rng = np.random.default_rng(seed)
    builder = _BUILDERS[name]
    out = []
    for id_, label, args, flags in itertools.chain(builder(rng), _gqa_cases(rng) if gqa else ()):
        args = tuple(np.ascontiguousarray(a) for a in args)
        for a in args:
            a.setflags(write=False)  # a grader's test cannot change the case for the next one
        case_scale = None
        # in float64, then rounded to the case's dtype: a float32 case expects the exact result
        # to float32's precision, not one float32 computation of it (selfattn's own rounds too)
        wide = tuple(a.astype(np.float64) for a in args)
        if name in _SCALED:
            d_k = args[1].shape[-1]  # K for scores and sdpa, W_q for the layer
            case_scale = _effective_scale(scale, d_k)
            grouped = {"enable_gqa": True} if flags.get("grouped") else {}
            expected = _REFERENCE[name](*wide, scale=case_scale, **kwargs, **grouped)
        else:
            expected = _REFERENCE[name](*wide)
        expected = expected.astype(np.result_type(*args))
        expected.setflags(write=False)
        if kwargs:
            label += " with " + ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        case = Case(name=name, id=id_, label=label, args=args, expected=expected, scale=case_scale,
                    batched=flags.get("batched", False), large=flags.get("large", False),
                    kwargs=dict(kwargs), grouped=flags.get("grouped", False))
        if batched or not case.batched:
            out.append(case)
    return out


_REFERENCE = {
    "compute_self_attention_scores": _api.compute_self_attention_scores,
    "softmax_attention_weights": _api.softmax_attention_weights,
    "compute_attention_output": _api.compute_attention_output,
    "self_attention_layer": _api.self_attention_layer,
    "scaled_dot_product_attention": _api.scaled_dot_product_attention,
}


def _qk_cases(rng, with_v):
    """Cases for the functions of (Q, K) or (Q, K, V)."""
    f64, f32 = np.float64, np.float32

    def qkv(n_q, n_k, d_k, d_v, dtype, batch=()):
        arrays = [_normal(rng, batch + (n_q, d_k), dtype), _normal(rng, batch + (n_k, d_k), dtype)]
        if with_v:
            arrays.append(_normal(rng, batch + (n_k, d_v), dtype))
        return arrays

    d_v_text = ", d_v=2" if with_v else ""
    yield "unequal-float64", f"unequal sizes n_q=3, n_k=5, d_k=4{d_v_text} (float64)", \
        qkv(3, 5, 4, 2, f64), {}
    # d_k = 6, not a square: elsewhere sqrt(d_k) is 2, which a hard-coded 2 (or sqrt(d_k) // 1)
    # would match
    yield "unequal-float32", f"unequal sizes n_q=3, n_k=5, d_k=6{d_v_text} (float32)", \
        qkv(3, 5, 6, 2, f32), {}
    v_text = (" = d_v", ", d_v=2") if with_v else ("", "")
    yield "square-float64", f"square: n_q = n_k = d_k{v_text[0]} = 4 (float64)", \
        qkv(4, 4, 4, 4, f64), {}
    yield "keys-as-wide-as-d_k", f"n_k = d_k = 4, n_q=3{v_text[1]} (float64)", \
        qkv(3, 4, 4, 2, f64), {}
    yield "single-token", "a single token: n_q = n_k = 1, d_k=4 (float64)", qkv(1, 1, 4, 2, f64), {}

    # Scores of about a thousand, exact in float32 and float64: a softmax without the max
    # subtraction overflows (exp(710) is inf in float64, exp(89) in float32).
    shapes = [(3, 4), (5, 4)] + ([(5, 2)] if with_v else [])
    for dtype, dname in ((f64, "float64"), (f32, "float32")):
        arrays = _large_integer_inputs(rng, shapes, -12, 12, lambda a: a[0] @ a[1].T, power=1,
                                       qkv_of=(lambda a: (a[0], a[1], a[2] / 4.0)) if with_v
                                       else None)
        if with_v:
            arrays[2] = arrays[2] / 4.0
        top = int(abs(arrays[0] @ arrays[1].T).max())
        yield f"large-scores-{dname}", f"large scores, |Q.K| up to {top} ({dname})", \
            [a.astype(dtype) for a in arrays], {"large": True}
    yield "batched-float64", "batched: a leading batch dimension of 2 (float64)", \
        qkv(3, 5, 4, 2, f64, batch=(2,)), {"batched": True}


def _check_gqa(func, name, gqa):
    if not isinstance(gqa, (bool, np.bool_)):
        raise TypeError(f"{func}: gqa must be True or False, got {gqa!r}")
    if gqa and name != "scaled_dot_product_attention":
        raise ValueError(f"{func}: gqa=True is for scaled_dot_product_attention (Q, K, V with "
                         f"fewer K/V heads than Q heads), not {name}")
    return bool(gqa)


def _gqa_cases(rng):
    """Grouped-query attention: K and V with fewer heads than Q (required when asked for)."""
    def qkv(heads, kv_heads, dtype):
        return [_normal(rng, (heads, 3, 4), dtype), _normal(rng, (kv_heads, 5, 4), dtype),
                _normal(rng, (kv_heads, 5, 2), dtype)]

    yield "grouped-query-float64", ("grouped-query: Q of 4 heads, K and V of 2 heads (each "
                                    "shared by 2 query heads), n_q=3, n_k=5, d_k=4, d_v=2 "
                                    "(float64)"), qkv(4, 2, np.float64), {"grouped": True}
    yield "multi-query-float32", ("multi-query: Q of 3 heads, K and V of 1 head shared by all, "
                                  "n_q=3, n_k=5, d_k=4, d_v=2 (float32)"), \
        qkv(3, 1, np.float32), {"grouped": True}


def _scores_cases(rng):
    return _qk_cases(rng, with_v=False)


def _sdpa_cases(rng):
    return _qk_cases(rng, with_v=True)


def _softmax_cases(rng):
    f64, f32 = np.float64, np.float32
    yield "unequal-float64", "n_q=3 queries, n_k=5 keys (float64)", [_normal(rng, (3, 5), f64, 1.5)], {}
    yield "unequal-float32", "n_q=3 queries, n_k=5 keys (float32)", [_normal(rng, (3, 5), f32, 1.5)], {}
    yield "square-float64", "square: n_q = n_k = 4 (float64)", [_normal(rng, (4, 4), f64, 1.5)], {}
    yield "single-token", "a single token: n_q = n_k = 1 (float64)", [_normal(rng, (1, 1), f64)], {}
    # Rows around +1000, -1000 and +300: exp overflows (inf / inf = NaN) or underflows (0 / 0).
    # The last row spans more than exp's range, from its first entry (the smallest) to its last
    # (the largest): subtracting the row's minimum, mean or first entry instead of its maximum
    # still overflows there, where a row that is only shifted does not.
    for dtype, big, wide, label in ((f64, 1000.0, 800.0, "(float64)"),
                                    (f32, 500.0, 120.0, "(float32)")):
        offsets = np.array([[big], [-big], [0.3 * big], [0.0]])
        rows = offsets + np.round(_normal(rng, (4, 5), f64, 3.0), 2)
        rows[3] = np.round([-wide, 0.9 * wide, 0.0, -0.5 * wide, wide] + rows[3], 2)
        yield (f"large-scores-{np.dtype(dtype).name}",
               f"large scores: rows around {big:g}, {-big:g} and {0.3 * big:g}, and one from "
               f"{-wide:g} to {wide:g} {label}", [rows.astype(dtype)], {"large": True})
    yield "batched-float64", "batched: a leading batch dimension of 2 (float64)", \
        [_normal(rng, (2, 3, 5), f64, 1.5)], {"batched": True}


def _output_cases(rng):
    f64, f32 = np.float64, np.float32

    def wv(n_q, n_k, d_v, dtype, batch=()):
        weights = _softmax_np(rng.standard_normal(batch + (n_q, n_k)) * 1.5)
        return [weights.astype(dtype), _normal(rng, batch + (n_k, d_v), dtype)]

    yield "unequal-float64", "unequal sizes n_q=3, n_k=5, d_v=2 (float64)", wv(3, 5, 2, f64), {}
    yield "unequal-float32", "unequal sizes n_q=3, n_k=5, d_v=2 (float32)", wv(3, 5, 2, f32), {}
    yield "square-float64", "square: n_q = n_k = d_v = 4 (float64)", wv(4, 4, 4, f64), {}
    yield "single-token", "a single token: n_q = n_k = 1, d_v=2 (float64)", wv(1, 1, 2, f64), {}
    yield "batched-float64", "batched: a leading batch dimension of 2 (float64)", \
        wv(3, 5, 2, f64, batch=(2,)), {"batched": True}


def _layer_cases(rng):
    f64, f32 = np.float64, np.float32

    def xw(n, d_model, d_k, d_v, dtype, batch=()):
        s = 1.0 / math.sqrt(d_model)
        return [_normal(rng, batch + (n, d_model), dtype), _normal(rng, (d_model, d_k), dtype, s),
                _normal(rng, (d_model, d_k), dtype, s), _normal(rng, (d_model, d_v), dtype, s)]

    yield "unequal-float64", "unequal sizes n=5 tokens, d_model=6, d_k=4, d_v=3 (float64)", \
        xw(5, 6, 4, 3, f64), {}
    # d_k = 3, not a square (as in _qk_cases), nor 2 (where / d_k would be / 2)
    yield "unequal-float32", "unequal sizes n=5 tokens, d_model=6, d_k=3, d_v=3 (float32)", \
        xw(5, 6, 3, 3, f32), {}
    yield "square-float64", "square: n = d_model = d_k = d_v = 4 (float64)", xw(4, 4, 4, 4, f64), {}
    yield "single-token", "a single token: n=1, d_model=6, d_k=4, d_v=3 (float64)", \
        xw(1, 6, 4, 3, f64), {}
    shapes = [(5, 6), (6, 4), (6, 4), (6, 3)]

    def scores_of(a):
        return (a[0] @ a[1]) @ (a[0] @ a[2]).T

    for dtype, dname in ((f64, "float64"), (f32, "float32")):
        arrays = _large_integer_inputs(rng, shapes, -3, 3, scores_of, power=2,
                                       qkv_of=lambda a: (a[0] @ a[1], a[0] @ a[2], a[0] @ a[3]))
        top = int(abs((arrays[0] @ arrays[1]) @ (arrays[0] @ arrays[2]).T).max())
        yield f"large-scores-{dname}", f"large scores, |Q.K| up to {top} ({dname})", \
            [a.astype(dtype) for a in arrays], {"large": True}
    yield "batched-float64", "batched: X with a leading batch dimension of 2 (float64)", \
        xw(5, 6, 4, 3, f64, batch=(2,)), {"batched": True}


_BUILDERS = {
    "compute_self_attention_scores": _scores_cases,
    "softmax_attention_weights": _softmax_cases,
    "compute_attention_output": _output_cases,
    "self_attention_layer": _layer_cases,
    "scaled_dot_product_attention": _sdpa_cases,
}
