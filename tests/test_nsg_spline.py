"""The gradient surface: smoothness, plane, upsampling accuracy, pixel centres, taper."""

from __future__ import annotations

import numpy as np
import pytest

from napari_nsg.core.nsg import NsgParameters, normalize_frame, prepare_reference
from napari_nsg.core.nsg.correction import CoarseGrid, evaluate_gradient, taper_weights
from napari_nsg.core.nsg.spline import fit_surface
from napari_nsg.io import parse_metadata
from napari_nsg.synthetic import simulate_sequence

H, W = 480, 640
GLOW = dict(x=420.0, y=150.0, sigma=45.0, amplitude=30.0)


def glow_surface(x, y):
    """A tilted plane with a local glow (a light dome) on it."""
    g = GLOW
    return (5.0 + 0.02 * x - 0.01 * y
            + g["amplitude"] * np.exp(-((x - g["x"]) ** 2 + (y - g["y"]) ** 2) / (2 * g["sigma"] ** 2)))


def grid_samples(step=16, noise=0.3, seed=0):
    ys, xs = np.mgrid[step // 2:H:step, step // 2:W:step].astype(float)
    x, y = xs.ravel(), ys.ravel()
    z = glow_surface(x, y) + np.random.default_rng(seed).normal(0, noise, x.size)
    return x, y, z


def test_spline_follows_glow_at_low_smoothness_and_is_a_plane_at_4():
    x, y, z = grid_samples()
    gx, gy = GLOW["x"], GLOW["y"]
    truth_peak = glow_surface(np.array([gx]), np.array([gy]))[0]
    low = fit_surface(x, y, z, smoothness=-2.0)
    assert low.kind == "spline"
    assert abs(low(np.array([gx]), np.array([gy]))[0, 0] - truth_peak) < 0.05 * GLOW["amplitude"]
    # over the whole frame it follows the truth to a fraction of the sample noise (0.3)
    px, py = np.meshgrid(np.linspace(0, W - 1, 60), np.linspace(0, H - 1, 45))
    err = low(px.ravel(), py.ravel())[:, 0] - glow_surface(px.ravel(), py.ravel())
    assert np.sqrt(np.mean(err**2)) < 0.3
    # smoothness 4: NSG's least-squares plane, which cannot follow the glow
    flat = fit_surface(x, y, z, smoothness=4.0)
    assert flat.kind == "plane"
    v = flat(px.ravel(), py.ravel())[:, 0].reshape(px.shape)
    assert np.allclose(np.diff(v, 2, axis=1), 0, atol=1e-9)
    assert np.allclose(np.diff(v, 2, axis=0), 0, atol=1e-9)
    a = np.column_stack([np.ones_like(x), x, y])
    coef = np.linalg.lstsq(a, z, rcond=None)[0]
    assert np.allclose(v.ravel(), coef[0] + coef[1] * px.ravel() + coef[2] * py.ravel(), atol=1e-9)
    assert truth_peak - flat(np.array([gx]), np.array([gy]))[0, 0] > 0.6 * GLOW["amplitude"]
    # in between: more smoothing follows the glow less
    peaks = [fit_surface(x, y, z, smoothness=s)(np.array([gx]), np.array([gy]))[0, 0]
             for s in (-3.0, -1.0, 1.0, 3.0)]
    assert peaks[0] > peaks[1] > peaks[2] > peaks[3]


def test_upsampled_surface_matches_direct_evaluation():
    """The coarse grid (half a sample size) + bicubic upsampling against exact
    evaluation at every pixel, for the wiggliest smoothness."""
    x, y, z = grid_samples(step=20, noise=1.0)
    model = fit_surface(x, y, z, smoothness=-4.0)
    grid = CoarseGrid((H, W), step=10)
    full = evaluate_gradient(model, grid).full(0)
    assert full.shape == (H, W)
    # every 3rd pixel, plus the edge rows and columns, evaluated exactly
    ys = np.unique(np.r_[0:H:3, H - 1])
    xs = np.unique(np.r_[0:W:3, W - 1])
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    exact = model(xx.ravel(), yy.ravel())[:, 0].reshape(yy.shape)
    span = np.ptp(exact)
    err = np.abs(full[np.ix_(ys, xs)] - exact)
    assert np.sqrt(np.mean(err**2)) < 0.002 * span
    assert err.max() < 0.02 * span


def test_gradient_is_sampled_on_pixel_centres():
    """A pure tilt must come out exactly at every pixel, edges included (NSG's
    top-left aligned 1/5 grid is off by up to 2 px)."""
    x, y = np.meshgrid(np.arange(10, W, 20.0), np.arange(10, H, 20.0))
    z = 3.0 + 0.1 * x.ravel() - 0.05 * y.ravel()
    for smoothness in (-2.0, 4.0):
        model = fit_surface(x.ravel(), y.ravel(), z, smoothness=smoothness)
        full = evaluate_gradient(model, CoarseGrid((H, W), step=25)).full(0)
        yy, xx = np.mgrid[0:H, 0:W]
        assert np.abs(full - (3.0 + 0.1 * xx - 0.05 * yy)).max() < 2e-3


def test_taper_blends_into_plane_where_reference_has_no_data():
    x, y, z = grid_samples()
    keep = x < 400  # samples only where the reference has data
    model = fit_surface(x[keep], y[keep], z[keep], smoothness=-2.0)
    ref_valid = np.ones((H, W), bool)
    ref_valid[:, 400:] = False
    grid = CoarseGrid((H, W), step=8)
    t = taper_weights(grid, ref_valid, start=16, length=48)
    tapered = evaluate_gradient(model, grid, t).full(0)
    blind = evaluate_gradient(model, grid).full(0)
    yy, xx = np.mgrid[0:H, 0:W]
    plane = model.evaluate_plane(xx.ravel(), yy.ravel())[:, 0].reshape(H, W)
    assert np.allclose(tapered[:, :390], blind[:, :390], atol=1e-4)  # untouched near data
    assert np.allclose(tapered[:, 480:], plane[:, 480:], atol=1e-3)  # the plane far from it
    assert t is not None and taper_weights(grid, np.ones((H, W), bool), 16, 48) is None


@pytest.fixture(scope="module")
def glow_pair():
    seq = simulate_sequence(2, (384, 384), seed=5, transmission=[1.0, 0.8], fwhm=[3.0, 3.2],
                            gradient=[0.0, 400.0], gradient_mix=(0.3, 0.0, 1.0),
                            star_density=5e-3, n_bright=30, bright_flux_range=(1e3, 1.5e4))
    return seq, seq.frame(0), seq.frame(1)


def test_engine_smoothness_follows_glow_or_plane(glow_pair):
    seq, ref, tgt = glow_pair
    sigma = seq.truth[0].noise_sigma[0]
    errs, curv = {}, {}
    for s in (-2.0, 4.0):
        model = prepare_reference(ref.data, parse_metadata(ref.header),
                                  NsgParameters(smoothness=s))
        res = normalize_frame(model, tgt.data, gradient_images=True)
        # what the model should be with the scale it measured
        truth = res.scale[0] * tgt.background() - ref.background()
        errs[s] = np.sqrt(np.mean((res.gradient - truth) ** 2))
        curv[s] = np.ptp(res.curvature)
    assert errs[-2.0] < 0.15 * sigma  # follows the glow to the noise level
    assert errs[4.0] > 1.0 * sigma  # a plane cannot
    assert curv[4.0] < 1e-3 * curv[-2.0]  # a plane has no curvature
    assert curv[-2.0] > 0.5 * 400 * tgt.truth.scale[0]  # the glow is in the curvature image


def test_mask_mode_blanks_where_reference_has_no_data(glow_pair):
    seq, ref, tgt = glow_pair
    ref_data = ref.data.copy()
    ref_data[:, 300:] = 0
    model = prepare_reference(ref_data, params=NsgParameters(no_reference="mask"))
    res = normalize_frame(model, tgt.data)
    assert np.all(res.corrected[:, 300:] == 0)
    assert np.all(res.corrected[:, :300] != 0)
    tapered = normalize_frame(prepare_reference(ref_data), tgt.data)
    assert np.all(tapered.corrected[:, 300:] != 0)
