"""query_lengths= / key_lengths= (per-sequence lengths of a padded batch): values and gradients
against the long-double oracle on every tier, the edge lengths (0, n), the padding's contents
never mattering, the layers, the per-sequence bottom-right band of the C helper, lengths_mask,
and the argument checks."""
import sys

import numpy as np
import pytest

import selfattn
from attn_reference import (
    LD,
    assert_close,
    lengths_visible,
    numeric_grad,
    ref_attention,
)
from selfattn import (
    _core,
    lengths_mask,
    multi_head_attention,
    multi_head_attention_backward,
    scaled_dot_product_attention as sdpa,
    scaled_dot_product_attention_backward as sdpa_backward,
    self_attention_layer,
    self_attention_layer_backward,
)

# The `isa` fixture (every supported tier) comes from conftest.py.

B, H, N_Q, N_K, D, DV = 3, 2, 70, 90, 6, 5     # several query and key blocks per item
QUERY_LENGTHS = np.array([70, 33, 0])
KEY_LENGTHS = np.array([90, 41, 7])


def operands(rng, dtype=np.float64, n_q=N_Q, n_k=N_K):
    return (rng.standard_normal((B, H, n_q, D)).astype(dtype),
            rng.standard_normal((B, H, n_k, D)).astype(dtype),
            rng.standard_normal((B, H, n_k, DV)).astype(dtype))


MASKS = {
    "none": lambda rng: None,
    "bool": lambda rng: rng.random((N_Q, N_K)) < 0.7,
    "float": lambda rng: np.where(rng.random((B, 1, 1, N_K)) < 0.2, -np.inf,
                                  rng.standard_normal((B, 1, 1, N_K))),
}


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lengths_match_the_oracle(mask_kind, causal, dtype, isa):
    rng = np.random.default_rng(1)
    Q, K, V = operands(rng, dtype)
    mask = MASKS[mask_kind](rng)
    kw = dict(mask=mask, is_causal=causal, query_lengths=QUERY_LENGTHS, key_lengths=KEY_LENGTHS)
    want_out, want_w = ref_attention(Q, K, V, **kw)
    out, weights = sdpa(Q, K, V, return_weights=True, **kw)
    assert_close(sdpa(Q, K, V, **kw), want_out)         # fused
    assert_close(out, want_out)                         # scores, softmax, product
    assert_close(weights, want_w)
    # rows past their length: output and weights exactly 0; keys past theirs: weight 0
    for b, (r, k) in enumerate(zip(QUERY_LENGTHS, KEY_LENGTHS)):
        assert not out[b, :, r:].any() and not weights[b, :, r:].any()
        assert not weights[b, :, :, k:].any()


def test_lengths_with_a_bias(isa):
    rng = np.random.default_rng(2)
    Q, K, V = operands(rng)
    bias = rng.standard_normal((N_Q, N_K))
    kw = dict(query_lengths=QUERY_LENGTHS, key_lengths=KEY_LENGTHS)
    assert_close(sdpa(Q, K, V, bias=bias, is_causal=True, **kw),
                 ref_attention(Q, K, V, mask=bias, is_causal=True, **kw)[0])


def test_lengths_zero_give_zero_output_and_gradients(isa):
    rng = np.random.default_rng(3)
    Q, K, V = operands(rng)
    zero = np.zeros(B, dtype=int)
    for kw in (dict(query_lengths=zero), dict(key_lengths=zero),
               dict(query_lengths=zero, key_lengths=zero)):
        out, weights = sdpa(Q, K, V, return_weights=True, **kw)
        assert not out.any() and not weights.any() and np.isfinite(out).all()
        for g in sdpa_backward(np.ones_like(out), Q, K, V, **kw):
            assert not g.any() and np.isfinite(g).all()


