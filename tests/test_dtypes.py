"""The dtype table: what each input dtype computes in and returns."""
import re
import sys
import warnings

import numpy as np
import pytest

import selfattn as sa
from attn_reference import assert_close, ref_attention, ref_scores, ref_softmax

# input dtype(s) -> result dtype
TABLE = [
    ((np.float64, np.float64), np.float64),
    ((np.float32, np.float32), np.float32),
    ((np.float16, np.float16), np.float16),
    ((np.int64, np.int64), np.float64),
    ((np.int32, np.int8), np.float64),
    ((np.uint16, np.uint16), np.float64),
    ((np.bool_, np.bool_), np.float64),
    ((np.float32, np.float64), np.float64),
    ((np.float16, np.float32), np.float32),
    ((np.float32, np.int64), np.float64),
    ((np.float16, np.float64), np.float64),
    # the README's rule: integers and booleans give float64 beside any float (NumPy: float32,
    # float16)
    ((np.float32, np.int8), np.float64),
    ((np.float16, np.bool_), np.float64),
]


@pytest.mark.parametrize("dtypes,result", TABLE)
def test_result_dtype_table(dtypes, result, rng):
    a = (rng.standard_normal((3, 4)) * 3).astype(dtypes[0])
    b = (rng.standard_normal((5, 4)) * 3).astype(dtypes[1])
    s = sa.compute_self_attention_scores(a, b)
    assert s.dtype == result
    assert sa.softmax_attention_weights(a).dtype == np.result_type(
        np.float64 if a.dtype.kind in "biu" else a.dtype)
    assert sa.compute_attention_output(a, b[:4]).dtype == result
    assert sa.scaled_dot_product_attention(a, b, b).dtype == result
    assert sa.self_attention_layer(a, b.T[:, :4], b.T[:, :4], b.T[:, :2]).dtype == result
    assert_close(s, ref_scores(a, b), dtype=result)


def test_float16_is_computed_in_float32(rng):
    # 10 * 10 = 100 overflows nothing in float32 but exp(100) would overflow float16 softmax
    s16 = np.array([[100.0, 90.0, 0.0]], np.float16)
    w = sa.softmax_attention_weights(s16)
    assert w.dtype == np.float16 and np.isfinite(w).all()
    np.testing.assert_allclose(w.astype(float), ref_softmax(s16).astype(float), atol=1e-3)
    Q = (rng.standard_normal((4, 8)) * 4).astype(np.float16)
    out = sa.scaled_dot_product_attention(Q, Q, Q)
    want = ref_attention(Q.astype(np.float32), Q.astype(np.float32), Q.astype(np.float32))[0]
    assert out.dtype == np.float16
    np.testing.assert_allclose(out.astype(float), want.astype(float), atol=2e-2, rtol=5e-3)


def _line_after():
    """The number of the caller's next line."""
    return sys._getframe(1).f_lineno + 1


def test_a_float16_result_beyond_its_range_warns_naming_the_call_at_the_learners_line():
    """Scores of 40 * 40 * 64 = 102400 fit float32, where float16 inputs are computed, but not the
    float16 result (largest 65504): they become inf, as NumPy's cast makes them, and the warning
    says which call, how many values and what keeps them, at the line that called it (NumPy's
    "overflow encountered in cast" pointed at selfattn/_kernels.py)."""
    Q = np.full((2, 64), 40, np.float16)
    with pytest.warns(RuntimeWarning) as record:
        line = _line_after()
        scores = sa.compute_self_attention_scores(Q, Q, scale=1.0)
    assert scores.dtype == np.float16 and np.isposinf(scores).all()
    (warning,) = record
    assert (warning.filename, warning.lineno) == (__file__, line)
    assert str(warning.message) == (
        "compute_self_attention_scores: 4 of the 4 values of its float16 result are beyond "
        "float16's range (largest 65504) and became inf; selfattn computes float16 inputs in "
        "float32, so float32 inputs (x.astype(np.float32)) keep them")
    np.testing.assert_array_equal(
        sa.compute_self_attention_scores(Q.astype(np.float32), Q, scale=1.0), 102400)
    signs, small = np.float16([[1], [-1]]), np.float16([[1], [1 / 40]])
    with pytest.warns(RuntimeWarning, match=r": 4 of the 4 values .* are beyond .* became -inf; "):
        sa.compute_self_attention_scores(Q, -Q, scale=1.0)
    with pytest.warns(RuntimeWarning, match=r": 2 of the 4 values .* are beyond .* became inf or "
                                            r"-inf; "):
        sa.compute_self_attention_scores(Q * signs, Q * small, scale=1.0)
    with pytest.warns(RuntimeWarning, match=r": 1 of the 2 values .* is beyond .* became inf; "):
        sa.compute_self_attention_scores(Q[:1], Q * small, scale=1.0)


