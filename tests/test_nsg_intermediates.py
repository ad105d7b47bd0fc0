"""The engine behind the interactive session: the spline cache follows the
parameters, results are slim enough to keep and send, and the intermediates a
GUI draws (star pairs, samples, nodes, rejection circles) are exposed.
"""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

from napari_nsg.core.nsg import NsgParameters, normalize_frame, prepare_reference
from napari_nsg.io import parse_metadata
from napari_nsg.synthetic import simulate_sequence

FIELD = dict(star_density=5e-3, n_bright=40, bright_flux_range=(1e3, 1.5e4))


@pytest.fixture(scope="module")
def pair():
    seq = simulate_sequence(2, (384, 448), seed=11, transmission=[1.0, 0.8], border=12,
                            **FIELD)
    ref, tgt = seq.frame(0), seq.frame(1)
    return ref, tgt


def _model(ref, **params):
    return prepare_reference(ref.data, parse_metadata(ref.header), NsgParameters(**params))


def _operators(model):
    return {k: v for k, v in model.spline_cache.items() if k[0] != "kernel"}


def _with_params(model, **changes):
    """The same reference model with other spline parameters (shares its cache)."""
    return dataclasses.replace(model, params=model.params.with_values(**changes))


@pytest.mark.parametrize("smoothness", [-3.0, 0.0, 1.5])
def test_changed_smoothness_is_not_served_from_a_stale_cache(pair, smoothness):
    ref, tgt = pair
    model = _model(ref)
    first = normalize_frame(model, tgt.data, gradient_images=True)
    assert len(_operators(model)) == 1  # the shared system was used
    changed = _with_params(model, smoothness=smoothness)
    again = normalize_frame(changed, tgt.data, gradient_images=True)
    fresh = normalize_frame(_model(ref, smoothness=smoothness), tgt.data, gradient_images=True)
    span = float(np.ptp(first.gradient[tgt.valid]))
    # the gradient changes with the smoothness ...
    assert np.max(np.abs(again.gradient - first.gradient)) > 0.01 * span
    # ... and equals what a fresh model with that smoothness gives
    np.testing.assert_allclose(again.gradient, fresh.gradient, atol=1e-4 * span)
    np.testing.assert_allclose(again.corrected, fresh.corrected, atol=1e-4 * span)


def test_cache_keeps_a_bounded_number_of_systems_and_reuses_them(pair):
    from napari_nsg.core.nsg.engine import SPLINE_CACHE_SIZE

    ref, tgt = pair
    model = _model(ref)
    for s in (-2.0, -1.0, 0.0, -2.0):
        normalize_frame(_with_params(model, smoothness=s), tgt.data, keep_corrected=False)
    assert len(_operators(model)) == SPLINE_CACHE_SIZE
    assert {k[-1] for k in _operators(model)} == {0.0, -2.0}
    # one kernel (and grid matrix) of the bins serves every smoothness
    kernels = [v for k, v in model.spline_cache.items() if k[0] == "kernel"]
    assert len(kernels) == 1
    assert all(op.nodes_kernel is kernels[0] for op in _operators(model).values())


@pytest.fixture(scope="module")
def normalized(pair):
    ref, tgt = pair
    model = _model(ref)
    return model, normalize_frame(model, tgt.data, keep_corrected=False)


def test_results_are_slim_and_keep_the_gradient(pair, normalized):
    ref, tgt = pair
    model, res = normalized
    assert res.surface.operator is None
    blob = pickle.dumps(res)
    n = res.n_nodes
    op = next(iter(_operators(model).values()))
    # the solver alone is (n+3)^2 doubles and the grid matrix more: the result holds a
    # few hundred bytes per node plus the star tables
    assert len(blob) < 64 * 1024 + 300 * (n + res.n_samples), len(blob)
    assert len(pickle.dumps(op)) > 8 * n * n
    back = pickle.loads(blob)
    full = normalize_frame(model, tgt.data, gradient_images=True)
    valid = tgt.valid & ref.valid
    np.testing.assert_array_equal(back.gradient_field.full_all()[0][valid], full.gradient[valid])
    # the slim surface evaluates directly (no solver) to the same values away from
    # the tapered no-data border
    xs, ys = model.coarse.mesh()
    away = np.ones(xs.shape, bool) if model.taper is None else model.taper == 0
    direct = back.surface(xs[away], ys[away])[:, 0]
    span = float(np.ptp(direct))
    np.testing.assert_allclose(direct, full.gradient_field.values[0][away], atol=1e-4 * span)
    slim = full.slim()
    assert slim.corrected is None and slim.gradient is None and slim.curvature is None
    assert len(pickle.dumps(slim)) < len(blob) + 1024


