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


# --- issue 13, the scale stage (fifth round) -----------------------------------------


def _one_star_reference(plane, x, y, r, gap, width):
    """Aperture photometry of one star on its whole square stamp, the plain way: the
    sub-pixel weights, the ring and the ring's plane (``ring_statistics``) on every
    pixel of the square (the old code's layout), no-data as NaN."""
    half = int(np.ceil(r + gap + width + 1.0))
    cx, cy = int(np.round(x)), int(np.round(y))
    h, w = plane.shape
    if cy - half < 0 or cx - half < 0 or cy + half >= h or cx + half >= w:
        return None  # the reference covers whole stamps only
    st = plane[cy - half: cy + half + 1, cx - half: cx + half + 1].astype(np.float64)
    offs = np.arange(-half, half + 1)
    dx, dy = offs[None, :] - (x - cx), offs[:, None] - (y - cy)
    dist = np.sqrt(dy * dy + dx * dx)
    weight = np.clip(r + 0.5 - dist, 0.0, 1.0)
    ring = (dist >= r + gap) & (dist <= r + gap + width)
    vals = np.where(ring, st, np.nan)[None].reshape(1, -1)
    bdx, bdy = np.broadcast_to(dx, st.shape).reshape(1, -1), np.broadcast_to(dy, st.shape).reshape(1, -1)
    level, sig, count = photometry.ring_statistics(vals, bdx, bdy)
    in_ap = weight > 0
    if not np.all(np.isfinite(st[in_ap])):
        return None
    flux = float((st * weight).sum() - level[0] * weight.sum())
    return flux, float(level[0]), float(sig[0]), int(count[0]), float(st[in_ap].max())


def test_pair_photometry_on_pixel_lists_equals_whole_stamps():
    """Both frames in one pass, on the annulus' and the disc's pixels only = each star
    measured on its whole square stamp (the fluxes to float64 rounding, the same ring
    pixel counts, peaks and validity), also with stars at the edges and on no-data."""
    rng = np.random.default_rng(21)
    shape = (300, 420)
    frames = [rng.normal(500, 10, shape).astype(np.float32) for _ in range(2)]
    n = 60
    x, y = rng.uniform(-5, shape[1] + 5, n), rng.uniform(-5, shape[0] + 5, n)
    for f, amp in zip(frames, (1.0, 1.3)):
        yy, xx = np.mgrid[: shape[0], : shape[1]]
        for k in range(n):
            f += (amp * rng.uniform(200, 5000) * np.exp(-((xx - x[k]) ** 2 + (yy - y[k]) ** 2)
                                                        / 8.0)).astype(np.float32)
    frames[1][100:130, 200:260] = np.nan  # no-data in the target only
    tx, ty = x + rng.uniform(-0.5, 0.5, n), y + rng.uniform(-0.5, 0.5, n)
    radius = rng.uniform(3.0, 9.0, n)
    width = rng.uniform(4.0, 12.0, n)
    ref_ph, tgt_ph = photometry.pair_photometry(frames[0], frames[1], x, y, tx, ty, radius,
                                                gap=2.0, width=width, marked=True)
    singles = [photometry.aperture_photometry(f, px, py, radius, gap=2.0, width=width,
                                              marked=True)
               for f, px, py in ((frames[0], x, y), (frames[1], tx, ty))]
    checked = 0
    for ph, single, f, px, py in ((ref_ph, singles[0], frames[0], x, y),
                                  (tgt_ph, singles[1], frames[1], tx, ty)):
        assert np.array_equal(ph.valid, single.valid)  # the fluxes: other pixel lists' sums
        np.testing.assert_allclose(ph.flux, single.flux, rtol=1e-12, equal_nan=True)
        assert list(ph.reason) == list(single.reason)
        for k in range(n):
            want = _one_star_reference(f, px[k], py[k], radius[k], 2.0, width[k])
            if want is None:
                continue
            checked += 1
            assert ph.valid[0, k] == (want[0] > 0 and want[3] >= photometry.MIN_RING_PIXELS)
            if not ph.valid[0, k]:
                assert ph.reason[k] == "flux not positive"
                continue
            assert ph.flux[0, k] == pytest.approx(want[0], rel=1e-12, abs=1e-7)
            assert ph.background[0, k] == pytest.approx(want[1], rel=1e-13)
            assert ph.background_sigma[0, k] == pytest.approx(want[2], rel=1e-10)
            assert ph.peak[0, k] == want[4]
        # stars whose aperture leaves the frame or meets no-data are invalid, with a reason
        edge = ~ph.valid[0]
        assert edge.any() and all(ph.reason[edge])
    assert checked > 60