def test_a_float16_overflow_of_a_gradient_names_the_gradient():
    """A backward returns several float16 arrays: each overflow's warning says which (five
    warnings that each said "its float16 result" left the learner to guess)."""
    rng = np.random.default_rng(15)
    X = rng.normal(size=(3, 4)).astype(np.float16)
    W = rng.normal(size=(4, 4)).astype(np.float16)
    dY = np.full((3, 4), 60000.0)
    with pytest.warns(RuntimeWarning) as record:
        grads = sa.multi_head_attention_backward(dY, X, W, W, W, W, num_heads=2)
    named = [re.match(r"multi_head_attention_backward: \d+ of the \d+ values of its float16 "
                      r"(\w+) ", str(w.message)) for w in record]
    assert all(named) and len(record) >= 2, [str(w.message) for w in record]
    names = [m.group(1) for m in named]
    overflowed = [name for name in grads._fields if np.isinf(getattr(grads, name)).any()]
    assert sorted(names) == sorted(overflowed)
    Q, K = np.ones((4, 2), np.float16), np.ones((1, 2), np.float16)  # 4 queries on one key
    with pytest.warns(RuntimeWarning, match=r"backward: 2 of the 2 values of its float16 dV are"):
        sa.scaled_dot_product_attention_backward(np.full((4, 2), 60000.0), Q, K, K)


def test_a_float16_overflow_inside_a_public_call_names_the_outermost_one():
    """The layer's output is a mean of V's rows (X @ W_v = 4 * 30000 each, in float32); it is the
    call the learner made, so the warning names it and points at the learner's helper."""
    X = np.ones((3, 4), np.float16)
    W_zero, W_v = np.zeros((4, 2), np.float16), np.full((4, 2), 30000, np.float16)

    def helper():
        line = _line_after()
        return sa.self_attention_layer(X, W_zero, W_zero, W_v), line

    with pytest.warns(RuntimeWarning, match=r"^self_attention_layer: 6 of the 6 values") as record:
        out, line = helper()
    assert np.isposinf(out).all()
    assert [(w.filename, w.lineno) for w in record] == [(__file__, line)]


def test_a_float16_overflow_follows_np_errstate():
    """Reported as NumPy reports its own overflows: ignored, raised as FloatingPointError (naming
    the call), NumPy's errcall called with ("overflow", 2), or its log written; the result is the
    same. NumPy before 1.24 reported no overflow in casts: this does not depend on it."""
    Q = np.full((2, 64), 40, np.float16)
    with np.errstate(over="ignore"), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isposinf(sa.compute_self_attention_scores(Q, Q, scale=1.0)).all()
    with np.errstate(over="raise"), pytest.raises(
            FloatingPointError, match=r"^compute_self_attention_scores: 4 of the 4 values .* "
                                      r"float32 inputs \(x.astype\(np.float32\)\) keep them$"):
        sa.compute_self_attention_scores(Q, Q, scale=1.0)
    calls = []
    with np.errstate(over="call", call=lambda kind, flag: calls.append((kind, flag))):
        assert np.isposinf(sa.compute_self_attention_scores(Q, Q, scale=1.0)).all()
    assert calls == [("overflow", 2)]

    class Log:
        def write(self, text):
            calls.append(text)

    with np.errstate(over="log", call=Log()):
        sa.compute_self_attention_scores(Q, Q, scale=1.0)
    assert calls[1].startswith("Warning: compute_self_attention_scores: 4 of the 4 values")


def test_a_float16_overflow_printed_names_the_call(capsys):
    Q = np.full((2, 64), 40, np.float16)
    with np.errstate(over="print"):
        sa.compute_self_attention_scores(Q, Q, scale=1.0)
    assert capsys.readouterr().err.startswith(
        "Warning: compute_self_attention_scores: 4 of the 4 values of its float16 result")


