"""Small-aperture photometry with a per-frame aperture correction from a fitted profile.

A small aperture (about 1.5 FWHM) has a fraction of the sky noise of the
default 3-FWHM one, but it misses the PSF's wings and its background ring
contains some of them, by an amount that depends on the seeing. Here each
frame's PSF is fitted as an elliptical Moffat profile ``(1 + r^2/alpha^2)^-beta``
(1 / beta free down to 0, a Gaussian, and below: tails lighter than a
Gaussian's, so that its noise is two-sided; :class:`Profile`) to the pixels of its
brightest isolated stars (each star with its own flux and background), and the
fraction of a star's light that the small-aperture measurement returns,
``E(r) - A_ap / A_ring * (E(r2) - E(r1))`` with ``E`` the Moffat growth curve,
divides every flux of that frame. The scale of the corrected fluxes is then
``scale_small * f_target / f_reference``: the wing light comes from the
profile model, whose parameters the bright cores determine, instead of from
the sky-noise-limited wings themselves.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.spatial import cKDTree

from ..nodata import with_nan_no_data
from .empirical import CROWDING_SENSITIVITY  # the scale fit's crowding term, as there
from .photometry import Photometry, pair_photometry
from .psf_match import window

#: Stars fitted per frame (brightest isolated first), and fewest for a fit.
PROFILE_STARS = 60
MIN_PROFILE_STARS = 5
#: Radius of the fitted stamp, in FWHM.
FIT_RADIUS_FWHM = 3.0
#: A neighbour brighter than this fraction of the star within the stamp (plus
#: ISOLATION_MARGIN_FWHM) rejects the star; fainter ones are masked.
NEIGHBOUR_FRACTION = 0.02
ISOLATION_MARGIN_FWHM = 1.0
NEIGHBOUR_MASK_FWHM = 1.5
SELF_PX = 1.5  # a detected star this close to a fitted one is that star
#: Bounds of the tail parameter u (1 / beta of a Moffat profile; 0 = Gaussian,
#: negative = lighter tails than a Gaussian, so that the noise of u around a
#: Gaussian is not one-sided); the fit's parameters are log(FWHM) and u.
TAIL_RANGE = (-0.3, 0.8)
TINY_TAIL = 1e-6  # |u| below this: the Gaussian formulas
#: Largest ellipticity component (axis ratio about 2).
MAX_ELLIPTICITY = 0.6
#: Position angles of the numerical growth-curve integral of an elliptical profile.
N_ANGLES = 90
#: Corrected small-aperture ratios further than this from the large-aperture
#: ones (in standard errors) are not used (:func:`agreement_z`).
AGREEMENT_GATE_Z = 3.0
CLIP_SIGMA = 5.0
MEDIAN_CHI2_1 = 0.4549364  # median of a chi-square with one degree of freedom


def _shape_matrix(e1: float, e2: float) -> np.ndarray:
    """Unit-determinant quadratic form ``[[1 + e1, e2], [e2, 1 - e1]] / sqrt(det)``."""
    m = np.array([[1.0 + e1, e2], [e2, 1.0 - e1]])
    return m / np.sqrt(max(np.linalg.det(m), 1e-12))


def _power(x, u, exponent_times_u):
    """``max(1 + u x, 0) ** (exponent_times_u / u)``, ``exp(exponent_times_u x)``
    in the limit ``u -> 0``."""
    x = np.asarray(x, float)
    if abs(u) < TINY_TAIL:
        return np.exp(exponent_times_u * x)
    base = 1.0 + u * x
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.exp(exponent_times_u / u * np.log(np.where(base > 0, base, 1.0)))
    return np.where(base > 0, out, 0.0)


def _scale_of(fwhm: float, u: float) -> float:
    """The profile's scale ``s`` for a FWHM: ``FWHM = 2 s sqrt((2^u - 1) / u)``."""
    k = np.log(2.0) if abs(u) < TINY_TAIL else (2.0**u - 1.0) / u
    return fwhm / (2.0 * np.sqrt(k))


