"""A kernel-fit scale (Alard-Lupton style, a free pixel kernel): an experiment.

Around the brightest star pairs, the broader frame is fitted as the sharper
frame convolved with a small free pixel kernel ``K`` plus a constant sky per
stamp, by noise-weighted least squares over every pixel within
``FIT_RADIUS_FWHM`` of each star; the flux ratio broad / sharp is ``sum(K)``.
No PSF model is assumed, neighbours are convolved with the rest, and every
pixel counts by its noise.

The sharper frame's noise is in the regressors (errors in variables): plain
least squares shrinks ``K`` towards 0 by the noise-to-signal ratio of the
stamps (tens of percent for faint stars), so the expected noise term, each
pixel's variance summed under the weights, is subtracted from the normal
matrix's diagonal (a method-of-moments correction). A light ridge
(``RIDGE`` times the mean diagonal) keeps the outer kernel pixels tame, and
stamps that do not fit (chi-square per pixel over REJECT_CHI2 times the median:
a saturated neighbour, a cosmic ray) are dropped once.

Used by ``benchmarks/bench_scale_bound.py --kernel`` and
``benchmarks/bench_scale_real.py --kernel``; not an engine option: the
kernel cannot reach further than its own size plus the fit radius, so a
broader frame's heavier wings are missed (see docs/nsg.md, "Scale precision
against the photon limit").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..stars.psf_match import gather_stamps

SIGMA_PER_FWHM = 1.0 / 2.3548200450309493
#: Kernel half-size: KERNEL_HALF_SIGMA times the sigma of the seeing difference,
#: plus one pixel, at least MIN_KERNEL_HALF.
KERNEL_HALF_SIGMA = 2.5
MIN_KERNEL_HALF = 3
#: Fitted pixels: within this many FWHM of the broader frame around each star.
FIT_RADIUS_FWHM = 2.5
#: Sky level and noise of a stamp from its pixels beyond this fraction of its half-size.
SKY_EDGE_FRACTION = 0.8
MAD_TO_SIGMA = 1.4826
#: A sky more than this many sigmas above 0 gives the ADU per electron (photon noise).
SKY_LEVEL_SIGMAS = 5.0
RIDGE = 1e-3
STARS_PER_CHUNK = 10
MIN_STARS = 8
#: A stamp whose chi-square per pixel exceeds this times the median is dropped
#: (a saturated neighbour, a cosmic ray, a variable star), once.
REJECT_CHI2 = 4.0


@dataclass(frozen=True)
class KernelScale:
    """A fitted kernel and its flux ratio.

    Attributes
    ----------
    ratio : float
        ``sum(K)``: flux broad / flux sharp.
    error : float
        Its standard error from the normal matrix.
    kernel : ndarray (k, k)
    n_stars : int
    """

    ratio: float
    error: float
    kernel: np.ndarray
    n_stars: int


def _sky(stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median level and robust sigma of each stamp's outer pixels."""
    half = stamps.shape[1] // 2
    off = np.arange(-half, half + 1)
    outer = (off[None, :] ** 2 + off[:, None] ** 2) > (SKY_EDGE_FRACTION * half) ** 2
    edge = stamps[:, outer]
    level = np.median(edge, axis=1)
    return level, MAD_TO_SIGMA * np.median(np.abs(edge - level[:, None]), axis=1)


def _adu_per_electron(level: np.ndarray, sigma: np.ndarray) -> float:
    ok = level > SKY_LEVEL_SIGMAS * sigma
    return float(np.median(sigma[ok] ** 2 / level[ok])) if ok.sum() >= 3 else 0.0


def _windows(stamps: np.ndarray, half: int, use: np.ndarray) -> np.ndarray:
    """``X[n, p, k]``: the stamp pixel under kernel offset ``k`` for fitted pixel ``p``
    (a convolution: offsets flipped)."""
    k = 2 * half + 1
    win = sliding_window_view(stamps, (k, k), axis=(1, 2))[:, use][:, :, ::-1, ::-1]
    return win.reshape(len(stamps), int(use.sum()), k * k)


def _normal_equations(sharp, broad, use, half, ksq, eiv, kernel=None):
    """``A = X'WX - noise``, ``b = X'Wy`` with each stamp's sky removed (weighted
    centring), accumulated over chunks of stars; with ``kernel``, also each
    stamp's chi-square per pixel for it."""
    sky_b, sig_b = _sky(broad)
    sky_s, sig_s = _sky(sharp)
    ape_b, ape_s = _adu_per_electron(sky_b, sig_b), _adu_per_electron(sky_s, sig_s)
    nk = (2 * half + 1) ** 2
    a, b = np.zeros((nk, nk)), np.zeros(nk)
    chi2 = np.zeros(len(sharp))
    for lo in range(0, len(sharp), STARS_PER_CHUNK):
        sl = slice(lo, lo + STARS_PER_CHUNK)
        x = _windows(sharp[sl], half, use)
        y = broad[sl][:, use]
        var_y = sig_b[sl, None] ** 2 + ape_b * np.clip(y - sky_b[sl, None], 0, None)
        w = 1.0 / (var_y + ksq * sig_s[sl, None] ** 2)
        ws = w.sum(1)
        xc = x - (np.einsum("np,npk->nk", w, x) / ws[:, None])[:, None, :]
        yc = y - ((w * y).sum(1) / ws)[:, None]
        if kernel is not None:
            chi2[sl] = np.mean(w * (yc - xc @ kernel) ** 2, axis=1)
        a += np.einsum("npk,np,npj->kj", xc, w, xc, optimize=True)
        b += np.einsum("npk,np,np->k", xc, w, yc, optimize=True)
        if eiv:
            var_s = sig_s[sl, None, None] ** 2 + ape_s * np.clip(
                sharp[sl] - sky_s[sl, None, None], 0, None)
            v = _windows(var_s, half, use)
            a -= np.diag(np.einsum("np,npk->k", w - w * w / ws[:, None], v))
    return a, b, chi2


