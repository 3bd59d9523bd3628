"""The dtype table: what each input dtype computes in and returns."""
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
