"""Bad input: a clear ValueError/TypeError naming the function, the argument, the shapes and the rule."""
import os
import traceback
import warnings

import numpy as np
import pytest

import selfattn as sa
from selfattn.testing import assert_attention_close


def message(call):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    return str(info.value)


def frames(call):
    """(file name, function) of each frame of the error's traceback, from this file's frame that
    made the call."""
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    return [(os.path.basename(f.filename), f.name)
            for f in traceback.extract_tb(info.value.__traceback__)]


def test_an_input_error_shows_the_learners_line_and_not_selfattns_checks():
    """The message says what to change; the traceback is the learner's own frames and the
    public call's wrapper (hidden by pytest), not the checks several frames deep."""
    X, W = np.ones((4, 6)), np.ones((6, 6))
    bad_calls = [
        lambda: sa.compute_self_attention_scores(np.ones((3, 4)), np.ones((3, 5))),
        lambda: sa.softmax_attention_weights("abc"),
        lambda: sa.scaled_dot_product_attention(X, X, X, mask=np.ones((3, 3), bool)),
        lambda: sa.multi_head_attention(X, W, W, W, W, num_heads=4),
        lambda: sa.self_attention_layer(X, W, W, W, is_causal="sideways"),
        lambda: sa.multi_head_attention_vjp(X, W, W, W, W, num_heads=2)[1](np.ones((3, 6))),
        lambda: sa.causal_mask(-1, 2),
        lambda: sa.compute_attention_output(np.ones((2, 3)), np.ones((4, 2)), axis=0),
        lambda: sa.explain(X, W[:4], W, W),  # it showed three frames of selfattn's
    ]
    for call in bad_calls:
        assert frames(call) == [("test_errors.py", "frames"), ("test_errors.py", "<lambda>"),
                                ("_validate.py", "call")]
    # the overflow of a float16 result that the caller asked NumPy to raise on (it showed the
    # three frames of selfattn's that narrow the result)
    with np.errstate(over="raise"), pytest.raises(FloatingPointError) as info:
        sa.compute_attention_output(np.ones((2, 2), np.float16), np.full((2, 3), 6e4, np.float16))
    assert str(info.value).startswith("compute_attention_output: 6 of the 6 values of its float16 ")
    assert [(os.path.basename(f.filename), f.name)
            for f in traceback.extract_tb(info.value.__traceback__)] == [
        ("test_errors.py", "test_an_input_error_shows_the_learners_line_and_not_selfattns_checks"),
        ("_validate.py", "call")]


def test_a_missing_argument_lists_the_arguments_in_order():
    """backward(Q, K, V) lacks dO, but Python says "missing ... argument: 'V'", and under the
    tier wrapper the error kept selfattn's frames. The arguments in their order say which one
    was left out; the traceback is the learner's line."""
    Q = np.ones((3, 2))
    calls = {
        "scaled_dot_product_attention_backward() missing 1 required positional argument: 'V'; "
        "scaled_dot_product_attention_backward takes dO, Q, K, V, in this order (dO, the "
        "gradient of the output, first)": lambda: sa.scaled_dot_product_attention_backward(Q, Q, Q),
        "multi_head_attention_backward() missing 1 required positional argument: 'W_o'; "
        "multi_head_attention_backward takes dY, X, W_q, W_k, W_v, W_o, in this order (dY, the "
        "gradient of the output, first)":
            lambda: sa.multi_head_attention_backward(Q, Q, Q, Q, Q, num_heads=1),
        "self_attention_layer() missing 1 required positional argument: 'W_v'; "
        "self_attention_layer takes X, W_q, W_k, W_v, in this order":
            lambda: sa.self_attention_layer(Q, Q, Q),
    }
    for expected, call in calls.items():
        assert message(call) == expected
        assert frames(call) == [("test_errors.py", "frames"), ("test_errors.py", "<lambda>"),
                                ("_validate.py", "call")]
    unknown = lambda: sa.scaled_dot_product_attention_backward(Q, Q, Q, Q, causal=True)  # noqa
    # Python's own (3.13 adds "Did you mean 'is_causal'?")
    assert "got an unexpected keyword argument 'causal'" in message(unknown)
    assert len(frames(unknown)) == 3