def kernel_scale(sharp: np.ndarray, broad: np.ndarray, cx: np.ndarray, cy: np.ndarray,
                 fwhm: tuple[float, float], *, eiv: bool = True, ridge: float = RIDGE,
                 half: int | None = None) -> KernelScale | None:
    """Fit ``broad ~ sharp (x) K + sky`` on stamps around stars; ``sum(K)`` is the ratio.

    Parameters
    ----------
    sharp, broad : ndarray (y, x)
        The two frames on the same pixel grid (NaN = no data).
    cx, cy : ndarray of int (n,)
        Integer star centres (the brightest unsaturated pairs first).
    fwhm : (float, float)
        FWHM of the sharp and of the broad frame (px).
    eiv : bool
        Subtract the sharp frame's noise from the normal matrix.
    ridge : float
        Ridge, relative to the normal matrix's mean diagonal.
    half : int, optional
        Kernel half-size (default from the seeing difference).

    Returns
    -------
    KernelScale or None
        None with fewer than MIN_STARS stamps inside the frames and free of no-data.
    """
    sig_s, sig_b = fwhm[0] * SIGMA_PER_FWHM, fwhm[1] * SIGMA_PER_FWHM
    if half is None:
        diff = np.sqrt(max(sig_b**2 - sig_s**2, 0.25))
        half = max(MIN_KERNEL_HALF, int(np.ceil(KERNEL_HALF_SIGMA * diff)) + 1)
    radius = int(np.ceil(FIT_RADIUS_FWHM * fwhm[1]))
    s = gather_stamps(sharp, cx, cy, radius + half)
    bst = gather_stamps(broad, cx, cy, radius)
    off = np.arange(-radius, radius + 1)
    use = off[None, :] ** 2 + off[:, None] ** 2 <= radius * radius
    ok = np.all(np.isfinite(s.reshape(len(s), -1)), axis=1) & np.all(np.isfinite(bst[:, use]),
                                                                      axis=1)
    if ok.sum() < MIN_STARS:
        return None
    s, bst = s[ok], bst[ok]
    k = None
    for it in range(2):
        # the weights need |K|^2 (the sharp frame's noise after convolution); the
        # second pass also gives each stamp's chi-square for one rejection
        a, b, chi2 = _normal_equations(s, bst, use, half, 1.0 if k is None else float(k @ k),
                                       eiv, k)
        if it == 1:
            keep = chi2 <= REJECT_CHI2 * np.median(chi2)
            if keep.sum() < MIN_STARS:
                return None
            if not keep.all():
                s, bst = s[keep], bst[keep]
                a, b, _ = _normal_equations(s, bst, use, half, float(k @ k), eiv)
        a += ridge * np.trace(a) / len(a) * np.eye(len(a))
        k = np.linalg.solve(a, b)
    cov = np.linalg.inv(a)
    return KernelScale(float(k.sum()), float(np.sqrt(cov.sum())),
                       k.reshape(2 * half + 1, 2 * half + 1), len(s))


#: Star pairs fitted (brightest first).
FIT_STARS = 100


def pair_kernel_scale(ref: np.ndarray, tgt: np.ndarray, x: np.ndarray, y: np.ndarray,
                      fwhm: tuple[float, float], **kw) -> float:
    """The scale ``ref / tgt`` from :func:`kernel_scale` on two registered frames.

    Parameters
    ----------
    ref, tgt : ndarray (y, x)
        Reference and target on the same pixel grid.
    x, y : ndarray (n,)
        Positions of usable (unsaturated, measured) pairs, brightest first; the
        first FIT_STARS are fitted.
    fwhm : (float, float)
        FWHM of the reference and of the target.
    **kw
        Passed to :func:`kernel_scale`.

    Returns
    -------
    float
        NaN when no kernel could be fitted.
    """
    cx = np.round(np.asarray(x[:FIT_STARS], float)).astype(int)
    cy = np.round(np.asarray(y[:FIT_STARS], float)).astype(int)
    ref_sharper = fwhm[0] < fwhm[1]
    sharp, broad = (ref, tgt) if ref_sharper else (tgt, ref)
    fit = kernel_scale(sharp, broad, cx, cy, (min(fwhm), max(fwhm)), **kw)
    if fit is None or not fit.ratio > 0:
        return float("nan")
    return 1.0 / fit.ratio if ref_sharper else fit.ratio


def kernel_scale_of(model, target: np.ndarray, sr, **kw) -> float:
    """:func:`pair_kernel_scale` of a mono target on the brightest pairs that
    ``measure_scale`` measured in both frames (``sr``, its ScaleResult)."""
    from .engine import no_data_as_nan  # the engine does not import this module

    ok = sr.ref_photometry.valid[0] & sr.target_photometry.valid[0]
    idx = np.flatnonzero(ok)
    idx = idx[np.argsort(-sr.ref_photometry.flux[0, idx])]
    ref_s = model.candidates.take(sr.match.ref_index)
    fwhm_t = sr.target_fwhm if np.isfinite(sr.target_fwhm) else model.fwhm
    tgt = no_data_as_nan(np.asarray(target, np.float32)[None])[0][0]
    return pair_kernel_scale(model.data[0], tgt, ref_s.x[idx], ref_s.y[idx],
                             (model.fwhm, fwhm_t), **kw)
