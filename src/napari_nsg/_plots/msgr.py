"""The MSGR plot: narrow vs wide large-scale pixels with the fitted relation (LinearFit)."""

from __future__ import annotations

import numpy as np

from ._base import PlotWidget

POINT_COLOUR = "#5b9bd5"
LINE_COLOUR = "#e8554e"
POINT_SIZE = 2
POINT_ALPHA = 0.3
#: Axis limits: these percentiles of the points (star cores left in the large scales are
#: far out and would squash the cloud), widened by MARGIN of the span.
VIEW_PERCENTILES = (0.5, 99.5)
MARGIN = 0.05


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
        self._zoom(x, y)
        self.keep(wide=x, narrow=y, line_x=scatter["line_x"], line_y=scatter["line_y"])
        self.legend()
        self.draw()

    def _zoom(self, x: np.ndarray, y: np.ndarray) -> None:
        """Limit the axes to the bulk of the points (outliers stay plotted, off view)."""
        if x.size < 2:
            return
        for values, setter in ((x, self.axes.set_xlim), (y, self.axes.set_ylim)):
            lo, hi = np.percentile(values, VIEW_PERCENTILES)
            pad = MARGIN * (hi - lo) if hi > lo else 1.0
            setter(lo - pad, hi + pad)
