"""Grading a class: ``python -m selfattn grade SUBMISSIONS...``.

Each submission (a ``.ipynb`` or ``.py`` file, or a folder of them) is loaded and checked in a
process of its own, with a wall-clock limit (``--timeout``) and, on Linux and macOS, a memory
limit (``RLIMIT_AS``, ``--memory``), so that an infinite loop, a crash or a huge allocation in one
student's code costs that student a "timed out" or "crashed" line and nothing else (the functions
checked before it keep their grades; what the process started is stopped with it, and so is
every child when the grade is interrupted, by Ctrl-C or by SIGTERM). On Windows there is no ``RLIMIT_AS``: the time limit
holds, the memory limit is not enforced, and a process a submission starts is not stopped with
it. It is not a sandbox: the students' code runs with the grader's permissions.

Written to ``--out`` (default ``grades/``):

- ``gradebook.csv``: one row per student, one column per function (pass, fail, missing, error,
  or the submission's "timed out"/"crashed"/"no submission"/"not a notebook"), with points for partial credit (one
  per passed case);
- ``results.json``: every case of every function of every student (a case's ``max_error`` is
  the string ``"inf"`` where the output holds inf or NaN the expected output has not: JSON has
  no infinity);
- ``reports/STUDENT.html``: one self-contained page per student (the check reports; its path is
  the result's "report"); the pages an earlier grade into the folder wrote for students not in
  this one are removed;
- ``summary.txt``: the class summary, also printed: how many students made each named mistake
  and which functions failed most.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import html
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from .cases import _SCALED, _check_scale, cases
from .compare import _errors_at_the_call
from .load import (NOTEBOOK_FUNCTIONS, _definitions, _notebook_cells, _script_text, _stub_body,
                   load_notebook)
from .mistakes import _HINTS, TITLES, _hint
from .report import _in_course_voice, check

__all__ = ["grade", "check_functions", "main"]

_SUFFIXES = (".ipynb", ".py")


def _is_submission(name):
    # HW.IPYNB: a file system that ignores case (Windows, macOS) keeps what the student typed
    return name.lower().endswith(_SUFFIXES)


def _is_notebook(name):
    return name.lower().endswith(".ipynb")
_TIMED_OUT, _CRASHED, _NO_SUBMISSION = "timed out", "crashed", "no submission"
_UNREADABLE = "not a notebook"
# the share of --timeout one cell may run before it is stopped (the rest: checking the functions)
_CELL_SHARE = 0.75
_MEMORY_MB = 4096


# ---- inside the child process: one submission ------------------------------------------------

@_errors_at_the_call
def check_functions(functions, scale="either", seed=0, progress=None):
    """Check each notebook function of a submission; the scale convention must be one for all.

    With ``scale="either"`` each function with scores may be raw or scaled; when they disagree,
    the convention of the first that passed (scores, then the layer) is pinned for the others,
    which then fail with the explanation of the pinned convention. ``progress``, if given, is
    called with the reports so far after each function.

    Returns a dict: name -> CheckReport, or None for a function the submission lacks.
    """
    reports = {}
    pinned_by_teacher = _check_scale("check_functions", scale, either=True) != "either"
    for name in NOTEBOOK_FUNCTIONS:
        fn = functions.get(name)
        reports[name] = None if fn is None else check(fn, name, scale=scale, seed=seed)
        if pinned_by_teacher and reports[name] is not None:
            _in_course_voice(reports[name])
        if progress is not None:
            progress(reports)
    if not pinned_by_teacher:
        passed = [r for r in reports.values() if r is not None and r and r.name in _SCALED]
        if passed:
            pinned = passed[0].scale
            for name, r in reports.items():
                if r is not None and r.name in _SCALED and r.scale != pinned:
                    report = check(functions[name], name, scale=pinned, seed=seed)
                    report.notes.append(f"{passed[0].name} uses {passed[0].convention} scores; "
                                        f"the same convention is asked of {name}.")
                    # the other convention is not wrong, the mix is: where this function was
                    # right on its own, each function is consistent and only the two disagree
                    mix = _HINTS["mixed_scale"] if not r else _hint(
                        f"Your {name} uses {r.convention} scores and your {passed[0].name} "
                        f"{passed[0].convention} ones: each is right on its own, but a notebook "
                        f"uses one convention throughout (the layer's scores are those of "
                        f"compute_self_attention_scores). Use {passed[0].convention} scores in "
                        f"{name} too, or {r.convention} ones in both.", "mixed_scale")
                    for case in report.results:
                        case.hints = [mix if set(getattr(h, "keys", ())) &
                                      {"scale_raw", "scale_sqrt_dk"} else h for h in case.hints]
                    reports[name] = report
    return reports


def _verdict(report):
    if report is None:
        return "missing"
    if report:
        return "pass"
    required = [r for r in report.results if not r.case.batched]
    if all(r.verdict == "FAIL" and r.message.startswith("raised ") for r in required):
        return "error"
    return "fail"


def _max_points(name):
    return len(cases(name, batched=False))


def _function_result(name, report):
    if report is None:
        return {"verdict": "missing", "points": 0, "max_points": _max_points(name),
                "convention": None, "mistakes": [], "diagnoses": [], "cases": [], "text": ""}
    return {
        "verdict": _verdict(report),
        "points": sum(r.verdict == "pass" for r in report.results if not r.case.batched),
        "max_points": sum(not r.case.batched for r in report.results),
        "convention": report.convention if report else None,  # recognised, not just closest
        "mistakes": report.mistakes,
        "diagnoses": [str(d) for d in report.diagnoses],
        "cases": [{"id": r.case.id, "label": r.case.label, "verdict": r.verdict,
                   "message": r.message, "hints": [str(h) for h in r.hints],
                   "max_error": r.max_error, "warnings": r.warnings} for r in report.results],
        "text": str(report),
    }


def _set_memory_limit(megabytes):
    try:
        import resource
    except ImportError:  # Windows: no RLIMIT_AS; the wall-clock limit still holds
        return False
    limit = megabytes * 2**20
    if _address_space() > limit // 2:
        # Already this large before any student code (a sanitizer's shadow memory, or a small
        # --memory): a limit would fail every allocation, not a student's huge one. The summary
        # says it was not applied.
        return False
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return True


def _address_space():
    """This process's virtual memory in bytes where /proc tells it (Linux), else 0."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return 0


