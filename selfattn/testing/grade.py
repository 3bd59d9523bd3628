"""Grading a class: ``python -m selfattn grade SUBMISSIONS...``.

Each submission (a ``.ipynb`` or ``.py`` file, or a folder of them) is loaded and checked in a
process of its own, with a wall-clock limit (``--timeout``) and, on Linux and macOS, a memory
limit (``RLIMIT_AS``, ``--memory``), so that an infinite loop, a crash or a huge allocation in one
student's code costs that student a "timed out" or "crashed" line and nothing else. On Windows
there is no ``RLIMIT_AS``: the time limit holds, the memory limit is not enforced.

Written to ``--out`` (default ``grades/``):

- ``gradebook.csv``: one row per student, one column per function (pass, fail, missing, error,
  or the submission's "timed out"/"crashed"), with points for partial credit (one per passed case);
- ``results.json``: every case of every function of every student;
- ``reports/STUDENT.html``: one self-contained page per student (the check reports);
- ``summary.txt``: the class summary, also printed: how many students made each named mistake
  and which functions failed most.
"""
from __future__ import annotations

import argparse
import csv
import html
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from .cases import _SCALED, _check_scale, cases
from .load import NOTEBOOK_FUNCTIONS, load_notebook
from .mistakes import _HINTS, TITLES
from .report import check

__all__ = ["grade", "check_functions", "main"]

_SUFFIXES = (".ipynb", ".py")
_TIMED_OUT, _CRASHED = "timed out", "crashed"
_MEMORY_MB = 4096


# ---- inside the child process: one submission ------------------------------------------------

def check_functions(functions, scale="either", seed=0):
    """Check each notebook function of a submission; the scale convention must be one for all.

    With ``scale="either"`` each function with scores may be raw or scaled; when they disagree,
    the convention of the first that passed (scores, then the layer) is pinned for the others,
    which then fail with the explanation of the pinned convention.

    Returns a dict: name -> CheckReport, or None for a function the submission lacks.
    """
    reports = {}
    for name in NOTEBOOK_FUNCTIONS:
        fn = functions.get(name)
        reports[name] = None if fn is None else check(fn, name, scale=scale, seed=seed)
    if _check_scale("grade", scale, either=True) == "either":
        passed = [r for r in reports.values() if r is not None and r and r.name in _SCALED]
        if passed:
            pinned = passed[0].scale
            for name, r in reports.items():
                if r is not None and r.name in _SCALED and r.scale != pinned:
                    report = check(functions[name], name, scale=pinned, seed=seed)
                    report.notes.append(f"{passed[0].name} uses {passed[0].convention} scores; "
                                        f"the same convention is asked of {name}.")
                    for r in report.results:  # the other convention is not wrong, the mix is
                        r.hints = [_HINTS["mixed_scale"] if set(getattr(h, "keys", ())) &
                                   {"scale_raw", "scale_sqrt_dk"} else h for h in r.hints]
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
        # Already this large before any student code (a sanitizer's shadow memory): a limit
        # would fail every allocation, not a student's huge one.
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


def _child(path, scale, result_path, memory_mb):
    """Grade one submission and write its result as JSON (run in its own process)."""
    _set_memory_limit(memory_mb)
    submission = load_notebook(path)
    reports = check_functions(submission.functions, scale)
    result = {
        "status": "graded",
        "problems": submission.problems(),
        "skipped": submission.skipped,
        "output": submission.output,
        "functions": {name: _function_result(name, r) for name, r in reports.items()},
        "html": "".join(r._repr_html_() for r in reports.values() if r is not None),
    }
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump(result, f)


# ---- in the teacher's process: the class ---------------------------------------------------

def _submissions(paths):
    """(student, path) for every submission: files as given, and in a folder its notebooks and
    scripts, or for a sub-folder per student, that folder's first notebook (or script)."""
    found = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isfile(p):
            found.append((os.path.splitext(os.path.basename(p))[0], p))
            continue
        if not os.path.isdir(p):
            raise FileNotFoundError(f"grade: {p} does not exist")
        for entry in sorted(os.listdir(p)):
            full = os.path.join(p, entry)
            if entry.startswith(".") or entry == "__pycache__":  # .ipynb_checkpoints and such
                continue
            if os.path.isfile(full) and entry.endswith(_SUFFIXES):
                found.append((os.path.splitext(entry)[0], full))
            elif os.path.isdir(full):
                inside = sorted(e for e in os.listdir(full)
                                if e.endswith(_SUFFIXES) and not e.startswith("."))
                inside.sort(key=lambda e: not e.endswith(".ipynb"))
                if inside:
                    found.append((entry, os.path.join(full, inside[0])))
    names = {}
    unique = []
    for student, path in found:  # two students called "solution" in different folders
        names[student] = names.get(student, 0) + 1
        unique.append((student if names[student] == 1 else f"{student}-{names[student]}", path))
    return unique


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


