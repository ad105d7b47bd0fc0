"""Multiscale median transform: the fast hybrid against the slow PCL port, invariants, no-data."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from napari_nsg.core import mmt
from napari_nsg.core.mmt import (
    MMTSizeError,
    layer_window,
    mmt_decompose,
    mmt_residual,
    mmt_residual_reference,
)
from napari_nsg.synthetic.hard_image import hard_image


@pytest.fixture(scope="module")
def image():
    return hard_image(800, 1200)


def test_windows_are_dyadic():
    assert [layer_window(j) for j in range(1, 10)] == [3, 5, 9, 17, 33, 65, 129, 257, 513]


def test_two_way_structures_match_pcl_element_counts():
    counts = {n: tuple(int(s.sum()) for s in mmt._two_way_structures(n)) for n in (3, 5, 7, 9)}
    assert counts == {3: (9, 5), 5: (21, 13), 7: (37, 29), 9: (69, 49)}


def test_fast_matches_reference_within_0p1_percent_rms(image):
    ref = mmt_residual_reference(image, 8)
    fast = mmt_residual(image, 8)
    rel = (fast - ref) / ref
    rms = float(np.sqrt(np.mean(rel**2)))
    # measured: rms 0.020 %, p99 0.08 %, max 0.18 %
    assert rms < 1e-3
    assert np.percentile(np.abs(rel), 99) < 3e-3
    # and the fast one is not trivially close: the residual is far from the input
    assert np.sqrt(np.mean(((image - ref) / ref) ** 2)) > 0.02


def test_exact_scheme_everywhere_equals_reference_above_window_9(image):
    # exact_from=4 uses PCL's scheme for every layer >= 4, like the reference;
    # the only difference left is the box medians of layers 1-3.
    a = mmt_residual(image, 6, exact_from=4)
    b = mmt_residual_reference(image, 6)
    assert np.sqrt(np.mean(((a - b) / b) ** 2)) < 5e-4


def test_decomposition_reconstructs_and_matches_residual(image):
    dec = mmt_decompose(image, 8)
    assert dec.windows == (3, 5, 9, 17, 33, 65, 129, 257)
    assert len(dec.layers) == 8
    np.testing.assert_allclose(dec.reconstruct(), image, rtol=0, atol=2e-6)
    np.testing.assert_array_equal(dec.residual, mmt_residual(image, 8))
    np.testing.assert_allclose(dec.large_scales(3), mmt_residual(image, 3), atol=2e-6)
    # stars and noise live in the layers: the residual is smooth
    assert np.std(np.diff(dec.residual, axis=1)) < 0.1 * np.std(np.diff(image, axis=1))


def test_constant_image_gives_constant_residual():
    img = np.full((300, 400), 7.25, np.float32)
    np.testing.assert_allclose(mmt_residual(img, 8), 7.25, rtol=1e-6)
    np.testing.assert_allclose(mmt_residual_reference(img, 8), 7.25, rtol=1e-6)


def test_single_bright_star_disappears_from_the_residual():
    img = np.full((512, 512), 100.0, np.float32)
    yy, xx = np.mgrid[0:512, 0:512]
    img += 5000 * np.exp(-((xx - 256.3) ** 2 + (yy - 250.7) ** 2) / (2 * 2.0**2)).astype(np.float32)
    res = mmt_residual(img, 8)
    assert np.abs(res - 100).max() < 0.01


def test_large_scale_signal_is_kept():
    h, w = 600, 900
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    smooth = 50 + 10 * np.exp(-((x - 450) ** 2 + (y - 300) ** 2) / (2 * 400.0**2))
    res = mmt_residual(smooth.astype(np.float32), 8)
    inner = (slice(100, -100), slice(100, -100))
    assert np.abs(res - smooth)[inner].max() < 0.05 * 10


def test_no_data_is_filled_before_and_restored_after(image):
    full = mmt_residual(image, 7)
    cut = image.copy()
    cut[:, :150] = 0  # a registration border
    cut[700:, 900:] = np.nan
    res = mmt_residual(cut, 7)
    assert np.all(res[:, :150] == 0)
    assert np.all(np.isnan(res[700:, 900:]))
    valid = np.isfinite(res) & (res != 0)
    assert valid.sum() == np.sum(np.isfinite(cut) & (cut != 0))
    # far from the border the large scales are those of the uncut image (zeros would
    # pull the medians down by tens of percent)
    far = (slice(0, 600), slice(400, 800))
    rel = np.abs(res[far] - full[far]) / full[far]
    assert rel.max() < 0.01
    dec = mmt_decompose(cut, 4)
    assert np.all(dec.layers[0][:, :150] == 0)
    np.testing.assert_allclose(dec.reconstruct()[valid], cut[valid], atol=2e-6)


def test_colour_is_per_channel(image):
    rgb = np.stack([image, image * 2, image + 1])
    res = mmt_residual(rgb, 5)
    assert res.shape == rgb.shape
    np.testing.assert_array_equal(res[1], mmt_residual(image * 2, 5))


def test_too_small_for_the_layers_is_a_clear_error():
    with pytest.raises(MMTSizeError, match=r"400x200 px: too small for 8 .*at most 7 layers"):
        mmt_residual(np.ones((200, 400), np.float32), 8)
    with pytest.raises(MMTSizeError, match="at least 1"):
        mmt_residual(np.ones((200, 400), np.float32), 0)


def test_linear_borders_keep_a_gradient_up_to_the_edges():
    h, w = 600, 800
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (1000 + 0.2 * x - 0.15 * y).astype(np.float32)
    noisy = ramp + np.random.default_rng(4).normal(0, 2, (h, w)).astype(np.float32)
    lin = mmt_residual(noisy, 7, border="linear")
    mir = mmt_residual(noisy, 7, border="mirror")
    # mirrored borders fold the ramp back: the large scales flatten near the edges
    # (measured: max error 12.7 mirrored, 1.08 linear, 0.33 inside for both; noise sigma 2)
    assert np.abs(mir - ramp).max() > 10
    assert np.abs(lin - ramp).max() < 2.0
    assert np.abs(lin - ramp)[100:-100, 100:-100].max() < 0.5
    with pytest.raises(ValueError, match="unknown border"):
        mmt_residual(noisy, 3, border="wrap")


def test_decomposition_with_linear_borders_is_what_msgr_removes(image):
    """The layers shown (border="linear") are the layers MSGR removes: same residual."""
    from napari_nsg.core.msgr import large_scales

    dec = mmt_decompose(image, 5, border="linear")
    np.testing.assert_array_equal(dec.residual, large_scales(image, 5))
    np.testing.assert_allclose(dec.reconstruct(), image, rtol=0, atol=2e-6)
    mirror = mmt_decompose(image, 5)
    # a gradient keeps its slope up to the edges only with linear borders
    edge = np.s_[:, :16]
    assert not np.allclose(dec.residual[edge], mirror.residual[edge], rtol=1e-3)
    with pytest.raises(ValueError, match="unknown border"):
        mmt_decompose(image, 5, border="wrap")


# --------------------------------------------------------------------------- fast paths


def test_partition_median_equals_scipy_two_way_median():
    rng = np.random.default_rng(7)
    small = rng.normal(100, 5, (150, 223)).astype(np.float32)
    for n in (3, 5, 9):
        np.testing.assert_array_equal(mmt._two_way_median_fast(small, n), mmt._two_way_median(small, n))
    # both signs, ties, tiny and huge values: the integer keys keep the order of the floats
    mixed = np.concatenate([rng.normal(0, 1e-30, (40, 223)), rng.integers(-3, 3, (40, 223)),
                            rng.normal(0, 1e30, (40, 223))]).astype(np.float32)
    np.testing.assert_array_equal(mmt._two_way_median_fast(mixed, 9), mmt._two_way_median(mixed, 9))
    x = np.array([-np.inf, -3e38, -2, -1, -1e-40, 0, 1e-40, 1, 2, 3e38, np.inf], np.float32)
    keys = mmt._order_keys(x)
    assert np.all(np.diff(keys) > 0)
    np.testing.assert_array_equal(mmt._order_keys(keys).view(np.float32), x)
    tiny = small[:4, :6]  # too small to pad by 4: falls back to scipy
    np.testing.assert_array_equal(mmt._two_way_median_fast(tiny, 9), mmt._two_way_median(tiny, 9))


def test_blocked_keys_upsampling_equals_the_sparse_rows():
    rng = np.random.default_rng(8)
    # values near 0 with both signs: PCL's linear clamping acts on many pixels
    src = rng.normal(0, 1, (37, 90)).astype(np.float32)
    inner, outer, inner_sum = mmt._keys_matrices(37, 1500)
    ref = mmt._keys_rows(inner, outer, inner_sum, src, mmt._CLAMP)
    fast = mmt._keys_upsample_rows(src, 1500)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(mmt._keys_upsample_rows(src, 1500, crop=20), ref[20:-20], atol=1e-6)


@pytest.mark.parametrize("kind", ["cubic", "keys"])
@pytest.mark.parametrize("offset", [100.0, 0.0])
def test_decimating_a_coarse_layer_equals_decimating_its_full_image(kind, offset):
    """The composed operators give the numbers of the full-size path (offset 0: clamp acts)."""
    rng = np.random.default_rng(9)
    small = (offset + cv2.GaussianBlur(rng.normal(0, 3, (61, 83)), (0, 0), 2)).astype(np.float32)
    coarse = mmt._Coarse(small, (800, 1100), kind)
    fr = 0 if kind == "cubic" else 21
    via_small = mmt._decimate(coarse, 29, 40, fr)
    via_full = mmt._decimate(coarse.full(), 29, 40, fr)
    scale = np.abs(via_full).max()
    np.testing.assert_allclose(via_small, via_full, rtol=0, atol=2e-6 * scale)
    if kind == "keys":
        assert mmt._keys_linear_everywhere(small, 800) == (offset > 0)


def test_keys_upsampling_without_the_clamp_where_it_cannot_act_is_unchanged():
    """Blocks whose source rows are positive and smooth skip PCL's clamp: the same numbers."""
    rng = np.random.default_rng(10)
    src = (100 + cv2.GaussianBlur(rng.normal(0, 3, (37, 90)), (0, 0), 2)).astype(np.float32)
    src[25:] -= 100  # values about 0 there: the clamp acts in those blocks
    j1, w = mmt._keys_taps(37, 1500)
    skipped = [not mmt._clamp_may_act(*(src[np.clip(j + d, 0, 36)] for d in (-1, 0, 1, 2)),
                                      w[j1 == j], mmt._CLAMP) for j in np.unique(j1)]
    assert 0 < sum(skipped) < len(skipped)  # both paths are taken
    inner, outer, inner_sum = mmt._keys_matrices(37, 1500)
    ref = mmt._keys_rows(inner, outer, inner_sum, src, mmt._CLAMP)
    np.testing.assert_allclose(mmt._keys_upsample_rows(src, 1500), ref, rtol=0, atol=2e-5)



