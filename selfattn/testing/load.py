"""Loading a learner's submission: a notebook (.ipynb) or a script (.py), run cell by cell.

Neither Jupyter nor a kernel is needed: a notebook is JSON, read with the standard library. Each
code cell runs in one fresh namespace, top to bottom, as "Restart and run all" would, except that
IPython magics and shell lines (``%matplotlib inline``, ``%%bash``, ``!pip list``) are skipped
(the body of a ``%%time`` cell and the statement of a ``%time`` line still run, untimed), and a
cell that raises is recorded (its number and error) and does not stop the cells after it.
A ``%%writefile`` cell writes its file, as in Jupyter, but into a folder of the run's own, which
the later cells import from (``from attention import *``); it and the modules imported from it
are gone after the run, so one submission never imports another's file (or the grader's).
``%run attention.py`` runs such a file, or one beside the notebook, as IPython does (_RunMagic).
What the cells print is captured. A ``.py`` file (for example from ``jupyter nbconvert --to
script``, or jupytext's percent format) is split into cells at its ``# In[ ]:`` or ``# %%``
markers (jupytext's light format, by jupytext where it is installed) and run the same way:
nbconvert's ``get_ipython().run_cell_magic(...)`` and ``run_line_magic('time' or 'run', ...)``
lines and jupytext's commented magics (``# %%writefile f``, ``# %run f``) run
as the notebook's magics did, and its markdown cells are not counted, so a notebook and its
script give the same submission.
"""
from __future__ import annotations

import ast
import contextlib
import difflib
import dis
import functools
import glob
import importlib
import importlib.util
import io
import json
import linecache
import math
import numbers
import os
import re
import shlex
import shutil
import signal
import sys
import sysconfig
import tempfile
import threading
import time
import tokenize
import traceback
import types
import warnings
from dataclasses import dataclass

import numpy as np

from .cases import NAMES
from .isolation import _frontend_quiet, _LibrariesKept, _settings_kept

__all__ = ["load_notebook", "load_module", "Submission", "CellError"]

#: The notebook's four functions, which a submission is expected to define.
NOTEBOOK_FUNCTIONS = NAMES[:4]

# Cell magics whose body is Python and still runs; %%writefile writes its file (_WrittenFiles);
# any other %%magic cell (%%bash, %%html, ...) is skipped whole.
_PYTHON_CELL_MAGICS = ("%%time", "%%timeit", "%%capture", "%%prun")
_WRITEFILE = re.compile(r"^%%writefile(\s+(?:-a|--append))?\s+(\S.*?)\s*$")
# `%magic`, `!command`, and `x = !command` / `x = %magic` assignments.
_MAGIC_LINE = re.compile(r"^(\s*)(?:[%!]|[\w., ]+=\s*[%!])")
# nbconvert's form of a magic, also assigned (`files = get_ipython().getoutput('ls')`), and IPython's
# help lines (`np.exp?`, `??softmax`)
_IPYTHON_CALL = re.compile(r"^(\s*)(?:[\w., ]+=\s*)?get_ipython\(\)\s*\.")
_HELP_LINE = re.compile(r"^(\s*)(?:\?{1,2}[\w.]+|[\w.]+\?{1,2})\s*$")
_PY_CELL_MARKER = re.compile(r"^# (?:In\[[ \d]*\]:|%%(?:\s|$))")
# jupytext's cells (`# %%`, with a title and attributes: `# %% [markdown]`, `# %% language="bash"`)
# and the magics it comments out: `# %time`, `# %%writefile f`, `# !pip`, `# x = !ls`, `# np.exp?`
# (a comment that looks like one gets a second `# `: one is taken off)
_PERCENT_MARKER = re.compile(r"^# %%(?:\s|$)")
_JUPYTEXT_HEADER = re.compile(r"(?:#!.*\n)?(?:#.*coding.*\n)?\s*# ---\n# jupyter:\n(?:#.*\n)*?#   jupytext:")
_COMMENTED_MAGIC = re.compile(r"^(\s*)# ((?:# )*(?:%{1,3}[A-Za-z]|!\s*[A-Za-z.~$\\/{}]|\?"
                              r"|[\w.]+\?{1,2}\s*$|[A-Za-z_]\w*\s*=\s*(?:%{1,2}[A-Za-z]|!)).*)$")
# `%time statement`, also as nbconvert writes it: the statement runs, untimed, as in IPython
_TIME_LINE = re.compile(r"^(\s*)(?:%time\s+(\S.*)|get_ipython\(\)\.run_line_magic\(([\"'])time\3,"
                        r" (.+)\))\s*$")
_OUTPUT_LIMIT = 20_000  # characters of printed output kept per submission
# `%run [options] file [args]`, also as nbconvert writes it: the file runs as IPython runs it
# (_RunMagic), through a call of the cells' namespace's _RUN_HELPER in the line's place
_RUN_LINE = re.compile(r"^(\s*)(?:%run\s+(\S.*?)|get_ipython\(\)\.run_line_magic\(([\"'])run\3,"
                       r"\s*(.+)\))\s*$")
_RUN_HELPER = "__selfattn_run__"
_RUN_CALL = re.compile(r"^" + _RUN_HELPER + r"\((.*)\)$")


@dataclass
class CellError:
    """A cell that raised: its number (1-based, among the code cells), the error and the line."""
    cell: int
    error: str
    line: str = ""

    def __str__(self):
        where = f" (line: {self.line})" if self.line else ""
        return f"cell {self.cell}: {self.error}{where}"


