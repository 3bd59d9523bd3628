"""Student submissions as a class hands them in: notebooks (with magics, prints, failing cells)
and scripts, correct ones written differently and one per classic mistake, each with the verdict
and the named mistakes the grader must give. Used by test_grade.py and test_load.py.

``python tests/submissions.py DIR [N]`` writes N submissions (default: all of them; more than
there are repeats them under new names) to DIR, to try ``python -m selfattn grade DIR``.
"""
import json
import os
import sys

FUNCTIONS = ("compute_self_attention_scores", "softmax_attention_weights",
             "compute_attention_output", "self_attention_layer")

SCORES_RAW = '''
def compute_self_attention_scores(Q, K):
    return Q @ K.T
'''
SCORES_SCALED = '''
def compute_self_attention_scores(Q, K):
    d_k = K.shape[1]
    return np.dot(Q, K.T) / np.sqrt(d_k)
'''
SOFTMAX = '''
def softmax_attention_weights(attn_scores):
    e = np.exp(attn_scores - np.max(attn_scores, axis=1, keepdims=True))
    return e / np.sum(e, axis=1, keepdims=True)
'''
OUTPUT = '''
def compute_attention_output(attn_weights, V):
    return attn_weights @ V
'''
LAYER = '''
def self_attention_layer(X, W_q, W_k, W_v):
    Q = X @ W_q
    K = X @ W_k
    V = X @ W_v
    scores = compute_self_attention_scores(Q, K)
    weights = softmax_attention_weights(scores)
    return compute_attention_output(weights, V)
'''
IMPORTS = "import numpy as np\n"


def _replace(functions, **changes):
    out = dict(functions)
    out.update(changes)
    return out


CORRECT = {"compute_self_attention_scores": SCORES_RAW, "softmax_attention_weights": SOFTMAX,
           "compute_attention_output": OUTPUT, "self_attention_layer": LAYER}
CORRECT_SCALED = _replace(CORRECT, compute_self_attention_scores=SCORES_SCALED)


def _cells(functions, before=(), after=()):
    return [IMPORTS, *before, *(functions[n] for n in FUNCTIONS if n in functions), *after]


# (name, kind, cells, expected): kind is "ipynb" or "py"; expected maps a function to
# (verdict, [mistake keys]) where it is not ("pass", []), plus "status" and "problems" (a
# substring each problem must contain, in order).
SUBMISSIONS = []


def _add(name, cells, expected=None, kind="ipynb"):
    SUBMISSIONS.append((name, kind, cells, dict(expected or {})))


# ---- correct, written differently --------------------------------------------------------------
_add("correct_raw_with_magics", _cells(CORRECT, before=[
    "%matplotlib inline\nimport matplotlib.pyplot as plt\n",
    "!pip list | head -3\n",
    "print('hello from the notebook')\nfiles = !ls\n"], after=[
    "# my own test, unfinished\nassert compute_self_attention_scores(np.eye(2), np.eye(2)).sum() == 3\n",
    "X = np.random.default_rng(0).normal(size=(4, 8))\n"
    "W = np.random.default_rng(1).normal(size=(3, 8, 4))\n"
    "out = self_attention_layer(X, *W)\nprint(out.shape)\nplt.imshow(out)\nplt.show()\n"]),
    {"problems": ["cell 9: AssertionError"]})
_add("correct_with_help_lines_and_a_modulo", _cells(CORRECT, before=[
    "np.exp?\n??np.sum\n",
    "blocks = (10\n          % 3)   # a modulo on a continued line, not a magic\n"
    "assert blocks == 1\n"], after=[
    "softmax_attention_weights?\n"]))
