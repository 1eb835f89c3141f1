"""Chapter code fits the page: every line of every code cell within 88 columns.

At 1280 px the book's column shows 88 columns of code (_ext/static/mambabook.css); a
longer line scrolls sideways. The browser tests check the rendered pages, outputs
included; this checks the sources, with no build.
"""

from __future__ import annotations

from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")

CHAPTERS = sorted((Path(__file__).resolve().parents[2] / "chapters").glob("*.md"))
WIDTH = 88

@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_code_cells_fit_in_88_columns(path):
    nb = jupytext.read(path)
    long = [(i, line) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
            for line in cell.source.splitlines() if len(line) > WIDTH]
    assert not long, (f"{path.name}: {len(long)} code lines longer than {WIDTH} columns, "
                      f"e.g. cell {long[0][0]}: {long[0][1]!r}")


def test_the_check_sees_long_lines(tmp_path):
    chapter = tmp_path / "x.md"
    chapter.write_text("---\njupytext:\n  text_representation:\n    format_name: myst\n---\n\n"
                       "```{code-cell} ipython3\nx = '" + "a" * WIDTH + "'\n```\n")
    nb = jupytext.read(chapter)
    assert max(len(line) for line in nb.cells[-1].source.splitlines()) > WIDTH
