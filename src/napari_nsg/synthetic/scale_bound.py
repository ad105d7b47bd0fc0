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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ScaleBound", "scale_bound", "star_flux_variance"]

#: Stamp half-size in FWHM for the information sums (the Gaussian core holds it all).
STAMP_FWHM = 2.5
#: Variance of rounding to whole ADU.
QUANTISATION_VARIANCE = 1.0 / 12.0


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


def _measurable(seq, k: int, half: int) -> np.ndarray:
    """Stars of frame ``k`` that are unsaturated and whose stamp lies in the data."""
    stars = seq.stars(k)
    ny, nx = seq.shape
    cx = np.round(stars.x).astype(int)
    cy = np.round(stars.y).astype(int)
    ok = ~stars.saturated & (cx >= half) & (cy >= half) & (cx < nx - half) & (cy < ny - half)
    valid = seq.valid_mask(k)
    ok[ok] &= valid[cy[ok], cx[ok]]
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
    plan = seq._plans[k]
    stars = seq.stars(k)
    half = int(np.ceil(STAMP_FWHM * plan.psf.fwhm))
    x, y = stars.x[ids], stars.y[ids]
    cx, cy = np.round(x).astype(int), np.round(y).astype(int)
    psf = plan.psf.stamps(x - cx, y - cy, half).astype(np.float64)
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
    info = np.sum(psf * psf / var_pix, axis=(1, 2))
    return stars.flux[ids, channel], 1.0 / info


def scale_bound(seq, k: int, *, quantised: bool = False, channel: int = 0) -> ScaleBound:
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

    Returns
    -------
    ScaleBound
    """
    r = seq.reference
    half = int(np.ceil(STAMP_FWHM * max(seq.truth[r].fwhm, seq.truth[k].fwhm)))
    ids = np.flatnonzero(_measurable(seq, r, half) & _measurable(seq, k, half))
    f_r, v_r = star_flux_variance(seq, r, ids, quantised=quantised, channel=channel)
    f_t, v_t = star_flux_variance(seq, k, ids, quantised=quantised, channel=channel)
    star_var = v_r / f_r**2 + v_t / f_t**2
    total = float(np.sum(1.0 / star_var)) if len(ids) else 0.0
    sigma = float(np.sqrt(1.0 / total)) if total > 0 else float("inf")
    return ScaleBound(sigma, len(ids), np.sqrt(star_var), ids)
