"""PSF-weighted photometry of star pairs with each frame's fitted profile.

Aperture photometry weights every pixel of its aperture alike; in sky-limited
frames that costs a factor 2-3.5 in variance against a PSF fit (a 3-FWHM
aperture on a Gaussian: 3.5 x the Cramér-Rao bound in scale error; measured
on the simulator). Here every star is measured with the optimal linear
weights ``w = P / v`` (``P`` the frame's unit-flux profile at the pixel, ``v``
the pixel variance: the sky's, growing with the star's own light), and the
flux is ``sum w (d - b) / sum w (P - p_b)``: ``b`` is the background plane of
the ring around the star (as in aperture photometry) and ``p_b`` the same
plane through the profile's own light in that ring, so that the flux is the
star's whole light whatever the weights, if the profile is the frame's PSF.

The profile is :func:`~napari_nsg.core.stars.aperture_correction.fit_profile`'s
(elliptical, Moffat-like with the tail exponent free down to a Gaussian),
fitted per frame to its brightest isolated stars, so its normalisation comes
from the bright stars' cores and the wings from the profile's shape: the
error of that shape is common to every star of a frame (the price of
learning the PSF; :func:`napari_nsg.synthetic.scale_bound.learned_psf_bound`).
A frame whose PSF the profile does not describe (real optics) would be
biased; the pairs are therefore also measured in the large apertures, and
when the two disagree by more than ``AGREEMENT_GATE_Z`` standard errors
(:func:`~napari_nsg.core.stars.aperture_correction.agreement_z`) the large
apertures' photometry is returned.

Each pair is measured at one position in both frames (the mean of its two
centroids, the target's shifted by the frames' offset): PSF weights are
sensitive to a centroid error (a shift ``d`` loses about ``d^2 / (4 sigma^2)``
of the weighted flux), and a common position makes that loss nearly the same
in both frames.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy.ndimage import binary_dilation, gaussian_filter
from scipy.optimize import least_squares, minimize
from scipy.spatial import cKDTree

from ..nodata import with_nan_no_data
from .aperture_correction import (
    AGREEMENT_GATE_Z,
    MAX_ELLIPTICITY,
    MIN_PROFILE_STARS,
    SELF_PX,
    TAIL_RANGE,
    Profile,
    _power,
    _profile_stars,
    _reference_profile,
    _scale_of,
    _shape_matrix,
    _stamps,
    _unit_psf,
    agreement_z,
)
from .detection import FWHM_PER_SIGMA
from .photometry import Photometry, add_shot_noise, pair_photometry, ring_statistics
from .psf_match import window

__all__ = ["psf_pair_photometry", "weighted_photometry"]

#: Radius (in FWHM of the frame's profile) of the pixels that carry weight.
WEIGHT_RADIUS_FWHM = 2.0
#: Gap between the weighted pixels and the background ring, and the ring's width,
#: in FWHM (the ring's plane is corrected for the profile's light in it).
RING_GAP_FWHM = 0.5
RING_WIDTH_FWHM = 2.0
MIN_RING_PIXELS = 12
TINY_BASE = 1e-12
#: Profile stars whose squared fractional misfit is above the median by CULL_Z
#: robust sigmas and by CULL_MIN_EXCESS (a 3 % rms misfit) are dropped and the
#: shape refitted (up to CULL_ROUNDS times): blends with an unresolved
#: companion (:func:`_blended`).
CULL_MIN_EXCESS = 1e-3
CULL_ROUNDS = 2
CULL_Z = 4.0
MAD_TO_SIGMA = 1.4826
FIT_TERMS = 3  # per star: flux and a sub-pixel shift
#: With ``free_shape``: the shape parameters (indices into :func:`_theta`: log
#: FWHM, u) whose derivatives are free linear terms of every star's flux fit,
#: and the step of those numerical derivatives.
SHAPE_TERMS: tuple[int, ...] = (0, 1)
SHAPE_STEP = 1e-3
#: Nelder-Mead stopping rule of the profile's shape fit (:func:`_fit_shape`): both
#: the parameters (log FWHM, u, e1, e2) and the chi-square settled to these.
SHAPE_XATOL = 1e-5
SHAPE_FATOL = 1e-2
SHAPE_MAXITER = 1500
#: The shape fit as a least-squares problem (scipy's trust-region reflective, numerical
#: Jacobian of the weighted residuals) instead of Nelder-Mead's simplex (still used with
#: WIDTH_NOISE_TERM, whose chi-square is not a sum of squares). The same minimum in about a
#: fifth of the chi-square evaluations: 49 against 252 on a 6000 x 4000 target (scale
#: 2e-6 apart), the same errors on 48 independent-like frames (docs/nsg.md "Tenth attempt").
SHAPE_LEAST_SQUARES = True
SHAPE_LS_FTOL = 1e-8
SHAPE_LS_STEP = 1e-4
#: Initial Nelder-Mead steps (log FWHM, u, e1, e2) of the first shape fit and of the
#: refits after a cull (which start at the fitted shape); None: scipy's (5 % of each
#: nonzero parameter, 0.00025 for zeros). With these and SHAPE_FATOL 1e-2 (was 1e-6:
#: the chi-square is ~1e4, 1e-2 of it moves no parameter by SHAPE_XATOL) the target's
#: shape fits take 108 + 69 chi-square evaluations instead of 174 + 181 (6000x4000
#: target, shared tail: 0.94 -> 0.61 s; the scale moves 3e-7; docs/nsg.md "Sixth attempt").
SHAPE_SIMPLEX: tuple[float, ...] | None = (0.02, 0.02, 0.02, 0.02)
SHAPE_REFIT_SIMPLEX: tuple[float, ...] | None = (0.005, 0.005, 0.005, 0.005)
#: Profile stars whose own width or tail offsets (per unit of each shape term)
#: are further than SHAPE_CULL_Z of their errors and SHAPE_CULL_MIN from the
#: median star's are dropped and the shape refitted (:func:`_odd_shape`), up to
#: SHAPE_CULL_ROUNDS times: 0, off by default (measured in docs/nsg.md "Fourth
#: attempt": it removes a noise-free +0.47 % normalisation bias and halves the
#: crowded-field error, but the check then refuses 4 of the tests' 24
#: independent-like frames and the other conditions do not improve).
SHAPE_CULL_ROUNDS = 0
SHAPE_CULL_Z = 4.0
SHAPE_CULL_TERMS = (0, 1)  # log FWHM, u
SHAPE_CULL_MIN = (0.005, 0.015)  # per term
#: The shape cull never leaves fewer than SHAPE_CULL_FLOOR profile stars (or
#: SHAPE_CULL_KEEP of those before it, whichever is more): when more are odd,
#: only the most deviant go (a sparse field keeps enough stars for the width).
#: 0 and 0.0: no floor beyond MIN_PROFILE_STARS (docs/nsg.md "Sixth attempt").
SHAPE_CULL_FLOOR = 0
SHAPE_CULL_KEEP = 0.0
#: Companions found in the profile stars' residuals: after the fit, each stamp's
#: residual is matched-filtered with the profile's Gaussian core; pixels more
#: than RESIDUAL_MASK_Z sigma above it, beyond RESIDUAL_CORE_FWHM of the star,
#: and RESIDUAL_GROW_FWHM around them are masked and the shape refitted, up to
#: RESIDUAL_MASK_ROUNDS times (0: off; docs/nsg.md "Sixth attempt": undetected
#: companions within 1.5 FWHM widen the profile; 2 since the "Tenth attempt").
RESIDUAL_MASK_ROUNDS = 2
RESIDUAL_MASK_Z = 5.0
RESIDUAL_CORE_FWHM = 0.5
RESIDUAL_GROW_FWHM = 0.5
#: The residual mask decided on one checkerboard half of each stamp's pixels and applied
#: to the other (each half's threshold RESIDUAL_MASK_Z / sqrt(2): the same significance of
#: a bump), so that the masked pixels' noise is independent of the decision. An experiment
#: (``--residual-split``), off: the mask moves the targets' width by -0.06 % on bench
#: independent-like seed 1 over noise draws (-0.005 % noise-free), and the split leaves
#: -0.055 %, so the noise the mask selects is not that term: it is the undetected stars'
#: light in the profile fit's rings, which the mask exposes (docs/nsg.md "Ninth attempt").
RESIDUAL_MASK_SPLIT = False
#: The residual mask's bumps sought in each stamp's residual less its mean over rings of
#: RADIAL_BIN_PX around the star: a companion is a local bump, a width error a
#: ring-symmetric residual (positive wings when the fit is too narrow), which the mask
#: would otherwise take for companions and cut, narrowing the refit further (on since the
#: "Tenth attempt"; ``--residual-asymmetric`` in the benchmarks): the targets' width over noise draws moves -0.040 ->
#: -0.028 % (bench independent-like seed 1), -0.012 -> +0.008 % (seed 2); what is left
#: on seed 1 is the undetected stars' light in the rings (docs/nsg.md "Ninth attempt").
RESIDUAL_MASK_ASYMMETRIC = True
RADIAL_BIN_PX = 1.0
#: The profile fit's rings cleaned as its stamps are: ring pixels near a bump of the
#: ring less its ring means (matched filter, RESIDUAL_MASK_Z, grown by RESIDUAL_GROW_FWHM:
#: an undetected star) are left out of the ring level, unless fewer than MIN_RING_PIXELS
#: stay. With the residual mask the stamps lose their undetected companions but the rings
#: keep theirs: the level is then too high and the width narrow (-0.06 % on bench
#: independent-like seed 1; docs/nsg.md "Ninth attempt"). An experiment (``--ring-bumps``),
#: off: seed 1 -0.040 -> +0.017 % (undetected-free +0.020 %), seed 2 -0.012 -> +0.044 %
#: (undetected-free +0.007 %: an overshoot, not separated).
RING_BUMP_MASK = False
#: Default of ``psf_pair_photometry(free_shape=None)`` (the engine's psf mode):
#: an experiment switch for ``benchmarks/bench_scale_bound.py --free-shape``.
FREE_SHAPE = False
#: The tail shared by both frames (``psf_pair_photometry(shared_tail=None)``):
#: the target's profile is fitted with the reference's ``u`` imposed (width and
#: ellipticity free), so that the tail's error is common to both frames of a pair
#: and cancels in their flux ratio (docs/nsg.md "Fifth attempt"; on since the "Tenth
#: attempt"; ``benchmarks/bench_scale_bound.py --shared-tail``).
SHARED_TAIL = True
#: Least-squares pixel weights ``1 / v`` in the flux fit (the fluxes' pixel
#: weights then ``P / v``) instead of ``P / v`` (``P^2 / v``):
#: ``weighted_photometry(ls_weights=None)``; ``--ls-weights`` in the benchmark.
LS_WEIGHTS = False
#: Ring pixels within RING_NEIGHBOUR_MASK_FWHM (in FWHM of the frame) of a detected
#: neighbour are left out of the star's background ring (in the photometry and in the
#: profile fit), unless fewer than MIN_RING_PIXELS would be left. 0: off (2 since the
#: "Tenth attempt"; ``--ring-mask`` in the benchmark). The neighbours at 2-4.5 FWHM, whose
#: light lies in the ring, raise its level, and the weighted flux loses that level
#: times its effective area (4 pi sigma^2 for a Gaussian): the broader frame loses
#: more, and the scale errs positive (docs/nsg.md "Seventh attempt").
RING_NEIGHBOUR_MASK_FWHM = 2.0
#: The same mask in the profile fit's rings only (None: ``RING_NEIGHBOUR_MASK_FWHM``): the
#: ring neighbours' light raises the profile stars' ring level, their wings come out low
#: and the fitted width narrow (-0.06 % on bench independent-like seed 2's broad targets,
#: the scale +0.06 %: docs/nsg.md "Ninth attempt"). An experiment (``--profile-ring-mask``).
PROFILE_RING_MASK_FWHM: float | None = None
#: Matched response (``psf_pair_photometry(matched=None)``): both frames of a pair are
#: weighted within the broader frame's region and ring, each with the flux weights
#: ``W`` of its profile widened to ``sqrt(2 F_b^2 - F^2)`` (``F_b`` the broader
#: profile's FWHM; the broader frame's own profile), flux ``sum W (d - b) / sum W
#: (P - p_b)``: for Gaussian PSFs the two fluxes then respond alike to light at any
#: offset (a neighbour, an unresolved companion, the rings' share of them), so that
#: it cancels in the ratio, at the cost of the sharper frame's signal-to-noise (on since
#: the "Tenth attempt"; ``--matched-response`` in the benchmark; docs/nsg.md "Seventh attempt").
MATCHED_RESPONSE = True
#: The profile fit's noise term removed (``--width-noise``; docs/nsg.md "Ninth attempt"):
#: the shape minimises ``chi2 + sum_i tr(N_i^-1 B_i' W V_i W B_i)`` instead of ``chi2``
#: (``B_i`` the star's columns of flux and shift, ``W`` its weights, ``N_i = B_i' W B_i``,
#: ``V_i`` its pixel variance: the sky's growing with the star's light, and its ring
#: level's). The chi-square's expected value then no longer depends on the shape
#: through the noise that each star's own flux and shift absorb: with sky weights the
#: brighter core pixels' photon noise is absorbed more by a narrower profile, which biases
#: the width low, by 1/S/N to 1/S/N^1.4 of the profile stars (+0.016 % at S/N 60, +0.002 %
#: at the bench's profile stars; a Neyman-Scott bias: one flux and shift per star, so it
#: does not average down with more stars). An experiment, off: +0.16-0.38 s a target.
WIDTH_NOISE_TERM = False
#: The profile fit's pixel weights ``1 / V`` (``V`` the sky's variance growing with the
#: star's light, from the model of the starting shape, frozen for the fit) instead of the
#: sky's alone: the bright stars' cores, whose variance is mostly their own photon noise,
#: no longer outweigh their wings, and with ``W = V^-1`` the noise that each star's flux and
#: shift absorb no longer depends on the shape (on since the "Tenth attempt";
#: ``--width-weights`` in the benchmarks). Over noise draws it narrows the targets' width by -0.04 / -0.12 % more than sky weights
#: (bench independent-like seeds 2 / 1; +-0.02 % noise-free; not separated), docs/nsg.md
#: "Ninth attempt".
WIDTH_VARIANCE_WEIGHTS = True
#: The check's pairs weighted with the large apertures' crowding as the scale fit weighs
#: them (``agreement_z(crowding=)``): a neighbour biases the large apertures, and without
#: it the check refused the PSF weights of 7 of 48 independent-like frames even with each
#: frame's true PSF as its profile (docs/nsg.md, "Eleventh attempt"). On since the
#: "Twelfth attempt", with :data:`RESPONSE_WIDEN`: alone it let a profile error of
#: -0.40 % through; with the widened responses that frame's error is -0.30 %
#: (``--crowded-check`` in the benchmarks).
CROWDED_CHECK = True
#: The matched responses' common width, as a multiple of the broader frame's FWHM
#: (:func:`_matched_responses`). A profile whose second moment is off by ``e`` (px^2)
#: moves the flux by about ``-e / (2 (RESPONSE_WIDEN F_b)^2)`` (Gaussian algebra), so
#: widening by 1.3 leaves 0.59 of each frame's profile error in its flux, for about
#: 10 % more photometric noise in the broader frame (efficiency ``4t / (1 + t)^2`` with
#: ``t = 2 RESPONSE_WIDEN^2 - 1``). On 96 independent-like frames the profiles' part of
#: the scale error fell from 1.5 to 0.8 bound units rms and the ratio to the bound from
#: 1.61 / 1.91 to 1.34 / 1.69 (with :data:`CROWDED_CHECK`); 1.45 and 1.6 were within
#: the evaluation's noise of 1.3 (docs/nsg.md "Twelfth attempt"; ``--response-widen``).
RESPONSE_WIDEN = 1.3

#: Detected neighbours modelled out of each star's stamp before it is measured: each
#: neighbour within NEIGHBOUR_MODEL_REACH_FWHM of the weighted region, with its detected flux
#: (times the frame's scale estimate in the target) and the frame's profile, is subtracted
#: from the pixels (weighted and ring). The matched responses make a neighbour's light equal
#: in both frames only over the whole plane; the weighted region ends at WEIGHT_RADIUS_FWHM,
#: so a neighbour near its edge reaches the broader frame's flux more (a seeing slope of the
#: scale of -1.8 bound units per unit ln FWHM ratio with the true profiles and sky;
#: docs/nsg.md "Thirteenth attempt"). An experiment (``--neighbour-model``), off.
NEIGHBOUR_MODEL = False
NEIGHBOUR_MODEL_REACH_FWHM = 3.0
#: The scale fit weighs the PSF-weighted pairs with the large apertures' crowding term
#: (5 % of the neighbours' light crossing their edges; :func:`~napari_nsg.core.nsg.scale.fit_scale`)
#: as it weighs aperture pairs. False: by their photometric errors alone (an experiment,
#: ``--fit-crowding 0`` in the benchmark; docs/nsg.md "Thirteenth attempt").
FIT_CROWDING = True

#: The psf mode's settings before the tenth and twelfth attempts made eight of the switches
#: above its defaults (measured on 48 independent-like frames: median error 0.055 % against
#: 0.139 % with the default apertures, 1.34x the bound against 3.39x; 0.078 % and 1.69x on
#: 48 others; docs/nsg.md "Tenth attempt", "Twelfth attempt"): the baseline against which
#: the tests and benchmarks of one switch measure it.
PLAIN_SETTINGS = {"SHARED_TAIL": False, "RESIDUAL_MASK_ROUNDS": 0,
                  "RESIDUAL_MASK_ASYMMETRIC": False, "RING_NEIGHBOUR_MASK_FWHM": 0.0,
                  "MATCHED_RESPONSE": False, "WIDTH_VARIANCE_WEIGHTS": False,
                  "CROWDED_CHECK": False, "RESPONSE_WIDEN": 1.0}
#: The same settings as shipped (this module's values).
SHIPPED_SETTINGS = {name: globals()[name] for name in PLAIN_SETTINGS}


def _theta(profile: Profile) -> np.ndarray:
    return np.array([np.log(profile.fwhm), profile.u, profile.e1, profile.e2])


def _ring_radii(fwhm: float) -> tuple[float, float, float]:
    """Weighted radius and the background ring's inner and outer radii (px)."""
    r_w = WEIGHT_RADIUS_FWHM * fwhm
    r1 = r_w + RING_GAP_FWHM * fwhm
    return r_w, r1, r1 + RING_WIDTH_FWHM * fwhm


