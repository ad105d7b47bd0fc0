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

from .stars import StarTable, detect_stars, intensity, no_data_mask

__all__ = ["StarRemoval", "detect_star_mask", "fill_masked", "remove_stars", "saturated_stars", "saturation_level", "star_like", "star_mask"]


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


def saturation_level(image: np.ndarray) -> float | None:
    """90 % of the maximum when the image's brightest pixels form plateaus, else None.

    A clipped star has a flat top: at least 5 pixels within 2 % of the maximum.
    """
    finite = np.asarray(image)  # NaN never counts below; select only if there is an inf
    top = float(np.fmax.reduce(finite, axis=None)) if finite.size else np.nan
    if not np.isfinite(top):
        finite = finite[np.isfinite(finite)]
        if finite.size == 0:
            return None
        top = float(finite.max())
    if top <= 0 or np.count_nonzero(finite >= 0.98 * top) < 5:
        return None
    return 0.9 * top


def saturated_stars(stars: StarTable, *, tolerance: float = 0.05, min_count: int = 3) -> np.ndarray:
    """Stars whose peak sits on the image's clipping level.

    Clipped stars share (nearly) the same raw peak: when at least ``min_count``
    stars peak within ``tolerance`` of the highest raw peak, all stars above
    ``1 - 2 * tolerance`` of it are flagged. Works on resampled images too, where
    interpolation overshoot hides the plateau from :func:`saturation_level`.
    """
    peaks = np.asarray(stars.raw_peak, float)
    flags = np.asarray(stars.saturated, bool).copy()
    if len(peaks) == 0:
        return flags
    top = peaks.max()
    if top > 0 and np.count_nonzero(peaks >= (1 - tolerance) * top) >= min_count:
        flags |= peaks >= (1 - 2 * tolerance) * top
    return flags


def star_like(stars: StarTable, *, max_spread: float = 4.0) -> np.ndarray:
    """True for detections shaped like stars, False for extended objects (nebula knots).

    A star's isophotal flux over its peak is about the PSF's effective area,
    the same for all unsaturated stars; an extended object has a much larger
    ratio. Kept: ratio <= ``max_spread`` times the median ratio, or saturated
    (:func:`saturated_stars`).
    """
    if len(stars) == 0:
        return np.zeros(0, bool)
    ratio = np.asarray(stars.flux, float) / np.maximum(np.asarray(stars.peak, float), 1e-30)
    unsat = ~saturated_stars(stars)
    ref = np.median(ratio[unsat]) if unsat.any() else np.median(ratio)
    return (ratio <= max_spread * ref) | ~unsat


def _detect_to_the_edges(lum: np.ndarray, threshold: float, max_stars: int | None,
                         pad: int = 24, background_size: int = 64) -> StarTable:
    """Detect stars including those cut by the frame edge (the detector drops those).

    The image is mirrored by ``pad`` pixels on each side, so an edge star and its
    mirror image form one object centred near the edge; detections whose centre
    falls in the padding (mirror images) are dropped.
    """
    h, w = lum.shape
    pad = int(min(pad, h - 1, w - 1))
    work = cv2.copyMakeBorder(np.ascontiguousarray(lum, np.float32), pad, pad, pad, pad,
                              cv2.BORDER_REFLECT)
    stars = detect_stars(work, threshold=threshold, min_area=5, max_stars=None, edge=0,
                         saturation=saturation_level(lum), background_size=background_size)
    stars.x -= pad
    stars.y -= pad
    # an edge star merged with its mirror image is centred on the mirror axis (-0.5
    # or size - 0.5); mirror images of the other stars lie further out
    inside = (stars.x >= -1.0) & (stars.y >= -1.0) & (stars.x <= w) & (stars.y <= h)
    stars = stars.take(inside)
    return stars if max_stars is None else stars.take(slice(0, max_stars))


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


def detect_star_mask(
    image: np.ndarray,
    *,
    threshold: float = 3.0,
    growth: float = 3.0,
    flux_growth: float = 0.5,
    max_stars: int | None = 50_000,
    background_size: int = 64,
) -> tuple[np.ndarray, StarTable]:
    """Detect the stars of an image (to its edges, star-like objects only) and mask them.

    ``background_size`` is the detector's background mesh (px): it must be
    larger than the biggest stars, or they melt into the background (use
    ``64 * scale_ratio`` for a wide image resampled onto a narrow grid).
    Returns ``(mask, stars)``; see :func:`star_mask` and :func:`star_like`.
    """
    lum = intensity(np.asarray(image, dtype=np.float32))
    stars = _detect_to_the_edges(lum, threshold, max_stars, background_size=background_size)
    stars = stars.take(star_like(stars))
    mask = star_mask(lum.shape, stars, growth=growth, flux_growth=flux_growth)
    return mask & ~no_data_mask(lum), stars


def remove_stars(
    image: np.ndarray,
    *,
    threshold: float = 3.0,
    stars: StarTable | None = None,
    mask: np.ndarray | None = None,
    growth: float = 3.0,
    flux_growth: float = 0.5,
    max_stars: int | None = 50_000,
) -> StarRemoval:
    """Mask the stars of an image and fill them from their surroundings.

    Parameters
    ----------
    image : ndarray, (y, x) or (c, y, x)
        Linear image in its own units; 0/NaN/inf are no data and stay so.
        Colour: stars are detected on the mean of the channels and the same
        mask fills every channel.
    threshold : float
        Detection threshold in sigma (ignored when ``stars`` is given).
    stars : StarTable, optional
        Stars already detected on this image (else: sep at ``threshold`` sigma on
        a 32-px background mesh, keeping star-like detections, see :func:`star_like`).
    mask : ndarray of bool, optional
        The pixels to replace, given directly (e.g. the union of two images'
        star masks, so that both are filled over the same regions).
    growth, flux_growth : float
        Mask size, see :func:`star_mask`.
    max_stars : int, optional
        At most this many (the brightest) are masked.

    Returns
    -------
    StarRemoval
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim not in (2, 3):
        raise ValueError(f"remove_stars needs a (y, x) or (c, y, x) image, got shape {img.shape}")
    lum = intensity(img)
    bad = no_data_mask(lum)
    if mask is not None:
        mask = np.asarray(mask, bool) & ~bad
        stars = StarTable.empty() if stars is None else stars
    elif stars is None:
        mask, stars = detect_star_mask(img, threshold=threshold, growth=growth,
                                       flux_growth=flux_growth, max_stars=max_stars)
    else:
        mask = star_mask(lum.shape, stars, growth=growth, flux_growth=flux_growth) & ~bad
    planes = img[None] if img.ndim == 2 else img
    out = []
    for plane in planes:
        plane_bad = no_data_mask(plane)
        filled = fill_masked(plane, mask | plane_bad)
        filled[plane_bad] = plane[plane_bad]
        out.append(filled)
    filled = out[0] if img.ndim == 2 else np.stack(out)
    n_valid = max(1, int((~bad).sum()))
    return StarRemoval(image=filled, mask=mask, stars=stars,
                       masked_fraction=float(mask.sum()) / n_valid)
