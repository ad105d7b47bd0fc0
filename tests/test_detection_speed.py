"""The cheaper star detection (issue 11) finds what the detection of f696fb7 found.

``_detect_as_before`` is the oracle: the steps of ``detect_stars`` that changed, as they
were (sep's mask always given, the no-data fill by ``np.median``, the edge rule by a
dilation of the whole no-data mask).
"""

from __future__ import annotations

import numpy as np
import pytest
import sep
from scipy import ndimage

from napari_nsg.core.nodata import no_data_mask
from napari_nsg.core.stars import detect_stars
from napari_nsg.core.stars.detection import fast_median, intensity, near_no_data
from napari_nsg.io import read_frame
from napari_nsg.synthetic import simulate_pair

EDGE = 3
POSITION_TOLERANCE = 1e-3  # px


def _detect_as_before(image: np.ndarray, threshold: float = 5.0):
    """``(x, y, flux, background)`` of the kept objects, brightest first, as f696fb7."""
    image = np.ascontiguousarray(image, dtype=np.float32)
    bad = no_data_mask(image)
    work = image.copy()
    if bad.any():
        work[bad] = np.median(image[~bad])
    size = int(max(8, min(64, min(image.shape) // 2)))
    bkg = sep.Background(work, mask=bad, bw=size, bh=size, fw=3, fh=3)
    back = bkg.back()
    sep.set_extract_pixstack(2_000_000)
    obj = sep.extract(work - back, threshold, err=float(bkg.globalrms), mask=bad, minarea=5,
                      deblend_cont=0.005)
    x, y = obj["x"], obj["y"]
    h, w = image.shape
    keep = (x >= EDGE) & (y >= EDGE) & (x <= w - 1 - EDGE) & (y <= h - 1 - EDGE)
    keep &= (obj["flux"] > 0) & ((obj["flag"] & sep.OBJ_TRUNC) == 0)
    ix = np.clip(np.round(x).astype(int), 0, w - 1)
    iy = np.clip(np.round(y).astype(int), 0, h - 1)
    if bad.any():
        keep &= ~ndimage.binary_dilation(bad, iterations=EDGE)[iy, ix]
    order = np.argsort(-obj["flux"][keep])
    return (x[keep][order], y[keep][order], obj["flux"][keep][order],
            back[iy, ix][keep][order])


def _with_no_data(image: np.ndarray) -> np.ndarray:
    """A copy with a NaN wedge and a zero band on the border (as a registered frame has)."""
    out = np.array(image, dtype=np.float32)
    h, w = out.shape
    yy, xx = np.mgrid[:h, :w]
    out[xx < 0.1 * w + 0.15 * yy] = np.nan
    out[: h // 10] = 0.0
    return out


def _assert_same_stars(image: np.ndarray) -> int:
    x, y, flux, back = _detect_as_before(image)
    new = detect_stars(image, threshold=5.0)
    assert len(new) == len(x) > 10
    assert np.max(np.abs(new.x - x)) < POSITION_TOLERANCE
    assert np.max(np.abs(new.y - y)) < POSITION_TOLERANCE
    np.testing.assert_allclose(new.flux, flux, rtol=1e-6)
    np.testing.assert_allclose(new.background, back, rtol=1e-6)
    return len(new)


@pytest.fixture(scope="module")
def simulated() -> np.ndarray:
    pair = simulate_pair((600, 800), scale_ratio=3.0, seed=7, n_bright=6, saturation=20000.0)
    return np.asarray(pair.narrow, dtype=np.float32)


def test_same_stars_as_before_on_a_simulated_frame(simulated):
    _assert_same_stars(simulated)


def test_same_stars_as_before_with_no_data_border(simulated):
    image = _with_no_data(simulated)
    n = _assert_same_stars(image)
    # the edge rule dropped stars near the no-data (else the test would not exercise it)
    assert n < len(detect_stars(simulated, threshold=5.0))


@pytest.mark.real
@pytest.mark.parametrize("name", ["wasp12b_calibrated/wasp12b_300.fits", "single/m13.fits",
                                  "seestar_m94/Light_M 94_10.0s_IRCUT_20250326-212046.fit"])
def test_same_stars_as_before_on_real_frames(real_data, name):
    image = np.asarray(read_frame(real_data / name).data, dtype=np.float32)
    _assert_same_stars(image)
    _assert_same_stars(_with_no_data(image))


@pytest.mark.parametrize("edge", [1, 2, 3, 4])
def test_near_no_data_is_the_dilated_mask_at_the_stars(edge):
    rng = np.random.default_rng(edge)
    bad = rng.random((60, 80)) < 0.01
    bad[:, :2] = True  # a border region too
    iy, ix = np.mgrid[:60, :80].reshape(2, -1)
    expected = ndimage.binary_dilation(bad, iterations=edge)[iy, ix]
    np.testing.assert_array_equal(near_no_data(bad, ix, iy, edge), expected)


@pytest.mark.parametrize("n", [1, 6, 199_999, 200_000, 200_001, 1_000_000, 1_000_001])
def test_fast_median_is_numpys_median(n):
    rng = np.random.default_rng(n)
    for values in (rng.normal(1000.0, 30.0, n), rng.integers(0, 4, n),  # ties at the middle
                   rng.exponential(1.0, n), np.full(n, 5.0)):
        values = values.astype(np.float32)
        assert fast_median(values.copy()) == float(np.median(values))


def test_fast_median_falls_back_when_the_sample_misses_the_middle():
    # the strided sample sees only the low half: the bracket fails its check
    values = np.zeros(400_000, np.float32)
    values[1::2] = np.arange(200_000) + 10.0
    values[::2] = -np.arange(200_000, dtype=np.float32)
    values[::20] = -1e6
    assert fast_median(values.copy()) == float(np.median(values))


def _intensity_as_before(data: np.ndarray) -> np.ndarray:
    """f696fb7's colour intensity: masks of every channel, then the mean."""
    data = np.asarray(data, dtype=np.float32)
    finite = np.isfinite(data)
    valid = ~np.any(no_data_mask(data), axis=0)
    mean = np.mean(np.where(finite, data, 0), axis=0, dtype=np.float32)
    out = np.where(valid, mean, 0).astype(np.float32)
    out[~finite.all(axis=0)] = np.nan
    return out


def _colour_cases() -> dict:
    rng = np.random.default_rng(3)
    clean = 800.0 + 20.0 * rng.standard_normal((3, 120, 160)).astype(np.float32)
    mixed = clean.copy()
    mixed[1, 10:40, 30:70] = np.nan  # NaN in one channel
    mixed[2, :20] = 0.0  # a zero band (no-data) in another
    mixed[0, 60, 60] = np.inf
    mixed[0, 90, 90] = 0.0  # a lone zero: a value
    border = clean.copy()
    border[:, :, :20] = 0.0
    return {"clean": clean, "mixed": mixed, "zero border": border,
            "not contiguous": np.transpose(clean, (0, 2, 1)),
            "float64": clean.astype(np.float64), "two channels": mixed[:2].copy()}


@pytest.mark.parametrize("case", ["clean", "mixed", "zero border", "not contiguous", "float64",
                                  "two channels"])
def test_colour_intensity_is_as_before(case):
    data = _colour_cases()[case]
    new, old = intensity(data), _intensity_as_before(data)
    assert new.dtype == np.float32 and new.shape == old.shape
    np.testing.assert_array_equal(new, old)  # NaN where NaN, 0 where no data, the same means
    if case == "mixed":
        assert np.isnan(new[20, 40]) and new[5, 5] == 0.0 and np.isnan(new[60, 60])
        assert new[90, 90] != 0.0


@pytest.mark.parametrize("max_stars", [20, 10_000])
def test_quick_threshold_is_the_two_searches_of_before(simulated, max_stars):
    """One background map for both searches: the quick search's stars when it found
    ``max_stars``, else the full search's, as two calls of ``detect_stars`` gave."""
    image = _with_no_data(simulated)
    quick = detect_stars(image, threshold=12.0, max_stars=max_stars)
    full = detect_stars(image, threshold=5.0, max_stars=max_stars)
    both = detect_stars(image, threshold=5.0, quick_threshold=12.0, max_stars=max_stars)
    expected = quick if len(quick) >= max_stars else full
    assert len(both) == len(expected)
    # the two searches differ (fluxes: the isophote moves with the threshold), so the test can fail
    assert len(quick) != len(full) or not np.array_equal(quick.flux, full.flux)
    for name in ("x", "y", "flux", "raw_peak", "background", "npix"):
        np.testing.assert_array_equal(getattr(both, name), getattr(expected, name))
