"""Locate the compiled extension when selfattn is imported from its own source tree.

After ``pip install .`` the compiled ``selfattn._core`` lives in site-packages, but Python started in
the repository's root (``python -m selfattn``, a Jupyter notebook opened there) imports the source
folder ``selfattn/``, which has no compiled module. Rather than fail, load the installed build when
it is the same version. Anything else gets an ImportError that says what to do.
"""
import glob
import importlib.machinery
import importlib.util
import os
import sys


def _installed_version(site_dir):
    """The version in a selfattn-VERSION.dist-info folder beside the installed package, if any."""
    for info in glob.glob(os.path.join(site_dir, "selfattn-*.dist-info")):
        return os.path.basename(info)[len("selfattn-"):-len(".dist-info")]
    return None


def load_installed_core(package_dir, version):
    source = os.path.realpath(package_dir)
    for entry in sys.path:
        candidate = os.path.join(entry or os.curdir, "selfattn")
        if not os.path.isdir(candidate) or os.path.realpath(candidate) == source:
            continue
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(candidate, "_core" + suffix)
            if not os.path.exists(path):
                continue
            installed = _installed_version(entry)
            if installed != version:
                raise ImportError(
                    f"selfattn is being imported from its source tree ({package_dir}, version "
                    f"{version}) but the build installed in {entry} is version {installed}; run "
                    "`pip install .` again"
                )
            loader = importlib.machinery.ExtensionFileLoader("selfattn._core", path)
            spec = importlib.util.spec_from_file_location("selfattn._core", path, loader=loader)
            module = importlib.util.module_from_spec(spec)
            sys.modules["selfattn._core"] = module
            spec.loader.exec_module(module)
            return module
    raise ImportError(
        "selfattn's compiled extension (selfattn._core) is missing: this is the source tree "
        f"({package_dir}) and no installed build was found. Run `pip install .` in the "
        "repository's root (or `pip install -e .` to build it in place)."
    )