def test_star_pairs_say_which_were_used_and_why_not(normalized):
    from napari_nsg.core.nsg.intermediates import star_pairs
    from napari_nsg.core.nsg.scale import REASONS

    model, res = normalized
    pairs = star_pairs(model.candidates, res.scale_result)
    assert len(pairs) == len(res.scale_result.match.ref_index)
    assert pairs.used.shape == (len(pairs), 1)
    assert int(pairs.used.sum()) == int(res.n_star_pairs[0]) >= 20
    assert np.all((pairs.reason == "") == pairs.used[:, 0])
    assert set(pairs.reason[~pairs.used[:, 0]]) <= set(REASONS)
    ratio = pairs.ref_flux[pairs.used[:, 0], 0] / pairs.tgt_flux[pairs.used[:, 0], 0]
    assert np.median(ratio) == pytest.approx(res.scale[0], rel=0.01)
    # target positions: the reference positions plus the frame's offset (registered: ~0)
    assert np.median(np.hypot(pairs.tgt_x - pairs.x, pairs.tgt_y - pairs.y)) < 0.5
    table = pairs.to_table()
    assert len(table) == len(pairs) and "reason" in table.colnames


def test_sample_bins_are_the_engine_samples_plus_the_rejected(pair, normalized):
    from napari_nsg.core.nsg.intermediates import (
        BIN_REFERENCE_NO_DATA,
        BIN_STAR_CIRCLE,
        BIN_TARGET_NO_DATA,
        sample_bins,
        spline_nodes,
    )

    ref, tgt = pair
    model, res = normalized
    bins = sample_bins(model.grid, tgt.data[None], res.scale, model.rejection_circles)
    assert len(bins) == model.grid.n_bins
    assert int(bins.kept.sum()) == res.n_samples
    np.testing.assert_array_equal(bins.value[bins.kept], res.samples.values)
    np.testing.assert_array_equal(bins.x[bins.kept], res.samples.x)
    assert np.all((bins.reason == "") == bins.kept)
    # bins over the target's zero border say so (the reference has none here) ...
    assert (bins.reason == BIN_REFERENCE_NO_DATA).sum() == 0
    border = bins.reason == BIN_TARGET_NO_DATA
    assert border.sum() > 0
    half = model.grid.size // 2
    for x, y in zip(bins.x[border].astype(int), bins.y[border].astype(int)):
        assert not tgt.valid[max(0, y - half):y + half + 1, max(0, x - half):x + half + 1].all()
    # ... and so do the circles around bright stars
    circles = model.rejection_circles
    assert len(circles) > 0
    in_circle = bins.reason == BIN_STAR_CIRCLE
    assert in_circle.sum() > 0
    d = np.hypot(bins.x[in_circle, None] - circles.x, bins.y[in_circle, None] - circles.y)
    assert np.all(np.min(d - circles.radius, axis=1) < model.grid.size)
    nodes = spline_nodes(res.nodes)
    assert len(nodes) == res.n_nodes and nodes.weight.sum() == res.n_samples
    assert nodes.to_table().colnames == ["x", "y", "value", "weight"]


def test_curvature_from_the_full_gradient_equals_the_upsampled_curvature(normalized):
    _, res = normalized
    fieldv = res.gradient_field
    full = fieldv.full_all()
    fast = fieldv.curvature_from(full)
    slow = fieldv.minus_plane().full_all()
    span = float(np.ptp(full))
    assert np.max(np.abs(fast - slow)) < 1e-5 * span
    assert np.ptp(fast) < np.ptp(full)  # the plane is gone