class Submission:
    """A learner's code after running it: the functions it defines and what went wrong.

    Attribute access reaches the submission's namespace (``submission.softmax_attention_weights``);
    a function it does not define, or one of `borrowed`, raises AttributeError with a message that
    says so.

    Attributes
    ----------
    path : str
    namespace : dict
        Every name the cells defined.
    functions : dict
        The notebook's functions it defines (name -> function), among its four (the first four
        of :data:`NAMES`) and ``scaled_dot_product_attention``.
    missing : list of str
        The notebook's four functions it does not define (or takes from selfattn).
    borrowed : list of str
        The notebook's functions that are selfattn's own, imported rather than written
        (``from selfattn import *``), or written to call selfattn's (``return
        selfattn.softmax_attention_weights(s)``, directly or through the notebook's other
        functions): they are not in `functions`, so they are not graded.
    errors : list of CellError
        The cells that raised, in order.
    skipped : list of str
        The magic and shell lines that were not run as in Jupyter (a ``%time`` line's statement
        runs, untimed; a ``%run`` line that runs is not listed).
    output : str
        What the cells printed (stdout and stderr), cut after 20,000 characters.
    n_cells : int
        The number of code cells.
    notes : list of str
        How the file was read, where that may have changed the grade (a script whose cells could
        not be told apart); the first of :meth:`problems`.
    """

    def __init__(self, path, namespace, errors, skipped, output, n_cells, notes=(), sources=()):
        self.path = str(path)
        self._sources = list(sources)
        self.notes = list(notes)
        self.namespace = namespace
        self.errors = errors
        self.skipped = skipped
        self.output = output
        self.n_cells = n_cells
        defined = {n: namespace[n] for n in NAMES if n in namespace and callable(namespace[n])}
        # selfattn's own functions, imported (from selfattn import *) or called by the notebook's:
        # the grade would be selfattn's, so they count as missing, and problems() says why
        self._uses = {n: _selfattn_used(f, set()) for n, f in defined.items()}
        self.borrowed = [n for n, used in self._uses.items() if used]
        self.functions = {n: f for n, f in defined.items() if n not in self.borrowed}
        self.missing = [n for n in NOTEBOOK_FUNCTIONS if n not in self.functions]

    def problems(self):
        """What a teacher should know besides the grades, as sentences."""
        out = list(self.notes)
        out += [f"{e}" + (" (the cells after it still ran)" if e.cell < self.n_cells else "")
                for e in self.errors]
        own = self._own()
        if len(self.missing) == len(NOTEBOOK_FUNCTIONS) and not self.borrowed:
            out.append(f"{os.path.basename(self.path)} defines none of the notebook's functions "
                       f"({', '.join(NOTEBOOK_FUNCTIONS)}); it defines: "
                       f"{', '.join(own) if own else 'no functions at all'}")
        elif self.missing:
            out.append("missing: " + ", ".join(self.missing))
        imported = [n for n in self.borrowed if self._uses[n] == _IMPORTED]
        for name, defined, replaced in self._replaced_by_import(imported):
            imported.remove(name)
            where = f"in cell {replaced}" if replaced != defined else "further down that cell"
            out.append(f"{name} is defined in cell {defined}, but an import from selfattn (or an "
                       f"assignment) {where} replaced it with selfattn's own, so it is not "
                       f"graded: write `import selfattn` instead (and selfattn.{name} where "
                       f"selfattn's is wanted), or move that import above the definitions")
        if imported:
            out.append(f"{', '.join(imported)} {'is' if len(imported) == 1 else 'are'} "
                       f"selfattn's own (imported from selfattn, not written in the notebook), "
                       f"so not graded")
        for name in self.borrowed:
            if self._uses[name] != _IMPORTED:
                out.append(f"{name} calls selfattn's {self._uses[name]}, so it is selfattn's "
                           f"result, not graded")
        out += self._defined_again()
        for name in self.missing:
            if name in self.borrowed:
                continue
            if self._typo(name):
                out.append(self._typo(name))
        return out

    def _own(self):
        """The functions the cells wrote themselves, by name."""
        return sorted(n for n, v in self.namespace.items() if callable(v) and not n.startswith("_")
                      and getattr(v, "__module__", None) in (None, "__main__"))

    def _typo(self, name):
        """The sentence naming a function of the notebook's whose name is close to `name`, or ''."""
        close = difflib.get_close_matches(name, self._own(), n=1, cutoff=0.8)
        return (f"{name} is missing, but the notebook defines {close[0]}: a typo in the name?"
                if close else "")

    def _defined_again(self):
        """A sentence for each graded function that the cells define more than once (a
        learner's second try, or the template's stub pasted again below the solution): which
        definition is graded, and whether that one is an unfilled stub."""
        out = []
        for name, fn in self.functions.items():
            places = _definitions(self._sources, name)      # (cell, node, line as shown)
            where_graded = _cell_of(fn, name)
            if where_graded is None or len(places) < 2:
                continue
            graded, first_line = where_graded
            cells = sorted({cell for cell, _, _ in places})
            if len(cells) == 1:
                where = (f"{len(places)} times in cell {cells[0]} (lines "
                         f"{_and(str(line) for _, _, line in places)})")
            else:
                where = f"in cells {_and(map(str, cells))}"
            mine = [(node, line) for cell, node, line in places
                    if cell == graded and first_line in _first_lines(node)]
            if not mine:        # a lambda or another function assigned to the name after them
                out.append(f"{name} is defined {where}, but what is graded is the "
                           f"{'lambda' if fn.__name__ == '<lambda>' else 'function'} that cell "
                           f"{graded} assigns to the name")
                continue
            node, line = mine[-1]
            stub = _stub_body(node)
            written = [(cell, other.lineno) for cell, other, _ in places
                       if _stub_body(other) is None]
            # a written one further down never ran: its cell raised before it
            skipped = sorted({cell for cell, at in written if (cell, at) > (graded, node.lineno)})
            if stub and skipped:
                out.append(f"{name} is defined {where}, and the definition that ran last (cell "
                           f"{graded}, line {line}) is an unfilled stub (its body is only "
                           f"{stub}), so that is the one graded: the written one in cell "
                           f"{_and(map(str, skipped))} never ran, because that cell raised an "
                           f"error before it (see the cell's error)")
            elif stub and written:
                out.append(f"{name} is defined {where}, and the definition that ran last (cell "
                           f"{graded}, line {line}) is an unfilled stub (its body is only "
                           f"{stub}), so that is the one graded, not the written one: delete "
                           f"the stub, or move it above the solution")
            else:
                out.append(f"{name} is defined {where}; the one graded is the definition that "
                           f"ran last (cell {graded}, line {line})")
        return out

    def _replaced_by_import(self, names):
        """(name, cell defining it, later cell taking selfattn's over it), 1-based, for each of
        `names` that a cell defines (one that ran without error) before a `from selfattn import`
        (of `*` or of the name, parenthesised over lines too) or an assignment to the name, in
        a later cell or further down the same one."""
        raised = {e.cell for e in self.errors}
        for name in names:
            define = re.compile(rf"^[ \t]*def[ \t]+{name}[ \t]*\(", re.M)
            take = re.compile(rf"^[ \t]*(from[ \t]+selfattn[ \t]+import[ \t]*(\*|\([^)]*\b{name}\b"
                              rf"|[^\n]*\b{name}\b)|{name}[ \t]*=[^=])", re.M)
            defined = [(i, m.start()) for i, src in enumerate(self._sources, 1)
                       if i not in raised for m in define.finditer(src)]
            taken = [(i, m.start()) for i, src in enumerate(self._sources, 1)
                     for m in take.finditer(src)]
            if defined and taken and max(taken) > max(defined):
                yield name, max(defined)[0], max(taken)[0]

    def __getattr__(self, name):
        namespace = self.__dict__.get("namespace", {})
        file = os.path.basename(self.__dict__.get("path", "?"))
        if name in self.__dict__.get("borrowed", ()):
            # as in `functions`: a grader's `student.softmax_attention_weights(...)` must not
            # grade selfattn against itself
            used = self.__dict__["_uses"][name]
            raise AttributeError(f"{file} does not define {name!r}: its {name} is selfattn's own "
                                 + ("(imported from selfattn, not written in the notebook)"
                                    if used == _IMPORTED else f"(it calls selfattn's {used})"))
        if name in namespace:
            return namespace[name]
        # (its own attributes first: a copy or a pickle calls this before __init__ ran)
        typo = self._typo(name) if "namespace" in self.__dict__ and not name.startswith("_") else ""
        raise AttributeError(f"{file} does not define {name!r}" + (f" ({typo})" if typo else ""))

    def __repr__(self):
        return (f"<Submission {os.path.basename(self.path)}: {self.n_cells} cells, defines "
                f"{', '.join(self.functions) or 'none of the functions'}"
                f"{f', {len(self.errors)} cell(s) raised' if self.errors else ''}>")


