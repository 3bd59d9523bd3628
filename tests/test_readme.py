"""The README's Python examples run as written, top to bottom in one session, as a reader would
paste them into a notebook (the grader example is a file of its own, tested elsewhere)."""
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
GRADER_MARKER = "# test_self_attention.py"


@pytest.mark.skipif(not README.exists(), reason="tests are not inside a source checkout")
def test_readme_examples_run():
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    code = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    session = {}
    ran = 0
    for index, block in enumerate(code):
        if block.startswith(GRADER_MARKER):
            continue
        exec(compile(block, f"README.md python block {index}", "exec"), session)
        ran += 1
    assert ran >= 4
