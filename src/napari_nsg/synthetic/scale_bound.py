"""The best precision a photometric scale can have: a Cramér-Rao bound from the truth.

For a frame pair of a :class:`~napari_nsg.synthetic.SimulatedSequence`, every star
that can be measured in both frames (unsaturated, wholly inside both frames'
data) carries information on the scale. With its PSF and position known, a PSF
fit of a star of flux ``F`` over pixels of noise-free level ``L_p`` (sky,
gradient, nebula, neighbours and the star itself) has the smallest possible
flux variance

    var(F) = 1 / sum_p P_p^2 / v_p,   v_p = L_p / gain + read_noise^2 (+ 1/12 if quantised),

with ``P`` the star's pixel-integrated PSF (unit sum). The scale ``m =
F_ref / F_tgt`` of one star then has ``var(log m_i) = var(F_ref)/F_ref^2 +
var(F_tgt)/F_tgt^2`` (the reference's noise counts too), and the optimally
weighted scale of all stars ``var(log m) = 1 / sum_i 1 / var(log m_i)``.

Neighbours count only as noise (a joint fit would lose some information to
them), so the bound is slightly optimistic in crowded fields. Photometry that
reaches it is a perfect PSF fit; aperture photometry typically sits 1.1-1.3
times above it.

**The PSF learned from the frame** (:func:`learned_psf_bound`). The bound above
assumes the true PSF known. An estimator that must learn it from the frame
pays for that: with per-star fluxes ``F_i`` and the PSF's parameters ``theta``
(Gaussian: the FWHM; Moffat: the FWHM and beta) shared by all stars of a frame,
the Fisher matrix of one frame is an arrow, ``a_i = sum P_i^2 / v`` on the
diagonal, ``b_i = F_i sum P_i dP_i/dtheta / v`` linking each flux to
``theta``, and ``D = sum_i F_i^2 sum dP_i/dtheta dP_i/dtheta^T / v``. The
log-fluxes' covariance once ``theta`` is marginalised is

    C = diag(1 / (a_i F_i^2)) + u S u^T,   u_i = b_i / (a_i F_i),
    S = (D - sum_i b_i b_i^T / a_i)^-1,

the known-PSF variances plus an error common to every star of the frame (a
wrong width moves every flux the same way), which does not average down. The
two frames are independent and each star's true flux is unknown, so the scale's
bound is the generalised-least-squares variance ``1 / (1^T (C_ref + C_tgt)^-1
1)`` of the common log-ratio. For a sky-limited Gaussian ``dF/F = dsigma /
sigma`` and the width is known as well as the frame's known-PSF scale, so the
learned-PSF bound is sqrt(2) times the known-PSF one; less where the stars' own
photon noise dominates (their flux is then the sum of their pixels, whatever
the PSF).

**The bound's estimator on the frames' own noise** (:func:`realised_error`). The
bound is a standard deviation over noise draws; a benchmark has one draw per
frame, and the median of a few dozen ``|error| / bound`` moves by 10-15 % from
one set of frames to the next whatever the estimator. The estimator the bound
describes (every bound star fitted with its true PSF, everything else known) can
be run on the frames' actual noise: its error is what the noise of that draw
makes unavoidable, and an engine's error less that one (its excess) measures
the engine alone, with much less scatter from the draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import maximum_filter

from .psf import PSF

__all__ = ["ScaleBound", "combine_star_errors", "learned_psf_bound", "realised_error",
           "realised_star_errors", "scale_bound", "star_flux_variance"]

#: Stamp half-size in FWHM for the information sums (the Gaussian core holds it all).
STAMP_FWHM = 2.5
#: Variance of rounding to whole ADU.
QUANTISATION_VARIANCE = 1.0 / 12.0
#: Relative step of the numerical derivatives of the PSF in its parameters.
DERIVATIVE_STEP = 1e-4
#: Pixels around a star's own in which its peak is sought (``peak_limit``).
PEAK_WINDOW = 3


@dataclass
class ScaleBound:
    """The bound on the scale of one frame against the reference.

    Attributes
    ----------
    relative_sigma : float
        Smallest possible standard deviation of ``scale / true scale - 1``.
    n_stars : int
        Stars measurable in both frames (those that enter the bound).
    star_sigma : ndarray (n_stars,)
        Each star's own relative scale error ``sqrt(var(log m_i))``.
    ids : ndarray of int
        Catalogue ids of those stars.
    """

    relative_sigma: float
    n_stars: int
    star_sigma: np.ndarray
    ids: np.ndarray


def _measurable(seq, k: int, half: int, peak_limit: float | None = None) -> np.ndarray:
    """Stars of frame ``k`` that are unsaturated and whose stamp lies in the data; with
    ``peak_limit``, also whose brightest noise-free pixel (background, neighbours and
    all, within one pixel of the star's) stays below it."""
    stars = seq.stars(k)
    ny, nx = seq.shape
    cx = np.round(stars.x).astype(int)
    cy = np.round(stars.y).astype(int)
    ok = ~stars.saturated & (cx >= half) & (cy >= half) & (cx < nx - half) & (cy < ny - half)
    valid = seq.valid_mask(k)
    ok[ok] &= valid[cy[ok], cx[ok]]
    if peak_limit is not None and ok.any():
        image = seq.noise_free(k)
        image = image.max(axis=0) if image.ndim == 3 else image
        near = maximum_filter(image, size=PEAK_WINDOW)
        ok[ok] &= near[cy[ok], cx[ok]] < peak_limit
    return ok


def star_flux_variance(seq, k: int, ids: np.ndarray, *, quantised: bool = False,
                       channel: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """PSF-fit flux and its Cramér-Rao variance of stars ``ids`` in frame ``k``.

    Parameters
    ----------
    seq : SimulatedSequence
        Mono or RGB (not Bayer).
    k : int
        Frame index.
    ids : ndarray of int
        Catalogue ids.
    quantised : bool
        Add the variance of rounding to whole ADU.
    channel : int
        Channel of an RGB sequence.

    Returns
    -------
    (flux, variance) : ndarray (n,), ndarray (n,)
        In ADU and ADU^2.
    """
    _, psf, var_pix, flux = _star_stamps(seq, k, ids, quantised, channel)
    info = np.sum(psf * psf / var_pix, axis=(1, 2))
    return flux, 1.0 / info


def _star_stamps(seq, k, ids, quantised, channel, params=None):
    """Float64 unit-sum PSF stamps of stars ``ids`` in frame ``k`` (for the PSF
    parameters ``params`` (fwhm, beta); the frame's own when None), the noise
    variance of their pixels and their true fluxes."""
    plan = seq._plans[k]
    stars = seq.stars(k)
    half = int(np.ceil(STAMP_FWHM * plan.psf.fwhm))
    x, y = stars.x[ids], stars.y[ids]
    cx, cy = np.round(x).astype(int), np.round(y).astype(int)
    psf = plan.psf if params is None else PSF(params[0], plan.psf.kind, params[1])
    stamps = _stamps64(psf, x - cx, y - cy, half)
    level = seq.noise_free(k)
    if level.ndim == 3:
        level = level[channel]
    offs = np.arange(-half, half + 1)
    rows = np.clip(cy[:, None] + offs[None, :], 0, seq.shape[0] - 1)
    cols = np.clip(cx[:, None] + offs[None, :], 0, seq.shape[1] - 1)
    var_pix = np.maximum(level[rows[:, :, None], cols[:, None, :]].astype(np.float64), 0.0)
    var_pix = var_pix / seq.gain + seq.read_noise**2
    if quantised:
        var_pix += QUANTISATION_VARIANCE
    return half, stamps, var_pix, stars.flux[ids, channel].astype(np.float64)


def _stamps64(psf: PSF, fx: np.ndarray, fy: np.ndarray, half: int) -> np.ndarray:
    """:meth:`PSF.stamps` in float64 (smooth enough for numerical derivatives)."""
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    if psf.kind == "gaussian":
        px, py = psf._gauss_1d(offsets, fx), psf._gauss_1d(offsets, fy)
        return py[:, :, None] * px[:, None, :]
    a2 = psf.alpha**2
    dx2 = (offsets[None, :] - fx[:, None]) ** 2 / a2
    dy2 = (offsets[None, :] - fy[:, None]) ** 2 / a2
    out = (1.0 + dy2[:, :, None] + dx2[:, None, :]) ** (-psf.beta)
    return out / out.sum(axis=(1, 2), keepdims=True)


def _psf_parameters(psf: PSF) -> list[tuple[float, float]]:
    """The (fwhm, beta) steps of the PSF's free parameters: the FWHM, and beta
    for a Moffat profile."""
    steps = [(psf.fwhm * DERIVATIVE_STEP, 0.0)]
    if psf.kind == "moffat":
        steps.append((0.0, psf.beta * DERIVATIVE_STEP))
    return steps


def _log_flux_covariance(seq, k, ids, quantised, channel):
    """Known-PSF log-flux variances ``(n,)`` of the stars of frame ``k``, and the
    common part once the PSF's parameters are learned from them: ``u (n, m)``
    and ``S (m, m)`` with ``cov = diag(var) + u S u^T``."""
    _, psf, var_pix, flux = _star_stamps(seq, k, ids, quantised, channel)
    base = seq._plans[k].psf
    derivs = []
    for dfw, dbeta in _psf_parameters(base):
        hi = _star_stamps(seq, k, ids, quantised, channel, (base.fwhm + dfw, base.beta + dbeta))[1]
        lo = _star_stamps(seq, k, ids, quantised, channel, (base.fwhm - dfw, base.beta - dbeta))[1]
        derivs.append((hi - lo) / (2.0 * (dfw + dbeta)))
    dp = np.stack(derivs)  # (m, n, s, s)
    a = np.sum(psf * psf / var_pix, axis=(1, 2))
    b = flux[None] * np.sum(psf[None] * dp / var_pix[None], axis=(2, 3))  # (m, n)
    d = np.einsum("n,inyx,jnyx->ij", flux**2, dp / var_pix[None], dp)
    s = np.linalg.inv(d - (b / a[None]) @ b.T)
    return 1.0 / (a * flux**2), (b / (a * flux)[None]).T, s


def learned_psf_bound(seq, k: int, *, quantised: bool = False, channel: int = 0) -> float:
    """The scale bound of frame ``k`` when each frame's PSF parameters must be
    learned from its own stars (the module docstring).

    Parameters
    ----------
    seq, k, quantised, channel :
        As in :func:`scale_bound`.

    Returns
    -------
    float
        Smallest possible standard deviation of ``scale / true scale - 1``.
    """
    ids = scale_bound(seq, k, quantised=quantised, channel=channel).ids
    if len(ids) == 0:
        return float("inf")
    parts = [_log_flux_covariance(seq, f, ids, quantised, channel) for f in (seq.reference, k)]
    diag = parts[0][0] + parts[1][0]
    u = np.hstack([p[1] for p in parts])  # (n, 2m)
    m = u.shape[1] // 2
    s_inv = np.zeros((2 * m, 2 * m))
    s_inv[:m, :m] = np.linalg.inv(parts[0][2])
    s_inv[m:, m:] = np.linalg.inv(parts[1][2])
    # 1^T C^-1 1 by Woodbury, C = diag + u S u^T
    w1 = 1.0 / diag
    ut_w1 = u.T @ w1
    inner = s_inv + (u * w1[:, None]).T @ u
    info = float(np.sum(w1) - ut_w1 @ np.linalg.solve(inner, ut_w1))
    return float(np.sqrt(1.0 / info)) if info > 0 else float("inf")


def scale_bound(seq, k: int, *, quantised: bool = False, channel: int = 0,
                peak_limit: float | None = None) -> ScaleBound:
    """Cramér-Rao bound on the scale of frame ``k`` against the sequence's reference.

    Parameters
    ----------
    seq : SimulatedSequence
    k : int
        Target frame (not the reference).
    quantised : bool
        The frames are rounded to whole ADU.
    channel : int
        Channel of an RGB sequence.
    peak_limit : float, optional
        Leave out the stars whose brightest pixel reaches this level in either frame
        (NSG's linear range: ``linear_range`` times the reference's maximum), so that
        the bound is over the stars an engine that keeps the linear range may measure.

    Returns
    -------
    ScaleBound
    """
    r = seq.reference
    half = int(np.ceil(STAMP_FWHM * max(seq.truth[r].fwhm, seq.truth[k].fwhm)))
    ids = np.flatnonzero(_measurable(seq, r, half, peak_limit)
                         & _measurable(seq, k, half, peak_limit))
    f_r, v_r = star_flux_variance(seq, r, ids, quantised=quantised, channel=channel)
    f_t, v_t = star_flux_variance(seq, k, ids, quantised=quantised, channel=channel)
    star_var = v_r / f_r**2 + v_t / f_t**2
    total = float(np.sum(1.0 / star_var)) if len(ids) else 0.0
    sigma = float(np.sqrt(1.0 / total)) if total > 0 else float("inf")
    return ScaleBound(sigma, len(ids), np.sqrt(star_var), ids)


def _fit_errors(seq, k, ids, quantised, channel):
    """Relative flux errors of a true-PSF fit of stars ``ids`` on frame ``k``'s own
    noise (the frame less its noise-free image; rounded to whole ADU if ``quantised``)."""
    half, psf, var_pix, flux = _star_stamps(seq, k, ids, quantised, channel)
    data = seq.frame(k).data
    noise = (np.round(data) if quantised else data).astype(np.float64) - seq.noise_free(k)
    if noise.ndim == 3:
        noise = noise[channel]
    stars = seq.stars(k)
    cx, cy = np.round(stars.x[ids]).astype(int), np.round(stars.y[ids]).astype(int)
    offs = np.arange(-half, half + 1)
    rows = np.clip(cy[:, None] + offs[None, :], 0, seq.shape[0] - 1)
    cols = np.clip(cx[:, None] + offs[None, :], 0, seq.shape[1] - 1)
    stamps = noise[rows[:, :, None], cols[:, None, :]]
    fitted = np.sum(psf * stamps / var_pix, axis=(1, 2)) / np.sum(psf * psf / var_pix, axis=(1, 2))
    return fitted / flux


def realised_star_errors(seq, k: int, *, quantised: bool = False,
                         channel: int = 0) -> tuple[ScaleBound, np.ndarray]:
    """:func:`scale_bound` and, for each of its stars, the log flux ratio error of the
    bound's estimator on frame ``k``'s and the reference's actual noise (its true PSF,
    position, sky and neighbours known): what :func:`realised_error` combines, for any
    selection of the stars (:func:`combine_star_errors`) without refitting them."""
    bound = scale_bound(seq, k, quantised=quantised, channel=channel)
    if len(bound.ids) == 0:
        return bound, np.empty(0)
    return bound, (_fit_errors(seq, seq.reference, bound.ids, quantised, channel)
                   - _fit_errors(seq, k, bound.ids, quantised, channel))


def combine_star_errors(bound: ScaleBound, log_ratio: np.ndarray,
                        ids: np.ndarray | None = None) -> float:
    """The scale error of the bound's estimator from its stars' errors
    (:func:`realised_star_errors`): their log flux ratio errors weighted by their bound
    variances, over the stars among ``ids`` (catalogue indices; None: all). NaN when
    none is left."""
    keep = np.ones(len(bound.ids), bool) if ids is None else np.isin(bound.ids, ids)
    if not keep.any():
        return float("nan")
    weights = 1.0 / bound.star_sigma[keep] ** 2
    return float(np.sum(weights * log_ratio[keep]) / np.sum(weights))


def realised_error(seq, k: int, *, quantised: bool = False, channel: int = 0,
                   ids: np.ndarray | None = None) -> float:
    """The relative scale error of the bound's own estimator on frame ``k``'s and the
    reference's actual noise (the module docstring): every star of
    :func:`scale_bound` fitted with its true PSF, position, sky and neighbours known,
    the log flux ratios weighted by their bound variances.

    Parameters
    ----------
    seq, k, quantised, channel :
        As in :func:`scale_bound` (``quantised``: the frames as rounded to whole ADU,
        as an engine reads them).
    ids : ndarray of int, optional
        Catalogue indices: only the bound's stars among them (e.g. the star pairs an
        engine used: the estimator's error on that selection, so that an engine's
        excess splits into the stars it left out and how it measured the rest).

    Returns
    -------
    float
        ``scale / true scale - 1`` of that estimator, to first order; over noise
        draws its standard deviation is the bound.
    """
    bound, log_ratio = realised_star_errors(seq, k, quantised=quantised, channel=channel)
    return combine_star_errors(bound, log_ratio, ids)
