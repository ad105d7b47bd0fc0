"""The base of the plot widgets: one matplotlib Figure on a Qt canvas, napari's colours."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import QVBoxLayout, QWidget

if TYPE_CHECKING:  # pragma: no cover
    import napari

FIGURE_SIZE = (5.0, 3.5)  # inches
FIGURE_DPI = 100
DARK = {"background": "#262930", "foreground": "#d6d0ce", "grid": "#414851"}
LIGHT = {"background": "#efebe9", "foreground": "#3b3a39", "grid": "#bbbbbb"}


class PlotWidget(QWidget):
    """A dock widget with one matplotlib figure, a toolbar and a single axes.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer, optional
        Used for the theme (dark or light) and by subclasses that follow the viewer.
    parent : QWidget, optional

    Attributes
    ----------
    figure : matplotlib.figure.Figure
    canvas : FigureCanvasQTAgg
    axes : matplotlib.axes.Axes
    plotted : dict of str to ndarray
        What the last ``plot`` drew (for tests and for reading values back).
    """

    title = ""
    xlabel = ""
    ylabel = ""

    def __init__(self, napari_viewer: napari.viewer.Viewer | None = None, parent=None):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg, NavigationToolbar2QT
        from matplotlib.figure import Figure

        super().__init__(parent)
        self.viewer = napari_viewer
        self.figure = Figure(figsize=FIGURE_SIZE, dpi=FIGURE_DPI, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.toolbar = NavigationToolbar2QT(self.canvas, self)
        self.axes = self.figure.add_subplot()
        self.plotted: dict[str, np.ndarray] = {}
        self.setLayout(QVBoxLayout())
        self.layout().addWidget(self.toolbar)
        self.layout().addWidget(self.canvas, 1)
        self.clear()

    @property
    def colours(self) -> dict:
        """Background, foreground and grid colours of napari's theme."""
        theme = getattr(self.viewer, "theme", "dark") if self.viewer is not None else "dark"
        return LIGHT if theme == "light" else DARK

    def clear(self) -> None:
        """Empty the axes and forget what was plotted; apply the theme and labels."""
        c = self.colours
        self.axes.clear()
        self.plotted = {}
        self.figure.set_facecolor(c["background"])
        self.axes.set_facecolor(c["background"])
        for spine in self.axes.spines.values():
            spine.set_color(c["foreground"])
        self.axes.tick_params(colors=c["foreground"], which="both")
        self.axes.grid(True, color=c["grid"], linewidth=0.5)
        self.axes.set_title(self.title, color=c["foreground"])
        self.axes.set_xlabel(self.xlabel, color=c["foreground"])
        self.axes.set_ylabel(self.ylabel, color=c["foreground"])

    def legend(self) -> None:
        """A legend in the theme's colours (if anything has a label)."""
        handles, _ = self.axes.get_legend_handles_labels()
        if handles:
            c = self.colours
            leg = self.axes.legend(fontsize="small", facecolor=c["background"],
                                   edgecolor=c["grid"], labelcolor=c["foreground"])
            leg.set_draggable(True)

    def draw(self) -> None:
        """Redraw the canvas (when Qt is idle)."""
        self.canvas.draw_idle()

    def keep(self, **arrays) -> None:
        """Record plotted arrays in ``plotted``."""
        self.plotted.update({k: np.asarray(v) for k, v in arrays.items()})