def _child(path, scale, result_path, memory_mb, timeout):
    """Grade one submission and write its result as JSON (run in its own process): after each
    function too, so that a function that never returns (or ends the process) costs only itself
    and the functions after it; "complete" marks the last write."""
    limited = _set_memory_limit(memory_mb)
    _set_cpu_limit(timeout)
    # a cell that never ends (a `while True` test loop) is stopped after three quarters of the
    # submission's time and recorded as that cell's error, so the functions are still graded;
    # where no timer can stop a cell (Windows), the whole process is stopped at the timeout
    cell_limit = _CELL_SHARE * timeout
    submission = load_notebook(path, timeout=cell_limit if hasattr(signal, "setitimer") else None)
    stopped = f"ran past timeout={cell_limit:g} s and was stopped"
    problems = [p.replace(stopped, f"ran past {cell_limit:g} s, three quarters of the grade's "
                                   f"--timeout {timeout:g}, and was stopped (if it is meant to "
                                   f"run that long, grade with a larger --timeout)")
                for p in submission.problems()]
    base = {"status": "graded", "problems": problems, "skipped": submission.skipped,
            "output": submission.output, "memory_limited": limited}

    def write(reports, complete=False):
        result = dict(base, complete=complete,
                      functions={name: _function_result(name, r) for name, r in reports.items()},
                      html="".join(r._repr_html_() for r in reports.values() if r is not None))
        with open(result_path + ".part", "w", encoding="utf-8") as f:
            json.dump(result, f)
        os.replace(result_path + ".part", result_path)  # whole, whenever the process is stopped

    write({})   # the cells have run: a result from here on says which function never returned
    write(check_functions(submission.functions, scale, progress=write), complete=True)
    # Done: a thread or process the student's code left running must not hold the grade back.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # a student closed or replaced it
            pass
    os._exit(0)


def _set_cpu_limit(timeout):
    """A backstop for a child that outlives its grader (killed with SIGKILL, which cannot stop
    the children first): the system ends it after a few times its time limit of CPU."""
    try:
        import resource
    except ImportError:  # Windows
        return
    soft = int(2 * timeout) + 10
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 5 if hard == resource.RLIM_INFINITY
                                                 else min(soft + 5, hard)))


# ---- in the teacher's process: the class ---------------------------------------------------

def _submissions(paths, out=None):
    """(student, path, notes) for every submission: files as given, and in a folder its notebooks
    and scripts, or for a sub-folder per student, the first notebook (or script) in it or in its
    own sub-folders (not the output folder `out`, which a grade may write inside the class's
    folder). `notes` say what a teacher should know: the other candidates in a student's
    folder, or (path None) that a folder holds none."""
    out = os.path.realpath(out) if out is not None else None
    found = []
    by_folder = _named_by_folder([os.fspath(p) for p in paths if os.path.isfile(os.fspath(p))])
    for p in paths:
        p = os.fspath(p)
        if os.path.isfile(p):
            found.append((by_folder.get(p) or os.path.splitext(os.path.basename(p))[0], p, []))
            continue
        if not os.path.isdir(p):
            raise FileNotFoundError(f"grade: {p} does not exist")
        for entry in sorted(os.listdir(p)):
            full = os.path.join(p, entry)
            if _hidden(entry):  # .ipynb_checkpoints and such
                continue
            if _is_submission(entry) and (os.path.isfile(full) or _dangling(full)):
                found.append((os.path.splitext(entry)[0], full, []))
            elif (os.path.isdir(full) and os.path.realpath(full) != out
                  and not _earlier_output(full)):
                found.append((entry, *_student_folder(full)))
    # Two students called "solution" in different folders: the second is solution-2, unless a
    # student is already called that (a-2.ipynb beside a.ipynb and a.py)
    taken = {student for student, _, _ in found}
    seen, unique, files = set(), [], set()
    for student, path, notes in found:
        if path is not None:   # a file given twice, or given and in a folder given: graded once
            if os.path.realpath(path) in files:
                continue
            files.add(os.path.realpath(path))
        name, k = student, 1
        while name in seen or (name != student and name in taken):
            k += 1
            name = f"{student}-{k}"
        seen.add(name)
        unique.append((name, path, notes))
    return unique