_IMPORTED = "(imported)"


def _cell_of(fn, name):
    """(cell, line) where `fn`, graded as `name`, was defined (1-based; the cell's number from
    the name _run_cell compiles it under); None for a function from elsewhere (a %run file, an
    import) or under another name."""
    for _ in range(100):        # through decorators' wrappers (functools.wraps, lru_cache)
        if not hasattr(fn, "__wrapped__"):
            break
        fn = fn.__wrapped__
    code = getattr(fn, "__code__", None)
    match = re.fullmatch(r"<.* cell (\d+)>", getattr(code, "co_filename", ""))
    if not match or code.co_name not in (name, "<lambda>"):  # a decorator's wrapper, say
        return None
    return int(match.group(1)), code.co_firstlineno


def _definitions(sources, name):
    """(cell, ast.FunctionDef, its line as the cell shows it) for each `def name` of the cells'
    module level (inside an `if`, `try`, `with` or loop too, not inside a function or class),
    in order. The node's own line numbers are those of the code that ran, which a cell magic
    (`%%time`) shifts."""
    found = []
    for cell, source in enumerate(sources, 1):
        code = _strip_magics(source, [])
        try:
            tree = ast.parse(code or "")
        except SyntaxError:
            continue
        # _run_cell compiles a %%time cell's body from its first line on, and so numbers its
        # lines (the function's first line); the learner counts the cell's lines
        shift = source.count("\n") - (code or "").count("\n")
        pending = list(tree.body)
        while pending:
            node = pending.pop(0)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
                found.append((cell, node, node.lineno + shift))
            elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                pending[:0] = [child for field in ("body", "orelse", "finalbody", "handlers")
                               for child in getattr(node, field, ()) or ()
                               if isinstance(child, ast.AST)]
    return found


def _first_lines(node):
    """The lines a function's code may say it starts at: its `def`, or its first decorator."""
    return {node.lineno, *(d.lineno for d in node.decorator_list[:1])}


def _stub_body(node):
    """How a definition's body is a stub, in words (`pass`, `...`, `raise NotImplementedError`,
    a bare `return`, a template's `scores = None  # YOUR CODE HERE` and its `return scores`), or
    None for a body that does something."""
    words = []
    placeholders = set()    # the names the body has set to None or ... and to nothing else
    for statement in node.body:
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            if statement.value.value is Ellipsis:
                words.append("`...`")
            continue       # a docstring
        if isinstance(statement, ast.Pass):
            words.append("`pass`")
        elif (isinstance(statement, ast.Raise) and statement.exc is not None
              and "NotImplementedError" in ast.unparse(statement.exc)):
            words.append("`raise NotImplementedError`")
        elif isinstance(statement, ast.Return) and (
                statement.value is None or _is_placeholder(statement.value, placeholders)):
            shown = _unparenthesised(statement.value) if statement.value is not None else ""
            words.append(f"`return {shown}`".replace(" `", "`"))
        elif (isinstance(statement, (ast.Assign, ast.AnnAssign)) and statement.value is not None
              and _is_placeholder(statement.value, set())
              and all(_names(t) for t in _targets(statement))):
            # `scores = None`, `output, weights = None, None`, `scores: np.ndarray = None`
            placeholders.update(n for t in _targets(statement) for n in _names(t))
            words.append(f"`{ast.unparse(statement)}`" if isinstance(statement, ast.AnnAssign)
                         else "`" + " = ".join(map(_unparenthesised, [*statement.targets,
                                                                      statement.value])) + "`")
        else:
            return None
    return _and(dict.fromkeys(words)) if words else "a docstring"


def _unparenthesised(node):
    """A node's code as a learner writes it: `a, b`, where ast.unparse gives `(a, b)`."""
    if isinstance(node, ast.Tuple) and node.elts:
        return ", ".join(map(ast.unparse, node.elts))
    return ast.unparse(node)


def _targets(assignment):
    return assignment.targets if isinstance(assignment, ast.Assign) else [assignment.target]


def _names(target):
    """The names a target of plain names binds (`a`, `a, b`), or [] for any other target."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, ast.Tuple) and all(isinstance(t, ast.Name) for t in target.elts):
        return [t.id for t in target.elts]
    return []


def _is_placeholder(value, placeholders):
    """Whether the expression `value` is None, `...`, one of the names in `placeholders`, or a
    tuple of these (`return output, weights` of a template's two Nones)."""
    if isinstance(value, ast.Constant):
        return value.value is None or value.value is Ellipsis
    if isinstance(value, ast.Name):
        return value.id in placeholders
    return isinstance(value, ast.Tuple) and all(_is_placeholder(v, placeholders)
                                                for v in value.elts)


def _and(words):
    words = list(words)
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else "".join(words)
# Where installed libraries live (NumPy's functions are no learner's code to read)
_LIBRARIES = tuple(os.path.realpath(p) + os.sep for p in {
    sys.prefix, sys.base_prefix, *(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib",
                                                                     "purelib", "platlib"))})


def _is_selfattns(obj):
    """Whether `obj` is selfattn (a module of it, a function, a partial of one); the loader's own
    stand-ins in the cells' namespace (display, get_ipython, %run's helper) are not."""
    if isinstance(obj, types.ModuleType):
        return obj.__name__.split(".")[0] == "selfattn"
    try:   # functools.partial(selfattn.softmax_attention_weights)
        obj = obj.func if isinstance(obj, functools.partial) else obj
        module = str(getattr(obj, "__module__", "") or "")
    except Exception:  # noqa: BLE001 -- a learner's object whose attributes raise
        return False
    return module.split(".")[0] == "selfattn" and module != __name__


def _global_loads(code):
    """(name, attribute or None) for each global name `code` and the functions defined in it
    read, with the attribute read from it next (`sa.softmax_attention_weights`). Not co_names,
    which holds attribute names as well (`np.testing` would be a global `testing`)."""
    loads, codes = [], [code]
    while codes:
        c = codes.pop()
        codes += [k for k in c.co_consts if isinstance(k, types.CodeType)]
        instructions = list(dis.get_instructions(c))
        for here, after in zip(instructions, instructions[1:] + [None]):
            if here.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
                attr = (after.argval if after is not None
                        and after.opname in ("LOAD_ATTR", "LOAD_METHOD") else None)
                loads.append((here.argval, attr))
    return loads


