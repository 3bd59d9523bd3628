"""Size guards: results too large to address or allocate are refused at once, never attempted.

Broadcast views (np.broadcast_to) make inputs of any logical size for free, so a function that
trusts the size of its inputs would try to compute (or allocate) astronomically large results.
Each call here must raise ValueError or MemoryError with a message, within a second.
"""
import math
import re
import time

import numpy as np
import pytest

import selfattn

BIG = 2 ** 31


def big_view(shape, dtype=np.float64):
    return np.broadcast_to(np.ones((1,) * len(shape), dtype=dtype), shape)


def refused(call, *exceptions):
    start = time.perf_counter()
    with pytest.raises(exceptions or (ValueError, MemoryError)) as info:
        call()
    # (a call that went on to compute would take minutes; 5 s leaves room for a loaded machine)
    assert time.perf_counter() - start < 5.0, "the refusal was not immediate"
    assert str(info.value).strip()
    if isinstance(info.value, MemoryError):      # _validate._public_call's rule
        assert re.match(r"\w+: not enough memory for this call: \S", str(info.value)), info.value
    return info.value


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_scores_of_2_31_queries_and_keys(dtype):
    Q = big_view((BIG, 4), dtype)
    exc = refused(lambda: selfattn.compute_self_attention_scores(Q, Q), ValueError)
    assert "compute_self_attention_scores" in str(exc) and "too large" in str(exc)


def overcommit_always():
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


@pytest.mark.skipif(overcommit_always(), reason="vm.overcommit_memory=1 grants any allocation")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_scores_of_2_20_squared_are_refused(dtype):
    # 2**40 entries: addressable, but terabytes; the allocator refuses at once.
    Q = big_view((2 ** 20, 4), dtype)
    refused(lambda: selfattn.compute_self_attention_scores(Q, Q))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_scores_beyond_the_address_space_are_refused(dtype):
    # 2**48 entries: more bytes than a 47-bit user address space holds, on any machine.
    Q = big_view((2 ** 24, 4), dtype)
    refused(lambda: selfattn.compute_self_attention_scores(Q, Q))


def test_weights_of_2_31_queries():
    Q = big_view((BIG, 4))
    exc = refused(lambda: selfattn.scaled_dot_product_attention(Q, Q, Q, return_weights=True),
                  ValueError)
    assert "scaled_dot_product_attention" in str(exc)


def test_fused_attention_with_an_enormous_output():
    Q = big_view((BIG, 4))
    V = big_view((BIG, 2 ** 20))
    refused(lambda: selfattn.scaled_dot_product_attention(Q, Q, V))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_plain_2d_attention_past_the_address_space_names_the_function(dtype):
    # the 2-D fast path of sdpa (straight to C) steps aside for the general path's message;
    # NumPy's own "array is too big" came out before (softmax's result is its input's size)
    Q = np.broadcast_to(np.zeros((1, 4), dtype), (2 ** 40, 4))   # rows contiguous: plain
    V = np.zeros((3, 2 ** 22), dtype)
    exc = refused(lambda: selfattn.scaled_dot_product_attention(Q, V[:, :4], V), ValueError)
    assert "scaled_dot_product_attention" in str(exc) and "too large" in str(exc)


def test_batch_dimensions_that_multiply_past_the_address_space():
    # Each operand is small in its own batch, but the broadcast batch is 2**62 matrices.
    Q = big_view((2 ** 31, 1, 1, 4))
    K = big_view((1, 2 ** 31, 1, 4))
    refused(lambda: selfattn.compute_self_attention_scores(Q, K), ValueError)
    refused(lambda: selfattn.scaled_dot_product_attention(Q, K, K), ValueError)
    W = big_view((2 ** 31, 1, 1, 1))
    V = big_view((1, 2 ** 31, 1, 4))
    refused(lambda: selfattn.compute_attention_output(W, V), ValueError)


def test_softmax_of_an_unaddressable_view():
    # int8 views of 2**62 elements exist; their float64 softmax would need 2**65 bytes
    x = big_view((BIG, BIG), np.int8)
    exc = refused(lambda: selfattn.softmax_attention_weights(x), ValueError)
    assert "softmax_attention_weights" in str(exc)
    refused(lambda: selfattn.softmax_attention_weights(big_view((2 ** 20, 2 ** 20))))


def test_attention_output_of_huge_views():
    W = big_view((BIG, BIG), np.int8)
    V = big_view((BIG, BIG), np.int8)
    exc = refused(lambda: selfattn.compute_attention_output(W, V), ValueError)
    assert "compute_attention_output" in str(exc)


