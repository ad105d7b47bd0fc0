"""The bright stars of a big frame, found cheaply and measured at full resolution.

Registering a frame onto a reference needs a few hundred well-measured stars
spread over it, not all of them. Here:

1. the frame is binned ``factor x factor`` (the mean of each block, one pass);
2. its background is the median of each mesh of the binned image (every
   :data:`MESH_STEP`-th pixel of a :data:`MESH`-pixel mesh, a 3x3 median filter
   of the meshes, bilinear in between: :func:`~..stars.detection.mesh_background`), the
   noise the median absolute deviation;
3. the stars are the local maxima (3x3) of the binned image less the background
   above :data:`PEAK_SIGMA` times the noise, away from the edges and the no-data;
4. the brightest of them are measured on the full frame: background (the
   median of a stamp's outer ring), peak, flux, a FWHM from the area above half
   the peak, and Gaussian-windowed centroids (:func:`~.refine.windowed_centroids`)
   in a window of the stars' median FWHM.

The 800 brightest of a 6000x4000 frame: 0.04 CPU-s, against 0.17 for sep's
background and extraction on its 2x2 binning (all its stars, their centroids
re-measured later); a colour frame is searched on the mean of its channels'
binnings and stamps, its frame-sized intensity never made.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.spatial import cKDTree

from ..nodata import find_no_data
from ..stars import StarTable
from ..stars.detection import (
    FWHM_PER_SIGMA,
    bin_image,
    lone_peak_stamps,
    mesh_background,
    near_no_data,
)
from .refine import gather_stamps, windowed_centroids

__all__ = ["QUICK_BIN", "bright_stars", "measure_candidates", "point_like"]

#: Binning of the star search.
QUICK_BIN = 4
#: Background mesh (binned px: 128 full px at 4x4) and the step of the pixels of a mesh
#: whose median is taken (64 of them): the background need only be right on the scale of
#: sky gradients for the bright stars sought.
MESH = 32
MESH_STEP = 4
#: Local maxima of the binned image this many noise sigmas above the background are stars.
PEAK_SIGMA = 5.0
#: Binned px kept clear of the frame's edges and its no-data pixels.
EDGE = 3
#: Candidates measured per star kept (the binned peak ranks them roughly), and centroided
#: (ranked by their flux on the full frame).
CANDIDATES_PER_STAR = 1.5
CENTROIDED_PER_STAR = 1.2
#: Maxima closer than this (binned px) are one star (the brighter kept).
MERGE_RADIUS = 2.0
#: Centroids closer than this many FWHM converged on one star (maxima of a wide star more
#: than MERGE_RADIUS apart: FWHM ~20 px gave 80 such pairs, 10 in the 40 brightest).
SAME_STAR_FWHM = 0.5
#: A clipped star: PLATEAU_MIN_PIXELS stamp pixels within PLATEAU_NEAR of the brightest
#: mark stars from PLATEAU_FRACTION of it as saturated (as :func:`~..stars.plateau_level`).
PLATEAU_MIN_PIXELS = 5
PLATEAU_NEAR = 0.98
PLATEAU_FRACTION = 0.9
#: Width (px) of the outer ring of a stamp whose median is the star's background.
RING = 2
#: Narrowest centroid window (FWHM, px): a window as narrow as undersampled stars pulls
#: their centroids towards pixel centres (simulated FWHM 1.2-1.5 px: 0.025-0.035 px RMS
#: error of the map in its own window, 0.011-0.017 px from 2.5 px).
MIN_WINDOW = 2.5
#: A binned maximum whose brightest full-resolution pixel holds more than this fraction of
#: its light is a hot pixel (dropped before the candidates are ranked).
HOT_FRACTION = 0.6
#: An unsaturated candidate whose half-maximum FWHM exceeds this many times the stars' (the
#: lower quartile of the candidates', at least :data:`MIN_WINDOW`) is not a star: a knot of
#: nebulosity, a small galaxy, a stretch of a satellite trail (they outshine the stars in
#: a stamp and would fill the brightest ranks the quick match uses). Not 2: the faint
#: stars' noisy peaks shrink their half-maximum area, and on a real frame upscaled 3x the
#: quartile (13 px) put the brightest stars (28 px) out. The shortest half of the FWHMs
#: instead of the quartile picked the knots' (capped by the stamps) when they were more.
EXTENDED_RATIO = 2.5
STELLAR_QUANTILE = 25
#: Stamps (radius, px) hold at least this many times the stars' FWHM: stars wider than the
#: first stamps (2 x the binning) are measured again in stamps twice as wide, up to
#: MAX_RADIUS (a real frame upscaled 3x, FWHM ~19 px: its 17 px stamps gave 8 px, a centroid
#: window that left the centroids 0.5-2 px off and the map 1.6 px).
STAMP_PER_FWHM = 1.5
MAX_RADIUS = 32


def _single_pixels(image: np.ndarray, factor: int, xs, ys, back, around) -> np.ndarray:
    """True for binned maxima whose light is mostly one full-resolution pixel (hot pixels,
    cosmic-ray hits): its brightest pixel above the background holds more than
    :data:`HOT_FRACTION` of the light of the 3x3 binned pixels around it (a star of FWHM
    3 px about 0.1, of 1.5 px about 0.4)."""
    off = np.arange(factor)
    rows, cols = ys[:, None] * factor + off, xs[:, None] * factor + off
    block = gather_stamps(image, rows, cols).reshape(len(xs), -1)
    top = block.max(axis=1) - back[ys, xs] if len(xs) else np.zeros(0)
    return top > HOT_FRACTION * factor * factor * around.sum(axis=(1, 2))


def _first_of_neighbours(xy: np.ndarray, radius: float) -> np.ndarray:
    """True for each point that has no earlier point (brighter: sorted) within ``radius``."""
    keep = np.ones(len(xy), bool)
    if len(xy) > 1:
        pairs = cKDTree(xy).query_pairs(radius, output_type="ndarray")
        keep[pairs.max(axis=1)] = False  # the later index of each pair
    return keep


def _binned_peaks(image: np.ndarray, factor: int, binned: np.ndarray, bad: np.ndarray | None,
                  n_keep: int):
    """``(x, y, height)`` of the ``n_keep`` highest local maxima of ``binned`` (``image``
    binned by ``factor``) above the background, single bright pixels left out (sub-pixel:
    the barycentre of the 3x3 binned pixels around each; binned px), highest first."""
    back, sigma = mesh_background(binned, MESH, MESH_STEP, interpolation=cv2.INTER_LINEAR)
    sigma = sigma or float(np.std(binned)) or 1.0  # a flat image: no star stands out anyway
    sub = binned - back
    inner = sub[EDGE:-EDGE, EDGE:-EDGE]
    ys, xs = np.nonzero(inner > PEAK_SIGMA * sigma)  # few pixels: then the local maxima
    ys, xs = ys + EDGE, xs + EDGE
    off = np.arange(-1, 2)
    around = sub[ys[:, None, None] + off[:, None], xs[:, None, None] + off]  # (n, 3, 3)
    top = around.reshape(len(xs), -1).max(axis=1) if len(xs) else np.zeros(0, sub.dtype)
    keep = sub[ys, xs] >= top
    if bad is not None:  # the diamond of 2 EDGE holds the square of EDGE around the star
        keep &= ~near_no_data(bad, xs, ys, 2 * EDGE)
    xs, ys, around = xs[keep], ys[keep], around[keep]
    keep = ~_single_pixels(image, factor, xs, ys, back, around)
    xs, ys, around = xs[keep], ys[keep], around[keep]
    height = sub[ys, xs]
    order = np.argsort(-height)[:int(CANDIDATES_PER_STAR * n_keep)]
    xs, ys, height, around = xs[order], ys[order], height[order], around[order]
    keep = _first_of_neighbours(np.column_stack([xs, ys]), MERGE_RADIUS)  # a flat top: one star
    xs, ys, height, around = xs[keep], ys[keep], height[keep], around[keep]
    around = np.clip(around, 0, None)
    total = np.maximum(around.sum(axis=(1, 2)), 1e-30)
    cx = xs + (around.sum(axis=1) * off).sum(axis=1) / total
    cy = ys + (around.sum(axis=2) * off).sum(axis=1) / total
    return cx, cy, height


def _stamps(image: np.ndarray, x: np.ndarray, y: np.ndarray, radius: int) -> np.ndarray:
    """``(n, 2r+1, 2r+1)`` float64 pixels around each star (edges clipped, no data 0; the
    mean of the channels of a colour image)."""
    h, w = image.shape[-2:]
    off = np.arange(-radius, radius + 1)
    rows = np.clip(np.rint(y).astype(int)[:, None] + off, 0, h - 1)
    cols = np.clip(np.rint(x).astype(int)[:, None] + off, 0, w - 1)
    return gather_stamps(image, rows, cols)


def _binned(image: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The binned intensity (the mean of the channels' binnings) and its no-data mask (None
    if it has none; no data in any channel is no data)."""
    planes = image[None] if image.ndim == 2 else image
    binned, bad = None, None
    for plane in planes:
        one = bin_image(plane, factor)
        one_bad, _ = find_no_data(one)
        if one_bad is not None and one_bad.any():
            bad = one_bad if bad is None else bad | one_bad
        binned = one if binned is None else binned + one
    if len(planes) > 1:
        binned /= len(planes)
    return binned, bad


