#!/usr/bin/env bash
# The pure-NumPy backend: 1. the whole suite with SELFATTN_BACKEND=numpy (tests marked c_backend
# skip), 2. `pip install .` without a C compiler (CC=/bin/false) into a fresh venv: selfattn
# imports with one NumPyBackendWarning, config() names the numpy backend, and the learners' tools
# (check, explain, plot_attention) work there. .ci/run runs it as step 3b.
source "$(dirname "$0")/lib.sh" numpy-backend
cd "$ROOT"

log "1. the suite on the NumPy backend"
SELFATTN_BACKEND=numpy "$PY" -m pytest -q -p no:cacheprovider -m "not slow" tests

log "2. pip install . with no C compiler, in a fresh venv"
copy_tree "$WORK/src"
new_venv "$WORK/venv"
(cd "$WORK/src" && CC=/bin/false "$WORK/venv/bin/python" -m pip install -q . matplotlib) \
    >"$WORK/install.log" 2>&1 || { cat "$WORK/install.log"; echo "install failed"; exit 1; }
cd "$WORK"
MPLBACKEND=Agg "$WORK/venv/bin/python" -W default - >"$WORK/out" 2>"$WORK/err" <<'PY'
import numpy as np
import selfattn
from selfattn.testing import check

assert selfattn.config()["backend"] == "numpy", selfattn.config()
X = np.random.default_rng(0).normal(size=(4, 8))
W = np.random.default_rng(1).normal(size=(3, 8, 8))
out, weights = selfattn.self_attention_layer(X, *W, return_weights=True)
print(selfattn.explain(X, *W))
selfattn.plot_attention(weights)
def softmax_attention_weights(s):
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
assert check(softmax_attention_weights)
print("NUMPY BACKEND OK")
PY
cat "$WORK/err"
grep -q "NUMPY BACKEND OK" "$WORK/out" || { cat "$WORK/out"; exit 1; }
[[ $(grep -c "NumPyBackendWarning: selfattn: the C extension is not built" "$WORK/err") == 1 ]] \
    || { echo "expected the not-built notice exactly once"; exit 1; }
log "the NumPy backend passes"
