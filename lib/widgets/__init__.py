"""Widgets: thin views over pure functions (chapters -> widgets -> compute -> kernels).

`frames` builds widgets that respond on the static website as well as in a live kernel.
"""

from .frames import Control, FramesWidget, figure_to_png, frames

__all__ = ["Control", "FramesWidget", "figure_to_png", "frames"]
