"""NSG on real frames: the WASP-12b sequence (../shared/data/real/wasp12b_calibrated).

Eight calibrated 1020 x 912 frames of one field, guided to within 4 px, with the
dawn sky rising from 269 to 1046 ADU. The test measures, independently of the
engine:

* the whole-frame offset of each frame from photutils DAOStarFinder stars
  centred with 2-D Gaussian fits;
* the scale as the median flux ratio of the brightest unsaturated stars
  (photutils DAOStarFinder positions, 30 px photutils apertures, 10-30 px rings);
* the large-scale background difference to the reference: a quadratic surface
  fitted to star-masked 32 px block medians of ``frame - reference``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.stats import sigma_clipped_stats
from photutils.aperture import ApertureStats, CircularAnnulus, CircularAperture, aperture_photometry
from photutils.centroids import centroid_2dg, centroid_sources
from photutils.detection import DAOStarFinder
from scipy import ndimage
from scipy.spatial import cKDTree

from napari_nsg.core.nodata import no_data_mask
from napari_nsg.core.nsg import NsgError, measure_scale, normalize_frame, prepare_reference
from napari_nsg.io import read_frame

pytestmark = pytest.mark.real

NAMES = ["wasp12b_300", "wasp12b_330", "wasp12b_360", "wasp12b_387", "wasp12b_393",
         "wasp12b_411", "wasp12b_417", "wasp12b_420"]


@pytest.fixture(scope="module")
def wasp(real_data):
    folder = real_data / "wasp12b_calibrated"
    if not folder.is_dir():
        pytest.skip(f"{folder} is missing")
    frames = {n: read_frame(folder / f"{n}.fits") for n in NAMES}
    ref = frames[NAMES[0]]
    return ref, frames, prepare_reference(ref.data, ref.meta)


def dao_stars(img: np.ndarray):
    """photutils DAOStarFinder stars, brightest first: positions and raw peaks."""
    _, med, std = sigma_clipped_stats(img, sigma=3)
    t = DAOStarFinder(fwhm=8.0, threshold=10 * std)(img - med)
    t.sort("flux", reverse=True)
    return np.column_stack([t["x_centroid"], t["y_centroid"]]), np.asarray(t["peak"]) + med


def independent_offset(ref: np.ndarray, img: np.ndarray) -> np.ndarray:
    """(dx, dy) of ``img`` relative to ``ref``: median position difference of the
    25 brightest DAOStarFinder stars and their nearest counterparts, both
    centred by 2-D Gaussian fits (photutils ``centroid_2dg``)."""
    rxy, _ = dao_stars(ref)
    txy, _ = dao_stars(img)
    d, j = cKDTree(txy).query(rxy[:25])
    rxy, txy = rxy[:25][d < 8], txy[j][d < 8]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rx, ry = centroid_sources(ref - np.median(ref), *rxy.T, box_size=21,
                                  centroid_func=centroid_2dg)
        tx, ty = centroid_sources(img - np.median(img), *txy.T, box_size=21,
                                  centroid_func=centroid_2dg)
    return np.array([np.median(tx - rx), np.median(ty - ry)])


def into_register(img: np.ndarray, off) -> np.ndarray:
    """Shift by whole pixels so that ``img`` lines up with the reference; the
    uncovered strip is no-data (0)."""
    dx, dy = (int(round(v)) for v in off)
    h, w = img.shape
    out = np.zeros_like(img)
    out[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = \
        img[max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
    return out


def bright_stars(ref: np.ndarray, n: int = 20) -> np.ndarray:
    """Positions of the brightest unsaturated stars well inside the frame."""
    xy, peak = dao_stars(ref)
    h, w = ref.shape
    ok = (peak < 0.7 * ref.max())
    ok &= (xy[:, 0] > 60) & (xy[:, 0] < w - 60) & (xy[:, 1] > 60) & (xy[:, 1] < h - 60)
    return xy[ok][:n]


def photutils_flux(img: np.ndarray, xy: np.ndarray, r: float = 30.0) -> np.ndarray:
    ap = CircularAperture(xy, r)
    ring = ApertureStats(img, CircularAnnulus(xy, r + 10, r + 30))
    return np.asarray(aperture_photometry(img, ap)["aperture_sum"]) - ring.mean * ap.area


def large_scale_rms(diff: np.ndarray, use: np.ndarray, block: int = 32) -> float:
    """RMS over the frame of a quadratic surface fitted to block medians of ``diff``."""
    h, w = diff.shape
    x, y, z = [], [], []
    for by in range(0, h - block + 1, block):
        for bx in range(0, w - block + 1, block):
            m = use[by:by + block, bx:bx + block]
            if m.mean() > 0.5:
                z.append(np.median(diff[by:by + block, bx:bx + block][m]))
                x.append((bx + block / 2) / w - 0.5)
                y.append((by + block / 2) / h - 0.5)
    x, y, z = np.array(x), np.array(y), np.array(z)
    a = np.column_stack([np.ones_like(x), x, y, x * x, x * y, y * y])
    surface = a @ np.linalg.lstsq(a, z, rcond=None)[0]
    return float(np.sqrt(np.mean(surface**2)))


def test_scale_and_background_on_registered_frames(wasp):
    ref, frames, model = wasp
    r = ref.data
    stars = bright_stars(r)
    assert len(stars) >= 10
    sky = np.median(r)
    star_free = ~ndimage.binary_dilation(r > sky + 5 * 1.4826 * np.median(np.abs(r - sky)),
                                         iterations=12)
    for name in NAMES[1:]:
        img = frames[name].data
        reg = into_register(img, independent_offset(r, img))
        res = normalize_frame(model, reg)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            independent = np.median(photutils_flux(r, stars) / photutils_flux(reg, stars))
        assert abs(res.scale[0] / independent - 1) < 0.01, (name, res.scale[0], independent)
        use = (reg != 0) & star_free
        before = large_scale_rms(reg - r, use)
        after = large_scale_rms(res.corrected - r, use)
        assert after <= 0.1 * before, (name, before, after)
        assert after < 0.2  # ADU; the pixel noise is about 17 ADU
        # no-data stays no-data (the strip; a lone 0, a dead pixel, is a value)
        assert np.all(res.corrected[no_data_mask(reg)] == 0)


def test_unregistered_frames_pair_the_right_stars(wasp):
    """Frames off by up to 4.7 px: the engine finds the offset itself, pairs only
    the right stars, and gets the same scale as from the registered frames."""
    ref, frames, model = wasp
    for name in NAMES[1:]:
        img = frames[name].data
        off = independent_offset(ref.data, img)
        raw = measure_scale(model, img)
        assert np.hypot(*(np.array(raw.offset) - off)) < 0.3, (name, raw.offset, off)
        assert np.any(["offset" in w for w in raw.warnings]) == (np.hypot(*off) > 2.0)
        tgt_xy = raw.target_stars.xy[raw.match.tgt_index]
        # every pair is the same star: once the offset is removed, the target star
        # is near its reference star (blended doubles move by up to ~3 px with the
        # seeing), and no other reference star is nearer
        d, nearest = cKDTree(model.candidates.xy).query(tgt_xy - off)
        assert np.all(d < 4.0)
        assert np.array_equal(nearest, raw.match.ref_index)
        assert raw.n_star_pairs[0] >= 30
        registered = measure_scale(model, into_register(img, off))
        assert abs(raw.scale[0] / registered.scale[0] - 1) < 0.005


def test_a_different_field_is_refused_not_paired(wasp):
    ref, frames, model = wasp
    img = frames[NAMES[3]].data
    for other in (img[::-1, ::-1].copy(), np.roll(img, 40, axis=1)):
        with pytest.raises(NsgError, match="no star of the reference was found|cannot pair"):
            measure_scale(model, other)
