"""The photometric scale: reference flux against target flux, per channel.

NSG fits a least-absolute-deviation line with intercept, discards the
intercept, gates pairs by flux ratio and removes the worst 2 % by perpendicular
distance (in flux units, so bright stars dominate). Here (notes section 20):

* the model is a line through the origin, ``ref = m * tgt``;
* every residual is normalized by its own expected error (errors in both
  fluxes, from the background and photon noise of each aperture, scaled and
  completed by an intrinsic relative scatter fitted to the data), so faint and bright stars count by
  their precision and outliers are judged relative to it. The weights do not
  depend on the noisy fluxes themselves, which would bias the scale (a star
  measured too bright in the target would count more and pull the scale down);
* the estimate is a Tukey-biweight M-estimate, robust to the odd variable star
  or cosmic ray, with NSG's flux-ratio gate (``star_flux_tolerance``) around a
  first median ratio and NSG's outlier removal (the worst ``outlier_removal``
  percent, one by one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize_scalar

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
        Intrinsic relative scatter of the flux ratios beyond the photometric
        errors (fitted on the brighter half of the pairs).
    used : ndarray of bool
        Which of the input pairs were used.
    warnings : list of str
    reason : ndarray of str or None
        Why each input pair was not used ('' for a used pair): see ``REASONS``.
    """

    scale: float
    error: float
    n_pairs: int
    n_used: int
    scatter: float
    used: np.ndarray
    warnings: list[str] = field(default_factory=list)
    reason: np.ndarray | None = None


# why a star pair was left out of the scale fit
REASON_UNMEASURED = "not measurable in both frames"
REASON_GATE = "flux ratio outside the tolerance"
REASON_OUTLIER = "removed as an outlier"
REASON_ZERO_WEIGHT = "zero weight in the robust fit"
REASONS = (REASON_UNMEASURED, REASON_GATE, REASON_OUTLIER, REASON_ZERO_WEIGHT)


CROWDING_SENSITIVITY = 0.05
#: A scale whose standard error exceeds this fraction of it gets a warning: NSG's scales
#: are good to 0.1-0.3 % on a usual frame, but a 400 x 480 frame with 18 usable pairs
#: measured +-3.6 % (and came out 4.5 % off) without a word.
UNCERTAIN_SCALE = 0.01


def _variance(m, x, y, vx, vy, k, s, crowd=0.0):
    """Variance of ``y - m x``: the photometric errors times ``k^2`` plus an
    intrinsic relative scatter ``s`` of the level and a term for neighbours
    (``crowd`` = their flux relative to the star's)."""
    level = 0.5 * (m * x + y)
    return k * k * (vy + m * m * vx) + ((s * s + (CROWDING_SENSITIVITY * crowd) ** 2)
                                        * level * level)


#: The scale is searched within ``exp(+-SEARCH_LOG_RANGE)`` of the current one.
SEARCH_LOG_RANGE = 0.7
#: Newton steps in ``log m`` stop under this size (SciPy's bounded search, the
#: fallback, stops at ``1e-7``).
NEWTON_LOG_TOLERANCE = 1e-10
NEWTON_MAX_STEPS = 30


def _solve(x, y, vx, vy, k, s, crowd, psi, m):
    """Minimize ``sum psi (y - m x)^2 / V(m)`` (errors in both variables) over
    ``log m``: Newton's method from ``m`` (the previous estimate, close to the
    minimum: 3-5 steps, each one pass over the pairs), SciPy's bounded search where
    a step leaves the range or the curvature is not positive."""
    found = _newton_minimum(x, y, vx, vy, k, s, crowd, psi, m)
    if found is not None:
        return found

    def cost(logm):
        mm = np.exp(logm)
        return float(np.sum(psi * (y - mm * x) ** 2 / _variance(mm, x, y, vx, vy, k, s, crowd)))

    res = minimize_scalar(cost, bounds=(np.log(m) - SEARCH_LOG_RANGE,
                                        np.log(m) + SEARCH_LOG_RANGE),
                          method="bounded", options={"xatol": 1e-7})
    return float(np.exp(res.x))