def _dangling(path):
    """Whether `path` is a symbolic link to nothing (isfile says False: it went unlisted)."""
    return os.path.islink(path) and not os.path.exists(path)


def _hidden(entry):
    # __MACOSX: the resource forks a zip made on a Mac unpacks beside the students' folders
    return entry.startswith(".") or entry in ("__pycache__", "__MACOSX")


def _named_by_folder(files):
    """{file: its folder's name} for files given one by one that share a name in different
    folders (`grade class/*/hw.ipynb`: each "hw", so each is named alice, bob, ...)."""
    stems = {}
    for f in files:
        stems.setdefault(os.path.splitext(os.path.basename(f))[0], []).append(f)
    names = {}
    for group in stems.values():
        folders = [os.path.basename(os.path.dirname(os.path.abspath(f))) for f in group]
        if len(group) > 1 and all(folders) and len(set(folders)) == len(folders):
            names.update(zip(group, folders))
    return names


def _earlier_output(folder):
    """Whether `folder` is what an earlier grade wrote (its --out inside the class's folder, or
    one a stopped grade left): its reports/ of HTML pages and no notebook or script at all."""
    reports = os.path.join(folder, "reports")
    if not os.path.isdir(reports) or any(not f.endswith(".html") for f in os.listdir(reports)):
        return False
    return not any(_is_submission(f) for _, _, names in os.walk(folder) for f in names)


def _student_folder(folder):
    """(path, notes) of a student's folder: of its notebooks (else its scripts), at the top or in
    a sub-folder, the one that writes the most of the notebook's functions (a scratch
    Untitled.ipynb beside the homework writes none, nor does the template's copy of unfilled
    stubs), then the last modified, then the first, nearest the top first."""
    candidates, others = [], []
    # a sub-folder may be a link: followed where it stays inside the student's folder, each real
    # folder once (a link to its parent does not loop); one that leads out of it (to another
    # student's folder, or to /) is named, not followed
    home = os.path.realpath(folder)
    seen = {home}
    for root, dirs, files in os.walk(folder, followlinks=True):
        kept = []
        for d in sorted(dirs):
            real = os.path.realpath(os.path.join(root, d))
            if _hidden(d) or real in seen:
                continue
            if real != home and not real.startswith(home.rstrip(os.sep) + os.sep):
                others.append(os.path.relpath(os.path.join(root, d), folder)
                              + f"/ (a link out of {os.path.basename(folder)}/, not followed)")
                continue
            seen.add(real)
            kept.append(d)
        dirs[:] = kept
        for f in sorted(files):
            if _hidden(f):
                continue
            rel = os.path.relpath(os.path.join(root, f), folder)
            (candidates if _is_submission(f) else others).append(rel)
    if not candidates:
        return None, [f"no .ipynb or .py file in {os.path.basename(folder)}/"
                      + (f" (it holds: {', '.join(others[:5])}"
                         + (", ..." if len(others) > 5 else "") + ")" if others
                         else " (nor any other file but hidden ones)")]
    candidates.sort(key=lambda rel: (not _is_notebook(rel), rel.count(os.sep), rel))
    # a notebook's own module (attention.py, which it imports) is no submission beside it; the
    # nearest _RANKED are read (a virtualenv in the folder holds thousands of scripts)
    notebooks = [rel for rel in candidates if _is_notebook(rel)]
    ranked = (notebooks or candidates)[:_RANKED]
    written = {rel: _functions_written(os.path.join(folder, rel)) for rel in ranked}
    modified = {rel: _modified(os.path.join(folder, rel)) for rel in ranked}
    ranked.sort(key=lambda rel: (-written[rel], -modified[rel]))    # (stable: then as above)
    first = ranked[0]
    used = set()    # the graded notebook's own modules are no other submission
    with contextlib.suppress(ValueError, OSError):
        path = os.path.join(folder, first)
        used = {os.path.relpath(f, folder) for f in _files_used(path, _sources(path))}
    rest = [rel for rel in candidates if rel != first and rel not in used]
    notes = []
    if rest:
        kind = "notebooks" if notebooks else "scripts"
        second = ranked[1] if len(ranked) > 1 else None
        if second is None:
            why = f"the folder's only {kind[:-1]}"
        elif written[first] != written[second]:
            why = (f"its text defines the notebook's functions, though it cannot be read"
                   if written[first] == _UNREADABLE_WRITES else
                   f"it writes {written[first]:g} of the notebook's functions, {second} "
                   + ("cannot be read" if written[second] == _UNREADABLE_WRITES
                      else f"{written[second]:g}"))
        else:
            which = (f"that write as many of the notebook's functions ({written[first]:g})"
                     if written[first] else "none of which writes a notebook function")
            why = (f"the last modified of the {kind} {which}" if modified[first] != modified[second]
                   else f"the first, nearest the top and by name, of the {kind} {which}, "
                        f"modified at the same time")
        notes.append(f"graded {first} ({why}); the folder also holds {', '.join(rest[:4])}"
                     + (", ..." if len(rest) > 4 else "")
                     + " (grade one of them by giving its path)")
    return os.path.join(folder, first), notes


