"""The known mistakes: each one a wrong variant of the computation, with its hint in words.

Each mistake has a key and a hint in the learner's words. A hint never names a case's sizes, so
that the report can list each mistake once however many cases show it.
"""
from __future__ import annotations

import collections
import math

import numpy as np

from .cases import _softmax_np



class _Hint(str):
    """A hint's text, with the keys of the mistakes it names (for counting them across a class)."""
    keys = ()


def _hint(text, *keys):
    hint = _Hint(text)
    hint.keys = tuple(dict.fromkeys(k for k in keys if k))
    return hint


def _combine(hint, also):
    """One hint for a mistake made together with a wrong scale."""
    return _hint(hint + " Also: " + also, *hint.keys, *also.keys)


_RAW_NOT_ASKED = (
    "Your scores are the raw dot products Q @ K.T, without the 1/sqrt(d_k) factor, but check was "
    "asked for scaled dot-product attention (scale=\"scaled\": dot products divided by "
    "sqrt(d_k)). Raw dot products, as the self-attention notebook's text asks, pass with "
    "scale=\"raw\" or scale=\"either\" (check's default). Otherwise divide the scores by "
    "np.sqrt(d_k), where d_k = K.shape[-1]."
)

# _RAW_NOT_ASKED as a grader tells it (_course_voice): the teacher chose the convention
_RAW_IN_A_SCALED_COURSE = (
    "Your scores are the raw dot products Q @ K.T, without the 1/sqrt(d_k) factor, but the course "
    "asks for scaled dot-product attention (dot products divided by sqrt(d_k)): divide the "
    "scores by np.sqrt(d_k), where d_k = K.shape[-1]."
)


def _course_voice(hint):
    """A hint as a grader with a scale the teacher pinned tells it: the student cannot pass a
    scale to the grade, so the scale hints say what the course asks for, not how to call check
    with another scale. Other hints are returned as they are."""
    text = str(hint).replace(_RAW_NOT_ASKED, _RAW_IN_A_SCALED_COURSE)
    text = text.replace(" Remove the factor, or, if your course uses scaled dot-product "
                        "attention, check with scale=\"scaled\" or scale=\"either\".",
                        " Remove the factor.")
    text = text.replace("check was asked for the raw convention (scale=\"raw\")",
                        "the course asks for the raw convention")
    text = text.replace("check was asked for", "the course asks for")
    return hint if text == hint else _hint(text, *getattr(hint, "keys", ()))


