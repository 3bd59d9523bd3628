"""Hypothesis: generated shapes (including 0 and 1), strides, batches and values."""
import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import selfattn as sa
from attn_reference import assert_close, ref_attention, ref_layer, ref_scores, ref_softmax

sizes = st.integers(0, 9)
dtypes = st.sampled_from([np.float64, np.float32])


@st.composite
def matrices(draw, rows, cols, dtype, batch=()):
    """A (batch..., rows, cols) array, maybe viewed through a strided or reversed layout."""
    finite = {"allow_nan": False, "allow_infinity": False, "min_value": -8, "max_value": 8}
    layout = draw(st.sampled_from(["c", "f", "step", "reverse"]))
    shape = tuple(batch) + (rows, cols)
    if layout == "step":
        big = draw(hnp.arrays(dtype, tuple(batch) + (rows * 2, cols * 2), elements=finite))
        return big[..., ::2, ::2]
    a = draw(hnp.arrays(dtype, shape, elements=finite))
    if layout == "f":
        return np.asfortranarray(a)
    if layout == "reverse":
        return np.ascontiguousarray(a[..., ::-1, ::-1])[..., ::-1, ::-1]
    return a


@st.composite
def attention_inputs(draw):
    dtype = draw(dtypes)
    n_q, n_k, d_k, d_v = draw(sizes), draw(sizes), draw(sizes), draw(sizes)
    shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=3, max_dims=2, max_side=3))
    Q = draw(matrices(n_q, d_k, dtype, shapes.input_shapes[0]))
    K = draw(matrices(n_k, d_k, dtype, shapes.input_shapes[1]))
    V = draw(matrices(n_k, d_v, dtype, shapes.input_shapes[2]))
    return Q, K, V


@given(attention_inputs(), st.booleans(), st.one_of(st.none(), st.floats(0.01, 4)))
def test_sdpa_matches_reference(inputs, causal, scale):
    Q, K, V = inputs
    out, w = sa.scaled_dot_product_attention(Q, K, V, is_causal=causal, scale=scale,
                                             return_weights=True)
    want_out, want_w = ref_attention(Q, K, V, is_causal=causal, scale=scale)
    assert_close(out, want_out)
    assert_close(w, want_w)
    assert_close(sa.scaled_dot_product_attention(Q, K, V, is_causal=causal, scale=scale), want_out)
    assert_close(sa.compute_self_attention_scores(Q, K, is_causal=causal, scale=scale),
                 ref_scores(Q, K, scale=scale, is_causal=causal))


@given(attention_inputs(), st.data())
def test_masked_attention_matches_reference(inputs, data):
    Q, K, V = inputs
    n_q, n_k = Q.shape[-2], K.shape[-2]
    mask_shape = data.draw(st.sampled_from([(n_q, n_k), (1, n_k), (n_q, 1), (n_k,), (1, 1, n_k)]))
    if data.draw(st.booleans()):
        mask = data.draw(hnp.arrays(bool, mask_shape))
    else:
        mask = data.draw(hnp.arrays(Q.dtype, mask_shape, elements=st.sampled_from(
            [0.0, -np.inf, 1.5, -2.0])))
    causal = data.draw(st.booleans())
    assert_close(sa.scaled_dot_product_attention(Q, K, V, mask=mask, is_causal=causal),
                 ref_attention(Q, K, V, mask=mask, is_causal=causal)[0])


@given(st.data(), dtypes)
def test_layer_matches_reference(data, dtype):
    n, d_model, d_k, d_v = (data.draw(st.integers(0, 7)) for _ in range(4))
    X = data.draw(matrices(n, d_model, dtype, data.draw(st.sampled_from([(), (2,)]))))
    W_q, W_k = data.draw(matrices(d_model, d_k, dtype)), data.draw(matrices(d_model, d_k, dtype))
    W_v = data.draw(matrices(d_model, d_v, dtype))
    causal = data.draw(st.booleans())
    assert_close(sa.self_attention_layer(X, W_q, W_k, W_v, is_causal=causal),
                 ref_layer(X, W_q, W_k, W_v, is_causal=causal)[0])


@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6),
                  elements={"allow_nan": False, "allow_infinity": False, "min_value": -1e6,
                            "max_value": 1e6}),
       st.floats(-1e5, 1e5))
def test_softmax_rows_are_distributions_and_shift_invariant(s, shift):
    w = sa.softmax_attention_weights(s)
    assert_close(w, ref_softmax(s))
    assert ((w >= 0) & (w <= 1)).all()
    if s.size:
        np.testing.assert_allclose(w.sum(axis=-1), 1, rtol=1e-12)
    np.testing.assert_allclose(sa.softmax_attention_weights(s + shift), w, atol=1e-9)


@given(attention_inputs(), st.randoms(use_true_random=False))
def test_permuting_keys_and_values_together_changes_nothing(inputs, random):
    Q, K, V = inputs
    n_k = K.shape[-2]
    perm = list(range(n_k))
    random.shuffle(perm)
    out = sa.scaled_dot_product_attention(Q, K, V)
    permuted = sa.scaled_dot_product_attention(Q, K[..., perm, :], V[..., perm, :])
    tol = 1e-12 if out.dtype == np.float64 else 2e-5
    np.testing.assert_allclose(permuted, out, atol=tol * max(1.0, float(np.abs(V).max(initial=0))))


@given(attention_inputs())
def test_float32_is_close_to_float64(inputs):
    Q, K, V = (a.astype(np.float64) for a in inputs)
    assume(Q.size and K.size)
    out64 = sa.scaled_dot_product_attention(Q, K, V)
    out32 = sa.scaled_dot_product_attention(*(a.astype(np.float32) for a in (Q, K, V)))
    np.testing.assert_allclose(out32, out64, atol=1e-4 * max(1.0, float(np.abs(V).max(initial=0))))