def _selfattn_used(fn, seen):
    """What of selfattn's `fn` is or uses: _IMPORTED where it is selfattn's own; else the
    name, as the learner's code spells it, of the selfattn function or module that its code, or
    the code of the learner's functions it calls (the cells', a %%writefile or %run file's, a
    module beside the notebook's), reads; else "". Read from the code, not run: a name read in a
    branch not taken counts too."""
    if _is_selfattns(fn):
        return _IMPORTED
    code = getattr(fn, "__code__", None)
    if not isinstance(code, types.CodeType) or id(fn) in seen:
        return ""
    seen.add(id(fn))
    if not code.co_filename.startswith("<") and \
            os.path.realpath(code.co_filename).startswith(_LIBRARIES):
        return ""
    scope = getattr(fn, "__globals__", None) or {}
    for name, attr in dict.fromkeys(_global_loads(code)):
        if name not in scope:   # a builtin
            continue
        value = scope[name]
        if isinstance(value, types.ModuleType) and _is_selfattns(value):
            return f"{name}.{attr}" if attr else f"functions (the module {name})"
        if _is_selfattns(value):
            real = getattr(getattr(value, "func", value), "__name__", name)
            return real if real == name else f"{real} (as {name})"
        if isinstance(value, types.FunctionType):
            used = _selfattn_used(value, seen)
            if used:
                return f"{used} (through {name})" if used != _IMPORTED else name
    return ""


def _script_text(path):
    """A script's text, read as Python reads it (its coding line, a BOM); ValueError, saying why
    and what to do, for one Python cannot read (a cp1252 `é` from a Windows editor)."""
    try:
        with tokenize.open(path) as f:
            return f.read()
    except UnicodeDecodeError as exc:
        with open(path, "rb") as f:
            line = f.read(exc.start).count(b"\n") + 1
        raise ValueError(
            f"{path} is not UTF-8 text, which Python reads a script as: byte "
            f"0x{exc.object[exc.start]:02x} on line {line} cannot be read ({exc.reason}); save "
            f"it as UTF-8 (or name its encoding on its first line: # -*- coding: cp1252 -*-)"
        ) from None
    except SyntaxError as exc:   # a coding line naming no encoding Python has
        raise ValueError(f"{path} cannot be read as Python: {exc.msg}") from None


def _notebook_cells(path):
    """The source of each code cell of a notebook file (nbformat 4, or 3); ValueError, saying
    why, for a file that is no notebook."""
    try:
        with open(path, encoding="utf-8-sig") as f:   # (a BOM, which some editors write)
            text = f.read()
        nb = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:   # (UnicodeDecodeError is a ValueError)
        raise ValueError(_not_a_notebook(path, text if isinstance(exc, json.JSONDecodeError)
                                         else "", exc)) from None
    except RecursionError:
        raise ValueError(f"{path} is not a notebook (JSON nested too deeply to read)") from None
    cells = nb.get("cells") if isinstance(nb, dict) else None
    if cells is None and isinstance(nb, dict):  # nbformat 3: cells in worksheets, code in "input"
        worksheets = nb.get("worksheets")
        if isinstance(worksheets, list) and all(isinstance(ws, dict)
                                                and isinstance(ws.get("cells", []), list)
                                                for ws in worksheets):
            cells = [c for ws in worksheets for c in ws.get("cells", [])]
    if not (isinstance(cells, list) and all(isinstance(c, dict) for c in cells)):
        what = {dict: "an object without a list of cells", list: "a list", str: "a string",
                type(None): "null", bool: "true or false"}.get(type(nb), "a number")
        raise ValueError(f"{path} is not a notebook (JSON, but {what})")
    sources = []
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        src = cell.get("source", cell.get("input", ""))
        sources.append("".join(map(str, src)) if isinstance(src, list) else str(src))
    return sources


def _not_a_notebook(path, text, exc):
    """Why a .ipynb file whose text (JSON's, or "") could not be read is not a notebook: git's
    merge-conflict markers, which a merge of two versions leaves in the file, said as such."""
    marker = re.search(r"^(?:<<<<<<<|>>>>>>>)(?:[ \t].*)?$", text, re.M)
    if marker:
        line = text.count("\n", 0, marker.start()) + 1
        return (f"{path} is not a notebook: it holds unresolved merge-conflict markers "
                f"({marker.group(0).strip()!r} on line {line}), which git leaves where two "
                f"versions of the file were merged; keep one version of each conflict, delete "
                f"the marker lines, and check that the notebook opens in Jupyter")
    if isinstance(exc, UnicodeDecodeError):
        return f"{path} is not a notebook (not UTF-8: {exc})"
    if not text.strip():
        return f"{path} is not a notebook (the file is empty)"
    return f"{path} is not a notebook (not JSON: {exc})"


def _script_cells(text):
    """A .py file's text split at its cell markers (``# In[3]:`` from nbconvert, ``# %%``)."""
    lines = text.splitlines(keepends=True)
    cells, current = [], []
    for line in lines:
        if _PY_CELL_MARKER.match(line) and current:
            cells.append("".join(current))
            current = []
        current.append(line)
    if current:
        cells.append("".join(current))
    # nbconvert's header (`#!/usr/bin/env python`, `# coding: utf-8`) or jupytext's (`# ---`)
    # is no cell of the notebook's: without it, the cells keep the notebook's numbers
    if len(cells) > 1 and all(not line.strip() or line.lstrip().startswith("#")
                              for line in cells[0].splitlines()):
        del cells[0]
    return cells


def _as_in_the_notebook(source):
    """A script's cell in the form the notebook had, so that it runs as the notebook's cell does;
    None for a cell that is not code. nbconvert writes a cell magic as ``get_ipython().
    run_cell_magic('writefile', 'attention.py', '...')``; jupytext comments magics out
    (``# %%writefile attention.py``), writes ``%%bash`` cells as ``# %% language="bash"`` and
    markdown cells as ``# %% [markdown]``."""
    first, _, rest = source.partition("\n")
    if _PERCENT_MARKER.match(first):
        if re.search(r"\[(?:markdown|md|raw)\]", first):
            return None
        language = re.search(r'\blanguage="([^"]+)"', first)
        if language:    # a cell magic whose body is not Python
            return f"%%{language.group(1)}\n"
        return "\n".join(_COMMENTED_MAGIC.sub(r"\1\2", line) for line in rest.split("\n"))
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return source
    call = body[0].value if len(body) == 1 and isinstance(body[0], ast.Expr) else None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
            and call.func.attr == "run_cell_magic" and ast.unparse(call.func.value) == "get_ipython()"
            and len(call.args) == 3 and not call.keywords
            and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in call.args)):
        return source
    magic, line, cell = (a.value for a in call.args)
    return f"%%{magic} {line}".rstrip() + "\n" + cell


def _timed_statement(line):
    """The statement of a `%time statement` line (either form), with its indent; else None."""
    match = _TIME_LINE.match(line)
    if not match:
        return None
    if match.group(2) is not None:
        return match.group(1) + match.group(2)
    try:
        statement = ast.literal_eval(match.group(4))
    except (ValueError, SyntaxError):
        return None
    return match.group(1) + statement if isinstance(statement, str) else None