_HINTS = {
    "dk": "Your scores are divided by d_k (or by sqrt(d_k) twice). Scaled dot-product attention "
          "divides by sqrt(d_k) once: Q @ K.T / np.sqrt(d_k).",
    "sqrt_nk": "Your scores are divided by the square root of the number of keys (K.shape[0]) "
               "instead of sqrt(d_k), the length of each key vector: d_k = K.shape[-1].",
    "sqrt_nq": "Your scores are divided by the square root of the number of queries (Q.shape[0]) "
               "instead of sqrt(d_k), the length of each query vector: d_k = Q.shape[-1].",
    "sqrt_n": "Your scores are divided by the square root of the number of tokens, n = X.shape[0] "
              "(here also len(Q) and len(K)), instead of sqrt(d_k), the width of Q and K: "
              "d_k = W_q.shape[-1].",
    "sqrt_dmodel": "Your scores are divided by sqrt(d_model), the width of X (X.shape[-1]), instead "
                   "of sqrt(d_k), the width of Q and K (W_q.shape[-1]).",
    "sqrt_dv": "Your scores are divided by sqrt(d_v), the width of V (V.shape[-1]), instead of "
               "sqrt(d_k), the width of Q and K: d_k = K.shape[-1].",
    "times_sqrt_dk": "Your scores are multiplied by sqrt(d_k); scaled dot-product attention "
                     "divides by it: Q @ K.T / np.sqrt(d_k).",
    "scores_transposed": "Your scores are transposed: rows must be queries and columns keys, so "
                         "compute Q @ K.T (not K @ Q.T, and not Q and K swapped).",
    "k_not_transposed": "K is not transposed: the scores are Q @ K.T, shapes (n_q, d_k) @ (d_k, n_k). "
                        "Q @ K only runs when n_k == d_k, and then gives wrong numbers.",
    "qt_k": "Your result looks like Q.T @ K, a (d_k, d_k) matrix; the scores need one row per "
            "query and one column per key: Q @ K.T.",
    "axis": "Softmax over the wrong axis: your weights sum to 1 down each column, but each row "
            "(one query's weights over all the keys) must sum to 1. Normalise over the last axis: "
            "e / e.sum(axis=-1, keepdims=True).",
    "axis_all": "Softmax over the whole matrix: you divided by the sum of all entries, so the "
                "whole matrix sums to 1. Each row must sum to 1: e / e.sum(axis=-1, keepdims=True).",
    "no_keepdims_sum": "A sum without keepdims: e.sum(axis=-1) has shape (n,), which NumPy lines "
                       "up with the columns, so entry [i, j] is divided by the sum of row j. Use "
                       "e.sum(axis=-1, keepdims=True) (shape (n, 1)) so that each row is divided "
                       "by its own sum.",
    "no_keepdims_max": "A max without keepdims: s.max(axis=-1) has shape (n,), which NumPy lines up "
                       "with the columns, so entry [i, j] has the maximum of row j subtracted. Use "
                       "s.max(axis=-1, keepdims=True).",
    "no_keepdims_both": "max and sum without keepdims: s.max(axis=-1) and e.sum(axis=-1) have shape "
                        "(n,), which NumPy lines up with the columns. Use keepdims=True for both.",
    "no_max": "No max subtraction: np.exp overflows for large scores (exp(710) is already inf in "
              "float64, exp(89) in float32) and inf / inf gives NaN (very negative rows give "
              "0 / 0). Softmax does not change if you subtract the same number from a whole row, "
              "so subtract each row's maximum first: e = np.exp(s - s.max(axis=-1, keepdims=True)).",
    "shift_not_max": "You subtract a number from each row, but not its maximum (its minimum, its "
                     "mean or its first entry?): where a row's scores spread wider than exp's "
                     "range (exp(710) is inf in float64, exp(89) in float32) the exponentials "
                     "still overflow. Subtract each row's maximum: "
                     "s - s.max(axis=-1, keepdims=True).",
    "global_max": "You subtracted the maximum of the whole matrix (s.max()), not of each row: rows "
                  "far below that maximum underflow to 0 / 0 = NaN. Subtract each row's own "
                  "maximum: s - s.max(axis=-1, keepdims=True).",
    "no_exp": "np.exp is missing: you divided the scores by their row sums. Softmax exponentiates "
              "first: e = np.exp(s - s.max(axis=-1, keepdims=True)); e / e.sum(axis=-1, keepdims=True).",
    "not_normalised": "The exponentials are not normalised: divide each row by its sum, "
                      "e / e.sum(axis=-1, keepdims=True), so that every row sums to 1.",
    "scaled_in_softmax": "You scale the scores inside the softmax. Softmax takes the scores as "
                         "they are; the 1/sqrt(d_k) scaling belongs to the scores step.",
    "weights_out_transposed": "Your weights are transposed: keep the layout of the scores (rows are "
                              "queries, columns are keys), normalise each row (axis=-1) and do not "
                              "transpose the result.",
    "weights_transposed": "The weights are transposed: the output is attn_weights @ V, so that "
                          "row i mixes the value rows with query i's weights, not attn_weights.T @ V.",
    "result_transposed": "Your result is transposed: rows must be the queries (tokens). Compute "
                         "attn_weights @ V, not V.T @ attn_weights.T, and do not transpose the result.",
    "elementwise": "You multiplied elementwise (attn_weights * V). The output is a matrix "
                   "product: attn_weights @ V.",
    "no_projection": "X is not projected: Q, K and V are X @ W_q, X @ W_k and X @ W_v, and the "
                     "output mixes the rows of V, not of X.",
    "k_from_wq": "K is computed with W_q: K = X @ W_k.",
    "v_from_wk": "V is computed with W_k (or W_q): V = X @ W_v.",
    "projection_order": "The projections are multiplied the wrong way round: Q = X @ W_q, with X "
                        "of shape (n, d_model) and W_q of shape (d_model, d_k).",
    "precision": "Your result is right to the precision of a smaller dtype: you compute in "
                 "float32 (or float16) although the inputs are float64. Keep the inputs' dtype "
                 "(no astype(np.float32) or dtype=np.float32).",
    "masked_finite": "Your masked scores are a large negative number (such as -1e9) where "
                     "selfattn's are -inf. The softmax gives both weight 0 while a row has a key "
                     "it may see, but -1e9 is still a score: a row whose every key is masked "
                     "gets equal weights over keys it may not see, where -inf gives it none. "
                     "Mask with -np.inf: np.where(mask, scores, -np.inf).",
    "mutated": "Your function changes its input in place (for example attn_scores -= ... or "
               "np.exp(x, out=x)). The caller's arrays must stay as they were: write "
               "x = x - x.max(axis=-1, keepdims=True) instead of x -= ....",
    "returned_none": ("Your function returned None: it still ends in `pass` or returns the "
                      "template's placeholder (`scores = None`), or it lacks a `return`."),
    "returned_tuple": "Your function returns a tuple; it must return a single array "
                      "(for self_attention_layer: only the output, not the weights).",
    "not_array": "Your function must return a NumPy array of numbers.",
    "returned_scalar": "Your function returns a single number, not an array with one entry per "
                       "query (and per key or output column): return the whole array, without "
                       "a float(...), .item(), .sum() or index that reduces it to one number.",
    "unknown": "Your result differs from selfattn's and matches none of the mistakes check() knows. "
               "Compare step by step with selfattn's functions on the same inputs "
               "(selfattn.testing.cases(name) has them, with the expected outputs); "
               "selfattn.explain(X, W_q, W_k, W_v) shows every intermediate of a layer.",
    "raised_matmul": "A matrix product got shapes that do not fit. Check every @ against the shapes "
                     "you expect: {products}. A missing or extra .T only works by luck when two "
                     "sizes are equal, which is why check() uses unequal sizes.",
    "raised_broadcast": "Shapes that do not broadcast: a row sum or max taken without keepdims "
                        "has shape (n_q,), which NumPy lines up with the columns. Use "
                        "keepdims=True: e / e.sum(axis=-1, keepdims=True).",
    "raised_elementwise": "Shapes that do not broadcast: the output is the matrix product "
                          "attn_weights @ V (np.matmul), not an elementwise product attn_weights * V.",
    "raised_elementwise_scores": "Shapes that do not broadcast: the scores are the matrix product "
                                 "Q @ K.T (np.matmul), not an elementwise product Q * K.",
    "raised_signature": "Your function does not take the arguments check() passes: "
                        "{call}, in that order. Check its parameters, or pass the right "
                        "name to check().",
    "raised_keyword": "Your function does not take {names}, which check() passes because you "
                      "asked for {asked}: add {them} to its parameters, def {call}, and use "
                      "{them} in its body.",
    "raised_none": "Something was None: a function you call (perhaps one of your own) still ends "
                   "in `pass` or lacks a `return`.",
    "raised_name": "A name is not defined: run the cell that defines it (and `import numpy as np`).",
    "raised": "Your function raised an exception on these inputs; each case it failed shows the message and the line of your code.",
    "raised_underflow": "np.errstate or np.seterr with under=\"raise\" (or all=\"raise\") turned an "
                        "underflow into an exception: exp of a very negative number is 0, which "
                        "a correct softmax gets for the scores far below its row's maximum. Raise "
                        "only on what is wrong: np.errstate(over=\"raise\", invalid=\"raise\", "
                        "divide=\"raise\").",
    "output_is_weights": "Your function returns attn_weights itself: the output is each query's "
                         "weighted sum of the value rows, attn_weights @ V.",
    "residual": "Your layer adds X to the attention output (a residual connection). The "
                "notebook's self_attention_layer returns the attention output alone; the residual "
                "belongs to the transformer block around it.",
    "returns_weights": "Your layer returns the attention weights; it must return the output, "
                       "attn_weights @ V (one row per token, d_v columns).",
    "all_wq": "Q, K and V are all computed with W_q: K = X @ W_k and V = X @ W_v.",
    "no_softmax": "The softmax is missing: the scores go straight into the product with V. "
                  "Turn them into weights first: softmax_attention_weights(scores) @ V.",
    "v_at_weights": "The product is the wrong way round: the output is attn_weights @ V "
                    "(n_q, n_k) @ (n_k, d_v), not V @ attn_weights.",
    "floor_div": "Your scale uses // (floor division), which rounds down to whole numbers: "
                 "write Q @ K.T / np.sqrt(d_k) with a single /.",
    "fixed_scale": "Your scores are divided by the number 2, which is sqrt(d_k) only where "
                   "d_k = 4: take d_k from the inputs, Q @ K.T / np.sqrt(K.shape[-1]).",
    "zero_scale": "Your scores are all multiplied by 0: 1 // np.sqrt(d_k) is 0.0. Use "
                  "1 / np.sqrt(d_k) (a single /).",
    "int_inputs": "Your function turns its inputs into integers (np.array(x, dtype=int), "
                  "x.astype(int) or int(...)), which cuts off their fractions: keep them as they "
                  "are, or convert with np.asarray(x, dtype=float).",
    "int_buffer": "Your result, or the weights it is made from, is rounded towards zero to "
                  "whole numbers: the array you fill "
                  "was created with an integer dtype (np.zeros(shape, dtype=int), or from "
                  "integer inputs), so each value you store is truncated. Create it with "
                  "np.zeros(shape) (float64) or dtype=X.dtype.",
    "returned_list": "Your function returns a Python list; return an np.ndarray (np.array(rows), "
                     "or better, compute with NumPy operations such as @).",
    "returned_foreign": "Your function returns another library's array (a torch tensor, say); "
                        "the notebook's functions take and return NumPy arrays, which the next "
                        "step computes with: compute with NumPy, or return np.asarray(result) "
                        "(a torch tensor: result.detach().numpy()).",
    "mixed_scale": "Your scores are raw dot products in some cases and scaled by 1/sqrt(d_k) in "
                   "others (or in some functions and not others): use one convention throughout.",
    "grouped": "In grouped-query attention K and V have fewer heads (axis -3) than Q, and query "
               "head h uses K/V head h // (H / H_kv): repeat each K/V head for its group, e.g. "
               "np.repeat(K, Q.shape[-3] // K.shape[-3], axis=-3), then attend as usual.",
}
_HINTS = {key: _hint(text, key) for key, text in _HINTS.items()}
# The layer's (and sdpa's) transposed scores: the same numbers come from a softmax that transposes
# its input, so the hint names both; one mistake in the class summary, whichever step made it
_SCORES_TRANSPOSED_THROUGH_SOFTMAX = _hint(
    "Your weights are the softmax of the transposed scores: rows must "
    "be queries and columns keys. Either the scores are transposed "
    "(compute Q @ K.T, not K @ Q.T, and not Q and K swapped), or your "
    "softmax transposes what it is given (it must normalise each row of "
    "the scores as they are).", "scores_transposed")
