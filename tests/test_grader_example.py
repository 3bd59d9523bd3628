# test_self_attention.py: grades a learner's self-attention notebook with selfattn.
# Put the learner's functions in student_solution.py next to this file (for a notebook:
# jupyter nbconvert --to script notebook.ipynb --output student_solution), then run: pytest -v
import numpy as np
import pytest

import selfattn
from selfattn.testing import assert_attention_close, assert_implementation, cases

import student_solution as student

# The notebook's scores are raw dot products Q @ K.T. For scaled dot-product attention
# (dot products divided by sqrt(d_k)) set SCALE = None.
SCALE = 1.0

FUNCTIONS = [
    "compute_self_attention_scores",
    "softmax_attention_weights",
    "compute_attention_output",
    "self_attention_layer",
]


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function(name):
    # Every case at once; on failure the message is the full report: each case, its error, a hint.
    assert_implementation(getattr(student, name), name, scale=SCALE)


@pytest.mark.parametrize("case", cases("softmax_attention_weights", batched=False), ids=str)
def test_softmax_case(case):
    # One test per case, for partial credit.
    got = student.softmax_attention_weights(np.array(case.args[0]))
    assert_attention_close(got, case.expected, err_msg=f"softmax_attention_weights, {case.label}")


def test_layer_on_a_sentence():
    # A test of your own, with selfattn as the reference.
    rng = np.random.default_rng(2024)
    X = rng.normal(size=(7, 16))                    # 7 tokens, d_model = 16
    W_q, W_k, W_v = rng.normal(size=(3, 16, 8)) / 4
    want = selfattn.self_attention_layer(X, W_q, W_k, W_v, scale=SCALE)
    assert_attention_close(student.self_attention_layer(X, W_q, W_k, W_v), want)