def test_float16_results_in_range_and_infinite_inputs_do_not_warn(rng):
    """Only finite values that the cast made inf are reported: not an inf the computation gave
    (an infinite query), not the results that fit."""
    Q = np.array([[np.inf, 0.0], [1.0, 2.0]], np.float16)
    K = np.array([[1.0, 0.0]], np.float16)
    with np.errstate(over="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = sa.compute_self_attention_scores(Q, K, scale=1.0)
        X = (rng.standard_normal((5, 8)) * 3).astype(np.float16)
        out = sa.scaled_dot_product_attention(X, X, X)
        grads = sa.scaled_dot_product_attention_backward(X, X, X, X)
    np.testing.assert_array_equal(scores, [[np.inf], [1.0]])
    assert out.dtype == np.float16 and np.isfinite(out).all()
    assert all(g.dtype == np.float16 and np.isfinite(g).all() for g in grads)


def test_float32_is_computed_in_float32(rng):
    # float32 results are not float64 results rounded at the end: the kernel works in float32
    Q = rng.standard_normal((16, 64)).astype(np.float32)
    s = sa.compute_self_attention_scores(Q, Q)
    assert s.dtype == np.float32
    assert_close(s, ref_scores(Q, Q), dtype=np.float32)


def test_python_numbers_and_nested_lists():
    s = sa.compute_self_attention_scores([[1, 0], [0, 1]], [[1, 1]], scale=1)
    assert s.dtype == np.float64
    np.testing.assert_array_equal(s, [[1.0], [1.0]])
    np.testing.assert_array_equal(sa.softmax_attention_weights([0, 0]), [0.5, 0.5])


@pytest.mark.parametrize("bad", [
    np.ones((2, 2), complex), np.ones((2, 2), object), np.array([["a", "b"], ["c", "d"]]),
    np.array([[b"a", b"b"]] * 2), np.ones((2, 2), "datetime64[s]"), np.ones((2, 2), "timedelta64[s]"),
    np.ones((2, 2), np.longdouble), np.zeros((2, 2), [("x", "f8")]),
])
def test_unsupported_kinds_are_type_errors(bad):
    good = np.ones((2, 2))
    calls = [
        lambda: sa.compute_self_attention_scores(bad, good),
        lambda: sa.compute_self_attention_scores(good, bad),
        lambda: sa.softmax_attention_weights(bad),
        lambda: sa.compute_attention_output(bad, good),
        lambda: sa.scaled_dot_product_attention(good, good, bad),
        lambda: sa.self_attention_layer(good, good, bad, good),
    ]
    for call in calls:
        with pytest.raises(TypeError, match=r"^\w+: \w+ has dtype"):
            call()


def test_byteswapped_inputs_give_the_same_result(rng):
    Q, K, V = rng.standard_normal((3, 5, 4))
    want = sa.scaled_dot_product_attention(Q, K, V)
    swapped = [a.astype(a.dtype.newbyteorder(">")) for a in (Q, K, V)]
    np.testing.assert_array_equal(sa.scaled_dot_product_attention(*swapped), want)
    f32 = [a.astype(">f4") for a in (Q, K, V)]
    got = sa.scaled_dot_product_attention(*f32)
    assert got.dtype == np.float32 and got.dtype.isnative


def test_float_mask_does_not_change_the_result_dtype(rng):
    Q = rng.standard_normal((3, 4)).astype(np.float32)
    mask = np.zeros((3, 3), np.float64)
    mask[0, 1] = -np.inf
    s = sa.compute_self_attention_scores(Q, Q, mask=mask)
    assert s.dtype == np.float32
    assert s[0, 1] == -np.inf


def test_integer_mask_is_a_type_error():
    Q = np.ones((3, 4))
    with pytest.raises(TypeError, match="mask has integer dtype int64.*boolean mask"):
        sa.scaled_dot_product_attention(Q, Q, Q, mask=np.ones((3, 3), int))
    with pytest.raises(TypeError, match="mask"):
        sa.compute_self_attention_scores(Q, Q, mask=np.ones((3, 3), complex))