def test_full_lengths_change_nothing(isa):
    rng = np.random.default_rng(4)
    Q, K, V = operands(rng)
    full = dict(query_lengths=np.full(B, N_Q), key_lengths=N_K)
    for causal in (False, True):
        np.testing.assert_array_equal(sdpa(Q, K, V, is_causal=causal, **full),
                                      sdpa(Q, K, V, is_causal=causal))
        dO = rng.standard_normal((B, H, N_Q, DV))
        for got, want in zip(sdpa_backward(dO, Q, K, V, is_causal=causal, **full),
                             sdpa_backward(dO, Q, K, V, is_causal=causal)):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("padded", ["Q, K", "Q, K, V, dO"])
def test_what_the_padding_holds_never_matters(padded, isa):
    """NaN and inf in the padded rows of Q and K (the tier's own kernels run), or of every
    operand (a V or dO holding NaN sends the call to the reference tier: the non-finite policy
    scans the padding too): the real rows agree, padded rows give 0, padded keys get no
    gradient. (The fast backwards once multiplied the padded rows of Q by their zero dS into dK:
    0 * NaN.)"""
    rng = np.random.default_rng(5)
    Q, K, V = operands(rng)
    dO = rng.standard_normal((B, H, N_Q, DV))
    kw = dict(query_lengths=QUERY_LENGTHS, key_lengths=KEY_LENGTHS, is_causal=True)
    clean = sdpa(Q, K, V, **kw), sdpa_backward(dO, Q, K, V, **kw)
    for b, (r, k) in enumerate(zip(QUERY_LENGTHS, KEY_LENGTHS)):
        Q[b, :, r:] = np.nan
        K[b, :, k:] = np.inf
        if padded == "Q, K, V, dO":
            dO[b, :, r:] = np.inf
            V[b, :, k:] = np.nan
    out, grads = sdpa(Q, K, V, **kw), sdpa_backward(dO, Q, K, V, **kw)
    assert_close(out, clean[0])
    for got, want in zip(grads, clean[1]):
        assert_close(got, want)
    for b, (r, k) in enumerate(zip(QUERY_LENGTHS, KEY_LENGTHS)):
        assert not out[b, :, r:].any() and not grads[0][b, :, r:].any()
        assert not grads[1][b, :, k:].any() and not grads[2][b, :, k:].any()


def test_gradients_match_finite_differences(isa):
    rng = np.random.default_rng(6)
    n_q, n_k = 7, 9
    Q, K, V = (rng.standard_normal((2, n, d)) for n, d in ((n_q, 3), (n_k, 3), (n_k, 2)))
    dO = rng.standard_normal((2, n_q, 2))
    for causal in (False, True):
        kw = dict(query_lengths=[5, 2], key_lengths=[9, 3], is_causal=causal)
        grads = sdpa_backward(dO, Q, K, V, **kw)
        for x, g in zip((Q, K, V), grads):
            want = numeric_grad(lambda: float((sdpa(Q, K, V, **kw) * dO).sum()), x)
            np.testing.assert_allclose(g, want, atol=1e-8)
        assert not grads[0][0, 5:].any() and not grads[0][1, 2:].any()
        assert not grads[1][1, 3:].any() and not grads[2][1, 3:].any()


@pytest.mark.c_backend
def test_the_blocked_backward_honours_lengths(isa):
    """66000 keys: past the fused backward's panel budget (tests/test_backward_fast.py), so the
    blocked backward runs; it agrees with the same rule given as a mask."""
    rng = np.random.default_rng(7)
    n_q, n_k, d = 40, 66000, 4
    Q, dO = rng.standard_normal((2, n_q, d)), rng.standard_normal((2, n_q, d))
    K, V = rng.standard_normal((2, n_k, d)), rng.standard_normal((2, n_k, d))
    ql, kl = np.array([40, 13]), np.array([66000, 9001])
    Q[1, 13:] = np.nan                          # padding: left out of every product
    K[1, 9001:] = np.inf
    for causal in (False, True):
        got = sdpa_backward(dO, Q, K, V, query_lengths=ql, key_lengths=kl, is_causal=causal)
        want = sdpa_backward(dO, np.nan_to_num(Q), np.nan_to_num(K), V,
                             mask=lengths_mask(ql, kl, n_q, n_k), is_causal=causal)
        for g, w in zip(got, want):
            assert_close(g, w)
        assert not got[1][1, 9001:].any() and not got[0][1, 13:].any()