def _grade_one(student, path, scale, timeout, memory_mb):
    """Run one submission in a child process; its result, or why there is none."""
    with tempfile.TemporaryDirectory(prefix="selfattn-grade-") as tmp:
        result_path = os.path.join(tmp, "result.json")
        code = ("import sys; from selfattn.testing.grade import _child; "
                "_child(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))")
        start = time.perf_counter()
        status, detail = "graded", ""
        try:
            run = subprocess.run(
                [sys.executable, "-c", code, os.path.abspath(path), scale, result_path,
                 str(memory_mb)],
                cwd=os.path.dirname(os.path.abspath(path)), env=_child_env(),
                # What the functions print while checked is not kept (the cells' output is).
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                timeout=timeout)
            if run.returncode != 0 or not os.path.exists(result_path):
                status = _CRASHED
                detail = _crash_detail(run.returncode, run.stderr)
        except subprocess.TimeoutExpired:
            status = _TIMED_OUT
            detail = f"still running after {timeout:g} s (an infinite loop?); stopped"
        seconds = time.perf_counter() - start
        if status == "graded":
            with open(result_path, encoding="utf-8") as f:
                result = json.load(f)
        else:
            result = {"status": status, "problems": [detail], "skipped": [], "output": "",
                      "html": "",
                      "functions": {n: {"verdict": status, "points": 0,
                                        "max_points": _max_points(n), "convention": None,
                                        "mistakes": [], "diagnoses": [], "cases": [], "text": ""}
                                    for n in NOTEBOOK_FUNCTIONS}}
    result.update(student=student, path=path, seconds=round(seconds, 2))
    return result


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


def _summary(results, scale, seconds, memory_limited):
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
        for key in dict.fromkeys(k for f in r["functions"].values() for k in f["mistakes"]):
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
             f"<p>{e(os.path.basename(r['path']))}: <b>{points} of {top} points</b> "
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


def _safe_name(student):
    return re.sub(r"[^\w.-]+", "_", student) or "student"


def grade(paths, out="grades", *, scale="either", timeout=60.0, jobs=1, memory_mb=_MEMORY_MB,
          progress=None, echo=print):
    """Grade every submission under `paths`; write the gradebook, results, reports and summary.

    Returns the list of per-student results (the contents of ``results.json``).
    """
    _check_scale("grade", scale, either=True)
    if not isinstance(scale, str):
        raise ValueError(f'grade: scale must be "raw", "scaled" or "either", got {scale!r}')
    submissions = _submissions(paths)
    if not submissions:
        raise FileNotFoundError(f"grade: no .ipynb or .py files in {', '.join(map(str, paths))}")
    os.makedirs(os.path.join(out, "reports"), exist_ok=True)
    progress = sys.stdout.isatty() if progress is None else progress
    start = time.perf_counter()
    results = [None] * len(submissions)
    done = 0
    with ThreadPoolExecutor(max_workers=max(1, int(jobs))) as pool:
        futures = {pool.submit(_grade_one, s, p, scale, timeout, memory_mb): i
                   for i, (s, p) in enumerate(submissions)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            done += 1
            if progress:
                width = 30
                bar = "#" * (width * done // len(submissions))
                sys.stdout.write(f"\rgrading [{bar:<{width}}] {done}/{len(submissions)}")
                sys.stdout.flush()
    if progress:
        sys.stdout.write("\n")
    seconds = time.perf_counter() - start
    for r in results:
        with open(os.path.join(out, "reports", _safe_name(r["student"]) + ".html"), "w",
                  encoding="utf-8") as f:
            f.write(_html_page(r))
    _write_gradebook(results, os.path.join(out, "gradebook.csv"))
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump([{k: v for k, v in r.items() if k != "html"} for r in results], f, indent=1)
    summary = _summary(results, scale, seconds, _memory_limit_available())
    with open(os.path.join(out, "summary.txt"), "w", encoding="utf-8") as f:
        f.write(summary)
    if echo is not None:
        echo(summary + f"\nWritten to {out}/: gradebook.csv, results.json, summary.txt, "
                       f"reports/ (one HTML page per student)")
    return results


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
        grade(args.submissions, args.out, scale=args.scale, timeout=args.timeout, jobs=args.jobs,
              memory_mb=args.memory)
    except FileNotFoundError as exc:
        print(f"python -m selfattn {exc}", file=sys.stderr)  # "grade: ..."
        return 2
    return 0