def _ring_level(profile: Profile, r1: float, r2: float) -> float:
    """Mean of the unit-flux profile in the ring ``[r1, r2]``: what a star's own
    wings add to its ring's background level."""
    e1, e2 = profile.enclosed(np.array([r1, r2]))
    return float((e2 - e1) / (np.pi * (r2 * r2 - r1 * r1)))


def _other_stars(x, y, neighbours, reach, usable=None):
    """For each star ``(x, y)`` with a detected neighbour (``neighbours``: their x and y;
    one within ``SELF_PX`` of a star is that star) within ``reach``: the star's index,
    the neighbours' offsets from it and their indices into ``neighbours`` (those
    ``usable`` only, default the finite ones)."""
    nx, ny = (np.asarray(a, float) for a in neighbours[:2])
    keep = np.isfinite(nx) & np.isfinite(ny) if usable is None else usable
    finite = np.isfinite(x) & np.isfinite(y)
    if not keep.any() or not finite.any():
        return
    idx = np.flatnonzero(keep)
    lists = cKDTree(np.c_[nx[idx], ny[idx]]).query_ball_point(np.c_[x[finite], y[finite]], reach)
    for s, js in zip(np.flatnonzero(finite), lists, strict=True):
        js = idx[np.asarray(js, int)]
        ox, oy = nx[js] - x[s], ny[js] - y[s]
        other = np.hypot(ox, oy) > SELF_PX
        if other.any():
            yield s, ox[other], oy[other], js[other]