def test_one_length_per_sequence_is_shared_by_the_heads():
    """A 1-D array: one length per entry of the FIRST batch axis; a scalar: every item; an array
    of the batch's shape: one per item."""
    rng = np.random.default_rng(8)
    Q, K, V = operands(rng)
    per_item = np.repeat(KEY_LENGTHS[:, None], H, axis=1)
    np.testing.assert_array_equal(sdpa(Q, K, V, key_lengths=KEY_LENGTHS),
                                  sdpa(Q, K, V, key_lengths=per_item))
    per_item[1, 1] = 5
    assert_close(sdpa(Q, K, V, key_lengths=per_item),
                 ref_attention(Q, K, V, key_lengths=per_item)[0])
    np.testing.assert_array_equal(sdpa(Q, K, V, key_lengths=41),
                                  sdpa(Q, K, V, key_lengths=np.full(B, 41)))


def test_the_layers_take_lengths(isa):
    rng = np.random.default_rng(9)
    n, d_model, heads = 12, 8, 2
    X = rng.standard_normal((B, n, d_model))
    W_q, W_k, W_v, W_o = rng.standard_normal((4, d_model, d_model)) / 3
    lengths = np.array([12, 5, 0])
    kw = dict(query_lengths=lengths, key_lengths=lengths)
    mask = lengths_mask(lengths, lengths, n, n)
    out = self_attention_layer(X, W_q, W_k, W_v, **kw)
    assert_close(out, self_attention_layer(X, W_q, W_k, W_v, mask=mask))
    assert not out[1, 5:].any() and not out[2].any()
    dY = rng.standard_normal(out.shape)
    for got, want in zip(self_attention_layer_backward(dY, X, W_q, W_k, W_v, **kw),
                         self_attention_layer_backward(dY, X, W_q, W_k, W_v, mask=mask)):
        assert_close(got, want)
    head_mask = lengths_mask(lengths, lengths, n, n, head_axis=True)
    Y = multi_head_attention(X, W_q, W_k, W_v, W_o, num_heads=heads, is_causal=True, **kw)
    assert_close(Y, multi_head_attention(X, W_q, W_k, W_v, W_o, num_heads=heads, is_causal=True,
                                         mask=head_mask))
    grads = multi_head_attention_backward(dY, X, W_q, W_k, W_v, W_o, num_heads=heads, **kw)
    for got, want in zip(grads, multi_head_attention_backward(dY, X, W_q, W_k, W_v, W_o,
                                                              num_heads=heads, mask=head_mask)):
        assert_close(got, want)
    assert not grads[0][1, 5:].any()                   # padded tokens get no gradient


def test_cross_attention_lengths_per_source(isa):
    rng = np.random.default_rng(10)
    X, enc = rng.standard_normal((2, 6, 4)), rng.standard_normal((2, 9, 3))
    W_q, W_o = rng.standard_normal((2, 4, 4))
    W_k, W_v = rng.standard_normal((2, 3, 4))
    kw = dict(num_heads=2, kv=enc)
    got = multi_head_attention(X, W_q, W_k, W_v, W_o, query_lengths=[6, 2], key_lengths=[4, 9],
                               **kw)
    want = multi_head_attention(X, W_q, W_k, W_v, W_o,
                                mask=lengths_mask([6, 2], [4, 9], 6, 9, head_axis=True), **kw)
    assert_close(got, want)


