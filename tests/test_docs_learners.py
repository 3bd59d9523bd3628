"""The README's grader example is the file tests/test_grader_example.py, and it grades: it passes a
correct solution (that file runs in this suite) and fails a buggy one with the diagnosis."""
import json
import pathlib
import re
import shlex
import subprocess
import sys

import submissions

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
%matplotlib inline
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
    # A real notebook: a magic and a failing cell of the student's own do not stop the grading.
    (tmp_path / "test_self_attention.py").write_text(GRADER.read_text())
    notebook = submissions.notebook_json([BUGGY_STUDENT, "assert False, 'my own unfinished test'\n"])
    (tmp_path / "student_solution.ipynb").write_text(json.dumps(notebook))
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


# The README's grading section, run as written on a class of five: the command, the summary and
# the gradebook it shows (all but the time it took).
CLASS = {"ada": "correct_raw_with_magics", "ben": "softmax_axis0", "chen": "scores_dk_wrong_axis",
         "dara": "layer_returns_weights", "eli": "os_abort"}


def _grading_section():
    text = (ROOT / "README.md").read_text()
    return text.split("## For teachers: grading a class", 1)[1].split("\n## ", 1)[0]


def test_readme_grading_section_runs_as_shown(tmp_path):
    section = _grading_section()
    command, summary = re.search(r"```bash\n(python -m selfattn grade [^\n]*)\n```\n.*?"
                                 r"```text\n(selfattn grade: .*?)```", section, flags=re.S).groups()
    gradebook = re.search(r"```text\n(student,.*?)```", section, flags=re.S).group(1)
    folder = tmp_path / "submissions"
    for student, name in CLASS.items():
        submissions.write(folder / student, names=[name])
    run = subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    timing = re.compile(r" in \d+\.\d s")
    # (in an ASan build the shadow memory is over half of any limit, which the summary then says)
    unlimited = re.compile(r"  \(the memory limit was not applied to .*\)\n")
    assert unlimited.sub("", timing.sub("", run.stdout)).startswith(timing.sub("", summary))
    assert (tmp_path / "grades" / "gradebook.csv").read_text() == gradebook
    assert sorted(p.name for p in (tmp_path / "grades" / "reports").iterdir()) == \
        [f"{s}.html" for s in CLASS]


def _sentence_test(tmp_path, solution):
    """The README grader's test of the layer on a sentence, run on `solution` (a .py)."""
    (tmp_path / "test_self_attention.py").write_text(GRADER.read_text())
    assert solution != BUGGY_STUDENT
    (tmp_path / "student_solution.py").write_text(solution)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(tmp_path), "-k", "sentence"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)


_LAYER_RETURN = ("    return compute_attention_output(softmax_attention_weights("
                 "compute_self_attention_scores(Q, K)), V)")


def test_grader_tells_a_layer_that_returns_a_tuple_what_is_wrong(tmp_path):
    # the README grader's own test of the layer: "returns several values", not NumPy's
    # "setting an array element with a sequence" from picking raw or scaled scores
    run = _sentence_test(tmp_path, BUGGY_STUDENT.replace(_LAYER_RETURN, (
        "    weights = softmax_attention_weights(compute_self_attention_scores(Q, K))\n"
        "    return compute_attention_output(weights, V), weights")))
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "your function returns several values; return one array" in out
    assert "setting an array element" not in out


def test_grader_compares_a_raw_layer_returned_as_a_list_with_the_raw_reference(tmp_path):
    # is_raw asked isinstance(got, np.ndarray): raw scores returned as a list (or a tensor) were
    # compared with the scaled reference, "56 of 56 elements differ", and never said why
    run = _sentence_test(tmp_path, BUGGY_STUDENT.replace(_LAYER_RETURN, _LAYER_RETURN + ".tolist()"))
    assert run.returncode == 0, run.stdout + run.stderr


def test_grader_says_in_full_why_a_function_is_missing(tmp_path):
    """A teacher's review: `assert name in student.functions, student.problems()` showed the list's
    repr, cut short by pytest: with a few failing cells before it, the cell that explains why
    compute_attention_output is missing, and 'missing: ...' itself, were cut off."""
    (tmp_path / "test_self_attention.py").write_text(GRADER.read_text())
    cells = [f"raise ValueError('my own scratch cell number {i} failed here, as it does')\n"
             for i in range(6)]
    cells.append(BUGGY_STUDENT.split("def compute_attention_output")[0])
    cells.append("from einops import einsum   # not installed\n\n"
                 "def compute_attention_output(attn_weights, V):\n"
                 "    return einsum(attn_weights, V, 'q k, k v -> q v')\n")
    (tmp_path / "student_solution.ipynb").write_text(json.dumps(submissions.notebook_json(cells)))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "--rootdir", str(tmp_path), str(tmp_path), "-k", "test_function"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "No module named 'einops'" in out
    assert "missing: compute_attention_output, self_attention_layer" in out
