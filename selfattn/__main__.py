"""``python -m selfattn``: a worked example, this build's facts and an agreement check.

``python -m selfattn bench`` runs the project's benchmark instead (see selfattn/_bench.py), and
``python -m selfattn grade SUBMISSIONS...`` grades a class's notebooks (``grade --help``).
"""
from __future__ import annotations

import errno
import os
import sys

import numpy as np

import selfattn

SENTENCE = "the cat sat on the mat".split()

# --help's text: the docstring's, without its reStructuredText markup
USAGE = """usage: python -m selfattn [bench [options] | grade [options] SUBMISSIONS...]

  python -m selfattn                         a worked example, this build's facts and an
                                             agreement check
  python -m selfattn bench [--help]          the project's benchmark: selfattn against naive
                                             NumPy, np.matmul and torch, side by side
  python -m selfattn grade SUBMISSIONS...    grades a class's notebooks (grade --help)
  python -m selfattn --version               selfattn's version"""


def _matrix_text(weights, tokens):
    """The weights as a table with the query tokens as rows and the key tokens as columns."""
    width = max(5, max(len(t) for t in tokens))
    lines = [" " * (width + 2) + " ".join(f"{t:>{width}}" for t in tokens)]
    for token, row in zip(tokens, weights):
        lines.append(f"{token:>{width}}  " + " ".join(f"{w:>{width}.2f}" for w in row))
    return "\n".join(lines)


def _naive_layer(X, W_q, W_k, W_v):
    """The notebook's solution in plain NumPy, for the agreement check."""
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    scores = Q @ np.swapaxes(K, -1, -2) / np.sqrt(K.shape[-1])
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)) @ V


def demo(out=sys.stdout):
    rng = np.random.default_rng(2024)
    n, d_model, d_k = len(SENTENCE), 8, 4
    X = rng.normal(size=(n, d_model))          # one embedding per token
    W_q, W_k, W_v = rng.normal(size=(3, d_model, d_k)) / np.sqrt(d_model)
    output, weights = selfattn.self_attention_layer(X, W_q, W_k, W_v, return_weights=True)

    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(f"selfattn {selfattn.__version__}: self-attention on the sentence {' '.join(SENTENCE)!r}")
    p(f"  X: {n} tokens x d_model={d_model};  W_q, W_k, W_v: ({d_model}, {d_k})")
    p("  scores = (X W_q)(X W_k)^T / sqrt(d_k);  weights = softmax over each row;  "
      "output = weights (X W_v)")
    p("")
    p("Attention weights (row = query token, column = key token; each row sums to 1):")
    p(_matrix_text(weights, SENTENCE))
    p("")
    strongest = [SENTENCE[j] for j in weights.argmax(axis=1)]
    p("Each token attends most to: "
      + ", ".join(f"{q}->{k}" for q, k in zip(SENTENCE, strongest)))
    p(f"Output shape: {output.shape} (one {d_k}-dim vector per token)")
    p("")
    cfg = selfattn.config()
    p(f"Build: selfattn {cfg['selfattn']}, NumPy {cfg['numpy']}, backend {cfg['backend']}, "
      f"instruction set {cfg['isa']} "
      f"(supported: {', '.join(cfg['supported_isas'])}), threads {cfg['threads']} "
      f"of {cfg['available_cpus']} CPUs")

    # Agreement with plain NumPy on a bigger, batched problem in float64.
    Xb = rng.normal(size=(2, 64, 32))
    Wb = rng.normal(size=(3, 32, 16)) / np.sqrt(32)
    ours = selfattn.self_attention_layer(Xb, *Wb)
    theirs = _naive_layer(Xb, *Wb)
    err = float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))
    ok = err < 1e-12
    p(f"Agreement check vs plain NumPy (batch 2 x 64 tokens, float64): max relative "
      f"difference {err:.1e} -> {'OK' if ok else 'MISMATCH'}")
    return 0 if ok else 1


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench":
        from . import _bench

        return _bench.main(argv[1:])
    if argv and argv[0] == "grade":
        from .testing import grade

        return grade.main(argv[1:])
    if argv and argv[0] in ("--version", "-V"):
        print(f"selfattn {selfattn.__version__}")
        return 0
    if argv and argv[0] not in ("-h", "--help"):
        print(f"python -m selfattn: unknown command {argv[0]!r}; use 'python -m selfattn' for the "
              f"demo, 'python -m selfattn bench' for the benchmark or 'python -m selfattn grade' to "
              f"grade notebooks", file=sys.stderr)
        return 2
    if argv:
        print(USAGE)
        return 0
    return demo()


_OUTPUT_ERRORS = (errno.ENOSPC, errno.EIO, errno.EBADF)


def _run():
    try:
        code = main()
        if sys.stdout is not None:  # None: started with stdout closed (`>&-`); print() drops
            sys.stdout.flush()      # it. A pipe closed early fails here, inside the try
    except BrokenPipeError:
        # `python -m selfattn grade ... | head`: the reader has what it wanted; stop quietly,
        # as a Unix tool does. stdout goes to devnull first, or the interpreter's flush at exit
        # would raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        if exc.filename is not None or exc.errno not in _OUTPUT_ERRORS or sys.stdout is None:
            raise   # a file's error, not stdout's
        # stdout on a full disk (/dev/full): one line, as a Unix tool says it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"python -m selfattn: cannot write its output: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(_run())