@pytest.mark.c_backend
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bottom_right_aligns_to_each_sequences_lengths(dtype, isa):
    """The C helper's from_end: the band (lo, hi) counted from each item's own bottom-right
    corner (query i of a sequence of R queries and K keys sees j - i <= K - R), as flash-attn's
    varlen kernels align causal masking; forward (fused and with weights) and backward."""
    rng = np.random.default_rng(11)
    Q, K, V = (a[:, 0] for a in operands(rng, dtype))
    dO = rng.standard_normal((B, N_Q, DV)).astype(dtype)
    ql, kl = np.array([70, 33, 20], dtype=np.intp), np.array([90, 41, 7], dtype=np.intp)
    mask = lengths_visible((B,), N_Q, N_K, ql, kl, bottom_right=True)
    band = (-sys.maxsize, 0, True, ql, kl)
    code = _core.isa_code(selfattn.get_isa())
    scale = D ** -0.5
    out, weights = np.empty((B, N_Q, DV), dtype), np.empty((B, N_Q, N_K), dtype)
    _core.attention(out, None, Q, K, V, None, scale, band, code)
    want_out, want_w = ref_attention(Q, K, V, mask=mask)
    assert_close(out, want_out)
    _core.attention(out, weights, Q, K, V, None, scale, band, code)
    assert_close(out, want_out)
    assert_close(weights, want_w)
    grads = [np.empty_like(a) for a in (Q, K, V)]
    _core.attention_backward(*grads, dO, Q, K, V, None, scale, band, code)
    for got, want in zip(grads, sdpa_backward(dO, Q, K, V, mask=mask)):
        assert_close(got, want)
    # without lengths, from_end is bottom-right causal on the whole (n_q, n_k)
    _core.attention(out, None, Q, K, V, None, scale, (-sys.maxsize, 0, True), code)
    assert_close(out, ref_attention(Q, K, V, mask=np.tri(N_Q, N_K, N_K - N_Q, dtype=bool))[0])


def test_lengths_mask():
    m = lengths_mask([2, 0], [3, 1], 3, 4)
    assert m.shape == (2, 3, 4) and m.dtype == bool
    np.testing.assert_array_equal(m[0], [[1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]])
    assert not m[1].any()
    assert lengths_mask(None, [3, 1], 3, 4, head_axis=True).shape == (2, 1, 3, 4)
    np.testing.assert_array_equal(lengths_mask(2, None, 3, 2), [[1, 1], [1, 1], [0, 0]])
    np.testing.assert_array_equal(lengths_mask([2, 0], [3, 1], 3, 4),
                                  lengths_visible((2,), 3, 4, [2, 0], [3, 1]))
    with pytest.raises(ValueError, match="between 0 and n_q=3"):
        lengths_mask([4], None, 3, 4)
    with pytest.raises(TypeError, match="integers"):
        lengths_mask(None, [1.5], 3, 4)


def test_lengths_mask_reads_lengths_as_the_keywords_do():
    """A 1-D query_lengths beside 2-D key_lengths is one length per sequence (the first batch
    axis), as query_lengths= reads it, not one per head (NumPy's right-aligned broadcasting)."""
    rng = np.random.default_rng(9)
    Q, K = rng.standard_normal((2, 2, 4, 3)), rng.standard_normal((2, 2, 5, 3))
    V = rng.standard_normal((2, 2, 5, 2))
    for ql, kl in ((np.array([4, 1]), np.array([[5, 2], [3, 1]])),
                   (np.array([[4, 1], [2, 3]]), np.array([5, 2])),
                   (np.array([4, 1]), np.array([[5, 2, 1], [3, 1, 0]])[:, :2])):
        mask = lengths_mask(ql, kl, 4, 5)
        assert mask.shape == (2, 2, 4, 5)
        want = sdpa(Q, K, V, query_lengths=ql, key_lengths=kl)
        np.testing.assert_array_equal(sdpa(Q, K, V, mask=mask), want)
    # shapes the keywords take together (prefixes of (2, 3)) but NumPy would not broadcast
    assert lengths_mask([4, 1], [[5, 2, 1], [3, 1, 0]], 4, 5).shape == (2, 3, 4, 5)
    with pytest.raises(ValueError, match=r"query_lengths.shape=\(3,\) and key_lengths.shape="
                                         r"\(2, 2\) do not match: aligned on their first axes"):
        lengths_mask([1, 2, 3], [[1, 2], [3, 4]], 4, 5)


