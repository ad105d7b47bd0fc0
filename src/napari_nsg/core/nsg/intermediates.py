"""What NSG computed on the way, in the form a viewer draws it.

Small immutable tables (photutils style: arrays as attributes, ``to_table()``
gives an :class:`astropy.table.Table`) built from what the engine already
holds, without re-running anything:

* :class:`StarPairs` -- the matched star pairs, their per-channel fluxes and
  errors, whether the scale fit used them and why not;
* :class:`SampleBins` -- every bin of the sample grid, its value
  ``target*scale - reference``, kept or rejected and why;
* :class:`SplineNodes` -- the nodes the surface spline was fitted to;
* :class:`RejectionCircles` -- the circles around bright reference stars.

Per-channel arrays are ``(n, c)`` (one row per star, bin or node).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from .samples import MAX_NO_DATA_FRACTION, SampleGrid, Samples, robust_rows, star_rejection

# why a sample bin was not used for the gradient (in the order they are tested)
BIN_REFERENCE_NO_DATA = "reference has no data"
BIN_STAR_CIRCLE = "inside a bright star's rejection circle"
BIN_STARS = "mostly covered by stars"
BIN_TARGET_NO_DATA = "target has no data"
BIN_NO_VALUE = "no valid pixel"


class _Table:
    """``to_table()`` and ``len()`` for the dataclasses below."""

    def __len__(self) -> int:
        return len(getattr(self, fields(self)[0].name))

    def to_table(self):
        """The rows as an :class:`astropy.table.Table` (one column per attribute)."""
        from astropy.table import Table

        return Table({f.name: np.asarray(getattr(self, f.name)) for f in fields(self)})


@dataclass(frozen=True)
class StarPairs(_Table):
    """Matched reference/target star pairs and their photometry.

    Attributes
    ----------
    x, y : ndarray (n,)
        Reference star positions (px).
    tgt_x, tgt_y : ndarray (n,)
        Target star positions (px).
    ref_flux, tgt_flux, ref_err, tgt_err : ndarray (n, c)
        Aperture fluxes and their errors (NaN where not measurable).
    radius : ndarray (n,)
        Aperture radius (px).
    used : ndarray of bool (n, c)
        Used by the scale fit of each channel.
    reason : ndarray of str (n,)
        '' for a pair used in every channel, else why not (the first channel
        that left it out; prefixed with the channel in colour).
    """

    x: np.ndarray
    y: np.ndarray
    tgt_x: np.ndarray
    tgt_y: np.ndarray
    ref_flux: np.ndarray
    tgt_flux: np.ndarray
    ref_err: np.ndarray
    tgt_err: np.ndarray
    radius: np.ndarray
    used: np.ndarray
    reason: np.ndarray


def star_pairs(candidates, scale_result) -> StarPairs:
    """The star pairs of a :class:`~napari_nsg.core.nsg.ScaleResult`.

    Parameters
    ----------
    candidates : StarTable
        ``ReferenceModel.candidates`` (what ``match.ref_index`` points into).
    scale_result : ScaleResult
    """
    sr = scale_result
    ref_ph, tgt_ph = sr.ref_photometry, sr.target_photometry
    n = len(sr.match.ref_index)
    ref = candidates.take(sr.match.ref_index)
    tgt = sr.target_stars.take(sr.match.tgt_index)
    used = np.column_stack([c.used for c in sr.channels]) if sr.channels else np.zeros((n, 0), bool)
    reason = np.full(n, "", dtype=object)
    colour = len(sr.channels) > 1
    for c in reversed(range(len(sr.channels))):
        why = sr.channels[c].reason
        if why is None:
            continue
        bad = why != ""
        prefix = f"channel {c}: " if colour else ""
        reason[bad] = [prefix + str(w) for w in why[bad]]
    return StarPairs(
        x=np.asarray(ref.x, float), y=np.asarray(ref.y, float),
        tgt_x=np.asarray(tgt.x, float), tgt_y=np.asarray(tgt.y, float),
        ref_flux=ref_ph.flux.T, tgt_flux=tgt_ph.flux.T,
        ref_err=ref_ph.flux_err.T, tgt_err=tgt_ph.flux_err.T,
        radius=np.asarray(ref_ph.radius, float), used=used, reason=reason.astype(str),
    )


@dataclass(frozen=True)
class SampleBins(_Table):
    """Every bin of the sample grid for one target.

    Attributes
    ----------
    x, y : ndarray (n,)
        Bin centres (px).
    value : ndarray (n, c)
        Robust mean of ``target*scale - reference`` (NaN where either frame has
        no data).
    kept : ndarray of bool (n,)
        Used as a gradient sample (exactly the bins of the engine's ``Samples``).
    reason : ndarray of str (n,)
        '' for a kept bin, else why it was dropped.
    """

    x: np.ndarray
    y: np.ndarray
    value: np.ndarray
    kept: np.ndarray
    reason: np.ndarray


def sample_bins(grid: SampleGrid, target: np.ndarray, scale,
                circles: "RejectionCircles") -> SampleBins:
    """Values and fate of every grid bin (as :func:`.samples.measure_samples` decides).

    Parameters
    ----------
    grid : SampleGrid
        The reference's grid.
    target : ndarray
        ``(y, x)`` or ``(c, y, x)``.
    scale : array_like (c,)
    circles : RejectionCircles
        The reference's rejection circles (to tell them from star-covered bins).
    """
    tgt = grid.subset(target)
    scale = np.asarray(scale, np.float32).reshape(-1, 1, 1)
    tgt_ok = np.all(np.isnan(tgt).mean(axis=2) < MAX_NO_DATA_FRACTION, axis=0)
    diff = tgt * scale - grid.ref_values
    if grid.star_pixels is not None:
        diff[:, grid.star_pixels] = np.nan
    mean, _, _, count = robust_rows(diff)
    has_value = np.all(np.isfinite(mean) & (count > 0), axis=0)
    in_circle = star_rejection(grid, circles.x, circles.y, circles.radius)
    reason = np.full(grid.n_bins, "", dtype=object)
    for bad, why in ((~has_value, BIN_NO_VALUE), (~tgt_ok, BIN_TARGET_NO_DATA),
                     (grid.star_rejected & ~in_circle, BIN_STARS),
                     (grid.star_rejected & in_circle, BIN_STAR_CIRCLE),
                     (~grid.ref_ok, BIN_REFERENCE_NO_DATA)):
        reason[bad] = why  # later tests win: the first reason in the list above
    cx, cy = grid.centers
    return SampleBins(x=cx, y=cy, value=mean.T.astype(np.float64),
                      kept=reason == "", reason=reason.astype(str))


@dataclass(frozen=True)
class SplineNodes(_Table):
    """The nodes of the fitted surface.

    Attributes
    ----------
    x, y : ndarray (n,)
        Node positions (px): bin centres, or member means of super-samples.
    value : ndarray (n, c)
        Node values (``target*scale - reference``).
    weight : ndarray (n,)
        Member count (1 unless samples were binned).
    """

    x: np.ndarray
    y: np.ndarray
    value: np.ndarray
    weight: np.ndarray


def spline_nodes(nodes: Samples) -> SplineNodes:
    """The nodes a surface was fitted to (the binned samples)."""
    return SplineNodes(x=np.asarray(nodes.x, float), y=np.asarray(nodes.y, float),
                       value=np.asarray(nodes.values, float),
                       weight=np.asarray(nodes.weight, float))


@dataclass(frozen=True)
class RejectionCircles(_Table):
    """Circles around the brightest reference stars; bins inside are dropped.

    Attributes
    ----------
    x, y, radius : ndarray (n,)
        Centre and radius (px).
    """

    x: np.ndarray
    y: np.ndarray
    radius: np.ndarray
