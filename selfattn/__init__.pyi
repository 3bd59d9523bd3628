from typing import Any, Callable, Literal, Sequence, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import testing as testing
from ._explain import AttentionTrace

__all__ = [
    "compute_self_attention_scores",
    "softmax_attention_weights",
    "compute_attention_output",
    "self_attention_layer",
    "scaled_dot_product_attention",
    "multi_head_attention",
    "scaled_dot_product_attention_backward",
    "self_attention_layer_backward",
    "multi_head_attention_backward",
    "multi_head_attention_vjp",
    "causal_mask",
    "padding_mask",
    "window_mask",
    "alibi_bias",
    "lengths_mask",
    "set_num_threads",
    "get_num_threads",
    "set_isa",
    "get_isa",
    "config",
    "testing",
    "explain",
    "plot_attention",
    "__version__",
]

__version__: str

class NumPyBackendWarning(UserWarning): ...

_Float = NDArray[np.floating[Any]]
# NumPy's scalars are accepted wherever a Python number is (num_heads=np.int64(2),
# scale=np.float32(0.5), is_causal=np.True_), as at run time
_Int = int | np.integer[Any]
_Real = float | np.floating[Any] | np.integer[Any]
_Bool = bool | np.bool_

class _MultiHeadGradients(tuple[_Float, ...]):
    # a named tuple of the gradients given: dkv and each db_* are in it where kv= and that bias
    # were given, and None otherwise
    dX: _Float
    dW_q: _Float
    dW_k: _Float
    dW_v: _Float
    dW_o: _Float
    dkv: _Float | None
    db_q: _Float | None
    db_k: _Float | None
    db_v: _Float | None
    db_o: _Float | None
    _fields: tuple[str, ...]
    def _asdict(self) -> dict[str, _Float]: ...
# is_causal: True is "top_left"; False and None are no causality
_Causal = _Bool | Literal["top_left", "bottom_right"] | None
# window=(left, right): query i sees keys i - left .. i + right; None leaves a side unbounded
_Window = tuple[_Int | None, _Int | None] | Sequence[_Int | None] | NDArray[np.integer[Any]] | None

