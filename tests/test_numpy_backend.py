"""The pure-NumPy backend (selfattn/_numpy_core.py): it agrees with the C extension on the same
inputs, and selfattn falls back to it, with one notice, only when the extension was never built."""
import importlib.machinery
import os
import pathlib
import re
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

import selfattn
from selfattn import _numpy_core

PACKAGE_DIR = pathlib.Path(selfattn.__file__).parent


def _numpy_backend(monkeypatch):
    """Every selfattn module that took the C extension as _core gets the NumPy backend."""
    c_core = selfattn._core
    for name, module in list(sys.modules.items()):
        if name.startswith("selfattn") and getattr(module, "_core", None) is c_core:
            monkeypatch.setattr(module, "_core", _numpy_core)


def _calls(rng):
    Q, K, V = rng.standard_normal((3, 2, 37, 8))
    bool_mask = rng.random((2, 37, 37)) < 0.7
    bool_mask[:, 4] = False                               # a fully masked row
    float_mask = np.where(bool_mask, rng.standard_normal((2, 37, 37)), -np.inf)
    V_inf = V.copy()
    V_inf[:, 5, 1] = np.inf                                # a key the mask hides
    hide = np.ones((37, 37), bool)
    hide[:, 5] = False
    sdpa = selfattn.scaled_dot_product_attention
    return [
        lambda: selfattn.compute_self_attention_scores(Q, K, mask=float_mask, is_causal=True),
        lambda: selfattn.compute_self_attention_scores(Q * 1e200, K * 1e200),    # overflow: NaN
        lambda: selfattn.softmax_attention_weights(float_mask),
        lambda: selfattn.compute_attention_output(np.where(hide, 0.5, 0.0), V_inf),
        lambda: sdpa(Q, K, V, mask=bool_mask, return_weights=True),
        lambda: sdpa(Q.astype(np.float32), K, V, is_causal=True),
        lambda: sdpa(Q, K, V_inf, mask=hide),
        lambda: selfattn.self_attention_layer(Q, np.eye(8), np.eye(8), np.eye(8), mask=bool_mask),
        lambda: selfattn.scaled_dot_product_attention_backward(V, Q, K, V_inf, mask=float_mask),
        # the gradients' products read X, W and W_o transposed in place (matmul's layouts)
        lambda: selfattn.multi_head_attention_backward(Q, Q, *rng.standard_normal((4, 8, 8)),
                                                       num_heads=2, b_q=np.ones(8)),
        lambda: selfattn.self_attention_layer_backward(V[0], Q[0], *rng.standard_normal((3, 8, 8))),
    ]


def _flat(result):
    return [np.asarray(r) for r in (result if isinstance(result, tuple) else (result,))]


@pytest.mark.c_backend
def test_the_numpy_backend_agrees_with_the_c_extension(monkeypatch):
    c_results = [_flat(call()) for call in _calls(np.random.default_rng(3))]
    _numpy_backend(monkeypatch)
    np_results = [_flat(call()) for call in _calls(np.random.default_rng(3))]
    for case, (want, got) in enumerate(zip(c_results, np_results)):
        for w, g in zip(want, got):
            assert g.dtype == w.dtype and g.shape == w.shape, case
            assert np.array_equal(np.isnan(g), np.isnan(w)), case
            finite = np.isfinite(w)
            assert np.array_equal(g[~finite & ~np.isnan(w)], w[~finite & ~np.isnan(w)]), case
            rtol = 1e-12 if w.dtype == np.float64 else 1e-5
            norm = max(1e-300, float(np.linalg.norm(w[finite])))
            with np.errstate(invalid="ignore"):
                error = float(np.linalg.norm((g - w)[finite]))
            assert error <= rtol * norm, case


@pytest.mark.parametrize("backend", ["numpy", pytest.param("c", marks=pytest.mark.c_backend)])
def test_a_learners_np_seterr_raise_changes_nothing(monkeypatch, backend):
    """Each backend computes with the IEEE rules and signals nothing, as the C kernels do: under
    np.seterr(all="raise") (a learner's setting) with warnings as errors, every call (fully masked
    rows, overflowing scores, an inf in V that the mask hides) returns the same bits as without
    it, no FloatingPointError, no RuntimeWarning."""
    if backend == "numpy":
        _numpy_backend(monkeypatch)
    want = [_flat(call()) for call in _calls(np.random.default_rng(3))]
    calls = _calls(np.random.default_rng(3))
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        got = [_flat(call()) for call in calls]
    for case, (w, g) in enumerate(zip(want, got)):
        for a, b in zip(w, g):
            assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True), case


