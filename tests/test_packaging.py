"""What a pip-installed selfattn ships: signatures, docstrings, stubs, version, the main job."""
import doctest
import importlib.util
import inspect
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import selfattn

PUBLIC = ["compute_self_attention_scores", "softmax_attention_weights", "compute_attention_output",
          "self_attention_layer", "scaled_dot_product_attention"]
PACKAGE_DIR = pathlib.Path(selfattn.__file__).parent
_SELFATTN_PARENT = str(PACKAGE_DIR.parent)  # where `import selfattn` finds this selfattn


def test_version():
    assert selfattn.__version__ == "0.1.0"
    from importlib.metadata import version
    assert version("selfattn") == selfattn.__version__


def test_notebook_signatures_and_keyword_only_options():
    sig = {name: inspect.signature(getattr(selfattn, name)) for name in PUBLIC}
    positional = {name: [p.name for p in s.parameters.values()
                         if p.kind is p.POSITIONAL_OR_KEYWORD] for name, s in sig.items()}
    assert positional == {
        "compute_self_attention_scores": ["Q", "K"],
        "softmax_attention_weights": ["attn_scores"],
        "compute_attention_output": ["attn_weights", "V"],
        "self_attention_layer": ["X", "W_q", "W_k", "W_v"],
        "scaled_dot_product_attention": ["Q", "K", "V"],
    }
    for s in sig.values():
        for p in s.parameters.values():
            if p.kind is p.KEYWORD_ONLY:
                assert p.default is not inspect.Parameter.empty
    assert str(sig["compute_self_attention_scores"]) == (
        "(Q, K, *, scale=None, mask=None, bias=None, is_causal=False, window=None)")


@pytest.mark.parametrize("name", PUBLIC)
def test_numpy_style_docstrings(name):
    doc = getattr(selfattn, name).__doc__
    for section in ("Parameters\n", "Returns\n", "Raises\n", "Examples\n"):
        assert section in doc, (name, section)
    assert "shape (" in doc


def test_docstring_examples_run():
    import selfattn._api
    import selfattn._config
    for module in (selfattn, selfattn._api, selfattn._config):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0 and result.attempted > 0, module.__name__


def test_stubs_and_py_typed_are_installed_and_complete():
    assert (PACKAGE_DIR / "py.typed").exists()
    stub = (PACKAGE_DIR / "__init__.pyi").read_text()
    for name in selfattn.__all__:
        if name != "__version__":
            assert (f"def {name}(" in stub or f"{name}:" in stub
                    or f"import {name} as {name}" in stub), name
    assert "__version__: str" in stub


def test_each_stub_names_exactly_the_parameters_of_its_function():
    """Every public function's stub (each overload) has the function's parameters, no more and no
    fewer: a keyword argument added or renamed in one place but not the other fails here."""
    import ast
    import inspect

    tree = ast.parse((PACKAGE_DIR / "__init__.pyi").read_text())
    stubs = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            args = node.args
            stubs.setdefault(node.name, []).append(
                [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs])
    checked = 0
    for name in selfattn.__all__:
        obj = getattr(selfattn, name)
        if not inspect.isfunction(obj):
            continue
        params = set(inspect.signature(obj).parameters)
        assert name in stubs, f"no stub for {name}"
        for overload in stubs[name]:
            assert set(overload) == params, (name, set(overload) ^ params)
        checked += 1
    assert checked >= 15


def test_all_is_exported():
    for name in selfattn.__all__:
        assert hasattr(selfattn, name), name


@pytest.mark.c_backend
def test_extension_is_compiled_and_numpy_is_the_only_dependency():
    from importlib.metadata import requires
    spec = importlib.util.find_spec("selfattn._core")
    assert spec.origin.endswith((".so", ".pyd"))
    runtime = [r for r in requires("selfattn") if "extra ==" not in r]
    assert [r.split(">")[0].split("=")[0].strip() for r in runtime] == ["numpy"]


def test_license_is_declared_and_its_text_is_installed():
    # PEP 639: an SPDX expression (the older `license = { text = ... }` table is deprecated by
    # setuptools), and the MIT text itself, which the license asks every copy to carry
    from importlib.metadata import distribution
    dist = distribution("selfattn")
    assert dist.metadata["License-Expression"] == "MIT"
    license_file, = [f for f in dist.files if f.name == "LICENSE"]
    text = license_file.read_text()
    assert text.startswith("MIT License") and "selfattn developers" in text


