"""The NSG plots: photometry, gradient profile, transmission and weight over the frames.

Each plot is fed by the Normalize widget with numbers from the session
(a :class:`~napari_nsg.pipeline.session.FramePreview` or the run's rows); the
plots compute nothing beyond picking what to draw.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ._base import PlotWidget

CHANNEL_COLOURS = ("#e8554e", "#5cb85c", "#5b9bd5")  # R, G, B
MONO_COLOUR = "#d6d0ce"
REJECTED_COLOUR = "#f0ad4e"
SAMPLE_COLOUR = "#f0ad4e"
MODEL_COLOUR = "#5bc0de"
CUTOFF_COLOUR = "#e8554e"
MAX_TICK_LABELS = 12  # more frames: numbers on the x axis instead of names


def channel_colour(c: int, n_channels: int) -> str:
    """Plot colour of channel ``c``: white-ish for mono, R/G/B for colour."""
    return MONO_COLOUR if n_channels == 1 else CHANNEL_COLOURS[c % len(CHANNEL_COLOURS)]


class PhotometryPlot(PlotWidget):
    """Reference flux against target flux of the matched stars, per channel, on log
    axes, with the fitted scale (``ref = scale * target``); rejected pairs marked ×."""

    title = "Photometry"
    xlabel = "target flux (ADU)"
    ylabel = "reference flux (ADU)"

    def plot(self, stars: dict, scale: Sequence[float], name: str = "") -> None:
        """Draw one preview's star pairs.

        Parameters
        ----------
        stars : dict
            ``FramePreview.stars``: ``ref_flux``, ``tgt_flux`` (c, n),
            ``used_per_channel`` (c, n) bool.
        scale : sequence of float
            The fitted scale per channel.
        name : str
            The target's name (title).
        """
        self.clear()
        self.axes.set_title(f"Photometry: {name}" if name else self.title,
                            color=self.colours["foreground"])
        if not stars:
            self.draw()
            return
        ref = np.atleast_2d(stars["ref_flux"])
        tgt = np.atleast_2d(stars["tgt_flux"])
        used = np.atleast_2d(stars.get("used_per_channel", stars.get("used")))
        n_ch = ref.shape[0]
        for c in range(n_ch):
            colour = channel_colour(c, n_ch)
            ok, bad = used[c], ~used[c]
            label = "" if n_ch == 1 else f"{'RGB'[c]} "
            self.axes.scatter(tgt[c][ok], ref[c][ok], s=12, color=colour,
                              label=f"{label}used ({ok.sum()})")
            self.axes.scatter(tgt[c][bad], ref[c][bad], s=24, marker="x",
                              color=REJECTED_COLOUR if n_ch == 1 else colour, alpha=0.8,
                              label=f"{label}rejected ({bad.sum()})")
            line_x = _flux_span(tgt[c])
            self.axes.plot(line_x, scale[c] * line_x, color=colour, linewidth=1,
                           label=f"{label}scale {scale[c]:.4f}")
            self.keep(**{f"target_{c}": tgt[c], f"reference_{c}": ref[c], f"used_{c}": used[c],
                         f"line_{c}": scale[c] * line_x, f"line_x_{c}": line_x})
        # fluxes span decades: on log axes the faint stars and the rejected ones are visible
        self.axes.set_xscale("log")
        self.axes.set_yscale("log")
        self.legend()
        self.draw()


def _flux_span(flux: np.ndarray) -> np.ndarray:
    """The positive range of the fluxes (for the fitted line on log axes)."""
    positive = flux[np.isfinite(flux) & (flux > 0)]
    if positive.size == 0:
        return np.array([1.0, 10.0])
    return np.array([float(positive.min()), float(positive.max())])


class GradientPlot(PlotWidget):
    """A row or column profile of the relative gradient: the kept samples
    (``target*scale - reference``) and the smoothed model the correction subtracts."""

    title = "Gradient profile"
    ylabel = "relative gradient (ADU)"

    def plot(self, profiles: dict | Sequence[dict], axis: str, index: int,
             name: str = "") -> None:
        """Draw ``FramePreview.profile(axis, index, channel)`` of each channel.

        Parameters
        ----------
        profiles : dict or sequence of dict
            One per channel: ``coord``, ``model``, ``samples_coord``, ``samples_value``.
        axis : {"row", "column"}
        index : int
            The row (y) or column (x) shown.
        """
        profiles = [profiles] if isinstance(profiles, dict) else list(profiles)
        self.clear()
        fg, n_ch = self.colours["foreground"], len(profiles)
        self.axes.set_title(f"{name} {axis} {index}", color=fg)
        self.axes.set_xlabel("x (px)" if axis == "row" else "y (px)", color=fg)
        for c, profile in enumerate(profiles):
            label = "" if n_ch == 1 else f"{'RGB'[c]} "
            colour = MODEL_COLOUR if n_ch == 1 else channel_colour(c, n_ch)
            self.axes.scatter(profile["samples_coord"], profile["samples_value"], s=14,
                              color=SAMPLE_COLOUR if n_ch == 1 else colour, alpha=0.8,
                              label=f"{label}samples ({len(profile['samples_coord'])})")
            self.axes.plot(profile["coord"], profile["model"], color=colour, linewidth=1.5,
                           label=f"{label}gradient model")
            suffix = "" if c == 0 else f"_{c}"
            self.keep(**{f"coord{suffix}": profile["coord"], f"model{suffix}": profile["model"],
                         f"samples_coord{suffix}": profile["samples_coord"],
                         f"samples_value{suffix}": profile["samples_value"]})
        self.plotted["index"] = np.asarray(index)
        self.legend()
        self.draw()


class WeightsPlot(PlotWidget):
    """Relative transmission and weight of every frame with the cut-off lines;
    rejected frames are marked ×. Clicking a panel moves its cut-off there
    (``on_cutoff(min_weight, min_transmission)`` is then called)."""

    title = "Transmission and weight"

    def __init__(self, napari_viewer=None, parent=None):
        super().__init__(napari_viewer, parent)
        self.figure.clear()
        self.axes, self.weight_axes = self.figure.subplots(2, 1, sharex=True)
        self.on_cutoff: Callable[[float, float], None] | None = None
        self.min_weight = 0.0
        self.min_transmission = 0.0
        self.canvas.mpl_connect("button_press_event", self._clicked)
        self.clear()

    def clear(self) -> None:
        super().clear()
        if hasattr(self, "weight_axes"):
            ax, c = self.weight_axes, self.colours
            ax.clear()
            ax.set_facecolor(c["background"])
            for spine in ax.spines.values():
                spine.set_color(c["foreground"])
            ax.tick_params(colors=c["foreground"], which="both")
            ax.grid(True, color=c["grid"], linewidth=0.5)
            ax.set_ylabel("weight", color=c["foreground"])
            ax.set_xlabel("frame", color=c["foreground"])
            self.axes.set_ylabel("transmission", color=c["foreground"])
            self.axes.set_xlabel("")

    def plot(self, rows: Sequence[dict], min_weight: float, min_transmission: float) -> None:
        """Draw the rows of ``session.results_table(...)`` with these cut-offs."""
        self.clear()
        self.min_weight, self.min_transmission = float(min_weight), float(min_transmission)
        x = np.arange(len(rows))
        trans = np.array([_num(r.get("relative_transmission")) for r in rows])
        weight = np.array([_num(r.get("relative_weight")) for r in rows])
        rejected = np.array([bool(r.get("rejected")) for r in rows], dtype=bool)
        fg = self.colours["foreground"]
        for ax, values, cut in ((self.axes, trans, min_transmission),
                                (self.weight_axes, weight, min_weight)):
            ax.plot(x, values, color=MODEL_COLOUR, linewidth=0.8)
            ax.scatter(x[~rejected], values[~rejected], s=20, color=MODEL_COLOUR, label="kept")
            ax.scatter(x[rejected], values[rejected], s=40, marker="x", color=CUTOFF_COLOUR,
                       label="rejected")
            ax.axhline(cut, color=CUTOFF_COLOUR, linestyle="--", linewidth=1,
                       label=f"cut-off {cut:.2f}")
        self.axes.set_title(f"{(~rejected).sum()} kept, {rejected.sum()} rejected "
                            "(click a panel to move its cut-off)", color=fg, fontsize="small")
        labels = [_stem(str(r.get("name", i))) for i, r in enumerate(rows)]
        self.weight_axes.set_xticks(x, labels if len(rows) <= MAX_TICK_LABELS else None,
                                    rotation=30 if len(rows) > 4 else 0, ha="right",
                                    fontsize="x-small")
        self.keep(transmission=trans, weight=weight, rejected=rejected,
                  cutoffs=np.array([min_weight, min_transmission]))
        self.legend()
        self.draw()

    def _clicked(self, event) -> None:
        if event.inaxes is None or event.ydata is None or self.on_cutoff is None:
            return
        if event.inaxes is self.weight_axes:
            self.on_cutoff(float(event.ydata), self.min_transmission)
        elif event.inaxes is self.axes:
            self.on_cutoff(self.min_weight, float(event.ydata))


def _stem(name: str) -> str:
    """A frame name without its FITS/XISF extension (tick labels)."""
    for suffix in (".fits", ".fit", ".fts", ".fz", ".xisf"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _num(value) -> float:
    return float(value) if value is not None else float("nan")
