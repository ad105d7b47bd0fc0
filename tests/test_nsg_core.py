"""NSG building blocks on hand-made arrays: parameters, photometry, matching, scale fit,
noise, weights."""

from __future__ import annotations

import numpy as np
import pytest

from napari_nsg.core.nsg import (
    NsgParameterError,
    NsgParameters,
    compute_weight,
    fit_scale,
    measure_noise,
    noise_from_keywords,
    rejection,
    relative_values,
)
from napari_nsg.core.nsg.noise import NoiseEstimate
from napari_nsg.core.nsg.params import max_samples_for
from napari_nsg.core.stars import (
    StarTable,
    aperture_photometry,
    estimate_offset,
    match_found,
    match_stars,
    measure_stars_at,
)
from napari_nsg.io import FrameMetadata


def gaussian_stars(shape, xy, flux, fwhm=3.0, sky=100.0, noise=0.0, seed=0):
    """Gaussian stars integrated over pixels (exact total flux) on a flat sky."""
    from scipy.special import erf

    h, w = shape
    img = np.full(shape, sky, np.float64)
    s = fwhm / 2.3548
    edges_x, edges_y = np.arange(w + 1) - 0.5, np.arange(h + 1) - 0.5
    for (x, y), f in zip(xy, flux):
        px = np.diff(0.5 * erf((edges_x - x) / (np.sqrt(2) * s)))
        py = np.diff(0.5 * erf((edges_y - y) / (np.sqrt(2) * s)))
        img += f * np.outer(py, px)
    if noise:
        img += np.random.default_rng(seed).normal(0, noise, shape)
    return img.astype(np.float32)


# -- parameters ---------------------------------------------------------------

def test_parameters_defaults_ranges_and_errors():
    p = NsgParameters()
    assert (p.smoothness, p.min_weight, p.min_transmission, p.star_flux_tolerance) == \
        (-2.0, 0.25, 0.75, 1.5)
    assert (p.outlier_removal, p.linear_range, p.star_search_radius) == (2.0, 0.7, 2.0)
    assert NsgParameters(smoothness=4).is_plane and not p.is_plane
    for kwargs, text in [({"smoothness": 4.5}, "smoothness must be in -4.0..4.0"),
                         ({"sample_size": 1}, "sample_size must be in 2..150"),
                         ({"min_transmission": 0.99}, "min_transmission"),
                         ({"smoothness": float("nan")}, "finite"),
                         ({"no_reference": "guess"}, "no_reference must be one of")]:
        with pytest.raises(NsgParameterError, match=text):
            NsgParameters(**kwargs)
    assert max_samples_for(-2.0) == 2000 and max_samples_for(2.0) == 1250
    assert max_samples_for(4.0) is None