@pytest.mark.parametrize("shape", [(400, 600), (403, 601)])
def test_binned_extension_is_the_binned_linear_padding(image, shape):
    """Aligned bins are assembled from the strips; the result is that of binning the padding."""
    c = np.ascontiguousarray(image[: shape[0], : shape[1]])
    full = mmt._pad_linear(c, 64)
    expect = cv2.resize(full, (-(-full.shape[1] // 4), -(-full.shape[0] // 4)),
                        interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(mmt._binned_extended(c, 64, 4), expect)


def test_binned_residual_is_close_to_the_full_one_on_a_smooth_image():
    yy, xx = np.mgrid[0:512, 0:768].astype(np.float32)
    smooth = 500 + 0.2 * xx + 0.1 * yy + 40 * np.exp(-((xx - 300) ** 2 + (yy - 200) ** 2) / 2e4)
    smooth = smooth.astype(np.float32)
    full = mmt_residual(smooth, 7, border="linear")
    binned = mmt.mmt_residual_binned(smooth, 7, 4, border="linear")
    # measured: max 4.7e-3, rms 4e-4 of the range (the bump's curvature is at the last windows)
    assert np.abs(binned - full).max() < 1e-2 * np.ptp(full)
    assert np.sqrt(np.mean((binned - full) ** 2)) < 1e-3 * np.ptp(full)
    np.testing.assert_array_equal(mmt.mmt_residual_binned(smooth, 7, 1, border="linear"), full)
    with pytest.raises(ValueError, match="power of 2"):
        mmt.mmt_residual_binned(smooth, 7, 3)


# --------------------------------------------------------------------------- fused first layers


def _layer_by_layer(c: np.ndarray, p: int, n_layers: int) -> np.ndarray | mmt._Coarse:
    x = mmt._pad_linear(c, p) if p else c
    for j in range(1, n_layers + 1):
        x = mmt._layer_fast(x, j, mmt.EXACT_FROM)
    return x


@pytest.mark.parametrize("p", [0, 64])
def test_first_three_layers_in_bands_equal_the_layer_by_layer_path(image, p, monkeypatch):
    """Bands of 64 rows with their halo, the extension built band by band: the same values."""
    c = np.ascontiguousarray(image[:517, :733])  # band edges fall anywhere
    expect = _layer_by_layer(c, p, 3)
    got = mmt._first_three_layers(c, p)
    assert got.shape == expect.shape and got.kind == expect.kind == "cubic"
    np.testing.assert_array_equal(got.small, expect.small)
    assert len(mmt._bands(c.shape[0] + 2 * p, mmt._FRONT_BAND_ROWS)) > 5
    monkeypatch.setattr(mmt, "_THREADS", 1)  # the order of the bands does not matter
    np.testing.assert_array_equal(mmt._first_three_layers(c, p).small, expect.small)


def test_extended_rows_are_rows_of_the_linear_padding(image):
    c = np.ascontiguousarray(image[:300, :400])
    full = mmt._pad_linear(c, 64)
    strips = mmt._linear_strips(c, 64)
    for a, b in [(0, 10), (60, 70), (0, 428), (100, 200), (360, 428), (300, 428), (63, 365)]:
        np.testing.assert_array_equal(mmt._extended_rows(c, 64, strips, a, b), full[a:b])


def test_banded_median_blur_equals_opencv():
    rng = np.random.default_rng(11)
    img = rng.normal(100, 5, (1100, 1000)).astype(np.float32)
    assert img.size >= mmt._THREAD_MIN_PIXELS  # the banded path
    for n in (3, 5):
        np.testing.assert_array_equal(mmt._median_blur(img, n), cv2.medianBlur(img, n))


def test_edge_median_equals_scipy():
    from scipy import ndimage

    rng = np.random.default_rng(12)
    for band in (rng.normal(0, 1, (333, 16)), rng.integers(0, 3, (40, 7)), np.ones((3, 16))):
        band = band.astype(np.float32)  # (ties; shorter than the window)
        np.testing.assert_array_equal(
            mmt._edge_median(band), ndimage.median_filter(band, size=(9, 1), mode="nearest"))
    # the 0-1 principle: a comparator network that selects the median of every 0/1
    # sequence selects it for any input; all 512 sequences of 9 as 9 rows of one band
    bits = ((np.arange(512)[None, :] >> np.arange(9)[:, None]) & 1).astype(np.float32)
    v = [bits[i] for i in range(9)]
    for a, b in mmt._MEDIAN9_NETWORK:
        v[a], v[b] = np.minimum(v[a], v[b]), np.maximum(v[a], v[b])
    np.testing.assert_array_equal(v[4], (bits.sum(axis=0) >= 5).astype(np.float32))


@pytest.mark.parametrize("border", ["mirror", "linear"])
def test_residual_equals_the_layer_by_layer_path(image, border):
    """mmt_residual (fused first layers, residual written in place) = the unfused composition."""
    c = np.ascontiguousarray(image[:600, :900])
    p = mmt._pad_width(c.shape, 8) if border == "linear" else 0
    expect = mmt._full(_layer_by_layer(c, p, 8), p)
    np.testing.assert_array_equal(mmt_residual(c, 8, border=border), expect)
    rgb = np.stack([c, 2 * c, c[::-1]])
    got = mmt_residual(rgb, 8, border=border)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got[0], expect)
    np.testing.assert_array_equal(got[2], mmt_residual(np.ascontiguousarray(c[::-1]), 8,
                                                       border=border))


def test_linear_borders_with_no_data_use_the_strips_of_the_filled_image(image):
    """The strips computed beside the no-data check are redone from the filled image."""
    cut = np.ascontiguousarray(image[:600, :900])
    cut[:, :40] = 0  # a registration border, on the edge the strips start from
    c, bad = mmt._prepared(cut)
    assert bad is not None and bad[:, :40].all()
    p = mmt._pad_width(c.shape, 8)
    expect = mmt._full(_layer_by_layer(c, p, 8), p).copy()
    expect[bad] = 0
    got = mmt_residual(cut, 8, border="linear")
    np.testing.assert_array_equal(got, expect)
    # the strips of the unfilled image would have started from the zeros
    assert not np.array_equal(mmt._linear_strips(cut, p)[1], mmt._linear_strips(c, p)[1])
