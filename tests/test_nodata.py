"""No-data conventions on real-camera frames (issue 12, items 3 and 6)."""

import warnings

import numpy as np
import pytest
from astropy.io import fits

from napari_nsg.core.reference import corner_box_slices, corner_gradients
from napari_nsg.io import read_frame, write_frame
from napari_nsg.pipeline.rank import measure_frame

PLANE = (1000.0, 0.2, 0.1)  # sky + d/dx + d/dy, ADU


def _plane_frame(shape=(400, 600), noise=5.0, seed=1):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    sky = PLANE[0] + PLANE[1] * xx + PLANE[2] * yy
    return (sky + rng.normal(0, noise, shape)).astype(np.float32)


def _plane_diagonals(shape):
    """The corner-box differences of the noiseless plane (the truth)."""
    where = corner_box_slices(shape)

    def level(key):
        r, c = where[key]
        return PLANE[1] * (c.start + c.stop - 1) / 2 + PLANE[2] * (r.start + r.stop - 1) / 2

    return (level("bottom_right") - level("top_left"),
            level("top_right") - level("bottom_left"))


def test_corner_gradients_slide_off_a_large_no_data_border():
    data = _plane_frame()
    d1, d2 = _plane_diagonals(data.shape)
    data[:, :250] = 0  # a registration border: 42 % of the columns, 2 corner boxes empty
    data[:120, :] = 0
    g = corner_gradients(data)
    assert g.diagonal_1[0] == pytest.approx(d1, rel=0.03)
    assert g.diagonal_2[0] == pytest.approx(d2, rel=0.03)
    assert g.positions["top_left"][1] >= 250 - g.box_size // 2  # moved onto the data


def test_rank_measure_frame_on_mostly_no_data_is_quiet_and_measured():
    data = _plane_frame()
    d1, _ = _plane_diagonals(data.shape)
    data[:, :250] = 0
    data[:120, :] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        row, _ = measure_frame(data)
    assert row.gradient_1[0] == pytest.approx(d1, rel=0.03)
    assert np.isfinite(row.gradient_percent) and np.isfinite(row.background[0])
    empty = np.zeros_like(data)
    empty[200:210, 300:310] = 5.0  # a speck of data: no box can be measured
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        row, _ = measure_frame(empty)
    assert not np.isfinite(row.gradient_1[0])


def test_superpixel_doubles_pixel_size_in_the_written_header(tmp_path):
    cfa = np.full((40, 60), 100, np.uint16)
    hdu = fits.PrimaryHDU(cfa)
    hdu.header["BAYERPAT"] = "RGGB"
    hdu.header["XPIXSZ"], hdu.header["YPIXSZ"], hdu.header["FOCALLEN"] = 2.9, 2.9, 250.0
    raw_path = tmp_path / "raw.fits"
    hdu.writeto(raw_path)
    raw = read_frame(raw_path)
    sp = read_frame(raw_path, debayer="superpixel")
    assert sp.header["XPIXSZ"] == pytest.approx(5.8) and sp.header["YPIXSZ"] == pytest.approx(5.8)
    out = write_frame(tmp_path / "rgb.fits", sp.data, sp.header)
    again = read_frame(out)
    assert again.meta.image_scale == pytest.approx(2 * raw.meta.image_scale)
    assert again.meta.pixel_size == pytest.approx(sp.meta.pixel_size)
    bl = read_frame(raw_path, debayer="bilinear")
    assert bl.header["XPIXSZ"] == pytest.approx(2.9)