def test_calibration_median_is_numpys():
    from napari_nsg.core.nsg.scale import _median

    rng = np.random.default_rng(23)
    for _ in range(2000):
        v = rng.normal(0, 1, int(rng.integers(1, 400))) * 10.0 ** rng.integers(-6, 6)
        if rng.random() < 0.3:
            v = np.round(v, 1)  # ties
        assert _median(v) == float(np.median(v))


def test_guided_search_on_the_centre_crop_equals_the_whole_stamp():
    """The 3x3 smoothing on the crop the search reads = on the whole stamp: the same
    brightest pixel, its value and its neighbours (so the same stars found)."""
    from napari_nsg.core.stars import matching

    rng = np.random.default_rng(24)
    for search in (1.0, 2.0, 2.5, 6.0):
        half = int(np.ceil(search)) + 5 + 3
        n = 200
        stamps = rng.normal(0, 1, (n, 2 * half + 1, 2 * half + 1)).astype(np.float32)
        stamps[rng.random(stamps.shape) < 0.03] = np.nan
        fx, fy = rng.uniform(-0.5, 0.5, n), rng.uniform(-0.5, 0.5, n)
        py, px, best, smooth = matching._search_maximum(stamps, fx, fy, search)
        whole = matching._box3(stamps)
        offs = np.arange(-half, half + 1)
        ddx, ddy = offs[None, None, :] - fx[:, None, None], offs[None, :, None] - fy[:, None, None]
        in_search = (ddx**2 + ddy**2) <= (search + 0.5) ** 2
        flat = np.where(in_search & np.isfinite(whole), whole, -np.inf).reshape(n, -1)
        k = np.argmax(flat, axis=1)
        wy, wx = np.unravel_index(k, whole.shape[1:])
        assert np.array_equal(py, wy) and np.array_equal(px, wx)
        assert np.array_equal(best, flat[np.arange(n), k])
        edge = half - smooth.shape[1] // 2
        for dy in (-1, 0, 1):  # the neighbours the local-maximum test reads
            for dx in (-1, 0, 1):
                a = smooth[np.arange(n), py - edge + dy, px - edge + dx]
                b = whole[np.arange(n), py + dy, px + dx]
                assert np.array_equal(a, b, equal_nan=True)


def test_prepared_target_normalizes_as_the_plain_target():
    """``prepare_target`` (no-data and noise on the reading thread of a batch) then
    ``normalize_frame`` = ``normalize_frame`` on the array, bit for bit, also with a
    zero border (no-data) and the target's own copy overwritten."""
    from napari_nsg.core.nsg import normalize_frame, prepare_reference, prepare_target

    seq = simulate_sequence(2, (700, 900), seed=31, border=25)
    ref, target = (np.asarray(seq.frame(k).data, np.float32) for k in range(2))
    assert np.count_nonzero(target == 0) > 1000  # the registration border
    model = prepare_reference(ref)
    plain = normalize_frame(model, target.copy())
    for with_noise in (False, True):
        work = target.copy()
        prep = prepare_target(model, work, overwrite_input=True, with_noise=with_noise)
        assert (prep.noises is not None) == with_noise
        assert np.isnan(prep.chans[0][target == 0]).all()
        res = normalize_frame(model, prep)
        assert np.shares_memory(res.corrected, work)  # written into the caller's array
        assert np.array_equal(res.corrected, plain.corrected, equal_nan=True)
        assert np.array_equal(res.scale, plain.scale)
        assert res.weight == plain.weight and np.array_equal(res.noise, plain.noise)


