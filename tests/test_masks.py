"""causal_mask and padding_mask: values, shapes, and how they broadcast against the scores."""
import numpy as np
import pytest

from selfattn import (
    causal_mask,
    lengths_mask,
    multi_head_attention,
    padding_mask,
    scaled_dot_product_attention,
    self_attention_layer,
)


@pytest.mark.parametrize("n_q,n_k", [(1, 1), (4, 4), (3, 6), (6, 3), (0, 2)])
def test_causal_mask_is_is_causal(n_q, n_k):
    m = causal_mask(n_q, n_k)
    assert m.dtype == bool and m.shape == (n_q, n_k)
    for i in range(n_q):
        for j in range(n_k):
            assert m[i, j] == (j <= i)
    if n_q:
        rng = np.random.default_rng(0)
        Q, K, V = rng.standard_normal((2, n_q, 3)), rng.standard_normal((2, n_k, 3)), \
            rng.standard_normal((2, n_k, 2))
        np.testing.assert_array_equal(scaled_dot_product_attention(Q, K, V, mask=m),
                                      scaled_dot_product_attention(Q, K, V, is_causal=True))


def test_causal_mask_defaults_and_errors():
    np.testing.assert_array_equal(causal_mask(3), causal_mask(3, 3))
    np.testing.assert_array_equal(causal_mask(np.int64(2)), [[True, False], [True, True]])
    with pytest.raises(ValueError, match=r"causal_mask: n_q must be a non-negative integer, got -1"):
        causal_mask(-1)
    for bad in (2.5, "3", True, None):
        with pytest.raises(TypeError, match=r"causal_mask: n_q must be a non-negative integer"):
            causal_mask(bad)
    with pytest.raises(TypeError, match=r"causal_mask: n_k"):
        causal_mask(3, 1.0)


