"""Matplotlib plots in napari dock widgets (a Figure on a Qt canvas; never pyplot).

Small classes over one base (:class:`._base.PlotWidget`), in the style of
napari-matplotlib: each subclass has a ``plot(...)`` that takes the numbers
(from a session; no computation here), draws them, and keeps what it drew in
``plotted`` so tests can check the plotted arrays.
"""