# And the layer's weights.T @ V: the output step's mistake, or a softmax returning its weights
# transposed
_WEIGHTS_TRANSPOSED_IN_LAYER = _hint(
    _HINTS["weights_transposed"] + " In a layer, your softmax may be what transposes them (it "
    "must return one row per query) while the output step is right.", "weights_transposed")

#: A short name for each mistake, as the class summary of ``python -m selfattn grade`` counts them.
TITLES = {
    "dk": "scores divided by d_k", "sqrt_nk": "sqrt(n_k) instead of sqrt(d_k)",
    "sqrt_nq": "sqrt(n_q) instead of sqrt(d_k)", "sqrt_n": "sqrt(n) instead of sqrt(d_k)",
    "sqrt_dmodel": "sqrt(d_model) instead of sqrt(d_k)",
    "scores_transposed": "scores transposed (K @ Q.T, or by the softmax)", "k_not_transposed": "K not transposed",
    "qt_k": "Q.T @ K", "axis": "softmax over axis 0", "axis_all": "softmax over the whole matrix",
    "no_keepdims_sum": "sum without keepdims", "no_keepdims_max": "max without keepdims",
    "no_keepdims_both": "max and sum without keepdims", "no_max": "no max subtraction",
    "shift_not_max": "row min, mean or first entry subtracted, not the max",
    "global_max": "global max subtracted", "no_exp": "np.exp missing",
    "not_normalised": "weights not normalised", "scaled_in_softmax": "scaled inside the softmax",
    "weights_out_transposed": "softmax returns transposed weights",
    "weights_transposed": "attn_weights.T @ V", "result_transposed": "result transposed",
    "elementwise": "elementwise * instead of @", "no_projection": "X not projected",
    "k_from_wq": "K from W_q", "v_from_wk": "V from W_k or W_q", "all_wq": "W_q for Q, K and V",
    "projection_order": "projections the wrong way round", "precision": "computed in float32",
    "masked_finite": "masked with -1e9 rather than -inf", "raised_keyword": "no is_causal=/window=",
    "epsilon": "an epsilon in the softmax's denominator",
    "mutated": "input changed in place", "returned_none": "returns None",
    "returned_tuple": "returns a tuple", "not_array": "returns no array",
    "returned_list": "returns a list", "returned_foreign": "returns another library's array",
    "returned_scalar": "returns a single number", "returns_weights": "layer returns the weights",
    "output_is_weights": "output returns the weights", "residual": "X added to the output",
    "no_softmax": "softmax skipped", "v_at_weights": "V @ attn_weights",
    "floor_div": "// in the scale", "zero_scale": "scale 1 // sqrt(d_k) = 0",
    "fixed_scale": "scale typed in as 2 (sqrt(d_k) for d_k = 4)",
    "int_buffer": "integer result buffer", "int_inputs": "inputs made integers", "mixed_scale": "raw and scaled scores mixed",
    "scale_raw": "raw scores where scaled were asked", "scale_sqrt_dk": "scaled where raw was asked",
    "scale_dk": "scores divided by d_k", "scale_sqrt_nk": "sqrt(n_k) instead of sqrt(d_k)",
    "scale_sqrt_nq": "sqrt(n_q) instead of sqrt(d_k)", "scale_sqrt_n": "sqrt(n) instead of sqrt(d_k)",
    "scale_sqrt_dmodel": "sqrt(d_model) instead of sqrt(d_k)",
    "sqrt_dv": "sqrt(d_v) instead of sqrt(d_k)", "scale_sqrt_dv": "sqrt(d_v) instead of sqrt(d_k)",
    "times_sqrt_dk": "multiplied by sqrt(d_k)", "scale_times_sqrt_dk": "multiplied by sqrt(d_k)",
    "raised_matmul": "raised: shapes do not fit a matrix product",
    "raised_broadcast": "raised: shapes do not broadcast",
    "raised_elementwise": "raised: elementwise * instead of @",
    "raised_elementwise_scores": "raised: Q * K instead of Q @ K.T",
    "raised_signature": "wrong parameters", "raised_none": "raised: a value is None",
    "raised_name": "raised: undefined name", "raised": "raised an exception",
    "raised_underflow": "raised on a harmless underflow",
    "unknown": "an unrecognised mistake", "batched": "no batch support",
    "grouped": "K/V heads not shared by query-head groups",
}


