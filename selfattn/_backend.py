"""Which backend runs the kernels: the C extension selfattn._core, or the pure-NumPy one.

* SELFATTN_BACKEND=numpy: the NumPy backend (selfattn/_numpy_core.py), silently (tests, CI, or a
  user who chose it).
* SELFATTN_BACKEND=c: the C extension, and an ImportError if it is not built.
* Unset (the default): the C extension; if it was never built (no C compiler when
  `pip install .` ran; selfattn/_find_core.py says precisely when), the NumPy backend, with one
  NumPyBackendWarning, of one line, saying so and how to build the extension. A C extension that
  exists but fails to import (a broken NumPy, another interpreter's build) keeps raising the
  ImportError of selfattn/_find_core.py: falling back there would hide a broken installation.
"""
import os
import sys
import warnings

__all__ = ["NumPyBackendWarning", "load_core"]

NOT_BUILT = (
    "selfattn: the C extension is not built, so selfattn runs on its pure-NumPy backend (same "
    "results, slower). To build it, install a C compiler (macOS: Xcode Command Line Tools, "
    "`xcode-select --install`; Windows: Microsoft C++ Build Tools; Linux: gcc), then install "
    "selfattn again (`pip install .` in its source folder, or `pip install --force-reinstall "
    "--no-cache-dir` of the file you installed it from). Set SELFATTN_BACKEND=numpy to "
    "silence this."
)


# Python started in a source checkout (its root, or a notebook there) whose extension is built
# nowhere: never installed, perhaps, where a compiler is there and only the build is missing
NOT_BUILT_IN_TREE = (
    "selfattn: imported from its source folder {tree}, where the C extension is not built, and "
    "no installed build of it was found, so selfattn runs on its pure-NumPy backend (same "
    "results, slower). To build it, run `pip install .` in that folder (it needs a C compiler: "
    "macOS: `xcode-select --install`; Windows: Microsoft C++ Build Tools; Linux: gcc). Set "
    "SELFATTN_BACKEND=numpy to silence this."
)


class NumPyBackendWarning(UserWarning):
    """selfattn runs on its pure-NumPy backend because the C extension is not built."""


def load_core(package_dir, version):
    """The kernels' module (selfattn._core or selfattn._numpy_core) for the package in
    `package_dir`, chosen by SELFATTN_BACKEND and by what was built."""
    choice = os.environ.get("SELFATTN_BACKEND", "").strip().lower()
    if choice == "numpy":
        from . import _numpy_core
        return _numpy_core
    if choice not in ("", "c"):
        _warn_from_importer(f"selfattn: ignoring SELFATTN_BACKEND={choice!r}: expected 'c' or "
                            f"'numpy'", package_dir, RuntimeWarning)
    try:
        from . import _core
    except ImportError as error:
        from ._find_core import _is_source_tree, load_installed_core

        core = load_installed_core(package_dir, version, error)
        if core is not None:
            return core
        if choice == "c":
            raise ImportError("selfattn: SELFATTN_BACKEND=c, but the C extension is not built "
                              f"for selfattn {version} in {package_dir}") from error
        in_tree = _is_source_tree(package_dir)
    else:
        from ._find_core import check_tree_build

        check_tree_build(package_dir, _core)
        return _core
    tree = os.path.dirname(os.path.realpath(package_dir))
    from . import _numpy_core   # first: without NumPy, no warning that promises its backend
    _warn_from_importer(NOT_BUILT_IN_TREE.format(tree=tree) if in_tree else NOT_BUILT, package_dir)
    return _numpy_core


def _warn_from_importer(message, package_dir, category=NumPyBackendWarning):
    """warnings.warn, attributed to the line that imported selfattn (the first frame outside
    selfattn and the import machinery), which is what a notebook shows under the warning; under
    `python -m selfattn`, where runpy imported it from no line of anyone's, to selfattn's own
    line (it was `<frozen runpy>:112`)."""
    frame, own = sys._getframe(1), None
    package_dir = os.path.realpath(package_dir)
    while frame is not None:
        if os.path.realpath(frame.f_code.co_filename).startswith(package_dir + os.sep):
            own = frame
        elif not (frame.f_code.co_filename.startswith("<frozen importlib")
                  or frame.f_globals.get("__name__") == "runpy"):
            break
        frame = frame.f_back
    where = frame or own
    # no module_globals: a loader's get_source can raise (python -c's __main__)
    warnings.warn_explicit(message, category, where.f_code.co_filename, where.f_lineno)