def _near_neighbours(dxy, x, y, neighbours, radius, reach):
    """Pixels ``(n, p)`` at offsets ``dxy`` from the stars ``(x, y)`` that lie within
    ``radius`` of a detected neighbour (``neighbours``: their x and y; one within
    ``SELF_PX`` of a star is that star); neighbours further than ``reach + radius``
    from a star are not looked at."""
    dx, dy = dxy
    near = np.zeros(dx.shape, bool)
    for s, ox, oy, _ in _other_stars(x, y, neighbours, reach + radius):
        d2 = (dx[s][None, :] - ox[:, None]) ** 2 + (dy[s][None, :] - oy[:, None]) ** 2
        near[s] = np.any(d2 < radius * radius, axis=0)
    return near


def _neighbour_light(dxy, x, y, neighbours, theta, reach, flux_scale=1.0):
    """The light ``(n, p)`` of the detected neighbours (``neighbours``: x, y and detected
    flux; one within ``SELF_PX`` of a star is that star) at offsets ``dxy`` from the stars
    ``(x, y)``, with the unit profile ``theta``, their fluxes times ``flux_scale``; those
    further than ``reach`` from a star are left out."""
    dx, dy = dxy
    light = np.zeros(dx.shape)
    nx, ny, nf = (np.asarray(a, float) for a in neighbours[:3])
    usable = np.isfinite(nx) & np.isfinite(ny) & np.isfinite(nf) & (nf > 0)
    for s, ox, oy, js in _other_stars(x, y, neighbours, reach, usable):
        prof = _unit_psf(theta, (dx[s][None, :] - ox[:, None], dy[s][None, :] - oy[:, None]))
        light[s] = (nf[js] * flux_scale) @ prof
    return light


