"""Small-aperture photometry with an empirical aperture correction: no PSF model.

Every star pair is measured in small apertures (about 1.5 FWHM, little sky
noise) and in the default large ones. The light a small aperture misses (the
PSF's wings, real halo included) is taken from the stars themselves: per pair,
the ratio of ratios ``q = (L_ref / S_ref) / (L_tgt / S_tgt)`` is how much the
large-aperture flux ratio differs from the small-aperture one, and its
inverse-variance, clipped mean ``Q`` over all measured pairs corrects the small
apertures' ratio: ``scale = scale_small * Q``. The star's core photons and the
light of neighbours that lie wholly inside both apertures cancel in ``q``; what
is left is the light between the two radii and the sky noise over it.

Compared with :mod:`napari_nsg.core.stars.aperture_correction` (a fitted
profile), nothing is assumed about the PSF's shape, so a real PSF's wings are
included by construction. The price: ``Q`` is measured, so its sky noise is
that of the annulus between the radii over the bright stars, close to the
large apertures' own (docs/nsg.md, "Scale precision against the photon limit").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .photometry import Photometry, pair_photometry

#: Fewest pairs for a wing ratio; pairs further than CLIP_SIGMA standard errors
#: from the running mean are left out (CLIP_ITERATIONS passes).
MIN_WING_PAIRS = 5
CLIP_SIGMA = 4.0
CLIP_ITERATIONS = 3
#: The annulus's variance is taken as the large aperture's minus the small one's
#: (the core's sky and photon noise cancel in ``q``), at least this fraction of
#: the large aperture's.
MIN_ANNULUS_VARIANCE = 0.1
#: Relative error of ``q`` per unit of neighbour flux crossing an aperture or
#: ring edge (the crowding term of :func:`napari_nsg.core.nsg.scale.fit_scale`).
CROWDING_SENSITIVITY = 0.05


@dataclass(frozen=True)
class WingRatio:
    """The empirical correction of one channel.

    Attributes
    ----------
    ratio : float
        ``Q``: the large-aperture flux ratio over the small-aperture one
        (reference / target), a weighted mean over the pairs.
    error : float
        Its standard error.
    ref_factor : float
        ``C_ref``: the reference's mean large / small flux (puts the corrected
        fluxes in the large apertures' units).
    n_pairs : int
        Pairs in the mean.
    """

    ratio: float
    error: float
    ref_factor: float
    n_pairs: int


def _clipped_mean(q: np.ndarray, sig: np.ndarray) -> tuple[float, float, int]:
    """Inverse-variance mean of ``q`` and its error, iteratively clipped at
    CLIP_SIGMA standard errors of each value, starting from the median."""
    mean = float(np.median(q))
    keep = np.ones(len(q), bool)
    for _ in range(CLIP_ITERATIONS):
        keep = np.abs(q - mean) <= CLIP_SIGMA * sig
        if keep.sum() < MIN_WING_PAIRS:
            return float("nan"), float("nan"), int(keep.sum())
        w = 1.0 / sig[keep] ** 2
        mean = float(np.sum(w * q[keep]) / np.sum(w))
    return mean, float(1.0 / np.sqrt(np.sum(w))), int(keep.sum())


def _annulus_variance(err_large: np.ndarray, err_small: np.ndarray) -> np.ndarray:
    """Variance of ``large - small``: the noise of the light between the radii."""
    var_l = err_large**2
    return np.maximum(var_l - err_small**2, MIN_ANNULUS_VARIANCE * var_l)


def wing_ratio(small: tuple[Photometry, Photometry], large: tuple[Photometry, Photometry],
               c: int, crowding: np.ndarray | None = None) -> WingRatio | None:
    """``Q``, the mean ratio of the large- to the small-aperture flux ratios.

    Parameters
    ----------
    small, large : (Photometry, Photometry)
        Reference and target photometry of the same pairs in both apertures.
    c : int
        Channel.
    crowding : ndarray (n,), optional
        Neighbour flux crossing an edge, relative to the star's
        (``engine._crowding``); adds ``(0.05 crowding)^2`` to each ``q``'s
        relative variance.

    Returns
    -------
    WingRatio or None
        None with fewer than MIN_WING_PAIRS pairs valid in all four.
    """
    (sr, st), (lr, lt) = small, large
    ok = sr.valid[c] & st.valid[c] & lr.valid[c] & lt.valid[c]
    if ok.sum() < MIN_WING_PAIRS:
        return None
    f = [ph.flux[c, ok] for ph in (sr, st, lr, lt)]
    q = (f[2] / f[0]) / (f[3] / f[1])
    rel2 = sum(_annulus_variance(big.flux_err[c, ok], sm.flux_err[c, ok]) / fl**2
               for big, sm, fl in ((lr, sr, f[2]), (lt, st, f[3])))
    if crowding is not None:
        rel2 = rel2 + (CROWDING_SENSITIVITY * np.nan_to_num(np.asarray(crowding)[ok])) ** 2
    sig = q * np.sqrt(rel2)
    good = np.isfinite(q) & np.isfinite(sig) & (sig > 0)
    if good.sum() < MIN_WING_PAIRS:
        return None
    mean, err, n = _clipped_mean(q[good], sig[good])
    if not np.isfinite(mean):
        return None
    c_ref = f[2][good] / f[0][good]
    w = (f[2][good] / lr.flux_err[c, ok][good]) ** 2
    return WingRatio(mean, err, float(np.sum(w * c_ref) / np.sum(w)), n)


def _scale_channel(ph: Photometry, c: int, factor: float) -> None:
    ph.flux[c] = ph.flux[c] * factor
    ph.flux_err[c] = ph.flux_err[c] * factor


def empirical_pair_photometry(ref, tgt, ref_x, ref_y, tgt_x, tgt_y, radius, large, *,
                              gap=2.0, width=10.0, saturation=None, crowding=None):
    """Small-aperture photometry of star pairs with the empirical wing ratio applied.

    The reference's fluxes are multiplied by ``C_ref`` and the target's by
    ``C_ref / Q`` (:func:`wing_ratio`), so their ratio is the small apertures'
    times ``Q`` and both are in the large apertures' units. When a channel has
    no wing ratio (too few pairs), the large-aperture photometry is returned.

    Parameters
    ----------
    ref, tgt, ref_x, ref_y, tgt_x, tgt_y, radius, gap, width, saturation :
        As in :func:`napari_nsg.core.stars.photometry.pair_photometry`
        (``radius``, ``width``: the small apertures).
    large : (ndarray, ndarray)
        Radii and ring widths of the large apertures.
    crowding : ndarray (n,), optional
        See :func:`wing_ratio`.

    Returns
    -------
    (Photometry, Photometry, list of WingRatio or None)
        The photometry and each channel's wing ratio. ``Q``'s error is not in
        the per-pair errors (it is common to all pairs).
    """
    kw = {"gap": gap, "saturation": saturation}
    small = pair_photometry(ref, tgt, ref_x, ref_y, tgt_x, tgt_y, radius, width=width, **kw)
    big = pair_photometry(ref, tgt, ref_x, ref_y, tgt_x, tgt_y, large[0], width=large[1], **kw)
    ratios = [wing_ratio(small, big, c, crowding) for c in range(small[0].n_channels)]
    if any(wr is None for wr in ratios):
        return big[0], big[1], ratios
    for c, wr in enumerate(ratios):
        _scale_channel(small[0], c, wr.ref_factor)
        _scale_channel(small[1], c, wr.ref_factor / wr.ratio)
    return small[0], small[1], ratios
