"""The cheaper per-target paths of issue 13 (fourth round) give the plain paths' numbers.

- the fused correction (``out = t*scale`` then ``sgemm`` into ``out``, a few rows at a
  time) = the banded correction with a gradient buffer, bit for bit;
- the node rows' product across in column blocks = one product (float32 rounding);
- the spline's products by row blocks = one product (float64 rounding);
- the sample subset by one strided view = the index gather;
- the value range with each band's zero test = the value range and ``data == 0``;
- the noise from a subsampled K-Sigma start and a subsampled no-data fill = the noise
  from all the coefficients and all the pixels, within 3e-4 (the MRS tolerance is 1e-3);
- the median and MAD of rows from one sort = two row medians, bit for bit;
- the ring fit from integer grid sums = the ring fit on offset arrays (float64 rounding).
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_nsg.core import blas, nodata
from napari_nsg.core.nsg import correction, noise
from napari_nsg.core.nsg.correction import CoarseGrid, GradientField, apply_correction
from napari_nsg.core.nsg.samples import make_sample_grid
from napari_nsg.core.stars import photometry
from napari_nsg.synthetic import simulate_sequence


@pytest.mark.parametrize("shape,step", [((90, 131), 7), ((200, 1021), 16), ((61, 4000), 33)])
def test_fused_correction_equals_the_banded_one(shape, step):
    rng = np.random.default_rng(7)
    grid = CoarseGrid(shape, step)
    field = GradientField(grid, rng.normal(0, 300, (1, grid.ny, grid.nx)).astype(np.float32))
    target = rng.normal(900, 30, (1, *shape)).astype(np.float32)
    target[:, rng.random(shape) < 1e-3] = 6e4  # bright pixels: the largest rounding steps
    target[:, :, :5] = 0
    bad = nodata.no_data_mask(target)
    fused = apply_correction(target, 1.0123, field, no_data=bad)
    plain = np.empty_like(target)
    bands = list(grid.row_bands(field.values[0]))
    correction._correct_rows(target[0], np.float32(1.0123), bands, bad[0], plain[0])
    assert np.array_equal(fused, plain)
    # the whole-frame formula to float32 rounding; no-data 0
    want = target[0] * np.float32(1.0123) - field.full(0)
    np.testing.assert_allclose(fused[0][~bad[0]], want[~bad[0]], rtol=1e-6, atol=1e-3)
    assert np.all(fused[bad] == 0)


def test_across_in_column_blocks_equals_one_product():
    rng = np.random.default_rng(8)
    small = rng.normal(0, 100, (56, 81)).astype(np.float32)
    weights = correction.cubic_weights(6000, 78, 2, 81).T
    blocks = correction._across(small, weights)
    whole = small @ weights
    np.testing.assert_allclose(blocks, whole, rtol=0, atol=1e-6 * np.abs(whole).max())
    tiny = correction._across(small[:4, :5], weights[:5, :100])  # under the threshold
    assert np.array_equal(tiny, small[:4, :5] @ weights[:5, :100])


@pytest.mark.parametrize("m,k,n", [(4536, 1675, 1), (1675, 1675, 3), (7, 5, 2)])
def test_one_thread_product_equals_the_product(m, k, n):
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(m, k)), rng.normal(size=(k, n))
    np.testing.assert_allclose(blas.one_thread_product(a, b), a @ b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape,size", [((400, 600), 37), ((512, 512), 40), ((300, 301), 300)])
def test_subset_by_strided_view_equals_the_index_gather(shape, size):
    rng = np.random.default_rng(10)
    image = rng.normal(size=shape).astype(np.float32)
    grid = make_sample_grid(image, size)
    m = grid.per_side
    for plane in (image, image[:, ::-1], np.asfortranarray(image)):
        block = plane[np.ix_(grid.rows, grid.cols)]
        want = block.reshape(grid.ny, m, grid.nx, m).transpose(0, 2, 1, 3).reshape(grid.n_bins, -1)
        got = grid.gather(plane)
        assert np.array_equal(got, want) and got.flags.writeable


def test_value_range_with_zeros_equals_range_and_zero_test():
    rng = np.random.default_rng(11)
    for _ in range(300):
        shape = tuple(int(v) for v in rng.integers(1, 90, int(rng.integers(2, 4))))
        data = rng.normal(size=shape).astype(rng.choice([np.float32, np.float64]))
        data = np.abs(data) + 0.1 if rng.random() < 0.5 else data
        for _ in range(int(rng.integers(0, 5))):
            data[tuple(int(rng.integers(0, s)) for s in shape)] = rng.choice(
                [np.nan, np.inf, 0.0])
        lo, hi, zero = nodata._range_and_zeros(data)
        assert np.array_equal((lo, hi), nodata._value_range(data), equal_nan=True)
        assert np.array_equal(zero, data == 0)
    big = rng.normal(5, 1, (1500, 1500)).astype(np.float32)  # two threads from 2 Mpx
    for value, where in [(0.0, (1400, 3)), (np.nan, (7, 1499)), (0.0, (10, 10))]:
        big[where] = value
        lo, hi, zero = nodata._range_and_zeros(big)
        assert np.array_equal((lo, hi), nodata._value_range(big), equal_nan=True)
        assert np.array_equal(zero, big == 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_subsampled_noise_start_and_fill_stay_within_the_mrs_tolerance(monkeypatch, seed):
    seq = simulate_sequence(1, (1300, 1700), seed=seed, border=30)
    frame = seq.frame(0).data
    fast = noise.measure_noise(frame)
    monkeypatch.setattr(noise, "SEED_STRIDE", 1)
    monkeypatch.setattr(noise, "FILL_STRIDE", 1)
    plain = noise.measure_noise(frame)
    assert fast[1] == plain[1] == "MRS"
    assert fast[0] == pytest.approx(plain[0], rel=3e-4)
    truth = float(np.median(seq.truth[0].noise_sigma))
    assert fast[0] == pytest.approx(truth, rel=0.05)


def test_median_and_mad_from_one_sort_equal_two_row_medians():
    rng = np.random.default_rng(12)
    for _ in range(300):
        n, p = int(rng.integers(1, 40)), int(rng.integers(1, 300))
        dtype = rng.choice([np.float32, np.float64])
        values = rng.normal(0, 1, (n, p)).astype(dtype)
        if rng.random() < 0.5:
            values = (np.round(values * 3) / 3).astype(dtype)  # ties
        values[rng.random(values.shape) < rng.random()] = np.nan
        med, mad = photometry.row_median_mad(values)
        want = photometry.row_median(values)
        with np.errstate(invalid="ignore"):
            want_mad = photometry.row_median(np.abs(values - want[:, None]))
        assert np.array_equal(med, want, equal_nan=True)
        assert np.array_equal(mad, want_mad, equal_nan=True)


def test_ring_fit_on_the_grid_equals_the_ring_fit():
    rng = np.random.default_rng(13)
    for _ in range(60):
        n, half = int(rng.integers(1, 60)), int(rng.integers(3, 30))
        gx, gy = (g.ravel().astype(float) for g in np.meshgrid(np.arange(-half, half + 1),
                                                               np.arange(-half, half + 1)))
        fx, fy = rng.uniform(-0.5, 0.5, n), rng.uniform(-0.5, 0.5, n)
        dx, dy = gx[None] - fx[:, None], gy[None] - fy[:, None]
        values = 1000 + 0.3 * dx + 0.2 * dy + rng.normal(0, 5, dx.shape)
        use = (np.hypot(dx, dy) > 0.5 * half) & (rng.random(dx.shape) > 0.5 * rng.random())
        v = np.where(use, values, 0.0)
        level, sig, count = photometry.ring_fit_grid(v, use, gx, gy, fx, fy)
        want_level, want_sig, want_count = photometry.ring_fit(v, use, dx, dy)
        assert np.array_equal(count, want_count)
        np.testing.assert_allclose(level, want_level, rtol=1e-13, equal_nan=True)
        np.testing.assert_allclose(sig, want_sig, rtol=1e-10, equal_nan=True)


def test_bin_statistics_on_two_threads_equal_one_pass(monkeypatch):
    from napari_nsg.core.nsg import samples

    rng = np.random.default_rng(14)
    values = rng.normal(100, 5, (3, 1201, 729)).astype(np.float32)
    values[rng.random(values.shape) < 0.05] = np.nan
    values[:, 7] = np.nan  # a bin without data
    monkeypatch.setattr(samples, "available_threads", lambda limit: 2)
    split = samples._robust_rows_threaded(values)
    for a, b in zip(split, samples.robust_rows(values)):
        assert np.array_equal(a, b, equal_nan=True)