def _run_options(args):
    """The parts of a ``%run`` line's arguments (after ``%run``): (flags, repeats, module, rest),
    where rest is [file, args...], or the script's args after ``-m module``; None for a line
    this loader does not run as IPython would: options other than -i -n -e -t -G -N<n> and -m
    (the debugger's, the profiler's), and ``$name`` or ``{expr}``, which IPython fills in from
    the namespace."""
    if "$" in args or "{" in args:
        return None
    try:
        tokens = shlex.split(args, posix=os.name == "posix")
    except ValueError:  # an unclosed quote
        return None
    if os.name != "posix":  # Windows' rule, as IPython there: double quotes group, and go
        tokens = [t[1:-1] if len(t) > 1 and t[0] == t[-1] == '"' else t for t in tokens]
    flags, repeats = set(), 1
    while tokens and tokens[0].startswith("-") and len(tokens[0]) > 1:
        token = tokens.pop(0)
        if token == "-m":
            return (flags, repeats, tokens[0], tokens[1:]) if tokens else None
        body = token[1:]
        if body.startswith("N") and body[1:].isdigit() or body == "N" and tokens[:1] \
                and tokens[0].isdigit():
            repeats = int(body[1:] or tokens.pop(0))
            continue
        if not set(body) <= set("inetG"):
            return None
        flags |= set(body)
    return (flags, repeats, None, tokens) if tokens else None


def _run_statement(line):
    """A ``%run`` line (either form) as the call that runs it, with the line's indent; else
    None (the line is then skipped, as other magics are)."""
    match = _RUN_LINE.match(line)
    if not match:
        return None
    args = match.group(2)
    if args is None:
        try:
            args = ast.literal_eval(match.group(4))
        except (ValueError, SyntaxError):
            return None
        if not isinstance(args, str):
            return None
    if _run_options(args) is None:
        return None
    return f"{match.group(1)}{_RUN_HELPER}({args!r})"


class _RunMagic:
    """IPython's ``%run``, for a submission's cells (the call _run_statement puts in a %run
    line's place). As in IPython: the file runs in a namespace of its own as ``__main__`` (with
    ``-n``, as its module's name; with ``-i``, in the cells' namespace), ``sys.argv`` is the file
    and its arguments (wildcards expanded unless ``-G``), and what it defines then joins the
    cells' namespace (all but ``__name__`` and ``__file__``); a file it does not find stops
    the cell (FileNotFoundError). An error in the file does not stop the cell, as in IPython
    (which prints it): the names defined before it still join, and it is recorded in `errors`
    for the cell, as is a ``sys.exit()`` with an error status (not with ``-e``). ``-t`` runs
    the file untimed, ``-N<n>`` times; ``-m module`` runs the module's file.

    A relative file name is looked for among the files the run's %%writefile cells wrote, then
    beside the notebook (Jupyter runs a notebook in its folder), then in the working folder;
    ``name`` without ``.py`` also as ``name.py``, as in IPython."""

    def __init__(self, path, namespace, written, errors):
        self.folder = os.path.dirname(os.path.abspath(path))
        self.namespace, self.written, self.errors = namespace, written, errors
        self.cell = 0  # the cell running (set by _run_cells)

    def __call__(self, args):
        flags, repeats, module, rest = _run_options(args)
        if module is not None:
            path, shown, argv = self._module_file(module, args), module, rest
        else:
            (path, shown), argv = self._find(rest[0], args), rest[1:]
        if "G" not in flags:
            argv = [m for a in argv for m in (sorted(glob.glob(a)) or [a])]
        ns = self.namespace if "i" in flags else {}
        saved = {k: ns[k] for k in ("__name__", "__file__") if k in ns}
        ns["__name__"] = ("__main__" if "n" not in flags or "i" in flags
                          else os.path.splitext(os.path.basename(path))[0])
        ns["__file__"] = path
        saved_argv, sys.argv = sys.argv, [shown] + argv
        try:
            for _ in range(repeats):
                if not self._execute(path, ns, args, flags):
                    break
        finally:
            sys.argv = saved_argv
            if ns is self.namespace:
                ns.pop("__file__", None)   # (the file may have deleted it)
                ns.update(saved)
            else:
                self.namespace.update((k, v) for k, v in ns.items()
                                      if k not in ("__name__", "__file__"))

    def _execute(self, path, ns, args, flags):
        """One run of the file; False where it failed (recorded)."""
        try:
            with tokenize.open(path) as f:
                code = compile(f.read(), path, "exec", dont_inherit=True)
            exec(code, ns)
            return True
        except SystemExit as exc:
            if exc.code not in (None, 0) and "e" not in flags:
                self._record(f"SystemExit: {exc.code}", args, path, exc)
            return False
        except Exception as exc:  # as IPython: shown, and the cell goes on
            text = str(exc).strip()
            self._record(f"{type(exc).__name__}: {text}" if text else type(exc).__name__, args,
                         path, exc)
            return False

    def _record(self, error, args, path, exc):
        where = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
        name = os.path.basename(path)
        if where:
            detail = f" ({name} line {where[-1].lineno}: {(where[-1].line or '').strip()})"
        elif isinstance(exc, SyntaxError) and exc.filename == path:
            detail = f" ({name} line {exc.lineno}: {(exc.text or '').strip()})"
        else:
            detail = ""
        self.errors.append(CellError(self.cell, error, f"%run {args}{detail}"))

    def _find(self, name, args):
        name = os.path.expanduser(name)
        bases = [self.written.folder] if self.written.folder else []
        bases += [self.folder, os.getcwd()]
        for candidate in [name] + ([] if name.endswith(".py") else [name + ".py"]):
            for base in bases:
                path = os.path.join(base, candidate)  # candidate itself, where it is absolute
                if os.path.isfile(path):
                    return os.path.abspath(path), candidate
        raise FileNotFoundError(f"%run {args}: no file {name!r} (looked among the files the "
                                f"notebook's %%writefile cells wrote, beside the notebook and in "
                                f"the working folder)")

    def _module_file(self, module, args):
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.submodule_search_locations is not None:
            main = importlib.util.find_spec(module + ".__main__")
            spec = main if main is not None else spec
        origin = getattr(spec, "origin", None)
        if not origin or not origin.endswith(".py") or not os.path.isfile(origin):
            raise ModuleNotFoundError(f"%run {args}: no module {module!r} with a Python file to "
                                      f"run")
        return origin


def _shown_line(line):
    """A cell's line as the learner wrote it: a %run line for _run_statement's call."""
    match = _RUN_CALL.match(line)
    if match:
        with contextlib.suppress(ValueError, SyntaxError):
            return f"%run {ast.literal_eval(match.group(1))}"
    return line


