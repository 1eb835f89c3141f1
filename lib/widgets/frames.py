"""Frames mode: widgets that still respond on the static website.

A static page has no kernel. So when a chapter executes, a FramesWidget renders its view
for every point of a grid of control values and links the controls to the frames in the
browser (ipywidgets.jslink from each control's `index` to a Stack's `selected_index`;
several controls nest Stacks). Moving a slider on the website changes the picture with no
Python behind it. In a live kernel the same widget also recomputes: the shown frame is
re-rendered on every change, and `add_value` computes frames for a value off the grid.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import ipywidgets as W


@dataclass
class Control:
    """One control of a FramesWidget."""

    name: str  # keyword argument of the render function
    values: Sequence  # the grid of values pre-rendered for the static page
    label: str | None = None  # text beside the control (default: name)
    style: str = "auto"  # "slider", "buttons", or "auto" (buttons for <= 4 non-numeric)
    default: object | None = None  # initial value (default: first value)
    fmt: Callable[[object], str] = field(default=lambda v: f"{v:g}" if isinstance(v, float) else str(v))

    def widget(self) -> W.ValueWidget:
        values = list(self.values)
        labels = [self.fmt(v) for v in values]
        if len(set(labels)) != len(labels):
            raise ValueError(f"control {self.name!r}: values must format to distinct labels")
        options = list(zip(labels, values))
        value = values[0] if self.default is None else self.default
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        style = self.style
        if style == "auto":
            style = "slider" if numeric or len(values) > 4 else "buttons"
        common = dict(options=options, value=value, description=self.label or self.name,
                      style={"description_width": "initial"})
        if style == "slider":
            return W.SelectionSlider(continuous_update=True, layout=W.Layout(width="420px"), **common)
        return W.ToggleButtons(**common)


def figure_to_png(fig, dpi: int = 90, colors: int | None = None) -> bytes:
    """A matplotlib Figure as PNG bytes; the figure is closed. colors: if given, the image
    is reduced to a palette of that many colours (a heat map of a few hues then weighs
    about a quarter as much: what matters for a widget that embeds many frames)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    if colors is None:
        return buf.getvalue()
    if isinstance(colors, bool) or not isinstance(colors, int) or not 2 <= colors <= 256:
        raise ValueError(f"colors must be an int in [2, 256] or None, got {colors!r}")
    from PIL import Image

    image = Image.open(buf).convert("RGB").quantize(colors, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    image.save(out, format="png", optimize=True)
    return out.getvalue()


def _as_widget(view) -> W.Widget:
    """Render output -> widget: a Figure or PNG bytes -> Image, a str -> HTML."""
    if isinstance(view, W.Widget):
        return view
    if isinstance(view, (bytes, bytearray)):
        return W.Image(value=bytes(view), format="png")
    if isinstance(view, str):
        return W.HTML(view)
    if hasattr(view, "savefig"):
        return W.Image(value=figure_to_png(view), format="png")
    raise TypeError(f"render must return a matplotlib Figure, PNG bytes, HTML str or a widget, got {type(view).__name__}")


def _update(target: W.Widget, fresh: W.Widget) -> None:
    """Copy a freshly rendered frame into the displayed one (same kind of widget)."""
    if isinstance(target, W.Image) and isinstance(fresh, W.Image):
        target.value = fresh.value
    elif isinstance(target, W.HTML) and isinstance(fresh, W.HTML):
        target.value = fresh.value


class FramesWidget(W.VBox):
    """Controls + a (nested) Stack holding one rendered frame per grid point."""

    def __init__(self, render: Callable[..., object], controls: Sequence[Control], *,
                 title: str | None = None, live: bool = True, progress: bool = True):
        if not controls:
            raise ValueError("controls must name at least one Control")
        self.render = render
        self.controls = list(controls)
        self.inputs = {c.name: c.widget() for c in self.controls}
        self._frames: dict[tuple, W.Widget] = {}
        self.links: list = []  # the jslinks from controls to stacks (what the static page runs)
        grid = list(itertools.product(*[list(c.values) for c in self.controls]))
        bar = None
        if progress and len(grid) > 4:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(grid), desc="rendering frames", leave=False)
        for point in grid:
            self._frames[point] = _as_widget(render(**dict(zip(self.inputs, point))))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        self.stack = self._build_stack(0, ())
        children = [W.HTML(f"<b>{title}</b>")] if title else []
        children += [W.HBox(list(self.inputs.values()))] if len(self.inputs) <= 2 else list(self.inputs.values())
        children.append(self.stack)
        self._live = live
        if live:
            for w in self.inputs.values():
                w.observe(self._on_change, names="value")
        super().__init__(children, layout=W.Layout(border="1px solid #ddd", padding="6px"))
        self.add_class("mambabook-frames")

    def _build_stack(self, depth: int, prefix: tuple) -> W.Stack:
        ctrl = self.controls[depth]
        w = self.inputs[ctrl.name]
        if depth == len(self.controls) - 1:
            kids = [self._frames[prefix + (v,)] for v in ctrl.values]
        else:
            kids = [self._build_stack(depth + 1, prefix + (v,)) for v in ctrl.values]
        stack = W.Stack(kids, selected_index=w.index)
        self.links.append(W.jslink((w, "index"), (stack, "selected_index")))  # client-side, no kernel
        return stack

    def current(self) -> dict:
        """The values the controls show now."""
        return {name: w.value for name, w in self.inputs.items()}

    def frame(self, **values) -> W.Widget:
        """The frame widget for one grid point."""
        return self._frames[tuple(values[c.name] for c in self.controls)]

    def add_value(self, name: str, value) -> None:
        """Live kernel only: render frames for `value` of control `name` and select it."""
        ctrl = next((c for c in self.controls if c.name == name), None)
        if ctrl is None:
            raise ValueError(f"name must be one of {[c.name for c in self.controls]}, got {name!r}")
        if value not in list(ctrl.values):
            values = list(ctrl.values) + [value]
            if all(isinstance(v, (int, float)) for v in values):
                values.sort()
            ctrl.values = values
            grids = [list(c.values) if c is not ctrl else [value] for c in self.controls]
            for point in itertools.product(*grids):
                self._frames[point] = _as_widget(self.render(**dict(zip(self.inputs, point))))
            fresh = ctrl.widget()
            old = self.inputs[name]
            old.unobserve_all("value")
            old.options = fresh.options
            if self._live:
                for w in self.inputs.values():
                    w.observe(self._on_change, names="value")
            stack = self._build_stack(0, ())
            self.children = tuple(stack if c is self.stack else c for c in self.children)
            self.stack = stack
        self.inputs[name].value = value

    def _on_change(self, _change=None) -> None:
        # live kernel: recompute the frame that is shown (its data may be live measurements)
        values = self.current()
        _update(self.frame(**values), _as_widget(self.render(**values)))


def frames(render: Callable[..., object], *controls: Control, title: str | None = None,
           live: bool = True, **grid: Sequence) -> FramesWidget:
    """Build a FramesWidget: `frames(fn, Control("n", [1, 2, 3]))` or `frames(fn, n=[1, 2, 3])`.

    render(**values) returns a matplotlib Figure, PNG bytes, an HTML string or a widget.
    """
    ctrls = list(controls) + [Control(name, list(values)) for name, values in grid.items()]
    return FramesWidget(render, ctrls, title=title, live=live)