def _precision_hint(got, inputs):
    """The "precision" hint for a result of dtype `got` from inputs of the wider `inputs`."""
    if (got, inputs) == (np.float32, np.float64):
        return _HINTS["precision"]
    # (one text whatever the inputs: a float16 result of float32 and of float64 inputs is one
    # mistake, said once)
    got = np.dtype(got).name
    return _hint(f"Your result is right to the precision of a smaller dtype: you compute in {got}, "
                 f"smaller than the inputs' dtype. Keep the inputs' dtype (no astype(np.{got}) or "
                 f"dtype=np.{got}).", "precision")


def _epsilon_hint(eps):
    """The hint for a softmax that divides by the row's sum plus `eps` (None: of a size that
    cannot be told, as where the exps are shifted by a number the result does not show)."""
    size, shown = (f" (about {eps:.0e})", f"{eps:.0e}") if eps is not None else ("", "eps")
    return _hint(f"Your softmax adds a small number{size} to its denominator: "
                 f"e / (e.sum(axis=-1, keepdims=True) + {shown}). With each row's maximum "
                 f"subtracted the sum is at least 1, so it never divides by 0, and the epsilon "
                 f"only makes each row sum to a little less than 1: drop it.", "epsilon")


def _scale_hint(key, user_scale, either=False):
    """The hint for scores scaled by the variant `key` when the case wanted `user_scale`.

    With `either`, raw and 1/sqrt(d_k) are both accepted: the convention not being compared
    against is then a mix of the two, and a wrong factor is named without a convention to blame.
    """
    scale_key = "scale_" + key
    if either and key in ("raw", "sqrt_dk"):
        return _hint(_HINTS["mixed_scale"], "mixed_scale")
    if either:
        return _hint(_HINTS[key] + " (Raw dot products, without any factor, are accepted too.)",
                     scale_key)
    if key == "raw":
        if user_scale is None:
            return _hint(_RAW_NOT_ASKED, scale_key)
        return _hint(f"Your scores are the raw dot products Q @ K.T, but check was asked for "
                     f"scale={user_scale:g}: multiply the dot products by it.", scale_key)
    if user_scale == 1.0:
        what = {"sqrt_dk": "divided by sqrt(d_k)", "dk": "divided by d_k",
                "sqrt_nk": "divided by sqrt(n_k), the number of keys",
                "sqrt_nq": "divided by sqrt(n_q), the number of queries",
                "sqrt_n": "divided by sqrt(n), the number of tokens",
                "sqrt_dmodel": "divided by sqrt(d_model), the width of X",
                "sqrt_dv": "divided by sqrt(d_v), the width of V",
                "times_sqrt_dk": "multiplied by sqrt(d_k)"}[key]
        return _hint(f"Your scores are {what}, but check was asked for the raw convention "
                     f"(scale=\"raw\"), where the scores are the plain dot products Q @ K.T. "
                     f"Remove the factor, or, if your course uses scaled dot-product "
                     f"attention, check with scale=\"scaled\" or scale=\"either\".", scale_key)
    if key == "sqrt_dk" and user_scale is not None:
        return _hint(f"Your scores are divided by sqrt(d_k), but check was asked for "
                     f"scale={user_scale:g}: multiply the dot products by that instead.", scale_key)
    return _hint(_HINTS[key], scale_key)