def _newton_minimum(x, y, vx, vy, k, s, crowd, psi, m):
    """:func:`_solve`'s minimum by Newton steps in ``u = log m`` (the cost's first and
    second derivatives in closed form), or None where they cannot be trusted."""
    a, b = k * k * vy, k * k * vx
    q = s * s + (CROWDING_SENSITIVITY * crowd) ** 2
    u0 = u = float(np.log(m))
    for _ in range(NEWTON_MAX_STEPS):
        mm = np.exp(u)
        r = y - mm * x
        half = 0.5 * (mm * x + y)  # the level
        v = a + b * mm * mm + q * half * half
        dv = 2.0 * b * mm + q * half * x
        d2v = 2.0 * b + 0.5 * q * x * x
        g = (-2.0 * r * x - r * r * dv / v) / v  # d/dm of r^2 / V
        h = (2.0 * x * x + (4.0 * r * x * dv - r * r * d2v + 2.0 * r * r * dv * dv / v) / v) / v
        d1, d2 = float(np.sum(psi * g)), float(np.sum(psi * h))
        du1, du2 = mm * d1, mm * d1 + mm * mm * d2  # d/du and d2/du2
        if not (np.isfinite(du1) and np.isfinite(du2) and du2 > 0):
            return None
        step = du1 / du2
        u -= step
        if abs(u - u0) > SEARCH_LOG_RANGE:
            return None
        if abs(step) <= NEWTON_LOG_TOLERANCE:
            return float(np.exp(u))
    return None


def _median(values: np.ndarray) -> float:
    """``np.median`` of a 1-D array of finite values, the same number (the mean of
    the two middle values, or the middle one), without its general machinery
    (~1000 calls per target)."""
    n = len(values)
    lo, hi = (n - 1) // 2, n // 2
    part = np.partition(values, (lo, hi))
    return float((part[lo] + part[hi]) / 2.0)