@dataclass
class Profile:
    """A frame's fitted profile ``(1 - u) / (pi s^2) (1 + u q / s^2)^(-1/u)``.

    ``u = 1 / beta`` of a Moffat profile with ``alpha^2 = s^2 / u``; ``u = 0`` is
    the Gaussian ``exp(-q / s^2)``; ``u < 0`` a profile with lighter tails that
    ends at ``q = s^2 / |u|``.

    Attributes
    ----------
    fwhm : float
        FWHM (px, geometric mean of the axes).
    u : float
        Tail parameter.
    n_stars : int
        Stars in the fit.
    e1, e2 : float
        Ellipticity: ``q = (1 + e1) dx^2 + (1 - e1) dy^2 + 2 e2 dx dy`` over
        the square root of its determinant.
    """

    fwhm: float
    u: float
    n_stars: int
    e1: float = 0.0
    e2: float = 0.0

    @classmethod
    def moffat(cls, alpha: float, beta: float, **kw) -> Profile:
        """The profile of a Moffat ``(1 + r^2 / alpha^2)^-beta``."""
        u = 1.0 / beta
        return cls(float(2.0 * alpha * np.sqrt(2.0**u - 1.0)), u, kw.pop("n_stars", 0), **kw)

    @property
    def scale(self) -> float:
        return _scale_of(self.fwhm, self.u)

    def enclosed(self, r) -> np.ndarray:
        """Fraction of the light within radius ``r`` (px): along each direction
        ``phi`` the radial integral is closed-form, ``(1 - (1 + u r^2 g / s^2)^(1 - 1/u))
        / g`` with ``g = q(cos phi, sin phi)``; averaged over angles."""
        r2 = np.asarray(r, float)[..., None] ** 2 / self.scale**2
        phi = (np.arange(N_ANGLES) + 0.5) * (np.pi / N_ANGLES)  # q is even in phi
        c, s = np.cos(phi), np.sin(phi)
        m = _shape_matrix(self.e1, self.e2)
        g = m[0, 0] * c * c + m[1, 1] * s * s + 2 * m[0, 1] * c * s
        return np.mean((1.0 - _power(r2 * g, self.u, self.u - 1.0)) / g, axis=-1)

    def measured_fraction(self, radius, gap, width) -> np.ndarray:
        """Fraction of a star's light that aperture photometry returns: the
        light within ``radius`` minus the aperture's area times the mean wing
        level in the background ring ``[radius + gap, radius + gap + width]``."""
        r = np.asarray(radius, float)
        r1, r2 = r + gap, r + gap + np.asarray(width, float)
        ring = (self.enclosed(r2) - self.enclosed(r1)) / (r2**2 - r1**2)
        return self.enclosed(r) - r**2 * ring


def _unit_psf(theta, dxy):
    """The unit-flux profile at every pixel for (log FWHM, u, e1, e2)."""
    u = theta[1]
    s = _scale_of(np.exp(theta[0]), u)
    dx, dy = dxy
    m = _shape_matrix(theta[2], theta[3])
    q = (m[0, 0] * dx * dx + m[1, 1] * dy * dy + 2 * m[0, 1] * dx * dy) / (s * s)
    return (1.0 - u) / (np.pi * s * s) * _power(q, u, -1.0)


def _chi2(theta, dxy, v, w, use):
    """Chi-square of the best per-star flux and background for (log FWHM, u, e1, e2)."""
    m = np.where(use, _unit_psf(theta, dxy), 0.0)
    ww = np.where(use, w, 0.0)
    s_mm, s_m, s_1 = (ww * m * m).sum(1), (ww * m).sum(1), ww.sum(1)
    s_mv, s_v = (ww * m * v).sum(1), (ww * v).sum(1)
    det = s_mm * s_1 - s_m**2
    flux = (s_mv * s_1 - s_m * s_v) / det
    bkg = (s_mm * s_v - s_m * s_mv) / det
    resid = v - flux[:, None] * m - bkg[:, None]
    return float(np.sum(ww * resid * resid)), flux, bkg


def _select(x, y, flux, fwhm, neighbours, n_max):
    """Indices (brightest first) of stars without a bright neighbour near their
    stamp, and the positions of all neighbours for masking."""
    nx, ny, nf = (np.asarray(a, float) for a in neighbours)
    tree = cKDTree(np.c_[nx, ny])
    reach = (FIT_RADIUS_FWHM + ISOLATION_MARGIN_FWHM) * fwhm
    keep = []
    for i in np.argsort(-flux):
        near = np.asarray(tree.query_ball_point((x[i], y[i]), reach), int)
        d = np.hypot(nx[near] - x[i], ny[near] - y[i])
        if np.any((d > SELF_PX) & (nf[near] > NEIGHBOUR_FRACTION * flux[i])):
            continue
        keep.append(i)
        if len(keep) == n_max:
            break
    return np.array(keep, int), tree, (nx, ny)


