"""The photometric scale: reference flux against target flux, per channel.

NSG fits a least-absolute-deviation line with intercept, discards the
intercept, gates pairs by flux ratio and removes the worst 2 % by perpendicular
distance (in flux units, so bright stars dominate). Here (notes section 20):

* the model is a line through the origin, ``ref = m * tgt``, fitted on the
  log flux ratio, so every star's residual is relative;
* each star counts with the inverse of its variance: its photometric error
  from the background noise plus an intrinsic scatter fitted to the data
  (it absorbs shot noise, scintillation and PSF differences);
* the estimate is a Tukey-biweight M-estimate, robust to the odd variable star
  or cosmic ray, with NSG's flux-ratio gate (``star_flux_tolerance``) around a
  first median ratio and NSG's outlier removal (the worst ``outlier_removal``
  percent, one by one);
* the second-order bias of a log ratio of noisy fluxes is corrected.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BIWEIGHT_C = 4.685


@dataclass
class ChannelScale:
    """The scale of one channel.

    Attributes
    ----------
    scale : float
        The factor that multiplies the target (reference flux / target flux);
        NaN when no pair was usable.
    error : float
        Its standard error (same units).
    n_pairs : int
        Star pairs measured in both frames in this channel.
    n_used : int
        Pairs left after the flux-ratio gate and outlier removal.
    scatter : float
        Intrinsic relative scatter of the flux ratios beyond the photometric errors.
    used : ndarray of bool
        Which of the input pairs were used.
    warnings : list of str
    """

    scale: float
    error: float
    n_pairs: int
    n_used: int
    scatter: float
    used: np.ndarray
    warnings: list[str] = field(default_factory=list)


def _biweight_location(l, var, init, n_iter=10):
    """Weighted Tukey-biweight location of ``l`` with variances ``var``."""
    loc = init
    w_stat = 1.0 / var
    for _ in range(n_iter):
        u = (l - loc) / (BIWEIGHT_C * np.sqrt(var))
        psi_w = np.where(np.abs(u) < 1, (1 - u**2) ** 2, 0.0)
        w = w_stat * psi_w
        if w.sum() <= 0:
            break
        new = float(np.sum(w * l) / np.sum(w))
        if abs(new - loc) < 1e-10:
            loc = new
            break
        loc = new
    return loc, w_stat * np.where(np.abs((l - loc) / (BIWEIGHT_C * np.sqrt(var))) < 1, 1.0, 0.0)


def _intrinsic_scatter(resid: np.ndarray, var_phot: np.ndarray) -> float:
    """Relative scatter ``s`` such that the median of ``resid^2 / (var + s^2)`` is
    that of a chi-square with one degree of freedom (0.455)."""
    target = 0.4549364
    if len(resid) < 4:
        return 0.0
    r2 = resid**2

    def med(s2):
        return float(np.median(r2 / (var_phot + s2)))

    if med(0.0) <= target:
        return 0.0
    lo, hi = 0.0, float(np.median(r2)) / target + 1e-12
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if med(mid) > target:
            lo = mid
        else:
            hi = mid
    return float(np.sqrt(0.5 * (lo + hi)))


def _fit(l, var_phot, init):
    s = 0.0
    loc = init
    for _ in range(3):
        var = var_phot + s**2
        loc, w = _biweight_location(l, var, loc)
        s = _intrinsic_scatter(l - loc, var_phot)
    var = var_phot + s**2
    loc, w = _biweight_location(l, var, loc)
    return loc, var, w, s


def fit_scale(
    ref_flux: np.ndarray,
    tgt_flux: np.ndarray,
    ref_err: np.ndarray | None = None,
    tgt_err: np.ndarray | None = None,
    *,
    flux_tolerance: float = 1.5,
    outlier_percent: float = 2.0,
    min_pairs_warn: int = 3,
) -> ChannelScale:
    """Robust scale ``m`` with ``ref_flux ~ m * tgt_flux`` (through the origin).

    Parameters
    ----------
    ref_flux, tgt_flux : ndarray (n,)
        Aperture fluxes of the same stars; non-finite or non-positive pairs
        are ignored.
    ref_err, tgt_err : ndarray (n,), optional
        Their photometric errors; without them every star counts the same
        (plus the fitted scatter).
    flux_tolerance : float
        Pairs with ``ratio`` outside ``[m0/tol, m0*tol]`` around the median
        ratio ``m0`` are dropped (NSG's star flux tolerance).
    outlier_percent : float
        Percentage of pairs removed one by one, the one with the largest
        normalized residual first (never below 4 pairs).
    min_pairs_warn : int
        Fewer usable pairs than this gives a warning.

    Returns
    -------
    ChannelScale
    """
    ref_flux = np.asarray(ref_flux, float)
    tgt_flux = np.asarray(tgt_flux, float)
    n_all = len(ref_flux)
    ok = np.isfinite(ref_flux) & np.isfinite(tgt_flux) & (ref_flux > 0) & (tgt_flux > 0)
    rel_r = np.zeros(n_all)
    rel_t = np.zeros(n_all)
    if ref_err is not None:
        rel_r = np.asarray(ref_err, float) / np.where(ref_flux > 0, ref_flux, np.inf)
        ok &= np.isfinite(rel_r)
    if tgt_err is not None:
        rel_t = np.asarray(tgt_err, float) / np.where(tgt_flux > 0, tgt_flux, np.inf)
        ok &= np.isfinite(rel_t)
    n_pairs = int(ok.sum())
    used = np.zeros(n_all, bool)
    warnings: list[str] = []
    if n_pairs == 0:
        return ChannelScale(float("nan"), float("nan"), 0, 0, 0.0, used,
                            ["no usable star pairs"])
    idx = np.flatnonzero(ok)
    with np.errstate(divide="ignore"):
        lr = np.log(ref_flux[idx] / tgt_flux[idx])
    # second-order bias of a log ratio: E[log(Y(1+e))] = log Y - var/2
    l = lr + 0.5 * rel_r[idx] ** 2 - 0.5 * rel_t[idx] ** 2
    var_phot = np.maximum(rel_r[idx] ** 2 + rel_t[idx] ** 2, 1e-12)
    if ref_err is None and tgt_err is None:
        var_phot = np.full(len(idx), 1e-6)
    m0 = float(np.median(l))
    keep = np.abs(l - m0) <= np.log(flux_tolerance)
    if keep.sum() == 0:
        keep[:] = True
        warnings.append("no pair within the flux tolerance of the median ratio; all pairs kept")
    idx, l, var_phot = idx[keep], l[keep], var_phot[keep]
    loc, var, w, s = _fit(l, var_phot, float(np.median(l)))
    n_remove = int(round(len(idx) * outlier_percent / 100.0))
    for _ in range(n_remove):
        if len(idx) <= 4:
            warnings.append("outlier removal stopped at 4 pairs")
            break
        worst = int(np.argmax(np.abs(l - loc) / np.sqrt(var)))
        idx, l, var_phot = np.delete(idx, worst), np.delete(l, worst), np.delete(var_phot, worst)
        loc, var, w, s = _fit(l, var_phot, loc)
    used[idx[w > 0]] = True
    n_used = int(used.sum())
    wsum = float(np.sum(w))
    if n_used >= 2 and wsum > 0:
        # standard error of a weighted mean, with the residual scatter as a check
        err_stat = 1.0 / np.sqrt(wsum)
        resid = l[w > 0] - loc
        chi2 = float(np.sum(w[w > 0] * resid**2)) / max(n_used - 1, 1)
        err_log = err_stat * np.sqrt(max(chi2, 1.0))
    else:
        err_log = float("nan")
    scale = float(np.exp(loc))
    if n_used < min_pairs_warn:
        warnings.append(f"only {n_used} star pair(s) measured: the scale is uncertain")
    return ChannelScale(scale, scale * err_log, n_pairs, n_used, s, used, warnings)


def growth_correction(
    ref_small: np.ndarray,
    tgt_small: np.ndarray,
    ref_large: np.ndarray,
    tgt_large: np.ndarray,
    *,
    min_stars: int = 5,
) -> tuple[float, float, int]:
    """Aperture correction of the scale from bright stars measured twice.

    The flux ratio in a star's aperture depends on how much of the star the
    aperture holds in each frame, which changes with the seeing. Measuring
    the brightest stars again in a larger aperture gives, per star,
    ``(ref_large/tgt_large) / (ref_small/tgt_small)``: the factor by which the
    scale from the smaller apertures must be multiplied.

    Parameters
    ----------
    ref_small, tgt_small, ref_large, tgt_large : ndarray (k,)
        Fluxes of the same bright stars in the normal and the larger apertures.
    min_stars : int
        Fewer usable stars than this: no correction (factor 1).

    Returns
    -------
    (factor, error, n_stars)
        The median per-star factor, its standard error (1.25 x scatter / sqrt(n)),
        and how many stars gave it.
    """
    with np.errstate(all="ignore"):
        f = (np.asarray(ref_large) / np.asarray(tgt_large)) / (
            np.asarray(ref_small) / np.asarray(tgt_small))
    f = f[np.isfinite(f) & (f > 0)]
    if len(f) < min_stars:
        return 1.0, 0.0, int(len(f))
    med = float(np.median(f))
    mad = 1.4826 * float(np.median(np.abs(f - med)))
    return med, 1.2533 * mad / np.sqrt(len(f)), int(len(f))