def test_other_errors_keep_their_frames():
    """Only an error that names the call is the learner's input; anything else (a bug of ours,
    an error from a function the call was given) keeps every frame."""
    from selfattn._validate import _public_call

    def check_input():
        raise ValueError("public: x must be positive")

    def broken():
        raise ValueError("an internal step failed")

    @_public_call(name="public")
    def public(fail):
        fail()

    assert frames(lambda: public(check_input)) == [
        ("test_errors.py", "frames"), ("test_errors.py", "<lambda>"), ("_validate.py", "call")]
    assert [name for _, name in frames(lambda: public(broken))] == [
        "frames", "<lambda>", "call", "public", "broken"]


def test_dk_mismatch_names_both_shapes_and_the_rule():
    msg = message(lambda: sa.compute_self_attention_scores(np.ones((3, 4)), np.ones((3, 5))))
    assert msg == ("compute_self_attention_scores: Q has d_k=4 (Q.shape=(3, 4)) but K has d_k=5 "
                   "(K.shape=(3, 5)); the last dimensions of Q and K must match.")


def test_transposed_k_gets_a_hint():
    msg = message(lambda: sa.compute_self_attention_scores(np.ones((3, 4)), np.ones((4, 6))))
    assert "K.shape=(4, 6)" in msg and "K looks transposed" in msg and "(n_k, d_k)" in msg


def test_one_dimensional_inputs_name_the_expected_shape():
    msg = message(lambda: sa.compute_self_attention_scores(np.ones(4), np.ones((3, 4))))
    assert msg.startswith("compute_self_attention_scores: Q must have at least 2 dimensions "
                          "(n_q, d_k), got Q.shape=(4,)")
    assert "Q[None, :]" in msg
    msg = message(lambda: sa.self_attention_layer(np.ones(4), np.ones((4, 2)), np.ones((4, 2)),
                                                  np.ones((4, 2))))
    assert "X must have at least 2 dimensions (seq_len, d_model)" in msg
    msg = message(lambda: sa.compute_attention_output(np.ones((2, 3)), np.ones(3)))
    assert "V must have at least 2 dimensions (n_k, d_v)" in msg
    with pytest.raises(ValueError, match="attn_scores must have at least 1 dimension"):
        sa.softmax_attention_weights(3.0)


def test_value_rows_must_match_keys():
    Q = np.ones((2, 4))
    msg = message(lambda: sa.scaled_dot_product_attention(Q, np.ones((5, 4)), np.ones((6, 3))))
    assert "K has n_k=5 keys (K.shape=(5, 4)) but V has 6 rows (V.shape=(6, 3))" in msg
    msg = message(lambda: sa.compute_attention_output(np.ones((2, 5)), np.ones((4, 5))))
    assert msg.startswith("compute_attention_output: attn_weights has n_k=5 columns "
                          "(attn_weights.shape=(2, 5)) but V has 4 rows (V.shape=(4, 5))")
    assert "V looks transposed" in msg
    # the weights (3, 5) and V (5, 4) passed the other way round
    weights, V = sa.softmax_attention_weights(np.ones((3, 5))), np.ones((5, 4))
    msg = message(lambda: sa.compute_attention_output(V, weights))
    assert msg.endswith("were the arguments swapped? The weights come first: "
                        "compute_attention_output(attn_weights, V)")
    assert "swapped" not in message(lambda: sa.compute_attention_output(weights, np.ones((4, 2))))