def _profile_stars(plane, x, y, flux, fwhm, neighbours):
    """The plane (no-data as NaN), positions as floats and the indices of the
    isolated stars a profile is fitted to, with the neighbours' tree and positions;
    None when fewer than ``MIN_PROFILE_STARS`` are usable."""
    plane = with_nan_no_data(plane)
    x, y, flux = (np.asarray(a, float) for a in (x, y, flux))
    ids = np.flatnonzero(np.isfinite(x) & np.isfinite(y) & np.isfinite(flux) & (flux > 0))
    sel, tree, nxy = _select(x[ids], y[ids], flux[ids], fwhm, neighbours, PROFILE_STARS)
    if len(sel) < MIN_PROFILE_STARS:
        return None
    return plane, x, y, ids[sel], tree, nxy


def _stamps(plane, x, y, fwhm, tree, nxy):
    """Offsets ``(dx, dy)``, values and usable pixels (within the fit radius, no
    fainter neighbour within NEIGHBOUR_MASK_FWHM) of each star's stamp, ``(n, p)``."""
    half = int(np.ceil(FIT_RADIUS_FWHM * fwhm))
    offs = np.arange(-half, half + 1)
    cx, cy = np.round(x).astype(int), np.round(y).astype(int)
    vals, inside = window(plane, cx, cy, offs)
    dx = np.broadcast_to(offs[None, None, :] + (cx - x)[:, None, None], vals.shape).reshape(len(x), -1)
    dy = np.broadcast_to(offs[None, :, None] + (cy - y)[:, None, None], vals.shape).reshape(len(x), -1)
    v = vals.astype(float).reshape(len(x), -1)
    use = inside.reshape(len(x), -1) & np.isfinite(v) & (dx * dx + dy * dy <= (half - 0.5) ** 2)
    mask_r = NEIGHBOUR_MASK_FWHM * fwhm
    for k in range(len(x)):
        for j in tree.query_ball_point((x[k], y[k]), half + mask_r):
            if np.hypot(nxy[0][j] - x[k], nxy[1][j] - y[k]) > SELF_PX:
                ddx, ddy = dx[k] + x[k] - nxy[0][j], dy[k] + y[k] - nxy[1][j]
                use[k] &= ddx * ddx + ddy * ddy > mask_r * mask_r
    return (dx, dy), np.where(use, v, 0.0), use


def _sky(dxy, v, use, fwhm):
    """Each stamp's sky level and pixel variance from its outer pixels."""
    outer = use & (dxy[0] ** 2 + dxy[1] ** 2 > (0.7 * FIT_RADIUS_FWHM * fwhm) ** 2)
    edge = np.where(outer, v, np.nan)
    with np.errstate(all="ignore"):
        sky = np.nanmedian(edge, axis=1)
        var = np.nanmedian((edge - sky[:, None]) ** 2, axis=1) / MEDIAN_CHI2_1
    return np.nan_to_num(sky, nan=0.0), np.maximum(np.nan_to_num(var, nan=1.0), 1e-6)


def _weights(sky, sky_var, signal):
    """Inverse pixel variance: sky variance, growing with the star's light as
    photon noise does (variance proportional to the level)."""
    level = np.maximum(np.abs(sky[:, None]), 1.0)
    return 1.0 / (sky_var[:, None] * (1.0 + np.clip(signal, 0, None) / level))


