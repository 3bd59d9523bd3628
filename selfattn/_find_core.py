"""What to do when the compiled extension, selfattn._core, does not import.

Two cases, told apart by whether this package folder holds a compiled _core:

* It does not, and the folder above holds selfattn's build files: this is the source tree (Python
  started in the repository's root, e.g. ``python -m selfattn`` or a notebook opened there,
  imports the source folder ``selfattn/``). Load the build ``pip install .`` put in site-packages,
  when it is the same version.
* Otherwise selfattn is installed, and its extension failed to import (NumPy missing or broken, an
  interpreter the extension does not support): say so, where selfattn is installed, and chain the
  original ImportError.

"Not built" is the one case that is not an error: no compiled _core exists, neither in this
package folder nor (for the source tree) in an installed build. `pip install .` on a machine
without a C compiler installs selfattn so; load_installed_core then returns None and
selfattn/_backend.py runs on the pure-NumPy backend. A _core that exists but does not import is
never taken for "not built".
"""
import glob
import hashlib
import importlib.machinery
import importlib.util
import os
import sys


def source_hash(root):
    """The letter h and 16 hex digits of sha256 over the C sources in root/csrc (names and
    contents, line endings made \\n): an identifier, which setup.py passes to the compiler as a
    bare token (no quotes to survive each shell and compiler driver), and _core holds as
    _core.source_hash. An installed build loaded from a source tree must carry the tree's own,
    or it was built from other sources (an earlier checkout, the tree edited since) and lacks or
    differs in what the tree's Python calls."""
    digest = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(root, "csrc", "*.[ch]"))
                       + glob.glob(os.path.join(root, "csrc", "*.inc"))):
        digest.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(f.read().replace(b"\r\n", b"\n") + b"\0")
    return "h" + digest.hexdigest()[:16]


def _installed_version(site_dir):
    """The version in a selfattn-VERSION.dist-info folder beside the installed package, if any."""
    for info in glob.glob(os.path.join(site_dir, "selfattn-*.dist-info")):
        return os.path.basename(info)[len("selfattn-"):-len(".dist-info")]
    return None


def _extension_in(folder):
    """The path of a compiled _core in `folder`, or None."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(folder, "_core" + suffix)
        if os.path.exists(path):
            return path
    return None


def check_tree_build(package_dir, module):
    """Refuse a _core built in a source tree's package folder (``pip install -e .``,
    ``setup.py build_ext --inplace``) from other C sources than the tree's: a ``git pull`` or an
    edit of csrc/ since, which the tree's Python would call into unannounced. Nothing to check
    for an installed package (no csrc/ beside it)."""
    tree = os.path.dirname(os.path.realpath(package_dir))
    if not (os.path.exists(os.path.join(tree, "pyproject.toml"))
            and os.path.isdir(os.path.join(tree, "csrc"))):
        return
    if getattr(module, "source_hash", None) != source_hash(tree):
        raise ImportError(
            f"selfattn's build in its source tree ({module.__file__}) was made from other C "
            f"sources than {os.path.join(tree, 'csrc')} (an earlier checkout, or csrc/ edited "
            f"since); build it again in {tree}: `pip install -e .` (or `python setup.py "
            f"build_ext --inplace`)")


def _is_source_tree(package_dir):
    parent = os.path.dirname(os.path.realpath(package_dir))
    return (_extension_in(package_dir) is None
            and os.path.exists(os.path.join(parent, "pyproject.toml"))
            and os.path.isdir(os.path.join(parent, "csrc")))


def _numpy_abi_advice(error):
    """What to do where NumPy imports but the extension's own import of it failed: NumPy's words
    for an extension built against NumPy 1.x under NumPy 2 ("numpy.core.multiarray failed to
    import", NumPy's banner above it) name neither cause nor cure. None for other errors."""
    if "multiarray failed to import" not in str(error):
        return None
    try:
        import numpy
    except ImportError:
        return None
    if int(numpy.__version__.split(".")[0]) < 2:
        return None
    return (f"This build was made against NumPy 1.x (pip install --no-build-isolation with NumPy "
            f"1 installed, or a build from before an upgrade), which NumPy {numpy.__version__}, "
            f"installed here, cannot load. Build it again against this NumPy: pip install "
            f"--force-reinstall --no-cache-dir ., in selfattn's source folder, or of the file you "
            f"installed it from, without --no-build-isolation.")


def load_installed_core(package_dir, version, error):
    """selfattn._core for the package in `package_dir`, whose own import raised `error`; None
    when no compiled _core was built for it."""
    if not _is_source_tree(package_dir):
        found = _extension_in(package_dir)
        if found is None:
            return None
        raise ImportError(
            f"selfattn {version} is installed in {package_dir}, but its compiled extension "
            f"{found} failed to import: {error}. " + (_numpy_abi_advice(error) or
            "Check that NumPy imports in this interpreter (python -c 'import numpy'), then "
            "reinstall selfattn if it still fails.")
        ) from error
    source = os.path.realpath(package_dir)
    for entry in sys.path:
        candidate = os.path.join(entry or os.curdir, "selfattn")
        if not os.path.isdir(candidate) or os.path.realpath(candidate) == source:
            continue
        path = _extension_in(candidate)
        if path is None:
            continue
        installed = _installed_version(entry)
        if installed != version:
            raise ImportError(
                f"selfattn is being imported from its source tree ({package_dir}, version "
                f"{version}) but the build installed in {entry} is version {installed}; run "
                "`pip install .` again"
            ) from None   # (the first try's "partially initialized module" misleads)
        loader = importlib.machinery.ExtensionFileLoader("selfattn._core", path)
        spec = importlib.util.spec_from_file_location("selfattn._core", path, loader=loader)
        module = importlib.util.module_from_spec(spec)
        tree = os.path.dirname(source)
        try:
            spec.loader.exec_module(module)
        except ImportError as exc:
            # NumPy's own words ("numpy._core.multiarray failed to import") name neither build
            raise ImportError(
                f"selfattn is being imported from its source tree ({tree}), which has no build "
                f"of its own, and the build installed in {entry} failed to import: {exc}. Check "
                f"that NumPy imports in this interpreter (python -c 'import numpy'), or run "
                f"`pip install .` again in {tree}"
            ) from exc
        if getattr(module, "source_hash", None) != source_hash(tree):
            # the same version number says nothing of the sources between two commits
            raise ImportError(
                f"selfattn is being imported from its source tree ({tree}), but the build "
                f"installed in {entry} was made from other C sources (an earlier checkout, or "
                f"csrc/ edited since); run `pip install .` again in {tree}"
            ) from None
        sys.modules["selfattn._core"] = module
        return module
    return None