def _saturated(raw_peak: np.ndarray, stamps: np.ndarray) -> np.ndarray:
    """Stars clipped by the camera (the rule of :func:`~..stars.plateau_level`, on the
    stars' stamps instead of the whole frame)."""
    top = float(raw_peak.max()) if len(raw_peak) else 0.0
    if top <= 0 or np.count_nonzero(stamps >= PLATEAU_NEAR * top) < PLATEAU_MIN_PIXELS:
        return np.zeros(len(raw_peak), bool)
    return raw_peak >= PLATEAU_FRACTION * top


def _measure(image: np.ndarray, x: np.ndarray, y: np.ndarray, radius: int) -> dict:
    """Background, peaks, flux and half-maximum FWHM of the stars at ``(x, y)``."""
    st = _stamps(image, x, y, radius)
    ring = np.ones(st.shape[1:], bool)
    ring[RING:-RING, RING:-RING] = False
    back = np.median(st[:, ring], axis=1)
    raw_peak = st.max(axis=(1, 2))
    above = st - back[:, None, None]
    peak = raw_peak - back
    half = np.count_nonzero(above > 0.5 * peak[:, None, None], axis=(1, 2))
    return {"background": back, "raw_peak": raw_peak, "peak": peak,
            "flux": above.sum(axis=(1, 2)), "npix": half,
            "fwhm": 2.0 * np.sqrt(half / np.pi), "saturated": _saturated(raw_peak, st),
            "lone_peak": lone_peak_stamps(above, peak)}