def _masked_ring(ring, dxy, x, y, neighbours, fwhm, r2, mask_fwhm=None):
    """``ring`` less the pixels within ``mask_fwhm`` FWHM (None:
    ``RING_NEIGHBOUR_MASK_FWHM``) of a detected neighbour, where at least
    ``MIN_RING_PIXELS`` stay."""
    mask_fwhm = RING_NEIGHBOUR_MASK_FWHM if mask_fwhm is None else mask_fwhm
    if neighbours is None or mask_fwhm <= 0:
        return ring
    masked = ring & ~_near_neighbours(dxy, x, y, neighbours, mask_fwhm * fwhm, r2)
    enough = masked.sum(axis=1) >= MIN_RING_PIXELS
    return np.where(enough[:, None], masked, ring)


def _ring_background(plane, x, y, r1, r2, neighbours=None, fwhm=None):
    """Each star's ring background (plane at the star), pixel sigma and ring pixels;
    with ``neighbours``, the ring less the pixels near them (:func:`_masked_ring`,
    ``PROFILE_RING_MASK_FWHM``: this is the profile fit's ring)."""
    half = int(np.ceil(r2 + 1.0))
    offs = np.arange(-half, half + 1)
    cx, cy = np.round(x).astype(int), np.round(y).astype(int)
    vals, inside = window(plane, cx, cy, offs)
    n = len(x)
    dx = np.broadcast_to(offs[None, None, :] + (cx - x)[:, None, None], vals.shape).reshape(n, -1)
    dy = np.broadcast_to(offs[None, :, None] + (cy - y)[:, None, None], vals.shape).reshape(n, -1)
    d2 = dx * dx + dy * dy
    use = inside.reshape(n, -1) & (d2 >= r1 * r1) & (d2 <= r2 * r2)
    use = _masked_ring(use, (dx, dy), x, y, neighbours, fwhm, r2, PROFILE_RING_MASK_FWHM)
    vals = vals.astype(np.float64).reshape(n, -1)
    if RING_BUMP_MASK and fwhm is not None:
        use = _ring_bumps(vals, use, (dx, dy), fwhm)
    return ring_statistics(np.where(use, vals, np.nan), dx, dy)


def _ring_bumps(vals, use, dxy, fwhm):
    """``use`` (ring pixels, ``(n, p)`` on a square window) less the pixels near a
    significant positive bump of ``vals`` over the ring's means at each radius
    (:data:`RING_BUMP_MASK`), where at least ``MIN_RING_PIXELS`` stay."""
    n = len(vals)
    side = round(np.sqrt(vals.shape[1]))
    cube = (n, side, side)
    use = use & np.isfinite(vals)
    vals = np.where(use, vals, 0.0)
    resid = np.where(use, vals - _radial_mean(vals, np.hypot(*dxy), use), 0.0)
    var = ring_statistics(np.where(use, vals, np.nan), *dxy)[1] ** 2
    sig = fwhm / FWHM_PER_SIGMA
    num = gaussian_filter(resid.reshape(cube), (0, sig, sig))
    den = gaussian_filter((use * np.nan_to_num(var)[:, None]).reshape(cube),
                          (0, sig / np.sqrt(2), sig / np.sqrt(2)))
    z = num / np.sqrt(np.maximum(den, TINY_BASE) / (4 * np.pi * sig * sig))
    grow = max(round(RESIDUAL_GROW_FWHM * fwhm), 1)
    bump = binary_dilation((z > RESIDUAL_MASK_Z) & use.reshape(cube),
                           structure=np.ones((1, 2 * grow + 1, 2 * grow + 1), bool))
    kept = use & ~bump.reshape(n, -1)
    return np.where((kept.sum(axis=1) >= MIN_RING_PIXELS)[:, None], kept, use)


def _profile_and_gradient(theta, dxy):
    """The unit-flux profile (log FWHM, u, e1, e2) at offsets ``dxy`` and its
    derivatives along the two offsets (a star shifted by ``(-ex, -ey)`` is
    ``P + ex dP/ddx + ey dP/ddy`` to first order)."""
    u = theta[1]
    s2 = _scale_of(np.exp(theta[0]), u) ** 2
    m = _shape_matrix(theta[2], theta[3])
    dx, dy = dxy
    qx, qy = m[0, 0] * dx + m[0, 1] * dy, m[0, 1] * dx + m[1, 1] * dy
    q = (dx * qx + dy * qy) / s2
    p = (1.0 - u) / (np.pi * s2) * _power(q, u, -1.0)
    g = -2.0 * p / (s2 * np.maximum(1.0 + u * q, TINY_BASE))
    return p, g * qx, g * qy


def _normal_inverse(basis, ww):
    """The weighted columns ``basis * ww`` and the inverse of each star's normal
    matrix ``(n, k, k)`` (a 1e-12 ridge of its trace)."""
    bw = basis * ww[:, None, :]
    normal = np.einsum("nkp,nlp->nkl", bw, basis)
    normal += np.eye(basis.shape[1])[None] * 1e-12 * np.trace(normal, axis1=1, axis2=2)[:, None, None]
    return bw, np.linalg.inv(normal)


def _linear_fit(basis, ww, v, weights=True):
    """Per star, the weighted least-squares coefficients of ``basis (n, k, p)``
    for the values ``v (n, p)``, and the effective pixel weights of the first
    coefficient (``coef[:, 0] = sum(a * v)``; None unless ``weights``)."""
    bw, inv = _normal_inverse(basis, ww)
    coef = np.einsum("nkl,nl->nk", inv, np.einsum("nkp,np->nk", bw, v))
    return coef, np.einsum("nl,nlp->np", inv[:, 0, :], bw) if weights else None


def _residuals_fixed_sky(theta, dxy, v, w, use, ring):
    """The weighted residuals ``sqrt(w) (v - model)`` of :func:`_chi2_fixed_sky`'s fit,
    flattened (their sum of squares is its chi-square without ``noise``)."""
    model = _chi2_fixed_sky(theta, dxy, v, w, use, ring)[1]
    return (np.sqrt(np.where(use, w, 0.0)) * (v - model)).ravel()


def _chi2_fixed_sky(theta, dxy, v, w, use, ring, noise=None):
    """Chi-square of each star's best flux and sub-pixel shift for the shape
    ``theta``, its background fixed at its ring's level, the model less its own
    wing light in the ring; and the fitted model ``(n, p)``. With ``noise``
    (each stamp's pixel variance ``(n, p)`` and ring-level variance ``(n,)``), plus
    the noise that the stars' linear terms absorb (:func:`_absorbed_noise`)."""
    prof = Profile(float(np.exp(theta[0])), float(theta[1]), 0, float(theta[2]), float(theta[3]))
    p, px, py = _profile_and_gradient(theta, dxy)
    basis = np.where(use[:, None, :], np.stack([p - _ring_level(prof, *ring), px, py], axis=1), 0.0)
    ww = np.where(use, w, 0.0)
    coef, _ = _linear_fit(basis, ww, v, weights=False)
    model = np.einsum("nk,nkp->np", coef, basis)
    resid = v - model
    chi2 = float(np.sum(ww * resid * resid))
    if noise is not None:
        chi2 += _absorbed_noise(basis, ww, *noise)
    return chi2, model


