# test_self_attention.py: grades a learner's self-attention notebook with selfattn.
# Put the learner's notebook next to this file as student_solution.ipynb, then run: pytest -v
# (for a whole class, each notebook in its own process: python -m selfattn grade FOLDER).
# A function that never returns hangs its test: with pytest-timeout installed, pytest -v
# --timeout 60 fails that test at the student's line and runs the others.
import pathlib

import numpy as np
import pytest

import selfattn
from selfattn.testing import (assert_attention_close, assert_implementation, cases,
                              load_notebook)

HERE = pathlib.Path(__file__).parent
SUBMISSION = HERE / "student_solution.ipynb"
if not SUBMISSION.exists():
    SUBMISSION = HERE / "student_solution.py"  # a script works too
# Runs every cell: magics and shell lines are skipped, a failing cell does not stop the rest,
# and a cell still running after 60 s (an infinite loop) is stopped (on Linux and macOS).
student = load_notebook(SUBMISSION, timeout=60)

# Raw dot products Q @ K.T (the notebook's text) or scaled by 1/sqrt(d_k): "either" accepts
# both, each function in one convention throughout its cases (`python -m selfattn grade` also
# requires the same one in every function); "raw" or "scaled" pins one.
SCALE = "either"

FUNCTIONS = [
    "compute_self_attention_scores",
    "softmax_attention_weights",
    "compute_attention_output",
    "self_attention_layer",
]


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function(name):
    # Every case at once; on failure the message is the full report: each case, its error, a hint.
    assert name in student.functions, "\n".join(student.problems())  # what went wrong, in words
    assert_implementation(student.functions[name], name, scale=SCALE)


@pytest.mark.parametrize("case", cases("softmax_attention_weights", batched=False), ids=str)
def test_softmax_case(case):
    # One test per case, for partial credit.
    got = student.softmax_attention_weights(np.array(case.args[0]))
    assert_attention_close(got, case.expected, err_msg=f"softmax_attention_weights, {case.label}")


def test_layer_on_a_sentence():
    # A test of your own, with selfattn as the reference (raw or scaled, whichever is closer).
    rng = np.random.default_rng(2024)
    X = rng.normal(size=(7, 16))                    # 7 tokens, d_model = 16
    W_q, W_k, W_v = rng.normal(size=(3, 16, 8)) / 4
    got = student.self_attention_layer(X, W_q, W_k, W_v)
    raw, scaled = (selfattn.self_attention_layer(X, W_q, W_k, W_v, scale=s) for s in (1.0, None))
    # (assert_attention_close says what is wrong with a result of another shape or type)
    try:
        values = np.asarray(got, dtype=float)     # a list or a tensor is compared as its values
    except (TypeError, ValueError):
        values = None
    is_raw = values is not None and values.shape == raw.shape and np.allclose(values, raw)
    assert_attention_close(got, raw if is_raw else scaled)