def _import_copy(tmp_path, env_backend=None, extension=None, source_tree=False, main=False):
    """Imports a copy of selfattn's Python files (no compiled _core, or `extension` as one) in a
    fresh interpreter; returns (stdout, stderr). `source_tree`: beside the files that make a
    source checkout (pyproject.toml, csrc/). `main`: as `python -m selfattn` (with source_tree,
    whose -S keeps an editable install's finder out)."""
    shutil.copytree(PACKAGE_DIR, tmp_path / "selfattn",
                    ignore=shutil.ignore_patterns("_core*", "__pycache__"))
    if source_tree:
        (tmp_path / "pyproject.toml").write_text("")
        (tmp_path / "csrc").mkdir()
    if extension is not None:
        (tmp_path / "selfattn" / ("_core" + importlib.machinery.EXTENSION_SUFFIXES[0])
         ).write_bytes(extension)
    env = {k: v for k, v in os.environ.items() if k != "SELFATTN_BACKEND"}
    env["PYTHONPATH"] = str(tmp_path)
    flags = []
    if source_tree:
        # a source tree looks for an installed build on sys.path: -S leaves site-packages (and
        # a `pip install .` of selfattn there) out, and a folder of NumPy alone stands in for it
        deps = tmp_path.parent / f"{tmp_path.name}-numpy-only"
        deps.mkdir()
        site = pathlib.Path(np.__file__).parent.parent
        for name in ("numpy", "numpy.libs"):   # numpy.libs: a manylinux wheel's own libraries
            if (site / name).is_dir():
                (deps / name).symlink_to(site / name, target_is_directory=True)
        env["PYTHONPATH"] += os.pathsep + str(deps)
        flags = ["-S"]
    if env_backend:
        env["SELFATTN_BACKEND"] = env_backend
    # an editable install's finder (setuptools', on sys.meta_path) would find the checkout's
    # compiled _core for the copy's `import selfattn._core`: the copy stands alone, as a wheel
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if not "
            "getattr(f, '__module__', '').startswith('__editable__')]; "
            "import selfattn; print(selfattn.config()['backend'])")
    command = ["-m", "selfattn"] if main else ["-c", code]
    run = subprocess.run([sys.executable, *flags, *command], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    return run.stdout, run.stderr


def test_without_a_built_extension_selfattn_says_so_once_in_one_line(tmp_path):
    out, err = _import_copy(tmp_path)
    assert out.split() == ["numpy"], err
    notices = [line for line in err.splitlines() if "NumPyBackendWarning" in line]
    assert len(notices) == 1, err
    assert "C extension is not built" in notices[0] and "pip install ." in notices[0]
    assert "Xcode" in notices[0] and "Build Tools" in notices[0]


def test_a_source_checkout_never_built_is_told_to_run_pip_install(tmp_path):
    """A fresh clone where Python starts (python -m selfattn, a notebook there): the compiler is
    likely there and only `pip install .` missing, which the notice says rather than send the
    learner to install a compiler first."""
    out, err = _import_copy(tmp_path, source_tree=True)
    assert out.split() == ["numpy"], err
    notices = [line for line in err.splitlines() if "NumPyBackendWarning" in line]
    assert len(notices) == 1, err
    assert (f"imported from its source folder {os.path.realpath(tmp_path)}, where the C "
            f"extension is not built, and no installed build of it was found") in notices[0]
    assert "run `pip install .` in that folder" in notices[0]
    assert notices[0].startswith("<string>:1: "), notices[0]    # python -c's line
    tree = tmp_path / "again"
    tree.mkdir()
    out, err = _import_copy(tree, source_tree=True, main=True)   # python -m selfattn there
    assert "self-attention on the sentence" in out, err
    notices = [line for line in err.splitlines() if "NumPyBackendWarning" in line]
    assert len(notices) == 1, err
    # selfattn's own line, where runpy's import has none of the user's (was "<frozen runpy>:112")
    init = os.path.join(str(tree), "selfattn", "__init__.py")
    assert re.match(re.escape(init) + r":\d+: NumPyBackendWarning: ", notices[0]), notices[0]


def test_without_numpy_no_notice_promises_its_backend(tmp_path):
    # the notice "runs on its pure-NumPy backend" came first, then No module named 'numpy'
    shutil.copytree(PACKAGE_DIR, tmp_path / "selfattn",
                    ignore=shutil.ignore_patterns("_core*", "__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "SELFATTN_BACKEND"}
    env["PYTHONPATH"] = str(tmp_path)
    run = subprocess.run([sys.executable, "-S", "-c", "import selfattn"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert run.stderr.rstrip().endswith("ModuleNotFoundError: No module named 'numpy'"), run.stderr
    assert "NumPyBackendWarning" not in run.stderr, run.stderr


def test_choosing_the_numpy_backend_is_silent(tmp_path):
    out, err = _import_copy(tmp_path, env_backend="numpy")
    assert out.split() == ["numpy"] and "NumPyBackendWarning" not in err, err


def test_a_broken_extension_is_an_error_not_a_fallback(tmp_path):
    out, err = _import_copy(tmp_path, extension=b"not a shared library")
    assert "numpy" not in out.split(), out
    assert "failed to import" in err and "ImportError" in err, err
