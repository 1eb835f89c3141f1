"""Sphinx extension: offer each chapter as an executed .ipynb on its page (and tidy scripts).

myst-nb writes every executed chapter to _build/jupyter_execute/<doc>.ipynb; this copies
them into the site as _notebooks/<doc>.ipynb, with a first cell that checks that the
`mambabook` library is importable and says how to install it, and without progress-bar
outputs; the page's download menu (sphinx-book-theme's header buttons) gets one ".ipynb"
entry, next to ".md" and ".pdf".
"""

from __future__ import annotations

import json
from pathlib import Path

from reader_pages import strip_progress_outputs

SETUP_SOURCE = """\
# This notebook is a chapter of the book "Mamba vs Transformer". It runs on the book's
# library, mambabook (and PyTorch). If this cell fails, install both, then restart:
#   pip install torch "git+{url}"
# or, in a clone of the repository:  make setup  (or: pip install -e .)
try:
    import mambabook
except ImportError as err:
    raise ImportError(
        "this notebook needs the mambabook library: "
        'pip install torch "git+{url}", '
        "then restart the kernel"
    ) from err
print("mambabook", mambabook.__version__)"""


def setup_cell(url: str) -> dict:
    """The first cell of a downloaded chapter: is mambabook importable, and if not, how."""
    return {"cell_type": "code", "execution_count": None, "id": "mambabook-setup",
            "metadata": {"tags": ["mambabook-setup"]}, "outputs": [],
            "source": SETUP_SOURCE.format(url=url).splitlines(keepends=True)}


def _executed(app) -> Path:
    return Path(app.outdir).parent / "jupyter_execute"


def add_button(app, pagename, templatename, context, doctree):
    if doctree is None or not pagename.startswith("chapters/"):
        return
    url = context["pathto"](f"_notebooks/{pagename}.ipynb", 1)
    for button in context.get("header_buttons", []):
        if button.get("label") == "download-buttons":
            # one .ipynb entry: ours (the theme adds its own when launch buttons are on)
            button["buttons"] = [b for b in button["buttons"] if b.get("text") != ".ipynb"]
            button["buttons"].insert(0, {
                "type": "link", "url": url, "text": ".ipynb", "tooltip": "Download notebook (executed)",
                "icon": "fas fa-code", "label": "download-notebook-button",
            })


def dedupe_scripts(app, pagename, templatename, context, doctree):
    """Drop repeated script tags (sphinx-thebe registers its inline config twice under
    Jupyter Book 1, and a repeated `const` declaration is a JavaScript error)."""
    seen, kept = set(), []
    for js in context.get("script_files", []):
        attrs = getattr(js, "attributes", {}) or {}
        key = (getattr(js, "filename", None) or "", tuple(sorted(attrs.items())))
        if key not in seen:
            seen.add(key)
            kept.append(js)
    context["script_files"] = kept


def copy_notebooks(app, exception):
    if exception is not None or app.builder.name != "html":
        return
    src = _executed(app)
    url = app.config.html_theme_options.get("repository_url", "").rstrip("/")
    for path in src.rglob("*.ipynb"):
        nb = strip_progress_outputs(json.loads(path.read_text(encoding="utf-8")))
        cell = setup_cell(url)
        if (nb["nbformat"], nb["nbformat_minor"]) < (4, 5):
            del cell["id"]  # cell ids came with nbformat 4.5
        nb["cells"].insert(0, cell)
        dest = Path(app.outdir) / "_notebooks" / path.relative_to(src)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def setup(app):
    app.connect("html-page-context", add_button, priority=900)
    app.connect("html-page-context", dedupe_scripts, priority=899)
    app.connect("build-finished", copy_notebooks)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