def _calibrate(r2, var_of, lo, hi):
    """The parameter in [lo, hi] that brings median(r2 / var_of(p)) to that of a
    chi-square with one degree of freedom (0.455); ``var_of`` grows with p."""
    target = 0.4549364
    if len(r2) == 0 or _median(r2 / var_of(lo)) <= target:
        return lo
    while _median(r2 / var_of(hi)) > target and hi < 1e6:
        hi *= 4
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if _median(r2 / var_of(mid)) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _noise_model(x, y, vx, vy, crowd, m):
    """Error scale ``k >= 1`` (from the fainter half of the stars, whose errors
    are photometric) and relative scatter ``s >= 0`` (from the brighter half)."""
    if len(x) < 6:
        return 1.0, 0.0
    r2 = (y - m * x) ** 2
    level2 = (0.5 * (m * x + y)) ** 2
    phot = vy + m * m * vx + (CROWDING_SENSITIVITY * crowd) ** 2 * level2
    order = np.argsort(level2 / phot)  # by signal to noise
    faint, bright = order[: len(order) // 2], order[len(order) // 2:]
    k = np.sqrt(_calibrate(r2[faint], lambda q: q * phot[faint], 1.0, 4.0))
    s2 = _calibrate(r2[bright], lambda q: k * k * phot[bright] + q * level2[bright], 0.0, 1e-4)
    return float(k), float(np.sqrt(s2))


def _fit(x, y, vx, vy, crowd, m, n_iter=8):
    """Robust (biweight) errors-in-variables fit through the origin."""
    k, s = 1.0, 0.0
    psi = np.ones(len(x))
    for _ in range(n_iter):
        m_old = m
        m = _solve(x, y, vx, vy, k, s, crowd, psi, m)
        k, s = _noise_model(x, y, vx, vy, crowd, m)
        u = (y - m * x) / np.sqrt(_variance(m, x, y, vx, vy, k, s, crowd)) / BIWEIGHT_C
        psi = np.where(np.abs(u) < 1, (1 - u**2) ** 2, 0.0)
        if abs(m - m_old) <= 1e-9 * m:
            break
    var = _variance(m, x, y, vx, vy, k, s, crowd)
    return m, var, psi, s


def fit_scale(
    ref_flux: np.ndarray,
    tgt_flux: np.ndarray,
    ref_err: np.ndarray | None = None,
    tgt_err: np.ndarray | None = None,
    *,
    crowding: np.ndarray | None = None,
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
        Their photometric errors (from the background noise); without them
        every star has the same error, proportional to its flux.
    crowding : ndarray (n,), optional
        Flux of the detected neighbours near each star (aperture and ring)
        relative to its own: adds ``(0.05 * crowding * flux)^2`` to its
        variance. Neighbours whose light crosses the aperture or the ring edge
        change the ratio with the seeing by a few percent of their flux.
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

    Notes
    -----
    The fit minimizes ``sum psi_i (y_i - m x_i)^2 / V_i(m)`` with
    ``V_i = k^2 (err_y^2 + m^2 err_x^2) + (s^2 + (0.05 crowding_i)^2) level_i^2``
    (errors in both
    variables; weights that do not depend on the noisy fluxes, apart from the
    small scatter term, so the estimate is not pulled by noise) and ``psi``
    Tukey biweights of the normalized residuals. ``k >= 1`` scales the
    photometric errors so that the fainter half of the stars has the
    median squared normalized residual of a chi-square with one degree of
    freedom; ``s >= 0``, a relative scatter of the flux ratios (scintillation,
    flat-field errors, PSF differences), does the same for the brighter half.
    """
    ref_flux = np.asarray(ref_flux, float)
    tgt_flux = np.asarray(tgt_flux, float)
    n_all = len(ref_flux)
    ok = np.isfinite(ref_flux) & np.isfinite(tgt_flux) & (ref_flux > 0) & (tgt_flux > 0)
    no_errors = ref_err is None and tgt_err is None
    vy = np.zeros(n_all) if ref_err is None else np.asarray(ref_err, float) ** 2
    vx = np.zeros(n_all) if tgt_err is None else np.asarray(tgt_err, float) ** 2
    ok &= np.isfinite(vx) & np.isfinite(vy)
    n_pairs = int(ok.sum())
    used = np.zeros(n_all, bool)
    reason = np.where(ok, "", REASON_UNMEASURED).astype(object)
    warnings: list[str] = []
    if n_pairs == 0:
        return ChannelScale(float("nan"), float("nan"), 0, 0, 0.0, used,
                            ["no usable star pairs"], reason)
    idx = np.flatnonzero(ok)
    x, y = tgt_flux[idx], ref_flux[idx]
    ratio = y / x
    m0 = float(np.median(ratio))
    if no_errors:  # relative errors of 1 %: every star counts alike
        vy, vx = (0.01 * ref_flux) ** 2, (0.01 * tgt_flux) ** 2
    vx, vy = np.maximum(vx[idx], 1e-30), np.maximum(vy[idx], 1e-30)
    crowd = np.zeros(len(idx)) if crowding is None else np.nan_to_num(
        np.asarray(crowding, float)[idx])
    keep = (ratio >= m0 / flux_tolerance) & (ratio <= m0 * flux_tolerance)
    if keep.sum() == 0:
        keep[:] = True
        warnings.append("no pair within the flux tolerance of the median ratio; all pairs kept")
    reason[idx[~keep]] = REASON_GATE
    idx, x, y, vx, vy, crowd = (a[keep] for a in (idx, x, y, vx, vy, crowd))
    m, var, psi, s = _fit(x, y, vx, vy, crowd, float(np.median(y / x)))
    n_remove = int(round(len(idx) * outlier_percent / 100.0))
    for _ in range(n_remove):
        if len(idx) <= 4:
            warnings.append("outlier removal stopped at 4 pairs")
            break
        worst = int(np.argmax(np.abs(y - m * x) / np.sqrt(var)))
        reason[idx[worst]] = REASON_OUTLIER
        idx, x, y, vx, vy, crowd = (np.delete(a, worst) for a in (idx, x, y, vx, vy, crowd))
        m, var, psi, s = _fit(x, y, vx, vy, crowd, m)
    used[idx[psi > 0]] = True
    reason[idx[psi <= 0]] = REASON_ZERO_WEIGHT
    n_used = int(used.sum())
    if n_used >= 2:
        info = float(np.sum(psi * x * x / var))
        u2 = psi * (y - m * x) ** 2 / var
        chi2 = float(np.sum(u2[psi > 0])) / max(n_used - 1, 1)
        error = float(np.sqrt(max(chi2, 1.0) / info)) if info > 0 else float("nan")
    else:
        error = float("nan")
    if n_used < min_pairs_warn:
        warnings.append(f"only {n_used} star pair(s) measured: the scale is uncertain")
    elif np.isfinite(error) and m > 0 and error > UNCERTAIN_SCALE * m:
        warnings.append(f"the scale is uncertain: +-{100 * error / m:.1f} % from {n_used} star "
                        "pairs (too few bright unsaturated stars, or much noise)")
    return ChannelScale(m, error, n_pairs, n_used, s, used, warnings, reason)