def _strip_magics(source, skipped):
    """The cell's Python, with magic and shell lines replaced by `pass` (same line numbers), or
    None for a cell that is not Python at all (%%bash and the like)."""
    stripped = source.lstrip()
    if stripped.startswith("%%"):
        first = stripped.split("\n", 1)
        skipped.append(first[0].strip())
        if not first[0].split()[0] in _PYTHON_CELL_MAGICS:
            return None
        source = first[1] if len(first) > 1 else ""
    out = []
    complete = 0  # out[:complete] ends a statement: only the lines after it are read again
    for line in source.split("\n"):
        m = _MAGIC_LINE.match(line) or _IPYTHON_CALL.match(line) or _HELP_LINE.match(line)
        if m and not line.strip().startswith(("%=", "!=")) and not _continues(out[complete:]):
            complete = len(out) + 1
            run = _run_statement(line)
            if run is None:
                skipped.append(line.strip())
            line = run or _timed_statement(line) or f"{m.group(1)}pass"
        out.append(line)
    return "\n".join(out)


def _continues(lines):
    """Whether the next line continues a statement of these (an open bracket, a backslash, a
    triple-quoted string), so that `% 3` there is the modulo operator or text, not a magic."""
    if not lines:
        return False
    try:
        for _ in tokenize.generate_tokens(io.StringIO("\n".join(lines) + "\n").readline):
            pass
    except (tokenize.TokenError, SyntaxError):  # "EOF in multi-line statement"
        return True
    return False


class _WrittenFiles:
    """The files a submission's %%writefile cells write, in a folder of the run's own that is
    first on sys.path while its cells run. On leaving: the folder, its place on sys.path and the
    modules imported from it are removed, and any module of the same name imported before the
    run (another submission's, the grader's own) is put back."""

    def __init__(self):
        self.folder = None
        self.hidden = {}

    def __enter__(self):
        return self

    def take(self, source, skipped):
        """Whether `source` is a %%writefile cell; if it is, its file is written (or refused,
        noted in `skipped`)."""
        first, _, body = source.lstrip().partition("\n")
        match = _WRITEFILE.match(first.strip())
        if not match:
            return False
        name = match.group(2).strip("'\"")
        if self.folder is None:
            self.folder = tempfile.mkdtemp(prefix="selfattn-submission-")
            sys.path.insert(0, self.folder)
        target = os.path.normpath(os.path.join(self.folder, name))
        if os.path.isabs(name) or not target.startswith(self.folder + os.sep):
            skipped.append(f"{first.strip()} (not written: a file outside the notebook's folder)")
            return True
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not body.endswith("\n"):    # IPython ends every cell with one (Jupyter saves a
            body += "\n"               # cell without): an appended cell starts a new line
        with open(target, "a" if match.group(1) else "w", encoding="utf-8") as f:
            f.write(body)
        module = os.path.basename(target)[:-3] if target.endswith(".py") else None
        if module and module in sys.modules and not self._written(sys.modules[module]):
            self.hidden[module] = sys.modules.pop(module)
        importlib.invalidate_caches()  # a file written after the folder was last listed
        return True

    def _written(self, module):
        where = getattr(module, "__file__", None) or ""
        return self.folder is not None and os.path.abspath(where).startswith(self.folder + os.sep)

    def __exit__(self, *exc):
        if self.folder is None:
            return
        for name in [n for n, m in list(sys.modules.items()) if self._written(m)]:
            del sys.modules[name]
        sys.modules.update(self.hidden)
        with contextlib.suppress(ValueError):
            sys.path.remove(self.folder)
        shutil.rmtree(self.folder, ignore_errors=True)


def _display(*objs, **kwargs):
    """IPython's display(), as text: a notebook calls it without importing it."""
    for obj in objs:
        print(repr(obj))


class _Output(io.StringIO):
    """What the cells print. A cell's sys.stdout.close() closes nothing, so the output so far is
    kept (and the submission loaded: a closed StringIO has no value to give)."""

    def close(self):
        pass


def _get_ipython():
    """IPython's get_ipython() where no IPython shell runs (the cells run without a kernel), as
    IPython.get_ipython() answers then: None. So `ip = get_ipython()` and Colab's test
    `'google.colab' in str(get_ipython())` run; a call of its methods is a magic (skipped)."""
    return None


def _try_ranges(code):
    """The (first, last) bytecode offsets of `code` that a handler which may catch covers (a try
    body, a with body: its handler starts with PUSH_EXC_INFO; an except clause's own cleanup,
    which only re-raises, is not one), from the exception table of Python 3.11 and later; None
    before 3.11, whose blocks no table tells."""
    if code in _TRY_RANGES:
        return _TRY_RANGES[code]
    parse = getattr(dis, "_parse_exception_table", None)
    push = dis.opmap.get("PUSH_EXC_INFO")
    ranges = None
    if parse is not None and push is not None:
        try:
            raw = code.co_code
            ranges = tuple((e.start, e.end) for e in parse(code)
                           if e.target < len(raw) and raw[e.target] == push)
        except Exception:  # noqa: BLE001 -- a private helper of dis: none is no error
            ranges = None
    if len(_TRY_RANGES) > 256:      # (only while a caught stop is traced: a few codes)
        _TRY_RANGES.clear()
    _TRY_RANGES[code] = ranges
    return ranges


_TRY_RANGES: dict = {}   # code object: its ranges (or None)


def _in_a_try(code, offset):
    """Whether the instruction at `offset` of `code` runs inside a try (or with) block."""
    ranges = _try_ranges(code)
    return bool(ranges) and any(first <= offset <= last for first, last in ranges)


class _CellTimedOut(BaseException):
    """Raised in a cell that ran past load_notebook's timeout: args (the cell's file name, the
    seconds). A BaseException: a cell's `except Exception` does not keep it running."""


# Seconds beyond which a timeout is no limit (setitimer's range ends near 9e9 s)
_NO_LIMIT = 1e8


def _time_limit_available(func, timeout):
    """`timeout` (None, or seconds > 0) checked, where a cell can be stopped: a timer's signal
    interrupts the main thread only, and Windows has no such timer."""
    if timeout is None:
        return None
    if isinstance(timeout, (bool, np.bool_)) or not isinstance(timeout, numbers.Real) \
            or not timeout > 0 or math.isnan(timeout):
        raise ValueError(f"{func}: timeout must be a number of seconds > 0, or None, got "
                         f"{timeout!r}")
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        # a warning, not an error: the same grader file runs on a teacher's Windows machine
        warnings.warn(f"{func}: timeout={timeout!r} is not applied here: it stops a cell with a "
                      f"timer signal, which needs the main thread of a process on Linux or "
                      f"macOS; the cells run without a time limit (`python -m selfattn grade` "
                      f"has one everywhere: it stops a submission's own process)",
                      RuntimeWarning, stacklevel=3)
        return None
    return None if float(timeout) >= _NO_LIMIT else float(timeout)