_add("correct_scaled_np_dot", _cells(CORRECT_SCALED, before=["%%time\nx = 1\n"]))
_add("correct_loops", [IMPORTS, '''
def compute_self_attention_scores(Q, K):
    n_q, n_k = Q.shape[0], K.shape[0]
    scores = np.zeros((n_q, n_k))
    for i in range(n_q):
        for j in range(n_k):
            scores[i, j] = np.sum(Q[i] * K[j])
    return scores
''', '''
def softmax_attention_weights(attn_scores):
    out = np.empty_like(attn_scores)
    for i, row in enumerate(attn_scores):
        e = np.exp(row - row.max())
        out[i] = e / e.sum()
    return out
''', OUTPUT, LAYER])
_add("correct_einsum_scaled", [IMPORTS, '''
def compute_self_attention_scores(Q, K):
    return np.einsum("qd,kd->qk", Q, K) / np.sqrt(Q.shape[-1])
''', '''
def softmax_attention_weights(attn_scores):
    shifted = attn_scores - attn_scores.max(axis=-1, keepdims=True)
    return np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
''', '''
def compute_attention_output(attn_weights, V):
    return np.matmul(attn_weights, V)
''', '''
def self_attention_layer(X, W_q, W_k, W_v):
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    return compute_attention_output(softmax_attention_weights(compute_self_attention_scores(Q, K)), V)
'''])
_add("correct_nbconvert_script", ["#!/usr/bin/env python\n# coding: utf-8\n\n# In[1]:\n\n\n" + IMPORTS
     + "get_ipython().run_line_magic('matplotlib', 'inline')\n"
     + "".join(f"\n\n# In[{i}]:\n\n{CORRECT[n]}" for i, n in enumerate(FUNCTIONS, 2))
     + "\n\n# In[8]:\n\n\nfiles = get_ipython().getoutput('ls')\n"
     + "\n\n# In[9]:\n\n\nundefined_variable + 1\n"],
     {"problems": ["NameError"]}, kind="py")

# ---- one classic mistake each --------------------------------------------------------------
_SOFTMAX_AXIS0 = '''
def softmax_attention_weights(attn_scores):
    e = np.exp(attn_scores - attn_scores.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)
'''
_add("softmax_axis0", _cells(_replace(CORRECT, softmax_attention_weights=_SOFTMAX_AXIS0)),
     {"softmax_attention_weights": ("fail", ["axis"]), "self_attention_layer": ("fail", ["axis"])})
_add("softmax_no_max", _cells(_replace(CORRECT, softmax_attention_weights='''
def softmax_attention_weights(attn_scores):
    e = np.exp(attn_scores)
    return e / e.sum(axis=1, keepdims=True)
''')), {"softmax_attention_weights": ("fail", ["no_max"]),
        "self_attention_layer": ("fail", ["no_max"])})
_add("softmax_min_subtracted", _cells(_replace(CORRECT, softmax_attention_weights='''
def softmax_attention_weights(attn_scores):
    e = np.exp(attn_scores - attn_scores.min(axis=1, keepdims=True))   # "stable" on shifted rows
    return e / e.sum(axis=1, keepdims=True)
''')), {"softmax_attention_weights": ("fail", ["shift_not_max"]),
        "self_attention_layer": ("fail", ["shift_not_max"])})
_add("correct_under_np_seterr_raise", _cells(CORRECT, before=['np.seterr(all="raise")\n']))
_add("correct_written_to_a_file_and_imported", [
    "%%writefile attention.py\n" + IMPORTS + "".join(CORRECT[n] for n in FUNCTIONS[:3]),
    "%%writefile -a attention.py\n" + CORRECT["self_attention_layer"],
    "from attention import *\n"])
_add("correct_written_to_a_file_nbconvert_script", [  # the one above, as nbconvert writes it
    "#!/usr/bin/env python\n# coding: utf-8\n\n# In[1]:\n\n\nget_ipython().run_cell_magic("
    f"'writefile', 'attention.py', {IMPORTS + ''.join(CORRECT[n] for n in FUNCTIONS[:3])!r})\n"
    "\n\n# In[2]:\n\n\nget_ipython().run_cell_magic("
    f"'writefile', '-a attention.py', {CORRECT['self_attention_layer']!r})\n"
    "\n\n# In[3]:\n\n\nfrom attention import *\n"], kind="py")
_add("correct_written_to_a_file_jupytext_script", [  # the same, as jupytext's percent format
    "# ---\n# jupyter:\n#   jupytext:\n#     text_representation:\n#       extension: .py\n"
    "#       format_name: percent\n# ---\n\n# %% [markdown]\n# # Self-attention\n\n"
    "# %%\n# %%writefile attention.py\n" + IMPORTS + "".join(CORRECT[n] for n in FUNCTIONS[:3])
    + "\n# %%\n# %%writefile -a attention.py\n" + CORRECT["self_attention_layer"]
    + "\n# %%\nfrom attention import *\n"], kind="py")