_RANKED = 50
# what a notebook that cannot be read (git's conflict markers) but whose text defines some of
# the functions counts: it beats a scratch file that writes none, so that its row says why it
# cannot be graded, and loses to one that writes any (the template's conflicted copy, stubs)
_UNREADABLE_WRITES = 0.5
_DEF = re.compile(r"\bdef[ \t]+(" + "|".join(NOTEBOOK_FUNCTIONS) + r")[ \t]*\(")
_LOCAL_CODE = re.compile(r"^[ \t]*(?:from[ \t]+(\w+)[ \t]+import|import[ \t]+(\w+)"
                         r"|%run[ \t]+(?:-\w+[ \t]+)*(\S+?\.py)\b)", re.M)


def _functions_written(path):
    """How many of the notebook's functions a notebook or script defines with a body that is no
    unfilled stub, read without running it: in its code cells, its %%writefile cells, and the
    files beside it that it imports or %runs (attention.py). A notebook that cannot be read
    counts _UNREADABLE_WRITES if its text defines any."""
    try:
        sources = _sources(path)
    except (ValueError, OSError):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return _UNREADABLE_WRITES if _DEF.search(f.read()) else 0
        except OSError:
            return 0
    code = [source.lstrip().partition("\n")[2] if source.lstrip().startswith("%%writefile")
            else source for source in sources]
    for beside in _files_used(path, sources):
        with contextlib.suppress(OSError), open(beside, encoding="utf-8", errors="replace") as f:
            code.append(f.read())
    code = [c for c in code if _DEF.search(c)]      # parse only what may define one
    return sum(any(_stub_body(node) is None for _, node, _ in _definitions(code, name))
               for name in NOTEBOOK_FUNCTIONS)


def _sources(path):
    """The code of a notebook's cells, or a script's text (as one source)."""
    if _is_notebook(path):
        return _notebook_cells(path)
    with open(path, encoding="utf-8", errors="replace") as f:
        return [f.read()]


def _files_used(path, sources):
    """The files beside `path` that its sources import or %run (attention.py): part of the
    submission, not another one."""
    folder, used = os.path.dirname(path), []
    for source in sources:
        for module in _LOCAL_CODE.finditer(source):
            name = module.group(3) or (module.group(1) or module.group(2)) + ".py"
            beside = os.path.join(folder, name)
            if (os.path.isfile(beside) and os.path.abspath(beside) != os.path.abspath(path)
                    and beside not in used):
                used.append(beside)
    return used


def _modified(path):
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def _child_env():
    env = dict(os.environ)
    # One thread each: --jobs runs several students at once.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "SELFATTN_NUM_THREADS"):
        env[var] = "1"
    env["MPLBACKEND"] = "Agg"  # a student's plt.show() draws nowhere
    # No startup file, and no faulthandler dump (dev mode turns it on) in place of the student's
    # own last error line when their code crashes the interpreter.
    for var in ("PYTHONSTARTUP", "PYTHONFAULTHANDLER", "PYTHONDEVMODE"):
        env.pop(var, None)
    return env


def _grade_one(student, path, notes, scale, timeout, memory_mb, children):
    """Run one submission in a child process; its result, or why there is none (with the
    functions checked before it timed out or crashed)."""
    if path is None:
        result = _no_result(_NO_SUBMISSION, {})
        result.update(student=student, path="", seconds=0.0, problems=notes)
        return result
    if _dangling(path):     # a link whose file was moved, or not unpacked from the zip
        result = _no_result(_NO_SUBMISSION, {})
        result.update(student=student, path=path, seconds=0.0, problems=notes + [
            f"{path} is a link to {os.readlink(path)}, which does not exist"])
        return result
    try:     # a file no notebook can be read from (git's merge-conflict markers): said so
        _notebook_cells(path) if _is_notebook(path) else _script_text(path)
    except (ValueError, OSError) as exc:
        result = _no_result(_UNREADABLE, {})
        result.update(student=student, path=path, seconds=0.0, problems=notes + [str(exc)])
        return result
    result = _run_child(path, scale, timeout, memory_mb, children)
    result["problems"] = notes + result["problems"]
    result.update(student=student, path=path)
    return result


def _no_result(status, checked):
    """A result's functions where grading did not finish: those checked, and `status` for the
    others."""
    return {"status": status, "problems": [], "skipped": [], "output": "", "html": "",
            "functions": {n: checked.get(n) or {"verdict": status, "points": 0,
                                                "max_points": _max_points(n), "convention": None,
                                                "mistakes": [], "diagnoses": [], "cases": [],
                                                "text": ""}
                          for n in NOTEBOOK_FUNCTIONS}}


