"""NSG scale precision against its photon limit (issue 12, item 1).

* the Cramér-Rao bound of :mod:`napari_nsg.synthetic.scale_bound` is what a PSF
  fit with the true PSF reaches (Monte Carlo over noise draws);
* the engine on "independent-like" sequences (the issue's data: Gaussian PSF
  sigma 1.3-2.1 px per frame, sky 300-1400 ADU, 16-bit, transmissions
  0.64-1.0) over several seeds: where it stands against the bound, and the
  issue's target (1.5x the bound, 0.1 %) as a strict xfail: not reached yet;
* no bias with the seeing ratio or the transmission;
* photometry='psf' (:mod:`napari_nsg.core.stars.psf_photometry`) meets the
  absolute half of the target (0.1 %) on them and halves the default's error, but
  not the 1.5x half; the bound with the PSF learned
  (:func:`~napari_nsg.synthetic.scale_bound.learned_psf_bound`) has its limits;
* PSF-matched photometry (:mod:`napari_nsg.core.stars.psf_match`) removes the
  seeing dependence of small apertures for Gaussian PSFs;
* the psf mode with the reference's tail shared by the targets
  (``psf_photometry.SHARED_TAIL``): a common tail error cancels in the flux
  ratio, and Moffat frames come out closer to the truth.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_nsg.core.nsg import NsgParameters
from napari_nsg.core.nsg.engine import (
    PSF_FALLBACK_WARNING,
    measure_scale,
    prepare_reference,
    ring_width,
)
from napari_nsg.core.nsg.kernel_scale import pair_kernel_scale
from napari_nsg.core.nsg.scale import fit_scale
from napari_nsg.core.stars import psf_match
from napari_nsg.core.stars.aperture_correction import (
    AGREEMENT_GATE_Z,
    Profile,
    agreement_z,
    fit_profile,
)
from napari_nsg.core.stars.empirical import MIN_WING_PAIRS, wing_ratio
from napari_nsg.core.stars.photometry import (
    Photometry,
    aperture_photometry,
    matched_pair_photometry,
    pair_photometry,
)
from napari_nsg.io import read_frame
from napari_nsg.synthetic import simulate_sequence
from napari_nsg.synthetic.psf import PSF
from napari_nsg.synthetic.scale_bound import (
    learned_psf_bound,
    realised_error,
    scale_bound,
    star_flux_variance,
)

FWHM_PER_SIGMA = 2.3548200450309493
MEDIAN_ABS_NORMAL = 0.6745
FIELD = {"gain": 1.0, "read_noise": 3.0, "star_flux_range": (15.0, 1.5e4), "star_density": 2.2e-3,
             "n_bright": 4}
SEEDS = (0, 1, 2)
#: Independent-like seeds of the default (psf) engine's target tests: 48 frames (a 12-frame
#: median moves by about 30 % from set to set; docs/nsg.md "Tenth attempt").
SHIPPED_SEEDS = range(12)
APERTURES = NsgParameters(photometry="aperture")  # the fast option
SATURATED = 6e4


@pytest.fixture(autouse=True)
def _plain_psf(request, monkeypatch):
    """Every test here but the ``shipped_psf`` ones runs the plain psf mode
    (``psf_photometry.PLAIN_SETTINGS``): the tests of one mechanism measure it against
    that mode, one switch at a time, as they were written."""
    if request.node.get_closest_marker("shipped_psf"):
        return
    from napari_nsg.core.stars import psf_photometry

    for name, value in psf_photometry.PLAIN_SETTINGS.items():
        monkeypatch.setattr(psf_photometry, name, value)


def independent_like(seed: int, n: int = 5, psf: str = "gaussian"):
    """The issue's independent sequence, as far as it is described."""
    rng = np.random.default_rng(1000 + seed)
    sigma = rng.uniform(1.3, 2.1, n)
    return simulate_sequence(n, (640, 896), seed=seed, psf=psf, fwhm=sigma * FWHM_PER_SIGMA,
                             sky=rng.uniform(300, 1400, n),
                             transmission=np.r_[1.0, rng.uniform(0.64, 1.0, n - 1)], **FIELD)


def test_bound_is_what_a_psf_fit_reaches():
    """Fluxes from a weighted fit of the true PSF on fresh noise draws scatter as
    the bound says (ratio of the measured to the predicted sigma within 15 %)."""
    seq = simulate_sequence(2, (160, 160), seed=4, psf="gaussian", fwhm=[3.0, 4.5],
                            sky=[500.0, 900.0], transmission=[1.0, 0.8], star_density=1e-3,
                            n_bright=0, gain=1.0, read_noise=3.0, star_flux_range=(200.0, 5e3))
    rng = np.random.default_rng(0)
    bound = scale_bound(seq, 1)
    ids = bound.ids[bound.star_sigma < 0.05]
    assert len(ids) >= 5
    ratios = []
    for k in (0, 1):
        plan = seq._plans[k]
        level = seq.noise_free(k).astype(float)
        var = level / seq.gain + seq.read_noise**2
        back = seq.background(k).astype(float)
        st = seq.stars(k)
        half = int(np.ceil(2.5 * plan.psf.fwhm))
        cx, cy = np.round(st.x[ids]).astype(int), np.round(st.y[ids]).astype(int)
        psf = plan.psf.stamps(st.x[ids] - cx, st.y[ids] - cy, half).astype(float)
        sl = [(slice(y - half, y + half + 1), slice(x - half, x + half + 1)) for x, y in zip(cx, cy)]
        fits = []
        for _ in range(200):
            img = level + rng.standard_normal(level.shape) * np.sqrt(var)
            f = [np.sum(p * (img[s] - back[s]) / var[s]) / np.sum(p * p / var[s])
                 for p, s in zip(psf, sl)]
            fits.append(f)
        fits = np.array(fits)
        _, v = star_flux_variance(seq, k, ids)
        ratios.append(fits.std(axis=0) / np.sqrt(v))
    ratio = np.concatenate(ratios)
    assert 0.85 < np.median(ratio) < 1.15


def test_realised_error_scatters_as_the_bound():
    """The bound's estimator run on each frame pair's own noise (realised_error): over
    40 independent pairs its errors in bound units have a standard deviation of 1 and
    no mean (measured: 0.99 and -0.01 over 80 pairs). On every other star of the bound
    (``ids=``, as the benchmark restricts it to an engine's pairs) they scatter as that
    selection's own bound, ``(sum 1 / sigma_i^2)^-1/2`` over its stars, says (measured
    on these 40: 0.96 and +0.41 for all stars, 1.02 and +0.31 for every other one)."""
    z, z_half = [], []
    for seed in range(40):
        seq = simulate_sequence(2, (200, 200), seed=seed, psf="gaussian", fwhm=[3.5, 4.5],
                                sky=[600.0, 900.0], transmission=[1.0, 0.8], gain=1.0,
                                read_noise=3.0, star_flux_range=(200.0, 3e4), star_density=1.5e-3,
                                n_bright=0, saturation=1e12)
        bound = scale_bound(seq, 1, quantised=True)
        z.append(realised_error(seq, 1, quantised=True) / bound.relative_sigma)
        half = np.sum(1.0 / bound.star_sigma[::2] ** 2) ** -0.5
        z_half.append(realised_error(seq, 1, quantised=True, ids=bound.ids[::2]) / half)
    for zz in (np.array(z), np.array(z_half)):
        assert 0.75 < zz.std(ddof=1) < 1.3, zz.std(ddof=1)
        assert abs(zz.mean()) < 0.6, zz.mean()


def test_bound_within_the_linear_range():
    """``scale_bound(peak_limit=)`` leaves out exactly the stars whose brightest
    noise-free pixel reaches the limit in either frame (NSG's linear range), so its
    bound is larger (seed 2: 4 of 1204 stars, bound 0.047 -> 0.054 %); without a limit
    it is the plain bound."""
    seq = independent_like(2)
    plain = scale_bound(seq, 1, quantised=True)
    limit = 0.7 * float(np.max(np.round(seq.frame(0).data)))
    linear = scale_bound(seq, 1, quantised=True, peak_limit=limit)
    assert np.all(np.isin(linear.ids, plain.ids))
    left_out = np.setdiff1d(plain.ids, linear.ids)
    assert len(left_out) >= 2  # the bright unsaturated stars of the issue-like sequence
    assert linear.relative_sigma > plain.relative_sigma
    peaks = []
    for k in (0, 1):
        image, stars = seq.noise_free(k), seq.stars(k)
        cx, cy = np.round(stars.x[left_out]).astype(int), np.round(stars.y[left_out]).astype(int)
        peaks.append([image[y - 1:y + 2, x - 1:x + 2].max() for x, y in zip(cx, cy, strict=True)])
    assert np.all(np.max(peaks, axis=0) >= limit)
    unlimited = scale_bound(seq, 1, quantised=True, peak_limit=np.inf)
    assert unlimited.relative_sigma == plain.relative_sigma


@pytest.mark.slow
@pytest.mark.shipped_psf
def test_realised_error_tracks_the_psf_engine():
    """On the independent-like sequences the psf mode's errors follow the bound's
    estimator's on the same noise (correlation measured over seeds 0-5: 0.62, and 0.60
    with the twelfth attempt's settings), so that its excess (engine less that estimator)
    scatters less than its error (0.81 of it, measured): the
    benchmark's yardstick with the draw's luck taken out (docs/nsg.md "Eleventh attempt")."""
    err, real = [], []
    for seed in range(6):
        seq = independent_like(seed)
        model = prepare_reference(np.round(seq.frame(0).data), params=NsgParameters(photometry="psf"))
        for k in range(1, seq.n_frames):
            bound = scale_bound(seq, k, quantised=True).relative_sigma
            sr = measure_scale(model, np.round(seq.frame(k).data))
            err.append((float(sr.scale[0]) / float(seq.truth[k].scale[0]) - 1.0) / bound)
            real.append(realised_error(seq, k, quantised=True) / bound)
    err, real = np.array(err), np.array(real)
    assert np.corrcoef(err, real)[0, 1] > 0.35
    assert (err - real).std() < 0.9 * err.std()