_add("correct_written_to_a_file_and_run", [  # %run: the file's names join the notebook's
    "%%writefile attention.py\n" + IMPORTS + "".join(CORRECT[n] for n in FUNCTIONS),
    "%run attention.py\n"])
_add("softmax_max_no_keepdims", _cells(_replace(CORRECT, softmax_attention_weights='''
def softmax_attention_weights(attn_scores):
    e = np.exp(attn_scores - attn_scores.max(axis=1))
    return e / e.sum(axis=1, keepdims=True)
''')), {"softmax_attention_weights": ("fail", ["no_keepdims_max"]),
        "self_attention_layer": ("fail", ["no_keepdims_max"])})
_add("softmax_returns_transposed", _cells(_replace(CORRECT, softmax_attention_weights='''
def softmax_attention_weights(attn_scores):
    e = np.exp(attn_scores - attn_scores.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).T
''')), {"softmax_attention_weights": ("fail", ["weights_out_transposed"]),
        "self_attention_layer": ("fail", ["weights_transposed"])})
_add("softmax_forgot_return", _cells(_replace(CORRECT, softmax_attention_weights='''
def softmax_attention_weights(attn_scores):
    e = np.exp(attn_scores - attn_scores.max(axis=1, keepdims=True))
    weights = e / e.sum(axis=1, keepdims=True)
''')), {"softmax_attention_weights": ("fail", ["returned_none"]),
        "self_attention_layer": ("error", ["raised_none"])})
_add("scores_dk_wrong_axis", _cells(_replace(CORRECT, compute_self_attention_scores='''
def compute_self_attention_scores(Q, K):
    d_k = K.shape[0]
    return Q @ K.T / np.sqrt(d_k)
''')), {"compute_self_attention_scores": ("fail", ["scale_sqrt_nk"]),
        "self_attention_layer": ("fail", ["scale_sqrt_n"])})
_add("scores_floor_division", _cells(_replace(CORRECT, compute_self_attention_scores='''
def compute_self_attention_scores(Q, K):
    return Q @ K.T // np.sqrt(K.shape[1])
''')), {"compute_self_attention_scores": ("fail", ["floor_div"]),
        "self_attention_layer": ("fail", ["floor_div"])})
_add("scores_int_buffer", _cells(_replace(CORRECT, compute_self_attention_scores='''
def compute_self_attention_scores(Q, K):
    scores = np.zeros((Q.shape[0], K.shape[0]), dtype=int)
    for i in range(Q.shape[0]):
        for j in range(K.shape[0]):
            scores[i, j] = Q[i] @ K[j]
    return scores
''')), {"compute_self_attention_scores": ("fail", ["int_buffer"]),
        "self_attention_layer": ("fail", ["int_buffer"])})
_add("scores_list_of_lists", _cells(_replace(CORRECT, compute_self_attention_scores='''
def compute_self_attention_scores(Q, K):
    return [[float(q @ k) for k in K] for q in Q]
''')), {"compute_self_attention_scores": ("fail", ["returned_list"])})
_add("scores_k_not_transposed", _cells(_replace(CORRECT, compute_self_attention_scores='''
def compute_self_attention_scores(Q, K):
    return Q @ K
''')), {"compute_self_attention_scores": ("fail", ["k_not_transposed"]),
        "self_attention_layer": ("fail", ["k_not_transposed"])})
_add("output_weights_transposed", _cells(_replace(CORRECT, compute_attention_output='''
def compute_attention_output(attn_weights, V):
    return attn_weights.T @ V
''')), {"compute_attention_output": ("fail", ["weights_transposed"]),
        "self_attention_layer": ("fail", ["weights_transposed"])})
_add("output_elementwise", _cells(_replace(CORRECT, compute_attention_output='''
def compute_attention_output(attn_weights, V):
    return attn_weights * V
''')), {"compute_attention_output": ("fail", ["elementwise"]),
        "self_attention_layer": ("fail", ["elementwise"])})
