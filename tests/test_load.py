"""load_notebook / load_module: a submission runs cell by cell in a fresh namespace, past magics,
shell lines and failing cells, with its prints captured, and without Jupyter."""
import json
import os
import subprocess
import sys
import tempfile
import types

import numpy as np
import pytest

import submissions
from selfattn.testing import CellError, check, load_module, load_notebook


def _notebook(tmp_path, cells, name="nb.ipynb"):
    path = tmp_path / name
    path.write_text(json.dumps(submissions.notebook_json(cells)))
    return path


def test_magics_shell_lines_prints_and_a_failing_cell(tmp_path):
    path = _notebook(tmp_path, [
        "%matplotlib inline\nimport numpy as np\n",
        "!pip list\nfiles = !ls\n",
        "%%bash\necho never\n",
        "%%time\nprint('timed cell ran')\n",
        "print('hello')\nx = 1 / 0\n",
        "def softmax_attention_weights(s):\n"
        "    e = np.exp(s - s.max(axis=-1, keepdims=True))\n"
        "    return e / e.sum(axis=-1, keepdims=True)\n",
        "if True:\n    %time y = 2\n",
        "display(np.arange(3))\n",
    ])
    sub = load_notebook(path)
    assert sub.skipped == ["%matplotlib inline", "!pip list", "files = !ls", "%%bash", "%%time",
                           "%time y = 2"]
    assert "timed cell ran" in sub.output and "hello" in sub.output and "never" not in sub.output
    assert "array([0, 1, 2])" in sub.output and sub.y == 2  # %time's statement ran, as in IPython
    assert [(e.cell, e.error, e.line) for e in sub.errors] == \
        [(5, "ZeroDivisionError: division by zero", "x = 1 / 0")]
    assert sub.problems() == [
        "cell 5: ZeroDivisionError: division by zero (line: x = 1 / 0) (the cells after it "
        "still ran)",
        "missing: compute_self_attention_scores, compute_attention_output, self_attention_layer"]
    assert list(sub.functions) == ["softmax_attention_weights"]
    assert check(sub.softmax_attention_weights)
    with pytest.raises(AttributeError, match="nb.ipynb does not define 'self_attention_layer'"):
        sub.self_attention_layer


def test_help_lines_nbconvert_magics_and_a_continued_modulo(tmp_path):
    """`name?` and `??name` are IPython's help (they were a SyntaxError that lost the cell);
    nbconvert writes an assigned magic as `x = get_ipython()...` (a NameError); and a line that
    starts with % inside brackets, after a backslash or in a string continues the statement (it
    was taken for a magic)."""
    path = _notebook(tmp_path, [
        "import numpy as np\nnp.exp?\n??np.sum\n",
        "files = get_ipython().getoutput('ls')\nres = get_ipython().run_line_magic('time', '1')\n",
        "blocks = (10\n          % 3)\nassert blocks == 1\n",
        "total = 7 \\\n    % 4\n",
        "text = '''\n%not a magic inside a string\n'''\n",
    ])
    sub = load_notebook(path)
    assert sub.errors == []
    assert sub.skipped == ["np.exp?", "??np.sum", "files = get_ipython().getoutput('ls')",
                           "res = get_ipython().run_line_magic('time', '1')"]
    assert sub.blocks == 1 and sub.total == 3 and sub.text == "\n%not a magic inside a string\n"


def test_a_notebook_without_the_functions_is_a_clear_message(tmp_path):
    sub = load_notebook(_notebook(tmp_path, ["def my_scores(Q, K):\n    return Q @ K.T\n"]))
    assert sub.functions == {}
    assert sub.problems() == [
        "nb.ipynb defines none of the notebook's functions (compute_self_attention_scores, "
        "softmax_attention_weights, compute_attention_output, self_attention_layer); it defines: "
        "my_scores"]


def test_each_load_is_a_fresh_namespace_and_errors_show_their_line(tmp_path):
    first = load_notebook(_notebook(tmp_path, ["secret = 42\n"], "a.ipynb"))
    second = load_notebook(_notebook(tmp_path, ["print(secret)\n"], "b.ipynb"))
    assert first.secret == 42
    assert [str(e) for e in second.errors] == [
        "cell 1: NameError: name 'secret' is not defined (line: print(secret))"]


