"""MSGR's last step: a smooth spline of what the multiscale model left (NSG-style).

MSGR's model only holds structure larger than about ``2^N`` px: the part of the
narrow gradient that is smaller (the curvature of a light-pollution glow) stays
in the corrected image, and so does whatever star light leaked into the large
scales. This step measures ``corrected - b * wide`` (the corrected narrow image
minus the wide image on its brightness scale: ideally a constant) in a grid of
star-free boxes, fits a smoothed thin-plate spline to the box medians (the
surface of NormalizeScaleGradient, :func:`napari_nsg.core.nsg.spline.fit_surface`)
and subtracts it, keeping the median level.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import cv2
import numpy as np

from .nsg.spline import fit_surface
from .stars import no_data_mask

__all__ = ["SPLINE_SMOOTHNESS", "BoxGrid", "SplineRefinement", "box_grid", "residual_star_mask",
           "spline_refine"]

#: log10 of the spline's smoothing (NSG's scale: nodes in the unit circle).
SPLINE_SMOOTHNESS = -2.0
#: Boxes along the short side of the image (box side = short side / this, at least MIN_BOX).
BOXES_SHORT_SIDE = 16
MIN_BOX = 16
#: Pixels per box side used for the median (a regular subset of larger boxes).
MAX_BOX_SUBSET = 24
#: A box with more than this fraction of star (or no-data) pixels is dropped.
MAX_MASKED_FRACTION = 0.5
#: Star pixels: small-scale excess above this many noise sigma, grown by STAR_GROW px.
STAR_SIGMA = 4.0
STAR_GROW = 2
#: Fewest usable boxes for a spline.
MIN_BOXES = 10
#: Boxes further than this many robust sigma from the first spline are dropped before the second.
CLIP_SIGMA = 3.0
#: The spline is evaluated every box/EVAL_PER_BOX px and interpolated in between.
EVAL_PER_BOX = 4


@dataclass
class SplineRefinement:
    """Result of :func:`spline_refine`.

    Attributes
    ----------
    corrected : ndarray
        The image with the spline removed (same layout as the input).
    surface : ndarray
        The surface removed, minus its median (same layout).
    n_boxes : list of int
        Boxes the spline was fitted to, per channel.
    box : int
        Box side (px).
    rms : list of float
        RMS of the box values around the spline, per channel (ADU).
    smoothness : float
        The spline's smoothness.
    """

    corrected: np.ndarray
    surface: np.ndarray
    n_boxes: list
    box: int
    rms: list
    smoothness: float = SPLINE_SMOOTHNESS


def _robust_sigma(a: np.ndarray) -> float:
    v = a[np.isfinite(a)]
    if v.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


def _channel_mean(a: np.ndarray) -> np.ndarray:
    return a.mean(axis=0) if a.ndim == 3 else a


def residual_star_mask(image: np.ndarray, large: np.ndarray, grow: int = STAR_GROW) -> np.ndarray:
    """Star pixels of ``image``: its small scales (``image - large``) above STAR_SIGMA sigma, grown.

    ``large`` is the image's MMT residual (MSGR's large scales); colour images
    are judged on the mean of their channels.
    """
    small = (_channel_mean(np.asarray(image, np.float32))
             - _channel_mean(np.asarray(large, np.float32)))
    sub = small[:: max(1, small.shape[0] // 512), :: max(1, small.shape[1] // 512)]
    mask = (small > STAR_SIGMA * _robust_sigma(sub)).astype(np.uint8)
    if grow <= 0:
        return mask.astype(bool)
    k = 2 * grow + 1
    return cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))).astype(bool)


@dataclass
class BoxGrid:
    """Boxes of ``box`` px over an image, each read on a regular subset of its pixels.

    ``take(a)`` gathers the subset of a (y, x) or (c, y, x) array: a small image
    of ``(ny * m, nx * m)`` pixels in which box ``(i, j)`` is the block
    ``[i m:(i+1) m, j m:(j+1) m]``; ``stride`` is the subset's pixel spacing.
    """

    box: int
    ny: int
    nx: int
    m: int
    stride: int
    rows: np.ndarray
    cols: np.ndarray

    def take(self, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a)
        return a[..., self.rows[:, None], self.cols[None, :]]

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Box centres (x, y), each ``(ny, nx)``."""
        yc = self.rows.reshape(self.ny, self.m).mean(axis=1)
        xc = self.cols.reshape(self.nx, self.m).mean(axis=1)
        return np.meshgrid(xc, yc)

    def medians(self, values: np.ndarray, bad: np.ndarray):
        """Median of the good subset pixels of each usable box: ``(x, y, median)``."""
        blocks = values.reshape(self.ny, self.m, self.nx, self.m).transpose(0, 2, 1, 3)
        bad_b = bad.reshape(self.ny, self.m, self.nx, self.m).transpose(0, 2, 1, 3)
        flat = np.where(bad_b, np.nan, blocks).reshape(self.ny, self.nx, -1)
        usable = bad_b.reshape(self.ny, self.nx, -1).mean(axis=2) <= MAX_MASKED_FRACTION
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN boxes: dropped below
            med = np.nanmedian(flat, axis=2)
        usable &= np.isfinite(med)
        gx, gy = self.centres()
        return gx[usable], gy[usable], med[usable]


