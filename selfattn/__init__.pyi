from typing import Any, Callable, Literal, overload

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

class _MultiHeadGradients(tuple[_Float, ...]):
    # a named tuple of the gradients given: dkv and each db_* exist where kv= and that bias were
    dX: _Float
    dW_q: _Float
    dW_k: _Float
    dW_v: _Float
    dW_o: _Float
    dkv: _Float
    db_q: _Float
    db_k: _Float
    db_v: _Float
    db_o: _Float
# is_causal: True is "top_left"; False and None are no causality
_Causal = bool | Literal["top_left", "bottom_right"] | None
# window=(left, right): query i sees keys i - left .. i + right; None leaves a side unbounded
_Window = tuple[int | None, int | None] | None

def compute_self_attention_scores(
    Q: ArrayLike,
    K: ArrayLike,
    *,
    scale: float | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    window: _Window = ...,
) -> _Float: ...
def softmax_attention_weights(attn_scores: ArrayLike, *, axis: int = ...) -> _Float: ...
def compute_attention_output(attn_weights: ArrayLike, V: ArrayLike) -> _Float: ...
@overload
def self_attention_layer(
    X: ArrayLike,
    W_q: ArrayLike,
    W_k: ArrayLike,
    W_v: ArrayLike,
    *,
    scale: float | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    return_weights: Literal[False] = ...,
    window: _Window = ...,
    softcap: float | None = ...,
    dropout_p: float = ...,
    seed: int | None = ...,
) -> _Float: ...
@overload
def self_attention_layer(
    X: ArrayLike,
    W_q: ArrayLike,
    W_k: ArrayLike,
    W_v: ArrayLike,
    *,
    scale: float | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    return_weights: Literal[True],
    window: _Window = ...,
    softcap: float | None = ...,
    dropout_p: float = ...,
    seed: int | None = ...,
) -> tuple[_Float, _Float]: ...
@overload
def self_attention_layer(
    X: ArrayLike,
    W_q: ArrayLike,
    W_k: ArrayLike,
    W_v: ArrayLike,
    *,
    scale: float | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    return_weights: bool = ...,
    window: _Window = ...,
    softcap: float | None = ...,
    dropout_p: float = ...,
    seed: int | None = ...,
) -> _Float | tuple[_Float, _Float]: ...
@overload
def scaled_dot_product_attention(
    Q: ArrayLike,
    K: ArrayLike,
    V: ArrayLike,
    *,
    scale: float | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    return_weights: Literal[False] = ...,
    window: _Window = ...,
    enable_gqa: bool = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    return_lse: Literal[False] = ...,
    softcap: float | None = ...,
    dropout_p: float = ...,
    seed: int | None = ...,
) -> _Float: ...
@overload
def scaled_dot_product_attention(
    Q: ArrayLike,
    K: ArrayLike,
    V: ArrayLike,
    *,
    scale: float | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    return_weights: Literal[True],
    window: _Window = ...,
    enable_gqa: bool = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    return_lse: Literal[False] = ...,
    softcap: float | None = ...,
    dropout_p: float = ...,
    seed: int | None = ...,
) -> tuple[_Float, _Float]: ...
@overload
def scaled_dot_product_attention(
    Q: ArrayLike,
    K: ArrayLike,
    V: ArrayLike,
    *,
    scale: float | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    return_weights: Literal[False] = ...,
    window: _Window = ...,
    enable_gqa: bool = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    return_lse: Literal[True],
    softcap: float | None = ...,
    dropout_p: float = ...,
    seed: int | None = ...,
) -> tuple[_Float, _Float]: ...
@overload
def scaled_dot_product_attention(
    Q: ArrayLike,
    K: ArrayLike,
    V: ArrayLike,
    *,
    scale: float | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    return_weights: Literal[True],
    window: _Window = ...,
    enable_gqa: bool = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    return_lse: Literal[True],
    softcap: float | None = ...,
    dropout_p: float = ...,
    seed: int | None = ...,
) -> tuple[_Float, _Float, _Float]: ...
@overload
def scaled_dot_product_attention(
    Q: ArrayLike,
    K: ArrayLike,
    V: ArrayLike,
    *,
    scale: float | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    return_weights: bool = ...,
    window: _Window = ...,
    enable_gqa: bool = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    return_lse: bool = ...,
    softcap: float | None = ...,
    dropout_p: float = ...,
    seed: int | None = ...,
) -> _Float | tuple[_Float, _Float] | tuple[_Float, _Float, _Float]: ...
@overload
def multi_head_attention(
    X: ArrayLike,
    W_q: ArrayLike,
    W_k: ArrayLike,
    W_v: ArrayLike,
    W_o: ArrayLike,
    *,
    num_heads: int,
    kv: ArrayLike | None = ...,
    b_q: ArrayLike | None = ...,
    b_k: ArrayLike | None = ...,
    b_v: ArrayLike | None = ...,
    b_o: ArrayLike | None = ...,
    scale: float | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    return_weights: Literal[False] = ...,
    window: _Window = ...,
    num_kv_heads: int | None = ...,
    softcap: float | None = ...,
    dropout_p: float = ...,
    seed: int | None = ...,
) -> _Float: ...
@overload
def multi_head_attention(
    X: ArrayLike,
    W_q: ArrayLike,
    W_k: ArrayLike,
    W_v: ArrayLike,
    W_o: ArrayLike,
    *,
    num_heads: int,
    kv: ArrayLike | None = ...,
    b_q: ArrayLike | None = ...,
    b_k: ArrayLike | None = ...,
    b_v: ArrayLike | None = ...,
    b_o: ArrayLike | None = ...,
    scale: float | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    return_weights: Literal[True],
    window: _Window = ...,
    num_kv_heads: int | None = ...,
    softcap: float | None = ...,
    dropout_p: float = ...,
    seed: int | None = ...,
) -> tuple[_Float, _Float]: ...
@overload
def multi_head_attention(
    X: ArrayLike,
    W_q: ArrayLike,
    W_k: ArrayLike,
    W_v: ArrayLike,
    W_o: ArrayLike,
    *,
    num_heads: int,
    kv: ArrayLike | None = ...,
    b_q: ArrayLike | None = ...,
    b_k: ArrayLike | None = ...,
    b_v: ArrayLike | None = ...,
    b_o: ArrayLike | None = ...,
    scale: float | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    return_weights: bool = ...,
    window: _Window = ...,
    num_kv_heads: int | None = ...,
    softcap: float | None = ...,
    dropout_p: float = ...,
    seed: int | None = ...,
) -> _Float | tuple[_Float, _Float]: ...
def scaled_dot_product_attention_backward(
    dO: ArrayLike,
    Q: ArrayLike,
    K: ArrayLike,
    V: ArrayLike,
    *,
    scale: float | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    window: _Window = ...,
    enable_gqa: bool = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    softcap: float | None = ...,
    dropout_p: float = ...,
    seed: int | None = ...,
) -> tuple[_Float, _Float, _Float]: ...
def self_attention_layer_backward(
    dY: ArrayLike,
    X: ArrayLike,
    W_q: ArrayLike,
    W_k: ArrayLike,
    W_v: ArrayLike,
    *,
    scale: float | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    window: _Window = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    softcap: float | None = ...,
    dropout_p: float = ...,
    seed: int | None = ...,
) -> tuple[_Float, _Float, _Float, _Float]: ...
def multi_head_attention_backward(
    dY: ArrayLike,
    X: ArrayLike,
    W_q: ArrayLike,
    W_k: ArrayLike,
    W_v: ArrayLike,
    W_o: ArrayLike,
    *,
    num_heads: int,
    kv: ArrayLike | None = ...,
    b_q: ArrayLike | None = ...,
    b_k: ArrayLike | None = ...,
    b_v: ArrayLike | None = ...,
    b_o: ArrayLike | None = ...,
    scale: float | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    window: _Window = ...,
    num_kv_heads: int | None = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    softcap: float | None = ...,
    dropout_p: float = ...,
    seed: int | None = ...,
) -> _MultiHeadGradients: ...
def multi_head_attention_vjp(
    X: ArrayLike,
    W_q: ArrayLike,
    W_k: ArrayLike,
    W_v: ArrayLike,
    W_o: ArrayLike,
    *,
    num_heads: int,
    kv: ArrayLike | None = ...,
    b_q: ArrayLike | None = ...,
    b_k: ArrayLike | None = ...,
    b_v: ArrayLike | None = ...,
    b_o: ArrayLike | None = ...,
    scale: float | None = ...,
    mask: ArrayLike | None = ...,
    bias: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    window: _Window = ...,
    num_kv_heads: int | None = ...,
    query_lengths: ArrayLike | None = ...,
    key_lengths: ArrayLike | None = ...,
    softcap: float | None = ...,
    dropout_p: float = ...,
    seed: int | None = ...,
) -> tuple[_Float, Callable[[ArrayLike], _MultiHeadGradients]]: ...
def causal_mask(
    n_q: int, n_k: int | None = ..., *, align: Literal["top_left", "bottom_right"] = ...
) -> NDArray[np.bool_]: ...
def window_mask(
    n_q: int,
    n_k: int,
    left: int | None,
    right: int | None,
    *,
    align: Literal["top_left", "bottom_right"] = ...,
) -> NDArray[np.bool_]: ...
def padding_mask(lengths: ArrayLike, n_k: int, *, head_axis: bool = ...) -> NDArray[np.bool_]: ...
def alibi_bias(num_heads: int, n_q: int, n_k: int | None = ...) -> NDArray[np.float64]: ...
def lengths_mask(
    query_lengths: ArrayLike | None,
    key_lengths: ArrayLike | None,
    n_q: int,
    n_k: int,
    *,
    head_axis: bool = ...,
) -> NDArray[np.bool_]: ...
def set_num_threads(n: int) -> None: ...
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
    tokens: list[str] | None = ...,
    scale: float | None = ...,
    mask: ArrayLike | None = ...,
    is_causal: _Causal = ...,
    window: _Window = ...,
) -> AttentionTrace: ...
def plot_attention(
    weights: ArrayLike,
    tokens: list[str] | None = ...,
    *,
    key_tokens: list[str] | None = ...,
    ax: Any = ...,
    annotate: bool | None = ...,
    head: int | None = ...,
    vmin: float | None = ...,
    vmax: float | None = ...,
    mask: ArrayLike | None = ...,
) -> Any: ...