def test_a_script_is_split_at_its_cell_markers(tmp_path):
    path = tmp_path / "solution.py"
    path.write_text("import numpy as np\nget_ipython().run_line_magic('matplotlib', 'inline')\n"
                    "\n# In[2]:\n\nraise RuntimeError('unfinished')\n"
                    "\n# %%\ndef compute_attention_output(attn_weights, V):\n"
                    "    return attn_weights @ V\n")
    sub = load_module(path)
    assert sub.n_cells == 3 and sub.skipped == ["get_ipython().run_line_magic('matplotlib', 'inline')"]
    assert [e.cell for e in sub.errors] == [2]
    assert check(sub.compute_attention_output)
    assert load_notebook(path).n_cells == 3  # a .py given to load_notebook is loaded as a script


def test_not_a_notebook_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.ipynb"
    path.write_text("{ not json")
    with pytest.raises(ValueError, match="broken.ipynb is not a notebook"):
        load_notebook(path)


def test_nbformat_3_notebooks_load(tmp_path):
    path = tmp_path / "old.ipynb"
    path.write_text(json.dumps({"nbformat": 3, "worksheets": [{"cells": [
        {"cell_type": "code", "input": ["import numpy as np\n", "x = np.ones(2)\n"]}]}]}))
    assert np.array_equal(load_notebook(path).x, np.ones(2))