def _bound_pair(psf, sky, flux_range, fwhm=(3.5, 4.5)):
    return simulate_sequence(2, (300, 300), seed=1, psf=psf, fwhm=list(fwhm), sky=[sky, sky],
                             transmission=[1.0, 0.8], gain=1.0, read_noise=3.0,
                             star_flux_range=flux_range, star_density=1e-3, n_bright=0,
                             saturation=1e12)


def test_learned_psf_bound_limits():
    """The bound with each frame's PSF parameters learned from its stars: sqrt(2)
    times the known-PSF bound for sky-limited Gaussian stars (the width is known
    as well as the frame's scale, and its error is common to every star), the
    known-PSF bound where the stars' own photon noise dominates (their flux is
    the sum of their pixels), and more than sqrt(2) for a Moffat profile whose
    beta is learned too."""
    ratio = {}
    for name, psf, sky, flux in (("sky", "gaussian", 1e5, (200.0, 3e3)),
                                 ("star", "gaussian", 10.0, (1e5, 1e6)),
                                 ("moffat", "moffat", 1e5, (200.0, 3e3))):
        seq = _bound_pair(psf, sky, flux)
        ratio[name] = learned_psf_bound(seq, 1) / scale_bound(seq, 1).relative_sigma
    assert abs(ratio["sky"] - np.sqrt(2)) < 0.02, ratio
    assert abs(ratio["star"] - 1.0) < 0.01, ratio
    assert ratio["moffat"] > 1.6, ratio


def _engine_errors(seeds, params=None):
    """Per target frame: relative scale error, bound, FWHM ratio target/reference, T."""
    rows = []
    for seed in seeds:
        seq = independent_like(seed)
        model = prepare_reference(np.round(seq.frame(0).data), params=params)
        for k in range(1, seq.n_frames):
            sr = measure_scale(model, np.round(seq.frame(k).data))
            truth = float(seq.truth[k].scale[0])
            rows.append((float(sr.scale[0]) / truth - 1.0,
                         scale_bound(seq, k, quantised=True).relative_sigma,
                         seq.truth[k].fwhm / seq.truth[0].fwhm,
                         float(seq.truth[k].transmission[0])))
    return np.array(rows)


@pytest.fixture(scope="module")
def engine_rows():
    """The default engine (photometry='psf') on the 48 frames of ``SHIPPED_SEEDS``."""
    return _engine_errors(SHIPPED_SEEDS)


@pytest.fixture(scope="module")
def aperture_rows():
    """The large apertures (photometry='aperture') on the same 48 frames."""
    return _engine_errors(SHIPPED_SEEDS, APERTURES)


def test_the_default_engine_is_the_psf_mode():
    assert NsgParameters().photometry == "psf"


@pytest.mark.slow
def test_apertures_within_reach_of_the_bound(aperture_rows):
    """Where the fast option, the large apertures, stands (measured over 48 frames:
    median error 0.139 %, 3.4x the bound): a guard against getting worse."""
    err, bound = aperture_rows[:, 0], aperture_rows[:, 1]
    assert 4e-4 < np.median(bound) < 9e-4  # the "photon limit near 0.07 %"
    assert np.median(np.abs(err)) < 0.0025
    assert np.median(np.abs(err) / bound) / MEDIAN_ABS_NORMAL < 4.0
    assert np.max(np.abs(err)) < 0.008


@pytest.mark.slow
def test_independent_like_target(engine_rows):
    """Issue 12 item 1 on 48 frames: the default engine's median |error| within 1.5x
    the median |error| a perfect estimator would have (0.674 x the bound), and 0.1 %
    (measured 1.37 and 0.055 %; over 192 frames, seeds 0-47, 1.47 and 0.059 %:
    benchmarks/bench_scale_bound.py)."""
    err, bound = engine_rows[:, 0], engine_rows[:, 1]
    assert np.median(np.abs(err) / bound) / MEDIAN_ABS_NORMAL <= 1.5
    assert np.median(np.abs(err)) <= 0.001


@pytest.mark.slow
def test_no_bias_with_seeing_or_transmission(engine_rows):
    """The mean signed error of sharper and of broader targets than the reference,
    and of low and high transmission, agree within their noise (3 sigma of the
    difference of means, from the measured scatter)."""
    err, ratio, trans = engine_rows[:, 0], engine_rows[:, 2], engine_rows[:, 3]
    for split in (ratio < 1.0, trans < 0.8):
        a, b = err[split], err[~split]
        assert len(a) >= 3 and len(b) >= 3
        se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        assert abs(a.mean() - b.mean()) < 3.0 * se + 2e-4


def _true_positions(seq, k):
    bound = scale_bound(seq, k, quantised=True)
    ids = bound.ids[bound.star_sigma < 0.2]
    st = seq.stars(0)
    return st.x[ids], st.y[ids], bound


def test_kernel_matches_gaussian_psfs():
    """The fitted kernel between Gaussian PSFs of FWHM 3.2 and 4.8 px has the
    variance of their difference (sigma_b^2 - sigma_s^2) within 0.1 px^2, and its
    sum is the flux ratio within 0.5 %."""
    seq = simulate_sequence(2, (400, 400), seed=3, psf="gaussian", fwhm=[3.2, 4.8],
                            sky=[800.0, 800.0], transmission=[1.0, 0.8], **FIELD)
    sharp, broad = (np.round(seq.frame(k).data) for k in (0, 1))
    x, y, bound = _true_positions(seq, 1)
    order = np.argsort(-seq.stars(0).flux[bound.ids[bound.star_sigma < 0.2], 0])[:80]
    cx, cy = np.round(x[order]).astype(int), np.round(y[order]).astype(int)
    half = 20
    fit = psf_match.fit_kernel(psf_match.gather_stamps(sharp, cx, cy, half),
                               psf_match.gather_stamps(broad, cx, cy, half), 4.8)
    assert fit is not None
    h = fit.kernel.shape[0] // 2
    off = np.arange(-h, h + 1)
    var = float(np.sum(fit.kernel * (off[None] ** 2 + off[:, None] ** 2)) / 2)
    want = (4.8**2 - 3.2**2) / FWHM_PER_SIGMA**2
    assert abs(var - want) < 0.1
    assert abs(fit.kernel_sum / 0.8 - 1) < 0.005


@pytest.mark.slow
def test_matched_photometry_removes_the_seeing_bias_of_small_apertures():
    """Gaussian PSFs of FWHM 3.2 and 4.8 px, apertures of 1.5 FWHM of the
    broader frame: the same aperture in both frames is biased by the light
    outside it and in its ring (measured: -1.05 %), PSF-matched photometry a
    quarter as much (measured: -0.26 %)."""
    seq = simulate_sequence(2, (400, 400), seed=5, psf="gaussian", fwhm=[4.8, 3.2],
                            sky=[800.0, 800.0], transmission=[1.0, 0.8], **FIELD)
    ref, tgt = (np.round(seq.frame(k).data) for k in (0, 1))
    x, y, _ = _true_positions(seq, 1)
    radius = 1.5 * 4.8
    width = ring_width(radius, 2, 5)
    truth = float(seq.truth[1].scale[0])
    errors = {}
    for name, (pr, pt) in {
        "plain": pair_photometry(ref, tgt, x, y, x, y, radius, gap=2, width=width),
        "matched": matched_pair_photometry(ref, tgt, x, y, x, y, radius, (4.8, 3.2), gap=2,
                                           width=width),
    }.items():
        ok = pr.valid[0] & pt.valid[0]
        cs = fit_scale(np.where(ok, pr.flux[0], np.nan), np.where(ok, pt.flux[0], np.nan),
                       pr.flux_err[0], pt.flux_err[0])
        errors[name] = cs.scale / truth - 1
    assert abs(errors["plain"]) > 0.008
    assert abs(errors["matched"]) < 0.4 * abs(errors["plain"])


def test_measured_fraction_is_what_aperture_photometry_returns():
    """A noise-free Moffat star (beta 3, FWHM 4 px) on a flat sky: the flux that
    aperture photometry returns, over the true flux, is the profile's
    ``measured_fraction`` (light inside minus the wing light in the ring) within
    0.1 %, at 1.5 and 3 FWHM."""
    psf = PSF(4.0, "moffat", 3.0)
    half = 60
    img = np.full((2 * half + 1, 2 * half + 1), 500.0)
    img += 1e5 * psf.stamps(np.array([0.3]), np.array([-0.2]), half)[0]
    x, y = np.array([half + 0.3]), np.array([half - 0.2])
    profile = Profile.moffat(psf.alpha, 3.0)
    for radius in (6.0, 12.0):
        width = ring_width(radius, 2, 5)
        ph = aperture_photometry(img, x, y, radius, gap=2, width=width)
        want = profile.measured_fraction(radius, 2, width)
        assert want < 0.99
        assert abs(ph.flux[0, 0] / 1e5 / want - 1) < 1e-3