@pytest.mark.parametrize("bad, error, message", [
    (np.array([1, 2]), ValueError, "prefix of the batch shape"),       # 2 entries for B = 3
    (np.ones((B, H + 1), dtype=int), ValueError, "prefix of the batch shape"),
    (np.array([1, 2, N_K + 1]), ValueError, r"in \[0, 90\]"),
    (np.array([1, -1, 2]), ValueError, r"in \[0, 90\]"),
    (np.array([1.0, 2.0, 3.0]), TypeError, "integers"),
    (np.array([True, False, True]), TypeError, "integers"),
])
def test_bad_lengths_are_refused(bad, error, message):
    rng = np.random.default_rng(12)
    Q, K, V = operands(rng)
    with pytest.raises(error, match=message):
        sdpa(Q, K, V, key_lengths=bad)
    with pytest.raises(error, match=message):
        sdpa_backward(np.zeros((B, H, N_Q, DV)), Q, K, V, key_lengths=bad)


def test_lengths_need_a_batch_axis():
    Q = np.ones((4, 2))
    # (it offered "shape (1,)" as the rule, the shape it refused)
    with pytest.raises(ValueError) as info:
        sdpa(Q, Q, Q, query_lengths=[3])
    assert str(info.value) == ("scaled_dot_product_attention: query_lengths.shape=(1,), but these "
                               "inputs have no batch axis (one sequence): pass its length as an int")
    assert not sdpa(Q, Q, Q, query_lengths=2)[2:].any()


def test_the_lengths_of_an_empty_batch_may_be_an_empty_list():
    """[len(s) for s in batch] is [] for an empty batch, which NumPy reads as float64: it was
    refused as 'must hold integers, got dtype float64'."""
    X, W = np.zeros((0, 5, 8)), np.eye(8)
    out = selfattn.multi_head_attention(X, W, W, W, W, num_heads=2, key_lengths=[],
                                        query_lengths=[])
    assert out.shape == (0, 5, 8)
    Q = np.zeros((0, H, N_Q, 4))
    assert sdpa(Q, Q, Q, key_lengths=[]).shape == Q.shape
    assert sdpa_backward(Q, Q, Q, Q, key_lengths=[])[0].shape == Q.shape
    with pytest.raises(TypeError, match="must hold integers"):   # an array keeps its dtype's rule
        sdpa(Q, Q, Q, key_lengths=np.array([], dtype=np.float64))


def test_masked_lengths_are_refused_as_every_masked_argument_is():
    """np.ma's mask on query_lengths= and key_lengths= was dropped: the values under it were
    used as lengths (and quoted in the range error), where every other argument refuses one."""
    rng = np.random.default_rng(13)
    Q, K, V = operands(rng)
    masked = np.ma.array([2, 3, N_K + 5], mask=[False, False, True])
    X, W = np.zeros((B, 5, 8)), np.eye(8)
    calls = [lambda kw: sdpa(Q, K, V, **kw),
             lambda kw: sdpa_backward(np.zeros((B, H, N_Q, DV)), Q, K, V, **kw),
             lambda kw: selfattn.self_attention_layer(X, W, W, W, **kw),
             lambda kw: selfattn.multi_head_attention(X, W, W, W, W, num_heads=2, **kw),
             lambda kw: selfattn.multi_head_attention_vjp(X, W, W, W, W, num_heads=2, **kw)]
    for call in calls:
        for name in ("query_lengths", "key_lengths"):
            with pytest.raises(TypeError, match=f"{name} is a masked array") as info:
                call({name: masked})
            assert "filled(value)" in str(info.value) and "mask=" not in str(info.value)


@pytest.mark.parametrize("make, what", [
    (lambda: [2, 2**70, 1], r"\(integers beyond int64, which no length is\)"),
    (lambda: (n for n in [1, 2, 3]), r"\(a generator object, not an array-like\)"),
])
def test_the_lengths_errors_ask_for_integers(make, what):
    """They told the caller to convert with dtype=float and listed floats and booleans as
    accepted, which the lengths then refused."""
    Q, K, V = operands(np.random.default_rng(14))
    for call in (lambda: sdpa(Q, K, V, key_lengths=make()), lambda: selfattn.padding_mask(make(), 4)):
        with pytest.raises(TypeError, match=what + r"; it must hold integers \(one length per "
                                                   r"sequence\)$") as info:
            call()
        assert "float" not in str(info.value)