def test_layer_weight_shapes():
    X = np.ones((3, 8))
    msg = message(lambda: sa.self_attention_layer(X, np.ones((4, 8)), np.ones((8, 4)), np.ones((8, 4))))
    assert ("self_attention_layer: X has d_model=8 (X.shape=(3, 8)) but W_q has 4 rows "
            "(W_q.shape=(4, 8))") in msg
    assert "W_q looks transposed" in msg and "transpose it (W_q.T, or drop a .T you added)" in msg
    # X.T: the message named the weights, with no word on X
    msg = message(lambda: sa.self_attention_layer(X.T, np.ones((8, 4)), np.ones((8, 4)), np.ones((8, 4))))
    assert "X has d_model=3 (X.shape=(8, 3)) but W_q has 8 rows" in msg
    assert "X looks transposed: its rows must be the tokens, (seq_len, d_model)" in msg
    assert "W_q looks transposed" not in msg
    msg = message(lambda: sa.self_attention_layer(X, np.ones((8, 4)), np.ones((8, 3)), np.ones((8, 4))))
    assert "W_q makes queries of d_k=4" in msg and "W_k makes keys of d_k=3" in msg
    msg = message(lambda: sa.self_attention_layer(X, np.ones((8, 4)), np.ones((8, 4)), np.ones((7, 4))))
    assert "W_v has 7 rows (W_v.shape=(7, 4))" in msg


def test_batch_dims_that_do_not_broadcast():
    msg = message(lambda: sa.compute_self_attention_scores(np.ones((2, 3, 4)), np.ones((3, 3, 4))))
    assert msg == ("compute_self_attention_scores: the batch (leading) dimensions do not broadcast: "
                   "Q.shape[:-2]=(2,), K.shape[:-2]=(3,); each must be equal or 1, as in np.matmul")


def test_heads_split_past_numpys_limit_on_dimensions_name_the_call():
    """An input with as many dimensions as NumPy allows (64; 32 before NumPy 2), whose heads the
    call splits out into one more axis, got NumPy's bare "maximum supported dimension ... found
    65"; one dimension fewer works."""
    limit = next(n for n in (64, 32) if _makes_array((1,) * n))
    W, W2 = np.ones((4, 4)), np.ones((4, 2))
    for batch, kv_heads, what in ((limit - 2, None, "the heads take 1 more"),
                                  (limit - 3, 1, "the heads and their groups take 2 more")):
        W_kv = W if kv_heads is None else W2
        with pytest.raises(ValueError, match=rf"^multi_head_attention: X has {batch + 2} "
                                             rf"dimensions, and {what} inside the call: "
                                             rf"{limit + 1}, past NumPy's limit of {limit}"):
            sa.multi_head_attention(np.ones((1,) * batch + (3, 4)), W, W_kv, W_kv, W,
                                    num_heads=2, num_kv_heads=kv_heads)
        X = np.ones((1,) * (batch - 1) + (3, 4))
        assert sa.multi_head_attention(X, W, W_kv, W_kv, W, num_heads=2,
                                       num_kv_heads=kv_heads).shape == X.shape
        dY = np.ones_like(X)
        assert sa.multi_head_attention_backward(dY, X, W, W_kv, W_kv, W, num_heads=2,
                                                num_kv_heads=kv_heads)[0].shape == X.shape
    K = np.ones((2, 3, 2))
    for func in (sa.scaled_dot_product_attention, sa.scaled_dot_product_attention_backward):
        Q = np.ones((1,) * (limit - 3) + (4, 3, 2))
        args = (Q, Q, K, K) if func is sa.scaled_dot_product_attention_backward else (Q, K, K)
        with pytest.raises(ValueError, match=rf"^{func.__name__}: Q has {limit} dimensions, "
                                             rf"and the groups of query heads sharing"):
            func(*args, enable_gqa=True)
        Q = Q[0]
        args = (Q, Q, K, K) if func is sa.scaled_dot_product_attention_backward else (Q, K, K)
        func(*args, enable_gqa=True)


