"""The faster paths of normalize and rank give what the plain paths give.

- zero regions found by flood fills from the border = found by labelling;
- the no-data rule applied once (zero regions as NaN) = applied by every stage;
- the correction by bands of rows (threads) = the formula, upsampling = its matrices;
- the background map on block means agrees with the subsampled one within its noise.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_nsg.core import nodata, threads
from napari_nsg.core.nodata import no_data_mask, zero_regions
from napari_nsg.core.nsg import correction
from napari_nsg.core.nsg.correction import CoarseGrid, GradientField, apply_correction
from napari_nsg.core.nsg.engine import no_data_as_nan
from napari_nsg.core.reference import background_map


def _labelled(zero: np.ndarray, min_area: int) -> np.ndarray:
    """zero_regions by connected-component labelling only (the fast path off)."""
    original = nodata._border_regions
    nodata._border_regions = lambda *a: None
    try:
        return zero_regions(zero, min_area)
    finally:
        nodata._border_regions = original


def test_border_fill_equals_labelling_on_random_planes():
    rng = np.random.default_rng(3)
    used = 0
    for _ in range(400):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        zero = rng.random((h, w)) < rng.choice([0.05, 0.3, 0.6, 0.9])
        min_area = int(rng.choice([2, 20, 1024]))
        cand = zero & nodata._has_zero_neighbour(zero)
        used += nodata._border_regions(cand, min_area) is not None
        assert np.array_equal(zero_regions(zero, min_area), _labelled(zero, min_area))
    assert used > 50  # the fast path was taken often, not just the fallback


def test_border_band_and_inner_block():
    data = np.ones((300, 400), np.float32)
    data[:, :25] = 0  # registration border on two sides
    data[-7:, :] = 0
    data[0, 200:210] = 0  # 10 zeros on the top edge: fewer than MIN_BORDER_REGION: values
    data[150, 150] = 0  # a lone zero: a value
    mask = no_data_mask(data)
    assert mask[:, :25].all() and mask[-7:].all()
    assert not mask[0, 200:210].any() and not mask[150, 150]
    data[100:140, 100:140] = 0  # an inner block of 1600 px: no-data (the labelling path)
    mask = no_data_mask(data)
    assert mask[100:140, 100:140].all() and not mask[0, 200:210].any()


def test_no_data_as_nan_marks_exactly_the_no_data_pixels():
    rng = np.random.default_rng(0)
    chans = rng.normal(100, 5, (3, 120, 160)).astype(np.float32)
    chans[:, :, :12] = 0  # border
    chans[1, 60, 60] = 0  # a clipped value in one channel
    chans[2, 30:35, 40:45] = np.nan
    before = chans.copy()
    out, bad = no_data_as_nan(chans)
    assert np.array_equal(bad, no_data_mask(chans))
    assert np.array_equal(np.isnan(out), bad)
    assert out[1, 60, 60] == 0  # a lone zero stays a value
    assert np.array_equal(chans, before, equal_nan=True)  # the input is not modified
    again, bad2 = no_data_as_nan(out)  # no zero region left: no copy, same mask
    assert again is out and np.array_equal(bad2, bad)


@pytest.mark.parametrize("step", [1, 7, 33])
def test_upsampling_by_row_bands_equals_the_interpolation_matrices(step):
    rng = np.random.default_rng(5)
    shape = (97, 250)
    grid = CoarseGrid(shape, step)
    values = rng.normal(0, 3, (grid.ny, grid.nx)).astype(np.float32)
    wy = correction.cubic_weights(shape[0], step, grid.margin, grid.ny).astype(float)
    wx = correction.cubic_weights(shape[1], step, grid.margin, grid.nx).astype(float)
    exact = wy @ values.astype(float) @ wx.T
    np.testing.assert_allclose(grid.upsample(values), exact, rtol=0, atol=1e-5)


@pytest.mark.parametrize("step", [1, 7])
def test_correction_in_threads_equals_the_formula(monkeypatch, step):
    rng = np.random.default_rng(1)
    shape = (90, 131)
    grid = CoarseGrid(shape, step)
    field = GradientField(grid, rng.normal(0, 3, (2, grid.ny, grid.nx)).astype(np.float32))
    target = rng.normal(500, 20, (2, *shape)).astype(np.float32)
    target[:, :, :9] = 0
    target[0, 5, 50] = 0  # a lone zero: a value
    extra = np.zeros(shape, bool)
    extra[40:50, 60:70] = True
    scale = np.array([1.1, 0.9], np.float32)
    formula = target * scale[:, None, None] - field.full_all()
    bad = no_data_mask(target) | extra
    one = apply_correction(target, scale, field, mask=extra)
    monkeypatch.setattr(correction, "PARALLEL_PIXELS", 1)
    monkeypatch.setattr(correction, "MAX_THREADS", 3)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert correction._thread_count(target[0].size) == 3
    banded = apply_correction(target, scale, field, mask=extra)
    assert np.array_equal(banded, one)
    assert np.array_equal(one == 0, bad)
    np.testing.assert_allclose(one[~bad], formula[~bad], rtol=1e-6, atol=1e-4)
    known = apply_correction(target, scale, field, mask=extra, no_data=no_data_mask(target))
    assert np.array_equal(known, one)
    work = target.copy()  # corrected in place, the bands in threads: the same pixels
    inplace = apply_correction(work, scale, field, mask=extra, no_data=bad, out=work)
    assert inplace is work and np.array_equal(work, one)
    with pytest.raises(ValueError, match="float32"):
        apply_correction(target, scale, field, out=np.empty(shape, np.float32))


def test_background_map_on_block_means_agrees_with_subsampled():
    rng = np.random.default_rng(2)
    h, w = 512, 768
    yy, xx = np.mgrid[0:h, 0:w]
    sky = 1000 + 0.2 * xx - 0.1 * yy + 30 * np.exp(-((xx - 300) ** 2 + (yy - 200) ** 2) / 2e4)
    data = (sky + rng.normal(0, 10, (h, w))).astype(np.float32)
    data[:, :20] = np.nan  # no-data as NaN, as rank gives it
    plain = background_map(data)
    binned = background_map(data, binning=4)
    assert np.array_equal(plain.centres_x, binned.centres_x)
    assert np.array_equal(np.isfinite(plain.values), np.isfinite(binned.values))
    ok = np.isfinite(plain.values)
    # each cell: 48 x 48 px; the subsampled level's noise is ~10/sqrt(2304) = 0.2 ADU
    assert np.max(np.abs(plain.values[ok] - binned.values[ok])) < 1.0


def test_corner_levels_on_block_means_agree_with_pixels():
    from napari_nsg.core.reference import corner_gradients

    rng = np.random.default_rng(4)
    h, w = 600, 800
    yy, xx = np.mgrid[0:h, 0:w]
    data = (800 + 0.05 * xx + 0.08 * yy + rng.normal(0, 8, (h, w))).astype(np.float32)
    data[:, :70] = np.nan  # a border: the left boxes slide inward in both
    plain = corner_gradients(data)
    binned = corner_gradients(data, binning=2)
    assert plain.positions == binned.positions
    true_d1 = 0.05 * 620 + 0.08 * 420  # the nominal box centres are 620 px and 420 px apart
    for got in (plain.diagonal_1[0], binned.diagonal_1[0]):
        assert got == pytest.approx(true_d1, abs=0.6)
    assert binned.diagonal_2[0] == pytest.approx(plain.diagonal_2[0], abs=0.2)


def test_marked_planes_give_the_same_stars_photometry_and_samples():
    from napari_nsg.core.nsg import NsgParameters, prepare_reference
    from napari_nsg.core.nsg.samples import measure_samples
    from napari_nsg.core.stars import aperture_photometry, measure_stars_at
    from napari_nsg.synthetic import simulate_sequence

    seq = simulate_sequence(2, (256, 256), seed=6, transmission=[1.0, 0.8], border=16,
                            star_density=5e-3, n_bright=40, bright_flux_range=(1e3, 1.5e4))
    ref, tgt = seq.frame(0), seq.frame(1)
    model = prepare_reference(ref.data, None, NsgParameters())
    raw = tgt.data.copy()
    raw[100, 100] = 0  # a lone zero: a value in both
    marked, bad = no_data_as_nan(raw[None])
    assert bad[0, 0, 0] and not bad[0, 100, 100]
    x, y = model.candidates.x, model.candidates.y
    a, fa = measure_stars_at(raw, x, y)
    b, fb = measure_stars_at(marked[0], x, y, marked=True)
    assert np.array_equal(fa, fb) and np.array_equal(a.flux, b.flux, equal_nan=True)
    pa = aperture_photometry(raw, x, y, 4.0)
    pb = aperture_photometry(marked, x, y, 4.0, marked=True)
    assert np.array_equal(pa.flux, pb.flux, equal_nan=True) and pa.valid.sum() > 10
    sa = measure_samples(model.grid, raw[None], [0.8])
    sb = measure_samples(model.grid, marked, [0.8], marked=True)
    assert len(sa) == len(sb) > 3
    assert np.array_equal(sa.values, sb.values, equal_nan=True)