def test_layer_with_a_huge_sequence():
    X = big_view((2 ** 43, 4), np.int8)      # projections: 2**43 x 12 float64, beyond any memory
    W = np.ones((4, 4))
    refused(lambda: selfattn.self_attention_layer(X, W, W, W))
    refused(lambda: selfattn.self_attention_layer(X, W, W, W, return_weights=True))
    # d_model large enough that the weights alone would be enormous once broadcast
    Xb = big_view((2 ** 31, 1, 4))
    Wb = big_view((1, 2 ** 31, 4, 4))
    refused(lambda: selfattn.self_attention_layer(Xb, Wb, Wb, Wb))


def test_huge_masks():
    Q = np.ones((3, 4))
    mask = big_view((2 ** 29, 2 ** 29, 3, 3), bool)
    refused(lambda: selfattn.compute_self_attention_scores(Q, Q, mask=mask), ValueError)
    refused(lambda: selfattn.scaled_dot_product_attention(Q, Q, Q, mask=mask), ValueError)


def test_multi_head_attention_with_a_huge_sequence():
    mha = getattr(selfattn, "multi_head_attention", None)
    if mha is None:
        pytest.skip("multi_head_attention is not in this build")
    X = big_view((2 ** 43, 4), np.int8)
    W = np.ones((4, 4))
    refused(lambda: mha(X, W, W, W, W, num_heads=2))
    Xb = big_view((2 ** 30, 2 ** 30, 1, 4), np.int8)
    refused(lambda: mha(Xb, W, W, W, W, num_heads=2))


def test_multi_head_batches_that_broadcast_past_the_address_space_name_the_function():
    """X's and W_q's batch axes broadcast to 2**62 items: refused as too large by name, not
    with the 'iterator is too large' of np.broadcast_to."""
    X = big_view((2 ** 31, 1, 3, 4))
    W = big_view((1, 2 ** 31, 4, 4))
    eye = np.eye(4)
    for call, name in ((lambda: selfattn.multi_head_attention(X, W, eye, eye, eye, num_heads=2),
                        "multi_head_attention"),
                       (lambda: selfattn.multi_head_attention_backward(np.ones((3, 4)), X, W, eye,
                                                                       eye, eye, num_heads=2),
                        "multi_head_attention_backward")):
        error = refused(call, ValueError)
        assert str(error).startswith(f"{name}: the result would have shape (2147483648, "
                                     f"2147483648, 3, 4)"), error


def test_zero_sized_results_are_fine_next_to_huge_axes():
    # A zero-length axis makes the result empty however long the others are.
    Q = big_view((BIG, 0))
    K = np.ones((0, 0))
    assert selfattn.compute_self_attention_scores(K, Q).shape == (0, BIG)
    assert selfattn.scaled_dot_product_attention(np.ones((0, 3)), big_view((BIG, 3)),
                                                 big_view((BIG, 0))).shape == (0, 0)


def test_the_private_kernels_refuse_a_mismatched_call():
    # selfattn._core checks what it is handed, so a misuse of the private API raises.
    from selfattn import _core
    out = np.empty((2, 3))
    with pytest.raises(ValueError):
        _core.matmul(out, np.ones((2, 4)), np.ones((5, 3)), -1)
    with pytest.raises(ValueError):
        _core.softmax(out, np.ones((3, 2)), -1)
    with pytest.raises(TypeError):
        _core.softmax(out, np.ones((2, 3), np.float32), -1)
    with pytest.raises(ValueError):
        _core.scores(out, np.ones((2, 4))[:, ::2], np.ones((3, 2)), None, 1.0, (0, 0), -1)


@pytest.mark.parametrize("mods", [{"softcap": math.nan}, {"softcap": math.inf}, {"softcap": -1.0},
                                  {"dropout_p": math.inf}, {"dropout_p": -0.5},
                                  {"dropout_p": 1.5}, {"dropout_p": math.nan}])
def test_the_private_attention_refuses_modifiers_out_of_range(mods):
    # the public calls validate these; the private ones check them too (dropout_p=inf was an
    # undefined float-to-integer conversion, a NaN cap a NaN result)
    from selfattn import _core
    from selfattn._api import _PLAIN_BANDS
    x = np.ones((3, 4))
    args = (0.5, _PLAIN_BANDS[False], -1)
    with pytest.raises(ValueError, match="dropout_p within"):
        _core.attention(np.empty((3, 4)), None, x, x, x, None, *args, None,
                        mods.get("softcap", 0.0), mods.get("dropout_p", 0.0), 1)
    with pytest.raises(ValueError, match="dropout_p within"):
        _core.attention_backward(*(np.empty((3, 4)) for _ in range(3)), x, x, x, x, None, *args,
                                 mods.get("softcap", 0.0), mods.get("dropout_p", 0.0), 1)


