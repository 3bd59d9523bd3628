"""Check your own attention functions against selfattn, and grade them in pytest.

``selfattn.testing`` is to attention what ``numpy.testing`` is to arrays, with the learner in mind:

- :func:`check` runs a battery of cases on your function and on selfattn's, and returns a
  :class:`CheckReport` that says, case by case, what passed, what failed, by how much, and which
  classic mistake your result matches (softmax over the wrong axis, no max subtraction, a missing
  ``1/sqrt(d_k)``, ``K`` not transposed, a sum without ``keepdims``, ...).
- :func:`assert_implementation` is the same as one line for a pytest grader.
- :func:`assert_attention_close` compares two arrays with tolerances chosen by dtype, and says where
  and by how much they differ.
- :func:`cases` gives the named cases (inputs and expected output) to parametrize your own tests.
- :func:`load_notebook` (and :func:`load_module` for a ``.py``) runs a submitted notebook without
  Jupyter and returns the functions it defines; :func:`check_functions` checks them all with one
  scale convention; ``python -m selfattn grade`` grades a class (see :mod:`selfattn.testing.grade`).

>>> import numpy as np, selfattn
>>> def softmax_attention_weights(attn_scores):
...     e = np.exp(attn_scores - attn_scores.max(axis=-1, keepdims=True))
...     return e / e.sum(axis=-1, keepdims=True)
>>> bool(selfattn.testing.check(softmax_attention_weights))
True

How the diagnosis works: when your result differs from selfattn's, the same inputs are run through
known wrong variants of the computation (each one classic mistake) and the report names the variant
your result matches. The sizes differ on purpose (``n_q != n_k != d_k != d_v``) so that a mistake
with axes cannot hide behind a square matrix.
"""
from .compare import TOLERANCES, assert_attention_close
from .cases import NAMES, Case, cases
from .run import CaseResult
from .report import CheckReport, assert_implementation, check
from .load import CellError, Submission, load_module, load_notebook
from .grade import check_functions

__all__ = [
    "check",
    "assert_implementation",
    "assert_attention_close",
    "cases",
    "Case",
    "CaseResult",
    "CheckReport",
    "NAMES",
    "TOLERANCES",
    "load_notebook",
    "load_module",
    "Submission",
    "CellError",
    "check_functions",
]