def _alt_scales(user_scale, s_ref, dims):
    """(key, scale) of the scalings a learner may have used instead of `s_ref`."""
    d_k = dims["d_k"]
    out = [("raw", 1.0), ("sqrt_dk", 1 / math.sqrt(d_k)), ("dk", 1.0 / d_k),
           ("times_sqrt_dk", math.sqrt(d_k))]
    for key, dim in (("sqrt_nk", "n_k"), ("sqrt_nq", "n_q"), ("sqrt_n", "n"),
                     ("sqrt_dmodel", "d_model"), ("sqrt_dv", "d_v")):
        if dim in dims:
            out.append((key, 1 / math.sqrt(dims[dim])))
    # Two variants may give the same factor on a case (sqrt(n_k) is 1 for one key, sqrt(n_q) is
    # sqrt(d_k) where n_q = d_k): both are kept, and the report names the one that explains the
    # other cases too (so that sqrt(n_q) is not also reported as raw and scaled scores mixed).
    return [(key, s) for key, s in out if abs(s - s_ref) > 1e-12 * s_ref]


def _swap(a):
    return np.swapaxes(a, -1, -2)


def _softmax_mistakes(s):
    """(key, weights) of the softmax mistakes that can be computed on scores `s`."""
    with np.errstate(all="ignore"):
        out = [("axis", _softmax_np(s, axis=-2))]
        e_all = np.exp(s - s.max(axis=(-2, -1), keepdims=True))
        out.append(("axis_all", e_all / e_all.sum(axis=(-2, -1), keepdims=True)))
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        out.append(("axis_all", e / e.sum(axis=(-2, -1), keepdims=True)))   # each row's max
        if s.shape[-1] == s.shape[-2]:
            m_cols = s.max(axis=-1)[..., None, :]
            out.append(("no_keepdims_sum", e / e.sum(axis=-1)[..., None, :]))
            e_bad = np.exp(s - m_cols)
            out.append(("no_keepdims_max", e_bad / e_bad.sum(axis=-1, keepdims=True)))
            out.append(("no_keepdims_both", e_bad / e_bad.sum(axis=-1)[..., None, :]))
        naive = np.exp(s)
        out.append(("no_max", naive / naive.sum(axis=-1, keepdims=True)))
        # and an epsilon in the sum (any size): a row whose exps all underflow is 0, not 0 / 0
        out.append(("no_max", naive / (naive.sum(axis=-1, keepdims=True)
                                       + np.finfo(naive.dtype).tiny)))
        out.append(("global_max", e_all / e_all.sum(axis=-1, keepdims=True)))
        for shift in (s.min(axis=-1, keepdims=True), s.mean(axis=-1, keepdims=True), s[..., :1]):
            e_shift = np.exp(s - shift)
            out.append(("shift_not_max", e_shift / e_shift.sum(axis=-1, keepdims=True)))
        out.append(("no_exp", s / s.sum(axis=-1, keepdims=True)))
        out.append(("not_normalised", e))
        out.append(("not_normalised", naive))
        out.append(("scaled_in_softmax", _softmax_np(s / math.sqrt(s.shape[-1]))))
    return out