def point_like(fwhm: np.ndarray, saturated: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """True for candidates as compact as stars (saturated stars always): FWHM at most
    :data:`EXTENDED_RATIO` times the stars' (the :data:`STELLAR_QUANTILE` percentile of the
    ``usable`` candidates' FWHM, at least :data:`MIN_WINDOW`).

    Knots of a nebula or small galaxies several times wider than the stars, and stretches
    of a satellite trail (their half-maximum area a line across the stamp), outshine most
    stars and would otherwise take the brightest ranks the quick match uses.
    """
    if not usable.any():
        return np.ones(len(fwhm), bool)
    stellar = max(float(np.percentile(fwhm[usable], STELLAR_QUANTILE)), MIN_WINDOW)
    return saturated | (fwhm <= EXTENDED_RATIO * stellar)


def measure_candidates(image: np.ndarray, x: np.ndarray, y: np.ndarray, radius: int):
    """``(measures, point_like, window)`` of the candidates: :func:`_measure` in stamps of
    ``radius``, again in stamps twice as wide while :data:`STAMP_PER_FWHM` times the
    window (the median FWHM of the usable, point-like candidates) exceeds the radius."""
    while True:
        m = _measure(image, x, y, radius)
        usable = ~m["saturated"] & (m["peak"] > 0)
        point = point_like(m["fwhm"], m["saturated"], usable) & ~m["lone_peak"]
        usable &= point
        window = float(np.median(m["fwhm"][usable] if usable.any() else m["fwhm"]))
        if STAMP_PER_FWHM * window <= radius or radius >= MAX_RADIUS:
            return m, point, window
        radius = min(2 * radius, MAX_RADIUS)


def bright_stars(image: np.ndarray, max_stars: int, factor: int = QUICK_BIN) -> StarTable:
    """The ``max_stars`` brightest stars of ``image``, centroids windowed at full resolution.

    Parameters
    ----------
    image : ndarray, (y, x) or (c, y, x)
        A colour frame is searched on the mean of its channels' binnings and measured on
        the mean of their stamps (as its :func:`~..stars.intensity`, without making it).
    max_stars : int
    factor : int
        Binning of the search.

    Returns
    -------
    StarTable
        Brightest (stamp flux) first; ``a = b = fwhm / 2.355``, ``theta = 0``; ``npix``
        counts the pixels above half the peak. Stars whose windowed centroid did not
        converge are left out. Empty if none was found.
    """
    image = np.ascontiguousarray(image, dtype=np.float32)
    binned, bad = _binned(image, factor)
    if bad is not None:
        if bad.all():
            return StarTable.empty()
        binned[bad] = np.median(binned[~bad])
    bx, by, _ = _binned_peaks(image, factor, binned, bad, max_stars)
    if len(bx) == 0:
        return StarTable.empty()
    x, y = factor * bx + (factor - 1) / 2.0, factor * by + (factor - 1) / 2.0
    m, point, window = measure_candidates(image, x, y, 2 * factor)
    bright = np.flatnonzero((m["flux"] > 0) & point)
    bright = bright[np.argsort(-m["flux"][bright], kind="stable")]
    bright = bright[:int(CENTROIDED_PER_STAR * max_stars)]
    start = np.column_stack([x[bright], y[bright]])
    xy = windowed_centroids(image, start, max(window, MIN_WINDOW))
    converged = np.any(xy != start, axis=1)  # unmoved: did not converge
    xy, order = xy[converged], bright[converged]
    keep = np.flatnonzero(_first_of_neighbours(xy, SAME_STAR_FWHM * max(window, MIN_WINDOW)))
    xy, order = xy[keep[:max_stars]], order[keep[:max_stars]]
    sigma = m["fwhm"][order] / FWHM_PER_SIGMA
    return StarTable(x=xy[:, 0], y=xy[:, 1], flux=m["flux"][order],
                     peak=m["peak"][order], raw_peak=m["raw_peak"][order],
                     background=m["background"][order], a=sigma, b=sigma.copy(),
                     theta=np.zeros(len(order)), fwhm=m["fwhm"][order],
                     npix=m["npix"][order].astype(int), saturated=m["saturated"][order])