def fit_profile(plane, x, y, flux, fwhm, neighbours) -> Profile | None:
    """Fit an elliptical Moffat profile to the brightest isolated stars of one frame.

    Every star has its own flux and background (solved linearly); the shape
    (FWHM, tail u, e1, e2) is common and found by Nelder-Mead, first with
    weights from the data, then from the fitted model.

    Parameters
    ----------
    plane : ndarray (y, x)
        The frame (no data as NaN or 0).
    x, y, flux : ndarray (n,)
        Candidate stars (valid, unsaturated; NaN flux = not a candidate).
    fwhm : float
        The frame's FWHM estimate (px).
    neighbours : (x, y, flux)
        Every detected star in the frame (positions in this frame).

    Returns
    -------
    Profile or None
        None when fewer than ``MIN_PROFILE_STARS`` isolated stars are usable.
    """
    chosen = _profile_stars(plane, x, y, flux, fwhm, neighbours)
    if chosen is None:
        return None
    plane, x, y, ids, tree, nxy = chosen
    dxy, v, use = _stamps(plane, x[ids], y[ids], fwhm, tree, nxy)
    sky, sky_var = _sky(dxy, v, use, fwhm)
    theta = np.array([np.log(fwhm), 0.25, 0.0, 0.0])
    bounds = [(np.log(fwhm) - 1.0, np.log(fwhm) + 1.0), TAIL_RANGE,
              (-MAX_ELLIPTICITY, MAX_ELLIPTICITY), (-MAX_ELLIPTICITY, MAX_ELLIPTICITY)]
    w = _weights(sky, sky_var, v - sky[:, None])
    for _ in range(2):
        res = minimize(lambda t, w=w: _chi2(t, dxy, v, w, use)[0], theta, method="Nelder-Mead",
                       bounds=bounds, options={"xatol": 1e-5, "fatol": 1e-6, "maxiter": 1500})
        theta = res.x
        _, f, b = _chi2(theta, dxy, v, w, use)
        w = _weights(b, sky_var, f[:, None] * _unit_psf(theta, dxy))
    return Profile(float(np.exp(theta[0])), float(theta[1]), len(ids), float(theta[2]),
                   float(theta[3]))


def _correct(ph: Photometry, profile: Profile | None, c: int, gap, width) -> bool:
    """Divide channel ``c``'s fluxes and errors by the fraction of the light
    that their apertures return (in place); False when there is no profile."""
    if profile is None:
        return False
    frac = profile.measured_fraction(ph.radius, gap, width)
    ph.flux[c] = ph.flux[c] / frac
    ph.flux_err[c] = ph.flux_err[c] / frac
    return True


#: id(reference array) -> (weak reference to it, {key: profile}); ndarrays are not
#: hashable, so a WeakKeyDictionary cannot hold them (it refitted every time).
_REFERENCE_PROFILES: dict[int, tuple[weakref.ref, dict]] = {}


def _profile_cache(ref) -> dict:
    """The profile cache of one reference array (a fresh one for an object that
    cannot be weakly referenced); entries of arrays that are gone are dropped."""
    for key in [k for k, (r, _) in _REFERENCE_PROFILES.items() if r() is None]:
        del _REFERENCE_PROFILES[key]
    entry = _REFERENCE_PROFILES.get(id(ref))
    if entry is not None and entry[0]() is ref:
        return entry[1]
    try:
        wr = weakref.ref(ref)
    except TypeError:
        return {}
    _REFERENCE_PROFILES[id(ref)] = (wr, {})
    return _REFERENCE_PROFILES[id(ref)][1]


def _reference_profile(ref, c, x, y, flux, fwhm, neighbours, fit=None):
    """:func:`fit_profile` (or ``fit``, same signature) of the reference, fitted
    once per reference array, channel and fit function (the first target's
    pairs choose its stars; an array changed in place keeps its first profile)."""
    fit = fit_profile if fit is None else fit
    cache = _profile_cache(ref)
    key = (c, float(fwhm), fit.__name__)
    if key not in cache:
        plane = ref[c] if np.ndim(ref) == 3 else ref
        cache[key] = fit(plane, x, y, flux, fwhm, neighbours)
    return cache[key]


