"""selfattn: transformer self-attention for people who learn and teach it.

The four functions of the self-attention notebook, exact and NumPy-native, with kernels in C (or,
where no C compiler was found at install time, a pure-NumPy backend with the same results):

>>> import numpy as np, selfattn
>>> X = np.random.default_rng(0).normal(size=(4, 8))          # 4 tokens, d_model = 8
>>> W_q, W_k, W_v = np.random.default_rng(1).normal(size=(3, 8, 8))
>>> out = selfattn.self_attention_layer(X, W_q, W_k, W_v)
>>> out.shape
(4, 8)

``compute_self_attention_scores``, ``softmax_attention_weights``, ``compute_attention_output``
and ``self_attention_layer`` follow the notebook; ``scaled_dot_product_attention`` is the same
from Q, K and V. Scores are scaled by ``1/sqrt(d_k)`` unless ``scale=`` says otherwise.
Run ``python -m selfattn`` for a worked example and this build's facts.

Where to go next (each has a docstring: ``selfattn.explain?`` in Jupyter, ``help(...)``):

- ``explain(X, W_q, W_k, W_v, tokens=...)``: every step of a layer, labelled with the tokens.
- ``plot_attention(weights, tokens)``: the weights as a heatmap (matplotlib).
- ``testing.check(your_function)``: your notebook solution against selfattn's, case by case,
  with the mistake it matches; ``python -m selfattn grade`` (``testing.grade.grade``) for a
  class.
- ``causal_mask``, ``window_mask``, ``padding_mask``, ``lengths_mask``: masks to print, plot or
  pass as ``mask=``.
- ``multi_head_attention`` (and ``_backward``, ``_vjp``), ``scaled_dot_product_attention_backward``,
  ``self_attention_layer_backward``: heads, projections and gradients.
- ``set_num_threads``, ``config()``: threads, the instruction set in use, the build.
"""
__version__ = "0.1.0"

# The C extension, or the pure-NumPy backend when it is not built or SELFATTN_BACKEND=numpy
# (selfattn/_backend.py); every module below takes its kernels from `selfattn._core`.
from ._backend import NumPyBackendWarning, load_core as _load_core

_core = _load_core(__path__[0], __version__)
del _load_core

from . import _api
from ._api import (
    compute_attention_output,
    compute_self_attention_scores,
    scaled_dot_product_attention,
    self_attention_layer,
    softmax_attention_weights,
)
from ._masks import alibi_bias, causal_mask, lengths_mask, padding_mask, window_mask
from ._multihead import (multi_head_attention, multi_head_attention_backward,
                         multi_head_attention_vjp)
from ._backward import scaled_dot_product_attention_backward, self_attention_layer_backward
from ._config import config, get_isa, get_num_threads, set_isa, set_num_threads
from ._config import _apply_environment
from . import testing
from ._explain import explain
from ._plot import plot_attention

_apply_environment()
del _apply_environment

__all__ = [
    *_api.__all__,     # the notebook's four functions and scaled_dot_product_attention
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
