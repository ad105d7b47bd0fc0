"""Registration from the headers' world coordinates (MSGR fallback when stars do not match).

When both images carry a celestial WCS (a plate solution), the narrow -> wide
map needs no stars: a grid of narrow pixels goes to the sky with the narrow
WCS and back to wide pixels with the wide WCS, and the same model the star
path uses (a homography, plus a smoothing thin-plate spline when the grid
shows distortion, e.g. SIP terms) is fitted to the grid. The stars that do
match are a check: their RMS distance from the model is reported, and a model
they contradict is refused.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree
from scipy.stats import poisson

from .refine import pair_stars
from .transforms import DistortionSpline, WideTransform, apply_homography, fit_homography

__all__ = ["WcsError", "WcsMatch", "celestial_wcs", "register_by_wcs"]

#: Narrow pixels sampled per side for the fit.
GRID_SIDE = 16
#: A spline is added to the homography when the grid residual exceeds this (wide px).
DISTORTION_ABOVE = 0.02
#: Stars within this distance (wide px) of the model's prediction count as matching.
STAR_TOLERANCE = 3.0
#: With at least CHECK_PAIRS matching stars, a median star distance above
#: MAX_STAR_MEDIAN (wide px) refuses the WCS model.
CHECK_PAIRS = 3
MAX_STAR_MEDIAN = 1.5
#: Offsets (wide px) searched for a consistent star displacement the WCS would have missed,
#: the radius within which star differences agree, and how unlikely by chance it must be.
OFFSET_REACH = 30.0
OFFSET_RADIUS = 2.0
OFFSET_CHANCE = 0.02


class WcsError(ValueError):
    """The WCS model cannot be used (the reason in words)."""


@dataclass
class WcsMatch:
    """Result of :func:`register_by_wcs`.

    Attributes
    ----------
    transform : WideTransform
        Narrow pixel -> wide pixel.
    grid_rms_px : float
        RMS residual of the model on the WCS grid (narrow px): how well the
        model reproduces the two WCS.
    narrow_xy, wide_xy : ndarray, (n, 2)
        Stars that match under the model.
    star_rms_px : float
        Their RMS distance from it (narrow px; NaN when none match).
    """

    transform: WideTransform
    grid_rms_px: float
    narrow_xy: np.ndarray
    wide_xy: np.ndarray
    star_rms_px: float


def celestial_wcs(header):
    """The celestial WCS of a FITS header (or a WCS), or None if it has none.

    Header problems that astropy only warns about are not errors here.
    """
    if header is None:
        return None
    from astropy.wcs import WCS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = header if isinstance(header, WCS) else WCS(header)
            wcs = wcs.celestial
    except Exception:  # noqa: BLE001 - astropy raises many kinds for a broken WCS
        return None
    if not wcs.has_celestial or wcs.pixel_n_dim != 2:
        return None
    return wcs


def _grid(shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    ys, xs = np.linspace(0, h - 1, GRID_SIDE), np.linspace(0, w - 1, GRID_SIDE)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.column_stack([xx.ravel(), yy.ravel()])


def _through_sky(narrow_wcs, wide_wcs, xy: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        world = narrow_wcs.pixel_to_world_values(xy[:, 0], xy[:, 1])
        wx, wy = wide_wcs.world_to_pixel_values(*world)
    return np.column_stack([wx, wy])


def register_by_wcs(
    narrow_wcs,
    wide_wcs,
    narrow_shape: tuple[int, int],
    narrow_xy: np.ndarray | None = None,
    wide_xy: np.ndarray | None = None,
) -> WcsMatch:
    """The narrow -> wide model from the two images' WCS, checked against their stars.

    Parameters
    ----------
    narrow_wcs, wide_wcs : astropy.wcs.WCS or fits.Header
        Celestial WCS of each image (0-based pixel convention of astropy's
        ``*_values`` methods, as the rest of the package).
    narrow_shape : (int, int)
        ``(height, width)`` of the narrow image.
    narrow_xy, wide_xy : ndarray, (n, 2), optional
        Detected stars, for the check.

    Raises
    ------
    WcsError
        A header without a celestial WCS, a map that is not finite, or stars
        that contradict it.
    """
    nw, ww = celestial_wcs(narrow_wcs), celestial_wcs(wide_wcs)
    if nw is None or ww is None:
        raise WcsError(f"the {'narrow' if nw is None else 'wide'} image has no celestial WCS")
    src = _grid(narrow_shape)
    dst = _through_sky(nw, ww, src)
    if not np.all(np.isfinite(dst)):
        raise WcsError("the WCS map is not finite over the narrow field")
    h = fit_homography(src, dst)
    resid = dst - apply_homography(h, src)
    spline = None
    if np.sqrt(np.mean(np.sum(resid**2, axis=1))) > DISTORTION_ABOVE:
        hh, wn = narrow_shape
        spline = DistortionSpline(centres=src, displacement=resid, smoothing=1e-6,
                                  origin=np.array([(wn - 1) / 2.0, (hh - 1) / 2.0]),
                                  norm=float(np.hypot(hh, wn) / 2.0))
    transform = WideTransform(homography=h, distortion=spline)
    scale = _wide_per_narrow(h, narrow_shape)
    grid_rms = float(np.sqrt(np.mean(np.sum((transform(src) - dst) ** 2, axis=1)))) / scale
    match = WcsMatch(transform, grid_rms, np.zeros((0, 2)), np.zeros((0, 2)), float("nan"))
    if narrow_xy is None or wide_xy is None or len(narrow_xy) == 0 or len(wide_xy) == 0:
        return match
    _check_offset(transform(narrow_xy), np.asarray(wide_xy, float), scale)
    ni, wj = pair_stars(transform(narrow_xy), np.asarray(wide_xy, float), STAR_TOLERANCE)
    if len(ni) == 0:
        return match
    match.narrow_xy, match.wide_xy = np.asarray(narrow_xy)[ni], np.asarray(wide_xy)[wj]
    dist = np.hypot(*(transform(match.narrow_xy) - match.wide_xy).T)
    match.star_rms_px = float(np.sqrt(np.mean(dist**2))) / scale
    if len(ni) >= CHECK_PAIRS and np.median(dist) > MAX_STAR_MEDIAN:
        raise WcsError(f"the stars contradict the WCS: {len(ni)} matching stars lie a median "
                       f"{np.median(dist) / scale:.2f} narrow px from where it puts them")
    return match


def _check_offset(pred: np.ndarray, wide_xy: np.ndarray, scale: float) -> None:
    """Refuse a WCS that the stars place consistently elsewhere: ``CHECK_PAIRS`` or more
    star differences (wide - predicted, up to ``OFFSET_REACH`` wide px) within
    ``OFFSET_RADIUS`` of each other, away from zero, more than twice the pairs at the
    WCS's own position, and unlikely by chance (``OFFSET_CHANCE`` over the search disc).
    Refusing a right WCS by such a chance is the safe error; the costly one is accepting
    a wrong WCS that no star checks."""
    d = (wide_xy[None, :, :] - pred[:, None, :]).reshape(-1, 2)
    d = d[np.hypot(d[:, 0], d[:, 1]) < OFFSET_REACH]
    if len(d) < CHECK_PAIRS:
        return
    votes = np.array([len(n) for n in cKDTree(d).query_ball_point(d, OFFSET_RADIUS)])
    best = int(np.argmax(votes))
    near = np.hypot(*(d - d[best]).T) < OFFSET_RADIUS
    centre = d[near].mean(axis=0)
    if votes[best] < CHECK_PAIRS or np.hypot(*centre) <= STAR_TOLERANCE:
        return
    at_zero = int(np.count_nonzero(np.hypot(d[:, 0], d[:, 1]) < STAR_TOLERANCE))
    cells = (OFFSET_REACH / OFFSET_RADIUS) ** 2
    chance = cells * poisson.sf(votes[best] - 1, len(d) / cells)
    if votes[best] > 2 * at_zero and chance < OFFSET_CHANCE:
        raise WcsError(f"the stars contradict the WCS: {votes[best]} star pairs agree on an "
                       f"offset of ({centre[0] / scale:+.1f}, {centre[1] / scale:+.1f}) narrow px "
                       "from where it puts them")


def _wide_per_narrow(h: np.ndarray, shape: tuple[int, int]) -> float:
    """Wide px per narrow px of the homography at the narrow centre."""
    c = np.array([(shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0])
    p = apply_homography(h, np.array([c, c + (1.0, 0.0), c + (0.0, 1.0)]))
    jac = np.column_stack([p[1] - p[0], p[2] - p[0]])
    return float(np.sqrt(abs(np.linalg.det(jac))))