def test_newton_scale_solve_is_the_bounded_search_minimum():
    """Newton's steps in log m land on the minimum SciPy's bounded search finds with a
    tight tolerance (to 1e-8), over random pair sets; where a step cannot be trusted
    the search itself answers."""
    from scipy.optimize import minimize_scalar

    from napari_nsg.core.nsg import scale

    rng = np.random.default_rng(33)
    for _ in range(200):
        n = int(rng.integers(5, 500))
        x = rng.lognormal(8.0, 1.2, n)
        m_true = rng.uniform(0.5, 2.0)
        vx = (0.01 * x) ** 2 + rng.uniform(10, 1000, n)
        vy = (0.01 * m_true * x) ** 2 + rng.uniform(10, 1000, n)
        y = m_true * x + rng.normal(0, np.sqrt(vy + m_true**2 * vx))
        crowd = rng.uniform(0, 0.5, n) * (rng.random(n) < 0.2)
        psi, k, s = rng.uniform(0, 1, n), rng.uniform(1, 2), rng.uniform(0, 0.01)
        start = m_true * rng.uniform(0.9, 1.1)

        def cost(logm, x=x, y=y, vx=vx, vy=vy, k=k, s=s, crowd=crowd, psi=psi):
            mm = np.exp(logm)
            return float(np.sum(psi * (y - mm * x) ** 2
                                / scale._variance(mm, x, y, vx, vy, k, s, crowd)))

        best = np.exp(minimize_scalar(cost, bounds=(np.log(start) - 0.7, np.log(start) + 0.7),
                                      method="bounded", options={"xatol": 1e-12}).x)
        newton = scale._newton_minimum(x, y, vx, vy, k, s, crowd, psi, start)
        assert newton is not None
        assert newton == pytest.approx(best, rel=1e-8)
    # no pair has weight: no curvature, the bounded search answers
    zero = np.zeros(5)
    ones = np.ones(5)
    assert scale._newton_minimum(ones, ones, ones, ones, 1.0, 0.0, zero, zero, 1.0) is None
    assert np.isfinite(scale._solve(ones, ones, ones, ones, 1.0, 0.0, zero, zero, 1.0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dilation_by_distance_transform_equals_binary_dilation(seed):
    """The noise's no-data margin (one L1 distance transform) = ``iterations``
    4-neighbour dilations (SciPy), also for masks touching the edges."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    for _ in range(30):
        shape = tuple(rng.integers(5, 160, 2))
        mask = rng.random(shape) < rng.choice([0.002, 0.02, 0.3])
        mask[:, : rng.integers(0, 12)] = True  # a registration border on one side
        iterations = int(rng.integers(1, 40))
        want = ndimage.binary_dilation(mask, ndimage.generate_binary_structure(2, 1),
                                       iterations=iterations)
        assert np.array_equal(noise._dilate(mask, iterations), want)


def test_border_regions_shortcut_equals_the_labelling():
    """A frame whose zeros are all kept border regions returns its zero mask as the
    no-data mask (no pass over the fill mask); with a lone edge zero (a region too
    small) the fill mask is read. Both = labelling every zero region."""
    from scipy import ndimage

    rng = np.random.default_rng(5)
    data = rng.normal(500, 20, (300, 400)).astype(np.float32)
    data[:, :17] = 0  # a registration border
    data[-9:, 200:] = 0
    want_border = np.zeros(data.shape, bool)
    want_border[:, :17] = True
    want_border[-9:, 200:] = True
    assert np.array_equal(nodata.no_data_mask(data), want_border)
    for y, x in ((0, 300), (150, 150)):  # a lone clipped zero on the edge, then inside
        data[y, x] = 0
        labels, n = ndimage.label(data == 0)
        sizes = ndimage.sum(np.ones(data.shape), labels, np.arange(1, n + 1))
        want = np.isin(labels, 1 + np.flatnonzero(sizes >= nodata.MIN_BORDER_REGION))
        assert np.array_equal(want, want_border)
        assert np.array_equal(nodata.no_data_mask(data), want)


def test_target_pixels_gathered_first_give_the_same_samples():
    """``measure_samples`` with the target's pixels gathered beforehand (a batch's
    reading thread) = gathering them itself, bit for bit."""
    from napari_nsg.core.nsg import prepare_reference
    from napari_nsg.core.nsg.engine import no_data_as_nan
    from napari_nsg.core.nsg.samples import measure_samples, target_pixels

    seq = simulate_sequence(2, (600, 800), seed=8, border=20)
    ref, target = (np.asarray(seq.frame(k).data, np.float32) for k in range(2))
    model = prepare_reference(ref)
    chans, _ = no_data_as_nan(target[np.newaxis])
    pixels = target_pixels(model.grid, chans, marked=True)
    assert not pixels.ok.all()  # the border's bins are dropped
    a = measure_samples(model.grid, chans, [1.07], marked=True)
    b = measure_samples(model.grid, chans, [1.07], marked=True, pixels=pixels)
    for name in ("x", "y", "values", "sigma"):
        assert np.array_equal(getattr(a, name), getattr(b, name))


def test_support_by_the_largest_significance_equals_the_per_layer_test():
    """The MRS step's pixels outside the support from one map, the largest |w_j| / s_j
    (``noise._significance``) = every layer's ``|w_j| < k sigma s_j`` (the per-layer test
    it replaced), on the starlet layers of simulated tiles at several sigmas."""
    responses, _ = noise.layer_responses()
    rng = np.random.default_rng(11)
    for seed in range(3):
        seq = simulate_sequence(1, (300, 340), seed=seed)
        tile = np.asarray(seq.frame(0).data, np.float32)
        layers, _ = noise._layers(tile, noise.N_LAYERS)
        use = rng.random(tile.shape) > 0.05
        per_layer = [np.abs(w) for w in layers]
        significance = noise._significance([w.copy() for w in layers], responses, use)
        noise_sigma = noise.measure_noise(tile)[0]
        for sigma in (0.5 * noise_sigma, noise_sigma, 2 * noise_sigma):
            want = use.copy()
            for mag, r in zip(per_layer, responses):
                want &= mag < noise.K_SIGMA * sigma * r
            got = significance < np.float32(noise.K_SIGMA * sigma)
            assert np.count_nonzero(got != want) <= 1e-5 * got.size  # float32 rounding at most
            assert 0.05 < got.mean() < 0.99  # pixels on both sides of the threshold


def test_no_data_mask_made_in_the_callers_array_equals_the_plain_one():
    """``prepare_target(mask_out=)`` (a batch's shared slot): the same mask; it is the
    given array for a registered frame (zero border only), a new one otherwise."""
    from napari_nsg.core.nsg import prepare_reference, prepare_target

    seq = simulate_sequence(2, (400, 500), seed=13, border=15)
    ref, target = (np.asarray(seq.frame(k).data, np.float32) for k in range(2))
    model = prepare_reference(ref)
    variants = {"border": target}
    holed = target.copy()
    holed[200, 250] = np.nan  # a NaN: the mask is the zero regions or'ed with it
    holed[100, 100] = 0  # and a lone zero inside (a value)
    variants["holed"] = holed
    for name, frame in variants.items():
        plain = prepare_target(model, frame.copy())
        out = np.ones((1, *frame.shape), bool)  # garbage: the scan must overwrite it
        prep = prepare_target(model, frame.copy(), mask_out=out)
        assert np.array_equal(prep.no_data, plain.no_data), name
        assert np.shares_memory(prep.no_data, out) == (name == "border"), name
        assert np.array_equal(prep.chans, plain.chans, equal_nan=True), name
