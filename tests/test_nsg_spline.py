"""The gradient surface: smoothness, plane, upsampling accuracy, pixel centres, taper."""

from __future__ import annotations

import numpy as np
import pytest

from napari_nsg.core.nsg import NsgParameters, normalize_frame, prepare_reference
from napari_nsg.core.nsg.correction import (
    CoarseGrid,
    evaluate_gradient,
    gradient_step,
    taper_weights,
)
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


@pytest.mark.parametrize("smoothness,step,rms,worst", [
    (-2.0, 10, 0.0003, 0.003),  # half the sample spacing (small frames)
    (-2.0, 20, 0.0005, 0.005),  # one sample spacing (the coarsest used)
    (-4.0, 10, 0.002, 0.02),  # the wiggliest spline: it follows the sample noise
])
def test_upsampled_surface_matches_direct_evaluation(smoothness, step, rms, worst):
    """Coarse grid + cubic upsampling against exact evaluation, as fractions of
    the surface's range; the samples are 20 px apart with noise 1.0 (range ~45)."""
    x, y, z = grid_samples(step=20, noise=1.0)
    model = fit_surface(x, y, z, smoothness=smoothness)
    full = evaluate_gradient(model, CoarseGrid((H, W), step=step)).full(0)
    assert full.shape == (H, W)
    # every 3rd pixel, plus the edge rows and columns, evaluated exactly
    ys = np.unique(np.r_[0:H:3, H - 1])
    xs = np.unique(np.r_[0:W:3, W - 1])
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    exact = model(xx.ravel(), yy.ravel())[:, 0].reshape(yy.shape)
    span = np.ptp(exact)
    err = np.abs(full[np.ix_(ys, xs)] - exact)
    assert np.sqrt(np.mean(err**2)) < rms * span
    assert err.max() < worst * span


def test_gradient_step_rule():
    assert gradient_step((512, 512), 17) == 9
    assert gradient_step((4000, 6000), 109) == 78
    assert gradient_step((4000, 6000), 40) == 40


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


def test_thin_plate_system_is_scipys():
    """The spline solves the system SciPy's RBFInterpolator solves (and NSG's PCL)."""
    from scipy.interpolate import RBFInterpolator

    x, y, z = grid_samples(step=32, noise=1.0)
    w = np.random.default_rng(1).integers(1, 4, len(x)).astype(float)
    for s in (-3.0, -2.0, 1.0):
        model = fit_surface(x, y, z, smoothness=s, weights=w)
        uv = np.column_stack([(x - model.center[0]), (y - model.center[1])]) / model.radius
        ref = RBFInterpolator(uv, z, kernel="thin_plate_spline", degree=1,
                              smoothing=10.0**s / w)
        px, py = np.random.default_rng(2).uniform(0, W, 500), np.random.default_rng(3).uniform(0, H, 500)
        puv = np.column_stack([px - model.center[0], py - model.center[1]]) / model.radius
        np.testing.assert_allclose(model(px, py)[:, 0], ref(puv), atol=1e-6 * np.ptp(z))


@pytest.mark.parametrize("smoothness", [-4.0, -2.0, 1.0])
def test_subset_of_the_prepared_system_equals_a_fresh_solve(smoothness):
    """Dropping nodes (a target's no-data border) from the prepared inverse gives
    the spline a fresh solve gives (the same normalization)."""
    from napari_nsg.core.nsg.spline import NodeKernel, SplineOperator

    x, y, z = grid_samples(step=24, noise=0.5)
    op = SplineOperator(x, y, smoothness=smoothness).prepare()
    keep = np.flatnonzero((x > 60) & ~((y < 100) & (x > 500)))  # an L-shaped border dropped
    fast = op.fit_subset(keep, z[keep])
    same_norm = NodeKernel(x[keep], y[keep], center=op.center, radius=op.radius)
    fresh = SplineOperator(x[keep], y[keep], smoothness=smoothness, kernel=same_norm)
    slow = fresh.fit(z[keep])
    # without the inverse, the subset's system is solved directly: the same surface
    direct = SplineOperator(x, y, smoothness=smoothness).fit_subset(keep, z[keep])
    d = direct(px_all := np.linspace(0, W - 1, 40), np.full(40, H / 2))
    assert np.abs(d - fast(px_all, np.full(40, H / 2))).max() < 1e-6 * np.ptp(d)
    px, py = np.meshgrid(np.linspace(0, W - 1, 40), np.linspace(0, H - 1, 30))
    a, b = fast(px.ravel(), py.ravel()), slow(px.ravel(), py.ravel())
    assert np.abs(a - b).max() < 1e-6 * np.ptp(b)
    grid = CoarseGrid((H, W), 12)
    g1 = evaluate_gradient(fast, grid).values
    assert np.abs(g1 - evaluate_gradient(slow, grid).values).max() < 1e-6 * np.ptp(b)


def test_targets_reuse_the_reference_system(glow_pair):
    """Every target reuses the reference's inverted system and grid matrix, also
    with a no-data border of its own, and gets what a fresh solve gives."""
    seq, ref, tgt = glow_pair
    model = prepare_reference(ref.data)
    first = normalize_frame(model, tgt.data)
    ops = [v for k, v in model.spline_cache.items() if k[0] != "kernel"]
    assert len(ops) == 1
    op = ops[0]
    assert op._inverse is not None and op.nodes_kernel._grids
    bordered = tgt.data.copy()
    bordered[:, :40] = 0.0
    cut = normalize_frame(model, bordered)
    assert cut.n_samples < first.n_samples
    # the same target on a model without the cached system: a fresh solve
    import napari_nsg.core.nsg.engine as engine

    fresh_model = prepare_reference(ref.data)
    old = engine.REUSE_FRACTION
    engine.REUSE_FRACTION = 2.0  # never reuse
    try:
        fresh = normalize_frame(fresh_model, bordered)
    finally:
        engine.REUSE_FRACTION = old
    span = np.ptp(fresh.gradient_field.values)
    # same spline up to the normalization (the whole set's radius): a tiny change
    assert np.abs(cut.gradient_field.values - fresh.gradient_field.values).max() < 0.02 * span