_add("layer_returns_weights", _cells(_replace(CORRECT, self_attention_layer='''
def self_attention_layer(X, W_q, W_k, W_v):
    Q, K = X @ W_q, X @ W_k
    return softmax_attention_weights(compute_self_attention_scores(Q, K))
''')), {"self_attention_layer": ("fail", ["returns_weights"])})
_add("layer_wq_for_all", _cells(_replace(CORRECT, self_attention_layer='''
def self_attention_layer(X, W_q, W_k, W_v):
    Q = K = V = X @ W_q
    return compute_attention_output(softmax_attention_weights(compute_self_attention_scores(Q, K)), V)
''')), {"self_attention_layer": ("fail", ["all_wq"])})
_add("layer_no_softmax", _cells(_replace(CORRECT, self_attention_layer='''
def self_attention_layer(X, W_q, W_k, W_v):
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    return compute_attention_output(compute_self_attention_scores(Q, K), V)
''')), {"self_attention_layer": ("fail", ["no_softmax"])})
_add("layer_v_times_weights", _cells(_replace(CORRECT, self_attention_layer='''
def self_attention_layer(X, W_q, W_k, W_v):
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    return V @ softmax_attention_weights(compute_self_attention_scores(Q, K))
''')), {"self_attention_layer": ("fail", ["v_at_weights"])})
_add("layer_mixed_conventions", _cells(_replace(CORRECT, self_attention_layer='''
def self_attention_layer(X, W_q, W_k, W_v):
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    scores = compute_self_attention_scores(Q, K) / np.sqrt(K.shape[1])
    return compute_attention_output(softmax_attention_weights(scores), V)
''')), {"self_attention_layer": ("fail", ["mixed_scale"])})

# ---- submissions that are not complete ----------------------------------------------------------
_add("only_softmax", [IMPORTS, SOFTMAX],
     {"compute_self_attention_scores": ("missing", []), "compute_attention_output": ("missing", []),
      "self_attention_layer": ("missing", []), "problems": ["missing: compute_self_attention_scores"]})
_add("renamed_everything", [IMPORTS, "def my_softmax(x):\n    return x\n"],
     {**{n: ("missing", []) for n in FUNCTIONS},
      "problems": ["defines none of the notebook's functions", "it defines: my_softmax"]})
_add("name_typo", [IMPORTS, "def compute_self_attention_score(Q, K):   # the s is missing\n"
                             "    return Q @ K.T\n", *(CORRECT[n] for n in FUNCTIONS[1:])],
     {"compute_self_attention_scores": ("missing", []),
      "self_attention_layer": ("error", ["raised_name"]),
      "problems": ["missing: compute_self_attention_scores",
                   "compute_self_attention_scores is missing, but the notebook defines "
                   "compute_self_attention_score: a typo in the name?"]})
_add("imports_selfattn", [IMPORTS, "from selfattn import *\n",
                          CORRECT["compute_self_attention_scores"]],
     {**{n: ("missing", []) for n in FUNCTIONS[1:]},
      "problems": ["missing: softmax_attention_weights",
                   "softmax_attention_weights, compute_attention_output, self_attention_layer, "
                   "scaled_dot_product_attention are selfattn's own (imported from selfattn, "
                   "not written in the notebook), so not graded"]})
# selfattn's functions wrapped, by name or through a helper of the notebook's: selfattn's grade
_add("wraps_selfattn", [IMPORTS, "import selfattn as sa\n",
                        CORRECT["compute_self_attention_scores"], CORRECT["compute_attention_output"],
                        "def my_softmax(s):\n    return sa.softmax_attention_weights(s)\n\n"
                        "def softmax_attention_weights(attn_scores):\n"
                        "    return my_softmax(attn_scores)\n",
                        "def self_attention_layer(X, W_q, W_k, W_v):\n"
                        "    return sa.self_attention_layer(X, W_q, W_k, W_v, scale=1.0)\n"],
     {"softmax_attention_weights": ("missing", []), "self_attention_layer": ("missing", []),
      "problems": ["missing: softmax_attention_weights, self_attention_layer",
                   "softmax_attention_weights calls selfattn's sa.softmax_attention_weights "
                   "(through my_softmax), so it is selfattn's result, not graded",
                   "self_attention_layer calls selfattn's sa.self_attention_layer, so it is "
                   "selfattn's result, not graded"]})
_add("syntax_error_cell", _cells(CORRECT, after=["def broken(:\n    pass\n"]),
     {"problems": ["cell 6: SyntaxError"]})
_add("huge_allocation", _cells(CORRECT, after=["big = np.ones((50_000, 1_000_000))\n"]),
     {"problems": ["cell 6: MemoryError"]})

