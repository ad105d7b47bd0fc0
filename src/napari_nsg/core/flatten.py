"""Flatten the wide image: remove its own gradient with a low-order surface (optional MSGR step).

MSGR copies the wide image's gradient into the corrected narrow one (the model
is narrow / wide at large scales), so the nightphotons guide removes the wide's
gradient first with a simple background model. Here: a plane (degree 1) or a
quadratic surface (degree 2) fitted over the wide image's *whole field* on
block medians (stars vanish in a median of many pixels), iteratively
sigma-clipped so the blocks on bright nebulae and big stars drop out, then
subtracted (``mode="subtract"``, for an additive sky glow: the image keeps its
median sky level) or divided out (``mode="divide"``, for vignetting-like
multiplicative gradients).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .stars import no_data_mask

__all__ = ["FLATTEN_MODES", "FLATTEN_SURFACES", "FlatSurface", "fit_sky_surface", "flatten_image"]

#: Surface name -> polynomial degree.
FLATTEN_SURFACES = {"plane": 1, "quadratic": 2}
FLATTEN_MODES = ("subtract", "divide")
#: Blocks along the short side of the image for the block medians.
BLOCKS_SHORT_SIDE = 32
#: Upper clip (nebulae, stars are brighter than the sky) and lower clip, in robust sigma.
CLIP_HIGH = 1.0
CLIP_LOW = 4.0
MAX_ITERATIONS = 10
#: A block needs this fraction of valid pixels to count.
MIN_BLOCK_VALID = 0.5


@dataclass
class FlatSurface:
    """A fitted sky surface of one image.

    Attributes
    ----------
    surface : ndarray, float32
        The surface at every pixel, ``(y, x)`` or ``(c, y, x)`` like the image.
    level : list of float
        Per channel median of the surface (the level kept).
    kept_fraction : list of float
        Per channel fraction of blocks used after clipping.
    degree : int
    """

    surface: np.ndarray
    level: list
    kept_fraction: list
    degree: int


def _terms(u: np.ndarray, v: np.ndarray, degree: int) -> np.ndarray:
    cols = [np.ones_like(u)]
    for d in range(1, degree + 1):
        for k in range(d + 1):
            cols.append(u ** (d - k) * v**k)
    return np.column_stack(cols)


def _block_medians(plane: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block centres (x, y) and medians of the valid pixels of one channel."""
    h, w = plane.shape
    b = max(4, min(h, w) // BLOCKS_SHORT_SIDE)
    ny, nx = h // b, w // b
    data = np.where(no_data_mask(plane), np.nan, plane)[: ny * b, : nx * b]
    blocks = data.reshape(ny, b, nx, b).transpose(0, 2, 1, 3).reshape(ny, nx, b * b)
    valid = np.isfinite(blocks).mean(axis=2) >= MIN_BLOCK_VALID
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(blocks, axis=2)
    yy, xx = np.mgrid[0:ny, 0:nx]
    ok = valid & np.isfinite(med)
    return (xx[ok] + 0.5) * b - 0.5, (yy[ok] + 0.5) * b - 0.5, med[ok]


def _fit_plane(plane: np.ndarray, degree: int) -> tuple[np.ndarray, float]:
    h, w = plane.shape
    x, y, m = _block_medians(plane)
    n_terms = (degree + 1) * (degree + 2) // 2
    if m.size < 3 * n_terms:
        raise ValueError(f"only {m.size} sky blocks with data: too few to fit a surface")
    cx, cy = (w - 1) / 2, (h - 1) / 2
    design = _terms((x - cx) / cx, (y - cy) / cy, degree)
    keep = np.ones(m.size, bool)
    coef = np.zeros(n_terms)
    for _ in range(MAX_ITERATIONS):
        coef, *_ = np.linalg.lstsq(design[keep], m[keep], rcond=None)
        r = m - design @ coef
        sigma = 1.4826 * np.median(np.abs(r[keep] - np.median(r[keep]))) + 1e-12
        new = (r < CLIP_HIGH * sigma) & (r > -CLIP_LOW * sigma)
        if new.sum() < 3 * n_terms or np.array_equal(new, keep):
            break
        keep = new
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    surface = _terms(((xx - cx) / cx).ravel(), ((yy - cy) / cy).ravel(), degree) @ coef
    return surface.reshape(h, w).astype(np.float32), float(keep.mean())


def fit_sky_surface(image: np.ndarray, surface: str = "plane") -> FlatSurface:
    """Fit a low-order sky surface to the whole image, stars and bright nebulae clipped.

    Parameters
    ----------
    image : ndarray, (y, x) or (c, y, x)
        The image (no-data pixels are ignored).
    surface : {"plane", "quadratic"}
        Polynomial degree 1 or 2 in the pixel coordinates.

    Returns
    -------
    FlatSurface

    Raises
    ------
    ValueError
        Unknown surface, or too few valid blocks.
    """
    if surface not in FLATTEN_SURFACES:
        raise ValueError(f"unknown surface {surface!r}; use one of {tuple(FLATTEN_SURFACES)}")
    degree = FLATTEN_SURFACES[surface]
    arr = np.asarray(image, dtype=np.float32)
    planes = arr[None] if arr.ndim == 2 else arr
    fitted = [_fit_plane(p, degree) for p in planes]
    surf = np.stack([s for s, _ in fitted])
    levels = [float(np.median(s)) for s in surf]
    return FlatSurface(surface=surf[0] if arr.ndim == 2 else surf, level=levels,
                       kept_fraction=[k for _, k in fitted], degree=degree)


def flatten_image(image: np.ndarray, surface: str = "plane",
                  mode: str = "subtract") -> tuple[np.ndarray, FlatSurface]:
    """The image without its fitted sky surface (median level kept); no-data stays no-data.

    Parameters
    ----------
    image : ndarray, (y, x) or (c, y, x)
    surface : {"plane", "quadratic"}
    mode : {"subtract", "divide"}
        ``image - (S - med(S))`` or ``image * med(S) / S``.

    Returns
    -------
    (ndarray, FlatSurface)
        The flattened image (float32) and the surface.
    """
    if mode not in FLATTEN_MODES:
        raise ValueError(f"unknown flatten mode {mode!r}; use one of {FLATTEN_MODES}")
    arr = np.asarray(image, dtype=np.float32)
    fit = fit_sky_surface(arr, surface)
    planes = arr[None] if arr.ndim == 2 else arr
    surf = fit.surface[None] if arr.ndim == 2 else fit.surface
    out = np.empty_like(planes)
    for c, (p, s, level) in enumerate(zip(planes, surf, fit.level)):
        if mode == "subtract":
            res = p - (s - np.float32(level))
        else:
            if np.any(s <= 0):
                raise ValueError("the fitted sky surface is not positive: use mode='subtract'")
            res = p * (np.float32(level) / s)
        bad = no_data_mask(p)
        res[bad] = p[bad]
        out[c] = res
    return (out[0] if arr.ndim == 2 else out), fit
