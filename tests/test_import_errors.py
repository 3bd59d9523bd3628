"""When selfattn._core cannot be imported, the error says what failed and where selfattn is
installed (the original ImportError chained), and calls it a source tree only when it is one."""
import os
import pathlib
import subprocess
import sys

import selfattn
import pytest

pytestmark = pytest.mark.c_backend  # about the C extension itself (conftest.py)

PACKAGE_DIR = pathlib.Path(selfattn.__file__).parent
CORE_DIR = pathlib.Path(selfattn._core.__file__).parent

REPORT = """
try:
    import selfattn
except ImportError as exc:
    print("MESSAGE:", exc)
    print("CAUSE:", repr(exc.__cause__))
else:
    print("IMPORTED")
"""


def _import_with(tmp_path, setup):
    """Imports selfattn in a fresh interpreter, outside any source tree, after `setup`."""
    # the selfattn these tests imported (an in-place build in the sanitizer runs), not another
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(PACKAGE_DIR.parent)]))
    run = subprocess.run([sys.executable, "-c", setup + REPORT], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    return run.stdout


def test_a_broken_numpy_is_named_with_the_installed_location(tmp_path):
    fake = tmp_path / "numpy"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('simulated: this NumPy is broken')\n")
    out = _import_with(tmp_path, "")
    assert "IMPORTED" not in out, out
    message = out.split("MESSAGE:")[1].split("CAUSE:")[0]
    assert "failed to import" in message, message
    if CORE_DIR == PACKAGE_DIR:
        assert "source tree" not in message and "pip install ." not in message, message
        assert f"installed in {PACKAGE_DIR}" in message, message
    else:   # a source checkout without its own build (`python -m pytest` there) uses an installed one
        assert f"source tree ({PACKAGE_DIR.parent})" in message, message
        assert f"installed in {CORE_DIR.parent}" in message, message
    assert "CAUSE: ImportError" in out, out


def test_the_original_error_is_chained(tmp_path):
    if CORE_DIR != PACKAGE_DIR:
        pytest.skip("a source checkout without its own build loads the installed one instead")
    out = _import_with(tmp_path, "import sys; sys.modules['selfattn._core'] = None\n")
    message = out.split("MESSAGE:")[1].split("CAUSE:")[0]
    assert f"installed in {PACKAGE_DIR}" in message and "source tree" not in message, out
    assert "halted" in out.split("CAUSE:")[1], out       # Python's own words for the failure


def test_a_build_against_numpy_1_says_so_and_how_to_rebuild(tmp_path):
    """An install reviewer's run: built with --no-build-isolation against NumPy 1.23, then NumPy
    upgraded to 2.x: "numpy.core.multiarray failed to import. Check that NumPy imports in this
    interpreter", which it does."""
    import numpy as np

    from selfattn._find_core import load_installed_core
    if int(np.__version__.split(".")[0]) < 2:
        pytest.skip("NumPy 1.x loads a NumPy 1.x build")
    (tmp_path / os.path.basename(selfattn._core.__file__)).write_bytes(b"")
    with pytest.raises(ImportError) as info:
        load_installed_core(str(tmp_path), "0.1.0",
                            ImportError("numpy.core.multiarray failed to import"))
    message = str(info.value)
    assert "This build was made against NumPy 1.x" in message, message
    assert f"NumPy {np.__version__}, installed here, cannot load" in message
    assert "pip install --force-reinstall --no-cache-dir ." in message
    assert "Check that NumPy imports" not in message
    with pytest.raises(ImportError, match="Check that NumPy imports"):
        load_installed_core(str(tmp_path), "0.1.0", ImportError("something else"))