def _makes_array(shape):
    try:
        return np.empty(shape) is not None
    except ValueError:
        return False


def test_mask_that_does_not_broadcast():
    Q = np.ones((3, 4))
    msg = message(lambda: sa.scaled_dot_product_attention(Q, np.ones((5, 4)), np.ones((5, 2)),
                                                          mask=np.ones((3, 4), bool)))
    assert "mask.shape=(3, 4) does not broadcast to the scores' shape (..., n_q, n_k) = (..., 3, 5)" in msg
    msg = message(lambda: sa.scaled_dot_product_attention(Q, Q, Q, mask=np.ones((2, 1, 3), bool)[:, :, :2]))
    assert "mask.shape=(2, 1, 2)" in msg
    msg = message(lambda: sa.scaled_dot_product_attention(np.ones((2, 3, 4)), Q, Q,
                                                          mask=np.ones((5, 3, 3), bool)))
    assert "mask.shape[:-2]=(5,)" in msg


@pytest.mark.parametrize("value", [1, "yes", None, np.array([True])])
def test_flags_must_be_bool(value):
    Q = np.ones((2, 2))
    if value is not None:   # is_causal also takes None and two strings (test_band_variants.py)
        with pytest.raises(ValueError if isinstance(value, str) else TypeError,
                           match=r"is_causal must be True, False, None, 'top_left' or"):
            sa.compute_self_attention_scores(Q, Q, is_causal=value)
    with pytest.raises(TypeError, match=r"return_weights must be True or False"):
        sa.scaled_dot_product_attention(Q, Q, Q, return_weights=value)


def test_scale_must_be_a_finite_real():
    Q = np.ones((2, 2))
    for bad in ("0.5", 1j, [1.0], True):
        with pytest.raises(TypeError, match="scale must be a real number or None"):
            sa.compute_self_attention_scores(Q, Q, scale=bad)
    for bad in (np.inf, np.nan, -np.inf):
        with pytest.raises(ValueError, match="scale must be finite"):
            sa.self_attention_layer(Q, Q, Q, Q, scale=bad)
    np.testing.assert_array_equal(sa.compute_self_attention_scores(Q, Q, scale=np.float32(2)), 4)
    np.testing.assert_array_equal(sa.compute_self_attention_scores(Q, Q, scale=np.array(2)), 4)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_a_scale_beyond_the_compute_dtypes_range_is_an_error(dtype):
    """A float32 call (float16 computes in float32) with scale=1e39 (finite as a Python float) had
    every score inf or NaN: NaN outputs, and gradients 0 or NaN where a row sees no key. It names
    the range and the ways out; float64 arrays take that scale."""
    o = np.ones((2, 2), dtype)
    rule = (r"scale=1e\+39 is beyond the range of float32 \(largest 3\.403e\+38\), the precision "
            r"this call computes in; pass a smaller scale, or float64 arrays")
    for call in (lambda: sa.compute_self_attention_scores(o, o, scale=1e39),
                 lambda: sa.scaled_dot_product_attention(o, o, o, scale=1e39),
                 lambda: sa.scaled_dot_product_attention(o[None], o, o, scale=-1e39),
                 lambda: sa.self_attention_layer(o, o, o, o, scale=1e39),
                 lambda: sa.scaled_dot_product_attention_backward(o, o, o, o, scale=1e39,
                                                                  query_lengths=0),
                 lambda: sa.multi_head_attention(o, o, o, o, o, num_heads=1, scale=1e39)):
        with pytest.raises(ValueError, match=rule.replace("1e\\+39", "-?1e\\+39")):
            call()
    assert sa.compute_self_attention_scores(o.astype(np.float64), o, scale=1e39).dtype == np.float64
    # the largest float32 itself is a scale float32 holds
    quarter = np.full((2, 2), 0.25, np.float32)
    S = sa.compute_self_attention_scores(quarter, quarter, scale=float(np.finfo(np.float32).max))
    assert np.isfinite(S).all()


