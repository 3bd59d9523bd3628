"""Locate the compiled extension when selfattn is imported from its own source tree.

After ``pip install .`` the compiled ``selfattn._core`` lives in site-packages, but Python started in
the repository's root (``python -m selfattn``, a Jupyter notebook opened there) imports the source
folder ``selfattn/``, which has no compiled module. Rather than fail, load the installed build of
the same version. Anything else gets an ImportError that says what to do.
"""
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import sys


def load_installed_core(package_dir, version):
    try:
        dist = importlib.metadata.distribution("selfattn")
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(
            "selfattn's compiled extension (selfattn._core) is missing: this is the source tree "
            f"({package_dir}) and selfattn is not installed. Run `pip install .` in the "
            "repository's root (or `pip install -e .` to build it in place)."
        ) from None
    for file in dist.files or ():
        if file.parts[:1] != ("selfattn",) or not file.name.startswith("_core."):
            continue
        if file.suffix not in importlib.machinery.EXTENSION_SUFFIXES and not any(
                file.name.endswith(s) for s in importlib.machinery.EXTENSION_SUFFIXES):
            continue
        path = os.path.abspath(str(file.locate()))
        if os.path.dirname(path) == os.path.abspath(package_dir) or not os.path.exists(path):
            continue
        if dist.version != version:
            raise ImportError(
                f"selfattn is being imported from its source tree ({package_dir}, version "
                f"{version}) but the installed build is version {dist.version}; run "
                "`pip install .` again"
            )
        loader = importlib.machinery.ExtensionFileLoader("selfattn._core", path)
        spec = importlib.util.spec_from_file_location("selfattn._core", path, loader=loader)
        module = importlib.util.module_from_spec(spec)
        sys.modules["selfattn._core"] = module
        spec.loader.exec_module(module)
        return module
    raise ImportError(
        "selfattn's compiled extension (selfattn._core) was not found next to "
        f"{package_dir} nor in the installed distribution; run `pip install .` again"
    )