def test_no_flush_to_zero_side_effect():
    # a library built with -ffast-math would set FTZ/DAZ for the whole process
    assert 2.0 ** -1073 != 0
    assert np.float32(1e-45) != 0


def run(*args, env=None):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_python_m_selfattn_main_job():
    proc = run("-m", "selfattn")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "the cat sat on the mat" in out
    assert "Attention weights" in out and "Output shape: (6, 4)" in out
    assert f"selfattn {selfattn.__version__}" in out and f"NumPy {np.__version__}" in out
    assert "instruction set" in out and "threads" in out
    assert "-> OK" in out


def test_python_m_selfattn_help_is_plain_text():
    proc = run("-m", "selfattn", "--help")
    assert proc.returncode == 0, proc.stderr
    # (the bare command takes no options: "[bench | grade] [options]" said it did)
    assert proc.stdout.startswith("usage: python -m selfattn [bench [options] | grade [options] "
                                  "SUBMISSIONS...]\n")
    assert "python -m selfattn grade SUBMISSIONS..." in proc.stdout
    assert "``" not in proc.stdout
    for flag in ("--version", "-V"):     # it was "unknown command '--version'"
        proc = run("-m", "selfattn", flag)
        assert (proc.returncode, proc.stdout) == (0, f"selfattn {selfattn.__version__}\n")


@pytest.mark.c_backend
def test_environment_settings_are_read_at_import():
    code = "import selfattn; print(selfattn.get_num_threads(), selfattn.get_isa())"
    proc = run("-c", code, env={"SELFATTN_NUM_THREADS": "3", "SELFATTN_ISA": "generic"})
    assert proc.stdout.split() == ["3", "generic"], proc.stderr
    proc = run("-W", "always", "-c", code, env={"SELFATTN_NUM_THREADS": "many", "SELFATTN_ISA": "sse9"})
    assert proc.returncode == 0
    assert "ignoring SELFATTN_NUM_THREADS='many': not a whole number of threads" in proc.stderr
    assert "ignoring SELFATTN_ISA='sse9'" in proc.stderr
    # every one at the line that imported selfattn (SELFATTN_BACKEND's was at selfattn's own)
    proc = run("-W", "always", "-c", code, env={"SELFATTN_BACKEND": "torch"})
    assert proc.stderr.startswith("<string>:1: RuntimeWarning: selfattn: ignoring "
                                  "SELFATTN_BACKEND='torch': expected 'c' or 'numpy'"), proc.stderr
    # digits alone: int() would read "4_0" as 40 threads, and a full-width "２" as 2
    for text in ("4_0", "\uff12", "+2", "2.0"):
        proc = run("-W", "always", "-c", code, env={"SELFATTN_NUM_THREADS": text})
        assert f"ignoring SELFATTN_NUM_THREADS={text!r}: not a whole number" in proc.stderr, text
    proc = run("-c", code, env={"SELFATTN_NUM_THREADS": " 2 "})
    assert proc.stdout.split()[0] == "2", proc.stderr
    # more digits than int() reads (4300) stopped the import with a ValueError
    proc = run("-W", "always", "-c", code, env={"SELFATTN_NUM_THREADS": "9" * 5000})
    assert proc.returncode == 0 and "far more threads than any machine has" in proc.stderr


@pytest.mark.c_backend
def test_isa_setting():
    before = selfattn.get_isa()
    try:
        for name in selfattn.config()["supported_isas"]:
            selfattn.set_isa(name)
            assert selfattn.get_isa() == name
        with pytest.raises(ValueError, match="unknown instruction set"):
            selfattn.set_isa("sse9")
        selfattn.set_isa(" Generic ")        # as SELFATTN_ISA is read: case and spaces aside
        assert selfattn.get_isa() == "generic"
        missing = {"avx512", "avx2", "neon"} - set(selfattn.config()["supported_isas"])
        for name in missing:
            with pytest.raises(ValueError, match=r"does not support .*; this machine's tiers: "
                                                 + ", ".join(selfattn.config()["supported_isas"])):
                selfattn.set_isa(name)
        with pytest.raises(TypeError):
            selfattn.set_isa(3)
    finally:
        selfattn.set_isa(before)
    assert "reference" in selfattn.config()["supported_isas"]


