"""python -m selfattn grade on a class of generated submissions: every verdict, every named
mistake and no other, and a class that survives an infinite loop, os.abort() and a 50 GB
allocation. One grading run serves every test (it takes a few seconds with --jobs 2)."""
import contextlib
import csv
import json
import os
import subprocess
import sys

import pytest

import submissions
from selfattn.testing.grade import _points, _submissions, grade
from selfattn.testing.load import NOTEBOOK_FUNCTIONS


@pytest.fixture(scope="module")
def graded(tmp_path_factory, time_scale):
    root = tmp_path_factory.mktemp("class")
    # 12 s a student: the endless cell is stopped at 9 s, and Python's start, the imports, the
    # cells before it and the checks of four functions must fit in the 3 s left (4.1 to 4.6 s of
    # 5 s went to them on a 2-core machine under load, which left too little); an instrumented
    # build (ASan, TSan, valgrind) runs the students' selfattn calls many times slower, and a
    # correct submission timed out there on a busy machine
    timeout = str(round(12 * time_scale))
    expected = submissions.write(root / "submissions")
    # in Python's dev mode, as CI runs it: its faulthandler must not reach the students' lines
    env = dict(os.environ, PYTHONDEVMODE="1", PYTHONFAULTHANDLER="1")
    run = subprocess.run([sys.executable, "-m", "selfattn", "grade", str(root / "submissions"),
                          "--out", str(root / "grades"), "--timeout", timeout, "--jobs", "2"],
                         capture_output=True, text=True, timeout=300, env=env)
    return root / "grades", expected, run


def test_there_are_at_least_25_distinct_submissions():
    assert len({name for name, *_ in submissions.SUBMISSIONS}) >= 25


def test_grading_ran_and_exits_0_quietly_when_not_a_tty(graded):
    out, expected, run = graded
    assert run.returncode == 0, run.stderr
    assert "\r" not in run.stdout  # no progress bar when stdout is a pipe
    assert run.stdout.startswith(f"selfattn grade: {len(expected)} submissions in ")
    assert (out / "summary.txt").read_text() in run.stdout


@pytest.mark.parametrize("name", [s[0] for s in submissions.SUBMISSIONS])
def test_each_submission_gets_its_verdicts_and_only_its_mistakes(graded, name):
    out, expected, _ = graded
    results = {r["student"]: r for r in json.loads((out / "results.json").read_text())}
    result, want = results[name], expected[name]
    assert result["status"] == want.get("status", "graded")
    for fn in NOTEBOOK_FUNCTIONS:
        verdict, mistakes = want.get(fn, ("pass", []))
        got = result["functions"][fn]
        assert (got["verdict"], got["mistakes"]) == (verdict, mistakes), (fn, got["text"])
    problems = " | ".join(result["problems"])
    for fragment in want.get("problems", []):
        assert fragment in problems
    if "problems" not in want:
        assert result["problems"] == []


def _refuse_non_json(constant):
    raise ValueError(f"{constant} is not JSON")


def test_results_json_is_strict_json_with_inf_as_a_string(graded):
    # JavaScript's JSON.parse (a course's web page) refuses Python's Infinity and NaN
    out, _, _ = graded
    text = (out / "results.json").read_text()
    results = {r["student"]: r for r in json.loads(text, parse_constant=_refuse_non_json)}
    cases = results["softmax_no_max"]["functions"]["softmax_attention_weights"]["cases"]
    errors = [c["max_error"] for c in cases]
    assert "inf" in errors and all(e is None or e == "inf" or e >= 0 for e in errors)


def test_gradebook_has_a_row_per_student_and_points(graded):
    out, expected, _ = graded
    rows = list(csv.DictReader((out / "gradebook.csv").read_text().splitlines()))
    assert [r["student"] for r in rows] == sorted(expected)
    by_name = {r["student"]: r for r in rows}
    full = by_name["correct_raw_with_magics"]
    assert full["points"] == full["max_points"] and int(full["points"]) > 20
    assert full["convention"] == "raw" and by_name["correct_einsum_scaled"]["convention"] == "scaled"
    assert int(by_name["softmax_no_max"]["points"]) < int(full["points"])
    assert by_name["loops_forever_on_one_token"]["self_attention_layer"] == "timed out"
    assert by_name["os_abort"]["status"] == "crashed"
    assert by_name["os_abort"]["problems"] == (
        "the process ended (killed by SIGABRT) before grading finished, while running the "
        "notebook's cells")


def test_summary_counts_named_mistakes_and_functions(graded):
    out, expected, _ = graded
    summary = (out / "summary.txt").read_text()
    n = len(expected)
    assert f"softmax over axis 0: 1 of {n}" in summary
    assert f"attn_weights.T @ V: 2 of {n}" in summary
    assert "Functions, most failed first:\n  self_attention_layer:" in summary
    # (the infinite loop in a test cell times out only where no timer stops a cell: Windows)
    assert f"timed out: {3 if sys.platform == 'win32' else 2}, crashed: 1" in summary