def _absorbed_noise(basis, ww, pix_var, ring_var):
    """``sum_i tr(N_i^-1 B_i' W V_i W B_i)``: the expected chi-square that the
    linear terms ``basis (n, k, p)`` of each star remove from its noise (pixel
    weights ``ww``, pixel variance ``pix_var``, a common ring-level error of
    variance ``ring_var`` per star); ``k`` for every shape when ``W = V^-1``."""
    bw, inv = _normal_inverse(basis, ww)
    pixels = np.einsum("nkp,nlp->nkl", bw * pix_var[:, None, :], bw)
    level = bw.sum(axis=2)
    return float(np.einsum("nkl,nlk->", inv, pixels)
                 + np.sum(ring_var * np.einsum("nk,nkl,nl->n", level, inv, level)))


def fit_profile_ring_sky(plane, x, y, flux, fwhm, neighbours, tail=None) -> Profile | None:
    """:func:`~napari_nsg.core.stars.aperture_correction.fit_profile` with each
    star's background fixed at its ring level (the one the photometry uses)
    instead of free: a free background per star trades against the profile's
    width and leaves the width several times noisier (measured: per-frame flux
    normalisation scattering 0.1 % against 0.02 % expected).

    Parameters and returns as :func:`fit_profile`; ``fwhm`` also sets the ring
    (:func:`_ring_radii`); ``tail``, when given, is imposed as ``u`` (only the
    width and ellipticity are fitted). Stars whose chi-square is an outlier (an unresolved
    companion: :func:`_blended`) are dropped and the shape refitted;
    ``n_stars`` counts the stars of the last fit."""
    chosen = _profile_stars(plane, x, y, flux, fwhm, neighbours)
    if chosen is None:
        return None
    plane, x, y, ids, tree, nxy = chosen
    _, r1, r2 = _ring_radii(fwhm)
    level, sig, count = _ring_background(plane, x[ids], y[ids], r1, r2, nxy, fwhm)
    ok = np.isfinite(level) & (count >= MIN_RING_PIXELS)
    if ok.sum() < MIN_PROFILE_STARS:
        return None
    ids, level, sig, count = ids[ok], level[ok], sig[ok], count[ok]
    dxy, v, use = _stamps(plane, x[ids], y[ids], fwhm, tree, nxy)
    v = np.where(use, v - level[:, None], 0.0)
    theta = np.array([np.log(fwhm), 0.25 if tail is None else float(tail), 0.0, 0.0])
    bounds = [(np.log(fwhm) - 1.0, np.log(fwhm) + 1.0),
              TAIL_RANGE if tail is None else (float(tail), float(tail)),
              (-MAX_ELLIPTICITY, MAX_ELLIPTICITY), (-MAX_ELLIPTICITY, MAX_ELLIPTICITY)]
    # each star's sky variance as the weight of all its pixels (sky-limited
    # weights): weights that grow with the star's light, from the data or the
    # model, bias the width (measured on Moffat frames: FWHM +0.6 %, flux
    # normalisation +0.75 % over fresh noise; +0.02 % and +0.27 % this way;
    # both before the blends were culled; after it, model weights were no better
    # on a broad Moffat target: -0.21 % against -0.17 %). Blended profile stars
    # are dropped (_blended) and the shape refitted.
    var = np.maximum(np.nan_to_num(sig, nan=1.0) ** 2, 1e-6)
    w = np.broadcast_to(1.0 / var[:, None], v.shape)
    keep = np.ones(len(ids), bool)
    noise = None
    if WIDTH_NOISE_TERM or WIDTH_VARIANCE_WEIGHTS:  # frozen at the start: not the shape's
        pix_var = _model_and_variance(theta, dxy, v, use, (r1, r2), var, level)[1]
        noise = (pix_var, var / count) if WIDTH_NOISE_TERM else None
        w = 1.0 / pix_var if WIDTH_VARIANCE_WEIGHTS else w
    for rnd in range(1 + CULL_ROUNDS):
        theta = _fit_shape(theta, dxy, v, w, use, keep, (r1, r2), bounds, refit=rnd > 0,
                           noise=noise)
        if rnd == CULL_ROUNDS:
            break
        bad = keep & _blended(theta, dxy, v, use, (r1, r2), var, level)
        if not bad.any() or (keep & ~bad).sum() < MIN_PROFILE_STARS:
            break
        keep &= ~bad
    for _ in range(RESIDUAL_MASK_ROUNDS):
        found = _companions(theta, dxy, v, use, (r1, r2), var, level) & keep[:, None]
        found[(use & ~found).sum(axis=1) < MIN_RING_PIXELS] = False  # a stamp keeps its fit
        if not found.any():
            break
        use = use & ~found
        v = np.where(use, v, 0.0)
        theta = _fit_shape(theta, dxy, v, w, use, keep, (r1, r2), bounds, noise=noise)
    floor = max(MIN_PROFILE_STARS, SHAPE_CULL_FLOOR, int(np.ceil(SHAPE_CULL_KEEP * keep.sum())))
    for _ in range(SHAPE_CULL_ROUNDS):
        odd = keep & _at_floor(_odd_shape(theta, dxy, v, use, (r1, r2), var, level), keep, floor)
        if not odd.any():
            break
        keep &= ~odd
        theta = _fit_shape(theta, dxy, v, w, use, keep, (r1, r2), bounds, noise=noise)
    return Profile(float(np.exp(theta[0])), float(theta[1]), int(keep.sum()), float(theta[2]),
                   float(theta[3]))


def _fit_shape(theta, dxy, v, w, use, keep, ring, bounds, refit=True, noise=None):
    """The shape (log FWHM, u, e1, e2) of least chi-square over the stars ``keep``;
    parameters whose bounds are one value stay at it; ``refit``: ``theta`` is
    already a fitted shape (the initial steps ``SHAPE_REFIT_SIMPLEX``); ``noise``:
    :func:`_chi2_fixed_sky`'s (the absorbed noise added; None: not)."""
    sub = (tuple(d[keep] for d in dxy), v[keep], w[keep], use[keep])
    part = None if noise is None else (noise[0][keep], noise[1][keep])
    free = np.array([lo != hi for lo, hi in bounds])
    full = np.array(theta, float)

    def chi2(t):
        full[free] = t
        return _chi2_fixed_sky(full, *sub, ring, part)[0]

    if SHAPE_LEAST_SQUARES and part is None:
        lo, hi = (np.array([b[i] for b, f in zip(bounds, free) if f]) for i in (0, 1))

        def resid(t):
            full[free] = t
            return _residuals_fixed_sky(full, *sub, ring)

        res = least_squares(resid, np.clip(full[free], lo, hi), bounds=(lo, hi),
                            xtol=SHAPE_XATOL, ftol=SHAPE_LS_FTOL, diff_step=SHAPE_LS_STEP)
        full[free] = res.x
        return full.copy()
    options = {"xatol": SHAPE_XATOL, "fatol": SHAPE_FATOL, "maxiter": SHAPE_MAXITER}
    steps = SHAPE_REFIT_SIMPLEX if refit else SHAPE_SIMPLEX
    if steps is not None:
        x0 = full[free]
        options["initial_simplex"] = np.vstack([x0, x0 + np.diag(np.asarray(steps, float)[free])])
    res = minimize(chi2, full[free], method="Nelder-Mead",
                   bounds=[b for b, f in zip(bounds, free) if f], options=options)
    full[free] = res.x
    return full.copy()


