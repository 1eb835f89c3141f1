"""mambabook.widgets: frames mode pre-renders every grid point and links controls client-side."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

W = pytest.importorskip("ipywidgets")  # the GPU machine's image has no ipywidgets

from mambabook.widgets import Control, frames  # noqa: E402


def _render(n, kind="sin"):
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.set_title(f"{kind} {n}")
    return fig


def test_every_grid_point_rendered_once():
    calls = []

    def render(a, b):
        calls.append((a, b))
        return f"<p>{a}-{b}</p>"

    w = frames(render, Control("a", [1, 2, 3]), Control("b", ["x", "y"]), live=False)
    assert sorted(calls) == sorted((a, b) for a in (1, 2, 3) for b in ("x", "y"))
    assert w.frame(a=2, b="y").value == "<p>2-y</p>"


def test_controls_jslinked_to_nested_stacks():
    w = frames(lambda a, b: f"{a}{b}", Control("a", [1, 2]), Control("b", [10, 20, 30]), live=False)
    outer = w.stack
    assert isinstance(outer, W.Stack) and len(outer.children) == 2
    assert all(isinstance(c, W.Stack) and len(c.children) == 3 for c in outer.children)
    linked = {(id(link.source[0]), link.source[1], id(link.target[0])) for link in w.links}
    assert (id(w.inputs["a"]), "index", id(outer)) in linked
    for inner in outer.children:
        assert (id(w.inputs["b"]), "index", id(inner)) in linked


def test_figures_become_png_images_and_differ():
    w = frames(_render, n=[1, 2])
    a, b = w.frame(n=1), w.frame(n=2)
    assert isinstance(a, W.Image) and a.value[:4] == b"\x89PNG"
    assert a.value != b.value


def test_live_change_rerenders_shown_frame():
    state = {"offset": 0}

    def render(n):
        return f"{n + state['offset']}"

    w = frames(render, Control("n", [1, 2]))
    state["offset"] = 100
    w.inputs["n"].value = 2
    assert w.frame(n=2).value == "102"
    assert w.frame(n=1).value == "1"


def test_add_value_extends_grid():
    w = frames(lambda n: f"n={n}", Control("n", [1, 3]))
    w.add_value("n", 2)
    assert [v for _, v in w.inputs["n"].options] == [1, 2, 3]
    assert w.frame(n=2).value == "n=2"
    assert w.inputs["n"].value == 2
    assert len(w.stack.children) == 3
    with pytest.raises(ValueError, match="name must be one of"):
        w.add_value("m", 1)


def test_toggle_buttons_for_categories():
    w = frames(lambda model: model, Control("model", ["RNN", "LSTM"]), live=False)
    assert isinstance(w.inputs["model"], W.ToggleButtons)


def test_bad_render_output_rejected():
    with pytest.raises(TypeError, match="render must return"):
        frames(lambda n: 42, n=[1])
    with pytest.raises(ValueError, match="at least one Control"):
        from mambabook.widgets import FramesWidget

        FramesWidget(lambda: "", [])


def _heat_map():
    import numpy as np

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.imshow(np.random.default_rng(0).random((6, 6)), cmap="viridis")
    for i in range(6):
        ax.text(i, i, f"{i}.5", ha="center", va="center", fontsize=7)
    return fig


def test_figure_to_png_palette_is_lighter_and_close():
    import io

    import numpy as np
    from PIL import Image

    from mambabook.widgets import figure_to_png

    full = Image.open(io.BytesIO(raw := figure_to_png(_heat_map()))).convert("RGB")
    small = figure_to_png(_heat_map(), colors=64)
    reduced = Image.open(io.BytesIO(small))
    assert reduced.size == full.size
    assert len(reduced.getcolors(256)) <= 64
    assert len(small) < len(raw)
    diff = np.abs(np.asarray(reduced.convert("RGB"), float) - np.asarray(full, float))
    assert diff.mean() < 2.0  # on a 0..255 scale: the same picture
    for bad in (1, 300, 2.5, True):
        with pytest.raises(ValueError, match="colors must be"):
            figure_to_png(_heat_map(), colors=bad)