def box_grid(shape: tuple[int, ...]) -> BoxGrid:
    """The boxes of :func:`spline_refine` for an image of this shape."""
    h, w = shape[-2:]
    box = max(MIN_BOX, round(min(h, w) / BOXES_SHORT_SIDE))
    ny, nx = h // box, w // box
    y0, x0 = (h - ny * box) // 2, (w - nx * box) // 2
    stride = max(1, int(np.ceil(box / MAX_BOX_SUBSET)))
    inner = np.arange(stride // 2, box, stride)
    rows = ((y0 + box * np.arange(ny))[:, None] + inner[None, :]).ravel()
    cols = ((x0 + box * np.arange(nx))[:, None] + inner[None, :]).ravel()
    return BoxGrid(box, ny, nx, len(inner), stride, rows, cols)


def _evaluate(surface, shape: tuple[int, int], step: int, level: float) -> np.ndarray:
    """The surface minus ``level`` on a grid every ``step`` px (edges included), interpolated
    to full size."""
    h, w = shape
    xs = np.linspace(0, w - 1, int(np.ceil((w - 1) / step)) + 1)
    ys = np.linspace(0, h - 1, int(np.ceil((h - 1) / step)) + 1)
    gx, gy = np.meshgrid(xs, ys)
    coarse = surface(gx.ravel(), gy.ravel())[:, 0].reshape(gy.shape) - level
    coarse = coarse.astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)


def _fit_spline(residual: np.ndarray, bad: np.ndarray, grid: BoxGrid, smoothness: float):
    x, y, z = grid.medians(residual, bad)
    if len(z) < MIN_BOXES:
        return None, len(z), float("nan"), 0.0
    surface = fit_surface(x, y, z, smoothness=smoothness)
    r = z - surface(x, y)[:, 0]
    keep = np.abs(r - np.median(r)) <= CLIP_SIGMA * max(_robust_sigma(r), 1e-12)
    if MIN_BOXES <= keep.sum() < len(z):
        surface = fit_surface(x[keep], y[keep], z[keep], smoothness=smoothness)
        r = z[keep] - surface(x[keep], y[keep])[:, 0]
    level = float(np.median(surface(x, y)[:, 0]))
    return surface, int(keep.sum()), float(np.sqrt(np.mean(r * r))), level


def spline_refine(
    corrected: np.ndarray,
    fitted_wide: np.ndarray,
    star_mask: np.ndarray | None = None,
    *,
    fits: list | None = None,
    star_sources: tuple = (),
    smoothness: float = SPLINE_SMOOTHNESS,
) -> SplineRefinement:
    """Remove a smooth spline of ``corrected - fitted_wide`` measured in star-free boxes.

    Only a regular subset of each box's pixels is read (at most
    ``MAX_BOX_SUBSET`` per side), so the cost hardly grows with the image.

    Parameters
    ----------
    corrected : ndarray, (y, x) or (c, y, x)
        The narrow image after MSGR.
    fitted_wide : ndarray, (y, x) or (c, y, x)
        The registered wide image on the narrow's scale (``a + b * wide``), per
        channel (a mono one serves every channel); with ``fits``, the wide
        image itself and ``fits[c].apply`` brings it onto the scale (on the
        boxes' pixels only).
    fits : list of LinearFitResult, optional
        Per channel fits of the wide image to the narrow one.
    star_mask : ndarray of bool, (y, x), optional
        Pixels to leave out of the box medians.
    star_sources : sequence of (image, large scales)
        Images whose stars (small-scale excess, :func:`residual_star_mask`, on
        the subset) are left out too.
    smoothness : float
        log10 of the spline's smoothing (NSG's meaning).

    Returns
    -------
    SplineRefinement
    """
    c_planes = corrected[None] if corrected.ndim == 2 else corrected
    h, w = c_planes.shape[-2:]
    grid = box_grid((h, w))
    w_sub = grid.take(fitted_wide)
    w_sub = w_sub[None] if w_sub.ndim == 2 else w_sub
    if fits is not None:
        w_sub = np.stack([fits[c].apply(w_sub[c if len(w_sub) > 1 else 0])
                          for c in range(len(fits))])
    stars = (np.zeros((len(grid.rows), len(grid.cols)), bool) if star_mask is None
             else grid.take(star_mask).astype(bool))
    grow = int(np.ceil(STAR_GROW / grid.stride))
    for image, large in star_sources:
        stars |= residual_star_mask(grid.take(image), grid.take(large), grow)
    out, surf, counts, rms = [], [], [], []
    for c, plane in enumerate(c_planes):
        p_sub = grid.take(plane)
        wide = w_sub[c if len(w_sub) > 1 else 0]
        residual = p_sub - wide
        bad = stars | no_data_mask(p_sub) | ~np.isfinite(residual) | no_data_mask(wide)
        surface, n, err, level = _fit_spline(residual, bad, grid, smoothness)
        counts.append(n)
        rms.append(err)
        if surface is None:
            out.append(plane.copy())
            surf.append(np.zeros_like(plane))
            continue
        s = _evaluate(surface, (h, w), max(1, grid.box // EVAL_PER_BOX), level)
        res = plane - s  # NaN / inf stay as they are
        if (plane == 0).any():  # zero regions are no data and stay 0
            nodata = no_data_mask(plane)
            res[nodata] = plane[nodata]
        out.append(res)
        surf.append(s)
    layout = (lambda p: p[0]) if corrected.ndim == 2 else np.stack
    return SplineRefinement(corrected=layout(out), surface=layout(surf), n_boxes=counts,
                            box=grid.box, rms=rms, smoothness=float(smoothness))
