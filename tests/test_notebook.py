"""examples/self_attention_tour.ipynb runs from top to bottom in a real Jupyter kernel."""
import importlib.util
import json
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "self_attention_tour.ipynb"
GENERATOR = ROOT / "examples" / "make_self_attention_tour.py"

nbclient = pytest.importorskip(
    "nbclient", reason="nbclient is not installed (it is in the `test` extra: pip install -e .[test])")
import nbformat  # noqa: E402  (nbclient depends on nbformat)


def _kernel_spec_manager(tmp_path):
    """A kernel spec that runs this interpreter, wherever Jupyter's own specs point."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec_dir = tmp_path / "kernels" / "selfattn-test"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "selfattn test", "language": "python",
    }))
    return KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])


def test_tour_runs_without_error(tmp_path, monkeypatch):
    import ipykernel  # noqa: F401  (a missing kernel is a failure, not a skip)
    from jupyter_client.manager import KernelManager

    # The inline backend sends figures to the notebook as PNG (and needs no display).
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    manager = KernelManager(kernel_name="selfattn-test",
                            kernel_spec_manager=_kernel_spec_manager(tmp_path))
    client = nbclient.NotebookClient(nb, km=manager, timeout=120, allow_errors=False,
                                     resources={"metadata": {"path": str(tmp_path)}})
    # raises CellExecutionError on the first failing cell; cleanup_kc: nbclient shuts down a
    # kernel it was given only when asked, and left running, the kernel and its client's
    # sockets were collected later, in another test, with ResourceWarnings
    client.execute(cleanup_kc=True)
    assert not manager.has_kernel                   # the kernel was shut down, not left running
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = json.dumps(outputs)
    assert "No max subtraction" in text            # the buggy solution was diagnosed
    assert "text/html" in text and "<table>" in text  # the report and the trace rendered as HTML
    assert "image/png" in text                      # the heatmaps were drawn


def test_committed_notebook_matches_its_generator():
    spec = importlib.util.spec_from_file_location("make_self_attention_tour", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = nbformat.read(NOTEBOOK, as_version=4)
    built = module.build()
    assert [c.source for c in committed.cells] == [c.source for c in built.cells], \
        "run python examples/make_self_attention_tour.py and commit the notebook"
    assert all(not c.get("outputs") for c in committed.cells if c.cell_type == "code"), \
        "commit the notebook without outputs"
    nbformat.validate(committed)


def test_a_warning_and_an_input_error_show_the_cells_line_in_a_real_kernel(tmp_path):
    """What a learner sees in Jupyter. A float16 overflow: the warning names the call and shows
    the cell's own line, not a line inside selfattn, and the cell still returns its (inf)
    result. A shape error: the cell's line and the message, none of the checks' frames."""
    import ipykernel  # noqa: F401
    from jupyter_client.manager import KernelManager

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import numpy as np\nimport selfattn as sa"),
        nbformat.v4.new_code_cell("Q = np.full((2, 64), 40, np.float16)\n"
                                  "scores = sa.compute_self_attention_scores(Q, Q, scale=1.0)\n"
                                  "scores"),
        nbformat.v4.new_code_cell("K = np.ones((3, 5))\n"
                                  "sa.compute_self_attention_scores(np.ones((3, 4)), K)"),
    ])
    manager = KernelManager(kernel_name="selfattn-test",
                            kernel_spec_manager=_kernel_spec_manager(tmp_path))
    nbclient.NotebookClient(nb, km=manager, timeout=120, allow_errors=True,
                            resources={"metadata": {"path": str(tmp_path)}}).execute(
                                cleanup_kc=True)
    first, warned, failed = (cell.outputs for cell in nb.cells)
    assert not [o for o in first + warned if o.get("output_type") == "error"]
    stderr = "".join(o.text for o in warned if o.get("name") == "stderr")
    assert "RuntimeWarning: compute_self_attention_scores: 4 of the 4 values" in stderr
    assert "scores = sa.compute_self_attention_scores(Q, Q, scale=1.0)" in stderr
    assert "_kernels.py" not in stderr and "_validate.py" not in stderr
    result = [o for o in warned if o.get("output_type") == "execute_result"]
    assert "inf" in result[0]["data"]["text/plain"]
    (error,) = [o for o in failed if o.get("output_type") == "error"]
    assert error.ename == "ValueError" and error.evalue.startswith(
        "compute_self_attention_scores: Q has d_k=4 (Q.shape=(3, 4)) but K has d_k=5")
    shown = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(error.traceback))  # without the colours
    assert "sa.compute_self_attention_scores(np.ones((3, 4)), K)" in shown
    assert "_api.py" not in shown and "_attention_operands" not in shown
    assert shown.count("File ") == 1                # the public call's wrapper, nothing deeper