def _model_and_variance(theta, dxy, v, use, ring, sky_var, sky_level):
    """Each stamp's fitted model ``(n, p)`` for the shape ``theta`` and its pixel
    variance: the sky's, growing with the model's light as photon noise does."""
    w = np.broadcast_to(1.0 / sky_var[:, None], v.shape)
    model = _chi2_fixed_sky(theta, dxy, v, w, use, ring)[1]
    light = np.clip(model, 0.0, None) / np.maximum(np.abs(sky_level), 1.0)[:, None]
    return model, sky_var[:, None] * (1.0 + light)


def _companions(theta, dxy, v, use, ring, sky_var, sky_level):
    """Pixels ``(n, p)`` near a significant positive bump in each star's
    residual (an undetected companion): the residual matched-filtered with a
    Gaussian of the profile's FWHM over its noise, above ``RESIDUAL_MASK_Z``,
    beyond ``RESIDUAL_CORE_FWHM`` of the star, grown by ``RESIDUAL_GROW_FWHM``
    (the core itself is never masked, so every stamp keeps its fit); with
    ``RESIDUAL_MASK_SPLIT`` the bumps of each checkerboard half mask the other; with
    ``RESIDUAL_MASK_ASYMMETRIC`` the residual's ring-symmetric part is left out."""
    fwhm = float(np.exp(theta[0]))
    model, pix_var = _model_and_variance(theta, dxy, v, use, ring, sky_var, sky_level)
    resid = v - model
    if RESIDUAL_MASK_ASYMMETRIC:
        resid = resid - _radial_mean(resid, np.hypot(*dxy), use)
    side = round(np.sqrt(v.shape[1]))
    cube = (len(v), side, side)
    sig = fwhm / FWHM_PER_SIGMA
    r = np.hypot(*dxy).reshape(cube)
    grow = max(round(RESIDUAL_GROW_FWHM * fwhm), 1)
    halves = [np.ones(cube[1:], bool)]
    if RESIDUAL_MASK_SPLIT:
        iy, ix = np.indices(cube[1:])
        halves = [(ix + iy) % 2 == 0, (ix + iy) % 2 == 1]
    near = np.zeros(cube, bool)
    for k, half in enumerate(halves):
        part = use.reshape(cube) & half
        num = gaussian_filter(np.where(part, resid.reshape(cube), 0.0), (0, sig, sig))
        den = gaussian_filter(np.where(part, pix_var.reshape(cube), 0.0),
                              (0, sig / np.sqrt(2), sig / np.sqrt(2)))
        z = num / np.sqrt(np.maximum(den, TINY_BASE) / (4 * np.pi * sig * sig))
        bump = (z > RESIDUAL_MASK_Z / np.sqrt(len(halves))) & (r > RESIDUAL_CORE_FWHM * fwhm) \
            & use.reshape(cube)
        found = binary_dilation(bump, structure=np.ones((1, 2 * grow + 1, 2 * grow + 1), bool))
        near |= found & (halves[1 - k] if len(halves) > 1 else True)  # the other half
    return (near & (r > RESIDUAL_CORE_FWHM * fwhm)).reshape(v.shape)  # the core stays


def _radial_mean(values, r, use):
    """Each stamp's mean of ``values (n, p)`` over its used pixels in rings of
    ``RADIAL_BIN_PX`` at distances ``r (n, p)``, at every pixel."""
    bins = np.floor(r / RADIAL_BIN_PX).astype(int)
    idx = np.arange(len(values))[:, None] * (bins.max() + 1) + bins
    sums = np.bincount(idx.ravel(), np.where(use, values, 0.0).ravel())
    counts = np.bincount(idx.ravel(), use.ravel().astype(float))
    return (sums / np.maximum(counts, 1.0))[idx]


def _at_floor(score, keep, floor):
    """The stars to drop: those of ``keep`` with a positive ``score`` (how far
    beyond its thresholds a star's shape is), the most deviant first, so that at
    least ``floor`` stars stay."""
    odd = keep & (score > 0)
    room = int(keep.sum()) - floor
    if room <= 0:
        return np.zeros_like(keep)
    if odd.sum() > room:
        worst = np.argsort(np.where(odd, -score, np.inf))[:room]
        odd = np.zeros_like(keep)
        odd[worst] = True
    return odd


def _odd_shape(theta, dxy, v, use, ring, sky_var, sky_level):
    """Profile stars whose own shape differs from the shared one: per star, a
    linear fit of flux, shift and the derivatives in ``SHAPE_CULL_TERMS`` (pixel
    variance of sky and star) gives its width and tail offsets; a star more than
    ``SHAPE_CULL_Z`` of its own errors and ``SHAPE_CULL_MIN`` from the median
    star in either is odd; returned is each star's score, 0 when not odd, else
    how many times beyond the nearer of those thresholds it is in its worst
    term. A neighbour a few FWHM away that no mask covers
    (undetected, or merged with the star) adds light to the wings and pulls the
    shared tail up; the chi-square cull (:func:`_blended`) does not see it,
    because the wings hold little of the star's signal."""
    prof = Profile(float(np.exp(theta[0])), float(theta[1]), 0, float(theta[2]), float(theta[3]))
    p, px, py = _profile_and_gradient(theta, dxy)
    cols = [p - _ring_level(prof, *ring), px, py, *_shape_columns(prof, dxy, ring, SHAPE_CULL_TERMS)]
    basis = np.where(use[:, None, :], np.stack(cols, axis=1), 0.0)
    ww = np.where(use, 1.0 / _model_and_variance(theta, dxy, v, use, ring, sky_var, sky_level)[1], 0.0)
    bw = basis * ww[:, None, :]
    normal = np.einsum("nkp,nlp->nkl", bw, basis)
    cov = np.linalg.pinv(normal)
    coef = np.einsum("nkl,nlp,np->nk", cov, bw, v)
    flux = np.where(coef[:, 0] > 0, coef[:, 0], np.nan)
    score = np.zeros(len(v))
    for j, least in zip(range(FIT_TERMS, basis.shape[1]), SHAPE_CULL_MIN, strict=True):
        rel = coef[:, j] / flux
        err = np.sqrt(np.abs(cov[:, j, j])) / flux
        dev = np.abs(rel - np.nanmedian(rel))
        beyond = np.minimum(dev / (SHAPE_CULL_Z * err), dev / least)
        score = np.fmax(score, np.where(beyond > 1.0, beyond, 0.0))
    return score


def _blended(theta, dxy, v, use, ring, sky_var, sky_level):
    """Stars that the shape ``theta`` does not describe: an unresolved companion
    (undetected, so no isolation rule can reject it) widens the star and gives
    it heavier wings. Each star's chi-square beyond its degrees of freedom, with
    the pixel variance of sky and star (growing with the model's light, as
    photon noise does), over the model's own chi-square: the squared fractional
    misfit, the same for every star when the family misses the PSF's shape (the
    brightest stars are not singled out), large for a blend. Outliers: above
    the median by ``CULL_Z`` robust sigmas and by ``CULL_MIN_EXCESS``."""
    model, pix_var = _model_and_variance(theta, dxy, v, use, ring, sky_var, sky_level)
    chi2 = np.sum(np.where(use, (v - model) ** 2 / pix_var, 0.0), axis=1)
    signal = np.sum(np.where(use, model * model / pix_var, 0.0), axis=1)
    dof = np.maximum(use.sum(axis=1) - FIT_TERMS, 1)
    excess = (chi2 - dof) / np.maximum(signal, TINY_BASE)
    med = np.median(excess)
    spread = MAD_TO_SIGMA * np.median(np.abs(excess - med))
    return excess > med + max(CULL_Z * spread, CULL_MIN_EXCESS)