def test_importing_from_the_source_tree_uses_the_installed_build():
    # Python started in the repository's root sees the source folder selfattn/ first
    root = pathlib.Path(__file__).resolve().parent.parent
    if not (root / "selfattn" / "__init__.py").exists():
        pytest.skip("tests are not inside a source checkout")
    proc = subprocess.run([sys.executable, "-c",
                           "import selfattn; print(selfattn.self_attention_layer([[1.0]], [[1.0]], "
                           "[[1.0]], [[2.0]]))"],
                          cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[[2.]]"


@pytest.mark.c_backend
def test_an_installed_build_of_other_c_sources_is_refused_from_the_source_tree(tmp_path):
    """Same version, other sources: the source tree's Python called functions an older installed
    _core lacked (an AttributeError deep in `python -m selfattn bench`), after a demo that said
    the build was fine."""
    import shutil
    root = pathlib.Path(__file__).resolve().parent.parent
    if not (root / "csrc" / "module.c").exists():
        pytest.skip("tests are not beside selfattn's C sources")
    site, tree = tmp_path / "site", tmp_path / "tree"
    built = pathlib.Path(selfattn._core.__file__).parent  # in site-packages, or an in-place build
    shutil.copytree(built, site / "selfattn", ignore=shutil.ignore_patterns("__pycache__"))
    (site / f"selfattn-{selfattn.__version__}.dist-info").mkdir()
    shutil.copytree(root / "csrc", tree / "csrc")
    shutil.copy(root / "pyproject.toml", tree)
    shutil.copytree(PACKAGE_DIR, tree / "selfattn",
                    ignore=shutil.ignore_patterns("__pycache__", "_core.*"))
    code = "import selfattn; print(selfattn.config()['backend'])"
    # -S: no site-packages, where an editable install's finder would serve selfattn._core from
    # its own folder; NumPy's folder is given instead
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(site), str(pathlib.Path(np.__file__).parent.parent)]))
    env.pop("SELFATTN_BACKEND", None)

    def run():
        return subprocess.run([sys.executable, "-S", "-c", code], cwd=tree, env=env,
                              capture_output=True, text=True, timeout=120)
    same = run()
    assert same.returncode == 0 and same.stdout.strip() == "c", same.stderr
    broken = tmp_path / "broken"
    (broken / "numpy").mkdir(parents=True)
    (broken / "numpy" / "__init__.py").write_text("raise ImportError('simulated: broken NumPy')\n")
    env_numpy = env["PYTHONPATH"]
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(broken)])
    no_numpy = run()        # NumPy's own message alone named neither the tree nor the build
    assert no_numpy.returncode == 1
    assert (f"selfattn is being imported from its source tree ({tree}), which has no build of "
            f"its own, and the build installed in {site} failed to import") in no_numpy.stderr, \
        no_numpy.stderr
    assert "python -c 'import numpy'" in no_numpy.stderr, no_numpy.stderr
    env["PYTHONPATH"] = env_numpy
    with open(tree / "csrc" / "attn.h", "a") as f:
        f.write("/* edited since the build */\n")
    edited = run()
    assert edited.returncode == 1
    assert (f"selfattn is being imported from its source tree ({tree}), but the build installed "
            f"in {site} was made from other C sources") in edited.stderr, edited.stderr
    # alone: chained under the first try's "partially initialized module (most likely due to a
    # circular import)", which sent the reader the wrong way
    assert "circular import" not in edited.stderr, edited.stderr