def test_axis_errors():
    with pytest.raises(np.exceptions.AxisError if hasattr(np, "exceptions") else np.AxisError,
                       match="axis=2 is out of range for attn_scores with 2 dimension"):
        sa.softmax_attention_weights(np.ones((2, 2)), axis=2)
    with pytest.raises(ValueError):
        sa.softmax_attention_weights(np.ones((2, 2)), axis=-3)
    with pytest.raises(TypeError, match="axis must be an integer"):
        sa.softmax_attention_weights(np.ones((2, 2)), axis=1.0)
    for flag in (True, np.bool_(False)):    # as NumPy: a bool is not an axis
        with pytest.raises(TypeError, match="softmax_attention_weights: axis must be an integer"):
            sa.softmax_attention_weights(np.ones((2, 2)), axis=flag)
    np.testing.assert_allclose(sa.softmax_attention_weights(np.ones((2, 2)), axis=np.int64(0)),
                               0.5)


def test_thread_counts_are_integers_not_flags():
    before = sa.get_num_threads()
    for bad in (True, np.bool_(True), 2.0, "2"):
        with pytest.raises(TypeError, match="set_num_threads: n must be an integer"):
            sa.set_num_threads(bad)
    assert sa.get_num_threads() == before


def test_a_one_dimensional_weight_gets_a_weights_hint():
    """A 1-D W is a projection to one column (W[:, None]), not a single token (W[None, :])."""
    X = np.ones((3, 8))
    for call in (lambda: sa.multi_head_attention(X, np.ones(8), *np.ones((3, 8, 8)), num_heads=2),
                 lambda: sa.self_attention_layer(X, np.ones(8), np.ones((8, 4)), np.ones((8, 4)))):
        msg = message(call)
        assert "W_q.shape=(8,); for a projection to a single column use W_q[:, None] (shape (8, 1))" \
            in msg, msg
        assert "single token" not in msg
    assert "for a single token use X[None, :] (shape (1, 8))" in message(
        lambda: sa.self_attention_layer(np.ones(8), np.ones((8, 4)), np.ones((8, 4)),
                                        np.ones((8, 4))))


def test_ragged_lists():
    msg = message(lambda: sa.softmax_attention_weights([[1, 2], [3]]))
    assert ("attn_scores could not be read as an array (it is not rectangular: rows of different "
            "lengths" in msg or "ragged" in msg)  # NumPy < 1.24 makes an object array of it


class _RefusesConversion:
    """An array-like whose own conversion refuses, as a torch tensor that requires grad does
    (RuntimeError), or one in bfloat16 (TypeError)."""

    def __init__(self, error):
        self.error = error

    def __array__(self, dtype=None, copy=None):
        raise self.error


@pytest.mark.parametrize("error", [RuntimeError("Can't call numpy() on Tensor that requires "
                                                "grad. Use tensor.detach().numpy() instead."),
                                   TypeError("Got unsupported ScalarType BFloat16")])
def test_an_object_that_refuses_conversion_gets_a_typeerror_with_its_words(error):
    """The object's own words say how to get an array out of it; before, a RuntimeError escaped
    raw (a grader catching TypeError and ValueError crashed), and a TypeError was reported as a
    ValueError about the shape."""
    thing = _RefusesConversion(error)
    name = f"{__name__}._RefusesConversion"
    with pytest.raises(TypeError) as info:
        sa.softmax_attention_weights(thing)
    fix = "; convert it to float32 first: attn_scores.float()" if "BFloat16" in str(error) else ""
    assert str(info.value) == (f"softmax_attention_weights: attn_scores, a {name}, could not be "
                               f"converted to a NumPy array; it says: {error}{fix}")
    Q = np.ones((2, 3, 4))
    for kwargs in ({"mask": thing}, {"bias": thing}, {"query_lengths": thing}):
        with pytest.raises(TypeError, match=f"{list(kwargs)[0]}, a {name}, could not be"):
            sa.scaled_dot_product_attention(Q, Q, Q, **kwargs)


