"""selfattn.testing: check() names each classic mistake, passes correct notebook solutions, and
renders; assert_implementation, assert_attention_close and cases() behave as graders need."""
import re

import numpy as np
import pytest

import selfattn
from selfattn import testing
from selfattn.testing import assert_attention_close, assert_implementation, cases, check

SCORES = "compute_self_attention_scores"
SOFTMAX = "softmax_attention_weights"
OUTPUT = "compute_attention_output"
LAYER = "self_attention_layer"
SDPA = "scaled_dot_product_attention"


# ---- correct solutions, as a learner would write them in the notebook ------------------------

def raw_scores(Q, K):
    return np.dot(Q, K.T)


def scaled_scores(Q, K):
    return Q @ K.T / np.sqrt(K.shape[-1])


def softmax(attn_scores):
    e = np.exp(attn_scores - np.max(attn_scores, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def output(attn_weights, V):
    return attn_weights @ V


def raw_layer(X, W_q, W_k, W_v):
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    return output(softmax(raw_scores(Q, K)), V)


def scaled_layer(X, W_q, W_k, W_v):
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    return output(softmax(scaled_scores(Q, K)), V)


def batched_softmax(x):  # handles any number of leading dimensions
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def batched_sdpa(Q, K, V):
    s = Q @ np.swapaxes(K, -1, -2) / np.sqrt(Q.shape[-1])
    return batched_softmax(s) @ V


def float32_softmax(attn_scores):  # computes in float32 throughout
    x = np.asarray(attn_scores, dtype=np.float32)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


CORRECT = [
    ("raw scores, scale=1.0", raw_scores, SCORES, 1.0),
    ("scaled scores", scaled_scores, SCORES, None),
    ("softmax", softmax, SOFTMAX, None),
    ("softmax with scale given (ignored)", softmax, SOFTMAX, 1.0),
    ("output", output, OUTPUT, None),
    ("raw layer, scale=1.0", raw_layer, LAYER, 1.0),
    ("scaled layer", scaled_layer, LAYER, None),
    ("batched sdpa", batched_sdpa, SDPA, None),
    ("selfattn's own softmax", selfattn.softmax_attention_weights, SOFTMAX, None),
    ("selfattn's own layer", selfattn.self_attention_layer, LAYER, None),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("label, fn, name, scale", CORRECT, ids=[c[0] for c in CORRECT])
def test_correct_solutions_pass(label, fn, name, scale, seed):
    report = check(fn, name, scale=scale, seed=seed)
    assert report, str(report)
    assert report.passed and not report.failures and not report.diagnoses
    assert all(r.verdict in ("pass", "note") for r in report.results)
    text = str(report)
    assert "passed" in text.splitlines()[0] and "FAIL" not in text
    assert_implementation(fn, name, scale=scale)  # silent
    if scale is not None and name in (SOFTMAX, OUTPUT):
        assert f"Note: scale={scale:g} is ignored: {name} does not compute scores." in text


def test_a_scale_by_name_is_echoed_as_given_where_it_is_ignored():
    # it said "scale=1 is ignored" of scale="raw"
    text = str(check(softmax, SOFTMAX, scale="raw"))
    assert "Note: scale='raw' is ignored: softmax_attention_weights does not compute scores." \
        in text


def test_batched_cases_pass_for_batched_solution_and_are_notes_for_2d_ones():
    report = check(batched_sdpa, SDPA)
    batched = [r for r in report.results if r.case.batched]
    assert batched and all(r.verdict == "pass" for r in batched)

    report = check(raw_scores, SCORES, scale=1.0)  # K.T: 2-D only
    batched = [r for r in report.results if r.case.batched]
    assert batched and all(r.verdict == "note" for r in batched)
    assert report  # notes do not count against the learner
    flat = " ".join(str(report).split())
    assert "optional" in flat and "np.swapaxes(K, -1, -2)" in flat


def test_the_batched_note_fits_the_function_and_what_failed():
    # a softmax over axis=1 has no K to transpose; an output by np.dot is told about @
    def softmax_attention_weights(s):
        e = np.exp(s - s.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def compute_attention_output(w, V):
        return np.dot(w, V)

    def notes(report):
        return [" ".join(h.split()) for r in report.results if r.verdict == "note" for h in r.hints]

    softmax_notes = notes(check(softmax_attention_weights))
    assert len(softmax_notes) == 1 and "axis=-1" in softmax_notes[0]
    assert "K" not in softmax_notes[0].replace("keepdims", "")
    output_notes = notes(check(compute_attention_output))
    assert len(output_notes) == 1 and "np.dot" in output_notes[0] and "K.T" not in output_notes[0]

    # a batched case that fails as the plain ones do keeps their diagnosis, not batch advice
    def listed(attn_scores):
        e = np.exp(attn_scores - attn_scores.max(axis=-1, keepdims=True))
        return (e / e.sum(axis=-1, keepdims=True)).tolist()

    report = check(listed, SOFTMAX)
    batched = [r for r in report.results if r.case.batched]
    assert [r.verdict for r in batched] == ["note"]
    assert batched[0].hints[1:] == report.diagnoses
    assert "axis=-1" not in batched[0].hints[0] and "follows" in batched[0].hints[0]


def test_the_hint_for_an_exception_points_at_the_cases():
    def softmax_attention_weights(attn_scores):
        raise ValueError("oops")

    text = str(check(softmax_attention_weights))
    hint, first_case = text.index("raised an exception"), text.index("raised ValueError: oops")
    assert hint < first_case and "each case it failed shows the message" in " ".join(text.split())


def test_name_is_taken_from_the_function():
    def compute_self_attention_scores(Q, K):
        return Q @ K.T

    report = check(compute_self_attention_scores, scale=1.0)
    assert report.name == SCORES and report


def test_a_backward_is_sent_to_assert_attention_close_not_to_a_forward():
    """check(attention_backward, "scaled_dot_product_attention_backward") asked "did you mean
    'scaled_dot_product_attention'?", and the forward's cases then failed the backward with a
    report about scale conventions. A backward's name now gets what to do instead, whose recipe
    runs."""
    def attention_backward(dO, Q, K, V):
        return Q, K, V

    for call in (lambda: check(attention_backward),
                 lambda: check(attention_backward, "scaled_dot_product_attention_backward"),
                 lambda: check(lambda *a: a, "my_softmax_grad"),
                 lambda: check(lambda *a: a, "attentionBackward"),
                 lambda: testing.cases("self_attention_layer_vjp")):
        with pytest.raises(ValueError, match=r"looks like a backward; (check|cases) covers the "
                                             r"forward functions") as info:
            call()
        assert "did you mean" not in str(info.value)
        assert "assert_attention_close(your_dQ, selfattn.scaled_dot_product_attention_backward(" \
            in str(info.value)
        assert "selfattn.self_attention_layer_backward(dY, X, W_q, W_k, W_v)[1]" in str(info.value)
    with pytest.raises(ValueError, match="cannot tell which function 'upgraded'"):
        check(_named("upgraded"))


def _named(name):
    def fn(x):
        return x
    fn.__name__ = name
    return fn


def test_unknown_name_is_a_clear_error():
    def my_softmax(x):
        return x

    with pytest.raises(ValueError, match=r"cannot tell which function 'my_softmax'.*softmax_attention_weights"):
        check(my_softmax)
    with pytest.raises(ValueError, match=r"did you mean 'softmax_attention_weights'"):
        check(my_softmax, "softmax_attention_weight")
    with pytest.raises(ValueError, match="did you mean"):
        check(lambda x: x, "softmax_attention")
    # a word that one name alone has (difflib finds "softmax" too far from the whole name)
    for short, full in (("softmax", SOFTMAX), ("my_scores", "compute_self_attention_scores"),
                        ("Output", "compute_attention_output")):
        with pytest.raises(ValueError, match=rf"unknown name '{short}' \(did you mean '{full}'"):
            check(softmax, short)
    with pytest.raises(ValueError, match=r"cannot tell which function 'scores_v2' implements "
                                         r"\(did you mean 'compute_self_attention_scores'\?\)"):
        check(_named("scores_v2"))
    with pytest.raises(TypeError, match="must be a function"):
        check(np.zeros(3), SOFTMAX)
    with pytest.raises(ValueError, match="scale must be a finite positive number"):
        check(softmax, SOFTMAX, scale=-1.0)
    # log_softmax is another operation: no "did you mean" sends it to the softmax
    for other in ("log_softmax", "logSoftmax"):
        with pytest.raises(ValueError, match=rf"unknown name '{other}'; known names"):
            check(softmax, other)


def test_assert_implementations_argument_errors_name_it():
    """A grader's assert_implementation(fn, "scores") said "check: unknown name": the function
    the teacher called is the one named, for each argument."""
    def scores(Q, K):
        return Q @ K.T
    for kwargs, match in (
            ({"name": "scores"}, r"^assert_implementation: unknown name 'scores' \(did you mean "
                                 r"'compute_self_attention_scores'"),
            ({"name": SCORES, "scale": "x"}, r"^assert_implementation: scale must be"),
            ({"name": SCORES, "window": (1,)}, r"^assert_implementation: window must be"),
            ({"name": SCORES, "gqa": True}, r"^assert_implementation: gqa=True is for "
                                            r"scaled_dot_product_attention"),
            ({"name": SOFTMAX, "is_causal": True}, r"^assert_implementation: is_causal and "
                                                   r"window apply"),
            # NumPy's own refusal named neither
            ({"name": SCORES, "seed": -1}, r"^assert_implementation: seed must be a whole "
                                           r"number, 0 or more \(the seed of the random inputs\), "
                                           r"got -1$"),
            ({"name": SCORES, "seed": "x"}, r"^assert_implementation: seed must be a whole")):
        with pytest.raises(ValueError, match=match):
            assert_implementation(scores, **kwargs)
    with pytest.raises(TypeError, match=r"^assert_implementation: fn must be a function"):
        assert_implementation(np.zeros(3), SCORES)
    for seed in (1.5, True, None):
        with pytest.raises(ValueError, match=r"^check: seed must be a whole number"):
            check(scores, SCORES, seed=seed)
        with pytest.raises(ValueError, match=r"^cases: seed must be a whole number"):
            cases(SCORES, seed=seed)
    assert cases(SCORES, seed=np.int64(3))[0].args[0].tolist() == \
        cases(SCORES, seed=3)[0].args[0].tolist()


# ---- one deliberately buggy implementation per diagnosis -------------------------------------

def scores_raw(Q, K):                       # the notebook's raw convention, checked as scaled
    return Q @ K.T


def scores_extra_scale(Q, K):               # scaled, but the raw convention is asked
    return Q @ K.T / np.sqrt(K.shape[1])


def scores_dk(Q, K):
    return Q @ K.T / K.shape[1]


def scores_wrong_axis_dk(Q, K):             # d_k read from the number of keys
    return Q @ K.T / np.sqrt(K.shape[0])


def scores_k_not_transposed(Q, K):
    return Q @ K / np.sqrt(K.shape[1])


def scores_transposed(Q, K):
    return K @ Q.T / np.sqrt(K.shape[1])


def scores_in_place(Q, K):
    Q /= np.sqrt(Q.shape[1])
    return Q @ K.T


def scores_elementwise(Q, K):
    return (Q * K).sum(axis=1) / np.sqrt(K.shape[1])


def scores_flat(Q, K):                      # wrong output shape
    return (Q @ K.T).ravel() / np.sqrt(K.shape[1])


def softmax_wrong_axis(attn_scores):
    e = np.exp(attn_scores - attn_scores.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def softmax_no_max(attn_scores):
    e = np.exp(attn_scores)
    return e / e.sum(axis=-1, keepdims=True)


def softmax_no_keepdims(attn_scores):
    e = np.exp(attn_scores - attn_scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1)


def softmax_max_no_keepdims(attn_scores):
    e = np.exp(attn_scores - attn_scores.max(axis=-1))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_in_place(attn_scores):
    attn_scores -= attn_scores.max(axis=-1, keepdims=True)
    e = np.exp(attn_scores)
    return e / e.sum(axis=-1, keepdims=True)


def softmax_global_max(attn_scores):
    e = np.exp(attn_scores - attn_scores.max())
    return e / e.sum(axis=-1, keepdims=True)


def softmax_whole_matrix(attn_scores):
    e = np.exp(attn_scores - attn_scores.max())
    return e / e.sum()


def softmax_not_normalised(attn_scores):
    return np.exp(attn_scores - attn_scores.max(axis=-1, keepdims=True))


def softmax_no_exp(attn_scores):
    return attn_scores / attn_scores.sum(axis=-1, keepdims=True)


def softmax_transposed(attn_scores):
    return softmax(attn_scores).T


def softmax_raises(attn_scores):
    return np.softmax(attn_scores, axis=-1)


def softmax_unfinished(attn_scores):
    # TODO: Apply softmax along the correct axis
    pass


def softmax_yields(attn_scores):
    e = np.exp(attn_scores - attn_scores.max(axis=1, keepdims=True))
    yield e / e.sum(axis=1, keepdims=True)


def softmax_undefined_name(attn_scores):
    return np.exp(attn_scores) / total  # noqa: F821


def output_weights_transposed(attn_weights, V):
    return attn_weights.T @ V


def output_result_transposed(attn_weights, V):
    return (attn_weights @ V).T


def output_elementwise(attn_weights, V):
    return attn_weights * V


def layer_wrong_axis(X, W_q, W_k, W_v):
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    s = Q @ K.T / np.sqrt(K.shape[1])
    e = np.exp(s - s.max(axis=0, keepdims=True))
    return (e / e.sum(axis=0, keepdims=True)) @ V


def layer_raw(X, W_q, W_k, W_v):
    return raw_layer(X, W_q, W_k, W_v)


def layer_no_max(X, W_q, W_k, W_v):
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    e = np.exp(Q @ K.T / np.sqrt(K.shape[1]))
    return e / e.sum(axis=1, keepdims=True) @ V


def layer_no_keepdims(X, W_q, W_k, W_v):
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    s = Q @ K.T / np.sqrt(K.shape[1])
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1)) @ V          # n x n: runs, but divides by the wrong sums


def layer_k_not_transposed(X, W_q, W_k, W_v):
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    return softmax(Q @ K / np.sqrt(K.shape[1])) @ V


def layer_weights_transposed(X, W_q, W_k, W_v):
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    return softmax(Q @ K.T / np.sqrt(K.shape[1])).T @ V


def layer_result_transposed(X, W_q, W_k, W_v):
    return scaled_layer(X, W_q, W_k, W_v).T


def layer_no_projection(X, W_q, W_k, W_v):
    return softmax(X @ X.T / np.sqrt(W_k.shape[1])) @ X


def layer_d_model(X, W_q, W_k, W_v):
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    return softmax(Q @ K.T / np.sqrt(X.shape[1])) @ V


def layer_returns_tuple(X, W_q, W_k, W_v):
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    w = softmax(Q @ K.T / np.sqrt(K.shape[1]))
    return w @ V, w


def layer_raw_and_wrong_axis(X, W_q, W_k, W_v):  # two mistakes at once
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    s = Q @ K.T
    e = np.exp(s - s.max(axis=0, keepdims=True))
    return (e / e.sum(axis=0, keepdims=True)) @ V


def sdpa_wrong_axis(Q, K, V):
    return softmax_wrong_axis(Q @ K.T / np.sqrt(K.shape[1])) @ V


# (id, function, name, scale, patterns every one of which the report's text must contain)
BUGGY = [
    ("scores raw, scaled asked", scores_raw, SCORES, None,
     ["raw dot products", 'check was asked for scaled dot-product attention (scale="scaled"',
      'scale="either"']),
    ("scores extra 1/sqrt(d_k)", scores_extra_scale, SCORES, 1.0,
     ['divided by sqrt(d_k), but check was asked for the raw convention (scale="raw")']),
    ("scores 1/d_k", scores_dk, SCORES, None, ["divided by d_k"]),
    ("scores 1/d_k, raw asked", scores_dk, SCORES, 1.0, ["divided by d_k, but check was asked for the raw"]),
    ("scores sqrt(n_k)", scores_wrong_axis_dk, SCORES, None, ["number of keys (K.shape[0])"]),
    ("scores K not transposed", scores_k_not_transposed, SCORES, None,
     ["K is not transposed", "raised ValueError: matmul"]),
    ("scores transposed", scores_transposed, SCORES, None, ["scores are transposed"]),
    ("scores input modified", scores_in_place, SCORES, 1.0,
     ["changes its input in place", "changed its input Q in place"]),
    ("scores elementwise", scores_elementwise, SCORES, None,
     ["not an elementwise product Q * K"]),
    ("scores wrong shape", scores_flat, SCORES, None,
     [r"returned shape (15,), expected (3, 5) = (n_q, n_k)"]),
    ("softmax wrong axis", softmax_wrong_axis, SOFTMAX, None,
     ["Softmax over the wrong axis", "axis=-1"]),
    ("softmax no max subtraction", softmax_no_max, SOFTMAX, None,
     ["No max subtraction", "yours nan", "overflow encountered in exp"]),
    ("softmax sum without keepdims", softmax_no_keepdims, SOFTMAX, None,
     ["A sum without keepdims", "keepdims=True", "could not be broadcast"]),
    ("softmax max without keepdims", softmax_max_no_keepdims, SOFTMAX, None,
     ["A max without keepdims"]),
    ("softmax in float32 for float64 inputs", float32_softmax, SOFTMAX, None,
     ["compute in float32", "returned float32 for float64 inputs"]),
    ("softmax input modified", softmax_in_place, SOFTMAX, None,
     ["changes its input in place", "the output is right; your function changed its input attn_scores in place"]),
    ("softmax global max", softmax_global_max, SOFTMAX, None, ["maximum of the whole matrix"]),
    ("softmax over the whole matrix", softmax_whole_matrix, SOFTMAX, None,
     ["Softmax over the whole matrix"]),
    ("softmax not normalised", softmax_not_normalised, SOFTMAX, None, ["not normalised"]),
    ("softmax without exp", softmax_no_exp, SOFTMAX, None, ["np.exp is missing"]),
    ("softmax transposed", softmax_transposed, SOFTMAX, None,
     ["Your weights are transposed", "returned shape (5, 3), expected (3, 5)"]),
    ("softmax raises", softmax_raises, SOFTMAX, None,
     ["raised AttributeError", "has no attribute 'softmax'",
      "when called as softmax_attention_weights(attn_scores (3, 5))",
      "of softmax_raises(): return np.softmax(attn_scores, axis=-1)"]),
    ("softmax unfinished", softmax_unfinished, SOFTMAX, None, ["returned None", "`pass`"]),
    ("softmax yields", softmax_yields, SOFTMAX, None,
     ["returned a generator (the function uses `yield`), not an array", "Use `return`, not `yield`"]),
    ("softmax undefined name", softmax_undefined_name, SOFTMAX, None,
     ["raised NameError", "name 'total' is not defined", "A name is not defined"]),
    ("output weights transposed", output_weights_transposed, OUTPUT, None,
     ["The weights are transposed", "attn_weights.T @ V"]),
    ("output result transposed", output_result_transposed, OUTPUT, None,
     ["Your result is transposed", "returned shape (2, 3), expected (3, 2)"]),
    ("output elementwise", output_elementwise, OUTPUT, None,
     ["You multiplied elementwise", "raised ValueError: operands could not be broadcast"]),
    ("layer wrong axis", layer_wrong_axis, LAYER, None, ["Softmax over the wrong axis"]),
    ("layer raw, scaled asked", layer_raw, LAYER, None,
     ["raw dot products", 'scale="raw"']),
    ("layer no max subtraction", layer_no_max, LAYER, None, ["No max subtraction"]),
    ("layer sum without keepdims", layer_no_keepdims, LAYER, None, ["A sum without keepdims"]),
    ("layer K not transposed", layer_k_not_transposed, LAYER, None, ["K is not transposed"]),
    ("layer weights transposed", layer_weights_transposed, LAYER, None, ["The weights are transposed"]),
    ("layer result transposed", layer_result_transposed, LAYER, None,
     ["Your result is transposed", "returned shape (3, 5), expected (5, 3)"]),
    ("layer no projection", layer_no_projection, LAYER, None, ["X is not projected"]),
    ("layer sqrt(d_model)", layer_d_model, LAYER, None, ["sqrt(d_model)"]),
    ("layer returns a tuple", layer_returns_tuple, LAYER, None, ["returns a tuple", "not the weights"]),
    ("layer raw and wrong axis", layer_raw_and_wrong_axis, LAYER, None,
     ["Softmax over the wrong axis", "Also: Your scores are the raw dot products"]),
    ("sdpa wrong axis", sdpa_wrong_axis, SDPA, None, ["Softmax over the wrong axis"]),
    ("layer with the wrong arguments", sdpa_wrong_axis, LAYER, None,
     ["raised TypeError", "does not take the arguments check() passes: "
      "self_attention_layer(X, W_q, W_k, W_v)"]),
]


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("label, fn, name, scale, patterns", BUGGY, ids=[b[0] for b in BUGGY])
def test_each_mistake_is_caught_and_named(label, fn, name, scale, patterns, seed):
    report = check(fn, name, scale=scale, seed=seed)
    text = str(report)
    flat = " ".join(text.split())  # the report wraps long lines
    assert not report, text
    assert report.failures and report.diagnoses
    assert text.splitlines()[0].startswith(f"check({fn.__name__} as {name}): FAILED")
    for pattern in patterns:
        assert pattern in flat, f"{pattern!r} missing from:\n{text}"
    with pytest.raises(AssertionError) as info:
        assert_implementation(fn, name, scale=scale, seed=seed)
    # a grader's pinned convention (scale=None: scaled) is told as the course's, not as check's
    from selfattn.testing.report import _in_course_voice
    assert str(info.value) == str(_in_course_voice(report))
    # Every failed case says what is wrong, in words (never a bare "False").
    for r in report.failures:
        assert r.hints and r.message


def test_an_exception_is_explained_by_the_mistake_found_where_sizes_fit():
    # Q @ K raises on unequal sizes and runs on square ones: one diagnosis, not two.
    report = check(scores_k_not_transposed, SCORES)
    assert len(report.diagnoses) == 1 and report.diagnoses[0].startswith("K is not transposed")
    raised = [r for r in report.failures if r.message.startswith("raised ValueError")]
    assert raised and all(r.hints == report.diagnoses for r in raised)

    def scores_raises_only(Q, K):  # raises everywhere: the generic hint stays
        return np.matmul(Q, K[:, :1])

    report = check(scores_raises_only, SCORES)
    assert report.diagnoses[0].startswith("A matrix product got shapes that do not fit") and \
        "the scores Q @ K.T are (n_q, d_k) @ (d_k, n_k) -> (n_q, n_k)" in report.diagnoses[0]


def test_two_mistakes_at_once_are_one_diagnosis():
    report = check(layer_raw_and_wrong_axis, LAYER, scale="scaled")
    assert len(report.diagnoses) == 1
    assert report.diagnoses[0].startswith("Softmax over the wrong axis")
    assert "Also: Your scores are the raw dot products" in report.diagnoses[0]


def test_the_most_common_mistake_comes_first():
    report = check(softmax_no_max, SOFTMAX)
    assert report.diagnoses[0].startswith("No max subtraction")
    assert [r.verdict for r in report.results if not r.case.large and not r.case.batched] == \
        ["pass"] * 4
    assert all(r.verdict == "FAIL" for r in report.results if r.case.large)
    report = check(scores_raw, SCORES, scale="scaled")
    assert len(report.diagnoses) == 1 and 'scale="raw"' in report.diagnoses[0]


def test_no_convention_is_named_when_no_result_could_be_compared():
    """A scaled layer that returns (output, weights) fails every case before any value is
    compared: the report names neither convention (the tie-break's raw would be the wrong one),
    and the hint says what to change. A result that was compared names the closest."""
    for report in (check(layer_returns_tuple, LAYER), check(layer_returns_tuple, LAYER, seed=3)):
        text = str(report)
        assert "Convention: neither recognised: no result of yours could be compared;" in text
        assert "raw dot products Q @ K.T" not in text and "closest" not in text
        assert "returns a tuple" in report.diagnoses[0]
        assert report._repr_html_().count("Convention: neither recognised") == 1
    wrong_axis = str(check(layer_raw_and_wrong_axis, LAYER))
    assert "Convention: compared with the closest to yours: raw dot products" in wrong_axis


def test_either_convention_passes_by_default_and_a_pinned_one_fails_the_other():
    for raw, scaled, name in ((scores_raw, scaled_scores, SCORES), (layer_raw, scaled_layer, LAYER)):
        for fn, convention in ((raw, "raw"), (scaled, "scaled")):
            report = check(fn, name)
            assert report and report.convention == convention
            assert f"recognised: {'raw dot products' if convention == 'raw' else 'scores scaled'}" \
                in str(report)
            assert check(fn, name, scale=convention)
        assert check(raw, name, scale=1.0) and check(scaled, name, scale=None)
        assert not check(raw, name, scale="scaled") and not check(scaled, name, scale="raw")
    with pytest.raises(ValueError, match='scale must be "raw", "scaled" or "either"'):
        check(scores_raw, SCORES, scale="sqrt")
    with pytest.raises(ValueError, match='scale must be "raw", "scaled" or a positive number'):
        cases(SCORES, scale="sqrt")
    # a teacher copying check's default into a per-case test of the scores is told what to pick
    with pytest.raises(ValueError, match='cases: scale="either" is for check and '
                                         'assert_implementation.*pick one: "raw" '
                                         r'\(the notebook\'s Q @ K.T\) or "scaled"'):
        cases(SCORES, scale="either")


def test_either_convention_breaks_a_tie_by_how_close_the_results_are():
    # jax.nn.dot_product_attention refuses a V narrower than K: every case but one raised, in
    # both conventions alike, and the tie went to raw, whose answer the one result is 0.5 from
    # (7e-8 from the scaled one, float32 inside), with a hint of scores raw "in some cases"
    def scaled_dot_product_attention(Q, K, V):
        if V.shape[-1] != K.shape[-1]:
            raise ValueError(f"value shape should be {K.shape}: but got {V.shape}")
        f = lambda x: np.asarray(x, np.float32)  # noqa: E731
        s = f(Q) @ np.swapaxes(f(K), -1, -2) / np.float32(np.sqrt(Q.shape[-1]))
        p = np.exp(s - s.max(-1, keepdims=True))
        return (p / p.sum(-1, keepdims=True) @ f(V)).astype(Q.dtype)

    report = check(scaled_dot_product_attention, SDPA)
    assert not report and report.scale is None, str(report)
    assert "closest to yours: scores scaled by 1/sqrt(d_k)" in str(report)
    assert "mixed_scale" not in report.mistakes


def test_either_convention_must_be_consistent_across_cases():
    def scores_mixed(Q, K):  # raw in float64, scaled in float32
        s = Q @ K.T
        return s / np.sqrt(K.shape[1]) if s.dtype == np.float32 else s

    report = check(scores_mixed, SCORES)
    assert not report
    assert report.mistakes == ["mixed_scale"]


def test_a_custom_scale_is_checked():
    def scores_times_half(Q, K):
        return 0.5 * (Q @ K.T)

    assert check(scores_times_half, SCORES, scale=0.5)
    report = check(scores_raw, SCORES, scale=0.5)
    assert not report and "scale=0.5: multiply the dot products by it" in " ".join(str(report).split())


def test_max_error_and_index_are_reported():
    report = check(softmax_wrong_axis, SOFTMAX)
    failed = report.failures[0]
    exp = failed.case.expected
    got = softmax_wrong_axis(np.array(failed.case.args[0]))
    assert failed.max_error == pytest.approx(np.abs(got - exp).max())
    assert failed.worst_index is not None and len(failed.worst_index) == 2
    # the index is that of the largest difference, not of the largest relative one (which differ
    # here: the wrong axis's weights are furthest apart in relative terms where they are small)
    gaps = np.abs(got - exp)
    assert gaps[failed.worst_index] == gaps.max()
    assert np.unravel_index(np.argmax(gaps / exp), exp.shape) != failed.worst_index
    assert f"max error {failed.max_error:.3g} at {testing.compare._fmt_index(failed.worst_index)}" \
        in str(report)
    assert all(r.max_error is not None and r.max_error < 1e-12
               for r in check(softmax, SOFTMAX).results if r.case.dtype == np.float64)


def test_check_never_modifies_its_cases_and_is_deterministic():
    a = [c.args for c in cases(SOFTMAX)]
    check(softmax_in_place, SOFTMAX)
    b = [c.args for c in cases(SOFTMAX)]
    assert all(np.array_equal(x, y) for xs, ys in zip(a, b) for x, y in zip(xs, ys))
    assert str(check(softmax_wrong_axis, SOFTMAX)) == str(check(softmax_wrong_axis, SOFTMAX))
    c1, c2 = cases(SOFTMAX, seed=1), cases(SOFTMAX, seed=2)
    assert not np.array_equal(c1[0].args[0], c2[0].args[0])


def test_overflow_raised_under_seterr_is_diagnosed():
    def softmax_strict(attn_scores):
        with np.errstate(over="raise"):
            e = np.exp(attn_scores)
        return e / e.sum(axis=-1, keepdims=True)

    report = check(softmax_strict, SOFTMAX)
    assert not report and report.diagnoses[0].startswith("No max subtraction")
    assert "raised FloatingPointError: overflow encountered in exp" in str(report)


def test_what_a_function_changes_while_it_runs_is_put_back_before_the_next_student(tmp_path):
    """One student's scores function that set np.sqrt = lambda x: 1.0 (and moved the working
    folder, changed the print options, seeded NumPy's generator) left them so for every later
    check in the process: the next student's correct scaled scores read as "raw"."""
    import math
    import os
    real_sqrt, real_isqrt, folder = np.sqrt, math.isqrt, os.getcwd()
    printing, random_state = np.get_printoptions(), np.random.get_state()

    def compute_self_attention_scores(Q, K):
        scaled = Q @ K.T / np.sqrt(Q.shape[-1])
        np.sqrt = lambda x: 1.0
        math.isqrt = None
        os.chdir(tmp_path)
        np.set_printoptions(precision=2)
        np.random.seed(0)
        return scaled

    report = check(compute_self_attention_scores, scale="scaled")
    assert (np.sqrt, math.isqrt, os.getcwd()) == (real_sqrt, real_isqrt, folder)
    assert np.get_printoptions() == printing
    assert np.array_equal(np.random.get_state()[1], random_state[1])
    assert report.passed
    assert report.results[0].warnings[0] == (
        "your function changed math.isqrt, np.sqrt while it ran: they were put back after the "
        "call, so that what follows (the other checks, the next student's) uses the library's "
        "own (give a function of your own a name of its own, such as my_isqrt)")

    def next_student(Q, K):
        return Q @ K.T / np.sqrt(Q.shape[-1])

    assert check(next_student, SCORES, scale="scaled").passed


def test_input_in_a_checked_function_gets_no_answer(monkeypatch):
    """As in Jupyter, whose input() asks the notebook's user (in a teacher's grading loop it
    waited for someone to type): the function raises EOFError, which the report shows."""
    import builtins
    asked = []

    def frontend_input(prompt=""):
        asked.append(prompt)
        return "1"

    monkeypatch.setattr(builtins, "input", frontend_input)

    def softmax_attention_weights(attn_scores):
        return attn_scores * float(input("a factor: "))

    report = check(softmax_attention_weights)
    assert not asked and builtins.input is frontend_input
    assert "raised EOFError: EOF when reading a line" in str(report)


def test_a_function_that_calls_selfattns_own_is_told_so():
    """A wrapper around selfattn's softmax passed with no word, while load_notebook and grade
    count it as missing (its result is selfattn's): the learner saw a pass the teacher's grader
    would not give. The one-line summary shows the report's notes too."""
    def softmax_attention_weights(attn_scores):
        return selfattn.softmax_attention_weights(attn_scores)

    report = check(softmax_attention_weights)
    assert report.passed
    assert report.notes == [
        "This softmax_attention_weights calls selfattn's selfattn.softmax_attention_weights, so "
        "what it returns is selfattn's work and passes by construction; a teacher's grader "
        "(load_notebook, python -m selfattn grade) counts it as missing. Compute it with NumPy "
        "yourself, and keep selfattn to check your function against."]
    assert report.summary() == "check(softmax_attention_weights): passed 7 of 7 cases (1 note)"
    assert not check(softmax_no_max, SOFTMAX).notes      # a learner's own: no note


def test_a_function_that_prints_its_result_is_told_to_return_it(capsys):
    """It was told that it "still ends in `pass` ... or lacks a `return`"; what it lacks is that
    its print(...) should be a return. A function with a return somewhere keeps that hint."""
    def softmax_attention_weights(attn_scores):
        e = np.exp(attn_scores - attn_scores.max(axis=-1, keepdims=True))
        print(e / e.sum(axis=-1, keepdims=True))

    def returns_on_one_branch(attn_scores):
        if attn_scores.ndim > 5:
            return attn_scores
        print("done")

    assert check(softmax_attention_weights).diagnoses == [
        "Your function prints its result but returns None: a function hands its result back "
        "with `return` (replace print(...) with return ...); printing only shows it."]
    assert check(returns_on_one_branch, SOFTMAX).diagnoses[0].startswith(
        "Your function returned None: it still ends in `pass`")


def test_keyboard_interrupt_is_not_swallowed():
    def interrupted(attn_scores):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        check(interrupted, SOFTMAX)


# ---- renderings --------------------------------------------------------------------------------

def test_text_rendering_lists_case_verdict_error_and_hint():
    report = check(softmax_no_max, SOFTMAX)
    text = str(report)
    lines = text.splitlines()
    assert lines[0] == "check(softmax_no_max as softmax_attention_weights): FAILED 2 of 7 cases"
    assert "What is wrong:" in text and "[1] No max subtraction" in text
    for r in report.results:
        row = next(line for line in lines if r.case.label in line)
        assert row.lstrip().startswith(r.verdict)
        if r.max_error is not None:
            assert "max error" in row
    assert "what is wrong: [1]" in text
    assert repr(report).startswith("<CheckReport check(softmax_no_max")


def test_html_rendering_is_a_table_with_every_case():
    report = check(softmax_wrong_axis, SOFTMAX)
    page = report._repr_html_()
    assert page.startswith("<div") and page.endswith("</div>")
    assert page.count("<tr>") == len(report.results) + 1  # header + one row per case
    assert "<ol><li>Softmax over the wrong axis" in page and "what is wrong:</i> see 1 above" in page
    assert "<table>" in page and "</table>" in page
    assert "FAIL" in page and "Softmax over the wrong axis" in page
    for r in report.results:
        assert r.case.label in page
    # Everything from the learner (messages, code) is escaped.
    def sneaky(attn_scores):
        raise ValueError("<script>alert(1)</script>")
    page = check(sneaky, SOFTMAX)._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "passed" in check(softmax, SOFTMAX)._repr_html_()


def test_a_bfloat16_result_is_named_as_too_coarse_to_check():
    # np.asarray of a jax bfloat16 array: "Your function must return a NumPy array of numbers",
    # though it did return one
    ml_dtypes = pytest.importorskip("ml_dtypes")

    def softmax_attention_weights(attn_scores):
        e = np.exp(attn_scores - attn_scores.max(axis=-1, keepdims=True))
        return (e / e.sum(axis=-1, keepdims=True)).astype(ml_dtypes.bfloat16)

    report = check(softmax_attention_weights)
    assert not report
    text = str(report)
    assert "returned an array of dtype bfloat16" in text
    assert "Your function returns bfloat16, whose few bits of precision" in text
    assert "must return a NumPy array of numbers" not in text


# ---- assert_attention_close --------------------------------------------------------------------

def test_assert_attention_close_names_a_bfloat16_dtype_as_what_to_convert():
    """A bfloat16 result (ml_dtypes', as JAX's arrays convert to) was "not of real numbers";
    it is named as a dtype to convert from, for actual (the student's: a failed assertion)
    and for desired (the test's own mistake: TypeError)."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = np.full((2, 2), 0.5)
    with pytest.raises(AssertionError, match=r"actual has dtype bfloat16, which is not compared "
                                             r"in: return float32 or float64"):
        assert_attention_close(x.astype(ml_dtypes.bfloat16), x)
    with pytest.raises(TypeError, match=r"desired has dtype bfloat16.*desired\.astype\(np\.float32\)"):
        assert_attention_close(x, x.astype(ml_dtypes.bfloat16))


def test_assert_attention_close_silent_within_dtype_tolerance():
    x = np.linspace(0.1, 1.0, 12).reshape(3, 4)
    assert_attention_close(x, x * (1 + 5e-11))
    assert_attention_close(x.astype(np.float32), (x * (1 + 5e-6)).astype(np.float32))
    assert_attention_close(x.astype(np.float16), (x * (1 + 5e-4)).astype(np.float16))
    assert_attention_close([[np.nan, np.inf]], [[np.nan, np.inf]])
    with pytest.raises(AssertionError):
        assert_attention_close(x, x * (1 + 1e-8))  # float64 is strict
    assert_attention_close(x, x * (1 + 1e-8), rtol=1e-7)


def test_assert_attention_close_message_says_where_and_how_much():
    desired = np.full((3, 4), 0.25)
    actual = desired.copy()
    actual[2, 1] = 0.5
    actual[0, 0] = 0.25 + 1e-9
    with pytest.raises(AssertionError) as info:
        assert_attention_close(actual, desired)
    msg = str(info.value)
    assert "float64 tolerance: rtol=1e-10, atol=1e-12" in msg
    assert "2 of 12 elements" in msg
    assert "Largest difference at index (2, 1): actual 0.5, desired 0.25 (|difference| 0.25, relative 1)" in msg

    with pytest.raises(AssertionError, match=r"float32 tolerance: rtol=1e-05"):
        assert_attention_close(actual.astype(np.float32), desired)  # the coarser dtype decides

    # the largest difference, 10, is named where it is; the relative one (999x) is only a number
    with pytest.raises(AssertionError) as info:
        assert_attention_close([1, 100], [0.001, 90])
    assert "Largest difference at index (1,): actual 100, desired 90 (|difference| 10," \
        in str(info.value)
    # a larger difference that is within the tolerance (of a large value) is not the one shown
    with pytest.raises(AssertionError) as info:
        assert_attention_close([1e6 + 1e-5, 1e-6], [1e6, 0.0])
    assert "Largest difference outside the tolerance at index (1,)" in str(info.value)

    with pytest.raises(AssertionError, match=r"actual looks transposed"):
        assert_attention_close(np.zeros((4, 3)), np.zeros((3, 4)))
    with pytest.raises(AssertionError, match=r"Shapes differ: actual \(3,\), desired \(3, 4\)"):
        assert_attention_close(np.zeros(3), np.zeros((3, 4)))
    with pytest.raises(AssertionError, match=r"inf or NaN on one side only; the first at index "
                                             r"\(0, 1\): actual nan, desired 0.25"):
        bad = desired.copy()
        bad[0, 1] = np.nan
        assert_attention_close(bad, desired)
    with pytest.raises(AssertionError, match=r"^grading step 2\n"):
        assert_attention_close(actual, desired, err_msg="grading step 2")
    # a wrong answer of the wrong kind fails the assertion (a failed test, not an error in it);
    # a `desired` of the wrong kind is the test's own mistake
    with pytest.raises(AssertionError, match=r"actual is an array of dtype complex128, not of "
                                             r"real numbers: return an np.ndarray of floats"):
        assert_attention_close(np.zeros(2, complex), np.zeros(2))
    with pytest.raises(AssertionError, match=r"actual is a dict, not an array of numbers"):
        assert_attention_close({"a": 1}, np.zeros(2))
    with pytest.raises(AssertionError, match=r"actual is an array of dtype object"):
        assert_attention_close(np.array([0.5, "x"], dtype=object), np.zeros(2))

    class Refuses:      # as a torch tensor that requires grad does
        def __array__(self, dtype=None, copy=None):
            raise RuntimeError("Can't call numpy() on Tensor that requires grad.")
    with pytest.raises(AssertionError, match=r"actual, a Refuses, could not be read as an array: "
                                             r"Can't call numpy\(\) on Tensor"):
        assert_attention_close(Refuses(), np.zeros(2))
    with pytest.raises(TypeError, match="desired has dtype complex"):
        assert_attention_close(np.zeros(2), np.zeros(2, complex))


# ---- cases() -----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 5])
@pytest.mark.parametrize("name", testing.NAMES)
def test_cases_have_unequal_sizes_both_dtypes_large_single_square_and_batched(name, seed):
    cs = cases(name, seed=seed)
    ids = [c.id for c in cs]
    assert len(set(ids)) == len(ids)
    assert {c.dtype for c in cs} == {np.dtype(np.float64), np.dtype(np.float32)}
    assert any(c.batched for c in cs)
    assert not any(c.batched for c in cases(name, batched=False))
    assert any(c.id == "single-token" and all(a.shape[-2] == 1 for a in c.args[:1]) for c in cs)
    assert any(c.id.startswith("square") for c in cs)
    if name != OUTPUT:
        assert any(c.large for c in cs)
    unequal = next(c for c in cs if c.id == "unequal-float64")
    sizes = {s for a in unequal.args for s in a.shape}
    assert len(sizes) >= (2 if name == SOFTMAX else 3)  # n_q, n_k, d_k (and d_v) all differ
    for c in cs:
        assert str(c) == c.id and c.name == name
        assert list(c.inputs) == list(c.arg_names)
        for a in c.args + (c.expected,):
            assert not a.flags.writeable
        assert np.isfinite(c.expected).all()
    for c in cs:
        if c.large:
            scores = _scores_of(name, c)
            # exp overflows in the case's dtype without the max subtraction
            assert np.abs(scores).max() > np.log(np.finfo(c.dtype).max)


@pytest.mark.parametrize("name", [LAYER, SDPA])
@pytest.mark.parametrize("scale", ["raw", "scaled"])
def test_exact_float32_answers_pass_every_seed(name, scale):
    """A correct float32 answer passes every case, whatever the seed: the large-score cases keep
    only draws where float32 rounding cannot reach the tolerance (a near tie of two large scores
    with distant V rows failed an exact answer on seeds 23, 40, 46 and 59), and the expected
    results are computed in float64, then rounded."""
    def with_softmax(sm):
        def attend(Q, K, V):
            s = Q @ K.T * (1.0 if scale == "raw" else 1.0 / np.sqrt(K.shape[-1]))
            return sm(s) @ V
        if name == SDPA:
            return attend
        return lambda X, W_q, W_k, W_v: attend(X @ W_q, X @ W_k, X @ W_v)

    def late(s):
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        return e * (1 / e.sum(axis=-1, keepdims=True))

    ours = getattr(selfattn, name)
    solutions = [with_softmax(softmax), with_softmax(late),
                 lambda *a: ours(*a, scale=1.0) if scale == "raw" else ours(*a)]
    for seed in range(80):
        for c in cases(name, scale=scale, seed=seed, batched=False):
            for fn in solutions:
                assert_attention_close(fn(*c.args), c.expected,
                                       err_msg=f"seed {seed}, {c.label}")


@pytest.mark.parametrize("name", testing.NAMES)
def test_expected_results_are_float64_ones_rounded(name):
    for c in cases(name, seed=3):
        wide = [a.astype(np.float64) for a in c.args]
        assert c.expected.dtype == np.result_type(*c.args)
        if c.expected.dtype == np.float32:
            kwargs = {"scale": c.scale} if c.scale is not None else {}
            if c.grouped:
                kwargs["enable_gqa"] = True
            exact = getattr(selfattn, name)(*wide, **kwargs, **c.kwargs)
            np.testing.assert_array_equal(c.expected, exact.astype(np.float32))


def _scores_of(name, c):
    a = [np.asarray(x, np.float64) for x in c.args]
    if name == SOFTMAX:
        return a[0]
    if name == LAYER:
        return (a[0] @ a[1]) @ (a[0] @ a[2]).T * c.scale
    return a[0] @ a[1].T * c.scale


@pytest.mark.parametrize("name", testing.NAMES)
def test_cases_expected_values_match_an_independent_numpy_computation(name):
    for c in cases(name, scale=1.0) + cases(name):
        a = [np.asarray(x, np.longdouble) for x in c.args]
        if name == SCORES:
            want = a[0] @ np.swapaxes(a[1], -1, -2) * c.scale
        elif name == SOFTMAX:
            want = batched_softmax(a[0])
        elif name == OUTPUT:
            want = a[0] @ a[1]
        elif name == SDPA:
            want = batched_softmax(a[0] @ np.swapaxes(a[1], -1, -2) * c.scale) @ a[2]
        else:
            q, k, v = a[0] @ a[1], a[0] @ a[2], a[0] @ a[3]
            want = batched_softmax(q @ np.swapaxes(k, -1, -2) * c.scale) @ v
        assert_attention_close(c.expected, np.asarray(want, np.float64).astype(c.dtype),
                               err_msg=f"{name}[{c.id}]")


def test_cases_scale_conventions():
    raw = {c.id: c for c in cases(SCORES, scale=1.0)}
    scaled = {c.id: c for c in cases(SCORES)}
    for id_, c in scaled.items():
        d_k = c.args[0].shape[-1]
        assert c.scale == pytest.approx(1 / np.sqrt(d_k)) and raw[id_].scale == 1.0
        np.testing.assert_allclose(c.expected, raw[id_].expected * c.scale, rtol=1e-6)
    assert all(c.scale is None for c in cases(SOFTMAX))


def test_cases_parametrize_a_grader():
    for c in cases(SOFTMAX, batched=False):
        assert_attention_close(softmax(np.array(c.args[0])), c.expected)
    bad = [c for c in cases(SOFTMAX, batched=False)
           if not _close(softmax_wrong_axis(np.array(c.args[0])), c.expected)]
    assert bad and re.fullmatch(r"[\w-]+", bad[0].id)
    assert "Case softmax_attention_weights[unequal-float64]: attn_scores (3, 5) -> (3, 5)" in repr(bad[0])


def _close(a, b):
    try:
        assert_attention_close(a, b)
        return True
    except AssertionError:
        return False


def test_testing_is_an_attribute_after_import():
    import subprocess
    import sys
    code = ("import sys, selfattn; selfattn.testing.check; "
            "assert 'matplotlib' not in sys.modules, 'import selfattn imported matplotlib'")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert selfattn.testing is testing
    assert {"testing", "explain", "plot_attention"} <= set(selfattn.__all__)


def test_docstring_examples_run():
    import doctest

    import selfattn._explain
    import selfattn._plot
    for module in (testing, selfattn._explain, selfattn._plot):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0 and result.attempted > 0, module.__name__


def test_a_nan_answer_is_reported_as_nan_not_as_an_infinite_error():
    def softmax_of_nans(s):
        return np.full(np.shape(s), np.nan)

    report = check(softmax_of_nans, SOFTMAX)
    failed = report.failures[0]
    assert failed.max_error == np.inf  # the field: no finite bound on the error
    line = f"max error inf or NaN at {testing.compare._fmt_index(failed.worst_index)}"
    assert line in str(report) and "max error inf at" not in str(report)
    assert f">inf or NaN at {testing.compare._fmt_index(failed.worst_index)}</td>" \
        in report._repr_html_()


def test_assert_attention_close_says_what_a_wrong_backward_has_in_common():
    """A learner checking a hand-written backward against selfattn's gradients got only "100%
    differ" or "Shapes differ": a missing 1/sqrt(d_k) in dQ, a weight's gradient not summed over
    the batch, and selfattn's own float32 weight gradient against its float64 one (elements
    near 0 where large terms cancel) each now say what their differences have in common."""
    rng = np.random.default_rng(0)
    dO, Q, K, V = rng.normal(size=(4, 5, 4))
    dQ, dK, dV = selfattn.scaled_dot_product_attention_backward(dO, Q, K, V)
    with pytest.raises(AssertionError, match=r"Actual is desired times 2 everywhere: a "
                                             r"constant factor too many or too few\.$"):
        assert_attention_close(dQ * np.sqrt(4), dQ)      # no 1/sqrt(d_k) in dQ = scale dS K
    with pytest.raises(AssertionError, match=r"times 0.353553 everywhere \(= 1/sqrt\(8\)\)"):
        assert_attention_close(dK / np.sqrt(8), dK)
    with pytest.raises(AssertionError, match=r"times -0.2 everywhere \(= -1/5\)"):
        assert_attention_close(dK / -5, dK)
    with pytest.raises(AssertionError, match=r"times -1 everywhere: the sign is flipped\.$"):
        assert_attention_close(-dV, dV)
    # a factor needs several values to show in: not one element, nor one non-zero; and it is
    # tested at the dtype's tolerance, not at a loose rtol the caller gave
    for actual, desired, kw in [([3.0], [2.0], {}), ([0.7, 0, 0], [1.0, 0, 0], {}),
                                (dQ * np.linspace(1.1, 1.3, dQ.size).reshape(dQ.shape), dQ,
                                 {"rtol": 0.01})]:
        with pytest.raises(AssertionError) as info:
            assert_attention_close(actual, desired, **kw)
        assert "everywhere" not in str(info.value)
    # W_v shared by a batch of 3: its gradient is the sum of the items' X^T dV
    X = rng.normal(size=(3, 5, 6))
    W = rng.normal(size=(3, 6, 4))
    dY = rng.normal(size=(3, 5, 4))
    grads = selfattn.self_attention_layer_backward(dY, X, *W)
    per_item = np.stack([selfattn.self_attention_layer_backward(dY[b], X[b], *W)[3]
                         for b in range(3)])
    with pytest.raises(AssertionError) as info:
        assert_attention_close(per_item, grads[3])
    assert ("Shapes differ: actual (3, 6, 4), desired (6, 4). Summed over axis 0, actual is "
            "desired: the gradient of an input shared across a batch (broadcast)") in str(info.value)
    # in float32 too, where the sum over the batch rounds (it failed the elementwise tolerance
    # for dW_q and dW_k, so only dW_v got the hint)
    X32, dY32 = rng.normal(size=(2, 16, 64, 32)).astype(np.float32)
    W32 = rng.normal(size=(3, 32, 32)).astype(np.float32)
    grads32 = selfattn.self_attention_layer_backward(dY32, X32, *W32)
    for k in (1, 2, 3):
        items = np.stack([selfattn.self_attention_layer_backward(dY32[b], X32[b], *W32)[k]
                          for b in range(len(X32))])
        with pytest.raises(AssertionError, match=r"Summed over axis 0, actual is desired"):
            assert_attention_close(items, grads32[k])
    with pytest.raises(AssertionError) as info:
        assert_attention_close(per_item[:, ::-1], grads[3])
    assert str(info.value) == "Shapes differ: actual (3, 6, 4), desired (6, 4)."
    with pytest.raises(AssertionError, match=r"\(actual has an extra axis 0 of length 1\)\.$"):
        assert_attention_close(grads[3][None], grads[3])
    # float32 rounding in a gradient of large entries: fine to the array's scale, not to each
    # element's; the advice passes
    desired = np.array([39.7875, 0.0613702, -30.5])
    actual = np.float32([39.78751, 0.061387, -30.5])
    with pytest.raises(AssertionError) as info:
        assert_attention_close(actual, desired)
    assert ("of the largest value (39.7875), the size float32 rounding reaches in sums whose "
            "large terms cancel") in " ".join(str(info.value).split())
    assert "atol=1e-05 * np.abs(desired).max()" in str(info.value)
    assert_attention_close(actual, desired, atol=1e-5 * np.abs(desired).max())
    # not for differences far beyond rounding, nor for an inf both share
    for actual, desired in [(np.float32([1e6, 3, -2, 8]), np.float32([1e6, 1, 2, 3])),
                            (np.float32([np.inf, 5, -7, 30]), np.float32([np.inf, 1, 2, 3]))]:
        with pytest.raises(AssertionError) as info:
            assert_attention_close(actual, desired)
        assert "rounding" not in str(info.value)
    # float64 arithmetic that lost float32's digits, also where an element near 0 makes the
    # relative difference large
    with pytest.raises(AssertionError, match=r"Actual is close, but not to float64's precision"):
        assert_attention_close(dQ.astype(np.float32).astype(np.float64), dQ)
    near_zero = dQ.copy()
    near_zero[0, 0] = 1e-6
    with pytest.raises(AssertionError, match=r"Actual is close, but not to float64's precision"):
        assert_attention_close(near_zero.astype(np.float32).astype(np.float64) + 3e-11 * (
            near_zero == 1e-6), near_zero)
    # and none of it where the differences have nothing in common
    with pytest.raises(AssertionError) as info:
        assert_attention_close(dQ + rng.normal(size=dQ.shape), dQ)
    assert str(info.value).count("\n") == 2


def test_a_near_miss_shows_numbers_that_differ_and_says_it_is_close():
    """A near miss no named mistake explains (an epsilon in the softmax's denominator was one,
    and is now named: test_diagnoses): the numbers shown have the digits that tell them
    apart (6 digits made 'yours 0.526561, expected 0.526561'), and the report says the result is
    close but not to float64's precision, naming the likely causes."""
    def softmax_eps(attn_scores):
        e = np.exp(attn_scores - attn_scores.max(axis=-1, keepdims=True) + 1e-9 * attn_scores)
        return e / e.sum(axis=-1, keepdims=True)

    report = check(softmax_eps, SOFTMAX)
    assert not report
    text = " ".join(str(report).split())
    for pair in re.findall(r"yours ([-\d.e]+), expected ([-\d.e]+)", text):
        assert pair[0] != pair[1], pair
    assert "your result is close, but not to float64's precision" in text
    assert "an epsilon such as + 1e-9 in a denominator" in text
    assert testing.compare._fmt_pair(0.5265611234, 0.5265612234) == ("0.5265611", "0.5265612")
    assert testing.compare._fmt_pair(1.0, 1.0000001) == ("1.0000000", "1.0000001")  # zeros kept
    assert testing.compare._fmt_pair(0.25, 0.5) == ("0.25", "0.5")
    assert testing.compare._fmt_pair(1.0, 1.0) == ("1", "1")


class _OtherLibraryArray:
    """Another library's array (torch's, jax's): converts with np.asarray, is not an ndarray."""

    def __init__(self, values):
        self.values = values

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.values, dtype=dtype)


def test_another_librarys_array_fails_as_a_list_does_and_says_so():
    """A softmax returning a torch tensor passed every case, silently, where the same values
    as a list failed: both are now failed, with what they are and the fix."""
    report = check(lambda s: _OtherLibraryArray(softmax(np.asarray(s))), SOFTMAX)
    assert not report
    text = " ".join(str(report).split())
    assert "the values are right, but they are a test_testing._OtherLibraryArray, not a NumPy " \
           "array" in text
    assert "returns another library's array" in text and "result.detach().numpy()" in text
    as_list = check(lambda s: softmax(np.asarray(s)).tolist(), SOFTMAX)
    assert len(as_list.failures) == len(report.failures)
    assert check(lambda s: softmax(np.asarray(s)), SOFTMAX)     # an ndarray passes


def test_a_torch_tensor_result_is_named():
    torch = pytest.importorskip("torch")
    report = check(lambda s: torch.softmax(torch.as_tensor(np.asarray(s)), dim=-1), SOFTMAX)
    assert not report and "they are a torch.Tensor, not a NumPy array" in str(report)
    grad = check(lambda s: torch.as_tensor(np.asarray(s)).requires_grad_(), SOFTMAX)
    assert "returned a torch.Tensor, which is not an array (Can't call numpy() on Tensor that " \
           "requires grad" in " ".join(str(grad).split())


def test_a_softmax_that_transposes_is_not_blamed_on_the_scores_alone():
    """A layer whose softmax transposes its input gives the numbers of transposed scores: the
    layer's hint said "compute Q @ K.T (not K @ Q.T)" to a student whose scores function passed."""
    def softmax_attention_weights(s):
        return softmax(np.asarray(s).T)

    def self_attention_layer(X, W_q, W_k, W_v):
        Q, K, V = X @ W_q, X @ W_k, X @ W_v
        return softmax_attention_weights(Q @ K.T / np.sqrt(K.shape[1])) @ V

    text = " ".join(str(check(self_attention_layer)).split())
    assert "Either the scores are transposed (compute Q @ K.T" in text
    assert "or your softmax transposes what it is given" in text
    # the scores function alone is still told about its scores
    text = " ".join(str(check(scores_transposed, SCORES)).split())
    assert "Your scores are transposed" in text and "softmax" not in text


def test_python_and_standard_library_results_are_not_another_librarys_array():
    """range, memoryview and array.array got the torch hint (and names like
    "builtins.memoryview"): only an object with NumPy's array protocols or DLPack is one."""
    import array
    from selfattn.testing.run import _other_library_array
    for value in (range(3), memoryview(np.zeros(3)), array.array("d", [1.0]), [1.0], 2.0,
                  np.float64(1), np.zeros(2), np.ma.zeros(2)):
        assert _other_library_array(value) is None, type(value)
    assert _other_library_array(_OtherLibraryArray([1.0])) == "test_testing._OtherLibraryArray"
    good = check(lambda s: memoryview(softmax(np.asarray(s))), SOFTMAX)
    assert "another library" not in str(good)


def test_a_case_whose_values_are_right_shows_no_index():
    """A list of the right values failed "max error 2.78e-17 at (0, 0)": an index that pointed
    the learner at rounding."""
    report = check(lambda s: softmax(np.asarray(s)).tolist(), SOFTMAX)
    failed = report.failures[0]
    assert failed.worst_index is None and " at (" not in str(report).split("\n")[0]
    assert all(" at (" not in line for line in str(report).splitlines() if "max error" in line)


def test_a_softmax_that_transposes_its_weights_is_named_in_the_layers_hint():
    def self_attention_layer(X, W_q, W_k, W_v):
        Q, K, V = X @ W_q, X @ W_k, X @ W_v
        return softmax(Q @ K.T / np.sqrt(K.shape[1])).T @ V

    text = " ".join(str(check(self_attention_layer)).split())
    assert "The weights are transposed" in text and "your softmax may be what transposes them" \
        in text
    # the output step alone keeps its own hint
    text = " ".join(str(check(lambda w, V: np.asarray(w).T @ np.asarray(V),
                              "compute_attention_output")).split())
    assert "The weights are transposed" in text and "softmax" not in text


def test_an_argument_error_of_the_checkers_shows_the_callers_line_and_no_internals():
    """A learner's review: check(lambda s: s) showed two frames of selfattn's (report.py,
    cases.py) under the message; the core functions' errors show the caller's line and one."""
    import os
    import traceback

    from selfattn.testing import check_functions

    calls = [lambda: check(lambda s: s), lambda: check(softmax, "softmax"),
             lambda: check(softmax, SOFTMAX, scale="sqrt"),
             lambda: assert_implementation(softmax, "softmax"),
             lambda: cases(SCORES, scale="either"),
             lambda: check_functions({SOFTMAX: softmax}, scale="sqrt")]
    for call in calls:
        with pytest.raises((TypeError, ValueError)) as info:
            call()
        frames = [(os.path.basename(f.filename), f.name)
                  for f in traceback.extract_tb(info.value.__traceback__)]
        assert frames[1:] == [("test_testing.py", "<lambda>"), ("compare.py", "call")], frames

    def softmax_attention_weights(attn_scores):    # a learner's own ValueError is theirs
        raise ValueError("check: not selfattn's message, though it looks like one")
    assert not check(softmax_attention_weights)


@pytest.mark.parametrize("rtol, error", [(-0.1, ValueError), (float("nan"), ValueError),
                                         (float("inf"), ValueError), ("1e-3", TypeError),
                                         (True, TypeError)])
def test_assert_attention_close_refuses_a_tolerance_that_cannot_mean_what_it_says(rtol, error):
    """rtol=-0.1 was accepted: every comparison but an exact one failed, and the report printed
    rtol=-0.1 (a reviewer's case). Tolerances are numbers, 0 or more, finite."""
    x = np.linspace(0.1, 1.0, 6)
    for name in ("rtol", "atol"):
        with pytest.raises(error, match=rf"assert_attention_close: {name} must be a"):
            assert_attention_close(x, x, **{name: rtol})
    assert_attention_close(x, x, rtol=0, atol=0)
    assert_attention_close(x, x * (1 + 1e-4), rtol=np.float32(1e-3))
