"""The README's recipes quote the examples the tests run, word for word, so they cannot drift.

A code block right after an ``<!-- example: examples/... -->`` marker must appear verbatim in that
example (in a notebook: in one of its cells), and every quoted example must be run by a test. Checks
README.md and README.recipes.md, whichever exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.paths import ROOT, TESTS

MARKED_BLOCK = re.compile(r"<!-- example: (\S+) -->\n```python\n(.*?)\n```", re.DOTALL)
DOCS = [p for p in (ROOT / "README.md", ROOT / "README.recipes.md") if p.exists()]


def example_text(path: Path) -> str:
    if path.suffix == ".ipynb":
        import nbformat

        notebook = nbformat.read(path, as_version=4)
        return "\n\n".join(cell.source for cell in notebook.cells)
    return path.read_text()


def quoted_blocks() -> list[tuple[str, str, str]]:
    return [
        (doc.name, match.group(1), match.group(2))
        for doc in DOCS
        for match in MARKED_BLOCK.finditer(doc.read_text())
    ]


@pytest.mark.skipif(not DOCS, reason="no README yet")
def test_the_readme_quotes_examples() -> None:
    assert len(quoted_blocks()) >= 8


@pytest.mark.parametrize(("doc", "example", "code"), quoted_blocks())
def test_quoted_code_is_in_the_example(doc: str, example: str, code: str) -> None:
    path = ROOT / example
    assert path.is_file(), f"{doc} quotes {example}, which does not exist"
    assert code in example_text(path), f"{doc}: this block is not in {example}:\n{code}"


@pytest.mark.parametrize("example", sorted({example for _, example, _ in quoted_blocks()}))
def test_quoted_examples_are_run_by_a_test(example: str) -> None:
    name = Path(example).name
    runners = [p for p in TESTS.rglob("test_*.py") if p.resolve() != Path(__file__).resolve()]
    assert any(name in runner.read_text() for runner in runners), example
