"""The plain 2-D entry points (_core.plain_*) and the general path compute the same bits."""
import numpy as np
import pytest

import selfattn as sa
from selfattn import _core

pytestmark = pytest.mark.c_backend  # about the C extension itself (conftest.py)


def general(a):
    """The same values in a layout the plain entry points decline (a Fortran-ordered view)."""
    return np.asfortranarray(a)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n,d", [(8, 4), (70, 33)])
def test_plain_and_general_paths_agree_bitwise(isa, rng, dtype, n, d):
    X = rng.standard_normal((n, d)).astype(dtype)
    W_q, W_k, W_v = (rng.standard_normal((d, d)).astype(dtype) for _ in range(3))
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    assert _core.plain_sdpa(Q, K, V, None, (0, 0)) is not None        # the plain path is taken
    assert _core.plain_sdpa(general(Q), K, V, None, (0, 0)) is None    # ... and declined
    for causal in (False, True):
        for scale in (None, 0.3):
            np.testing.assert_array_equal(
                sa.scaled_dot_product_attention(Q, K, V, scale=scale, is_causal=causal),
                sa.scaled_dot_product_attention(general(Q), general(K), general(V), scale=scale,
                                                is_causal=causal))
            np.testing.assert_array_equal(
                sa.self_attention_layer(X, W_q, W_k, W_v, scale=scale, is_causal=causal),
                sa.self_attention_layer(general(X), W_q, general(W_k), W_v, scale=scale,
                                        is_causal=causal))
            np.testing.assert_array_equal(
                sa.compute_self_attention_scores(Q, K, scale=scale, is_causal=causal),
                sa.compute_self_attention_scores(general(Q), K, scale=scale, is_causal=causal))
    S = sa.compute_self_attention_scores(Q, K)
    np.testing.assert_array_equal(sa.softmax_attention_weights(S),
                                  sa.softmax_attention_weights(general(S)))
    np.testing.assert_array_equal(sa.compute_attention_output(S, V),
                                  sa.compute_attention_output(general(S), general(V)))


def test_plain_entry_points_decline_what_they_do_not_handle():
    a = np.ones((3, 4))
    declined = [
        _core.plain_scores(a, np.ones((3, 5)), None, (0, 0)),        # d_k mismatch: Python explains
        _core.plain_scores(a, a, np.inf, (0, 0)),                    # bad scale
        _core.plain_scores(a, a, "1", (0, 0)),
        _core.plain_scores(a.astype(np.float32), a, None, (0, 0)),   # mixed dtypes
        _core.plain_scores(a.astype(np.float16), a, None, (0, 0)),
        _core.plain_scores(np.ones((2, 3, 4)), a, None, (0, 0)),     # batched
        _core.plain_scores([[1.0]], [[1.0]], None, (0, 0)),          # not an array
        _core.plain_scores(np.ones((0, 4)), a, None, (0, 0)),        # empty
        _core.plain_softmax(np.ones(3)),
        _core.plain_output(a, a),
        _core.plain_sdpa(a, a, np.ones((2, 4)), None, (0, 0)),
        _core.plain_layer(a, a, a, a, None, (0, 0)),
        _core.plain_layer(a, np.ones((4, 2)), np.ones((4, 3)), np.ones((4, 2)), None, (0, 0)),
        _core.plain_scores(np.broadcast_to(np.ones(4), (2**40, 4)),
                           np.broadcast_to(np.ones(4), (2**40, 4)), None, (0, 0)),  # unaddressable
    ]
    assert all(r is None for r in declined)
