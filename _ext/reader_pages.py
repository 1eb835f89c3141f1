"""Sphinx extension: the built pages as a reader sees them.

- Progress bars: a chapter shows tqdm bars while it runs (a widget, in Jupyter). The
  executed notebook keeps each bar's output and its widget state, and the static page
  would draw the finished bar, or an empty box. Outputs that view a progress bar (a Box
  holding a Progress model) are dropped from the page and their models from its widget
  state; a notebook run live keeps its bars.
- _ext/static/mambabook.css: a column wide enough for 88 columns of code at 1280 px, and
  widgets that follow the dark theme.
"""

from __future__ import annotations

import json
from pathlib import Path

from docutils import nodes

STATIC = Path(__file__).parent / "static"
VIEW_TAG = '<script type="application/vnd.jupyter.widget-view+json">'


def progress_models(state: dict) -> set[str]:
    """Model ids of progress bars in a widget state: each Box with a Progress child, and
    its children."""
    def name(model_id):
        return state.get(model_id, {}).get("state", {}).get("_model_name", "")

    bars = set()
    for model_id, model in state.items():
        fields = model.get("state", {})
        if not fields.get("_model_name", "").endswith("BoxModel"):
            continue
        kids = [str(c).removeprefix("IPY_MODEL_") for c in fields.get("children", [])]
        if any(name(k).endswith("ProgressModel") for k in kids):
            bars.add(model_id)
            bars.update(kids)
    return bars


def view_model_id(raw_html: str) -> str | None:
    """The model id a widget-view script tag points to, or None for other HTML."""
    text = raw_html.strip()
    if not text.startswith(VIEW_TAG):
        return None
    body = text[len(VIEW_TAG):].removesuffix("</script>").replace("<\\/", "</")
    return json.loads(body).get("model_id")


def _state_entry(app, docname):
    from myst_nb.sphinx_ import NbMetadataCollector

    js = NbMetadataCollector.get_js_files(app.env, docname)
    entry = js.get("ipywidgets_state")
    return None if entry is None else entry[1]


def drop_progress_bars(app, doctree):
    """doctree-read: remove progress-bar views from the page and their widget models."""
    kwargs = _state_entry(app, app.env.docname)
    if kwargs is None:
        return
    payload = json.loads(kwargs["body"].replace("<\\/", "</"))
    bars = progress_models(payload.get("state", {}))
    if not bars:
        return
    for raw in list(doctree.findall(nodes.raw)):
        if view_model_id(raw.astext()) in bars:
            parent = raw.parent
            parent.remove(raw)
            while parent is not None and not parent.children and "cell" not in parent.get("classes", []):
                grand = parent.parent
                grand.remove(parent)
                parent = grand
    payload["state"] = {k: v for k, v in payload["state"].items() if k not in bars}
    kwargs["body"] = json.dumps(payload).replace("</script>", "<\\/script>")


def strip_progress_outputs(nb: dict) -> dict:
    """The same for a notebook (the downloadable copy): drop outputs viewing a progress bar."""
    widgets = nb.get("metadata", {}).get("widgets", {})
    state_doc = widgets.get("application/vnd.jupyter.widget-state+json", {})
    bars = progress_models(state_doc.get("state", {}))
    if not bars:
        return nb
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"] = [
                o for o in cell.get("outputs", [])
                if o.get("data", {}).get("application/vnd.jupyter.widget-view+json", {})
                .get("model_id") not in bars]
    state_doc["state"] = {k: v for k, v in state_doc["state"].items() if k not in bars}
    return nb


def add_static(app):
    app.config.html_static_path.append(str(STATIC))


def setup(app):
    app.connect("builder-inited", add_static)
    app.add_css_file("mambabook.css")
    app.connect("doctree-read", drop_progress_bars)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