def weighted_photometry(plane: np.ndarray, x: np.ndarray, y: np.ndarray, profile: Profile,
                        fwhm: float, *, saturation: float | None = None,
                        free_shape: bool = False, ls_weights: bool | None = None,
                        neighbours=None, response: Profile | None = None,
                        neighbour_scale: float = 1.0) -> Photometry:
    """PSF-weighted fluxes of stars at ``(x, y)`` in one channel.

    Parameters
    ----------
    plane : ndarray (y, x)
        The channel (no data as NaN or 0).
    x, y : ndarray (n,)
        Star positions.
    profile : Profile
        The frame's fitted profile.
    fwhm : float
        The FWHM estimate that sets the weighted region and the ring
        (:func:`_ring_radii`; the one the profile was fitted with).
    saturation : float, optional
        A star whose brightest weighted pixel reaches it is invalid.
    free_shape : bool
        Fit every star with the profile's derivatives in ``SHAPE_TERMS`` as
        free linear terms besides its flux and shift: the flux is then
        insensitive to first order to an error of the profile's width and
        tail (the frame's common profile error does not reach it), at the
        cost of more noise per star.
    ls_weights : bool, optional
        Least-squares pixel weights ``1 / v`` (the flux's pixel weights then
        ``P / v``, the optimal ones) instead of ``P / v``; None: ``LS_WEIGHTS``.
    neighbours : (x, y), optional
        Every detected star of the frame: with ``RING_NEIGHBOUR_MASK_FWHM`` the
        ring pixels near them are not used for the background.
    response : Profile, optional
        Flux weights ``W`` (this profile, unit flux) instead of the linear fit's:
        the flux is ``sum W (d - b) / sum W (P - p_b)`` (:data:`MATCHED_RESPONSE`).
    neighbour_scale : float
        With :data:`NEIGHBOUR_MODEL` and neighbours' fluxes (a third element of
        ``neighbours``): their fluxes in this frame are these times this factor.

    Returns
    -------
    Photometry
        One channel; ``radius`` is the weighted region's radius; the errors
        include the sky noise of the weighted pixels and of the ring, not yet
        the stars' own photon noise.
    """
    plane = with_nan_no_data(plane)
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    r_w, r1, r2 = _ring_radii(fwhm)
    half = int(np.ceil(r2 + 1.0))
    offs = np.arange(-half, half + 1)
    finite = np.isfinite(x) & np.isfinite(y)
    cx = np.where(finite, np.round(x), -10**6).astype(int)
    cy = np.where(finite, np.round(y), -10**6).astype(int)
    vals, inside = window(plane, cx, cy, offs)
    vals = vals.astype(np.float64).reshape(n, -1)
    good = inside.reshape(n, -1) & np.isfinite(vals)
    dx = (offs[None, None, :] + (cx - x)[:, None, None]) * np.ones((1, len(offs), 1))
    dy = (offs[None, :, None] + (cy - y)[:, None, None]) * np.ones((1, 1, len(offs)))
    dx, dy = dx.reshape(n, -1), dy.reshape(n, -1)
    d2 = dx * dx + dy * dy
    if NEIGHBOUR_MODEL and neighbours is not None and len(neighbours) > 2:
        vals = vals - _neighbour_light((dx, dy), x, y, neighbours, _theta(profile),
                                       r2 + NEIGHBOUR_MODEL_REACH_FWHM * fwhm, neighbour_scale)
    ring = _masked_ring((d2 >= r1 * r1) & (d2 <= r2 * r2) & good, (dx, dy), x, y, neighbours,
                        fwhm, r2)
    core = d2 <= r_w * r_w
    model = _unit_psf(_theta(profile), (dx, dy))
    level, sig, count = ring_statistics(np.where(ring & good, vals, np.nan), dx, dy)
    model_bkg = np.full(n, _ring_level(profile, r1, r2))
    ls_weights = LS_WEIGHTS if ls_weights is None else ls_weights
    use = core & good
    weighted = core if ls_weights else core & (model > 0)  # the pixels of nonzero weight
    if response is None:
        a = _fit_weights(vals, level, model, model_bkg, profile, (dx, dy), core, use,
                         ls_weights, (r1, r2) if free_shape else None)
    else:  # the flux's weights are the response's: no fit, no shift terms needed
        a = np.where(use, _unit_psf(_theta(response), (dx, dy)), 0.0)
        a /= np.sum(a * np.where(use, model - model_bkg[:, None], 0.0), axis=1, keepdims=True)
    flux = np.sum(np.where(use, a * (vals - level[:, None]), 0.0), axis=1)
    sw, sw2 = a.sum(axis=1), (a * a).sum(axis=1)
    err = sig * np.sqrt(sw2 + sw * sw / np.maximum(count, 1))
    peak = np.where(core & good, vals, -np.inf).max(axis=1)
    sat = np.inf if saturation is None else float(saturation)
    bad_core = np.any(weighted & ~good, axis=1)
    ok = (finite & ~bad_core & (count >= MIN_RING_PIXELS) & np.isfinite(flux) & (flux > 0)
          & (peak < sat))
    reason = np.where(ok, "", "not measurable with PSF weights").astype(object)
    return Photometry(np.where(ok, flux, np.nan)[None], np.where(ok, err, np.nan)[None],
                      level[None], sig[None], peak[None], ok[None], np.full(n, r_w),
                      reason.astype(str))


def _fit_weights(vals, level, model, model_bkg, profile, dxy, core, use, ls_weights, ring):
    """:func:`weighted_photometry`'s flux weights ``(n, p)`` of the linear fit: the
    profile less its ring level and its two shift derivatives (and with ``ring``, the
    radii, the shape derivatives of :func:`_shape_columns`), pixels weighted by
    ``P / v`` (or ``1 / v`` with ``ls_weights``; ``v`` the sky's variance growing with
    the star's light)."""
    sky = np.maximum(np.abs(level), 1.0)[:, None]
    first = np.nansum(np.where(use, vals - level[:, None], 0.0), axis=1)
    weight = np.where(core, (1.0 if ls_weights else model)
                      / (1.0 + np.clip(first, 0, None)[:, None] * model / sky), 0.0)
    _, gx, gy = _profile_and_gradient(_theta(profile), dxy)
    cols = [model - model_bkg[:, None], gx, gy]
    if ring is not None:
        cols += _shape_columns(profile, dxy, ring)
    basis = np.where(use[:, None, :], np.stack(cols, axis=1), 0.0)
    return _linear_fit(basis, np.where(use, weight, 0.0), np.zeros_like(weight))[1]