def compute_self_attention_scores(
    Q: ArrayLike,
    K: ArrayLike,
    *,
    scale: _Real | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    window: _Window = ...,
) -> _Float: ...
def softmax_attention_weights(attn_scores: ArrayLike, *, axis: _Int = ...) -> _Float: ...
def compute_attention_output(attn_weights: ArrayLike, V: ArrayLike) -> _Float: ...
@overload
def self_attention_layer(
    X: ArrayLike,
    W_q: ArrayLike,
    W_k: ArrayLike,
    W_v: ArrayLike,
    *,
    scale: _Real | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    return_weights: Literal[False] = ...,
    window: _Window = ...,
    softcap: _Real | None = ...,
    dropout_p: _Real = ...,
    seed: _Int | None = ...,
) -> _Float: ...
@overload
def self_attention_layer(
    X: ArrayLike,
    W_q: ArrayLike,
    W_k: ArrayLike,
    W_v: ArrayLike,
    *,
    scale: _Real | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    return_weights: Literal[True],
    window: _Window = ...,
    softcap: _Real | None = ...,
    dropout_p: _Real = ...,
    seed: _Int | None = ...,
) -> tuple[_Float, _Float]: ...
@overload
def self_attention_layer(
    X: ArrayLike,
    W_q: ArrayLike,
    W_k: ArrayLike,
    W_v: ArrayLike,
    *,
    scale: _Real | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    return_weights: _Bool = ...,
    window: _Window = ...,
    softcap: _Real | None = ...,
    dropout_p: _Real = ...,
    seed: _Int | None = ...,
) -> _Float | tuple[_Float, _Float]: ...
@overload
def scaled_dot_product_attention(
    Q: ArrayLike,
    K: ArrayLike,
    V: ArrayLike,
    *,
    scale: _Real | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    return_weights: Literal[False] = ...,
    window: _Window = ...,
    enable_gqa: _Bool = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    return_lse: Literal[False] = ...,
    softcap: _Real | None = ...,
    dropout_p: _Real = ...,
    seed: _Int | None = ...,
) -> _Float: ...
@overload
def scaled_dot_product_attention(
    Q: ArrayLike,
    K: ArrayLike,
    V: ArrayLike,
    *,
    scale: _Real | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    return_weights: Literal[True],
    window: _Window = ...,
    enable_gqa: _Bool = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    return_lse: Literal[False] = ...,
    softcap: _Real | None = ...,
    dropout_p: _Real = ...,
    seed: _Int | None = ...,
) -> tuple[_Float, _Float]: ...
@overload
def scaled_dot_product_attention(
    Q: ArrayLike,
    K: ArrayLike,
    V: ArrayLike,
    *,
    scale: _Real | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    return_weights: Literal[False] = ...,
    window: _Window = ...,
    enable_gqa: _Bool = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    return_lse: Literal[True],
    softcap: _Real | None = ...,
    dropout_p: _Real = ...,
    seed: _Int | None = ...,
) -> tuple[_Float, _Float]: ...
@overload
def scaled_dot_product_attention(
    Q: ArrayLike,
    K: ArrayLike,
    V: ArrayLike,
    *,
    scale: _Real | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    return_weights: Literal[True],
    window: _Window = ...,
    enable_gqa: _Bool = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    return_lse: Literal[True],
    softcap: _Real | None = ...,
    dropout_p: _Real = ...,
    seed: _Int | None = ...,
) -> tuple[_Float, _Float, _Float]: ...
@overload
def scaled_dot_product_attention(
    Q: ArrayLike,
    K: ArrayLike,
    V: ArrayLike,
    *,
    scale: _Real | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    return_weights: _Bool = ...,
    window: _Window = ...,
    enable_gqa: _Bool = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    return_lse: _Bool = ...,
    softcap: _Real | None = ...,
    dropout_p: _Real = ...,
    seed: _Int | None = ...,
) -> _Float | tuple[_Float, _Float] | tuple[_Float, _Float, _Float]: ...
@overload
def multi_head_attention(
    X: ArrayLike,
    W_q: ArrayLike,
    W_k: ArrayLike,
    W_v: ArrayLike,
    W_o: ArrayLike,
    *,
    num_heads: _Int,
    kv: ArrayLike | None = ...,
    b_q: ArrayLike | None = ...,
    b_k: ArrayLike | None = ...,
    b_v: ArrayLike | None = ...,
    b_o: ArrayLike | None = ...,
    scale: _Real | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    return_weights: Literal[False] = ...,
    window: _Window = ...,
    num_kv_heads: _Int | None = ...,
    softcap: _Real | None = ...,
    dropout_p: _Real = ...,
    seed: _Int | None = ...,
) -> _Float: ...
@overload
def multi_head_attention(
    X: ArrayLike,
    W_q: ArrayLike,
    W_k: ArrayLike,
    W_v: ArrayLike,
    W_o: ArrayLike,
    *,
    num_heads: _Int,
    kv: ArrayLike | None = ...,
    b_q: ArrayLike | None = ...,
    b_k: ArrayLike | None = ...,
    b_v: ArrayLike | None = ...,
    b_o: ArrayLike | None = ...,
    scale: _Real | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    return_weights: Literal[True],
    window: _Window = ...,
    num_kv_heads: _Int | None = ...,
    softcap: _Real | None = ...,
    dropout_p: _Real = ...,
    seed: _Int | None = ...,
) -> tuple[_Float, _Float]: ...
@overload
def multi_head_attention(
    X: ArrayLike,
    W_q: ArrayLike,
    W_k: ArrayLike,
    W_v: ArrayLike,
    W_o: ArrayLike,
    *,
    num_heads: _Int,
    kv: ArrayLike | None = ...,
    b_q: ArrayLike | None = ...,
    b_k: ArrayLike | None = ...,
    b_v: ArrayLike | None = ...,
    b_o: ArrayLike | None = ...,
    scale: _Real | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    return_weights: _Bool = ...,
    window: _Window = ...,
    num_kv_heads: _Int | None = ...,
    softcap: _Real | None = ...,
    dropout_p: _Real = ...,
    seed: _Int | None = ...,
) -> _Float | tuple[_Float, _Float]: ...
def scaled_dot_product_attention_backward(
    dO: ArrayLike,
    Q: ArrayLike,
    K: ArrayLike,
    V: ArrayLike,
    *,
    scale: _Real | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    window: _Window = ...,
    enable_gqa: _Bool = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    softcap: _Real | None = ...,
    dropout_p: _Real = ...,
    seed: _Int | None = ...,
) -> tuple[_Float, _Float, _Float]: ...
def self_attention_layer_backward(
    dY: ArrayLike,
    X: ArrayLike,
    W_q: ArrayLike,
    W_k: ArrayLike,
    W_v: ArrayLike,
    *,
    scale: _Real | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    window: _Window = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    softcap: _Real | None = ...,
    dropout_p: _Real = ...,
    seed: _Int | None = ...,
) -> tuple[_Float, _Float, _Float, _Float]: ...
def multi_head_attention_backward(
    dY: ArrayLike,
    X: ArrayLike,
    W_q: ArrayLike,
    W_k: ArrayLike,
    W_v: ArrayLike,
    W_o: ArrayLike,
    *,
    num_heads: _Int,
    kv: ArrayLike | None = ...,
    b_q: ArrayLike | None = ...,
    b_k: ArrayLike | None = ...,
    b_v: ArrayLike | None = ...,
    b_o: ArrayLike | None = ...,
    scale: _Real | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    window: _Window = ...,
    num_kv_heads: _Int | None = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    softcap: _Real | None = ...,
    dropout_p: _Real = ...,
    seed: _Int | None = ...,
) -> _MultiHeadGradients: ...
def multi_head_attention_vjp(
    X: ArrayLike,
    W_q: ArrayLike,
    W_k: ArrayLike,
    W_v: ArrayLike,
    W_o: ArrayLike,
    *,
    num_heads: _Int,
    kv: ArrayLike | None = ...,
    b_q: ArrayLike | None = ...,
    b_k: ArrayLike | None = ...,
    b_v: ArrayLike | None = ...,
    b_o: ArrayLike | None = ...,
    scale: _Real | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    window: _Window = ...,
    num_kv_heads: _Int | None = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    softcap: _Real | None = ...,
    dropout_p: _Real = ...,
    seed: _Int | None = ...,
) -> tuple[_Float, Callable[[ArrayLike], _MultiHeadGradients]]: ...
def causal_mask(
    n_q: _Int, n_k: _Int | None = ..., *, align: Literal["top_left", "bottom_right"] = ...
) -> NDArray[np.bool_]: ...
def window_mask(
    n_q: _Int,
    n_k: _Int,
    left: _Int | None,
    right: _Int | None,
    *,
    align: Literal["top_left", "bottom_right"] = ...,
) -> NDArray[np.bool_]: ...
def padding_mask(lengths: ArrayLike, n_k: _Int, *, head_axis: _Bool = ...) -> NDArray[np.bool_]: ...
def alibi_bias(num_heads: _Int, n_q: _Int, n_k: _Int | None = ...) -> NDArray[np.float64]: ...
def lengths_mask(
    query_lengths: ArrayLike | None,
    key_lengths: ArrayLike | None,
    n_q: _Int,
    n_k: _Int,
    *,
    head_axis: _Bool = ...,
) -> NDArray[np.bool_]: ...
def set_num_threads(n: _Int) -> None: ...
def get_num_threads() -> int: ...
def set_isa(name: Literal["avx512", "avx2", "neon", "generic", "reference", "numpy"]) -> None: ...
def get_isa() -> str: ...
def config() -> dict[str, Any]: ...
def explain(
    X: ArrayLike,
    W_q: ArrayLike,
    W_k: ArrayLike,
    W_v: ArrayLike,
    *,
    tokens: Sequence[str] | NDArray[np.str_] | None = ...,
    scale: _Real | None = ...,
    mask: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    window: _Window = ...,
) -> AttentionTrace: ...
def plot_attention(
    weights: ArrayLike,
    tokens: Sequence[str] | NDArray[np.str_] | None = ...,
    *,
    key_tokens: Sequence[str] | NDArray[np.str_] | None = ...,
    ax: Any = ...,
    annotate: _Bool | None = ...,
    head: _Int | None = ...,
    vmin: _Real | None = ...,
    vmax: _Real | None = ...,
    mask: ArrayLike | None = ...,
) -> Any: ...
