"""What a learner's code may change in the grader's process, put back after it ran.

Two scopes use it: the run of a notebook's cells (load.py: load_notebook, load_module) and each
call of a learner's function on one case (run.py: check, assert_implementation). Without it one
student's code changed how the next was graded in the same process (a pytest grader, a teacher's
loop): np.seterr(all="raise") made a correct softmax raise, `np.sqrt = lambda x: 1.0` inside a
scores function made the next student's correct scale read as "raw", os.chdir() moved the
teacher's relative paths.
"""
from __future__ import annotations

import builtins
import contextlib
import getpass
import io
import os
import sys
import warnings

import numpy as np


@contextlib.contextmanager
def _numpy_state_kept():
    """NumPy's process-wide state: its error handling, print options and global random state."""
    errors, printing = np.geterr(), np.get_printoptions()
    random_state = np.random.get_state()
    try:
        yield
    finally:
        np.seterr(**errors)
        np.set_printoptions(**printing)
        np.random.set_state(random_state)


@contextlib.contextmanager
def _settings_kept():
    """The process-wide settings a notebook's cells may change, put back after its run, so that
    they do not carry over to the caller's tests of its functions or to the next notebook loaded
    in this process: NumPy's state (above) and the warnings filters. And sys.stdin reads as
    empty meanwhile: a cell's input() fails at once (EOFError, recorded as its error, as under
    grade) where it waited for a terminal, silently, since the prompt goes to the captured
    output. In a Jupyter kernel input() and getpass() do not read sys.stdin (ipykernel's own ask
    the caller's notebook for a line, and waited for the teacher to type one), so they are
    replaced too, by the EOFError that input() gives at the end of its input."""
    with _numpy_state_kept(), warnings.catch_warnings(), _no_input():
        yield


@contextlib.contextmanager
def _no_input():
    """sys.stdin empty, and input() and getpass() raising the EOFError of input() at the end of
    its input, until the block ends."""
    stdin, ask, ask_secret = sys.stdin, builtins.input, getpass.getpass
    try:
        sys.stdin = io.StringIO()
        builtins.input = getpass.getpass = _no_answer
        yield
    finally:
        sys.stdin, builtins.input, getpass.getpass = stdin, ask, ask_secret


def _no_answer(prompt="", *args, **kwargs):
    raise EOFError("EOF when reading a line")


@contextlib.contextmanager
def _frontend_quiet(display):
    """In a Jupyter kernel, what a notebook's cells show goes to the caller's notebook: the
    display() they import from IPython drew a student's HTML in the teacher's cell, and their
    figures were drawn there (plt.show(), and every figure still open when the teacher's cell
    ended). Meanwhile IPython's display is `display` (the loader's, which prints to the captured
    output) and pyplot's show() does nothing, where they are imported; afterwards the figures
    the cells opened are closed. (A pyplot the cells import first shows what they show() before
    this can reach it.)"""
    replaced = []
    for name in ("IPython.display", "IPython.core.display_functions"):
        module = sys.modules.get(name)
        if module is not None and callable(getattr(module, "display", None)):
            replaced.append((module, "display", module.display))
    pyplot = sys.modules.get("matplotlib.pyplot")
    figures = set(pyplot.get_fignums()) if pyplot is not None else set()
    if pyplot is not None:
        replaced.append((pyplot, "show", pyplot.show))
    try:
        for module, name, _ in replaced:
            setattr(module, name, display if name == "display" else _show_nothing)
        yield
    finally:
        for module, name, value in replaced:
            setattr(module, name, value)
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:
            for number in set(pyplot.get_fignums()) - figures:
                pyplot.close(number)


def _show_nothing(*args, **kwargs):
    return None


@contextlib.contextmanager
def _call_kept():
    """Around one call of a learner's function: NumPy's state, the working folder and the
    libraries' functions (_LibrariesKept, whose `names()` say what the call replaced); input()
    gets no answer (in a teacher's grading loop in Jupyter it waited for someone to type). The
    warnings filters and NumPy's error handling during the call are the caller's (run.py)."""
    try:
        folder = os.getcwd()
    except OSError:   # the caller's folder was removed: nothing to go back to
        folder = None
    try:
        with _numpy_state_kept(), _no_input(), _LibrariesKept() as libraries:
            yield libraries
    finally:
        if folder is not None:
            with contextlib.suppress(OSError):
                if os.getcwd() != folder:
                    os.chdir(folder)


class _LibrariesKept:
    """The functions of NumPy (numpy, numpy.linalg, numpy.testing) and math that learner code
    replaces or deletes (`np.exp = my_exp`, `np.abs = ...`), put back on leaving, and said so:
    the checks that follow, selfattn's and the teacher's own, compute with those libraries, and
    one student's np.abs that returned 0 passed every comparison, another's np.exp crashed the
    grader's drawing of its cases. Names the code adds (`np.softmax = ...`) stay."""

    _MODULES = ("numpy", "numpy.linalg", "numpy.testing", "math")
    _SHORT = {"numpy": "np", "numpy.linalg": "np.linalg", "numpy.testing": "np.testing"}

    def __enter__(self):
        self.before = {name: dict(vars(sys.modules[name])) for name in self._MODULES
                       if name in sys.modules}
        self.changed = {}   # (module, attribute) -> the cell that first changed it
        return self

    def _differs(self):
        for module, attributes in self.before.items():
            now = vars(sys.modules[module])
            for attribute, value in attributes.items():
                if now.get(attribute, _MISSING) is not value:
                    yield module, attribute

    def look(self, cell=None):
        """Note what was changed since the last look (by cell `cell`, just run)."""
        for key in self._differs():
            self.changed.setdefault(key, cell)

    def _name(self, key):
        module, attribute = key
        return f"{self._SHORT.get(module, module)}.{attribute}"

    def names(self):
        """What was changed, as a learner writes it (np.exp, math.sqrt), sorted."""
        return sorted(self._name(key) for key in self.changed)

    def notes(self):
        by_cell = {}
        for key, cell in self.changed.items():
            by_cell.setdefault(cell, []).append(self._name(key))
        return [f"cell {cell} changed {', '.join(sorted(names))}: "
                f"{_put_back(names)} after the cells ran, so the functions are checked with the "
                f"library's own ({_own_name(names)})" for cell, names in sorted(by_cell.items())]

    def __exit__(self, *exc):
        for module, attribute in list(self._differs()):
            setattr(sys.modules[module], attribute, self.before[module][attribute])


def _put_back(names):
    return "it was put back" if len(names) == 1 else "they were put back"


def _own_name(names):
    return (f"give a function of your own a name of its own, such as "
            f"my_{min(names).rpartition('.')[2]}")


_MISSING = object()


def _call_note(names):
    """The warning of a call that replaced library functions (`names`, from names())."""
    return (f"your function changed {', '.join(names)} while it ran: {_put_back(names)} after "
            f"the call, so that what follows (the other checks, the next student's) uses the "
            f"library's own ({_own_name(names)})")