def _run_child(path, scale, timeout, memory_mb, children):
    tmp = tempfile.mkdtemp(prefix="selfattn-grade-")
    try:
        return _run_child_in(tmp, path, scale, timeout, memory_mb, children)
    finally:
        # ignore_errors: on Windows a process the student started may still hold a file open
        shutil.rmtree(tmp, ignore_errors=True)


def _run_child_in(tmp, path, scale, timeout, memory_mb, children):
    """_run_child's work, its files in `tmp`."""
    result_path = os.path.join(tmp, "result.json")
    # -c puts the working folder (the submission's) first on sys.path: a student's selfattn.py
    # or numpy.py there would stand in for the grader's own imports, for every student of a
    # flat folder. The cells still import from it: load_notebook puts the folder on sys.path.
    code = ("import sys; sys.path[:] = [p for p in sys.path if p]; "
            "from selfattn.testing.grade import _child; "
            "_child(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), "
            "float(sys.argv[5]))")
    start = time.perf_counter()
    status, detail = "graded", ""
    # What the functions print while checked is not kept (the cells' output is); stderr
    # goes to a file, which a process the student started cannot keep open past the end.
    with open(os.path.join(tmp, "stderr"), "w+b") as stderr:
        child = children.start(
            [sys.executable, "-c", code, os.path.abspath(path), scale, result_path,
             str(memory_mb), repr(float(timeout))],
            cwd=os.path.dirname(os.path.abspath(path)), env=_child_env(),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            start_new_session=_PROCESS_GROUPS)
        try:
            returncode = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            returncode = None
        children.stop(child)
        stderr.seek(0)
        errors = stderr.read()
    seconds = time.perf_counter() - start
    result = None
    if os.path.exists(result_path):
        with open(result_path, encoding="utf-8") as f:
            result = json.load(f)
    if returncode is None:
        status = _TIMED_OUT
        detail = f"still running after {timeout:g} s (an infinite loop?); stopped"
    elif returncode != 0 or result is None or not result.get("complete"):
        status = _CRASHED
        detail = _crash_detail(returncode, errors)
    if status != "graded":
        checked = result["functions"] if result is not None else {}
        unfinished = [n for n in NOTEBOOK_FUNCTIONS if n not in checked]
        if result is None:      # no write: the notebook's cells had not finished
            detail += ", while running the notebook's cells"
            if status == _TIMED_OUT:    # each cell under the cells' limit, together past it
                detail += (" (if they are meant to run that long, grade with a larger "
                           "--timeout)")
        elif unfinished:
            detail += f", while checking {unfinished[0]}"
        partial = result or {}
        result = dict(_no_result(status, checked),
                      **{k: partial[k] for k in ("skipped", "output", "html") if k in partial})
        result["problems"] = partial.get("problems", []) + [detail]
    result.pop("complete", None)
    result["seconds"] = round(seconds, 2)
    return result


# Each child leads a process group of its own, stopped as a whole when it ends (POSIX)
_PROCESS_GROUPS = os.name == "posix"


