"""A diagnosis is given only when the student's result is what that mistake produces: each wrong
hint the issue found, and each layer mistake that had no diagnosis, built as a student function;
check names the mistake and nothing else."""
import numpy as np
import pytest

from selfattn.testing import assert_attention_close, check

SCORES = "compute_self_attention_scores"
SOFTMAX = "softmax_attention_weights"
OUTPUT = "compute_attention_output"
LAYER = "self_attention_layer"
SDPA = "scaled_dot_product_attention"


def softmax(attn_scores):
    e = np.exp(attn_scores - attn_scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def softmax_transposed(attn_scores):
    return softmax(attn_scores).T


def softmax_of_transposed_scores(attn_scores):
    return softmax(attn_scores.T)


def softmax_no_return(attn_scores):
    e = np.exp(attn_scores - attn_scores.max(axis=1, keepdims=True))
    weights = e / e.sum(axis=1, keepdims=True)  # noqa: F841  (the forgotten return)


def softmax_max_no_keepdims(attn_scores):
    e = np.exp(attn_scores - attn_scores.max(axis=1))
    return e / e.sum(axis=1, keepdims=True)


def output(attn_weights, V):
    return attn_weights @ V


def layer_with(softmax_fn):
    def self_attention_layer(X, W_q, W_k, W_v):
        Q, K, V = X @ W_q, X @ W_k, X @ W_v
        return output(softmax_fn(Q @ K.T), V)
    return self_attention_layer


def scores_dk_wrong_axis(Q, K):
    return Q @ K.T / np.sqrt(K.shape[0])


def layer_dk_wrong_axis(X, W_q, W_k, W_v):
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    return softmax(scores_dk_wrong_axis(Q, K)) @ V


def layer_returns_weights(X, W_q, W_k, W_v):
    return softmax((X @ W_q) @ (X @ W_k).T)


def layer_wq_for_all(X, W_q, W_k, W_v):
    Q = K = V = X @ W_q
    return softmax(Q @ K.T) @ V


def layer_no_softmax(X, W_q, W_k, W_v):
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    return (Q @ K.T) @ V


def layer_v_times_weights(X, W_q, W_k, W_v):
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    return V @ softmax(Q @ K.T)


def layer_floor_division(X, W_q, W_k, W_v):
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    return softmax(Q @ K.T // np.sqrt(K.shape[1])) @ V


def layer_int_buffer(X, W_q, W_k, W_v):
    out = softmax((X @ W_q) @ (X @ W_k).T) @ (X @ W_v)
    result = np.zeros(out.shape, dtype=int)
    for i in range(out.shape[0]):
        result[i] = out[i]
    return result


def layer_int_buffer_in_its_softmax(X, W_q, W_k, W_v):
    def softmax_into_ints(scores):
        weights = np.zeros_like(scores, dtype=int)
        weights[:] = softmax(scores)
        return weights
    return softmax_into_ints((X @ W_q) @ (X @ W_k).T) @ (X @ W_v)


def layer_v_from_w_k(X, W_q, W_k, W_v):
    Q, K, V = X @ W_q, X @ W_k, X @ W_k
    return softmax(Q @ K.T) @ V


def layer_global_max_scaled_by_a_float64(X, W_q, W_k, W_v):
    # np.sqrt of an int is a float64 scalar: float32 scores become float64 (NumPy 2), and the
    # rows a global max underflows are not float32's
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    scores = Q @ K.T / np.sqrt(K.shape[-1])
    e = np.exp(scores - np.max(scores))
    return e / e.sum(axis=1, keepdims=True) @ V


def scores_list(Q, K):
    return [[float(q @ k) for k in K] for q in Q]


# (id, function, name, scale, the one diagnosis's beginning, texts no part of the report may hold)
# sqrt(d_k) typed in as 2, right for the notebook's d_k = 4 only: the cases with another d_k
# (6 for the scores, 3 for the layer) tell it apart
def scores_over_two(Q, K):
    return Q @ K.T / 2


def layer_over_two(X, W_q, W_k, W_v):
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    return softmax(Q @ K.T / 2) @ V


def sdpa_over_two(Q, K, V):
    return softmax(Q @ K.T / 2) @ V


def softmax_min_subtracted(attn_scores):
    e = np.exp(attn_scores - attn_scores.min(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def softmax_mean_subtracted(attn_scores):
    e = np.exp(attn_scores - attn_scores.mean(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def scores_times_sqrt_dk(Q, K):
    return Q @ K.T * np.sqrt(K.shape[1])


def sdpa_over_sqrt_dv(Q, K, V):
    return softmax(Q @ K.T / np.sqrt(V.shape[1])) @ V


def output_returns_weights(attn_weights, V):
    return attn_weights


def layer_with_residual(X, W_q, W_k, W_v):
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    return softmax(Q @ K.T) @ V + X


def scores_of_int_inputs(Q, K):
    Q, K = np.array(Q, dtype=int), np.array(K, dtype=int)
    return Q @ K.T


def softmax_of_int_scores(attn_scores):
    return softmax(attn_scores.astype(int))


def layer_of_int_inputs(X, W_q, W_k, W_v):
    X, W_q, W_k, W_v = (np.array(a, dtype=int) for a in (X, W_q, W_k, W_v))
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    return softmax(Q @ K.T / np.sqrt(K.shape[1])) @ V


def scores_over_sqrt_n_q(Q, K):
    return Q @ K.T / np.sqrt(Q.shape[0])


def softmax_placeholder(attn_scores):
    return 1.0


CASES = [
    ("softmax returns its weights transposed", softmax_transposed, SOFTMAX, None,
     "Your weights are transposed", ["attn_weights @ V"]),
    ("softmax of the transposed scores", softmax_of_transposed_scores, SOFTMAX, None,
     "Your weights are transposed", ["attn_weights @ V"]),
    ("layer with a softmax that returns them transposed", layer_with(softmax_transposed), LAYER,
     1.0, "The weights are transposed", []),
    ("layer with a softmax that forgets return", layer_with(softmax_no_return), LAYER, 1.0,
     "Something was None", [".T only works", "matrix product got shapes"]),
    ("d_k from the wrong axis", scores_dk_wrong_axis, SCORES, None,
     "Your scores are divided by the square root of the number of keys", ["raw dot products"]),
    ("layer with d_k from the wrong axis", layer_dk_wrong_axis, LAYER, None,
     "Your scores are divided by the square root of the number of tokens", ["raw dot products"]),
    ("layer with a max without keepdims", layer_with(softmax_max_no_keepdims), LAYER, 1.0,
     "A max without keepdims", ["No max subtraction"]),
    ("layer returns the weights", layer_returns_weights, LAYER, 1.0,
     "Your layer returns the attention weights", []),
    ("layer uses W_q for Q, K and V", layer_wq_for_all, LAYER, 1.0,
     "Q, K and V are all computed with W_q", []),
    ("layer skips the softmax", layer_no_softmax, LAYER, 1.0, "The softmax is missing", []),
    ("layer computes V @ weights", layer_v_times_weights, LAYER, 1.0,
     "The product is the wrong way round", []),
    ("layer scales with //", layer_floor_division, LAYER, None,
     "Your scale uses // (floor division)", []),
    ("layer fills an integer buffer", layer_int_buffer, LAYER, 1.0,
     "Your result, or the weights it is made from, is rounded towards zero", []),
    ("layer's softmax fills an integer buffer", layer_int_buffer_in_its_softmax, LAYER, 1.0,
     "Your result, or the weights it is made from, is rounded towards zero", []),
    ("layer subtracts the global max, in float64 from its scale on",
     layer_global_max_scaled_by_a_float64, LAYER, None,
     "You subtracted the maximum of the whole matrix", []),
    # d_k != d_v in most cases: the shape is wrong there, and this is why
    ("layer computes V with W_k", layer_v_from_w_k, LAYER, 1.0,
     "V is computed with W_k (or W_q)", []),
    ("scores returned as a list of lists", scores_list, SCORES, 1.0,
     "Your function returns a Python list", []),
    ("scores divided by 2 typed in", scores_over_two, SCORES, None,
     "Your scores are divided by the number 2", ["divided by d_k"]),
    ("layer divides its scores by 2 typed in", layer_over_two, LAYER, "scaled",
     "Your scores are divided by the number 2", ["divided by d_k"]),
    ("sdpa divides its scores by 2 typed in", sdpa_over_two, SDPA, None,
     "Your scores are divided by the number 2", ["divided by d_k"]),
    ("softmax subtracts the row's minimum", softmax_min_subtracted, SOFTMAX, None,
     "You subtract a number from each row, but not its maximum", ["No max subtraction"]),
    ("softmax subtracts the row's mean", softmax_mean_subtracted, SOFTMAX, None,
     "You subtract a number from each row, but not its maximum", ["No max subtraction"]),
    ("layer subtracts the row's minimum", layer_with(softmax_min_subtracted), LAYER, 1.0,
     "You subtract a number from each row, but not its maximum", []),
    ("scores multiplied by sqrt(d_k)", scores_times_sqrt_dk, SCORES, "scaled",
     "Your scores are multiplied by sqrt(d_k)", []),
    ("sdpa divides by sqrt(d_v)", sdpa_over_sqrt_dv, SDPA, None,
     "Your scores are divided by sqrt(d_v)", []),
    ("output returns the weights", output_returns_weights, OUTPUT, None,
     "Your function returns attn_weights itself", []),
    # a single token's scores under 1 truncate to 0, as `1 // np.sqrt(d_k)` makes them: that
    # case alone named the // mistake, which the code does not have
    ("scores of inputs made integers", scores_of_int_inputs, SCORES, None,
     "Your function turns its inputs into integers", ["floor division", "// np.sqrt", "none of"]),
    ("softmax of scores made integers", softmax_of_int_scores, SOFTMAX, None,
     "Your function turns its inputs into integers", []),
    ("layer of inputs made integers", layer_of_int_inputs, LAYER, None,
     "Your function turns its inputs into integers", []),
    # n_q = d_k in the square case: sqrt(n_q) is sqrt(d_k) there, and n_q = 1 makes it raw; it
    # was reported a second time as raw and scaled scores mixed
    ("scores divided by sqrt(n_q)", scores_over_sqrt_n_q, SCORES, "either",
     "Your scores are divided by the square root of the number of queries",
     ["raw dot products in some cases"]),
    ("softmax returns a placeholder number", softmax_placeholder, SOFTMAX, None,
     "Your function returns a single number", ["axis=1"]),
]


@pytest.mark.parametrize("label, fn, name, scale, diagnosis, absent", CASES,
                         ids=[c[0] for c in CASES])
def test_the_mistake_is_named_and_nothing_else(label, fn, name, scale, diagnosis, absent):
    report = check(fn, name, scale=scale)
    assert not report
    assert len(report.diagnoses) == 1 and report.diagnoses[0].startswith(diagnosis), \
        report.diagnoses
    text = str(report)
    for wrong in absent:
        assert wrong not in text
    # no failed case says otherwise (the cases where d_k != d_v said so of V = X @ W_k)
    assert "matches none of the mistakes" not in text, text


def test_a_residual_is_named_where_the_shapes_let_it_run():
    """X + the attention output runs only where d_v = d_model (the square case); elsewhere it
    raises, and the report says so with the line."""
    report = check(layer_with_residual, LAYER, scale=1.0)
    square = [r for r in report.results if r.case.label.startswith("square")]
    assert len(square) == 1 and square[0].hints[0].startswith("Your layer adds X")
    assert "Your layer adds X to the attention output" in report.diagnoses[1]
    assert "return softmax(Q @ K.T) @ V + X" in str(report)


def test_no_hint_from_shapes_alone_and_the_differing_entries_shown():
    def scores_sum(Q, K):  # shape (n_q,): nothing known produces it
        return (Q @ K.T).sum(axis=1)

    report = check(scores_sum, SCORES, scale=1.0)
    assert report.diagnoses == [report.failures[0].hints[0]]
    assert report.diagnoses[0].startswith("Your result differs from selfattn's and matches none")

    def scores_plus_one(Q, K):
        return Q @ K.T + 1.0

    text = str(check(scores_plus_one, SCORES, scale=1.0))
    assert "matches none of the mistakes" in text and "first differing entries: (0, 0) yours" in text


@pytest.mark.parametrize("value, words", [
    (None, "your function returned None"),
    ((np.zeros(2), np.zeros(2)), "a tuple of 2 values"),
    ([np.zeros(2), np.zeros(3)], "a list"),
    ((x for x in [np.zeros(2)]), "a generator: your function uses `yield`"),
])
def test_assert_attention_close_names_none_tuple_and_list_results(value, words):
    with pytest.raises(AssertionError, match=words):
        assert_attention_close(value, np.zeros(2))


def test_every_mistake_has_a_short_title_for_the_class_summary():
    from selfattn.testing.mistakes import _HINTS, TITLES
    scale_keys = {f"scale_{k}" for k in ("raw", "sqrt_dk", "dk", "sqrt_nk", "sqrt_nq", "sqrt_n",
                                         "sqrt_dmodel", "sqrt_dv", "times_sqrt_dk")}
    assert set(_HINTS) | scale_keys | {"batched", "epsilon"} == set(TITLES)


def layer_nan_stub(X, W_q, W_k, W_v):
    return np.full((X.shape[0], W_v.shape[1]), np.nan)


def layer_max_subtracted_but_sum_over_the_wrong_axis(X, W_q, W_k, W_v):
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    s = Q @ K.T
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=0, keepdims=True) @ V


@pytest.mark.parametrize("fn", [layer_nan_stub, layer_max_subtracted_but_sum_over_the_wrong_axis])
def test_a_result_of_only_nan_is_no_evidence_of_an_overflowing_mistake(fn):
    # NaN everywhere is what every overflowing softmax gives on the large cases: it named one
    # ("you subtract a number from each row, but not its maximum") for code that subtracts the
    # max, and for a stub
    report = check(fn, LAYER)
    assert [d.split(".")[0] for d in report.diagnoses] == [
        "Your result differs from selfattn's and matches none of the mistakes check() knows"]
    text = str(report)
    assert "maximum" not in text and "max subtraction" not in text.lower()
    assert "your result has inf or NaN where the expected result is finite" in text


def test_batch_advice_waits_until_the_cases_without_a_batch_pass():
    """The advice on batches (axis=-1, not axis=1) fits a softmax that works on one sequence;
    one that fails there too is told to fix that first."""
    def softmax_wrong_axis(attn_scores):
        e = np.exp(attn_scores - attn_scores.max(axis=0, keepdims=True))
        return e / e.sum(axis=0, keepdims=True)

    batched = [r for r in check(softmax_wrong_axis, SOFTMAX).results if r.case.batched]
    assert batched and "Fix the failed cases without a batch first" in batched[0].hints[0]
    assert "axis=1" not in batched[0].hints[0]
    results = check(softmax, SOFTMAX).results  # axis=1: right without a batch only
    batched = [r for r in results if r.case.batched]
    assert [r.verdict for r in results].count("FAIL") == 0
    assert "take the max and the sum over axis=-1" in batched[0].hints[0]


def test_a_zeros_stub_is_not_inputs_made_integers():
    """Weights below 1 truncate to 0, so "inputs made integers" gives zeros for the output step:
    a zeros placeholder matched it."""
    def compute_attention_output(attn_weights, V):
        return np.zeros((attn_weights.shape[0], V.shape[1]))

    assert "turns its inputs into integers" not in str(check(compute_attention_output))


def test_grouped_cases_keep_the_batch_advice():
    """A 2-D solution with K.T passes every case without a batch; the grouped cases fail for the
    batch's reason, so the batched note keeps its advice (swapaxes for K.T)."""
    def scaled_dot_product_attention(Q, K, V):
        return softmax(Q @ K.T / np.sqrt(Q.shape[-1])) @ V

    results = check(scaled_dot_product_attention, gqa=True).results
    assert all(r.verdict == "pass" for r in results if not (r.case.batched or r.case.grouped))
    batched = [r for r in results if r.case.batched]
    assert batched and "np.swapaxes(K, -1, -2)" in batched[0].hints[0]


def test_grouped_cases_pass_enable_gqa_to_a_function_that_takes_it():
    """selfattn's own scaled_dot_product_attention failed check(..., gqa=True) ("pass
    enable_gqa=True"), and a student's torch-style one with that switch could never pass; each
    is now called with enable_gqa=True, and one that groups the heads unasked (jax's way) as
    before."""
    import selfattn
    calls = []

    def torch_style(Q, K, V, enable_gqa=False):
        calls.append(enable_gqa)
        return selfattn.scaled_dot_product_attention(Q, K, V, enable_gqa=enable_gqa)

    def jax_style(Q, K, V):
        group = Q.shape[-3] // K.shape[-3] if Q.ndim >= 3 else 1
        return selfattn.scaled_dot_product_attention(
            Q, np.repeat(K, group, axis=-3) if group > 1 else K,
            np.repeat(V, group, axis=-3) if group > 1 else V)

    assert not check(selfattn.scaled_dot_product_attention, gqa=True).failures
    report = check(torch_style, "scaled_dot_product_attention", scale="scaled", gqa=True)
    assert not report.failures and calls.count(True) == 2
    assert all(r.verdict == "pass" for r in report.results if r.case.grouped)
    assert not check(jax_style, "scaled_dot_product_attention", gqa=True).failures


def test_a_float32_result_of_float64_inputs_fails_every_case_even_where_its_values_are_exact():
    """A student who returns .astype(np.float32) failed most float64 cases but passed the one of
    large integer inputs, whose scores float32 holds exactly ("returned float32 for float64
    inputs (accepted)"): points by luck. Every float64 case now fails, with the precision hint;
    the float32 cases pass."""
    def compute_self_attention_scores(Q, K):
        return (np.asarray(Q) @ np.asarray(K).T / np.sqrt(np.shape(Q)[-1])).astype(np.float32)

    report = check(compute_self_attention_scores)
    plain = [r for r in report.results if r.verdict != "note"]
    assert any("come out within float64's tolerance even so" in r.message for r in plain)
    for r in plain:
        if r.case.expected.dtype == np.float64:
            assert r.verdict == "FAIL" and any("float32" in str(h) for h in r.hints), r.message
        else:
            assert r.verdict == "pass", r.message


def test_a_layer_divided_by_sqrt_of_the_token_count_is_told_so():
    """A layer that divides by np.sqrt(len(Q)) was told "divided by the square root of the number
    of keys (K.shape[0])": in the layer's cases queries and keys are the same n tokens, so it is
    named as the number of tokens, which the learner's len(Q) is."""
    def self_attention_layer(X, W_q, W_k, W_v):
        Q, K, V = X @ W_q, X @ W_k, X @ W_v
        S = Q @ K.T / np.sqrt(len(Q))
        e = np.exp(S - S.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True) @ V

    report = check(self_attention_layer)
    text = " ".join(str(report).split())
    assert not report.passed
    assert "square root of the number of tokens, n = X.shape[0] (here also len(Q) and len(K))" \
        in text, text
    assert "number of keys" not in text


def test_an_integer_result_fails_every_case_even_where_its_values_are_whole():
    """An np.zeros(..., dtype=int) buffer filled with the scores passed the cases of whole-number
    inputs ("returned int64 for float64 inputs (accepted)") beside the integer-buffer diagnosis
    of the others: every case now fails, with that diagnosis."""
    def compute_self_attention_scores(Q, K):
        out = np.zeros((Q.shape[0], K.shape[0]), dtype=int)
        for i in range(Q.shape[0]):
            for j in range(K.shape[0]):
                out[i, j] = Q[i] @ K[j]
        return out

    report = check(compute_self_attention_scores)
    plain = [r for r in report.results if r.verdict != "note"]
    assert any("values are whole numbers, so they come out right even so" in r.message
               for r in plain)
    assert all(r.verdict == "FAIL" for r in plain)
    assert "int_buffer" in report.mistakes


def test_a_float16_result_of_float32_inputs_fails_every_float32_case_and_says_so():
    """A learner's reviewer: .astype(np.float16) of float32 inputs passed the large-scores case
    ("accepted": its values come out within float32's tolerance) and failed the other, whose
    hint spoke of float64 inputs and astype(np.float32). Both fail now, with a hint naming the
    dtypes involved."""
    def compute_self_attention_scores(Q, K):
        s = Q @ K.T
        return s.astype(np.float16) if Q.dtype == np.float32 else s

    report = check(compute_self_attention_scores)
    plain = [r for r in report.results if r.verdict != "note"]
    for r in plain:
        assert (r.verdict == "FAIL") == (r.case.expected.dtype == np.float32), r.message
    assert report.diagnoses == [
        "Your result is right to the precision of a smaller dtype: you compute in float16, "
        "smaller than the inputs' dtype. Keep the inputs' dtype (no astype(np.float16) or "
        "dtype=np.float16)."]

    def always_float16(Q, K):      # one mistake, said once (it was two, one of float32)
        return (Q @ K.T).astype(np.float16)

    assert check(always_float16, SCORES).diagnoses == report.diagnoses


@pytest.mark.parametrize("fill", [-1e9, -1e4, -np.finfo(np.float64).max])
def test_scores_masked_with_a_large_negative_number_are_told_to_use_minus_inf(fill):
    """Many tutorials mask with -1e9: check said "matches none of the mistakes" and printed an
    empty "first differing entries:" line (|-1e9 - -inf| <= inf counted as close)."""
    def compute_self_attention_scores(Q, K, is_causal=False):
        s = Q @ K.T
        if is_causal:
            s = np.where(np.tril(np.ones(s.shape, bool)), s, fill)
        return s

    report = check(compute_self_attention_scores, is_causal=True)
    assert not report and len(report.diagnoses) == 1
    assert report.diagnoses[0].startswith("Your masked scores are a large negative number")
    assert "np.where(mask, scores, -np.inf)" in report.diagnoses[0]
    assert "matches none" not in str(report)


def test_the_first_differing_entries_list_a_number_where_minus_inf_is_expected():
    def compute_self_attention_scores(Q, K, is_causal=False):
        s = Q @ K.T
        s[np.triu_indices(s.shape[0], 1, s.shape[1])] = -5.0   # not a mask value anyone uses
        return s

    text = str(check(compute_self_attention_scores, is_causal=True))
    assert "matches none of the mistakes" in text
    assert "first differing entries: (0, 1) yours -5, expected -inf" in text, text
    assert "first differing entries: \n" not in text + "\n"


def test_a_function_without_the_keyword_check_passes_is_told_to_take_it():
    """check(f, is_causal=True) of a function without is_causal: the call shown left the
    keyword out, and the hint was only "your function raised an exception"."""
    def compute_self_attention_scores(Q, K):
        return Q @ K.T

    report = check(compute_self_attention_scores, is_causal=True)
    assert "when called as compute_self_attention_scores(Q (3, 4), K (5, 4), is_causal=True)" \
        in str(report)
    assert report.diagnoses == [
        "Your function does not take the keyword argument is_causal, which check() passes "
        "because you asked for is_causal=True: add it to its parameters, def "
        "compute_self_attention_scores(Q, K, is_causal=False), and use it in its body."]

    def scaled_dot_product_attention(Q, K, V):
        return V

    report = check(scaled_dot_product_attention, window=(1, 0))
    assert report.diagnoses[0].startswith(
        "Your function does not take the keyword argument window, which check() passes because "
        "you asked for window=(1, 0): add it to its parameters, def "
        "scaled_dot_product_attention(Q, K, V, window=None)")


def test_a_softmax_of_row_maxima_over_the_whole_sum_is_the_whole_matrix_mistake():
    def softmax_attention_weights(attn_scores):
        e = np.exp(attn_scores - attn_scores.max(axis=-1, keepdims=True))
        return e / e.sum()

    report = check(softmax_attention_weights)
    assert report.diagnoses and all(d.startswith("Softmax over the whole matrix")
                                    for d in report.diagnoses), report.diagnoses

    def self_attention_layer(X, W_q, W_k, W_v):
        return softmax_attention_weights(X @ W_q @ (X @ W_k).T) @ (X @ W_v)

    report = check(self_attention_layer)
    assert report.diagnoses[0].startswith("Softmax over the whole matrix"), report.diagnoses


@pytest.mark.parametrize("eps", [1e-9, 1e-6])
def test_an_epsilon_in_the_softmax_denominator_is_named_with_its_size(eps):
    """A teacher's review: `e / (e.sum(...) + 1e-9)` failed the float64 cases with "matches none
    of the mistakes" while its lines guessed at an epsilon. The epsilon is read off the result."""
    def softmax_attention_weights(attn_scores):
        e = np.exp(attn_scores - attn_scores.max(axis=-1, keepdims=True))
        return e / (e.sum(axis=-1, keepdims=True) + eps)

    report = check(softmax_attention_weights)
    assert not report and report.diagnoses == [
        f"Your softmax adds a small number (about {eps:.0e}) to its denominator: e / "
        f"(e.sum(axis=-1, keepdims=True) + {eps:.0e}). With each row's maximum subtracted the "
        f"sum is at least 1, so it never divides by 0, and the epsilon only makes each row sum "
        f"to a little less than 1: drop it."]
    assert "matches none" not in str(report)


def test_a_softmax_computed_in_float32_is_no_epsilon():
    def softmax_attention_weights(attn_scores):
        s = np.asarray(attn_scores, dtype=np.float32)
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        return (e / e.sum(axis=-1, keepdims=True)).astype(attn_scores.dtype)

    report = check(softmax_attention_weights)
    assert not report and not any("epsilon" in d for d in report.diagnoses), report.diagnoses


def test_a_keyword_refused_by_a_helper_is_not_blamed_on_the_function():
    """A reviewer's case: sdpa takes is_causal and passes it to its own scores function, which
    does not; the hint told the learner to add is_causal to sdpa."""
    def compute_self_attention_scores(Q, K):
        return Q @ np.swapaxes(K, -1, -2)

    def scaled_dot_product_attention(Q, K, V, is_causal=False):
        s = compute_self_attention_scores(Q, K, is_causal=is_causal)
        return s @ V

    report = check(scaled_dot_product_attention, is_causal=True)
    assert not any("does not take" in d for d in report.diagnoses), report.diagnoses

    # taking neither: both named, though Python names only the first
    def sdpa_without_either(Q, K, V):
        return V

    report = check(sdpa_without_either, SDPA, is_causal=True, window=(1, 0))
    assert report.diagnoses[0].startswith(
        "Your function does not take the keyword argument is_causal and the keyword argument "
        "window, which check() passes because you asked for is_causal=True and window=(1, 0): "
        "add them to its parameters")


@pytest.mark.parametrize("kind", ["no max subtracted", "times a constant"])
def test_what_only_a_single_row_would_take_for_an_epsilon_is_not_named_one(kind):
    """A reviewer's cases: without the max subtracted (and + 1e-9), the single-token case named
    an epsilon of 2e-10 and said the max was subtracted; a softmax times (1 - 1e-6) was named an
    epsilon there too, where the cases of several rows said otherwise. (The first is now named
    for what it is: test_an_epsilon_without_the_max_subtracted_is_named_and_so_is_the_max.)"""
    def softmax_attention_weights(attn_scores):
        s = np.asarray(attn_scores)
        if kind == "no max subtracted":
            e = np.exp(s)
            return e / (e.sum(axis=-1, keepdims=True) + 1e-9)
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True) * (1 - 1e-6)

    report = check(softmax_attention_weights)
    assert not report and not any("adds a small number (about 2e-10)" in d
                                  for d in report.diagnoses), report.diagnoses
    if kind == "times a constant":
        assert not any("adds a small number" in d for d in report.diagnoses), report.diagnoses


def test_an_epsilon_without_the_max_subtracted_is_named_and_so_is_the_max():
    """A reviewer's case: `np.exp(s) / (sum + 1e-9)` matched none of the mistakes: its epsilon
    was looked for only in a sum of exp(s - max), and on large scores its rows of underflow gave
    0 (0 / 1e-9) where a softmax without the max gives 0 / 0. Each is named where it shows."""
    def softmax_attention_weights(attn_scores):
        e = np.exp(attn_scores)
        return e / (e.sum(axis=-1, keepdims=True) + 1e-9)

    report = check(softmax_attention_weights)
    assert not report and "matches none" not in str(report)
    assert [d[:61] for d in report.diagnoses] == [
        "Your softmax adds a small number to its denominator: e / (e.s",
        "No max subtraction: np.exp overflows for large scores (exp(71"]
    large = [r for r in report.failures if r.case.id.startswith("large")]
    assert large and all(r.hints[-1].startswith("No max subtraction") for r in large)


def test_an_epsilon_with_the_whole_matrixs_max_is_named_once():
    """A reviewer's case: the whole matrix's max subtracted, and + 1e-9: the exps of every row are
    shifted by one number, which reads as an epsilon of 1e-9 * exp(max), another on each case
    ("about 7e-09", "about 1e-08"). One epsilon is named, without a size it cannot know."""
    def softmax_attention_weights(attn_scores):
        e = np.exp(attn_scores - attn_scores.max())
        return e / (e.sum(axis=-1, keepdims=True) + 1e-9)

    report = check(softmax_attention_weights)
    epsilons = [d for d in report.diagnoses if "adds a small number" in d]
    assert len(epsilons) == 1 and "(about" not in epsilons[0], report.diagnoses


def test_a_learners_own_errstate_raising_on_underflow_is_named_not_no_max():
    """A correct softmax inside np.errstate(all="raise") raises "underflow encountered in exp" on
    the large-score cases: it was told "No max subtraction", a mistake it does not make. The
    hint now names the underflow; overflow (a softmax without the max) keeps the no-max hint."""
    def with_max(s):
        with np.errstate(all="raise"):
            e = np.exp(s - s.max(axis=-1, keepdims=True))
            return e / e.sum(axis=-1, keepdims=True)

    def without_max(s):
        with np.errstate(all="raise"):
            e = np.exp(s)
            return e / e.sum(axis=-1, keepdims=True)

    report = check(with_max, "softmax_attention_weights")
    assert report.failures and all(r.case.large for r in report.failures)
    for r in report.failures:
        assert [h.keys for h in r.hints] == [("raised_underflow",)], r.hints
    assert "No max subtraction" not in str(report)
    assert 'under="raise"' in str(report)
    report = check(without_max, "softmax_attention_weights")
    assert {k for r in report.failures for h in r.hints for k in h.keys} == {"no_max"}