def test_loading_needs_no_jupyter(tmp_path):
    path = _notebook(tmp_path, ["%matplotlib inline\ndef softmax_attention_weights(s):\n"
                                "    return s\n"])
    code = ("import sys\n"
            "for m in ('IPython', 'nbformat', 'nbclient', 'jupyter_client', 'ipykernel'):\n"
            "    sys.modules[m] = None\n"
            "from selfattn.testing import load_notebook\n"
            f"print(sorted(load_notebook({str(path)!r}).functions))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "['softmax_attention_weights']", run.stderr


def test_the_generated_submissions_are_valid_notebooks():
    nbformat = pytest.importorskip("nbformat")
    for name, kind, cells, _ in submissions.SUBMISSIONS:
        if kind == "ipynb":
            nbformat.validate(nbformat.from_dict(submissions.notebook_json(cells)))


WRONG_AXIS = "def softmax_attention_weights(s):\n    return np.exp(s) / np.exp(s).sum(axis=0)\n"
RIGHT = ("def softmax_attention_weights(s):\n"
         "    e = np.exp(s - s.max(axis=-1, keepdims=True))\n"
         "    return e / e.sum(axis=-1, keepdims=True)\n")


def test_a_writefile_cell_writes_a_module_the_next_cells_import(tmp_path):
    """As in Jupyter: the file is written (-a appends) and `from attention import *` finds it.
    After the run the folder, its sys.path entry and the imported module are gone."""
    path_before, tmp_before = list(sys.path), set(os.listdir(tempfile.gettempdir()))
    sub = load_notebook(_notebook(tmp_path, [
        "%%writefile attention.py\nimport numpy as np\n" + RIGHT,
        "%%writefile -a attention.py\nHELPER = 'appended'\n",
        "from attention import *\nprint(HELPER)\n",
        "%%writefile pkg/__init__.py\nVALUE = 3\n",
        "import pkg\n",
    ]))
    assert sub.errors == [] and sub.skipped == []
    assert sub.output == "appended\n" and sub.pkg.VALUE == 3
    assert list(sub.functions) == ["softmax_attention_weights"]
    assert check(sub.softmax_attention_weights)                # the module's function, working
    assert "attention" not in sys.modules and "pkg" not in sys.modules
    assert sys.path == path_before and set(os.listdir(tempfile.gettempdir())) == tmp_before
    assert not (tmp_path / "attention.py").exists()           # nothing beside the notebook


def test_each_submission_imports_its_own_written_file_not_anothers(tmp_path):
    """Two students both write attention.py: each is graded on their own (the second's import
    must not find the first's module in sys.modules); a module of that name imported before the
    run (the grader's own) is back afterwards, untouched."""
    graders = types.ModuleType("attention")
    sys.modules["attention"] = graders
    try:
        subs = [load_notebook(_notebook(tmp_path, [
            "%%writefile attention.py\nimport numpy as np\n" + softmax,
            "from attention import softmax_attention_weights\n"], name=f"{i}.ipynb"))
            for i, softmax in enumerate((RIGHT, WRONG_AXIS, RIGHT))]
        assert sys.modules["attention"] is graders
    finally:
        del sys.modules["attention"]
    assert [bool(check(s.softmax_attention_weights)) for s in subs] == [True, False, True]


def test_a_writefile_outside_the_notebooks_folder_is_not_written(tmp_path):
    outside = tmp_path / "outside.py"
    sub = load_notebook(_notebook(tmp_path, [
        f"%%writefile {outside}\nx = 1\n",
        "%%writefile ../escaped.py\nx = 2\n",
        "import escaped\n",
    ]))
    assert not outside.exists()
    assert not os.path.exists(os.path.join(tempfile.gettempdir(), "escaped.py"))
    assert sub.skipped == [
        f"%%writefile {outside} (not written: a file outside the notebook's folder)",
        "%%writefile ../escaped.py (not written: a file outside the notebook's folder)"]
    assert [e.error for e in sub.errors] == ["ModuleNotFoundError: No module named 'escaped'"]


MAGIC_CELLS = [  # a notebook's cells whose magics nbconvert and jupytext write in a script's form
    "%matplotlib inline\nimport numpy as np\n",
    "%%writefile attention.py\nimport numpy as np\n" + RIGHT,
    "%%writefile -a attention.py\nHELPER = 'it''s \\n appended'\n",
    "%%time\nfrom attention import *\nprint(HELPER)\n",
    "%%bash\necho never\n",
    "",
    "x = 1\nif x:\n    %time y = x + 1\n# %time z = 1 (a comment that looks like a magic)\nx = 1 / 0\n",
    "print(y)\n",
]


def _same_submission(notebook, script):
    assert script.errors == notebook.errors == [
        CellError(7, "ZeroDivisionError: division by zero", "x = 1 / 0")]
    assert script.output == notebook.output == "its \n appended\n2\n"  # 'it''s' is "its"
    assert script.n_cells == notebook.n_cells == len(MAGIC_CELLS)
    assert list(script.functions) == list(notebook.functions) == ["softmax_attention_weights"]
    assert check(script.softmax_attention_weights) and script.y == notebook.y == 2
    assert "z" not in script.namespace and "z" not in notebook.namespace
    assert [s for s in script.skipped if s.startswith("%%")] == ["%%time", "%%bash"]
    assert len(script.skipped) == len(notebook.skipped) == 4  # and %matplotlib, %time


def _notebook_and_script(tmp_path, script):
    notebook = tmp_path / "student.ipynb"
    notebook.write_text(json.dumps(submissions.notebook_json(MAGIC_CELLS)))
    (tmp_path / "student.py").write_text(script)
    return load_notebook(notebook), load_module(tmp_path / "student.py")


def test_a_script_from_nbconvert_is_the_notebooks_submission(tmp_path):
    """`jupyter nbconvert --to script` writes `%%writefile f` as get_ipython().run_cell_magic(
    'writefile', 'f', body), `%time s` as run_line_magic('time', 's'), and a header before the
    first cell: the script writes the same files, runs the same statements and numbers its cells
    as the notebook does (the header was a cell 1 of its own, every error a cell late)."""
    _same_submission(*_notebook_and_script(tmp_path, (
        "#!/usr/bin/env python\n# coding: utf-8\n\n# In[1]:\n\n\n"
        "get_ipython().run_line_magic('matplotlib', 'inline')\nimport numpy as np\n"
        "\n\n# In[2]:\n\n\nget_ipython().run_cell_magic('writefile', 'attention.py', "
        f"{'import numpy as np' + chr(10) + RIGHT!r})\n"
        "\n\n# In[3]:\n\n\nget_ipython().run_cell_magic('writefile', '-a attention.py', "
        "\"HELPER = 'it''s \\\\n appended'\\n\")\n"
        "\n\n# In[4]:\n\n\nget_ipython().run_cell_magic('time', '', "
        "'from attention import *\\nprint(HELPER)\\n')\n"
        "\n\n# In[5]:\n\n\nget_ipython().run_cell_magic('bash', '', 'echo never\\n')\n"
        "\n\n# In[ ]:\n\n\n\n"
        "\n\n# In[6]:\n\n\nx = 1\nif x:\n    get_ipython().run_line_magic('time', 'y = x + 1')\n"
        "# %time z = 1 (a comment that looks like a magic)\nx = 1 / 0\n"
        "\n\n# In[7]:\n\n\nprint(y)\n")))


def test_a_script_from_jupytext_is_the_notebooks_submission(tmp_path):
    """jupytext's percent format comments magics out (`# %%writefile f`, `# %time s`; a comment
    that looks like a magic gets a second `# `), writes a %%bash cell as `# %% language="bash"`
    and a markdown cell as `# %% [markdown]`: `# %%writefile` was taken for a cell marker (the
    body ran as code and the import failed), `# %time s` for a comment, and markdown counted as a
    cell."""
    _same_submission(*_notebook_and_script(tmp_path, (
        "# ---\n# jupyter:\n#   jupytext:\n#     text_representation:\n#       extension: .py\n"
        "#       format_name: percent\n# ---\n\n"
        "# %%\n# %matplotlib inline\nimport numpy as np\n\n"
        "# %% [markdown]\n# ## Part 1\n#\n# %not code\n\n"
        "# %%\n# %%writefile attention.py\nimport numpy as np\n" + RIGHT + "\n"
        "# %%\n# %%writefile -a attention.py\nHELPER = 'it''s \\n appended'\n\n"
        "# %%\n# %%time\nfrom attention import *\nprint(HELPER)\n\n"
        "# %% language=\"bash\"\n# echo never\n#\n\n"
        "# %%\n\n"
        "# %%\nx = 1\nif x:\n    # %time y = x + 1\n"
        "# # %time z = 1 (a comment that looks like a magic)\nx = 1 / 0\n\n"
        "# %% [raw]\n# raw text\n\n"
        "# %%\nprint(y)\n")))


@pytest.mark.parametrize("tool", ["nbconvert", "jupytext"])
def test_the_tools_own_script_is_the_notebooks_submission(tmp_path, tool):
    """The same, with the script written by nbconvert or jupytext itself, from a notebook with a
    markdown cell between the code cells (nbconvert writes a raw cell's text as it is: code)."""
    nbformat = pytest.importorskip("nbformat")
    cells = [nbformat.v4.new_code_cell(c) for c in MAGIC_CELLS]
    cells[2:2] = [nbformat.v4.new_markdown_cell("## Part 1\n\n%not code")]
    notebook = nbformat.v4.new_notebook(
        cells=cells,
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                 "language": "python"},
                  "language_info": {"name": "python", "nbconvert_exporter": "python",
                                    "file_extension": ".py"}})
    path = tmp_path / "student.ipynb"
    nbformat.write(notebook, str(path))
    if tool == "nbconvert":
        script, _ = pytest.importorskip("nbconvert.exporters").ScriptExporter().from_filename(
            str(path))
        assert "get_ipython().run_cell_magic('writefile', 'attention.py'" in script
    else:
        script = pytest.importorskip("jupytext").writes(notebook, fmt="py:percent")
        assert "# %%\n# %%writefile attention.py\n" in script
    (tmp_path / "student.py").write_text(script)
    _same_submission(load_notebook(path), load_module(tmp_path / "student.py"))