def test_profile_fit_recovers_moffat_wings():
    """On a simulated Moffat (beta 4) frame the fitted profile's FWHM is within
    2 % and its wing fraction outside 1.5 FWHM within 10 % of the truth."""
    seq = simulate_sequence(1, (400, 400), seed=7, psf="moffat", fwhm=[3.5], sky=[800.0],
                            **FIELD)
    img = np.round(seq.frame(0).data)
    st = seq.stars(0)
    flux = st.flux[:, 0]
    bright = np.argsort(-flux)[:200]
    peak = img[np.round(st.y[bright]).astype(int).clip(0, 399), np.round(st.x[bright]).astype(int).clip(0, 399)]
    bright = bright[peak < SATURATED]  # unsaturated, as the engine passes them
    prof = fit_profile(img, st.x[bright], st.y[bright], flux[bright], 3.3,
                       (st.x, st.y, flux))
    assert prof is not None and prof.n_stars >= 20
    truth = Profile.moffat(PSF(3.5, "moffat", 4.0).alpha, 4.0)
    assert abs(prof.fwhm / 3.5 - 1) < 0.02
    r = 1.5 * 3.5
    assert abs((1 - prof.enclosed(r)) / (1 - truth.enclosed(r)) - 1) < 0.1


@pytest.mark.slow
def test_corrected_photometry_beats_the_apertures_on_independent_like():
    """photometry='corrected' (small apertures + per-frame aperture correction)
    on the same sequences: a smaller median error than the large apertures and within
    2.5x the bound (measured over 3 seeds: 0.07-0.08 %, ratio about 1.7-2)."""
    rows = []
    params = NsgParameters(photometry="corrected")
    for seed in SEEDS:
        seq = independent_like(seed)
        model = prepare_reference(np.round(seq.frame(0).data), params=params)
        for k in range(1, seq.n_frames):
            sr = measure_scale(model, np.round(seq.frame(k).data))
            rows.append((float(sr.scale[0]) / float(seq.truth[k].scale[0]) - 1.0,
                         scale_bound(seq, k, quantised=True).relative_sigma))
    err, bound = np.array(rows).T
    assert np.median(np.abs(err)) < np.median(np.abs(_engine_errors(SEEDS, APERTURES)[:, 0]))
    assert np.median(np.abs(err) / bound) / MEDIAN_ABS_NORMAL < 2.5


def _isolated_stars(kind, fwhm, flux, seed=0, grid=6, spacing=44, sky=500.0):
    """Noise-free isolated stars of one PSF at random sub-pixel positions on a flat sky."""
    rng = np.random.default_rng(seed)
    img = np.full((grid * spacing, grid * spacing), sky)
    psf, half = PSF(fwhm, kind, 4.0), spacing // 2 - 2
    xs, ys = [], []
    for i in range(grid * grid):
        cx, cy = (i % grid) * spacing + spacing // 2, (i // grid) * spacing + spacing // 2
        fx, fy = rng.uniform(-0.5, 0.5, 2)
        img[cy - half: cy + half + 1, cx - half: cx + half + 1] += flux * psf.stamps(
            np.array([fx]), np.array([fy]), half)[0]
        xs.append(cx + fx)
        ys.append(cy + fy)
    return img, np.array(xs), np.array(ys)


@pytest.mark.parametrize("kind,fwhm,tail", [("gaussian", 3.06, None), ("moffat", 4.8, None),
                                            ("moffat", 3.0, 0.25)])
def test_least_squares_shape_fit_finds_the_simplex_minimum(monkeypatch, kind, fwhm, tail):
    """The profile's shape fitted as least squares (``SHAPE_LEAST_SQUARES``, the default)
    and by Nelder-Mead's simplex: the same shape (FWHM within 2e-5, tail and
    ellipticities within 5e-5; measured 1-3e-6 and up to 5e-6) from a start 10 % off, on
    noisy isolated stars, in under half the chi-square evaluations (measured on a
    6000 x 4000 target: 49 against 252)."""
    from napari_nsg.core.stars import psf_photometry as pp

    img, x, y = _isolated_stars(kind, fwhm, 4e4)
    img = np.random.default_rng(7).poisson(img).astype(float)
    flux = np.full(len(x), 4e4)
    calls = [0]
    chi2 = pp._chi2_fixed_sky

    def counted(*args, **kwargs):
        calls[0] += 1
        return chi2(*args, **kwargs)

    monkeypatch.setattr(pp, "_chi2_fixed_sky", counted)
    fits_, counts = [], []
    for least_squares in (True, False):
        monkeypatch.setattr(pp, "SHAPE_LEAST_SQUARES", least_squares)
        calls[0] = 0
        fits_.append(pp.fit_profile_ring_sky(img, x, y, flux, 1.1 * fwhm, (x, y, flux), tail=tail))
        counts.append(calls[0])
    lsq, simplex = fits_
    assert lsq.fwhm == pytest.approx(simplex.fwhm, rel=2e-5)
    for name in ("u", "e1", "e2"):
        assert getattr(lsq, name) == pytest.approx(getattr(simplex, name), abs=5e-5)
    assert counts[0] < 0.5 * counts[1]


@pytest.mark.slow
@pytest.mark.parametrize("kind,fwhm", [("gaussian", 3.06), ("moffat", 3.0), ("moffat", 4.8)])
def test_psf_weighted_flux_is_the_whole_light(kind, fwhm):
    """Isolated noise-free stars (a pixel-integrated Gaussian of sigma 1.3 px, the
    sharpest of the issue's sequence, and Moffat beta 4): the profile fitted with
    the ring background and the PSF-weighted fluxes return every star's whole
    light within 0.05 % (measured: 0.000-0.011 %), although the weights cover
    only 2 FWHM; started from a FWHM 10 % off."""
    from napari_nsg.core.stars.psf_photometry import fit_profile_ring_sky, weighted_photometry

    img, x, y = _isolated_stars(kind, fwhm, 1e5)
    flux = np.full(len(x), 1e5)
    prof = fit_profile_ring_sky(img, x, y, flux, 1.1 * fwhm, (x, y, flux))
    assert prof is not None and prof.n_stars >= 30
    ph = weighted_photometry(img, x, y, prof, 1.1 * fwhm)
    assert ph.valid.all()
    assert np.max(np.abs(ph.flux[0] / 1e5 - 1)) < 5e-4


@pytest.mark.parametrize("kind,fwhm", [("gaussian", 3.06), ("moffat", 4.8)])
def test_free_shape_flux_ignores_a_profile_width_error(kind, fwhm):
    """With the width and tail derivatives as free terms of every star's fit
    (``free_shape``), a profile 3 % too wide moves the PSF-weighted fluxes of
    isolated noise-free stars by second order only: measured +0.004 % (Gaussian)
    and +0.07 % (Moffat) against +3.2-3.4 % with the plain weights."""
    from dataclasses import replace

    from napari_nsg.core.stars.psf_photometry import fit_profile_ring_sky, weighted_photometry

    img, x, y = _isolated_stars(kind, fwhm, 1e5)
    flux = np.full(len(x), 1e5)
    prof = fit_profile_ring_sky(img, x, y, flux, fwhm, (x, y, flux))
    wide = replace(prof, fwhm=1.03 * prof.fwhm)
    plain = weighted_photometry(img, x, y, wide, fwhm)
    free = weighted_photometry(img, x, y, wide, fwhm, free_shape=True)
    assert free.valid.all()
    assert np.median(plain.flux[0]) / 1e5 - 1 > 0.02  # the error the terms remove
    assert np.max(np.abs(free.flux[0] / 1e5 - 1)) < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("kind,u_true", [("gaussian", 0.0), ("moffat", 0.25)])
def test_shared_tail_error_cancels_in_the_flux_ratio(kind, u_true):
    """A tail ``u`` 0.02 off imposed on both frames of a pair (FWHM 3.0 and 4.8
    px, the 1.6x seeing range; noise-free isolated stars, width and ellipticity
    refitted per frame) moves each frame's PSF-weighted fluxes by about +0.5 %
    (Gaussian) and +1.0 % (Moffat beta 4), but their ratio by less than 0.03 %:
    the family is scale-free, so the shared error cancels (measured in
    docs/nsg.md "Fifth attempt")."""
    from napari_nsg.core.stars.psf_photometry import fit_profile_ring_sky, weighted_photometry

    norms = []
    for fwhm in (3.0, 4.8):
        img, x, y = _isolated_stars(kind, fwhm, 1e5, grid=5, spacing=60)
        flux = np.full(len(x), 1e5)
        prof = fit_profile_ring_sky(img, x, y, flux, fwhm, (x, y, flux), tail=u_true + 0.02)
        assert prof.u == pytest.approx(u_true + 0.02)
        ph = weighted_photometry(img, x, y, prof, fwhm)
        assert ph.valid.all()
        norms.append(np.median(ph.flux[0]) / 1e5)
    assert min(norms) - 1 > 0.003  # each frame alone carries the tail's error
    assert abs(norms[1] / norms[0] - 1) < 3e-4