@pytest.mark.c_backend
def test_a_build_in_the_source_tree_of_other_c_sources_is_refused(tmp_path):
    """`pip install -e .` (or build_ext --inplace) builds _core into the tree's selfattn/, where
    it was imported after a `git pull` or an edit of csrc/ without a word: the tree's Python then
    called a _core of other sources (the installed build from a tree was already checked)."""
    import shutil
    root = pathlib.Path(__file__).resolve().parent.parent
    if not (root / "csrc" / "module.c").exists():
        pytest.skip("tests are not beside selfattn's C sources")
    tree = tmp_path / "tree"
    shutil.copytree(root / "csrc", tree / "csrc")
    shutil.copy(root / "pyproject.toml", tree)
    shutil.copytree(PACKAGE_DIR, tree / "selfattn",
                    ignore=shutil.ignore_patterns("__pycache__", "_core.*"))
    shutil.copy(selfattn._core.__file__, tree / "selfattn")     # the build, of these sources
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(np.__file__).parent.parent))
    env.pop("SELFATTN_BACKEND", None)

    def run():
        return subprocess.run([sys.executable, "-S", "-c", "import selfattn; print("
                               "selfattn.config()['backend'], selfattn._core.__file__)"],
                              cwd=tree, env=env, capture_output=True, text=True, timeout=120)
    same = run()
    assert same.returncode == 0 and same.stdout.split()[0] == "c", same.stderr
    assert same.stdout.split()[1].startswith(str(tree / "selfattn")), same.stdout
    with open(tree / "csrc" / "platform.c", "a") as f:
        f.write("/* a git pull since the build */\n")
    edited = run()
    assert edited.returncode == 1
    assert (f"selfattn's build in its source tree ({tree / 'selfattn'}" in edited.stderr
            and f"was made from other C sources than {tree / 'csrc'}" in edited.stderr
            and "`pip install -e .`" in edited.stderr), edited.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="CC=/bin/false: a compiler that fails")
