"""Sphinx extension: offer each chapter as an executed .ipynb on its page (and tidy scripts).

myst-nb writes every executed chapter to _build/jupyter_execute/<doc>.ipynb; this copies
them into the site as _notebooks/<doc>.ipynb and adds an ".ipynb" entry to the page's
download menu (sphinx-book-theme's header buttons), next to ".md" and ".pdf".
"""

from __future__ import annotations

import shutil
from pathlib import Path


def _executed(app) -> Path:
    return Path(app.outdir).parent / "jupyter_execute"


def add_button(app, pagename, templatename, context, doctree):
    if doctree is None or not pagename.startswith("chapters/"):
        return
    url = context["pathto"](f"_notebooks/{pagename}.ipynb", 1)
    for button in context.get("header_buttons", []):
        if button.get("label") == "download-buttons":
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
    for nb in src.rglob("*.ipynb"):
        dest = Path(app.outdir) / "_notebooks" / nb.relative_to(src)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(nb, dest)


def setup(app):
    app.connect("html-page-context", add_button, priority=900)
    app.connect("html-page-context", dedupe_scripts, priority=899)
    app.connect("build-finished", copy_notebooks)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