# ---- submissions that would take a grader down with them -------------------------------------
# a cell that never ends is stopped at 3/4 of the time limit (Linux, macOS); the functions graded
_add("infinite_loop", _cells(CORRECT, after=["while True:\n    pass\n"]),
     {**{n: ("pass", []) for n in FUNCTIONS}, "status": "graded",
      "problems": ["TimeoutError: the cell ran past ", "three quarters of the grade's --timeout",
                   "grade with a larger --timeout"]}
     if sys.platform != "win32" else
     {**{n: ("timed out", []) for n in FUNCTIONS}, "status": "timed out",
      "problems": ["still running after ", "an infinite loop?"]})
_add("loops_forever_on_one_token", _cells(_replace(CORRECT, softmax_attention_weights='''
def softmax_attention_weights(attn_scores):
    while attn_scores.size == 1:   # a loop meant for something else
        pass
    e = np.exp(attn_scores - attn_scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
''')), {**{n: ("timed out", []) for n in FUNCTIONS[1:]}, "status": "timed out",
          "problems": ["still running after ", "while checking softmax_attention_weights"]})
# the first function checked never returns: named too (no function had been written back yet)
_add("scores_loop_forever", _cells(_replace(CORRECT, compute_self_attention_scores='''
def compute_self_attention_scores(Q, K):
    while True:
        pass
''')), {**{n: ("timed out", []) for n in FUNCTIONS}, "status": "timed out",
         "problems": ["still running after ", "while checking compute_self_attention_scores"]})
_add("sys_exit_in_a_function", _cells(_replace(CORRECT, compute_attention_output='''
def compute_attention_output(attn_weights, V):
    import sys
    sys.exit("not done yet")
''')), {"compute_attention_output": ("error", ["raised"]),
        "self_attention_layer": ("error", ["raised"])})
_add("leaves_a_process_and_a_thread_running", _cells(CORRECT, after=[
    "import subprocess, sys, threading, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
    "threading.Thread(target=time.sleep, args=(120,)).start()\n"]))
_add("os_abort", _cells(CORRECT, after=["import os\nos.abort()\n"]),
     {**{n: ("crashed", []) for n in FUNCTIONS}, "status": "crashed",
      "problems": ["SIGABRT"]})

# ---- replaces NumPy's functions: put back before the checks (its np.exp crashed the grader)
_add("patches_numpy", _cells(CORRECT, before=[
    "np.exp = lambda x: x\nnp.allclose = lambda *a, **k: True\n"]),
    {"problems": ["cell 2 changed np.allclose, np.exp: they were put back after the cells ran"]})

# ---- scripts named like the modules the grader imports: in a flat folder, the working folder of
# every student's grading process; each is graded, and so is every other student ---------------
_add("selfattn", _cells(CORRECT), kind="py")
_add("numpy", _cells(CORRECT_SCALED), kind="py")


def notebook_json(cells):
    """An nbformat 4 notebook with these code cells and a markdown cell first."""
    nb_cells = [{"cell_type": "markdown", "id": "cell-0", "metadata": {},
                 "source": ["# Self-attention\n"]}]
    for i, src in enumerate(cells, 1):
        nb_cells.append({"cell_type": "code", "id": f"cell-{i}", "execution_count": i,
                         "metadata": {}, "outputs": [], "source": src.splitlines(keepends=True)})
    kernel = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return {"cells": nb_cells, "metadata": {"kernelspec": kernel}, "nbformat": 4,
            "nbformat_minor": 5}


def write(folder, names=None, count=None):
    """Write the submissions (those in `names`, or all) to `folder`; return {student: expected}."""
    os.makedirs(folder, exist_ok=True)
    chosen = [s for s in SUBMISSIONS if names is None or s[0] in names]
    if count is not None:
        chosen = [(f"{name}_{i // len(chosen)}" if i >= len(chosen) else name, kind, cells, exp)
                  for i, (name, kind, cells, exp) in
                  ((i, chosen[i % len(chosen)]) for i in range(count))]
    expected = {}
    for name, kind, cells, exp in chosen:
        path = os.path.join(folder, f"{name}.{kind}")
        with open(path, "w", encoding="utf-8") as f:
            if kind == "ipynb":
                json.dump(notebook_json(cells), f, indent=1)
            else:
                f.write("".join(cells))
        expected[name] = exp
    return expected


if __name__ == "__main__":
    write(sys.argv[1], count=int(sys.argv[2]) if len(sys.argv) > 2 else None)
