"""Writes examples/self_attention_tour.ipynb (without outputs) from the cells below.

Run it after editing a cell:  python examples/make_self_attention_tour.py
tests/test_notebook.py runs the notebook in a real Jupyter kernel and checks that this script and
the committed notebook agree.
"""
import pathlib

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = pathlib.Path(__file__).resolve().parent
TARGET = HERE / "self_attention_tour.ipynb"

CELLS = [
    ("md", """# A tour of self-attention with selfattn

The self-attention notebook builds a layer in four steps: scores, softmax, weighted sum, and the
layer that puts them together. This tour does each step with `selfattn`, then checks a learner's
own solution (one right, one with a classic bug), draws the attention weights, and explains a
layer step by step."""),
    ("code", """import numpy as np
import selfattn

rng = np.random.default_rng(0)
tokens = ["the", "cat", "sat", "on", "the", "mat"]
n, d_model, d_k = len(tokens), 8, 4
X = rng.normal(size=(n, d_model))                   # one embedding per token
W_q, W_k, W_v = rng.normal(size=(3, d_model, d_k)) / np.sqrt(d_model)
Q, K, V = X @ W_q, X @ W_k, X @ W_v
Q.shape, K.shape, V.shape"""),
    ("md", """## 1. Scores

How well each query matches each key. selfattn scales the dot products by `1/sqrt(d_k)`, as
scaled dot-product attention does; `scale=1.0` gives the raw dot products `Q @ K.T` the
notebook's text describes."""),
    ("code", """scores = selfattn.compute_self_attention_scores(Q, K)
raw = selfattn.compute_self_attention_scores(Q, K, scale=1.0)
assert np.allclose(raw, Q @ K.T) and np.allclose(scores, raw / np.sqrt(d_k))
scores.round(3)"""),
    ("md", """## 2. Softmax

Each row (one query) becomes weights that are >= 0 and sum to 1. selfattn subtracts each row's
maximum first, so even huge scores do not overflow."""),
    ("code", """weights = selfattn.softmax_attention_weights(scores)
print(weights.sum(axis=-1))                         # every row sums to 1
selfattn.softmax_attention_weights(np.array([[1000.0, 1001.0, 999.0]]))   # no overflow"""),
    ("md", """## 3. Weighted sum of the values"""),
    ("code", """output = selfattn.compute_attention_output(weights, V)
assert np.allclose(output, weights @ V)
output.shape"""),
    ("md", """## 4. The whole layer

`self_attention_layer` does the projections and the three steps in one call (and can return the
weights too)."""),
    ("code", """out, w = selfattn.self_attention_layer(X, W_q, W_k, W_v, return_weights=True)
assert np.allclose(out, output) and np.allclose(w, weights)
out.round(3)"""),
    ("md", """## Checking your own solution

`selfattn.testing.check` runs your function on a battery of cases (the sizes differ on purpose,
float64 and float32, huge scores, a single token) and says what is wrong in words. A correct
softmax passes:"""),
    ("code", """def softmax_attention_weights(attn_scores):
    e = np.exp(attn_scores - attn_scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)

report = selfattn.testing.check(softmax_attention_weights)
assert report
report"""),
    ("md", """A classic bug: no max subtraction. It is right on small scores, but `np.exp` overflows on
large ones, and `inf / inf` is NaN. The report names the mistake and the fix:"""),
    ("code", """def softmax_attention_weights(attn_scores):
    e = np.exp(attn_scores)
    return e / e.sum(axis=-1, keepdims=True)

report = selfattn.testing.check(softmax_attention_weights)
assert not report and "No max subtraction" in report.diagnoses[0]
print(report)"""),
    ("md", """The notebook's scores are raw dot products. `check` accepts raw or `1/sqrt(d_k)`-scaled
scores, used consistently, and says which it recognised; pinned to scaled attention with
`scale="scaled"`, the raw scores fail and the report says why:"""),
    ("code", """def compute_self_attention_scores(Q, K):
    return Q @ K.T

report = selfattn.testing.check(compute_self_attention_scores)
assert report and report.convention == "raw"
print(selfattn.testing.check(compute_self_attention_scores, scale="scaled").diagnoses[0])"""),
    ("md", """## Seeing the attention

Queries are rows, keys are columns; each row sums to 1."""),
    ("code", """ax = selfattn.plot_attention(w, tokens)
ax.set_title("who attends to whom");"""),
    ("md", """With `is_causal=True` a token sees only itself and the tokens before it:"""),
    ("code", """_, w_causal = selfattn.self_attention_layer(X, W_q, W_k, W_v, is_causal=True, return_weights=True)
selfattn.plot_attention(w_causal, tokens);"""),
    ("md", """## Every step, explained

`selfattn.explain` keeps every intermediate (`Q, K, V, scores, row_max, exponentials, row_sums,
weights, output`) and shows them in order."""),
    ("code", """trace = selfattn.explain(X[:4], W_q, W_k, W_v, tokens=tokens[:4])
assert np.allclose(trace.weights, trace.exponentials / trace.row_sums)
trace"""),
]


def build():
    cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in CELLS]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"tour-{i:02d}"  # stable ids: regenerating gives the same file
    return nb


if __name__ == "__main__":
    nbformat.write(build(), TARGET)
    print(f"wrote {TARGET}")