def test_only_objects_that_convert_themselves_get_the_conversion_typeerror():
    """A ragged sequence that is not a list (a deque) is still "not rectangular" (ValueError);
    a RecursionError inside __array__ is not dressed up as a conversion refusal."""
    import collections
    msg = message(lambda: sa.softmax_attention_weights(collections.deque([[1, 2, 3], [1, 2]])))
    assert ("attn_scores could not be read as an array (it is not rectangular" in msg
            or "a ragged nested list" in msg), msg  # NumPy < 1.24 makes an object array of it
    with pytest.raises(RecursionError):
        sa.softmax_attention_weights(_RefusesConversion(RecursionError("deep")))


def test_torch_tensors_that_numpy_cannot_take_are_named():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"Q, a torch.Tensor, could not be converted to a NumPy "
                                        r"array; it says: .*detach"):
        sa.compute_self_attention_scores(torch.ones(2, 3, requires_grad=True), np.ones((2, 3)))
    with pytest.raises(TypeError, match=r"BFloat16; convert it to float32 first: attn_scores\.float\(\)"):
        sa.softmax_attention_weights(torch.ones(2, 3, dtype=torch.bfloat16))


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float8_e4m3fn"])
def test_bfloat16_and_float8_arrays_are_named_as_the_floats_they_are(dtype_name):
    """JAX's bfloat16 arrays convert to ml_dtypes' bfloat16, a dtype of kind "V": it was called
    "structured (void)", which a JAX user does not recognise."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = np.ones((2, 3), dtype=getattr(ml_dtypes, dtype_name))
    with pytest.raises(TypeError) as info:
        sa.softmax_attention_weights(x)
    assert str(info.value) == (f"softmax_attention_weights: attn_scores has dtype {dtype_name}, which "
                   f"selfattn does not compute in; convert it with attn_scores.astype(np.float32)")
    # structured data is still called what it is
    record = np.zeros(3, dtype=[("a", "f8"), ("b", "f8")])
    assert "structured (void)" in message(lambda: sa.softmax_attention_weights(record))


def test_ragged_lengths_and_huge_mask_bias_pairs_get_our_errors():
    Q = np.ones((2, 3, 4))
    msg = message(lambda: sa.scaled_dot_product_attention(Q, Q, Q, query_lengths=[[1, 2], [3]]))
    assert (msg.startswith("scaled_dot_product_attention: query_lengths could not be read as an "
                           "array (it is not rectangular")
            or "ragged nested list" in msg), msg    # NumPy < 1.24 makes an object array of it
    # lengths beyond n in a broadcast view are found without scanning every entry
    msg = message(lambda: sa.scaled_dot_product_attention(
        Q, Q, Q, query_lengths=np.broadcast_to(np.array([5]), (2,))))
    assert "query_lengths must lie in [0, 3], got values from 5 to 5" in msg
    # a mask and a bias whose broadcast no machine could hold: refused before np.where tried
    x = np.ones((3, 4))
    mask = np.broadcast_to(np.ones((1, 1, 3, 3), bool), (2 ** 31, 1, 3, 3))
    bias = np.broadcast_to(np.zeros((1, 3, 3)), (2 ** 31, 3, 3))
    msg = message(lambda: sa.scaled_dot_product_attention(x, x, x, mask=mask, bias=bias))
    assert msg == ("scaled_dot_product_attention: mask.shape=(2147483648, 1, 3, 3) and "
                   "bias.shape=(2147483648, 3, 3) broadcast to (2147483648, 2147483648, 3, 3) "
                   "(41,505,174,165,846,491,136 elements), which is too large to allocate")


def test_a_rectangular_list_holding_none_names_it():
    """A rectangular list with a None (or a Fraction, or integers beyond int64) is an object
    array too: the message says what it holds, not that its rows have different lengths."""
    msg = message(lambda: sa.softmax_attention_weights([[1.0, None], [2.0, 3.0]]))
    assert "(it holds None where a number should be)" in msg and "ragged" not in msg
    from fractions import Fraction
    msg = message(lambda: sa.softmax_attention_weights([[Fraction(1, 2), 1.0]]))
    assert "(it holds Fraction(1, 2), a Fraction, which NumPy does not compute with" in msg
    msg = message(lambda: sa.softmax_attention_weights([[2 ** 70, 1], [1, 1]]))
    assert "such as integers beyond int64: convert with np.asarray(attn_scores, dtype=float)" in msg


def test_a_ragged_list_gets_our_error_alone():
    """NumPy before 1.24 warned about a ragged nested list before making an object array of it
    (newer ones raise ValueError): either way the learner sees our error, and no NumPy warning
    ahead of it (CI's NumPy-floor run is where this can fail)."""
    ragged = [[1.0, 2.0], [3.0]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises((TypeError, ValueError), match="could not be read as an array|ragged"):
            sa.compute_self_attention_scores(ragged, ragged)
        # a grader's assertion on a student's ragged result
        with pytest.raises(AssertionError, match="do not form one array of numbers"):
            assert_attention_close(ragged, np.zeros((2, 2)))


def test_unknown_keyword_and_positional_options_are_rejected():
    Q = np.ones((2, 2))
    with pytest.raises(TypeError):
        sa.compute_self_attention_scores(Q, Q, 1.0)          # options are keyword-only
    with pytest.raises(TypeError):
        sa.self_attention_layer(Q, Q, Q, Q, causal=True)     # the name is is_causal


def test_astronomically_large_results_are_refused_before_any_work():
    huge = np.broadcast_to(np.ones(4), (2**31, 4))
    with pytest.raises((ValueError, MemoryError)):
        sa.compute_self_attention_scores(huge, huge)
    with pytest.raises(ValueError, match="too large to allocate"):
        sa.compute_self_attention_scores(np.broadcast_to(np.ones(4), (2**40, 4)), huge)
    row = np.broadcast_to(np.ones(4), (2**40, 4))
    with pytest.raises((ValueError, MemoryError)):
        sa.scaled_dot_product_attention(row, row, row, return_weights=True)
    with pytest.raises((ValueError, MemoryError)):
        sa.softmax_attention_weights(np.broadcast_to(np.ones(1), (2**31, 2**31)))


def test_none_is_named_as_none():
    with pytest.raises(TypeError, match=r"^compute_attention_output: V is None; pass an array"):
        sa.compute_attention_output(np.ones((2, 2)), None)
    with pytest.raises(TypeError, match=r"softmax_attention_weights: attn_scores is None"):
        sa.softmax_attention_weights(None)


def test_zero_dimensional_and_empty_arrays_as_options_get_our_errors():
    """window=np.array('s') raised "len() of unsized object", axis=np.array([]) NumPy's "truth
    value of an empty array is ambiguous": neither named the call or the argument."""
    x = np.ones((3, 4))
    msg = message(lambda: sa.scaled_dot_product_attention(x, x, x, window=np.array("s")))
    assert msg.startswith("scaled_dot_product_attention: window must be a pair (left, right)"), msg
    msg = message(lambda: sa.scaled_dot_product_attention(x, x, x, window=(1, [2, 3])))
    assert msg == ("scaled_dot_product_attention: window[1] (right) must be a non-negative "
                   "integer, got [2, 3]"), msg
    assert sa.scaled_dot_product_attention(x, x, x, window=np.array([1, 0])).shape == (3, 4)
    for axis in (np.array([]), np.zeros(1, dtype=[("a", "i4")])[0]):
        msg = message(lambda: sa.softmax_attention_weights(x, axis=axis))
        assert msg.startswith("softmax_attention_weights: axis must be an integer, got"), msg