def agreement_z(small: tuple[Photometry, Photometry], large: tuple[Photometry, Photometry],
                c: int, crowding: np.ndarray | None = None) -> float:
    """How far the corrected small-aperture flux ratios are from the large-aperture
    ones, in standard errors.

    Per pair ``q = (S_ref / S_tgt) / (L_ref / L_tgt)``; its inverse-variance mean
    (variance from the four photometric errors, pairs beyond CLIP_SIGMA of the
    median dropped) minus 1, over its standard error. Neighbours' light cancels
    in both ratios; what is left is the profile's error in the two frames'
    corrections, measured as precisely as the large apertures can. ``inf`` with
    fewer than MIN_PROFILE_STARS pairs. ``crowding`` (per pair: the detected
    neighbours' flux whose light crosses the large apertures' edges, relative to the
    star's) adds ``(CROWDING_SENSITIVITY * crowding)^2`` to each pair's relative
    variance, as in the scale fit: a neighbour biases the large apertures.
    """
    ok = small[0].valid[c] & small[1].valid[c] & large[0].valid[c] & large[1].valid[c]
    if ok.sum() < MIN_PROFILE_STARS:
        return float("inf")
    terms = [(ph.flux[c, ok], ph.flux_err[c, ok]) for ph in (*small, *large)]
    q = terms[0][0] / terms[1][0] / (terms[2][0] / terms[3][0])
    rel2 = sum((e / f) ** 2 for f, e in terms)
    if crowding is not None:
        rel2 = rel2 + (CROWDING_SENSITIVITY * np.nan_to_num(np.asarray(crowding, float)[ok])) ** 2
    sig = q * np.sqrt(rel2)
    keep = np.abs(q - np.median(q)) <= CLIP_SIGMA * sig
    if keep.sum() < MIN_PROFILE_STARS:
        return float("inf")
    w = 1.0 / sig[keep] ** 2
    mean = float(np.sum(w * q[keep]) / np.sum(w))
    return abs(mean - 1.0) * float(np.sqrt(np.sum(w)))


def corrected_pair_photometry(ref, tgt, ref_x, ref_y, tgt_x, tgt_y, radius, fwhm, neighbours,
                              *, offset=(0.0, 0.0), gap=2.0, width=10.0, saturation=None,
                              large=None):
    """Small-aperture photometry of star pairs, each frame's fluxes divided by
    the fraction of the light its apertures return (:class:`Profile`).

    With ``large = (radius, width)`` the pairs are also measured in those
    apertures, and when the corrected flux ratios disagree with theirs by more
    than AGREEMENT_GATE_Z standard errors in any channel (:func:`agreement_z`: a
    PSF that the profile does not describe), the large-aperture photometry is
    returned instead.

    Parameters
    ----------
    ref, tgt, ref_x, ref_y, tgt_x, tgt_y, radius, gap, width, saturation :
        As in :func:`napari_nsg.core.stars.photometry.pair_photometry`.
    fwhm : (float, float)
        FWHM estimates of the reference and the target (start of the fits).
    neighbours : (x, y, flux)
        Every detected star of the reference (isolation and masking).
    offset : (dx, dy)
        Target position minus reference position.
    large : (ndarray, ndarray), optional
        Radii and ring widths of the large apertures for the check.

    Returns
    -------
    (Photometry, Photometry, list of (Profile or None, Profile or None))
        The photometry and each channel's fitted profiles (empty when the
        large-aperture photometry was returned). A channel where a profile
        cannot be fitted (too few isolated stars) keeps the uncorrected fluxes
        in both frames.
    """
    ref_ph, tgt_ph = pair_photometry(ref, tgt, ref_x, ref_y, tgt_x, tgt_y, radius, gap=gap,
                                     width=width, saturation=saturation)
    tgt3 = tgt if np.ndim(tgt) == 3 else np.asarray(tgt)[None]
    nx, ny, nf = neighbours
    shifted = (np.asarray(nx) + offset[0], np.asarray(ny) + offset[1], nf)
    profiles = []
    for c in range(ref_ph.n_channels):
        # each frame's own valid stars, so that the reference's profile is the
        # same (the same stars) for every target
        pr = _reference_profile(ref, c, ref_x, ref_y,
                                np.where(ref_ph.valid[c], ref_ph.flux[c], np.nan), fwhm[0],
                                neighbours)
        pt = fit_profile(tgt3[c], tgt_x, tgt_y, np.where(tgt_ph.valid[c], tgt_ph.flux[c], np.nan),
                         fwhm[1], shifted)
        profiles.append((pr, pt))
    for c, (pr, pt) in enumerate(profiles):
        if pr is not None and pt is not None:
            _correct(ref_ph, pr, c, gap, width)
            _correct(tgt_ph, pt, c, gap, width)
    if large is not None:
        big = pair_photometry(ref, tgt, ref_x, ref_y, tgt_x, tgt_y, large[0], gap=gap,
                              width=large[1], saturation=saturation)
        if any(agreement_z((ref_ph, tgt_ph), big, c) > AGREEMENT_GATE_Z
               for c in range(ref_ph.n_channels)):
            return big[0], big[1], []
    return ref_ph, tgt_ph, profiles