def _shape_columns(profile: Profile, dxy, ring, terms=None) -> list[np.ndarray]:
    """Derivatives of the unit profile less its ring level, ``P - p_b``, in the
    shape parameters ``terms`` (default ``SHAPE_TERMS``; central differences)."""
    theta = _theta(profile)
    cols = []
    for k in SHAPE_TERMS if terms is None else terms:
        step = np.zeros_like(theta)
        step[k] = SHAPE_STEP
        pair = []
        for t in (theta + step, theta - step):
            prof = Profile(float(np.exp(t[0])), float(t[1]), 0, float(t[2]), float(t[3]))
            pair.append(_unit_psf(t, dxy) - _ring_level(prof, *ring))
        cols.append((pair[0] - pair[1]) / (2.0 * SHAPE_STEP))
    return cols


def _matched_responses(pr: Profile, pt: Profile) -> tuple[Profile, Profile]:
    """Flux weights of matched response for two frames' profiles: each profile
    widened so that its FWHM^2 plus the frame's is twice the square of
    ``RESPONSE_WIDEN`` times the broader one's (Gaussian algebra; at 1 the broader
    frame keeps its own profile)."""
    broad2 = 2.0 * (RESPONSE_WIDEN * max(pr.fwhm, pt.fwhm)) ** 2
    return tuple(replace(p, fwhm=float(np.sqrt(max(broad2 - p.fwhm ** 2, p.fwhm ** 2))))
                 for p in (pr, pt))


def _common_positions(ref_x, ref_y, tgt_x, tgt_y, offset):
    """Each pair's mean centroid, in reference coordinates (NaN-safe: one
    frame's centroid when the other is missing)."""
    tx, ty = np.asarray(tgt_x, float) - offset[0], np.asarray(tgt_y, float) - offset[1]
    x = np.nanmean(np.stack([np.asarray(ref_x, float), tx]), axis=0)
    y = np.nanmean(np.stack([np.asarray(ref_y, float), ty]), axis=0)
    return x, y


def _merge(channels: list[Photometry]) -> Photometry:
    """One Photometry of several single-channel ones."""
    cat = [np.concatenate([getattr(p, f) for p in channels]) for f in
           ("flux", "flux_err", "background", "background_sigma", "peak", "valid")]
    return Photometry(*cat, channels[0].radius, channels[0].reason)


def psf_pair_photometry(ref, tgt, ref_x, ref_y, tgt_x, tgt_y, fwhm, neighbours, large, *,
                        offset=(0.0, 0.0), gap=2.0, saturation=None, free_shape=None,
                        shared_tail=None, matched=None, crowding=None, profile_stars=None):
    """PSF-weighted photometry of star pairs, the large apertures as the check.

    Parameters
    ----------
    ref, tgt : ndarray
        ``(y, x)`` or ``(c, y, x)``, same layout.
    ref_x, ref_y, tgt_x, tgt_y : ndarray (n,)
        The pairs' centroids in each frame.
    fwhm : (float, float)
        FWHM estimates of the reference and the target (start of the fits).
    neighbours : (x, y, flux)
        Every detected star of the reference.
    large : (ndarray, ndarray)
        Radii and ring widths of the large apertures (the check, and the
        photometry returned when a profile cannot be fitted or disagrees).
    offset : (dx, dy)
        Target position minus reference position.
    gap, saturation :
        As in :func:`~napari_nsg.core.stars.photometry.pair_photometry`.
    free_shape : bool, optional
        :func:`weighted_photometry`'s ``free_shape`` (None: ``FREE_SHAPE``); both frames are then
        weighted within ``WEIGHT_RADIUS_FWHM`` of the broader frame's FWHM
        (a neighbour's light then enters both frames' fits alike).
    shared_tail : bool, optional
        Fit the target's profile with the reference's tail ``u`` imposed
        (None: ``SHARED_TAIL``).
    matched : bool, optional
        Weights of matched response in both frames (None: ``MATCHED_RESPONSE``).
    crowding : ndarray (n,), optional
        Each pair's crowding in the large apertures, for the check
        (:func:`~napari_nsg.core.stars.aperture_correction.agreement_z`).
    profile_stars : (x, y, flux), optional
        The reference stars its profile is fitted to (the brightest isolated of them):
        stars of the reference alone, so that its profile, fitted once per reference,
        does not depend on which target came first (serial, parallel and resumed runs
        then agree). None: the pairs, measured in the large apertures.

    Returns
    -------
    (Photometry, Photometry, bool)
        Reference and target photometry, and whether they are PSF-weighted
        (False: the large apertures').
    """
    free_shape = FREE_SHAPE if free_shape is None else free_shape
    shared_tail = SHARED_TAIL if shared_tail is None else shared_tail
    matched = MATCHED_RESPONSE if matched is None else matched
    big = pair_photometry(ref, tgt, ref_x, ref_y, tgt_x, tgt_y, large[0], gap=gap,
                          width=large[1], saturation=saturation)
    ref3 = ref if np.ndim(ref) == 3 else np.asarray(ref)[None]
    tgt3 = tgt if np.ndim(tgt) == 3 else np.asarray(tgt)[None]
    nx, ny, nf = neighbours
    shifted = (np.asarray(nx) + offset[0], np.asarray(ny) + offset[1], nf)
    x, y = _common_positions(ref_x, ref_y, tgt_x, tgt_y, offset)
    sat = (np.full(ref3.shape[0], np.inf) if saturation is None
           else np.broadcast_to(np.asarray(saturation, float), (ref3.shape[0],)))
    out = ([], [])
    for c in range(ref3.shape[0]):
        star_x, star_y, star_flux = profile_stars if profile_stars is not None else (
            ref_x, ref_y, np.where(big[0].valid[c], big[0].flux[c], np.nan))
        pr = _reference_profile(ref, c, star_x, star_y, star_flux, fwhm[0], neighbours,
                                fit_profile_ring_sky)
        if pr is None:
            return big[0], big[1], False
        pt = fit_profile_ring_sky(tgt3[c], tgt_x, tgt_y,
                                  np.where(big[1].valid[c], big[1].flux[c], np.nan), fwhm[1],
                                  shifted, tail=pr.u if shared_tail else None)
        if pt is None:
            return big[0], big[1], False
        common = max(fwhm) if free_shape or matched else None
        both = big[0].valid[c] & big[1].valid[c]  # the target's neighbours: times this
        scale0 = (float(np.median(big[1].flux[c][both] / big[0].flux[c][both]))
                  if NEIGHBOUR_MODEL and both.any() else 1.0)
        resp = _matched_responses(pr, pt) if matched else (None, None)
        for dst, plane, prof, f, (px, py), nb, w, ns in (
                (out[0], ref3[c], pr, common or fwhm[0], (x, y), neighbours, resp[0], 1.0),
                (out[1], tgt3[c], pt, common or fwhm[1], (x + offset[0], y + offset[1]), shifted,
                 resp[1], scale0)):
            ph = weighted_photometry(plane, px, py, prof, f, saturation=sat[c],
                                     free_shape=free_shape, neighbours=nb, response=w,
                                     neighbour_scale=ns)
            ph.valid &= big[0].valid[c] & big[1].valid[c]
            dst.append(ph)
    ref_ph, tgt_ph = _merge(out[0]), _merge(out[1])
    add_shot_noise(ref_ph)
    add_shot_noise(tgt_ph)
    if any(agreement_z((ref_ph, tgt_ph), big, c, crowding if CROWDED_CHECK else None)
           > AGREEMENT_GATE_Z
           for c in range(ref_ph.n_channels)):
        return big[0], big[1], False
    return ref_ph, tgt_ph, True