def _blend(img, x, y, ids, fwhm, flux, sep, rng, half=12):
    """Add to ``img`` an undetected companion of ``flux`` at ``sep`` px from each star ``ids``."""
    psf = PSF(fwhm, "moffat", 4.0)
    for i in ids:
        ang = rng.uniform(0, 2 * np.pi)
        bx, by = x[i] + sep * np.cos(ang), y[i] + sep * np.sin(ang)
        cx, cy = round(bx), round(by)
        img[cy - half: cy + half + 1, cx - half: cx + half + 1] += flux * psf.stamps(
            np.array([bx - cx]), np.array([by - cy]), half)[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_psf_profile_drops_unresolved_blends(seed, monkeypatch):
    """The bias of photometry='psf' on field frames (issue 12): a profile star with
    an unresolved companion (30 % of its flux at 2.5 px, FWHM 3 px, so not in the
    detected-star list and no isolation rule can reject it) widens the fitted
    profile. 8 of 36 Moffat stars blended: without the chi-square cull the
    PSF-weighted fluxes of the clean stars come out +4.4-4.5 % high; with it the
    8 are dropped and the error is within the noise (measured -0.04-+0.10 %).
    The shape cull (each star's own width and tail, ``_odd_shape``; off by
    default) drops the same 8 on its own; with a floor (``SHAPE_CULL_FLOOR``) of 32
    it drops only 4 of them, the most deviant."""
    from napari_nsg.core.stars import psf_photometry

    fwhm = 3.0
    img, x, y = _isolated_stars("moffat", fwhm, 1e5, seed=seed)
    rng = np.random.default_rng(seed + 10)
    blended = rng.choice(len(x), 8, replace=False)
    _blend(img, x, y, blended, fwhm, 3e4, 2.5, rng)
    noisy = img + rng.normal(size=img.shape) * np.sqrt(img)
    clean = np.setdiff1d(np.arange(len(x)), blended)
    flux = np.full(len(x), 1e5)

    def normalisation():
        prof = psf_photometry.fit_profile_ring_sky(noisy, x, y, flux, 1.1 * fwhm, (x, y, flux))
        ph = psf_photometry.weighted_photometry(img, x[clean], y[clean], prof, 1.1 * fwhm)
        return prof.n_stars, float(np.median(ph.flux[0]) / 1e5 - 1)

    n, err = normalisation()
    assert n == len(clean)
    assert abs(err) < 2.5e-3
    monkeypatch.setattr(psf_photometry, "CULL_ROUNDS", 0)
    monkeypatch.setattr(psf_photometry, "SHAPE_CULL_ROUNDS", 2)
    n, err = normalisation()  # the shape cull alone (_odd_shape, off by default) finds them
    assert n == len(clean)
    assert abs(err) < 2.5e-3
    monkeypatch.setattr(psf_photometry, "SHAPE_CULL_FLOOR", len(clean) + 4)
    n, err_half = normalisation()  # the floor: only the 4 most deviant of the 8 go
    assert n == len(clean) + 4
    monkeypatch.setattr(psf_photometry, "SHAPE_CULL_ROUNDS", 0)
    n, err = normalisation()
    assert n == len(x) and err > 0.02  # the mechanism: blends bias the profile wide
    assert 2.5e-3 < err_half < 0.8 * err


def test_shape_cull_floor_drops_the_most_deviant_first():
    """``_at_floor``: when more stars are odd than the floor leaves room for,
    the highest scores go; none when the stars are already at the floor."""
    from napari_nsg.core.stars.psf_photometry import _at_floor

    score = np.array([0.0, 3.0, 1.5, 0.0, 9.0, 2.0, 0.0, 0.0])
    keep = np.ones(8, bool)
    keep[6] = False
    assert np.flatnonzero(_at_floor(score, keep, 2)).tolist() == [1, 2, 4, 5]
    assert np.flatnonzero(_at_floor(score, keep, 5)).tolist() == [1, 4]
    assert not _at_floor(score, keep, 7).any()


@pytest.mark.slow
@pytest.mark.shipped_psf
def test_psf_photometry_halves_the_error_on_independent_like(engine_rows, aperture_rows):
    """photometry='psf' as shipped (the plain mode plus the eight settings the tenth and
    twelfth attempts made its defaults) on 48 independent-like frames (seeds 0-11):
    median |error| under 0.08 % (measured 0.055 %), under 1.5x the known-PSF bound
    (measured 1.34; on seeds 12-23 it is 1.69, so the issue's 1.5x is not met on every
    set of frames), and less than half the default apertures' (measured: ratio 3.39,
    median 0.139 %, rms 0.237 % against 0.105 %), no frame beyond 0.4 % (0.30 %)."""
    err, bound = engine_rows[:, 0], engine_rows[:, 1]
    base = aperture_rows[:, 0]
    ratio = np.median(np.abs(err) / bound) / MEDIAN_ABS_NORMAL
    assert np.median(np.abs(err)) <= 0.0008
    assert ratio < 1.5
    assert np.median(np.abs(base) / bound) / MEDIAN_ABS_NORMAL > 2.0 * ratio
    assert np.sqrt(np.mean(err ** 2)) < 0.6 * np.sqrt(np.mean(base ** 2))
    assert np.max(np.abs(err)) < 0.004


@pytest.mark.slow
def test_shared_tail_on_moffat_sequences(monkeypatch):
    """The psf mode with the reference's tail imposed on the targets
    (``psf_photometry.SHARED_TAIL``) on 24 independent-like frames with Moffat
    beta 4 PSFs (a 1.6x FWHM range, seeds 0-5): rms error under 0.15 % and below
    the plain psf mode's (measured 0.118 % against 0.176 %, p90 0.19 % against
    0.29 %), at most one frame of each falling back to the apertures (none did until
    the reference's profile came from its own stars instead of the first target's
    pairs; since then one with the tail shared, seed 5 frame 1)."""
    from napari_nsg.core.stars import psf_photometry

    params = NsgParameters(photometry="psf")
    errors = {False: [], True: []}
    fell_back = {False: 0, True: 0}
    for seed in range(6):
        seq = independent_like(seed, psf="moffat")
        model = prepare_reference(np.round(seq.frame(0).data), params=params)
        for k in range(1, seq.n_frames):
            data = np.round(seq.frame(k).data)
            for shared, errs in errors.items():
                monkeypatch.setattr(psf_photometry, "SHARED_TAIL", shared)
                sr = measure_scale(model, data)
                fell_back[shared] += PSF_FALLBACK_WARNING in sr.warnings
                errs.append(float(sr.scale[0]) / float(seq.truth[k].scale[0]) - 1.0)
    rms = {shared: float(np.sqrt(np.mean(np.square(e)))) for shared, e in errors.items()}
    assert max(fell_back.values()) <= 1, fell_back
    assert rms[True] < 0.0015
    assert rms[True] < 0.8 * rms[False]


def _photometry(flux, err):
    n = len(flux)
    return Photometry(flux[None], err[None], np.zeros((1, n)), np.ones((1, n)), flux[None],
                      np.ones((1, n), bool), np.full(n, 5.0), np.full(n, "", dtype=object))


def test_agreement_gate_refuses_a_wrong_correction():
    """Corrected small-aperture ratios 1 % off the large-aperture ones over 100
    pairs with 1 % errors (2 % per ratio of ratios) are ~5 standard errors away
    (refused); the same
    pairs without the offset are within the gate."""
    rng = np.random.default_rng(2)
    flux = rng.uniform(1e3, 1e5, 100)
    err = 0.01 * flux
    large = tuple(_photometry(flux * t * (1 + 0.01 * rng.standard_normal(100)), err)
                  for t in (1.0, 0.8))
    for offset, refused in ((1.0, False), (1.01, True)):
        small = (_photometry(flux * offset, err), _photometry(flux * 0.8, err))
        z = agreement_z(small, large, 0)
        assert (z > AGREEMENT_GATE_Z) == refused, z


def test_agreement_gate_weighs_crowded_large_apertures_down():
    """30 of 100 pairs have a neighbour (crowding 0.3, the scale fit's measure) that
    biases their large apertures by 0.6 %, with 0.1 % photometric errors (each biased
    pair 3 of its errors off: not clipped): the check finds the agreeing small apertures
    far off; with the pairs' crowding it weighs them as the scale fit does and they
    agree (psf_photometry.CROWDED_CHECK)."""
    rng = np.random.default_rng(3)
    flux = rng.uniform(1e4, 1e5, 100)
    err = 0.001 * flux
    crowd = np.where(np.arange(100) < 30, 0.3, 0.0)
    bias = 1.0 + 0.006 * (crowd > 0)
    large = (_photometry(flux * bias * (1 + 0.001 * rng.standard_normal(100)), err),
             _photometry(flux * 0.8 * (1 + 0.001 * rng.standard_normal(100)), err))
    small = (_photometry(flux, err), _photometry(flux * 0.8, err))
    assert agreement_z(small, large, 0) > AGREEMENT_GATE_Z
    assert agreement_z(small, large, 0, crowding=crowd) < AGREEMENT_GATE_Z


def test_wing_ratio_is_the_mean_large_over_small_ratio_of_ratios():
    """Pairs whose large/small flux is 1.05 in the reference and 1.02 in the
    target (wings of different seeing), 0.3 % noise per flux and the large
    apertures' extra noise 0.3 % (the annulus): ``Q`` is 1.05 / 1.02 within 3
    standard errors, a pair 10 % off is clipped, and fewer than MIN_WING_PAIRS
    pairs give no ratio."""
    rng = np.random.default_rng(5)
    n = 200
    flux = rng.uniform(1e3, 1e5, n)

    def pair(f, wing):
        s = f * (1 + 0.003 * rng.standard_normal(n))
        big = s * wing + f * 0.003 * rng.standard_normal(n)
        return _photometry(s, 0.003 * f), _photometry(big, 0.0042 * f * wing)

    (sr, lr), (st, lt) = pair(flux, 1.05), pair(0.7 * flux, 1.02)
    lt.flux[0, 0] *= 1.1
    small, large = (sr, st), (lr, lt)
    wr = wing_ratio(small, large, 0)
    assert wr is not None and n - 4 <= wr.n_pairs < n
    assert abs(wr.ratio - 1.05 / 1.02) < 3 * wr.error
    assert wr.error < 5e-4
    assert abs(wr.ref_factor - 1.05) < 1e-3
    few = tuple(Photometry(p.flux, p.flux_err, p.background, p.background_sigma, p.peak,
                           p.valid & (np.arange(n) < MIN_WING_PAIRS - 1), p.radius, p.reason)
                for p in small)
    assert wing_ratio(few, large, 0) is None


def _moffat_pair(seed: int):
    """Moffat beta 4 PSFs of FWHM 3.0 and 4.8 px (1.6x seeing), known scale."""
    return simulate_sequence(2, (480, 480), seed=seed, psf="moffat", fwhm=[3.0, 4.8],
                             sky=[600.0, 900.0], transmission=[1.0, 0.8], **FIELD)


@pytest.mark.slow
def test_empirical_photometry_recovers_the_wings_small_apertures_miss():
    """Apertures of 1.5 FWHM on Moffat frames whose seeing differs by 1.6x miss a
    different part of the wings in each frame (measured on seeds 0-4: scale
    3.6-5.3 % off); photometry='empirical' (the same small apertures times the
    pairs' mean large/small ratio of ratios, no PSF model; measured: -0.21 to
    +0.12 %) is within 0.3 % on each of 3 seeds."""
    for seed in SEEDS:
        seq = _moffat_pair(seed)
        ref, tgt = (np.round(seq.frame(k).data) for k in (0, 1))
        truth = float(seq.truth[1].scale[0])
        errs = {}
        for name, params in {"small": NsgParameters(aperture_fwhm=1.5, aperture_growth=0.0),
                             "empirical": NsgParameters(photometry="empirical")}.items():
            sr = measure_scale(prepare_reference(ref, params=params), tgt)
            errs[name] = float(sr.scale[0]) / truth - 1
        assert abs(errs["small"]) > 0.01, errs
        assert abs(errs["empirical"]) < 0.003, errs


@pytest.mark.slow
def test_pixel_kernel_scale_on_gaussian_psfs():
    """The free pixel kernel fitted between Gaussian PSFs of FWHM 3.2 and 4.8 px
    sums to the flux ratio within 0.2 % (160 faint stars, 300-3000 ADU, on 800
    ADU of sky; measured: -0.04 and +0.03 % on seeds 1 and 2)."""
    for seed in (1, 2):
        seq = simulate_sequence(2, (400, 400), seed=seed, psf="gaussian", fwhm=[3.2, 4.8],
                                sky=[800.0, 800.0], transmission=[1.0, 0.8], gain=1.0,
                                read_noise=3.0, star_flux_range=(300.0, 3000.0),
                                star_density=1e-3, n_bright=0)
        ref, tgt = (np.round(seq.frame(k).data) for k in (0, 1))
        st = seq.stars(0)
        order = np.argsort(-st.flux[:, 0])
        scale = pair_kernel_scale(ref, tgt, st.x[order], st.y[order], (3.2, 4.8))
        assert abs(scale / float(seq.truth[1].scale[0]) - 1) < 0.002


def wasp_targets(folder):
    """The WASP-12b reference frame and, per target, ``(name, frame registered by whole
    pixels with an independent offset, photutils scale)``, as in tests/test_nsg_real.py
    (also used by benchmarks/bench_scale_real.py)."""
    import test_nsg_real as real

    frames = {n: read_frame(folder / f"{n}.fits") for n in real.NAMES}
    ref = frames[real.NAMES[0]]
    stars = real.bright_stars(ref.data)
    targets = []
    for name in real.NAMES[1:]:
        img = frames[name].data
        reg = real.into_register(img, real.independent_offset(ref.data, img))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ind = float(np.median(real.photutils_flux(ref.data, stars)
                                  / real.photutils_flux(reg, stars)))
        targets.append((name, reg, ind))
    return ref, targets


def _wasp_models(real_data, mode):
    """:func:`wasp_targets` and the reference prepared for ``mode`` and for the default
    apertures (skips when the frames are missing)."""
    folder = real_data / "wasp12b_calibrated"
    if not folder.is_dir():
        pytest.skip(f"{folder} is missing")
    ref, targets = wasp_targets(folder)
    return targets, [prepare_reference(ref.data, ref.meta, params=NsgParameters(photometry=m))
                     for m in (mode, "aperture")]


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.shipped_psf
def test_psf_photometry_on_real_frames_falls_back_and_says_so(real_data):
    """photometry='psf' as shipped on WASP-12b: the fitted profile does not follow these
    PSFs (FWHM 8.5-11 px, elongated: without the agreement check the PSF-weighted scales
    are 1.4-3.9 % from photutils), so every frame gets the large apertures' scale, the
    default's to the digit, and a warning that says so; a simulated frame whose PSF the
    profile follows keeps the PSF weights, without the warning."""

    targets, models = _wasp_models(real_data, "psf")
    for name, reg, _ in targets[:3]:
        psf, default = (measure_scale(m, reg) for m in models)
        assert float(psf.scale[0]) == float(default.scale[0]), name
        assert PSF_FALLBACK_WARNING in psf.warnings and PSF_FALLBACK_WARNING not in default.warnings
    seq = independent_like(0)
    model = prepare_reference(np.round(seq.frame(0).data), params=NsgParameters(photometry="psf"))
    kept = [PSF_FALLBACK_WARNING not in measure_scale(model, np.round(seq.frame(k).data)).warnings
            for k in range(1, seq.n_frames)]
    assert sum(kept) >= 3


@pytest.mark.real
@pytest.mark.slow
def test_empirical_photometry_on_real_frames(real_data):
    """photometry='empirical' on the WASP-12b sequence (registered by whole pixels
    with an independent offset, as in tests/test_nsg_real.py) is within 1 % of
    photutils on every frame, like the default (measured: -0.18 to +0.61 %,
    median |difference| 0.18 %), and within 0.2 % of the default scale."""
    targets, models = _wasp_models(real_data, "empirical")
    for name, reg, ind in targets:
        emp, default = (float(measure_scale(m, reg).scale[0]) for m in models)
        assert abs(emp / ind - 1) < 0.01, (name, emp, ind)
        assert abs(emp / default - 1) < 0.002, (name, emp, default)


@pytest.mark.parametrize("variant", [None, "RESIDUAL_MASK_SPLIT", "RESIDUAL_MASK_ASYMMETRIC"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_residual_mask_finds_faint_companions(seed, variant, monkeypatch):
    """The width's bias on field frames (docs/nsg.md "Sixth attempt"): faint
    undetected companions within 1.5 FWHM of the profile stars widen the profile.
    Half of 36 Moffat stars (FWHM 4 px) get one of 3 % of their flux at 1.2 FWHM,
    too faint for the chi-square cull: the clean stars' PSF-weighted fluxes come
    out +1.1 % high (noise-free; +1.4-1.5 % with photon noise); with the
    companions found in the residuals and masked (``RESIDUAL_MASK_ROUNDS``, off by
    default) every star is kept and the error is +0.007 % (measured; noisy
    -0.09..+0.14 %). With the bumps found on one checkerboard half of each stamp and
    masked on the other (``RESIDUAL_MASK_SPLIT``; docs/nsg.md "Ninth attempt") the
    companions are found alike (noise-free -0.002 %, noisy -0.09..+0.14 %); sought in
    the residual less its ring-symmetric part (``RESIDUAL_MASK_ASYMMETRIC``) too
    (noise-free +0.03..+0.04 %: the ring means take a little of each companion)."""
    from napari_nsg.core.stars import psf_photometry

    if variant is not None:
        monkeypatch.setattr(psf_photometry, variant, True)

    fwhm = 4.0
    img, x, y = _isolated_stars("moffat", fwhm, 1e5, seed=seed)
    rng = np.random.default_rng(seed + 10)
    blended = rng.choice(len(x), len(x) // 2, replace=False)
    _blend(img, x, y, blended, fwhm, 3e3, 1.2 * fwhm, rng)
    clean = np.setdiff1d(np.arange(len(x)), blended)
    flux = np.full(len(x), 1e5)
    noisy = img + rng.normal(size=img.shape) * np.sqrt(img)

    def normalisation(plane, rounds):
        monkeypatch.setattr(psf_photometry, "RESIDUAL_MASK_ROUNDS", rounds)
        prof = psf_photometry.fit_profile_ring_sky(plane, x, y, flux, 1.1 * fwhm, (x, y, flux))
        ph = psf_photometry.weighted_photometry(img, x[clean], y[clean], prof, 1.1 * fwhm)
        return prof.n_stars, float(np.median(ph.flux[0]) / 1e5 - 1)

    assert normalisation(img, 0)[1] > 8e-3  # the mechanism
    n, err = normalisation(img, 2)
    assert n == len(x) and abs(err) < 5e-4
    assert abs(normalisation(noisy, 2)[1]) < 2.5e-3


def _stars_with_ring_neighbours(fwhm, seed, grid=5, spacing=80, sky=500.0, flux=1e5,
                                seps=(13.0, 18.0), pad=0, half=None):
    """Noise-free Gaussian stars on a flat sky, each with one neighbour of 20-60 % of
    its flux at ``seps`` px (default 13-18: in a 4.8 px FWHM frame's background ring,
    2.5-4.5 FWHM), the same sky positions for every ``fwhm``: image, the stars' x and
    y, and every star's and neighbour's x and y (the detected stars). ``pad``: px of
    sky around the grid; ``half``: of each star's rendered stamp (``spacing // 2 - 20``)."""
    rng = np.random.default_rng(seed)
    img = np.full((grid * spacing + 2 * pad, grid * spacing + 2 * pad), sky)
    psf = PSF(fwhm, "gaussian")
    half = spacing // 2 - 20 if half is None else half
    x, y, nx, ny = [], [], [], []
    for i in range(grid * grid):
        cx = pad + (i % grid) * spacing + spacing // 2
        cy = pad + (i // grid) * spacing + spacing // 2
        sep, angle = rng.uniform(*seps), rng.uniform(0, 2 * np.pi)
        for px, py, f in ((cx + rng.uniform(-0.5, 0.5), cy + rng.uniform(-0.5, 0.5), flux),
                          (cx + sep * np.cos(angle), cy + sep * np.sin(angle),
                           flux * rng.uniform(0.2, 0.6))):
            ix, iy = round(px), round(py)
            img[iy - half: iy + half + 1, ix - half: ix + half + 1] += f * psf.stamps(
                np.array([px - ix]), np.array([py - iy]), half)[0]
            (x if f == flux else nx).append(px)
            (y if f == flux else ny).append(py)
    return img, np.array(x), np.array(y), (np.r_[x, nx], np.r_[y, ny])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ring_mask_removes_the_neighbours_light_from_the_background(seed, monkeypatch):
    """The positive term of the psf mode's scale (docs/nsg.md "Seventh attempt"):
    a detected neighbour's light in a star's background ring (2.5-4.5 FWHM) raises
    the ring level, and the PSF-weighted flux loses that level times its effective
    area, which grows as FWHM^2, so the broader frame loses more and the flux ratio
    (the scale) errs positive. Noise-free Gaussian stars with a neighbour of 20-60 %
    at 13-18 px, the true profile, FWHM 3.0 and 4.8 px: the broader frame's fluxes
    come out 1.6-1.7 % low and the ratio 1.4-1.6 % high (median; measured); with the
    ring pixels within 2 FWHM of a detected neighbour left out
    (``RING_NEIGHBOUR_MASK_FWHM``, off by default) every flux is its star's whole
    light within 0.02 % and every ratio within 0.02 % (seeds 0-2)."""
    from napari_nsg.core.stars import psf_photometry
    from napari_nsg.core.stars.aperture_correction import Profile

    def fluxes(mask_fwhm):
        monkeypatch.setattr(psf_photometry, "RING_NEIGHBOUR_MASK_FWHM", mask_fwhm)
        out = []
        for fwhm in (3.0, 4.8):
            img, x, y, detected = _stars_with_ring_neighbours(fwhm, seed)
            sigma = fwhm / FWHM_PER_SIGMA  # the pixel-integrated Gaussian: sigma^2 + 1/12
            prof = Profile(FWHM_PER_SIGMA * float(np.sqrt(sigma ** 2 + 1 / 12)), 0.0, len(x))
            ph = psf_photometry.weighted_photometry(img, x, y, prof, fwhm, neighbours=detected)
            assert ph.valid.all()
            out.append(ph.flux[0] / 1e5)
        return out

    sharp, broad = fluxes(0.0)
    assert np.median(broad) - 1 < -0.01  # the mechanism: the broader frame loses more
    assert np.median(sharp / broad) - 1 > 0.01
    sharp, broad = fluxes(2.0)
    assert np.max(np.abs(np.r_[sharp, broad] - 1)) < 3e-4
    assert np.max(np.abs(sharp / broad - 1)) < 3e-4


def test_ring_mask_keeps_a_crowded_star_with_its_whole_ring(monkeypatch):
    """A star whose ring the neighbour mask would leave with fewer than
    MIN_RING_PIXELS keeps its whole ring (and stays measurable), a star with room
    left gets the masked ring."""
    from napari_nsg.core.stars import psf_photometry
    from napari_nsg.core.stars.psf_photometry import MIN_RING_PIXELS, _masked_ring, _ring_radii

    fwhm = 4.0
    _, r1, r2 = _ring_radii(fwhm)
    offs = np.arange(-20, 21)
    dx, dy = (np.tile(a.ravel(), (2, 1)).astype(float) for a in np.meshgrid(offs, offs))
    ring = (dx ** 2 + dy ** 2 >= r1 ** 2) & (dx ** 2 + dy ** 2 <= r2 ** 2)
    x, y = np.array([0.0, 100.0]), np.array([0.0, 0.0])
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    crowd = (14 * np.cos(angles), 14 * np.sin(angles))  # 12 neighbours around star 0
    single = (np.r_[crowd[0], 100 + 14.0], np.r_[crowd[1], 0.0])  # one near star 1
    monkeypatch.setattr(psf_photometry, "RING_NEIGHBOUR_MASK_FWHM", 2.0)
    masked = _masked_ring(ring, (dx, dy), x, y, single, fwhm, r2)
    assert (ring & ~masked).sum(axis=1)[0] == 0  # the crowded star: whole ring
    assert masked.sum(axis=1)[1] >= MIN_RING_PIXELS
    assert masked.sum(axis=1)[1] < ring.sum(axis=1)[1]  # star 1: its neighbour's pixels out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matched_response_cancels_neighbour_light_in_the_flux_ratio(seed):
    """Weights of matched response (``MATCHED_RESPONSE``, off by default;
    docs/nsg.md "Seventh attempt"): each frame's flux weights are its profile widened
    so that, for Gaussian PSFs, both fluxes respond alike to light at any offset.
    Noise-free Gaussian stars, FWHM 3.0 and 4.8 px, true profiles, each star with a
    neighbour of 20-60 % of its flux. An unresolved one at 3-6 px puts 6-10 % into
    the plain PSF-weighted ratio (the broader frame's weights reach it more) and
    under 0.01 % into the matched one; one in the broader frame's ring (13-18 px)
    +1.4-1.6 % and -0.07 to -0.09 % (medians; measured)."""
    from napari_nsg.core.stars import psf_photometry
    from napari_nsg.core.stars.aperture_correction import Profile

    fwhms = (3.0, 4.8)
    profiles = [Profile(FWHM_PER_SIGMA * float(np.sqrt((f / FWHM_PER_SIGMA) ** 2 + 1 / 12)),
                        0.0, 25) for f in fwhms]  # the pixel-integrated Gaussians
    weights = psf_photometry._matched_responses(*profiles)

    def ratios(seps):
        frames = [_stars_with_ring_neighbours(f, seed, seps=seps) for f in fwhms]
        plain = [psf_photometry.weighted_photometry(img, x, y, p, f).flux[0]
                 for (img, x, y, _), p, f in zip(frames, profiles, fwhms, strict=True)]
        matched = [psf_photometry.weighted_photometry(img, x, y, p, max(fwhms), response=w).flux[0]
                   for (img, x, y, _), p, w in zip(frames, profiles, weights, strict=True)]
        return plain[0] / plain[1] - 1, matched[0] / matched[1] - 1

    plain, matched = ratios((3.0, 6.0))
    assert np.median(plain) < -0.03
    assert np.max(np.abs(matched)) < 5e-4
    plain, matched = ratios((13.0, 18.0))
    assert np.median(plain) > 0.01
    assert abs(np.median(matched)) < 2e-3


@pytest.mark.parametrize("fwhm", [3.06, 4.8])
def test_widened_response_damps_a_profile_error(fwhm, monkeypatch):
    """``RESPONSE_WIDEN`` (docs/nsg.md "Twelfth attempt"): a profile whose width is 3 %
    off moves the flux of a noise-free Gaussian star by about ``-e / (2 (f F)^2)``
    (``e`` its second moment's error, ``F`` the FWHM), so widening the common response
    by f = 1.3 leaves 1 / 1.69 = 0.59 of the error (measured: 0.58 at FWHM 3.06 and
    4.8 px, the plain error +3.0 %)."""
    from dataclasses import replace

    from napari_nsg.core.stars import psf_photometry as pp

    img, x, y = _isolated_stars("gaussian", fwhm, 1e5)
    flux = np.full(len(x), 1e5)
    prof = pp.fit_profile_ring_sky(img, x, y, flux, fwhm, (x, y, flux))
    wide = replace(prof, fwhm=1.03 * prof.fwhm)
    errors = []
    for widen in (1.0, 1.3):
        monkeypatch.setattr(pp, "RESPONSE_WIDEN", widen)
        response = pp._matched_responses(wide, wide)[0]
        ph = pp.weighted_photometry(img, x, y, wide, fwhm, response=response)
        assert ph.valid.all()
        errors.append(np.median(ph.flux[0]) / 1e5 - 1)
    assert errors[0] > 0.02  # the error to damp
    assert 0.5 < errors[1] / errors[0] < 0.7


def _pair_with_neighbour(distance, fwhm=(3.0, 4.5), scale=0.8, size=96):
    """Noise-free Gaussian frames (sharp reference, broad target of ``scale`` x its light)
    of a star and an equal neighbour ``distance`` px away, on 500 ADU of sky."""
    from napari_nsg.synthetic.psf import PSF

    star, other = (48.3, 47.6), (48.3 + distance, 48.0)
    frames = []
    for f, gain in zip(fwhm, (1.0, scale), strict=True):
        img = np.full((size, size), 500.0)
        psf = PSF(f, "gaussian")
        for x, y in (star, other):
            cx, cy = round(x), round(y)
            stamp = psf.stamps(np.array([x - cx]), np.array([y - cy]), 30)[0]
            img[cy - 30:cy + 31, cx - 30:cx + 31] += gain * 1e5 * stamp
        frames.append(img)
    return frames, star, other


@pytest.mark.shipped_psf
@pytest.mark.parametrize("distance", [9.0, 10.0])
def test_neighbour_model_removes_an_edge_neighbours_light(distance, monkeypatch):
    """``NEIGHBOUR_MODEL`` (docs/nsg.md "Thirteenth attempt"): with matched responses a
    neighbour's light is the same in both frames only over the whole plane; one just
    outside the weighted region (2 FWHM of the broader frame, 9 px) reaches the broad
    target's flux more (measured: +0.34 % at 9 px, +0.44 % at 10 px on the flux ratio).
    Subtracting its model light removes it (measured: about 1e-6), and with its flux 20 %
    low, as a detection's isophotal flux may be, most of it (0.2 of the error left)."""
    from napari_nsg.core.stars import psf_photometry as pp

    (ref, tgt), star, other = _pair_with_neighbour(distance)
    profiles = [Profile(float(FWHM_PER_SIGMA * np.sqrt((f / FWHM_PER_SIGMA) ** 2 + 1 / 12)),
                        0.0, 0, 0.0, 0.0) for f in (3.0, 4.5)]
    responses = pp._matched_responses(*profiles)
    x, y = np.array([star[0]]), np.array([star[1]])

    def ratio_error(model, neighbour_flux):
        monkeypatch.setattr(pp, "NEIGHBOUR_MODEL", model)
        nb = (np.array([star[0], other[0]]), np.array([star[1], other[1]]),
              np.array([1e5, neighbour_flux]))
        a, b = (pp.weighted_photometry(img, x, y, prof, 4.5, neighbours=nb, response=resp,
                                       neighbour_scale=s)
                for img, prof, resp, s in zip((ref, tgt), profiles, responses, (1.0, 0.8),
                                              strict=True))
        return float(b.flux[0, 0] / a.flux[0, 0] / 0.8 - 1)

    plain = ratio_error(False, 1e5)
    assert plain > 0.002
    assert abs(ratio_error(True, 1e5)) < 1e-5
    assert abs(ratio_error(True, 0.8e5)) < 0.25 * plain


@pytest.mark.shipped_psf
def test_fit_crowding_off_leaves_the_psf_pairs_crowding_out(monkeypatch):
    """``FIT_CROWDING = False``: the scale fit of the psf mode's pairs gets no crowding
    term (the large apertures' 5 % of the neighbours' light), the default mode's still
    does."""
    from napari_nsg.core.nsg import engine
    from napari_nsg.core.stars import psf_photometry as pp

    seen = []
    real = engine.fit_scale

    def spy(*args, **kwargs):
        seen.append(kwargs.get("crowding"))
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "fit_scale", spy)
    monkeypatch.setattr(pp, "FIT_CROWDING", False)
    seq = independent_like(0, n=2)
    ref, tgt = (np.round(seq.frame(k).data) for k in (0, 1))
    for params in (NsgParameters(photometry="psf"), APERTURES):
        sr = measure_scale(prepare_reference(ref, params=params), tgt)
        assert abs(float(sr.scale[0]) / float(seq.truth[1].scale[0]) - 1) < 0.005
    assert seen[0] is None
    assert seen[1] is not None and np.any(seen[1] > 0)


#: The default apertures of a 4.8 px FWHM pair (3 FWHM + 1 px), their gap and ring.
DEFAULT_RADIUS, DEFAULT_GAP = 3 * 4.8 + 1, 2.0


def _stars_with_edge_neighbours(fwhm, seed):
    """:func:`_stars_with_ring_neighbours` with each neighbour 0.5-3.5 px beyond the
    outer edge of its star's default background ring (none of its light in the
    aperture; its wing in the ring grows with the FWHM)."""
    outer = DEFAULT_RADIUS + DEFAULT_GAP + float(ring_width(DEFAULT_RADIUS, DEFAULT_GAP, 10))
    return _stars_with_ring_neighbours(fwhm, seed, grid=4, spacing=130, pad=60, half=55,
                                       seps=(outer + 0.5, outer + 3.5))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_ring_mask_removes_an_edge_neighbours_light(seed, monkeypatch):
    """The default apertures (docs/nsg.md "Eighth attempt"): a neighbour just outside
    the background ring puts more of its light into the ring of the broader frame, so
    that frame's ring level is higher, its flux lower and the flux ratio (the scale)
    errs positive. Noise-free Gaussian stars, FWHM 3.0 and 4.8 px, the same apertures
    in both frames: with the ring pixels within 2 FWHM (of the broader frame) of a
    detected neighbour left out (``photometry.RING_NEIGHBOUR_MASK_FWHM``, off by
    default) every flux is its star's whole light and every ratio 1 within 1e-4;
    with the switch off, ``neighbours=`` changes nothing."""
    from napari_nsg.core.stars import photometry

    sharp, x, y, detected = _stars_with_edge_neighbours(3.0, seed)
    broad = _stars_with_edge_neighbours(4.8, seed)[0]
    width = ring_width(DEFAULT_RADIUS, DEFAULT_GAP, 10)
    neighbours = (*detected, (0.0, 0.0), 4.8)

    def fluxes(mask_fwhm):
        monkeypatch.setattr(photometry, "RING_NEIGHBOUR_MASK_FWHM", mask_fwhm)
        ph = pair_photometry(sharp, broad, x, y, x, y, DEFAULT_RADIUS, gap=DEFAULT_GAP,
                             width=width, neighbours=neighbours)
        assert all(p.valid.all() for p in ph)
        return ph[0].flux[0] / 1e5, ph[1].flux[0] / 1e5

    plain = pair_photometry(sharp, broad, x, y, x, y, DEFAULT_RADIUS, gap=DEFAULT_GAP,
                            width=width)
    off = fluxes(0.0)
    assert np.array_equal(off[0], plain[0].flux[0] / 1e5)
    assert np.array_equal(off[1], plain[1].flux[0] / 1e5)
    s, b = off
    assert np.median(s / b) - 1 > 1e-3  # the mechanism: the broader frame loses more
    s, b = fluxes(2.0)
    assert np.max(np.abs(np.r_[s, b] - 1)) < 1e-4
    assert np.max(np.abs(s / b - 1)) < 1e-4


def test_default_ring_mask_keeps_a_crowded_star_with_its_whole_ring(monkeypatch):
    """A star whose masked ring would keep less than ``RING_MASK_MIN_KEPT`` of its
    pixels keeps its whole ring (its flux as without the mask, and valid); a star with
    one neighbour in its ring gets the masked ring (its flux is the star's light)."""
    from napari_nsg.core.stars import photometry

    fwhm, sky, flux = 4.0, 500.0, 1e5
    radius, width = 3 * fwhm + 1, 10.0
    img = np.full((200, 400), sky)
    psf, half = PSF(fwhm, "gaussian"), 30
    x, y = np.array([100.0, 300.0]), np.array([100.0, 100.0])
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    mid = radius + DEFAULT_GAP + width / 2
    nx = np.r_[x[0] + mid * np.cos(angles), x[1] + mid]
    ny = np.r_[y[0] + mid * np.sin(angles), y[1]]
    fluxes = np.r_[flux, flux, np.full(12, 0.02 * flux), 0.3 * flux]
    for px, py, f in zip(np.r_[x, nx], np.r_[y, ny], fluxes):
        ix, iy = round(px), round(py)
        img[iy - half: iy + half + 1, ix - half: ix + half + 1] += f * psf.stamps(
            np.array([px - ix]), np.array([py - iy]), half)[0]

    def measure(mask_fwhm):
        monkeypatch.setattr(photometry, "RING_NEIGHBOUR_MASK_FWHM", mask_fwhm)
        ref, _ = pair_photometry(img, img, x, y, x, y, radius, gap=DEFAULT_GAP, width=width,
                                 neighbours=(np.r_[x, nx], np.r_[y, ny], (0.0, 0.0), fwhm))
        assert ref.valid.all()
        return ref.flux[0] / flux

    plain, masked = measure(0.0), measure(2.0)
    assert masked[0] == pytest.approx(plain[0], rel=1e-12)  # the crowded star: whole ring
    assert plain[1] < 0.95  # its neighbour's light in the ring
    assert abs(masked[1] - 1) < 1e-4


@pytest.mark.parametrize("flux", [1e4, 1e5])
def test_width_noise_term_is_the_noise_that_each_stars_fit_absorbs(flux):
    """The profile fit's noise term (``psf_photometry.WIDTH_NOISE_TERM``; docs/nsg.md
    "Ninth attempt"): with sky weights, the noise that each star's own flux and shift
    absorb depends on the shape (a narrower profile absorbs more of the bright core's
    photon noise), so the chi-square's expected value leans to narrower shapes.
    :func:`psf_photometry._absorbed_noise` is that expected value: on pure noise (the
    photon noise of 36 Gaussian stars of FWHM 4 px on 500 ADU of sky, read noise 3 ADU,
    each stamp less its ring level) the mean chi-square difference between shapes 5 %
    narrower and 5 % wider than the truth over 50 draws is what it predicts (300 draws:
    -7.8 +- 0.3 against -8.0 at 10^4 ADU, -84 +- 1 against -84.5 at 10^5)."""
    from napari_nsg.core.stars import psf_photometry as pp
    from napari_nsg.core.stars.aperture_correction import _profile_stars, _stamps

    fwhm, sky, read = 4.0, 500.0, 3.0
    clean, x, y = _isolated_stars("gaussian", fwhm, flux, sky=sky)
    f = np.full(len(x), flux)
    _, x, y, ids, tree, nxy = _profile_stars(clean, x, y, f, fwhm, (x, y, f))
    _, r1, r2 = pp._ring_radii(fwhm)
    pix_var = _stamps(clean + read**2, x[ids], y[ids], fwhm, tree, nxy)[1]
    truth = np.log(np.sqrt(fwhm**2 + FWHM_PER_SIGMA**2 / 12))  # the pixels' own width
    shapes = [np.array([truth + d, 0.0, 0.0, 0.0]) for d in (-0.05, 0.05)]
    rng = np.random.default_rng(int(flux))
    measured, predicted = [], []
    for _ in range(50):
        noise = sky + rng.normal(size=clean.shape) * np.sqrt(clean + read**2)
        level, sig, count = pp._ring_background(noise, x[ids], y[ids], r1, r2, nxy, fwhm)
        dxy, v, use = _stamps(noise, x[ids], y[ids], fwhm, tree, nxy)
        v = np.where(use, v - level[:, None], 0.0)
        w = np.broadcast_to(1.0 / sig[:, None] ** 2, v.shape)
        plain = [pp._chi2_fixed_sky(t, dxy, v, w, use, (r1, r2))[0] for t in shapes]
        full = [pp._chi2_fixed_sky(t, dxy, v, w, use, (r1, r2), (pix_var, sig**2 / count))[0]
                for t in shapes]
        measured.append(plain[0] - plain[1])
        predicted.append(-((full[0] - plain[0]) - (full[1] - plain[1])))
    sem = np.std(measured, ddof=1) / np.sqrt(len(measured))
    assert np.mean(predicted) < -10 * sem  # the term is there: narrower absorbs more
    assert abs(np.mean(measured) - np.mean(predicted)) < 3 * sem


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_profile_ring_mask_removes_the_ring_neighbours_from_the_width(seed, monkeypatch):
    """The targets' width term of the psf mode (docs/nsg.md "Ninth attempt"): a
    detected neighbour in a profile star's background ring raises the ring level that
    the profile fit subtracts, the star's wings come out low and the fitted width
    narrow (the scale then errs positive: -1.00 x the target's width error). Noise-free
    Gaussian stars, each with a neighbour of 20-60 % at 4.1-4.4 FWHM (beyond the
    profile stars' isolation reach of 4 FWHM, inside the ring of 2.5-4.5 FWHM), tail
    imposed at 0: FWHM 3.0 / 4.8 px come out 1.0-1.2 % narrow (measured); with the
    ring pixels within 2 FWHM of a detected neighbour left out of the profile fit's
    rings only (``PROFILE_RING_MASK_FWHM``, off) +0.037 / +0.006 % (the pixel
    integration's approximation as sigma^2 + 1/12)."""
    from napari_nsg.core.stars import psf_photometry

    for fwhm in (3.0, 4.8):
        img, x, y, detected = _stars_with_ring_neighbours(fwhm, seed, pad=30,
                                                          seps=(4.1 * fwhm, 4.4 * fwhm))
        flux = np.full(len(x), 1e5)
        neighbours = (*detected, np.r_[flux, np.full(len(detected[0]) - len(x), 4e4)])
        sigma = fwhm / FWHM_PER_SIGMA
        truth = FWHM_PER_SIGMA * float(np.sqrt(sigma ** 2 + 1 / 12))
        errors = []
        for mask_fwhm in (None, 2.0):
            monkeypatch.setattr(psf_photometry, "PROFILE_RING_MASK_FWHM", mask_fwhm)
            prof = psf_photometry.fit_profile_ring_sky(img, x, y, flux, fwhm, neighbours, tail=0.0)
            assert prof.n_stars == len(x)  # every star is isolated enough to be fitted
            errors.append(prof.fwhm / truth - 1)
        assert errors[0] < -0.005  # the mechanism: narrow by the ring neighbours' light
        assert abs(errors[1]) < 1e-3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_asymmetric_residual_mask_ignores_a_width_error(seed, monkeypatch):
    """A shape fitted too narrow leaves ring-symmetric positive wings in the
    residuals of bright stars, which the residual mask takes for companions: it cuts
    them and the refit narrows further (docs/nsg.md "Ninth attempt"). 36 isolated
    Gaussian stars of 3e5 ADU (FWHM 4 px, 500 ADU of sky, photon noise), no
    companion: at the true width 0-1 star is flagged; 1 % narrower the plain mask
    flags 19-21 of the 36 (seeds 0-2; 1361 pixels on seed 0); with the residual's
    ring means left out (``RESIDUAL_MASK_ASYMMETRIC``) none (measured)."""
    from napari_nsg.core.stars import psf_photometry as pp
    from napari_nsg.core.stars.aperture_correction import _profile_stars, _stamps

    fwhm, sky, flux = 4.0, 500.0, 3e5
    clean, x, y = _isolated_stars("gaussian", fwhm, flux, sky=sky, seed=seed)
    img = clean + np.random.default_rng(seed).normal(size=clean.shape) * np.sqrt(clean + 9.0)
    f = np.full(len(x), flux)
    plane, x, y, ids, tree, nxy = _profile_stars(img, x, y, f, fwhm, (x, y, f))
    _, r1, r2 = pp._ring_radii(fwhm)
    level, sig, _ = pp._ring_background(plane, x[ids], y[ids], r1, r2, nxy, fwhm)
    dxy, v, use = _stamps(plane, x[ids], y[ids], fwhm, tree, nxy)
    v = np.where(use, v - level[:, None], 0.0)
    truth = np.log(np.sqrt(fwhm**2 + FWHM_PER_SIGMA**2 / 12))  # the pixels' own width

    def flagged(offset, asymmetric):
        monkeypatch.setattr(pp, "RESIDUAL_MASK_ASYMMETRIC", asymmetric)
        theta = np.array([truth + offset, 0.0, 0.0, 0.0])
        return int(pp._companions(theta, dxy, v, use, (r1, r2), sig**2, level).any(axis=1).sum())

    assert flagged(0.0, False) <= 2 and flagged(0.0, True) <= 2
    assert flagged(-0.01, False) >= 10  # the mechanism
    assert flagged(-0.01, True) <= 2


@pytest.mark.parametrize("fwhm", [3.2, 4.6])
def test_variance_weights_keep_the_profile_fit_unbiased(fwhm, monkeypatch):
    """The profile fit's pixels weighted by their variance, sky and star
    (``WIDTH_VARIANCE_WEIGHTS``; docs/nsg.md "Ninth attempt"): on nearly noise-free
    isolated Gaussian stars of 1e5 ADU on 500 ADU of sky (the cores' variance mostly
    their own photon noise) the fitted width is the truth within 0.05 % either way
    (the pixels as sigma^2 + 1/12; measured +0.029 / +0.018 % at FWHM 3.2 px with sky /
    variance weights, +0.005 % at 4.6 px), and the weights vary within a star by its
    light (the switch is not a no-op)."""
    from napari_nsg.core.stars import psf_photometry as pp

    clean, x, y = _isolated_stars("gaussian", fwhm, 1e5, sky=500.0, spacing=int(14 * fwhm))
    flux = np.full(len(x), 1e5)
    sigma = fwhm / FWHM_PER_SIGMA
    truth = FWHM_PER_SIGMA * float(np.sqrt(sigma ** 2 + 1 / 12))
    seen = []
    real_fit = pp._fit_shape

    def spy(theta, dxy, v, w, *args, **kwargs):
        seen.append(np.ptp(np.asarray(w)[0]))
        return real_fit(theta, dxy, v, w, *args, **kwargs)

    monkeypatch.setattr(pp, "_fit_shape", spy)
    for weights in (False, True):
        monkeypatch.setattr(pp, "WIDTH_VARIANCE_WEIGHTS", weights)
        prof = pp.fit_profile_ring_sky(clean + np.random.default_rng(0).normal(0, 0.3, clean.shape),
                                       x, y, flux, 1.05 * fwhm, (x, y, flux), tail=0.0)
        assert abs(prof.fwhm / truth - 1) < 5e-4
        assert (seen[-1] > 0) == weights  # sky weights are flat within a star


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ring_bumps_remove_undetected_stars_from_the_profile_rings(seed, monkeypatch):
    """The undetected stars' light in the profile fit's rings (docs/nsg.md "Ninth
    attempt"): no mask built from the detected stars sees it, the ring level comes
    out high and the width narrow. Noise-free Gaussian stars, each with a neighbour of
    20-60 % at 3-4 FWHM that is not in the detected list: FWHM 3.0 / 4.8 px come out
    1.4-1.7 % narrow (measured); with the rings cleaned of bumps as the stamps are
    (``RING_BUMP_MASK``, off) +0.037 / +0.006 % (the pixels as sigma^2 + 1/12)."""
    from napari_nsg.core.stars import psf_photometry

    for fwhm in (3.0, 4.8):
        img, x, y, _ = _stars_with_ring_neighbours(fwhm, seed, pad=30,
                                                   seps=(3.0 * fwhm, 4.0 * fwhm))
        flux = np.full(len(x), 1e5)
        sigma = fwhm / FWHM_PER_SIGMA
        truth = FWHM_PER_SIGMA * float(np.sqrt(sigma ** 2 + 1 / 12))
        errors = []
        for bumps in (False, True):
            monkeypatch.setattr(psf_photometry, "RING_BUMP_MASK", bumps)
            prof = psf_photometry.fit_profile_ring_sky(img, x, y, flux, fwhm, (x, y, flux), tail=0.0)
            errors.append(prof.fwhm / truth - 1)
        assert errors[0] < -0.01  # the mechanism: the undetected light raises the ring level
        assert abs(errors[1]) < 1e-3


@pytest.mark.shipped_psf
def test_psf_scale_does_not_depend_on_which_target_came_first():
    """The reference's profile is fitted once per reference, to its own stars: a target's
    scale is the same to the bit whether another target was measured first with the same
    reference model or not (it was fitted to the first target's pairs until 2026-12-02:
    serial, --workers and --resume runs then wrote scales 1e-4 apart)."""
    seq = independent_like(0, n=3)
    ref, first, second = (np.round(seq.frame(k).data) for k in range(3))
    alone = measure_scale(prepare_reference(ref), second)
    model = prepare_reference(ref)
    measure_scale(model, first)
    after = measure_scale(model, second)
    assert PSF_FALLBACK_WARNING not in after.warnings  # the PSF weights were used
    np.testing.assert_array_equal(after.scale, alone.scale)