@contextlib.contextmanager
def _cell_time_limit(filename, seconds):
    """Stops the cell `filename` (raising _CellTimedOut in it) once it has run `seconds`, and
    every 0.25 s after, should it catch that. The caller's own timer (pytest-timeout's) keeps its
    deadline: the timer is armed for whichever comes first, the caller's handler runs at the
    caller's, and both are put back after, with what is left of the caller's."""
    if seconds is None:
        yield
        return
    start = time.monotonic()
    cell_due = start + seconds
    left, interval = signal.getitimer(signal.ITIMER_REAL)
    caller = {"due": start + left if left else None, "interval": interval}

    def on_line(frame, event, arg):
        # a cell that caught the stop (`while True: try: time.sleep(1) except: pass`, the signal
        # landing in the sleep each time) is stopped at its next line instead: that of the loop,
        # outside the try, or one of its except clause, which the try does not cover. Never in
        # `stop` itself, the next time the timer fires (a new frame, so traced): raised there,
        # the stop landed in the sleep again, caught, and a trace function that raises is
        # switched off until the next
        if frame.f_code.co_filename == __file__:
            return None
        # not at a line a try covers: raised there, the student's `except` caught it again
        # (`try: time.sleep(1); z = 1 except: pass` ran forever), and a trace function that
        # raises is switched off. The next line outside every try (the loop's, or one of the
        # except clause) comes soon enough
        if event == "line" and not _in_a_try(frame.f_code, frame.f_lasti):
            raise _CellTimedOut(filename, seconds)
        return on_line

    def stop(signum, frame):
        now = time.monotonic()
        if caller["due"] is not None and now >= caller["due"] - 1e-3:
            caller["due"] = None        # the caller's deadline: its handler, then ours again
            signal.setitimer(signal.ITIMER_REAL, max(cell_due - now, 1e-3), 0.25)
            if callable(previous):      # (untraced: a line of its own would stop the cell)
                traced = sys.gettrace()
                sys.settrace(None)
                try:
                    previous(signum, frame)
                finally:
                    sys.settrace(traced)
            return
        # only in the cell (its code is on the stack): not in ours, after it has returned
        stack, cell = [], False
        while frame is not None and not cell:
            stack.append(frame)
            cell = frame.f_code.co_filename == filename
            frame = frame.f_back
        if not cell:
            return
        stops["count"] += 1
        if stops["count"] == 1:
            raise _CellTimedOut(filename, seconds)
        for f in stack:         # caught: from now on, every line of the cell's code stops it
            f.f_trace = on_line
        sys.settrace(on_line)

    stops = {"count": 0}
    tracing = sys.gettrace()
    previous = signal.signal(signal.SIGALRM, stop)
    try:
        first = min(seconds, left) if left else seconds
        signal.setitimer(signal.ITIMER_REAL, first, 0.25)
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if stops["count"] > 1:
            sys.settrace(tracing)
        if caller["due"] is not None:
            signal.setitimer(signal.ITIMER_REAL, max(caller["due"] - time.monotonic(), 1e-3),
                             caller["interval"])
        elif left and caller["interval"]:   # it fired meanwhile and repeats
            signal.setitimer(signal.ITIMER_REAL, caller["interval"], caller["interval"])


def _run_cells(path, sources, notes=(), timeout=None):
    namespace = {"__name__": "__main__", "__file__": os.path.abspath(path), "display": _display,
                 "get_ipython": _get_ipython}
    errors, skipped, notes = [], [], list(notes)
    captured = _Output()
    with _WrittenFiles() as written, _in_folder_of(path), _settings_kept(), \
            _frontend_quiet(_display), _LibrariesKept() as libraries:
        run = namespace[_RUN_HELPER] = _RunMagic(namespace["__file__"], namespace, written,
                                                 errors)
        for number, source in enumerate(sources, 1):
            run.cell = number
            if not written.take(source, skipped):
                _run_cell(path, number, source, namespace, errors, skipped, captured, timeout)
            libraries.look(number)
    notes += libraries.notes()
    output = captured.getvalue()
    if len(output) > _OUTPUT_LIMIT:
        output = output[:_OUTPUT_LIMIT] + f"\n... ({len(output) - _OUTPUT_LIMIT} more characters)"
    return Submission(path, namespace, errors, skipped, output, len(sources), notes, sources)


@contextlib.contextmanager
def _in_folder_of(path):
    """The cells run in the notebook's folder, as Jupyter runs them (and grade's process for a
    submission): `open("data.csv")` finds the file beside it and `import helpers` the module.
    After the run the caller's working folder is put back (a cell's own os.chdir() included),
    sys.path loses every entry inside the notebook's folder (ours, and a cell's
    `sys.path.append(os.path.abspath(""))`, which left the student's folder there: the next
    student without a helpers.py was graded with this one's), and the modules imported from
    there (a namespace package's too) leave sys.modules, so the next notebook loaded never gets
    this one's `helpers`. What the cells put on sys.path outside the folder (a course's library,
    `sys.path.append("../lib")`) stays, as an absolute path, with its modules: the functions the
    notebook defines may import from it when called. Entries the cells removed come back, and
    the modules of a folder inside the notebook's that was on sys.path before the run (a
    virtualenv beside the notebook) stay imported."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        caller = os.getcwd()
    except OSError:   # the caller's folder was removed: nothing to go back to
        caller = None
    before, path_before = set(sys.modules), list(sys.path)
    with contextlib.suppress(OSError):
        os.chdir(folder)
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        # (a relative entry, "" or "../lib", names a folder from where the cells ran)
        kept = []
        for entry in sys.path:
            if isinstance(entry, str) and entry not in path_before:
                absolute = os.path.abspath(os.path.join(folder, entry))
                if not _within(absolute, folder) and absolute not in kept + path_before:
                    kept.append(absolute)
        sys.path[:] = path_before + kept
        # (the caller's entries, relative to the caller's folder)
        own = [os.path.abspath(os.path.join(caller or folder, p)) for p in path_before
               if isinstance(p, str)]
        others = [p for p in own if _within(p, folder) and p != folder]
        for name in [n for n in list(sys.modules) if n not in before]:
            module = sys.modules[name]
            where = getattr(module, "__file__", None)
            places = ([where] if isinstance(where, str) else
                      [p for p in getattr(module, "__path__", None) or () if isinstance(p, str)])
            if any(_within(os.path.abspath(p), folder)
                   and not any(_within(os.path.abspath(p), o) for o in others) for p in places):
                del sys.modules[name]
        if caller is not None:
            with contextlib.suppress(OSError):
                os.chdir(caller)


def _within(path, folder):
    """Whether `path` is `folder` or inside it (both absolute)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _run_cell(path, number, source, namespace, errors, skipped, captured, timeout=None):
    """Runs one code cell in `namespace`, past its magics; a failure is recorded in `errors`,
    as is a run past `timeout` seconds."""
    code = _strip_magics(source, skipped)
    if code and code.strip():
        filename = f"<{os.path.basename(path)} cell {number}>"
        # Tracebacks and check's reports show the line of the cell that failed.
        linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
        try:
            compiled = compile(code, filename, "exec")
            with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured), \
                    _cell_time_limit(filename, timeout):
                exec(compiled, namespace)
        except _CellTimedOut as exc:
            if exc.args[0] != filename:     # a load_notebook's, in which this one was called
                raise
            frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
            line = _shown_line(frames[-1].line.strip()) if frames and frames[-1].line else ""
            errors.append(CellError(number, f"TimeoutError: the cell ran past timeout="
                                            f"{exc.args[1]:g} s and was stopped", line))
        except Exception as exc:  # the learner's cell fails: record it, run the next one
            frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
            line = _shown_line(frames[-1].line.strip()) if frames and frames[-1].line else ""
            if isinstance(exc, SyntaxError):
                line = (exc.text or "").strip()
                if re.match(r"(?:<<<<<<<|=======|>>>>>>>)(?:\s|$)", line):
                    exc.msg = (f"{exc.msg} (a merge-conflict marker that git left in the cell: "
                               f"keep one version and delete the marker lines)")
            text = str(exc).strip()
            if isinstance(exc, EOFError) and "input(" in line:
                text += " (input() gets no answer while a notebook is loaded)"
            if isinstance(exc, NameError):
                text += _set_by_a_skipped_line(text, skipped)
            errors.append(CellError(number, f"{type(exc).__name__}: {text}" if text
                                    else type(exc).__name__, line))
        except SystemExit:  # sys.exit() in a cell ends that cell, as in Jupyter
            errors.append(CellError(number, "SystemExit: the cell called sys.exit()"))


