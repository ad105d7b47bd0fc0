"""The MSGR plot: narrow vs wide large-scale pixels with the fitted relation (LinearFit)."""

from __future__ import annotations

import numpy as np

from ._base import PlotWidget

POINT_COLOUR = "#5b9bd5"
LINE_COLOUR = "#e8554e"
POINT_SIZE = 2
POINT_ALPHA = 0.3


class MsgrFitPlot(PlotWidget):
    """Scatter of the narrow image's large scales against the registered wide image's
    (a regular subsample of the valid pixels) and the fitted line ``narrow = a + b wide``.

    ``plotted`` holds ``wide``, ``narrow`` (the points) and ``line_x``, ``line_y``.
    """

    title = "Linear fit of the large scales"
    xlabel = "wide large scales (ADU)"
    ylabel = "narrow large scales (ADU)"

    def plot(self, scatter: dict, label: str = "") -> None:
        """Draw :meth:`napari_nsg.pipeline.msgr_session.MsgrSession.fit_scatter`'s dict."""
        self.clear()
        x, y = np.asarray(scatter["wide"]), np.asarray(scatter["narrow"])
        self.axes.scatter(x, y, s=POINT_SIZE, c=POINT_COLOUR, alpha=POINT_ALPHA, linewidths=0,
                          label=f"pixels ({len(x)})", rasterized=True)
        a, b = float(scatter["a"]), float(scatter["b"])
        self.axes.plot(scatter["line_x"], scatter["line_y"], color=LINE_COLOUR, linewidth=1.5,
                       label=f"narrow = {a:.4g} + {b:.4g} × wide")
        if label:
            self.axes.set_title(f"{self.title}: {label}", color=self.colours["foreground"])
        self.keep(wide=x, narrow=y, line_x=scatter["line_x"], line_y=scatter["line_y"])
        self.legend()
        self.draw()