def test_each_student_has_a_self_contained_html_report(graded):
    out, expected, _ = graded
    pages = sorted(p.stem for p in (out / "reports").glob("*.html"))
    assert pages == sorted(expected)
    page = (out / "reports" / "softmax_axis0.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page
    assert "Softmax over the wrong axis" in page and "FAILED" in page
    magics = (out / "reports" / "correct_raw_with_magics.html").read_text()
    assert "hello from the notebook" in magics and "%matplotlib inline" in magics


def test_grade_usage_errors_exit_2(tmp_path):
    run = subprocess.run([sys.executable, "-m", "selfattn", "grade", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "no .ipynb or .py files" in run.stderr


def test_main_puts_back_the_callers_sigterm_handler(tmp_path, capsys):
    import signal
    from selfattn.testing.grade import main
    before = signal.getsignal(signal.SIGTERM)
    assert main([str(tmp_path / "nowhere")]) == 2
    assert signal.getsignal(signal.SIGTERM) is before
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("option, value, message", [
    ("--timeout", "0", "the timeout must be a positive number of seconds, got 0.0"),
    ("--timeout", "-5", "the timeout must be a positive number of seconds, got -5.0"),
    ("--timeout", "nan", "the timeout must be a positive number of seconds, got nan"),
    ("--jobs", "0", "jobs must be a whole number, 1 or more, got 0"),
    ("--memory", "-1", "the memory limit (MiB) must be a whole number, 1 or more, got -1"),
])
def test_limits_that_cannot_mean_what_they_say_are_refused(tmp_path, option, value, message):
    # a timeout of 0 s marked every student "timed out ... after -5 s" with 0 points
    folder = _one_student(tmp_path, [submissions.IMPORTS, submissions.SOFTMAX])
    run = subprocess.run([sys.executable, "-m", "selfattn", "grade", str(folder), "--out",
                          str(tmp_path / "out"), option, value],
                         capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stderr) == (2, f"python -m selfattn grade: {message}\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="no timer stops a cell on Windows")
def test_a_test_cell_that_never_ends_is_stopped_and_the_functions_graded(tmp_path, time_scale):
    """Four right functions, then a cell `while True: time.sleep(...)`: the whole submission was
    "timed out" (0 points, "still running after 8 s (an infinite loop?)", no cell named). The cell
    is stopped after three quarters of the time limit and recorded as that cell's error."""
    cells = submissions._cells(submissions.CORRECT) + [
        "import time\nwhile True:\n    time.sleep(0.05)\n"]
    folder = tmp_path / "class"
    folder.mkdir()
    (folder / "ann.ipynb").write_text(json.dumps(submissions.notebook_json(cells)))
    timeout = 16 * time_scale    # the cell is stopped at 12 s; 4 s left for the checks
    result, = grade([folder], tmp_path / "out", timeout=timeout, echo=None)
    assert result["status"] == "graded"
    assert all(f["verdict"] == "pass" for f in result["functions"].values()), result["functions"]
    assert f"cell {len(cells)}: TimeoutError: the cell ran past {0.75 * timeout:g} s, three " \
           f"quarters of the grade's --timeout {timeout:g}, and was stopped (if it is meant to " \
           "run that long, grade with a larger --timeout) (line: time.sleep(0.05))" \
        in result["problems"][0], result["problems"]


def test_cells_that_together_run_past_the_timeout_say_how_to_give_them_time(tmp_path,
                                                                           time_scale):
    # each cell stops short of the cells' limit (three quarters of --timeout), the three together
    # run past --timeout: the row said only "(an infinite loop?)"
    timeout = 4 * time_scale
    cells = [submissions.IMPORTS + "import time\n"] + [f"time.sleep({0.45 * timeout})\n"] * 3
    folder = _one_student(tmp_path, cells)
    result, = grade([folder], tmp_path / "out", timeout=timeout, echo=None)
    assert result["status"] == "timed out"
    assert result["problems"] == [
        f"still running after {timeout:g} s (an infinite loop?); stopped, while running the "
        f"notebook's cells (if they are meant to run that long, grade with a larger --timeout)"]


def test_an_output_folder_that_cannot_be_made_is_refused_before_grading(tmp_path, capsys):
    # a file where --out's folder goes raised NotADirectoryError with a traceback
    from selfattn.testing.grade import main
    folder = _one_student(tmp_path, [submissions.IMPORTS, submissions.SOFTMAX])
    (tmp_path / "grades.txt").write_text("not a folder")
    out = str(tmp_path / "grades.txt")
    assert main([str(folder), "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m selfattn grade: cannot make the output folder "
                          f"{str(tmp_path / 'grades.txt' / 'reports')!r} ("), err
    assert err.endswith("); choose another with --out\n"), err


def _one_student(tmp_path, cells):
    folder = tmp_path / "class"
    folder.mkdir()
    (folder / "student.ipynb").write_text(json.dumps(submissions.notebook_json(cells)))
    return folder


@pytest.mark.skipif(not sys.platform.startswith("linux") or "asan" in os.environ.get("LD_PRELOAD", ""),
                    reason="RLIMIT_AS as set on Linux (not under a sanitizer's shadow memory)")
def test_the_memory_limit_refuses_an_allocation_that_would_otherwise_succeed(tmp_path):
    # np.empty maps 3 GiB without touching it: only the limit can refuse it.
    folder = _one_student(tmp_path, [submissions.IMPORTS,
                                     "big = np.empty(3 * 2**30, dtype=np.uint8)\n"])
    (result,) = grade([folder], tmp_path / "out", memory_mb=1024, timeout=30, echo=None)
    assert result["problems"][0].startswith("cell 2: MemoryError")
    (result,) = grade([folder], tmp_path / "out", memory_mb=8192, timeout=30, echo=None)
    assert not any("MemoryError" in p for p in result["problems"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the size")
def test_a_memory_limit_too_small_to_apply_is_said_in_the_summary(tmp_path):
    # 16 MiB is less than twice what Python with NumPy takes before any student code: the limit
    # is not set (it would fail every allocation), and the teacher is told
    folder = _one_student(tmp_path, [submissions.IMPORTS, submissions.SOFTMAX])
    (result,) = grade([folder], tmp_path / "out", memory_mb=16, timeout=60, echo=None)
    assert result["memory_limited"] is False and result["status"] == "graded"
    assert ("(the memory limit was not applied to 1 of 1: their process had more than half of "
            "--memory 16 MiB before the student's code ran; give a larger --memory)"
            in (tmp_path / "out" / "summary.txt").read_text())
    # a student whose process ends in the cells leaves no word on it: not counted as limited
    (folder / "abort.py").write_text("import os\nos.abort()\n")
    grade([folder], tmp_path / "out", memory_mb=16, timeout=60, echo=None)
    assert ("(the memory limit was not applied to 1 of 2, nor perhaps to 1 whose process "
            "stopped before it said: their process" in (tmp_path / "out" / "summary.txt").read_text())
    (folder / "abort.py").unlink()
    if "asan" not in os.environ.get("LD_PRELOAD", ""):   # (whose shadow memory is larger)
        grade([folder], tmp_path / "out", timeout=60, echo=None)
        assert "not applied" not in (tmp_path / "out" / "summary.txt").read_text()


def test_progress_shows_as_a_counter_on_a_terminal(tmp_path, capsys):
    folder = _one_student(tmp_path, [submissions.IMPORTS, submissions.SOFTMAX])
    grade([folder], tmp_path / "out", progress=True, echo=None)
    assert capsys.readouterr().out.startswith("\rgrading [##############################] 1/1")
    grade([folder], tmp_path / "out", progress=False, echo=None)
    assert capsys.readouterr().out == ""


def test_folders_per_student_say_what_was_graded_and_what_was_not(tmp_path):
    """A class as it is handed in: a notebook one folder deeper, a folder with a draft beside the
    submission, a folder with only a zip, and two names that make the same file name. Every
    student gets a row, and a report page of their own."""
    correct = json.dumps(submissions.notebook_json(submissions._cells(submissions.CORRECT)))
    root = tmp_path / "class"
    (root / "alice" / "hw").mkdir(parents=True)
    (root / "alice" / "hw" / "solution.ipynb").write_text(correct)
    (root / "bob").mkdir()
    (root / "bob" / "a_draft.ipynb").write_text(correct)
    (root / "bob" / "submission.ipynb").write_text(correct)
    os.utime(root / "bob" / "a_draft.ipynb", (1e9, 1e9))      # the older of two that tie
    # a scratch notebook Jupyter named, newer than the homework (it sorted first, and was graded)
    (root / "erin").mkdir()
    (root / "erin" / "Untitled.ipynb").write_text(json.dumps(submissions.notebook_json(["1 + 1"])))
    (root / "erin" / "homework.ipynb").write_text(correct)
    os.utime(root / "erin" / "homework.ipynb", (1e9, 1e9))
    # git's merge-conflict markers in the notebook: no crash of the student's code, and no
    # scratch notebook beside it graded in its place
    conflicted = correct.replace('"cells": [', '"cells": [\n<<<<<<< HEAD\n=======\n>>>>>>> theirs\n', 1)
    assert conflicted != correct
    (root / "fay").mkdir()
    (root / "fay" / "hw.ipynb").write_text(conflicted)
    (root / "fay" / "Untitled.ipynb").write_text(json.dumps(submissions.notebook_json(["1"])))
    # the template's unfilled stubs, newer than the solution; a notebook that imports its own
    # attention.py (which writes the functions); JSON that is no notebook (it crashed the grade)
    # (`pass`, and the template's placeholder `result = None  # YOUR CODE HERE`, which counted
    # as written)
    stubs = [f"def {name}(*args):\n" + ("    pass\n" if i % 2 else
                                         "    result = None  # YOUR CODE HERE\n    return result\n")
             for i, name in enumerate(submissions.FUNCTIONS)]
    (root / "ivy").mkdir()
    (root / "ivy" / "hw_solution.ipynb").write_text(correct)
    os.utime(root / "ivy" / "hw_solution.ipynb", (1e9, 1e9))
    (root / "ivy" / "hw_template.ipynb").write_text(json.dumps(submissions.notebook_json(stubs)))
    (root / "jack").mkdir()
    (root / "jack" / "attention.py").write_text(
        submissions.IMPORTS + "".join(submissions.CORRECT.values()))
    (root / "jack" / "hw.ipynb").write_text(json.dumps(submissions.notebook_json(
        ["from attention import *\n"])))
    # the same with %run: the notebook's own files are no other submission to name
    (root / "olga").mkdir()
    (root / "olga" / "helper.py").write_text(
        submissions.IMPORTS + "".join(submissions.CORRECT.values()))
    (root / "olga" / "hw.ipynb").write_text(json.dumps(submissions.notebook_json(
        ["%run helper.py\n"])))
    (root / "kay").mkdir()
    (root / "kay" / "hw.ipynb").write_text('{"cells": ["import numpy"]}')
    # the README's ways of writing the functions in a file: %%writefile, beside a newer scratch
    # notebook; a conflicted template (stubs) beside a solution of three; and a solution script
    # beside the untouched template, which the report names
    writefile = ["%%writefile attention.py\n" + submissions.IMPORTS
                 + "".join(submissions.CORRECT.values()), "from attention import *\n"]
    (root / "lea").mkdir()
    (root / "lea" / "hw.ipynb").write_text(json.dumps(submissions.notebook_json(writefile)))
    os.utime(root / "lea" / "hw.ipynb", (1e9, 1e9))
    (root / "lea" / "Untitled.ipynb").write_text(json.dumps(submissions.notebook_json(["1"])))
    (root / "max").mkdir()
    template = json.dumps(submissions.notebook_json(stubs))
    (root / "max" / "hw_conflicted.ipynb").write_text(
        template.replace('"cells": [', '"cells": [\n<<<<<<< HEAD\n=======\n>>>>>>> b\n', 1))
    three = dict(submissions.CORRECT)
    del three["self_attention_layer"]
    (root / "max" / "hw_solution.ipynb").write_text(json.dumps(submissions.notebook_json(
        [submissions.IMPORTS, *three.values()])))
    os.utime(root / "max" / "hw_solution.ipynb", (1e9, 1e9))
    (root / "ned").mkdir()
    (root / "ned" / "hw.ipynb").write_text(template)
    (root / "ned" / "my_solution.py").write_text(
        submissions.IMPORTS + "".join(submissions.CORRECT.values()))
    (root / "dan").mkdir()
    (root / "dan" / "submission.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    (root / "a b.py").write_text(submissions.IMPORTS + submissions.SOFTMAX)
    (root / "a_b.py").write_text(submissions.IMPORTS + submissions.OUTPUT)
    results = {r["student"]: r for r in grade([root], tmp_path / "out", timeout=60, echo=None)}
    assert sorted(results) == ["a b", "a_b", "alice", "bob", "dan", "erin", "fay", "ivy", "jack",
                               "kay", "lea", "max", "ned", "olga"]
    assert results["lea"]["path"].endswith("hw.ipynb") and _points(results["lea"]) == (23, 23)
    assert results["max"]["path"].endswith("hw_solution.ipynb")
    assert results["max"]["problems"][0].startswith(
        "graded hw_solution.ipynb (it writes 3 of the notebook's functions, hw_conflicted.ipynb "
        "cannot be read)")
    assert results["ned"]["problems"][0] == (
        "graded hw.ipynb (the folder's only notebook); the folder also holds my_solution.py "
        "(grade one of them by giving its path)")
    assert results["alice"]["status"] == "graded" and results["alice"]["problems"] == []
    assert results["alice"]["path"].endswith(os.path.join("alice", "hw", "solution.ipynb"))
    assert _points(results["alice"]) == (23, 23)
    assert results["bob"]["problems"][0] == (
        "graded submission.ipynb (the last modified of the notebooks that write as many of the "
        "notebook's functions (4)); the folder also holds a_draft.ipynb (grade one of them by "
        "giving its path)")
    assert results["ivy"]["path"].endswith("hw_solution.ipynb") and _points(results["ivy"]) == \
        (23, 23)
    assert results["ivy"]["problems"][0].startswith(
        "graded hw_solution.ipynb (it writes 4 of the notebook's functions, hw_template.ipynb 0)")
    for student in ("jack", "olga"):
        assert results[student]["path"].endswith("hw.ipynb"), student
        assert _points(results[student]) == (23, 23), student
        assert results[student]["problems"] == [], student   # said "also holds attention.py"
    assert results["kay"]["status"] == "not a notebook"
    assert results["kay"]["problems"] == [
        f"{root / 'kay' / 'hw.ipynb'} is not a notebook (JSON, but an object without a list of "
        f"cells)"]
    assert results["erin"]["path"].endswith("homework.ipynb") and _points(results["erin"]) == \
        (23, 23)
    assert results["erin"]["problems"][0] == (
        "graded homework.ipynb (it writes 4 of the notebook's functions, Untitled.ipynb 0); the "
        "folder also holds Untitled.ipynb (grade one of them by giving its path)")
    fay = results["fay"]
    assert fay["status"] == "not a notebook" and _points(fay) == (0, 23)
    assert {f["verdict"] for f in fay["functions"].values()} == {"not a notebook"}
    line = conflicted[:conflicted.index("<<<<<<<")].count("\n") + 1
    assert fay["problems"][0] == (
        "graded hw.ipynb (its text defines the notebook's functions, though it cannot be read); "
        "the folder also holds Untitled.ipynb (grade one of them by giving its path)")
    assert fay["problems"][1:] == [
        f"{root / 'fay' / 'hw.ipynb'} is not a notebook: it holds unresolved merge-conflict "
        f"markers ('<<<<<<< HEAD' on line {line}), which git leaves where two versions of the "
        f"file were merged; keep one version of each conflict, delete the marker lines, and "
        f"check that the notebook opens in Jupyter"]
    dan = results["dan"]
    assert dan["status"] == "no submission" and _points(dan) == (0, 23)
    assert dan["problems"] == ["no .ipynb or .py file in dan/ (it holds: submission.zip)"]
    assert {f["verdict"] for f in dan["functions"].values()} == {"no submission"}
    pages = {r["student"]: r["report"] for r in results.values()}
    assert len(set(pages.values())) == len(results)
    assert {pages["a b"], pages["a_b"]} == {"reports/a_b.html", "reports/a_b-2.html"}
    for student, page in pages.items():
        assert f"<h1>{student}</h1>" in (tmp_path / "out" / page).read_text()
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "graded: 11, no submission: 1, not a notebook: 2" in summary
    assert "dan,no submission,no submission,no submission,no submission,0,23,,no submission," \
        in (tmp_path / "out" / "gradebook.csv").read_text()


def test_every_student_has_a_name_of_their_own_and_the_output_folder_is_not_one(tmp_path):
    # a.ipynb and a.py are two students called "a": the second is not called a-2 when a student
    # a-2 exists. And grades written inside the class's folder are no student at the next grade.
    root = tmp_path / "class"
    root.mkdir()
    for name, code in (("a.ipynb", submissions.SOFTMAX), ("a.py", submissions.OUTPUT),
                       ("a-2.ipynb", submissions.SCORES_RAW)):
        if name.endswith(".py"):
            (root / name).write_text(submissions.IMPORTS + code)
        else:
            (root / name).write_text(json.dumps(submissions.notebook_json([submissions.IMPORTS,
                                                                           code])))
    for _ in range(2):
        results = grade([root], root / "grades", timeout=60, echo=None)
        names = {r["student"]: os.path.basename(r["path"]) for r in results}
        assert names == {"a": "a.ipynb", "a-2": "a-2.ipynb", "a-3": "a.py"}
        rows = list(csv.DictReader((root / "grades" / "gradebook.csv").read_text().splitlines()))
        assert sorted(r["student"] for r in rows) == ["a", "a-2", "a-3"]


def test_a_link_to_a_missing_file_is_a_student_with_no_submission(tmp_path):
    # in a flat folder it went unlisted (no row); in a student's folder it was "not a notebook"
    # with a bare "[Errno 2]" (a .py one crashed in the student's process)
    root = tmp_path / "class"
    (root / "bob").mkdir(parents=True)
    (root / "ada.py").write_text(submissions.IMPORTS + submissions.SOFTMAX)
    try:
        os.symlink(tmp_path / "gone" / "cat.ipynb", root / "cat.ipynb")
        os.symlink(tmp_path / "gone" / "hw.py", root / "bob" / "hw.py")
    except (OSError, NotImplementedError):
        pytest.skip("no symbolic links here")
    results = {r["student"]: r for r in grade([root], tmp_path / "out", timeout=60, echo=None)}
    assert sorted(results) == ["ada", "bob", "cat"]
    for student, missing in (("cat", "cat.ipynb"), ("bob", "hw.py")):
        r = results[student]
        assert r["status"] == "no submission", r
        assert r["problems"] == [f"{r['path']} is a link to {tmp_path / 'gone' / missing}, which "
                                 f"does not exist"]
    assert results["ada"]["functions"]["softmax_attention_weights"]["verdict"] == "pass"


def test_a_script_python_cannot_read_is_not_run_and_says_why(tmp_path):
    # a cp1252 "é" from a Windows editor: "crashed ... UnicodeDecodeError ... while running the
    # notebook's cells"; load_module raised the bare UnicodeDecodeError
    from selfattn.testing import load_module
    root = tmp_path / "class"
    root.mkdir()
    (root / "ana.py").write_bytes(submissions.IMPORTS.encode() + b"# caf\xe9\n"
                                  + submissions.SOFTMAX.encode())
    (root / "ben.py").write_bytes(b"# -*- coding: cp1252 -*-\n" + submissions.IMPORTS.encode()
                                  + b"# caf\xe9\n" + submissions.SOFTMAX.encode())
    (root / "cy.py").write_text("# -*- coding: klingon -*-\n" + submissions.IMPORTS)
    results = {r["student"]: r for r in grade([root], tmp_path / "out", timeout=60, echo=None)}
    ana = results["ana"]
    assert ana["status"] == "not a notebook" and ana["seconds"] == 0.0
    assert ana["problems"] == [
        f"{root / 'ana.py'} is not UTF-8 text, which Python reads a script as: byte 0xe9 on line "
        f"2 cannot be read (invalid continuation byte); save it as UTF-8 (or name its encoding on "
        f"its first line: # -*- coding: cp1252 -*-)"]
    assert results["ben"]["functions"]["softmax_attention_weights"]["verdict"] == "pass"
    assert results["cy"]["status"] == "not a notebook"
    assert results["cy"]["problems"][0].startswith(f"{root / 'cy.py'} cannot be read as Python: ")
    with pytest.raises(ValueError, match=r"^load_module: .*ana.py is not UTF-8 text"):
        load_module(root / "ana.py")


def test_an_earlier_grades_folder_and_a_macs_zip_folder_are_no_students(tmp_path):
    # grades written with another --out inside the class's folder, then the class graded again;
    # and __MACOSX/, which unzipping a Mac's zip leaves beside the students' folders
    root = tmp_path / "class"
    (root / "alice").mkdir(parents=True)
    (root / "alice" / "hw.py").write_text(submissions.IMPORTS + submissions.SOFTMAX)
    (root / "__MACOSX" / "alice").mkdir(parents=True)
    (root / "__MACOSX" / "alice" / "._hw.py").write_bytes(b"\x00\x05\x16\x07")
    grade([root], root / "grades-monday", timeout=60, echo=None)
    (root / "grades-stopped" / "reports").mkdir(parents=True)   # a grade stopped mid-way
    (root / "grades-stopped" / "reports" / "alice.html").write_text("<h1>alice</h1>")
    # a student who handed in a gradebook of their own beside the notebook is a student
    (root / "bob" / "reports").mkdir(parents=True)
    (root / "bob" / "reports" / "r.html").write_text("")
    for name in ("gradebook.csv", "results.json", "summary.txt"):
        (root / "bob" / name).write_text("")
    (root / "bob" / "hw.py").write_text(submissions.IMPORTS + submissions.SOFTMAX)
    results = grade([root], root / "grades-tuesday", timeout=60, echo=None)
    assert [r["student"] for r in results] == ["alice", "bob"]


def test_files_of_one_name_given_one_by_one_are_named_by_their_folders(tmp_path):
    # `grade class/*/hw.ipynb`: three students' hw, rows alice, bob and carol (not hw, hw-2, hw-3)
    paths = []
    for student in ("alice", "bob", "carol"):
        (tmp_path / student).mkdir()
        paths.append(tmp_path / student / "hw.py")
        paths[-1].write_text(submissions.IMPORTS + submissions.SOFTMAX)
    other = tmp_path / "dan.py"
    other.write_text(submissions.IMPORTS + submissions.SOFTMAX)
    results = grade([*paths, other], tmp_path / "out", timeout=60, echo=None)
    assert [r["student"] for r in results] == ["alice", "bob", "carol", "dan"]
    # one folder's two files keep their file names; a file given twice, or given beside its
    # folder, is graded once
    (tmp_path / "alice" / "hw.ipynb").write_text(json.dumps(submissions.notebook_json(
        [submissions.IMPORTS, submissions.SOFTMAX])))
    results = grade([paths[0], tmp_path / "alice" / "hw.ipynb", paths[0]], tmp_path / "out",
                    timeout=60, echo=None)
    assert [r["student"] for r in results] == ["hw", "hw-2"]
    results = grade([paths[1], tmp_path / "bob"], tmp_path / "out", timeout=60, echo=None)
    assert [r["student"] for r in results] == ["hw"]


# `python -m selfattn grade` whose main thread blocks SIGTERM and SIGINT, which a thread of its
# own takes instead: the signal lands on a thread other than the one that handles it, as the
# kernel may deliver it
_SIGNAL_ON_ANOTHER_THREAD = """
import signal, sys, threading, time
threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
from selfattn.testing.grade import main
sys.exit(main(sys.argv[1:]))
"""


def _signals_as_from_a_terminal():
    import signal
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the processes")
@pytest.mark.parametrize("signame, said", [("SIGINT", "Ctrl-C"), ("SIGTERM", "SIGTERM")])
@pytest.mark.parametrize("landing", ["main thread", "another thread", "again and again"])
def test_ctrl_c_stops_the_students_processes_too(tmp_path, signame, said, landing):
    """Each child leads a session of its own (so that what it starts can be stopped with it),
    which Ctrl-C at the terminal does not reach: an interrupted grade stops them itself, the
    running one and every one not yet started, and leaves none behind. So does SIGTERM (what
    `timeout` and a cancelled CI job send), which left a student's process running.

    It stops within seconds wherever the signal lands: a signal taken by another thread left
    the grade waiting for the students' time limit (120 s here), as did one CI run. Pressed
    again and again (^C^C^C, 2 ms apart), a second one landed inside the clean-up and left
    students' processes running, and a last one a traceback at the exit (a reviewer's case)."""
    import signal
    import time
    signum = getattr(signal, signame)
    loop = submissions._cells(submissions._replace(submissions.CORRECT, softmax_attention_weights=(
        "def softmax_attention_weights(attn_scores):\n    while True:\n        pass\n")))
    folder = tmp_path / "class"
    folder.mkdir()
    for name in ("ann", "bob", "cy"):
        (folder / f"{name}.ipynb").write_text(json.dumps(submissions.notebook_json(loop)))

    def children():  # the graders' children: their command lines name a notebook of the class
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if str(folder).encode() + b"/" in f.read():  # the grader's: folder\0
                        found.append(int(pid))
            except OSError:
                pass
        return found

    command = ["-m", "selfattn", "grade"] if landing == "main thread" else [
        "-c", _SIGNAL_ON_ANOTHER_THREAD]
    # as from a terminal: a runner that starts the suite with SIGINT ignored (a shell's `cmd &`)
    # passes that on, and a grade keeps a signal its caller ignores (as Python does)
    grader = subprocess.Popen([sys.executable, *command, str(folder), "--out",
                               str(tmp_path / "out"), "--timeout", "120", "--jobs", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              preexec_fn=_signals_as_from_a_terminal)
    with grader:
        try:
            deadline = time.monotonic() + 60
            while len(children()) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(children()) == 2, "the two children did not start"
            grader.send_signal(signum)
            deadline = time.monotonic() + 30
            while (landing == "again and again" and grader.poll() is None
                   and time.monotonic() < deadline):
                time.sleep(0.002)
                grader.send_signal(signum)
            _, errors = grader.communicate(timeout=30)
        finally:
            grader.kill()
            for pid in children():   # a failure leaves no student's endless loop behind
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
    time.sleep(0.5)
    assert children() == []
    assert grader.returncode == 128 + signum
    assert errors.decode() == (f"python -m selfattn grade: stopped ({said}); the students' "
                               f"processes were stopped too, and this run wrote no grades\n")


# `python -m selfattn grade` stopped by SIGTERM, where one more SIGINT and SIGTERM land after
# every change of a handler from then on: the narrowest windows, opened on purpose
_A_SIGNAL_AT_EVERY_CHANGE = """
import os, signal, sys
from selfattn.testing import grade as graded
change = signal.signal
stopped = []

def changed(signum, handler):
    previous = change(signum, handler)
    if stopped:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
    return previous

def stopped_grade(*args, **kwargs):
    stopped.append(True)
    os.kill(os.getpid(), signal.SIGTERM)   # raises KeyboardInterrupt here
    raise AssertionError("SIGTERM did not stop the grade")

signal.signal = changed
graded.grade = stopped_grade
code = graded.main(sys.argv[1:])
os.kill(os.getpid(), signal.SIGINT)
os.kill(os.getpid(), signal.SIGTERM)
print("ended", code, flush=True)
sys.exit(code)
"""


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGTERM"), reason="no SIGTERM")
def test_signals_after_the_first_are_ignored_to_the_end(tmp_path):
    """Once stopped, the command ignores Ctrl-C and SIGTERM to its end. It put the handlers it
    found back before its message: one more SIGTERM there (sent again and again) killed it with
    no message (one CI run), and a Ctrl-C there turned the message into a traceback."""
    import signal
    done = subprocess.run([sys.executable, "-c", _A_SIGNAL_AT_EVERY_CHANGE, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (128 + signal.SIGTERM, f"ended {128 + signal.SIGTERM}\n")
    assert done.stderr == ("python -m selfattn grade: stopped (SIGTERM); the students' processes "
                           "were stopped too, and this run wrote no grades\n")


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGTERM"), reason="no SIGTERM")
def test_the_cli_keeps_a_signal_its_caller_ignores_and_puts_back_the_others():
    """A grade started with SIGINT ignored (`nohup`, a shell's `cmd &`) keeps ignoring it, as
    Python does; SIGTERM stops it meanwhile, and a grade that ends is left with the handlers it
    found."""
    import signal
    from selfattn.testing.grade import _stop_on_signals
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with _stop_on_signals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert callable(signal.getsignal(signal.SIGTERM))
            with pytest.raises(KeyboardInterrupt) as stopped:
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(100):
                    pass
            assert stopped.value.args == (signal.SIGTERM,)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is before[signal.SIGTERM]
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGTERM"), reason="no SIGTERM")
def test_a_signal_after_the_deferral_reaches_the_callers_handler():
    """A Ctrl-C that lands while the deferral puts the handlers back raises there, and SIGTERM
    stayed on the deferral's own handler, which kept it for a delivery that never came: a
    teacher's SIGTERM handler never ran again (a reviewer's case, 1 in about 1,000 exits under a
    stream of Ctrl-Cs). Where that happens, the signal now reaches the caller's handler."""
    import signal
    from selfattn.testing.grade import _DeferredSignals
    got = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        with _DeferredSignals() as deferral:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):
                pass
            assert got == []                    # deferred while inside
        assert got == [signal.SIGTERM]          # and delivered at the end
        signal.signal(signal.SIGTERM, deferral._catch)  # as a restore cut short leaves it
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):
            pass
        assert got == [signal.SIGTERM, signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_upper_case_names_and_linked_sub_folders_are_found(tmp_path):
    """HW.IPYNB and hw.PY (as a file system that ignores case keeps them) are a notebook and a
    script; a sub-folder that is a link inside the student's folder is looked into, and a link
    back to its own folder does not loop. They were 'no .ipynb or .py file', and HW.PY was read
    as a notebook. A link out of the folder is not followed (a reviewer's link to the class
    folder graded another student's notebook, and that student lost their row)."""
    correct = json.dumps(submissions.notebook_json(submissions._cells(submissions.CORRECT)))
    script = submissions.IMPORTS + "".join(submissions.CORRECT.values())
    root = tmp_path / "class"
    (root / "amy").mkdir(parents=True)
    (root / "amy" / "HW.IPYNB").write_text(correct)
    (root / "bo").mkdir()
    (root / "bo" / "Solution.PY").write_text(script)
    (root / "cy" / "course").mkdir(parents=True)
    (root / "cy" / "course" / "hw.ipynb").write_text(correct)
    (root / "dee").mkdir()
    (root / "dee" / "hw.ipynb").write_text(correct)
    (root / "eve").mkdir()
    try:
        os.symlink(root / "cy" / "course", root / "cy" / "work", target_is_directory=True)
        os.symlink(root / "cy" / "course", root / "cy" / "zz", target_is_directory=True)
        os.symlink(root / "cy", root / "cy" / "course" / "back", target_is_directory=True)
        # links out of a student's folder: to the class (a loop through every other student),
        # to another student's work
        os.symlink(root, root / "dee" / "loop", target_is_directory=True)
        os.symlink(root / "amy", root / "eve" / "peek", target_is_directory=True)
    except (OSError, NotImplementedError):
        pytest.skip("this file system or account cannot make symbolic links")
    (root / "CLASS_NOTES.PY").write_text(script)
    found = {student: (path, notes) for student, path, notes in _submissions([root])}
    assert sorted(found) == ["CLASS_NOTES", "amy", "bo", "cy", "dee", "eve"]
    assert found["amy"] == (str(root / "amy" / "HW.IPYNB"), [])
    assert found["bo"] == (str(root / "bo" / "Solution.PY"), [])
    # each real folder once: course/ and its two links are one folder, read once
    assert found["cy"] == (os.path.join(str(root / "cy"), "course", "hw.ipynb"), [])
    assert found["dee"] == (str(root / "dee" / "hw.ipynb"), [])
    assert found["eve"] == (None, ["no .ipynb or .py file in eve/ (it holds: peek/ (a link out "
                                   "of eve/, not followed))"])
    graded, = grade([root / "bo" / "Solution.PY"], tmp_path / "out", timeout=60, echo=None)
    assert graded["status"] == "graded" and _points(graded) == (23, 23), graded["problems"]


def test_a_regrade_into_the_same_folder_leaves_no_report_of_an_earlier_class(tmp_path):
    """Grading class 2 into class 1's --out kept class 1's pages in reports/ beside class 2's
    gradebook, to be handed out with it. What the teacher put there stays."""
    classes = []
    for number, names in ((1, ("ann", "bob")), (2, ("cat",))):
        folder = tmp_path / f"class{number}"
        folder.mkdir()
        for name in names:
            (folder / f"{name}.ipynb").write_text(json.dumps(submissions.notebook_json(
                [submissions.IMPORTS, submissions.SOFTMAX])))
        classes.append(folder)
    out = tmp_path / "grades"
    grade([classes[0]], out, timeout=60, echo=None)
    assert sorted(os.listdir(out / "reports")) == ["ann.html", "bob.html"]
    (out / "reports" / "notes.html").write_text("the teacher's own page")
    said = []
    grade([classes[1]], out, timeout=60, echo=said.append)
    assert sorted(os.listdir(out / "reports")) == ["cat.html", "notes.html"]
    assert "the earlier grade's 2 reports of students not in this one removed" in said[0]
    grade([classes[1]], out, timeout=60, echo=said.append)     # the same class again: no note
    assert "removed" not in said[1] and (out / "reports" / "cat.html").exists()


def test_a_student_renamed_in_case_keeps_the_new_page(tmp_path, monkeypatch):
    """Ann.html of the last grade was removed after ann.html was written: on a disk that ignores
    case (macOS, Windows), the new page itself. Stale pages now go before any is written."""
    folder = tmp_path / "class"
    folder.mkdir()
    notebook = json.dumps(submissions.notebook_json([submissions.IMPORTS, submissions.SOFTMAX]))
    (folder / "Ann.ipynb").write_text(notebook)
    out = tmp_path / "grades"
    grade([folder], out, timeout=60, echo=None)
    (folder / "Ann.ipynb").rename(folder / "ann.ipynb")
    events = []
    real_remove, real_open = os.remove, open
    monkeypatch.setattr(os, "remove", lambda p: (events.append(("remove", os.path.basename(p))),
                                                 real_remove(p))[1])
    import builtins
    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: (
        events.append(("write", os.path.basename(p))) if a[:1] == ("w",) else None,
        real_open(p, *a, **k))[1])
    grade([folder], out, timeout=60, echo=None)
    pages = [e for e in events if e[1].lower() == "ann.html"]
    assert pages == [("remove", "Ann.html"), ("write", "ann.html")]
    assert os.listdir(out / "reports") == ["ann.html"]


def test_functions_right_on_their_own_but_of_two_conventions_are_told_so():
    """Raw scores (as the notebook's docstring says) and a layer that divides them by sqrt(d_k):
    each passes check() alone; graded together the layer failed with "Your scores are raw dot
    products in some cases and scaled by 1/sqrt(d_k) in others", which is false: each function
    is consistent. It says which function uses which."""
    from selfattn.testing.grade import check_functions
    code = dict(submissions.CORRECT, self_attention_layer=submissions.LAYER.replace(
        "scores = compute_self_attention_scores(Q, K)",
        "scores = compute_self_attention_scores(Q, K) / np.sqrt(K.shape[1])"))
    assert code["self_attention_layer"] != submissions.LAYER
    namespace = {}
    exec(submissions.IMPORTS + "".join(code.values()), namespace)
    functions = {n: namespace[n] for n in NOTEBOOK_FUNCTIONS}
    reports = check_functions(functions)
    assert reports["compute_self_attention_scores"] and not reports["self_attention_layer"]
    text = " ".join(str(reports["self_attention_layer"]).split())
    assert "Your self_attention_layer uses scaled scores and your compute_self_attention_scores " \
           "raw ones: each is right on its own, but a notebook uses one convention throughout" \
        in text, text
    assert "in some cases" not in text
    assert reports["self_attention_layer"].mistakes == ["mixed_scale"]


def test_a_convention_the_teacher_pinned_is_told_as_the_courses():
    """With --scale scaled, a raw student's report said "Raw dot products ... pass with
    scale="raw" or scale="either" (check's default)", and with --scale raw a scaled one "check
    with scale="scaled" or scale="either"": advice the student cannot take, which reads as "you
    were right". A grade or assert_implementation with a pinned scale says what the course asks
    for; check() itself, which the student calls, keeps its advice."""
    from selfattn.testing import assert_implementation, check
    from selfattn.testing.grade import check_functions
    namespace = {}
    exec(submissions.IMPORTS + submissions.SCORES_RAW, namespace)
    raw = namespace["compute_self_attention_scores"]
    namespace = {}
    exec(submissions.IMPORTS + submissions.SCORES_SCALED, namespace)
    scaled = namespace["compute_self_attention_scores"]
    for fn, pinned, said in [
            (raw, "scaled", "but the course asks for scaled dot-product attention (dot products "
                            "divided by sqrt(d_k)): divide the scores by np.sqrt(d_k)"),
            (scaled, "raw", "but the course asks for the raw convention, where the scores are "
                            "the plain dot products Q @ K.T. Remove the factor.")]:
        graded = " ".join(str(check_functions({"compute_self_attention_scores": fn},
                                               scale=pinned)["compute_self_attention_scores"])
                          .split())
        with pytest.raises(AssertionError) as raised:
            assert_implementation(fn, scale=pinned)
        for text in (graded, " ".join(str(raised.value).split())):
            assert said in text, text
            assert "check with scale=" not in text and "(check's default)" not in text
        own = " ".join(str(check(fn, scale=pinned)).split())
        assert "check was asked for" in own and said not in own