def test_auto_values_follow_the_image_scale():
    # 3.76 um pixels at 800 mm: 0.969 "/px
    meta = FrameMetadata(pixel_size=3.76, focal_length=800.0)
    r = NsgParameters().resolved(shape=(4000, 6000), meta=meta, max_star_flux=2.0,
                                 n_ref_stars=3000)
    assert r.image_scale == pytest.approx(0.9694, rel=1e-3)
    assert r.aperture_gap == 2 and r.aperture_bg_delta == 7  # 1.8" and 7.2"
    assert r.sample_size == 109  # sqrt(W*H/2000), above 27" (28 px) and 100 um (27 px)
    bins = (6000 // 109) * (4000 // 109)
    assert r.limit_sample_stars == pytest.approx(100 * (bins / 10) / 3000, abs=0.01)
    assert r.aperture_growth == 0.25 and r.sample_star_growth == 0.25
    # a very bright star caps the growth at 25.2" and 135"
    big = NsgParameters().resolved(shape=(4000, 6000), meta=meta, max_star_flux=1000.0)
    assert big.aperture_growth == pytest.approx(26 / 1000.0)
    assert big.sample_star_growth == pytest.approx(139 / 1000.0)
    # no header: NSG's 6 um / 1000 mm; small frames keep at least 3 samples across
    small = NsgParameters().resolved(shape=(300, 400))
    assert small.image_scale == pytest.approx(1.2376, rel=1e-3)
    assert small.sample_size == 22
    assert NsgParameters(sample_size=40).resolved(shape=(300, 400)).sample_size == 40


# -- photometry ---------------------------------------------------------------

def test_aperture_photometry_measures_flux_and_refuses_no_data_and_saturation():
    xy = [(40.3, 40.6), (100.0, 60.2), (150.7, 130.1), (60.0, 150.0)]
    flux = [5e4, 2e4, 8e4, 1e4]
    img = gaussian_stars((200, 200), xy, flux, sky=250.0)
    img += (0.05 * np.arange(200))[None, :].astype(np.float32)  # a sky gradient
    ph = aperture_photometry(img, *np.array(xy).T, 9.0, gap=2, width=8)
    assert ph.valid.all()
    np.testing.assert_allclose(ph.flux[0], flux, rtol=2e-3)
    # no-data in the aperture, an aperture off the edge, a saturated star
    holes = img.copy()
    holes[41, 44] = np.inf  # (a lone 0 is a clipped value, not no-data: tests/test_nodata.py)
    holes[60, 100] = np.nan
    ph = aperture_photometry(holes, [40.3, 100.0, 150.7, 3.0], [40.6, 60.2, 130.1, 100.0], 9.0,
                             gap=2, width=8, saturation=img.max() * 0.9)
    assert list(ph.valid[0]) == [False, False, False, False]
    assert ph.reason[0] == ph.reason[1] == "no-data pixel in the aperture"
    assert ph.reason[2] == "saturated"
    assert ph.reason[3] == "aperture leaves the image"
    # no-data in the ring only is fine
    ring = img.copy()
    ring[40, 52:56] = 0.0
    assert aperture_photometry(ring, [40.3], [40.6], 9.0, gap=2, width=8).valid[0, 0]


# -- matching -----------------------------------------------------------------

def _field(n=120, shape=(400, 400), seed=1):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(20, shape[0] - 20, (n, 2))
    flux = 3e3 * 10 ** rng.uniform(0, 1.5, n)
    return xy, flux


def test_guided_detection_finds_offset_and_pairs_only_the_same_stars():
    xy, flux = _field()
    ref_img = gaussian_stars((400, 400), xy, flux, noise=5.0, seed=1)
    shift = np.array([3.4, -2.7])
    tgt_img = gaussian_stars((400, 400), xy + shift, 0.8 * flux, sky=150, noise=5.0, seed=2)
    ref, found = measure_stars_at(ref_img, *xy.T, search_radius=1.5, fwhm=3.0)
    assert found.all()
    order = np.argsort(-ref.flux)
    ref = ref.take(order)
    est = estimate_offset(ref, tgt_img, max_offset=10.0, fwhm=3.0)
    assert est.ok and np.hypot(est.dx - shift[0], est.dy - shift[1]) < 0.1
    tgt, found = measure_stars_at(tgt_img, ref.x + est.dx, ref.y + est.dy, search_radius=2.0,
                                  fwhm=3.0)
    match = match_found(ref, tgt, found)
    assert len(match) >= 100
    d = tgt.xy[match.tgt_index] - ref.xy[match.ref_index] - shift
    assert np.abs(d).max() < 0.3
    assert match.ratio == pytest.approx(1 / 0.8, rel=0.05)
    # without the offset, nothing is paired at 2 px: no wrong pairs
    _, found0 = measure_stars_at(tgt_img, ref.x, ref.y, search_radius=2.0, fwhm=3.0)
    assert found0.sum() <= 3


def test_list_matching_leaves_ambiguous_stars_unpaired():
    z = np.zeros(4)
    ref = StarTable(x=np.array([10.0, 11.5, 50.0, 80.0]), y=np.array([10.0, 10.0, 50.0, 80.0]),
                    flux=np.array([1000.0, 900.0, 500.0, 300.0]), peak=z, raw_peak=z,
                    background=z, a=z, b=z, theta=z, fwhm=z + 3, npix=np.zeros(4, int),
                    saturated=np.zeros(4, bool))
    tgt = ref.take(np.array([0, 2, 3]))
    tgt.x = tgt.x + 0.4
    m = match_stars(ref, tgt, search_radius=2.0)
    # the close double (10,10)/(11.5,10) is ambiguous: left out, the others paired right
    assert sorted(m.ref_index.tolist()) == [2, 3]
    assert all(ref.x[i] + 0.4 == pytest.approx(tgt.x[j]) for i, j in zip(m.ref_index, m.tgt_index))
    assert any("unpaired" in w for w in m.warnings)


# -- scale fit ----------------------------------------------------------------

def test_scale_fit_is_unbiased_and_robust():
    rng = np.random.default_rng(4)
    n, m_true = 200, 1.37
    true_t = 10 ** rng.uniform(3, 5.5, n)
    true_t[:5] = 2e5  # the outliers below are bright stars: gross in their own errors
    err = np.sqrt(200.0**2 + true_t)  # sky noise plus photon noise
    tgt = true_t + rng.normal(0, err)
    ref = m_true * true_t + rng.normal(0, np.sqrt(200.0**2 + m_true * true_t))
    ref_err = np.sqrt(200.0**2 + m_true * true_t)
    # a few gross outliers (a variable star, a cosmic ray, a blend)
    ref[:5] *= [1.4, 0.7, 1.2, 0.8, 3.0]
    res = fit_scale(ref, tgt, ref_err, err)
    assert res.scale == pytest.approx(m_true, rel=2e-3)
    assert abs(res.scale - m_true) < 4 * res.error
    assert not res.used[:5].any()
    # noisy faint stars must not pull the scale: compare with a weighted mean of ratios
    faint = fit_scale(ref[100:], tgt[100:], ref_err[100:], err[100:])
    assert faint.scale == pytest.approx(m_true, rel=0.01)


def test_scale_fit_few_and_no_pairs():
    one = fit_scale(np.array([200.0, np.nan]), np.array([100.0, 50.0]))
    assert one.scale == pytest.approx(2.0) and one.n_used == 1
    assert any("only 1 star pair" in w for w in one.warnings)
    none = fit_scale(np.array([np.nan, -1.0]), np.array([1.0, 2.0]))
    assert np.isnan(none.scale) and none.n_pairs == 0


# -- noise and weights ----------------------------------------------------------

@pytest.mark.parametrize("sigma", [3.0, 40.0])
def test_noise_estimate_is_unbiased_on_a_star_field(sigma):
    xy, flux = _field(n=300, shape=(512, 512), seed=3)
    img = gaussian_stars((512, 512), xy, flux * sigma / 10, sky=1000.0, noise=sigma, seed=5)
    img += np.linspace(0, 20 * sigma, 512)[None, :].astype(np.float32)  # gradient
    img[:, :40] = 0.0  # no-data border
    s, alg, frac = measure_noise(img)
    assert alg == "MRS" and 0.01 < frac < 1  # bright stars cover most of the support
    assert s == pytest.approx(sigma, rel=0.03)


def test_noise_keywords_and_weight():
    assert noise_from_keywords({0: 2.0}, {0: "MRS"}, 1).sigma.tolist() == [2.0]
    assert noise_from_keywords({0: 2.0, 1: 3.0}, {}, 1).sigma.tolist() == [3.0]  # CFA green
    assert noise_from_keywords({0: 2.0}, {}, 3) is None
    assert noise_from_keywords({0: 1.0, 1: 2.0, 2: 3.0}, {}, 3).sigma.tolist() == [1, 2, 3]
    ref = NoiseEstimate(np.array([10.0, 10.0, 10.0]), ["MRS"] * 3, "measured", np.ones(3))
    tgt = NoiseEstimate(np.array([8.0, 10.0, 12.5]), ["MRS"] * 3, "measured", np.ones(3))
    w = compute_weight(ref, tgt, [1.25, 1.0, 0.8])
    np.testing.assert_allclose(w.snr, [1.0, 1.0, 1.0])
    assert w.weight == pytest.approx(1.0)
    w2 = compute_weight(ref, tgt, [2.5, 2.0, 1.6])
    assert w2.weight == pytest.approx(0.25)
    mixed = NoiseEstimate(np.array([8.0, 10.0, 12.5]), ["K-Sigma"] * 3, "measured", np.ones(3))
    assert any("differ in kind" in t for t in compute_weight(ref, mixed, [1, 1, 1]).warnings)


def test_relative_values_and_rejection():
    weight = np.array([1.0, 0.8, 0.2, np.nan, 0.9])
    trans = np.array([1.0, 0.9, 0.95, np.nan, 0.6])
    expo = np.array([60.0, 60.0, 60.0, 60.0, 120.0])
    rw, rt, per = relative_values(weight, trans, expo)
    assert per
    np.testing.assert_allclose(rw, [1.0, 0.8, 0.2, np.nan, 0.45])
    np.testing.assert_allclose(rt, [1.0, 0.9, 0.95, np.nan, 0.3])
    rej, why = rejection(rw, rt, is_reference=np.array([True, False, False, False, False]))
    assert rej.tolist() == [False, False, True, False, True]
    assert "weight" in why[2] and "transmission" in why[4]
    # without exposure for one frame: not per exposure
    _, rt2, per2 = relative_values(weight, trans, np.array([60, np.nan, 60, 60, 120.0]))
    assert not per2 and rt2[4] == pytest.approx(0.6)


@pytest.mark.parametrize("noise,warned", [(0.002, False), (0.08, True)])
def test_an_uncertain_scale_is_said(noise, warned):
    """20 pairs with 0.2 % flux errors give a scale good to about 0.1 %: no word; with 8 %
    errors it is good to about 3 % only (as 18 pairs on a 400 x 480 frame: +-3.6 %, and
    4.5 % off): a warning that gives the uncertainty and the number of pairs."""
    rng = np.random.default_rng(5)
    tgt = rng.uniform(2e3, 2e4, 20)
    ref = 1.25 * tgt * (1 + rng.normal(0, noise, 20))
    cs = fit_scale(ref, tgt, noise * ref, np.zeros_like(tgt))
    said = [w for w in cs.warnings if "uncertain" in w]
    assert bool(said) == warned
    if warned:
        assert f"from {cs.n_used} star pairs" in said[0] and cs.error / cs.scale > 0.01
