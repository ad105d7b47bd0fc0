"""Aperture photometry with a local background ring, per channel.

Circular apertures with sub-pixel edges (a pixel counts with the fraction
``clip(r + 0.5 - d, 0, 1)`` of its centre distance ``d``), so that the same
aperture on slightly different centroids encloses the same flux. The
background is a sigma-clipped median of a ring outside the aperture, which
ignores neighbouring stars and hot pixels. A measurement is invalid when the
aperture touches the image edge or a no-data pixel (0, NaN, inf), when its
brightest pixel reaches the saturation level, when the ring has too few
pixels, or when the flux is not positive.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


@dataclass
class Photometry:
    """Aperture photometry of ``n`` stars in ``c`` channels.

    Attributes
    ----------
    flux : ndarray (c, n)
        Background-subtracted aperture flux (NaN where invalid).
    flux_err : ndarray (c, n)
        Its uncertainty from the pixel noise (aperture and background ring);
        star shot noise is not included (the gain is unknown).
    background : ndarray (c, n)
        Clipped median of the ring, per pixel.
    background_sigma : ndarray (c, n)
        Robust pixel sigma in the ring.
    peak : ndarray (c, n)
        Brightest aperture pixel (raw).
    valid : ndarray of bool (c, n)
        Usable measurement.
    radius : ndarray (n,)
        Aperture radii used.
    reason : ndarray of str (n,)
        Why a star is invalid in every channel ('' if valid somewhere).
    """

    flux: np.ndarray
    flux_err: np.ndarray
    background: np.ndarray
    background_sigma: np.ndarray
    peak: np.ndarray
    valid: np.ndarray
    radius: np.ndarray
    reason: np.ndarray

    @property
    def n_channels(self) -> int:
        return self.flux.shape[0]


def _clipped_median(values: np.ndarray, n_iter: int = 3, k: float = 3.0):
    """Row-wise sigma-clipped median and robust sigma of ``values`` (NaN = missing)."""
    v = values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(n_iter):
            med = np.nanmedian(v, axis=-1)
            sig = 1.4826 * np.nanmedian(np.abs(v - med[..., None]), axis=-1)
            clip = np.abs(v - med[..., None]) > k * np.maximum(sig, 1e-30)[..., None]
            if not clip.any():
                break
            v = np.where(clip, np.nan, v)
        med = np.nanmedian(v, axis=-1)
        sig = 1.4826 * np.nanmedian(np.abs(v - med[..., None]), axis=-1)
        count = np.sum(np.isfinite(v), axis=-1)
    return med, sig, count


def aperture_photometry(
    data: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    radius: np.ndarray | float,
    *,
    gap: float = 2.0,
    width: float = 10.0,
    saturation: np.ndarray | float | None = None,
    min_ring_pixels: int = 12,
) -> Photometry:
    """Measure stars in circular apertures with a background ring.

    Parameters
    ----------
    data : ndarray
        ``(y, x)`` or ``(c, y, x)`` image in its own units; 0/NaN/inf = no data.
    x, y : ndarray (n,)
        Aperture centres (0-based, pixel centres on integers).
    radius : float or ndarray (n,)
        Aperture radii in px.
    gap : float
        Distance between the aperture edge and the ring (px).
    width : float
        Ring width (px).
    saturation : float or ndarray (c,), optional
        A star whose brightest aperture pixel reaches this level is invalid in
        that channel.
    min_ring_pixels : int
        Fewest usable ring pixels for a valid background.

    Returns
    -------
    Photometry
    """
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[np.newaxis]
    nc, h, w = data.shape
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    n = len(x)
    radius = np.broadcast_to(np.asarray(radius, float), (n,)).copy()
    if saturation is None:
        sat = np.full(nc, np.inf)
    else:
        sat = np.broadcast_to(np.asarray(saturation, float), (nc,))
    flux = np.full((nc, n), np.nan)
    err = np.full((nc, n), np.nan)
    bkg = np.full((nc, n), np.nan)
    bsig = np.full((nc, n), np.nan)
    peak = np.full((nc, n), np.nan)
    valid = np.zeros((nc, n), bool)
    reason = np.full(n, "", dtype=object)
    finite = np.isfinite(x) & np.isfinite(y) & np.isfinite(radius) & (radius > 0)
    reason[~finite] = "no position"
    outer = np.ceil(radius + gap + width + 1.0)
    outer[~finite] = 0
    cx = np.where(finite, np.round(x), 0).astype(int)
    cy = np.where(finite, np.round(y), 0).astype(int)
    for half in np.unique(outer[finite]).astype(int):
        sel = np.flatnonzero(finite & (outer == half))
        offs = np.arange(-half, half + 1)
        rows = cy[sel, None] + offs[None, :]
        cols = cx[sel, None] + offs[None, :]
        rin = (rows >= 0) & (rows < h)
        cin = (cols >= 0) & (cols < w)
        inside = rin[:, :, None] & cin[:, None, :]
        rr = np.clip(rows, 0, h - 1)[:, :, None]
        cc = np.clip(cols, 0, w - 1)[:, None, :]
        fx = (x[sel] - cx[sel])[:, None, None]
        fy = (y[sel] - cy[sel])[:, None, None]
        dist = np.hypot(offs[None, None, :] - fx, offs[None, :, None] - fy)
        r = radius[sel][:, None, None]
        weight = np.clip(r + 0.5 - dist, 0.0, 1.0)
        in_ap = weight > 0
        ring = (dist >= r + gap) & (dist <= r + gap + width)
        ap_outside = np.any(in_ap & ~inside, axis=(1, 2))
        sum_w = weight.sum(axis=(1, 2))
        sum_w2 = (weight**2).sum(axis=(1, 2))
        for c in range(nc):
            st = data[c][rr, cc].astype(np.float64)
            good = inside & np.isfinite(st) & (st != 0)
            ap_bad = np.any(in_ap & ~good, axis=(1, 2)) | ap_outside
            ring_vals = np.where(ring & good, st, np.nan).reshape(len(sel), -1)
            med, sig, count = _clipped_median(ring_vals)
            ap_vals = np.where(in_ap & good, st, 0.0)
            total = (ap_vals * weight).sum(axis=(1, 2))
            f = total - med * sum_w
            pk = np.where(in_ap & good, st, -np.inf).max(axis=(1, 2))
            e = sig * np.sqrt(sum_w2 + sum_w**2 * (np.pi / 2.0) / np.maximum(count, 1))
            ok = ~ap_bad & (count >= min_ring_pixels) & np.isfinite(f) & (f > 0) & (pk < sat[c])
            flux[c, sel] = np.where(ok, f, np.nan)
            err[c, sel] = np.where(ok, e, np.nan)
            bkg[c, sel] = med
            bsig[c, sel] = sig
            peak[c, sel] = pk
            valid[c, sel] = ok
            if c == 0:
                why = np.where(ap_outside, "aperture leaves the image",
                      np.where(ap_bad, "no-data pixel in the aperture",
                      np.where(count < min_ring_pixels, "background ring has too few pixels",
                      np.where(pk >= sat[c], "saturated",
                      np.where(~(f > 0), "flux not positive", "")))))
                reason[sel] = why
    reason[valid.any(axis=0)] = ""
    return Photometry(flux, err, bkg, bsig, peak, valid, radius, reason.astype(str))