def _set_by_a_skipped_line(message, skipped):
    """For a NameError's message, the skipped magic or shell line that would have set the name
    (`files = !ls`), in words; else ""."""
    match = re.search(r"name '(\w+)' is not defined", message)
    if not match:
        return ""
    name = match.group(1)
    for line in reversed(skipped):
        targets = re.match(r"^([\w., ]+?)\s*=\s*(?:[%!]|get_ipython\(\))", line)
        if targets and name in re.split(r"[\s,]+", targets.group(1)):
            return (f" ({name} was to be set by `{line}`, a magic or shell line, which does not "
                    f"run when a notebook is loaded or graded)")
    return ""


def load_notebook(path, *, timeout=None):
    """Run a notebook's code cells top to bottom in a fresh namespace and return what it defines.

    Magics and shell lines (``%``, ``%%``, ``!``) are skipped (a ``%%time`` cell's body and a
    ``%time`` line's statement still run, untimed), but a ``%%writefile`` cell
    writes its file, into a folder of the run's own that the later cells import from (removed
    after the run), and ``%run file`` runs a file as IPython does (its names join the cells';
    an error in it is recorded for its cell, which goes on, as in IPython); a cell that raises
    is recorded in ``.errors`` (cell number, error, line) and the next cells still run, and
    what the cells print is kept in ``.output``. The cells run in the notebook's folder, as in
    Jupyter (the working folder is put back after, as are NumPy's error handling, print options
    and global random state, the NumPy and math functions a cell replaced (``np.exp = ...``,
    named in ``.problems()``) and the warnings filters, which a cell may change; ``input()`` gets
    no answer: EOFError). Jupyter is not needed. The code runs in this
    process: for code you do not trust, use ``python -m selfattn grade``, which runs each
    submission in its own process with a time and a memory limit.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.ipynb`` file (a ``.py`` file is passed on to :func:`load_module`).
    timeout : float, optional
        Seconds each cell may run: one that runs longer (an infinite loop) is stopped, recorded
        as its error (``TimeoutError``, with the line it was at), and the next cells still run.
        None (default): no limit. It needs the main thread on Linux or macOS (a timer signal;
        the caller's own timer, pytest-timeout's, is put back after); elsewhere a
        RuntimeWarning says it is not applied. A cell that catches the stop (a bare ``except:``
        in its loop) is stopped at its next line outside a ``try`` (on Python 3.11 and later;
        before, at its next line), once the call it was in returns: a ``time.sleep(3600)``
        inside the ``try`` runs its hour. The functions it defines are not limited when
        called later (pytest-timeout limits those, in a test).

    Returns
    -------
    Submission
        ``.functions`` maps each notebook function it defines to the function, ``.missing``
        lists those it does not define, ``.problems()`` says what went wrong in words.

    Examples
    --------
    >>> import selfattn
    >>> sub = selfattn.testing.load_notebook("solution.ipynb")            # doctest: +SKIP
    >>> selfattn.testing.check(sub.softmax_attention_weights)            # doctest: +SKIP
    """
    path = os.fspath(path)
    timeout = _time_limit_available("load_notebook", timeout)
    if path.lower().endswith(".py"):   # HW.PY as hw.py
        return load_module(path, timeout=timeout)
    try:
        sources = _notebook_cells(path)
    except ValueError as exc:
        raise ValueError(f"load_notebook: {exc}") from None
    return _run_cells(path, sources, timeout=timeout)


def load_module(path, *, timeout=None):
    """Run a ``.py`` file as :func:`load_notebook` runs a notebook: split into cells at its
    ``# In[ ]:`` or ``# %%`` markers (one cell if it has none), with the magics nbconvert writes
    (``get_ipython().run_line_magic(...)``) skipped, a failing cell recorded and the next cells
    still run. The lines nbconvert writes for
    a cell magic (``get_ipython().run_cell_magic('writefile', 'attention.py', ...)``) and for
    ``%time`` and ``%run``, and the magics jupytext comments out (``# %%writefile
    attention.py``), run as the notebook's cells did; jupytext's markdown and raw cells are not code cells. jupytext's light
    format (``jupytext --to py``, cells without markers) is read by jupytext, where it is
    installed; otherwise as one cell, which ``.problems()`` says. ``timeout``: seconds each cell
    may run, as in :func:`load_notebook`. Returns a :class:`Submission`.
    """
    path = os.fspath(path)
    timeout = _time_limit_available("load_module", timeout)
    try:
        text = _script_text(path)
    except ValueError as exc:
        raise ValueError(f"load_module: {exc}") from None
    notes = []
    if _JUPYTEXT_HEADER.match(text) and not any(map(_PERCENT_MARKER.match, text.splitlines())):
        # jupytext's light format (its default for .py): cells told apart by blank lines and
        # `# +` / `# -`, by rules only jupytext itself knows
        try:
            import jupytext
            notebook = jupytext.reads(text, fmt="py")
        except ImportError:
            notes.append("jupytext's light format, read as one cell (with jupytext installed, "
                         "its cells run one by one, magics included)")
        except Exception as exc:  # noqa: BLE001 -- jupytext's own errors: a student's file
            notes.append(f"jupytext's light format, read as one cell (jupytext could not read "
                         f"it: {type(exc).__name__}: {exc})")
        else:
            return _run_cells(path, [c.source for c in notebook.cells if c.cell_type == "code"],
                              timeout=timeout)
    cells = (_as_in_the_notebook(cell) for cell in _script_cells(text))
    return _run_cells(path, [cell for cell in cells if cell is not None], notes, timeout)