def test_padding_mask_values_and_shapes():
    m = padding_mask([3, 0, 5], 5)
    assert m.dtype == bool and m.shape == (3, 1, 5)
    np.testing.assert_array_equal(m[:, 0], [[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    assert padding_mask([3, 0, 5], 5, head_axis=True).shape == (3, 1, 1, 5)
    assert padding_mask(2, 4).shape == (1, 4)
    assert padding_mask([[1, 2], [3, 4]], 4).shape == (2, 2, 1, 4)
    assert padding_mask(np.array([1, 2], dtype=np.uint8), 3).shape == (2, 1, 3)


def test_padding_mask_broadcasts_against_single_head_scores():
    rng = np.random.default_rng(1)
    B, n, d = 3, 6, 4
    lengths = [6, 2, 4]
    X = rng.standard_normal((B, n, d))
    W = rng.standard_normal((3, d, d))
    out, w = self_attention_layer(X, *W, mask=padding_mask(lengths, n), return_weights=True)
    assert out.shape == (B, n, d) and w.shape == (B, n, n)
    for b, L in enumerate(lengths):
        assert np.all(w[b, :, L:] == 0)                         # padding keys get no weight
        want = self_attention_layer(X[b, :L], *W)              # ...and the real ones are unchanged
        np.testing.assert_allclose(out[b, :L], want, rtol=1e-12, atol=1e-12)


def test_padding_mask_broadcasts_against_multi_head_scores():
    rng = np.random.default_rng(2)
    B, H, n, d = 3, 2, 6, 4
    lengths = [6, 2, 4]
    X = rng.standard_normal((B, n, d))
    Ws = rng.standard_normal((4, d, d))
    out, w = multi_head_attention(X, *Ws, num_heads=H, mask=padding_mask(lengths, n, head_axis=True),
                                  return_weights=True)
    assert out.shape == (B, n, d) and w.shape == (B, H, n, n)
    for b, L in enumerate(lengths):
        assert np.all(w[b, :, :, L:] == 0)
        want = multi_head_attention(X[b, :L], *Ws, num_heads=H)
        np.testing.assert_allclose(out[b, :L], want, rtol=1e-12, atol=1e-12)
    # combined with a causal mask by &
    both = padding_mask(lengths, n, head_axis=True) & causal_mask(n)
    np.testing.assert_array_equal(
        multi_head_attention(X, *Ws, num_heads=H, mask=both),
        multi_head_attention(X, *Ws, num_heads=H, mask=padding_mask(lengths, n, head_axis=True),
                             is_causal=True))


def test_single_head_padding_mask_in_multi_head_is_caught_or_documented():
    # (batch, 1, n) lines its batch axis up with the heads: an error when batch != num_heads
    X, W = np.ones((3, 4, 4)), np.ones((4, 4))
    with pytest.raises(ValueError, match=r"head_axis=True"):
        multi_head_attention(X, W, W, W, W, num_heads=2, mask=padding_mask([1, 2, 3], 4))


def test_padding_mask_errors():
    with pytest.raises(ValueError, match=r"padding_mask: every length must be between 0 and "
                                         r"n_k=4, got a length of 5"):
        padding_mask([2, 5], 4)
    with pytest.raises(ValueError, match=r"got a length of -1"):
        padding_mask([-1, 2], 4)
    with pytest.raises(TypeError, match=r"padding_mask: lengths must be integers"):
        padding_mask([2.0, 3.0], 4)
    with pytest.raises(TypeError, match=r"padding_mask: lengths must be integers"):
        padding_mask([True, False], 4)
    with pytest.raises(TypeError, match=r"padding_mask: n_k must be a non-negative integer"):
        padding_mask([1], 4.0)
    with pytest.raises(TypeError, match=r"padding_mask: head_axis must be True or False"):
        padding_mask([1], 4, head_axis=1)


def test_broadcast_lengths_are_read_once_per_distinct_value():
    """A broadcast view of lengths (np.broadcast_to, stride 0) is checked by its distinct values:
    one of 2**59 entries was scanned whole (min and max) before the size check refused it."""
    many = np.broadcast_to(np.array([1]), (2 ** 59,))
    with pytest.raises(ValueError, match="too large to allocate"):
        padding_mask(many, 3)
    with pytest.raises(ValueError, match="too large to allocate"):
        lengths_mask(many, None, 3, 3)
    with pytest.raises(ValueError, match="got a length of 5"):
        padding_mask(np.broadcast_to(np.array([[2], [5]]), (2, 2 ** 58)), 3)
    # and a broadcast view gives the mask its values give
    lengths = np.broadcast_to(np.array([[1], [3]]), (2, 3))
    np.testing.assert_array_equal(padding_mask(lengths, 4), padding_mask(lengths.copy(), 4))


def test_docstring_examples_of_the_new_modules_run():
    import doctest

    import selfattn._masks
    import selfattn._backward
    import selfattn._multihead
    for module in (selfattn._masks, selfattn._backward, selfattn._multihead):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0 and result.attempted > 0, module.__name__


NEW_PUBLIC = ["multi_head_attention", "scaled_dot_product_attention_backward",
              "self_attention_layer_backward", "multi_head_attention_backward", "causal_mask",
              "padding_mask"]


@pytest.mark.parametrize("name", NEW_PUBLIC)
def test_new_functions_are_exported_with_numpy_style_docstrings(name):
    import selfattn
    assert name in selfattn.__all__
    doc = getattr(selfattn, name).__doc__
    for section in ("Parameters\n", "Returns\n", "Raises\n", "Examples\n"):
        assert section in doc, (name, section)


def test_a_wide_float_mask_keeps_its_meaning_in_a_float32_call():
    """finfo(float64).min (a finite 'hide' value, as some libraries write masks) in a float32
    call: it was cast to -inf, with NumPy's bare 'overflow encountered in cast', so a row it
    covered whole gave 0 where the float64 call (and torch) give that row's plain weights. Now
    a finite value beyond float32's range becomes float32's largest; inf stays inf."""
    import warnings
    rng = np.random.default_rng(3)
    Q, K, V = (rng.standard_normal(s) for s in [(4, 3), (5, 3), (5, 2)])
    mask = np.zeros((4, 5))
    mask[0, :] = np.finfo(np.float64).min       # the whole row: a shift, no key hidden
    mask[1, 2] = np.finfo(np.float64).min       # one key, hidden in effect
    mask[2, 3] = -np.inf                        # hidden
    bias = np.full((4, 5), 1e300)               # a wide bias: a shift of every score
    f32 = [a.astype(np.float32) for a in (Q, K, V)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = scaled_dot_product_attention(*f32, mask=mask)
        got_bias = scaled_dot_product_attention(*f32, bias=bias)
    want = scaled_dot_product_attention(Q, K, V, mask=mask)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[0], V.mean(axis=0), rtol=1e-5, atol=1e-6)
    assert np.isfinite(got_bias).all()


def test_masks_of_no_sequences():
    """An empty list of lengths is no sequence (NumPy reads [] as float64: it was a TypeError
    asking for integers)."""
    assert padding_mask([], 4).shape == (0, 1, 4)
    from selfattn import lengths_mask
    assert lengths_mask([], [], 3, 4).shape == (0, 3, 4)
    with pytest.raises(TypeError, match="must be integers"):
        padding_mask([1.5], 4)


def test_wide_masks_and_biases_stay_finite_and_small():
    """mask + bias of finfo(float64).min each overflowed to -inf with a bare warning (a row they
    cover whole then got weight 0): the sum of finite terms stays finite. A float64 mask
    broadcast over heads, in a float32 call, is cast as the block it repeats (the full cast took
    4 x the broadcast size; the fix's first form, 10 x)."""
    import tracemalloc
    import warnings
    rng = np.random.default_rng(5)
    Q, K, V = (rng.standard_normal(s) for s in [(3, 4), (5, 4), (5, 2)])
    low = np.full((3, 5), np.finfo(np.float64).min)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = scaled_dot_product_attention(Q, K, V, mask=low, bias=low)
        np.testing.assert_allclose(got, np.broadcast_to(V.mean(axis=0), (3, 2)), rtol=1e-12)
        Qh = rng.standard_normal((4, 8, 256, 16)).astype(np.float32)
        block = np.where(rng.random((256, 256)) < 0.5, 0.0, -1e300)
        peaks, outs = [], []
        for mask in (block, np.broadcast_to(block, (4, 8, 256, 256))):
            tracemalloc.start()
            try:
                outs.append(scaled_dot_product_attention(Qh, Qh, Qh, mask=mask))
                peaks.append(tracemalloc.get_traced_memory()[1])
            finally:
                tracemalloc.stop()
    # the broadcast mask cast whole, in float32, would be 8 MiB more
    assert peaks[1] < peaks[0] + block.nbytes, peaks
    np.testing.assert_array_equal(outs[0], outs[1])