class _Children:
    """A grade's running children. Each leads a session of its own, which Ctrl-C at the terminal
    does not reach, so an interrupted grade stops them all itself (and starts no more)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._running = set()
        self._stopping = False

    def start(self, *args, **kwargs):
        with self._lock:
            if self._stopping:
                raise KeyboardInterrupt("grading was interrupted")
            child = subprocess.Popen(*args, **kwargs)
            self._running.add(child)
        return child

    def stop(self, child):
        _stop(child)
        with self._lock:
            self._running.discard(child)

    def stop_all(self):
        with self._lock:
            self._stopping = True
            running = list(self._running)
        for child in running:
            _stop(child)


# How often grade's wait for its children looks for a Ctrl-C or SIGTERM (seconds)
_SIGNAL_POLL_S = 0.2


class _DeferredSignals:
    """While in it, the main thread's Ctrl-C and SIGTERM handlers (KeyboardInterrupt) run at
    `deliver()`, not wherever the signal lands. A KeyboardInterrupt raised inside
    concurrent.futures' own code can leave a future's lock held, and a worker that sets that
    future's result then waits for ever; a grade's wait that never timed out also slept through
    a signal that another thread took. Elsewhere than the main thread it changes nothing
    (signals reach only that one's handlers); SIG_DFL and SIG_IGN are left as they are."""

    _SIGNALS = ("SIGINT", "SIGTERM")

    def __enter__(self):
        self._caught = []
        self._previous = {}
        self._deferring = True
        if threading.current_thread() is not threading.main_thread():
            return self
        try:
            for name in self._SIGNALS:
                signum = getattr(signal, name, None)
                handler = signal.getsignal(signum) if signum is not None else None
                if callable(handler):
                    signal.signal(signum, self._catch)
                    self._previous[signum] = handler
        except BaseException:   # a signal before the last change: the handlers as they were
            self._restore()
            raise
        return self

    def _catch(self, signum, frame):
        if self._deferring:
            self._caught.append(signum)
        else:
            # past the end: a signal that lands while the handlers are put back, or where a
            # KeyboardInterrupt cut that short (a Ctrl-C, then SIGTERM still on this), is the
            # caller's as it would have been
            self._previous[signum](signum, frame)

    def deliver(self):
        """Run the handler of the first signal caught since the last call (it raises
        KeyboardInterrupt, as a rule)."""
        if self._caught:
            signum = self._caught.pop(0)
            self._previous[signum](signum, sys._getframe(1))

    def _restore(self):
        self._deferring = False
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def __exit__(self, *exc_info):
        self._restore()
        if exc_info[0] is None:
            self.deliver()   # one that came after the last look is not lost


def _stop(child):
    """Stop the child and every process it started (a student's subprocess.Popen("sleep ..."))."""
    if _PROCESS_GROUPS:
        import signal
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # the child and all it started have ended
            pass
    elif child.poll() is None:
        child.kill()
    child.wait()


def _crash_detail(returncode, stderr):
    text = stderr.decode("utf-8", "replace").strip()
    if returncode is not None and returncode < 0:
        import signal
        try:
            what = f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            what = f"killed by signal {-returncode}"
    else:
        what = f"exit status {returncode}"
    last = text.splitlines()[-1] if text else ""
    return f"the process ended ({what}) before grading finished" + (f": {last}" if last else "")


def _points(result):
    fns = result["functions"].values()
    return sum(f["points"] for f in fns), sum(f["max_points"] for f in fns)


def _convention(result):
    found = {f["convention"] for f in result["functions"].values() if f["convention"]}
    return "/".join(sorted(found))


def _write_gradebook(results, path):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["student", *NOTEBOOK_FUNCTIONS, "points", "max_points", "convention",
                    "status", "problems"])
        for r in results:
            points, top = _points(r)
            w.writerow([r["student"], *(r["functions"][n]["verdict"] for n in NOTEBOOK_FUNCTIONS),
                        points, top, _convention(r), r["status"], " | ".join(r["problems"])])


