"""The README's and docs/' Python examples run as written, top to bottom in one session per file,
as a reader would paste them into a notebook (the grader example is a file of its own, tested
elsewhere), and every relative link between them points at a file that exists."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
GRADER_MARKER = "# test_self_attention.py"

pytestmark = pytest.mark.skipif(not README.exists(), reason="tests are not inside a source checkout")


def run_python_blocks(path):
    """Executes the file's ```python blocks in one namespace; returns how many ran."""
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    code = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    session = {}
    ran = 0
    for index, block in enumerate(code):
        if block.startswith(GRADER_MARKER):
            continue
        exec(compile(block, f"{path.name} python block {index}", "exec"), session)
        ran += 1
    return ran


def test_readme_examples_run():
    assert run_python_blocks(README) >= 4


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_examples_run(doc):
    run_python_blocks(doc)


def anchors(path):
    """The anchors GitHub makes of a Markdown file's headings."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", path.read_text(), flags=re.S),
                          flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", [README] + DOCS, ids=lambda p: p.name)
def test_relative_links_point_at_files_and_headings(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if "://" in target or target.startswith("mailto:"):
            continue
        file, _, anchor = target.partition("#")
        path = page.parent / file if file else page
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
            broken.append(target)
    assert not broken, f"{page.name} has broken links: {broken}"
