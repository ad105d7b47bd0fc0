"""Star removal without neural networks: flux-scaled star masks filled from their surroundings.

MSGR keeps only structures larger than ~256 px, and the medians of the multiscale
median transform already drop small stars. What leaks into the large scales are
bright stars and their halos, tens of pixels across. :func:`remove_stars`
masks every detected star with an ellipse grown with its flux and fills the
masked pixels smoothly from the unmasked surroundings (:func:`fill_masked`, a
push-pull normalised-convolution pyramid). The fill is smooth, not textured:
good for building a gradient model, not meant as a pretty starless image.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import sep

from .stars import StarTable, detect_stars, no_data_mask

__all__ = ["StarRemoval", "fill_masked", "remove_stars", "star_mask"]


def fill_masked(image: np.ndarray, mask: np.ndarray, *, min_weight: float = 0.5) -> np.ndarray:
    """Fill the pixels under ``mask`` (and any no-data pixel) from their surroundings.

    A push-pull pyramid: the valid pixels and their weights are averaged down by
    factors of 2 until every pixel of the coarsest level has support, then the
    estimate is brought back up level by level (bilinear), each level keeping
    its own average where it has enough valid weight. Cost: a few resizes, about
    0.2 s per 24 Mpx.

    Parameters
    ----------
    image : ndarray, (y, x)
        The image.
    mask : ndarray of bool, (y, x)
        True where the pixel must be replaced.
    min_weight : float
        Fraction of valid pixels from which a pyramid level trusts its own
        average instead of the coarser estimate.

    Returns
    -------
    ndarray, float32
        A copy with the masked and no-data pixels filled; the others unchanged.

    Raises
    ------
    ValueError
        If no pixel is valid.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"fill_masked needs a 2-D image, got shape {img.shape}")
    valid = ~np.asarray(mask, bool) & np.isfinite(img)
    if valid.all():
        return img.copy()
    if not valid.any():
        raise ValueError("no valid pixel to fill from")
    w = valid.astype(np.float32)
    num = np.where(valid, img, np.float32(0))
    levels = [(num, w)]
    while min(num.shape) > 1 and not (w > 0).all():
        h, wd = num.shape
        size = (max(1, (wd + 1) // 2), max(1, (h + 1) // 2))
        num = cv2.resize(num, size, interpolation=cv2.INTER_AREA)
        w = cv2.resize(w, size, interpolation=cv2.INTER_AREA)
        levels.append((num, w))
    num, w = levels[-1]
    fallback = np.float32(np.mean(img[valid]))
    est = np.where(w > 0, num / np.maximum(w, 1e-12), fallback).astype(np.float32)
    for num, w in reversed(levels[:-1]):
        up = cv2.resize(est, (w.shape[1], w.shape[0]), interpolation=cv2.INTER_LINEAR)
        alpha = np.clip(w / np.float32(min_weight), 0, 1)
        val = num / np.maximum(w, np.float32(1e-12))
        est = alpha * val + (1 - alpha) * up
    out = img.copy()
    out[~valid] = est[~valid]
    return out


def star_mask(
    shape: tuple[int, int],
    stars: StarTable,
    *,
    growth: float = 3.0,
    flux_growth: float = 0.5,
    min_radius: float = 2.0,
    max_radius: float | None = None,
    dilate: int = 1,
) -> np.ndarray:
    """A boolean mask of elliptical star footprints, larger for brighter stars.

    Each star gets the ellipse of its second moments (``a``, ``b``, ``theta``)
    scaled by ``growth * (1 + flux_growth * log10(flux / median flux))`` (never
    below ``growth``), with semi-axes of at least ``min_radius`` pixels, then
    the mask is dilated by ``dilate`` pixels.

    Parameters
    ----------
    shape : (int, int)
        ``(height, width)`` of the mask.
    stars : StarTable
        The stars (e.g. from :func:`napari_nsg.core.stars.detect_stars`).
    growth, flux_growth : float
        Ellipse scale in units of ``a``, ``b`` and how it grows per decade of flux.
    min_radius : float
        Smallest semi-axis in pixels.
    max_radius : float, optional
        Largest semi-axis in pixels (default: a fifth of the smaller side).
    dilate : int
        Final dilation in pixels.

    Returns
    -------
    ndarray of bool
    """
    mask = np.zeros(shape, dtype=bool)
    if len(stars) == 0:
        return mask
    if max_radius is None:
        max_radius = max(min_radius, min(shape) / 5.0)
    flux = np.maximum(np.asarray(stars.flux, float), 1e-30)
    rel = np.log10(flux / np.median(flux))
    scale = growth * np.maximum(1.0, 1.0 + flux_growth * rel)
    a = np.clip(np.maximum(stars.a * scale, min_radius), min_radius, max_radius)
    b = np.clip(np.maximum(stars.b * scale, min_radius), min_radius, max_radius)
    sep.mask_ellipse(mask, np.asarray(stars.x, float), np.asarray(stars.y, float),
                     a, b, np.asarray(stars.theta, float), r=1.0)
    if dilate > 0:
        k = 2 * int(dilate) + 1
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        mask = cv2.dilate(mask.view(np.uint8), kernel).astype(bool)
    return mask


@dataclass
class StarRemoval:
    """Result of :func:`remove_stars`.

    Attributes
    ----------
    image : ndarray, float32
        The image with the stars replaced by a smooth fill; no-data stays no-data.
    mask : ndarray of bool
        The pixels that were replaced.
    stars : StarTable
        The stars masked.
    masked_fraction : float
        Fraction of the valid pixels under the mask.
    """

    image: np.ndarray
    mask: np.ndarray
    stars: StarTable
    masked_fraction: float


def remove_stars(
    image: np.ndarray,
    *,
    threshold: float = 3.0,
    stars: StarTable | None = None,
    growth: float = 3.0,
    flux_growth: float = 0.5,
    max_stars: int | None = 50_000,
) -> StarRemoval:
    """Mask the stars of a 2-D image and fill them from their surroundings.

    Parameters
    ----------
    image : ndarray, (y, x)
        Linear image in its own units; 0/NaN/inf are no data and stay so.
    threshold : float
        Detection threshold in sigma (ignored when ``stars`` is given).
    stars : StarTable, optional
        Stars already detected on this image.
    growth, flux_growth : float
        Mask size, see :func:`star_mask`.
    max_stars : int, optional
        At most this many (the brightest) are masked.

    Returns
    -------
    StarRemoval
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"remove_stars needs a 2-D image, got shape {img.shape}")
    bad = no_data_mask(img)
    if stars is None:
        stars = detect_stars(img, threshold=threshold, min_area=5, max_stars=max_stars)
    mask = star_mask(img.shape, stars, growth=growth, flux_growth=flux_growth) & ~bad
    filled = fill_masked(img, mask | bad)
    if bad.any():
        filled[bad] = img[bad]
    n_valid = max(1, int((~bad).sum()))
    return StarRemoval(image=filled, mask=mask, stars=stars,
                       masked_fraction=float(mask.sum()) / n_valid)