# 2**48 elements: addressable (no ValueError), but more than a 47-bit address space holds
SIDE = 2 ** 24


@pytest.mark.parametrize("call, name", [
    (lambda: selfattn.compute_self_attention_scores(big_view((SIDE, 4)), big_view((SIDE, 4))),
     "compute_self_attention_scores"),
    (lambda: selfattn.softmax_attention_weights(big_view((SIDE, SIDE), np.float32)),
     "softmax_attention_weights"),
    (lambda: selfattn.compute_attention_output(*[big_view((SIDE, SIDE), np.float32)] * 2),
     "compute_attention_output"),
    (lambda: selfattn.scaled_dot_product_attention(*[big_view((SIDE, 4))] * 3,
                                                   return_weights=True),
     "scaled_dot_product_attention"),
    (lambda: selfattn.causal_mask(2, 2 ** 47), "causal_mask"),
    (lambda: selfattn.window_mask(2, 2 ** 47, 3, 0), "window_mask"),
    (lambda: selfattn.alibi_bias(1, 2, 2 ** 47), "alibi_bias"),
    (lambda: selfattn.padding_mask(np.array([3, 5]), 2 ** 47), "padding_mask"),
])
def test_running_out_of_memory_names_the_call(call, name):
    """A result the machine cannot allocate: a MemoryError that names the learner's call, keeps
    NumPy's account of the allocation, and says what to try; one exception, not a chain."""
    error = refused(call, MemoryError)
    message = str(error)
    assert message.startswith(f"{name}: not enough memory for this call: Unable to allocate ")
    assert "Try smaller inputs" in message and message.endswith(".")
    # float32 is offered where the failed array was float64 and the inputs set its dtype
    maker = name.endswith(("_mask", "_bias"))
    assert ("or float32 inputs" in message) == ("data type float64" in message and not maker)
    # a mask maker names its result as well as NumPy's failed array (an index array of one side,
    # which the caller never asked for)
    if name.endswith("_mask"):
        assert re.search(r"\(building its result, a bool array of shape \(\d+, (1, )?140737488355328\)"
                         r": [\d,.]+ GiB\)\. Try", message), message
    assert error.__cause__ is None and error.__suppress_context__


def test_the_outermost_public_call_is_named():
    """A public function that calls another (here one made for the test, as _api's do) names
    itself, the call the learner made; a bare MemoryError (a kernel's scratch space) says so."""
    from selfattn._validate import _public_call

    @_public_call
    def inner():
        raise MemoryError()

    @_public_call
    def outer():
        return inner()

    with pytest.raises(MemoryError) as info:
        outer()
    assert str(info.value) == ("outer: not enough memory for this call: the kernel could not "
                               "allocate its scratch space. Try smaller inputs (fewer or shorter "
                               "sequences, a smaller batch).")
    with pytest.raises(MemoryError, match="^inner: not enough memory"):
        inner()


class NoMemory:
    """A stand-in for selfattn._core whose every kernel fails as a scratch space would."""

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise MemoryError()
        return fail


def test_the_layer_names_itself(monkeypatch):
    """The layer's real results (its projections first) take seconds to make under valgrind
    before its weights fail: its kernels fail at once here instead."""
    for module in (selfattn._api, selfattn._kernels):
        monkeypatch.setattr(module, "_core", NoMemory())
    with pytest.raises(MemoryError, match="^self_attention_layer: not enough memory for this "
                                          "call: the kernel could not allocate"):
        selfattn.self_attention_layer(np.ones((3, 4)), *[np.eye(4)] * 3)


def test_the_vjp_backward_names_itself(monkeypatch):
    """The function multi_head_attention_vjp returns is named as its backward (its gradients'
    arrays fail here as a kernel's scratch space would)."""
    X = np.ones((6, 4))
    W = np.eye(4)
    _, backward = selfattn.multi_head_attention_vjp(X, W, W, W, W, num_heads=2)

    def no_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(selfattn._multihead, "_grads", no_memory)
    with pytest.raises(MemoryError, match="^multi_head_attention_vjp's backward: not enough "
                                          "memory for this call: the kernel could not"):
        backward(np.ones((6, 4)))


def test_the_named_functions_keep_their_signatures_and_docstrings():
    """What a learner reads with `?`: the wrapper's frame changes neither."""
    import inspect
    for name in ("compute_self_attention_scores", "scaled_dot_product_attention", "causal_mask",
                 "multi_head_attention_vjp"):
        function = getattr(selfattn, name)
        assert function.__name__ == name and function.__doc__ == function.__wrapped__.__doc__
        assert inspect.signature(function) == inspect.signature(function.__wrapped__)
    assert list(inspect.signature(selfattn.compute_self_attention_scores).parameters)[:2] == [
        "Q", "K"]