def test_a_failed_build_records_no_build_configuration(tmp_path):
    """setup.py keeps the compiler and flags of its last build in build/ and rebuilds when they
    change; a build that failed recorded them too, so the next one with the same compiler (now
    installed) took the earlier compiler's objects as up to date."""
    import shutil
    import setuptools
    root = pathlib.Path(__file__).resolve().parent.parent
    if not (root / "setup.py").exists():
        pytest.skip("tests are not inside a source checkout")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip("setup.py needs setuptools 77 (pip install . fetches it itself)")
    tree = tmp_path / "tree"
    shutil.copytree(root / "csrc", tree / "csrc")
    # the package imported (CI's NumPy-version step runs the tests beside no selfattn/ folder)
    shutil.copytree(PACKAGE_DIR, tree / "selfattn",
                    ignore=shutil.ignore_patterns("__pycache__", "_core.*"))
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(root / name, tree)
    run = subprocess.run([sys.executable, "setup.py", "build_ext"], cwd=tree,
                         env=dict(os.environ, CC="/bin/false"), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr   # the extension is optional
    assert "the C extension selfattn._core could not be built" in run.stderr, run.stderr
    assert list(tree.glob("build/temp*")) and not list(tree.glob("build/*/selfattn-build-config*"))
    assert "Python's headers are missing" not in run.stderr
    # an earlier build's _core (in build/lib for pip, in selfattn/ --inplace) was installed after
    # the failed one said "installed without it": another build's, of other sources
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    stale = [tree / "selfattn" / f"_core{suffix}"]
    stale += [lib / "selfattn" / f"_core{suffix}" for lib in tree.glob("build/lib*")] or [
        tree / "build" / "lib" / "selfattn" / f"_core{suffix}"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"an earlier build")
    for args in (["build_ext", "--build-lib", str(stale[1].parent.parent)], ["build_ext", "--inplace"]):
        run = subprocess.run([sys.executable, "setup.py", *args], cwd=tree,
                             env=dict(os.environ, CC="/bin/false"), capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, run.stderr
    assert not any(path.exists() for path in stale), stale
    # a stale build that cannot be removed (Windows: a .pyd a running kernel loaded) leaves the
    # install going, said; it failed the whole install and hid the compiler's error
    stale[0].write_bytes(b"an earlier build")
    locked = ("import os, runpy, sys; real = os.remove\n"
              "def remove(p):\n"
              "    if '_core' in str(p): raise PermissionError(13, 'in use by another process', p)\n"
              "    real(p)\n"
              "os.remove = remove; sys.argv = ['setup.py', 'build_ext', '--inplace']\n"
              "runpy.run_path('setup.py', run_name='__main__')\n")
    run = subprocess.run([sys.executable, "-c", locked], cwd=tree,
                         env=dict(os.environ, CC="/bin/false"), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert "the C extension selfattn._core could not be built" in run.stderr
    assert f"could not remove the earlier build {stale[0]}" in run.stderr, run.stderr
    stale[0].unlink()
    # where Python's headers are missing, the message says so (a compiler alone does not build)
    fake = ("import runpy, sys, sysconfig; real = sysconfig.get_paths; "
            "sysconfig.get_paths = lambda *a, **k: {**real(*a, **k), 'include': '/nowhere'}; "
            "sys.argv = ['setup.py', 'build_ext']; runpy.run_path('setup.py', run_name='__main__')")
    run = subprocess.run([sys.executable, "-c", fake], cwd=tree,
                         env=dict(os.environ, CC="/bin/false"), capture_output=True, text=True,
                         timeout=300)
    assert ("Python's headers are missing (no Python.h in /nowhere), which the build needs "
            "beside a compiler: install them (Debian, Ubuntu: python3-dev; Fedora: "
            "python3-devel)") in run.stderr, run.stderr


def test_the_package_docstring_points_to_what_exists():
    """help(selfattn) lists its modules and every function alphabetically; its docstring says
    where a learner goes next, and each name it gives is there."""
    import re
    guide = selfattn.__doc__.split("Where to go next", 1)[1].split("\n", 1)[1]
    names = re.findall(r"``(?:testing\.)?([a-z_]+)(?:\(|``)", guide)
    names = [n if not n.startswith("_") else "multi_head_attention" + n for n in names]
    assert {"explain", "plot_attention", "check", "causal_mask", "set_num_threads"} <= set(names)
    for name in names:
        assert hasattr(selfattn, name) or hasattr(selfattn.testing, name), name


def test_stub_all_and_tier_names_match_the_runtime():
    """The stub's __all__ is the package's (stubtest's complaint), and set_isa's Literal names
    every tier the C extension knows (dispatch.c's list) and the NumPy backend's, so a type
    checker accepts set_isa("neon") as the runtime does."""
    import ast
    import re

    tree = ast.parse((PACKAGE_DIR / "__init__.pyi").read_text())
    stub_all = next(ast.literal_eval(node.value) for node in tree.body
                    if isinstance(node, ast.Assign) and node.targets[0].id == "__all__")
    assert stub_all == list(selfattn.__all__)
    set_isa = next(node for node in tree.body
                   if isinstance(node, ast.FunctionDef) and node.name == "set_isa")
    stub_tiers = set(ast.literal_eval(set_isa.args.args[0].annotation.slice))
    dispatch = (pathlib.Path(__file__).resolve().parent.parent / "csrc" / "dispatch.c").read_text()
    names = re.search(r"isa_names\[SA_ISA_COUNT\] = \{(.*?)\}", dispatch, re.S).group(1)
    assert stub_tiers == set(re.findall(r'"(\w+)"', names)) | {"numpy"}
    assert set(selfattn.config()["supported_isas"]) <= stub_tiers


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX pipe closed by its reader")
def test_a_reader_that_stops_early_gets_no_traceback():
    # `python -m selfattn | head -1`: the reader closes the pipe; the writer stops quietly (a
    # BrokenPipeError traceback and exit 1 before). Closed before the first write, so every
    # write fails, whenever the reader would have stopped.
    reader, writer = os.pipe()
    os.close(reader)
    proc = subprocess.Popen([sys.executable, "-m", "selfattn"], stdout=writer,
                            stderr=subprocess.PIPE)
    os.close(writer)
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
    assert proc.returncode == 1


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full to write to")
def test_a_closed_or_full_stdout_gets_no_traceback():
    # `python -m selfattn >&-`: AttributeError ('NoneType' object has no attribute 'flush');
    # stdout on a full disk: an OSError traceback
    closed = subprocess.run([sys.executable, "-m", "selfattn"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, timeout=120,
                            preexec_fn=lambda: os.close(1))
    assert (closed.returncode, closed.stderr) == (0, "")
    for args in ([], ["--version"]):
        with open("/dev/full", "w") as full:
            run = subprocess.run([sys.executable, "-m", "selfattn", *args], stdout=full,
                                 stderr=subprocess.PIPE, text=True, timeout=120)
        assert (run.returncode, run.stderr) == (
            1, "python -m selfattn: cannot write its output: No space left on device\n"), args


# Keyword values of NumPy scalar types, as a NumPy user passes them (n = X.shape[0] is a Python
# int, but np.int64 from a reduction or an array element is common): every call runs
_NUMPY_SCALARS = {
    "compute_self_attention_scores": lambda s, Q, X, W: s.compute_self_attention_scores(
        Q, Q, scale=np.float32(0.5), is_causal=np.True_, window=[np.int64(2), None]),
    "softmax_attention_weights": lambda s, Q, X, W: s.softmax_attention_weights(
        Q, axis=np.int64(-1)),
    "self_attention_layer": lambda s, Q, X, W: s.self_attention_layer(
        X, W, W, W, scale=np.float32(0.3), is_causal=np.True_, return_weights=np.True_,
        softcap=np.float32(5), dropout_p=np.float32(0.1), seed=np.uint64(7)),
    "scaled_dot_product_attention": lambda s, Q, X, W: s.scaled_dot_product_attention(
        Q, Q[:, :2], Q[:, :2], enable_gqa=np.True_, return_lse=np.True_,
        window=(np.int64(1), np.int64(1))),
    "scaled_dot_product_attention_backward":
        lambda s, Q, X, W: s.scaled_dot_product_attention_backward(
            Q, Q, Q, Q, enable_gqa=np.False_, seed=np.int64(3), dropout_p=np.float32(0.2)),
    "self_attention_layer_backward": lambda s, Q, X, W: s.self_attention_layer_backward(
        X, X, W, W, W, scale=np.float64(0.5), is_causal=np.True_, softcap=np.int64(3)),
    "multi_head_attention": lambda s, Q, X, W: s.multi_head_attention(
        X, W, W[:, :4], W[:, :4], W, num_heads=np.int64(2), num_kv_heads=np.int64(1),
        return_weights=np.True_),
    "multi_head_attention_backward": lambda s, Q, X, W: s.multi_head_attention_backward(
        X, X, W, W, W, W, num_heads=np.int64(2)),
    "multi_head_attention_vjp": lambda s, Q, X, W: s.multi_head_attention_vjp(
        X, W, W, W, W, num_heads=np.int64(2)),
    "causal_mask": lambda s, Q, X, W: s.causal_mask(np.int64(3), np.int64(4)),
    "window_mask": lambda s, Q, X, W: s.window_mask(np.int64(3), np.int64(4), np.int64(1), None),
    "padding_mask": lambda s, Q, X, W: s.padding_mask([1, 2], np.int64(3), head_axis=np.True_),
    "alibi_bias": lambda s, Q, X, W: s.alibi_bias(np.int64(2), np.int64(3), np.int64(4)),
    "lengths_mask": lambda s, Q, X, W: s.lengths_mask([1], [2], np.int64(3), np.int64(3),
                                                      head_axis=np.True_),
    "set_num_threads": lambda s, Q, X, W: s.set_num_threads(np.int64(s.get_num_threads())),
    "explain": lambda s, Q, X, W: s.explain(X[0], W, W, W, scale=np.float32(0.5),
                                            is_causal=np.True_, window=[np.int64(1), np.int64(0)]),
}


def test_the_stub_takes_numpy_scalars_where_the_functions_do():
    """The stub said `int`, `float` and `bool`, so mypy refused num_heads=np.int64(2),
    scale=np.float32(0.5), is_causal=np.True_ and window=[1, 1], which every function takes:
    each call above runs, and no parameter of the stub names a bare Python number type."""
    import ast

    rng = np.random.default_rng(0)
    Q, X, W = rng.normal(size=(2, 4, 6, 8)), rng.normal(size=(2, 6, 8)), np.eye(8)
    for name, call in _NUMPY_SCALARS.items():
        call(selfattn, Q, X, W)
    tree = ast.parse((PACKAGE_DIR / "__init__.pyi").read_text())
    bare = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            args = node.args.args + node.args.kwonlyargs
            for arg in args:
                names = ({n.id for n in ast.walk(arg.annotation) if isinstance(n, ast.Name)}
                         if arg.annotation else set())
                if names & {"int", "float", "bool"}:
                    bare.append(f"{node.name}({arg.arg})")
    assert not bare, bare
    aliases = {node.targets[0].id: ast.unparse(node.value) for node in tree.body
               if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    assert "np.integer" in aliases["_Int"] and "np.floating" in aliases["_Real"]
    assert "np.bool_" in aliases["_Bool"] and "Sequence" in aliases["_Window"]
    # a function whose keyword takes a number is listed above (plot_attention: test_plot)
    number_params = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)
                     and any(n.id in ("_Int", "_Real", "_Bool", "_Causal", "_Window")
                             for a in node.args.args + node.args.kwonlyargs if a.annotation
                             for n in ast.walk(a.annotation) if isinstance(n, ast.Name))}
    assert number_params - {"plot_attention"} == set(_NUMPY_SCALARS), number_params


_TYPED_USER = """
import numpy as np
import selfattn

X = np.zeros((2, 6, 8))
W = np.eye(8)
window: list[int] = [2, 0]
out = selfattn.scaled_dot_product_attention(X, X, X, window=window, scale=np.float32(0.5),
                                            is_causal=np.True_)
out2 = selfattn.scaled_dot_product_attention(X, X, X, window=np.array([2, 0]))
Y, weights = selfattn.self_attention_layer(X, W, W, W, return_weights=True)
trace = selfattn.explain(X[0], W, W, W, tokens=("a", "b", "c", "d", "e", "f"))
w: np.ndarray = trace.weights
grads = selfattn.multi_head_attention_backward(X, X, W, W, W, W, num_heads=np.int64(2))
named = grads._asdict()
dX: np.ndarray = grads.dX
db_o = grads.db_o
if db_o is not None:
    db_o.sum()
mask = selfattn.causal_mask(np.int64(6)) & selfattn.padding_mask([6, 4], 6)[:, None]


def softmax_attention_weights(attn_scores: np.ndarray) -> np.ndarray:
    e = np.exp(attn_scores - attn_scores.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def compute_self_attention_scores(Q: np.ndarray, K: np.ndarray) -> np.ndarray:
    return np.asarray(Q @ np.swapaxes(K, -1, -2) * 0.5)


from selfattn.testing import CheckReport, assert_attention_close, check, check_functions

report: CheckReport = check(compute_self_attention_scores, scale=np.float32(0.5))
passed: bool = report.passed and bool(check(softmax_attention_weights))
assert passed, report
worst = [r.worst_index for r in report.failures]
for case in selfattn.testing.cases("softmax_attention_weights", batched=False, seed=np.int64(1)):
    assert_attention_close(softmax_attention_weights(*case.args), case.expected,
                           rtol=np.float32(1e-5))
    scores: np.ndarray = case.inputs["attn_scores"]
selfattn.testing.assert_implementation(compute_self_attention_scores, scale=0.5, seed=np.int64(2))
for name, rep in check_functions({"softmax_attention_weights": softmax_attention_weights}).items():
    if rep is not None:
        rep.raise_if_failed()
"""


def test_a_typed_users_script_type_checks(tmp_path):
    """mypy refused a window list held in a variable (list is invariant), explain's trace.weights
    (AttentionTrace's attributes came in as keywords), tokens as a tuple, grads._asdict(): each
    ran. selfattn.testing had no types: --disallow-untyped-calls (part of --strict) refused every
    call of check. The script runs, and mypy accepts it against the stubs."""
    mypy = pytest.importorskip("mypy.api")
    script = tmp_path / "user.py"
    script.write_text(_TYPED_USER)
    exec(compile(_TYPED_USER, str(script), "exec"), {})
    # the package as installed (or this checkout's, first on the path when run from it);
    # --follow-imports=silent: the stub and the modules it names, not selfattn's own code's typing
    out, err, status = mypy.run([str(script), "--follow-imports=silent", "--no-incremental",
                                 "--disallow-untyped-calls",
                                 "--cache-dir", str(tmp_path / "cache"),
                                 "--python-executable", sys.executable])
    assert status == 0, out + err


def test_the_testing_stub_matches_the_runtime(tmp_path):
    """selfattn.testing's stub against the modules themselves (mypy's stubtest): a parameter, a
    field or a public name added in one place but not in the other fails here."""
    pytest.importorskip("mypy.stubtest")
    config = tmp_path / "mypy.ini"
    # jupytext, an optional import of load.py, ships no types
    config.write_text("[mypy]\nignore_missing_imports = True\n")
    run = subprocess.run([sys.executable, "-m", "mypy.stubtest", "selfattn.testing",
                          "--mypy-config-file", str(config)], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": _SELFATTN_PARENT})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Success" in run.stdout
