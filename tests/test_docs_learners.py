"""The README's grader example is the file tests/test_grader_example.py, and it grades: it passes a
correct solution (that file runs in this suite) and fails a buggy one with the diagnosis."""
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
GRADER = ROOT / "tests" / "test_grader_example.py"
MARKER = "# test_self_attention.py: grades a learner's self-attention notebook with selfattn."


def _python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_documented_grader_is_the_tested_file():
    docs = [p for p in (ROOT / "README.md", ROOT / "docs" / "learners.md") if p.exists()]
    blocks = [b for p in docs for b in _python_blocks(p) if b.startswith(MARKER)]
    assert blocks, "the grader example is missing from README.md and docs/learners.md"
    for block in blocks:
        assert block == GRADER.read_text()


BUGGY_STUDENT = '''
import numpy as np

def compute_self_attention_scores(Q, K):
    return Q @ K.T

def softmax_attention_weights(attn_scores):
    e = np.exp(attn_scores)                      # no max subtraction
    return e / e.sum(axis=1, keepdims=True)

def compute_attention_output(attn_weights, V):
    return attn_weights @ V

def self_attention_layer(X, W_q, W_k, W_v):
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    return compute_attention_output(softmax_attention_weights(compute_self_attention_scores(Q, K)), V)
'''


def test_grader_fails_a_buggy_solution_with_the_diagnosis(tmp_path):
    (tmp_path / "test_self_attention.py").write_text(GRADER.read_text())
    (tmp_path / "student_solution.py").write_text(BUGGY_STUDENT)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "--rootdir", str(tmp_path), str(tmp_path)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "No max subtraction" in out
    assert re.search(r"FAILED .*test_function\[softmax_attention_weights\]", out)
    assert re.search(r"FAILED .*test_softmax_case\[large-scores-float64\]", out)
    assert re.search(r"FAILED .*test_function\[self_attention_layer\]", out)
    assert re.search(r"\d+ failed, \d+ passed", out)


def test_documented_report_is_what_check_prints():
    docs = [p for p in (ROOT / "README.md", ROOT / "docs" / "learners.md") if p.exists()]
    found = 0
    for path in docs:
        text = path.read_text()
        for code, shown in re.findall(r"```python\n((?:(?!```).)*)```\n\n(?:(?!```).)*```text\n(.*?)```",
                                     text, flags=re.S):
            if "report = selfattn.testing.check(softmax_attention_weights)" not in code:
                continue
            namespace = {}
            exec(code, namespace)
            assert str(namespace["report"]).startswith(shown.rstrip("\n")), path
            found += 1
    assert found
