"""How long each chapter takes to execute as a notebook, top to bottom, in a fresh kernel with
an empty Triton cache: what a reader's first run costs (on a GPU machine, the chapters
run their larger sizes). Writes one JSON row per chapter (seconds, or the error).

Usage (from the repository root; needs jupytext, nbclient and ipykernel):
    python benchmarks/execute_chapters.py --out chapters.json chapters/07_triton_kernel.md ...
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import jupytext
from nbclient import NotebookClient


def execute(chapter: Path, timeout: int) -> dict:
    """Execute one chapter in its own folder; wall seconds, or the error's last lines."""
    nb = jupytext.read(chapter)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TRITON_CACHE_DIR"] = cache  # the kernel inherits it: nothing compiled
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(chapter.parent)}})
        t0 = time.perf_counter()
        try:
            client.execute()
            error = None
        except Exception as err:  # noqa: BLE001 - a failing chapter is a result to report
            error = str(err)[-2000:]
        seconds = time.perf_counter() - t0
    return dict(chapter=chapter.name, seconds=round(seconds, 1), error=error,
                cells=sum(c.cell_type == "code" for c in nb.cells))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="+", type=Path)
    parser.add_argument("--out", required=True, help="JSON rows go here")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args()
    rows = []
    for chapter in args.chapters:
        rows.append(execute(chapter.resolve(), args.timeout))
        print(json.dumps(rows[-1])[:400], flush=True)
        with open(args.out, "w") as f:  # after each chapter: a timeout keeps what finished
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