def _summary(results, scale, seconds, memory_limited, memory_mb):
    n = len(results)
    lines = [f"selfattn grade: {n} submission{'s' if n != 1 else ''} in {seconds:.1f} s "
             f"(scale={scale})"]
    statuses = {}
    for r in results:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    lines.append("  " + ", ".join(f"{k}: {v}" for k, v in statuses.items()))
    everything = sum(all(f["verdict"] == "pass" for f in r["functions"].values()) for r in results)
    lines.append(f"  all four functions right: {everything} of {n}")
    if not memory_limited:
        lines.append("  (no memory limit on this platform: RLIMIT_AS is not available)")
    else:
        unlimited = sum(r.get("memory_limited") is False for r in results)
        # a process stopped in the cells (timed out, crashed) wrote nothing, this included
        unsaid = sum("memory_limited" not in r for r in results
                     if r["status"] in (_TIMED_OUT, _CRASHED))
        if unlimited:
            lines.append(f"  (the memory limit was not applied to {unlimited} of {n}"
                         + (f", nor perhaps to {unsaid} whose process stopped before it said"
                            if unsaid else "")
                         + f": their process had more than half of --memory {memory_mb} MiB "
                           f"before the student's code ran; give a larger --memory)")
    lines += ["", "Functions, most failed first:"]
    fails = []
    for name in NOTEBOOK_FUNCTIONS:
        verdicts = [r["functions"][name]["verdict"] for r in results]
        fails.append((sum(v != "pass" for v in verdicts), name, verdicts))
    for count, name, verdicts in sorted(fails, key=lambda t: -t[0]):
        kinds = {}
        for v in verdicts:
            if v != "pass":
                kinds[v] = kinds.get(v, 0) + 1
        detail = ", ".join(f"{k} {v}" for k, v in kinds.items())
        lines.append(f"  {name}: {count} of {n} not passed" + (f" ({detail})" if detail else ""))
    counts = {}
    for r in results:
        keys = dict.fromkeys(k for f in r["functions"].values() for k in f["mistakes"])
        # a layer's sqrt(n) (its queries and keys are the same n tokens) is, beside a scores
        # function that divides by sqrt(n_k) or sqrt(n_q), that one mistake: counted once
        if {"scale_sqrt_nk", "scale_sqrt_nq"} & set(keys):
            keys.pop("scale_sqrt_n", None)
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
    lines += ["", "Named mistakes (students who made each):"]
    if not counts:
        lines.append("  none")
    for key, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {TITLES.get(key, key)}: {count} of {n}")
    return "\n".join(lines) + "\n"


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:70em}}
table{{border-collapse:collapse;margin:.5em 0 1.5em}}td,th{{border:1px solid #ccc;padding:3px 8px;
vertical-align:top}}pre{{background:#f6f8fa;padding:1em;overflow:auto}}
.selfattn-check{{margin-bottom:2em}}</style></head><body>
{body}</body></html>
"""


def _html_page(r):
    e = html.escape
    points, top = _points(r)
    parts = [f"<h1>{e(r['student'])}</h1>",
             f"<p>{e(os.path.basename(r['path']) or 'no file')}: <b>{points} of {top} points</b> "
             f"({e(r['status'])}"
             + (f"; convention: {e(_convention(r))}" if _convention(r) else "") + ")</p>",
             "<table><tr><th>function</th><th>verdict</th><th>points</th></tr>"]
    for name in NOTEBOOK_FUNCTIONS:
        f = r["functions"][name]
        parts.append(f"<tr><td>{e(name)}</td><td>{e(f['verdict'])}</td>"
                     f"<td>{f['points']} of {f['max_points']}</td></tr>")
    parts.append("</table>")
    if r["problems"]:
        parts.append("<h2>Problems</h2><ul>" + "".join(f"<li>{e(p)}</li>" for p in r["problems"])
                     + "</ul>")
    parts.append(r["html"])
    if r["skipped"]:
        parts.append("<details><summary>Skipped magic and shell lines</summary><pre>"
                     + e("\n".join(r["skipped"])) + "</pre></details>")
    if r["output"]:
        parts.append("<details><summary>What the notebook printed</summary><pre>"
                     + e(r["output"]) + "</pre></details>")
    return _PAGE.format(title=e(f"selfattn grade: {r['student']}"), body="\n".join(parts))


def _report_names(students):
    """A file name per student, from the name with only letters, digits, '.', '-' and '_' kept,
    and made unique ("a b" and "a_b" would both be a_b: the second is a_b-2)."""
    taken, names = set(), []
    for student in students:
        base = re.sub(r"[^\w.-]+", "_", student).strip(".") or "student"
        name, k = base, 1
        while name.lower() in taken:  # lower: one file on a case-insensitive disk
            k += 1
            name = f"{base}-{k}"
        taken.add(name.lower())
        names.append(name)
    return names


def grade(paths, out="grades", *, scale="either", timeout=60.0, jobs=1, memory_mb=_MEMORY_MB,
          progress=None, echo=print):
    """Grade every submission under `paths`; write the gradebook, results, reports and summary.

    Returns the list of per-student results (the contents of ``results.json``, where a
    ``max_error`` of ``math.inf`` is written as ``"inf"``).
    """
    _check_scale("grade", scale, either=True)
    if not isinstance(scale, str):
        raise ValueError(f'grade: scale must be "raw", "scaled" or "either", got {scale!r}')
    _check_limits(timeout, jobs, memory_mb)
    submissions = _submissions(paths, out)
    if not submissions:
        raise FileNotFoundError(f"grade: no .ipynb or .py files in {', '.join(map(str, paths))}")
    try:
        os.makedirs(os.path.join(out, "reports"), exist_ok=True)
    except OSError as exc:  # a file where the folder goes, no permission: before any grading
        raise ValueError(f"grade: cannot make the output folder {os.path.join(out, 'reports')!r}"
                         f" ({exc.strerror or exc}); choose another with --out") from None
    progress = sys.stdout.isatty() if progress is None else progress
    start = time.perf_counter()
    results = [None] * len(submissions)
    done = 0
    children = _Children()
    pool = ThreadPoolExecutor(max_workers=int(jobs))
    # the signals stay deferred through the clean-up too: a second Ctrl-C (^C^C^C) raised inside
    # stop_all left students' processes running
    with _DeferredSignals() as signals:
        try:
            futures = {pool.submit(_grade_one, s, p, notes, scale, timeout, memory_mb, children): i
                       for i, (s, p, notes) in enumerate(submissions)}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=_SIGNAL_POLL_S,
                                         return_when=FIRST_COMPLETED)
                for future in finished:
                    results[futures[future]] = future.result()
                    done += 1
                if finished and progress:
                    width = 30
                    bar = "#" * (width * done // len(submissions))
                    sys.stdout.write(f"\rgrading [{bar:<{width}}] {done}/{len(submissions)}")
                    sys.stdout.flush()
                signals.deliver()
        except BaseException:  # Ctrl-C (or an error of ours): no student's process outlives it
            pool.shutdown(wait=False, cancel_futures=True)
            children.stop_all()
            # the workers end as soon as their children have: joined here, where no signal
            # interrupts the join, not at the interpreter's exit
            pool.shutdown()
            raise
    pool.shutdown()
    if progress:
        sys.stdout.write("\n")
    seconds = time.perf_counter() - start
    for r, page in zip(results, _report_names(r["student"] for r in results)):
        r["report"] = f"reports/{page}.html"
    # the pages of an earlier grade into this folder whose students are not in this one: left,
    # they would be handed out with this class's (a teacher's own files are never listed there).
    # Removed before the new pages are written: Ann.html of the last grade and ann.html of this
    # one are one file on macOS and Windows
    stale = sorted(_earlier_reports(out) - {r["report"] for r in results})
    for page in stale:
        with contextlib.suppress(OSError, ValueError):
            os.remove(os.path.join(out, page))
    for r in results:
        with open(os.path.join(out, r["report"]), "w", encoding="utf-8") as f:
            f.write(_html_page(r))
    _write_gradebook(results, os.path.join(out, "gradebook.csv"))
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(_strict_json([{k: v for k, v in r.items() if k != "html"} for r in results]),
                  f, indent=1, allow_nan=False)
    summary = _summary(results, scale, seconds, _memory_limit_available(), memory_mb)
    with open(os.path.join(out, "summary.txt"), "w", encoding="utf-8") as f:
        f.write(summary)
    if echo is not None:
        removed = (f"; the earlier grade's {len(stale)} report{'s' if len(stale) > 1 else ''} of "
                   f"students not in this one removed" if stale else "")
        echo(summary + f"\nWritten to {out}/: gradebook.csv, results.json, summary.txt, "
                       f"reports/ (one HTML page per student{removed})")
    return results


def _strict_json(value):
    """`value` with its inf and NaN floats as the strings "inf", "-inf" and "nan": Python's json
    writes them as Infinity and NaN, which JSON has not (JavaScript's JSON.parse and most
    languages' readers refuse the file)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def _earlier_reports(out):
    """The report pages an earlier grade into `out` wrote, as its results.json lists them
    ("reports/NAME.html"): nothing else in the folder is ours to remove."""
    try:
        with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
            earlier = json.load(f)
        pages = {r["report"] for r in earlier if isinstance(r, dict)
                 and isinstance(r.get("report"), str)}
    except (OSError, ValueError, TypeError):   # none, or not one of ours
        return set()
    return {p for p in pages if re.fullmatch(r"reports/[^/\\]+\.html", p)}


def _check_limits(timeout, jobs, memory_mb):
    """The numbers a grade runs with, refused where they cannot mean what they say (a timeout of
    0 s would mark every student "timed out")."""
    import math
    import numbers
    if not (isinstance(timeout, numbers.Real) and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"grade: the timeout must be a positive number of seconds, got {timeout!r}")
    for what, value in (("jobs", jobs), ("the memory limit (MiB)", memory_mb)):
        if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1):
            raise ValueError(f"grade: {what} must be a whole number, 1 or more, got {value!r}")


def _memory_limit_available():
    try:
        import resource  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m selfattn grade",
        description="Grade self-attention notebooks: each submission in its own process, with a "
                    "time and a memory limit.")
    parser.add_argument("submissions", nargs="+",
                        help=".ipynb or .py files, or folders of them (or of one folder per student)")
    parser.add_argument("--scale", choices=("either", "raw", "scaled"), default="either",
                        help="scores convention: raw Q @ K.T, scaled by 1/sqrt(d_k), or either "
                             "(consistently; the default)")
    parser.add_argument("--out", default="grades", help="output folder (default: grades)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds per submission before it counts as timed out (default 60)")
    parser.add_argument("--jobs", type=int, default=1, help="submissions graded at once (default 1)")
    parser.add_argument("--memory", type=int, default=_MEMORY_MB,
                        help=f"memory limit per submission in MiB (default {_MEMORY_MB}; "
                             f"not enforced on Windows)")
    args = parser.parse_args(argv)
    try:
        with _stop_on_signals():
            grade(args.submissions, args.out, scale=args.scale, timeout=args.timeout,
                  jobs=args.jobs, memory_mb=args.memory)
    except (FileNotFoundError, ValueError) as exc:
        print(f"python -m selfattn {exc}", file=sys.stderr)  # "grade: ..."
        return 2
    except KeyboardInterrupt as exc:
        # grade() has stopped every student's process by now
        signum = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 2
        print(f"python -m selfattn grade: stopped ({'Ctrl-C' if signum == 2 else 'SIGTERM'}); "
              f"the students' processes were stopped too, and this run wrote no grades",
              file=sys.stderr)
        return 128 + signum
    return 0


@contextlib.contextmanager
def _stop_on_signals():
    """While in it, Ctrl-C and SIGTERM (`timeout`, a cancelled CI job, `kill`) end the grade by a
    KeyboardInterrupt(signum), so the students' processes, each in a session of its own, are
    stopped with it, not left running. Only the first one does: more (^C^C^C) are ignored from
    then on, and so they stay when the command ends: put back, the handlers before it let one
    more SIGTERM kill the command before its message (one CI run), or a Ctrl-C turn that message
    into a traceback. A signal its caller ignores stays ignored."""
    if threading.current_thread() is not threading.main_thread():  # (signals reach only it)
        yield
        return
    stopping = []

    def stop(signum, frame):
        if not stopping:
            stopping.append(signum)
            raise KeyboardInterrupt(signum)
    previous = {}
    try:
        for name in _DeferredSignals._SIGNALS:
            signum = getattr(signal, name, None)
            if signum is not None and signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, stop)
        yield
    except KeyboardInterrupt:
        stopping.append(None)   # (a signal from now on is one more)
        for signum in previous:
            signal.signal(signum, signal.SIG_IGN)
        raise
    except BaseException:
        _put_back(previous)
        raise
    _put_back(previous)


def _put_back(handlers):
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
