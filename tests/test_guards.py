"""Guards and messages for awkward arguments: each names the function and states the rule."""
import tracemalloc

import numpy as np
import pytest

import selfattn

MiB = 1 << 20


def _peak(fn, *args, **kwargs):
    tracemalloc.start()
    try:
        result = fn(*args, **kwargs)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_padding_mask_too_large_is_refused_by_name():
    with pytest.raises(ValueError, match=r"padding_mask: the result would have shape .* too large"):
        selfattn.padding_mask([1], 2**62)


def test_empty_causal_mask_costs_nothing():
    mask, peak = _peak(selfattn.causal_mask, 2**24, 0)
    assert mask.shape == (2**24, 0) and mask.dtype == bool
    assert peak < MiB
    assert selfattn.causal_mask(0, 2**62).shape == (0, 2**62)
    assert selfattn.causal_mask(2**62, 0).shape == (2**62, 0)


def test_causal_mask_too_large_is_refused_by_name():
    with pytest.raises(ValueError, match=r"causal_mask: the result would have shape"):
        selfattn.causal_mask(2**40)


@pytest.mark.parametrize("n", [2**63, -(2**63) - 1, 2**100, 0, 1025])
def test_set_num_threads_out_of_range(threads, n):
    rule = rf"set_num_threads: n must be between 1 and 1024, got {n}"
    with pytest.raises(ValueError, match=rule):
        selfattn.set_num_threads(n)


@pytest.mark.parametrize("name", ["avx2\x00junk", "reference\x00", "\x00"])
def test_set_isa_refuses_embedded_nul(name):
    before = selfattn.get_isa()
    with pytest.raises(ValueError, match=r"set_isa: unknown instruction set"):
        selfattn.set_isa(name)
    assert selfattn.get_isa() == before


def test_dict_is_not_an_array_like():
    with pytest.raises(TypeError, match=r"compute_attention_output: V is a dict, not an array-lik"):
        selfattn.compute_attention_output(np.eye(2), {"a": [1.0, 2.0], "b": [3.0, 4.0]})
    with pytest.raises(TypeError, match=r"softmax_attention_weights: attn_scores .*a set object, "
                                        r"not an array-like"):
        selfattn.softmax_attention_weights({1.0, 2.0})


@pytest.mark.parametrize("where", ["Q", "mask"])
def test_masked_arrays_are_refused_with_a_way_forward(where):
    data = np.ones((3, 2))
    masked = np.ma.masked_array(np.ones((3, 3)) if where == "mask" else data,
                                mask=np.eye(3, dtype=bool) if where == "mask" else [[0, 1]] * 3)
    args = dict(Q=data, K=data, mask=None)
    args[where] = masked
    with pytest.raises(TypeError, match=rf"compute_self_attention_scores: {where} is a masked "
                                        rf"array .*{where}\.filled\(.*mask="):
        selfattn.compute_self_attention_scores(args["Q"], args["K"], mask=args["mask"])


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_an_np_matrix_is_read_as_an_array_and_gives_an_ndarray():
    """np.matrix (which NumPy asks its users to leave for ndarray) computes as its values do and
    comes back as a plain ndarray, with the function's own shape: the scores of a (2, 3) matrix
    and a 3-row matrix's weights, not 2-d matrix rules."""
    Q = np.arange(6.0).reshape(2, 3)
    scores = selfattn.compute_self_attention_scores(np.matrix(Q), np.matrix(Q))
    assert type(scores) is np.ndarray
    np.testing.assert_array_equal(scores, selfattn.compute_self_attention_scores(Q, Q))
    out = selfattn.scaled_dot_product_attention(np.matrix(Q), Q, np.matrix(Q))
    assert type(out) is np.ndarray and out.shape == (2, 3)
    weights = selfattn.softmax_attention_weights(np.matrix(Q))
    assert type(weights) is np.ndarray
    np.testing.assert_array_equal(weights, selfattn.softmax_attention_weights(Q))


@pytest.mark.parametrize("q_dtype", [np.float64, np.float32])
def test_broadcast_query_is_not_copied(q_dtype):
    # a 0-stride Q of shape (8192, 4096): 256 MiB if copied, for a 0.25 MiB result
    n_q, d = 8192, 4096
    Q = np.broadcast_to(q_dtype(0.5), (n_q, d))
    K = np.random.default_rng(0).normal(size=(4, d))
    scores, peak = _peak(selfattn.compute_self_attention_scores, Q, K)
    assert scores.shape == (n_q, 4)
    assert peak < 4 * MiB, peak / MiB
    expected = selfattn.compute_self_attention_scores(np.full((1, d), 0.5), K)
    np.testing.assert_allclose(scores, np.broadcast_to(expected, scores.shape), rtol=1e-12)
    V = np.ones((4, 2))
    out, peak = _peak(selfattn.scaled_dot_product_attention, Q, K, V)   # the fused kernel's
    assert out.shape == (n_q, 2) and peak < 32 * MiB, peak / MiB         # scratch: a few MiB