# how many variants of each softmax mistake _softmax_mistakes computes (on square scores: all)
_SOFTMAX_VARIANTS = collections.Counter(key for key, _ in _softmax_mistakes(np.zeros((2, 2))))


def _mistakes(case, user_scale, either=False):
    """(hint, array) for every known mistake on this case, most likely first.

    `either`: both raw and scaled scores are accepted, so a mistake is never combined with
    "the other convention".
    """
    name = case.name
    args = [np.asarray(a) for a in case.args]
    s_ref = case.scale
    out = []
    with np.errstate(all="ignore"):
        if name == "softmax_attention_weights":
            (s,) = args
            out += [(_HINTS[k], w) for k, w in _softmax_mistakes(s)]
            out.append((_HINTS["weights_out_transposed"], _swap(_softmax_np(s))))
            out.append((_HINTS["weights_out_transposed"], _swap(_softmax_np(s, axis=-2))))
            out.append((_HINTS["int_buffer"], np.trunc(_softmax_np(s))))
            out.append((_HINTS["int_inputs"], _softmax_np(np.trunc(s))))
            return out

        if name == "compute_attention_output":
            w, v = args
            out.append((_HINTS["result_transposed"], _swap(w @ v)))
            if w.shape[-1] == w.shape[-2]:
                out.append((_HINTS["weights_transposed"], _swap(w) @ v))
            if w.shape == v.shape:
                out.append((_HINTS["elementwise"], w * v))
            if v.shape[-1] == w.shape[-2]:
                out.append((_HINTS["result_transposed"], _swap(v) @ _swap(w)))
                out.append((_HINTS["v_at_weights"], v @ w))
            out.append((_HINTS["int_buffer"], np.trunc(w @ v)))
            out.append((_HINTS["output_is_weights"], w))
            whole = np.trunc(w) @ np.trunc(v)
            if whole.any():  # weights below 1 truncate to 0: a zeros stub is no evidence of it
                out.append((_HINTS["int_inputs"], whole))
            return out

        # The functions with scores: compose every mistake with the scalings a learner may use.
        if name == "self_attention_layer":
            x, wq, wk, wv = args
            q, k, v = x @ wq, x @ wk, x @ wv
            # queries and keys are the same n tokens: sqrt(n) is one mistake, named as such
            dims = {"n": x.shape[-2], "d_k": wq.shape[-1], "d_model": x.shape[-1],
                    "d_v": wv.shape[-1]}
        elif name == "scaled_dot_product_attention":
            q, k, v = args
            dims = {"n_q": q.shape[-2], "n_k": k.shape[-2], "d_k": q.shape[-1], "d_v": v.shape[-1]}
        else:
            q, k = args
            v = None
            dims = {"n_q": q.shape[-2], "n_k": k.shape[-2], "d_k": q.shape[-1]}
        alt = _alt_scales(user_scale, s_ref, dims)
        # The scale the learner most likely used instead: raw when scaled was asked, and back.
        other = [] if either else [
            (key, s) for key, s in alt if key == ("raw" if user_scale != 1.0 else "sqrt_dk")]

        def finish(scores, weights=None):
            """The function's result from (possibly wrong) scores or weights."""
            if v is None:
                return scores
            if weights is None:
                weights = _softmax_np(scores)
            return weights @ v

        def with_scales(hint, make):
            """The mistake at the asked scale, then combined with the likely other scale."""
            out.append((hint, make(s_ref)))
            for key, s in other:
                out.append((_combine(hint, _scale_hint(key, user_scale)), make(s)))

        for key, s in alt:
            out.append((_scale_hint(key, user_scale, either), finish(q @ _swap(k) * s)))
        def transposed_scores(s):
            t = _swap(q @ _swap(k)) * s  # K @ Q.T: keys as rows
            if v is None:
                return t
            return _softmax_np(t) @ v if q.shape[-2] == k.shape[-2] else None

        raw = q @ _swap(k)
        # `Q @ K.T // np.sqrt(d_k)` floors every score; `Q @ K.T * (1 // np.sqrt(d_k))` zeroes them.
        out.append((_HINTS["floor_div"], finish(np.floor_divide(raw, math.sqrt(dims["d_k"])))))
        out.append((_HINTS["zero_scale"], finish(raw * 0.0)))
        # 2 typed in for sqrt(d_k): right wherever d_k = 4, as in most cases
        if dims["d_k"] != 4:
            out.append((_HINTS["fixed_scale"], finish(raw / 2.0)))
        with_scales(_HINTS["int_buffer"], lambda s: finish(np.trunc(raw * s)))
        # every input truncated to whole numbers (np.array(Q, dtype=int)), the layer's X and
        # projections too
        whole = [np.trunc(a) for a in args]
        if name == "self_attention_layer":
            whole = [whole[0] @ w for w in whole[1:]]
        q_int, k_int = whole[:2]
        v_int = whole[2] if v is not None else None
        with_scales(_HINTS["int_inputs"], lambda s: (
            q_int @ _swap(k_int) * s if v is None else _softmax_np(q_int @ _swap(k_int) * s) @ v_int))
        with_scales(_HINTS["scores_transposed"] if v is None else
                    _SCORES_TRANSPOSED_THROUGH_SOFTMAX, transposed_scores)
        if k.shape[-2] == k.shape[-1]:
            with_scales(_HINTS["k_not_transposed"], lambda s: finish(q @ k * s))
        if v is None:
            if q.shape[-2] == k.shape[-2]:
                with_scales(_HINTS["qt_k"], lambda s: _swap(q) @ k * s)
            return [(h, a) for h, a in out if a is not None]

        # No max subtraction first: where every variant overflows to NaN, it is the likeliest.
        for key in ("no_max", "global_max", "shift_not_max", "axis", "axis_all", "no_keepdims_sum",
                    "no_keepdims_max", "no_keepdims_both", "no_exp", "not_normalised",
                    "scaled_in_softmax"):
            for variant in range(_SOFTMAX_VARIANTS[key]):  # shift_not_max: min, mean, first
                def make(s, key=key, variant=variant):
                    found = [w for k2, w in _softmax_mistakes(q @ _swap(k) * s) if k2 == key]
                    return found[variant] @ v if variant < len(found) else None
                with_scales(_HINTS[key], make)
        if q.shape[-2] == k.shape[-2]:
            with_scales(_WEIGHTS_TRANSPOSED_IN_LAYER,
                        lambda s: _swap(_softmax_np(q @ _swap(k) * s)) @ v)
        with_scales(_HINTS["result_transposed"], lambda s: _swap(_softmax_np(q @ _swap(k) * s) @ v))
        with_scales(_HINTS["no_softmax"], lambda s: raw * s @ v)
        with_scales(_HINTS["returns_weights"], lambda s: _softmax_np(raw * s))
        with_scales(_HINTS["int_buffer"], lambda s: np.trunc(_softmax_np(raw * s) @ v))
        # the softmax's own buffer an integer array: the weights truncated (most to 0)
        with_scales(_HINTS["int_buffer"], lambda s: np.trunc(_softmax_np(raw * s)) @ v)
        if v.shape[-1] == q.shape[-2]:
            with_scales(_HINTS["v_at_weights"], lambda s: v @ _softmax_np(raw * s))
            with_scales(_HINTS["elementwise"], lambda s: _softmax_np(raw * s) * v)
        if name == "self_attention_layer":
            x, wq, wk, wv = args
            if wv.shape[-1] == x.shape[-1]:
                with_scales(_HINTS["residual"], lambda s: _softmax_np(raw * s) @ v + x)
            with_scales(_HINTS["no_projection"],
                        lambda s: _softmax_np(x @ _swap(x) * s) @ x)
            with_scales(_HINTS["k_from_wq"], lambda s: _softmax_np(q @ _swap(q) * s) @ v)
            with_scales(_HINTS["all_wq"], lambda s: _softmax_np(q @ _swap(q) * s) @ q)
            # (where d_k != d_v too: the result then has d_k columns, and this is why)
            with_scales(_HINTS["v_from_wk"], lambda s: _softmax_np(q @ _swap(k) * s) @ k)
            with_scales(_HINTS["v_from_wk"], lambda s: _softmax_np(q @ _swap(k) * s) @ q)
            if wq.shape[-1] == wq.shape[-2]:
                def transposed_proj(s):
                    q2, k2, v2 = x @ _swap(wq), x @ _swap(wk), x @ _swap(wv)
                    return _softmax_np(q2 @ _swap(k2) * s) @ v2
                with_scales(_HINTS["projection_order"], transposed_proj)
    return [(h, a) for h, a in out if a is not None]