def test_jupytexts_light_format_is_read_by_jupytext(tmp_path, monkeypatch):
    """`jupytext --to py` writes its light format: cells told apart by blank lines (`# +` where a
    cell has its own), which only jupytext reads back, so load_module has jupytext read it where
    it is installed (its round trip can add an empty cell: the numbers may differ by one), and
    otherwise reads it as one cell and says so."""
    jupytext = pytest.importorskip("jupytext")
    notebook = tmp_path / "student.ipynb"
    notebook.write_text(json.dumps(submissions.notebook_json(MAGIC_CELLS)))
    script = jupytext.writes(jupytext.read(notebook), fmt="py:light")
    assert "format_name: light" in script and "\n# %%writefile attention.py\n" in script
    (tmp_path / "student.py").write_text(script)
    sub, ref = load_module(tmp_path / "student.py"), load_notebook(notebook)
    assert sub.output == ref.output and sub.skipped == ref.skipped and sub.y == 2
    assert [(e.error, e.line) for e in sub.errors] == [(e.error, e.line) for e in ref.errors]
    assert list(sub.functions) == ["softmax_attention_weights"]
    assert check(sub.softmax_attention_weights)

    monkeypatch.setitem(sys.modules, "jupytext", None)  # not installed
    alone = load_module(tmp_path / "student.py")
    assert alone.n_cells == 1 and alone.problems()[0] == (
        "jupytext's light format, read as one cell (with jupytext installed, its cells run one "
        "by one, magics included)")


def test_a_writefile_cell_saved_without_a_final_newline(tmp_path):
    """Jupyter saves a cell's last line without a newline, and IPython adds one before
    %%writefile writes it: an appended cell starts on a line of its own."""
    sub = load_notebook(_notebook(tmp_path, [
        "%%writefile attention.py\nimport numpy as np\n" + RIGHT.rstrip("\n"),
        "%%writefile -a attention.py\nHELPER = 1",
        "from attention import *",
    ]))
    assert sub.errors == [] and sub.HELPER == 1 and check(sub.softmax_attention_weights)
