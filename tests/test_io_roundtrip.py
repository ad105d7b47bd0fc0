"""read_frame / write_frame keep pixels, header and metadata."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from napari_nsg.io import (
    FrameError,
    OutputExistsError,
    atomic_write_text,
    debayer,
    parse_metadata,
    read_frame,
    remove_partials,
    write_frame,
)


def test_uint16_bzero_file_reads_in_adu(tmp_path):
    raw = np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20
    path = tmp_path / "cam.FIT"  # upper-case suffix
    fits.PrimaryHDU(raw).writeto(path)
    assert fits.getheader(path)["BZERO"] == 32768
    frame = read_frame(path)
    assert frame.data.dtype == np.float32
    assert frame.data.shape == (48, 64)
    np.testing.assert_array_equal(frame.data, raw.astype(np.float32))


def test_bscale_applied(tmp_path):
    path = tmp_path / "scaled.fits"
    hdu = fits.PrimaryHDU(np.full((8, 8), 100, np.int16))
    hdu.header["BSCALE"] = 2.5
    hdu.header["BZERO"] = 10.0
    hdu.writeto(path)
    # astropy applies the scaling on write of a raw header; check what it reads back
    expected = fits.getdata(path).astype(np.float32)
    np.testing.assert_allclose(read_frame(path).data, expected)


def test_big_endian_float_becomes_native(tmp_path):
    path = tmp_path / "f.fits"
    fits.PrimaryHDU(np.linspace(-5, 5, 100, dtype=">f4").reshape(10, 10)).writeto(path)
    data = read_frame(path).data
    assert data.dtype == np.dtype("float32") and data.dtype.isnative
    assert data.min() == pytest.approx(-5.0)


def test_roundtrip_keeps_pixels_header_and_adds_keywords(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.normal(0, 100, (3, 40, 50)).astype(np.float32)  # colour, negatives kept
    header = fits.Header()
    header["EXPTIME"] = (120.0, "seconds")
    header["DATE-OBS"] = "2024-05-01T22:10:05.5"
    header["FILTER"] = "L"
    header["OBJCTALT"] = 45.0
    header["XPIXSZ"] = 3.76
    header["FOCALLEN"] = 530.0
    header["NOISE00"] = 1.5
    header["NOISEA00"] = "MRS"
    header.add_history("calibrated")
    out = write_frame(
        tmp_path / "out.fits",
        data,
        header,
        keywords={"NSGREF": "ref.fits", "NWEIGHT": (0.8123, "NSG weight")},
        history=["NSG smoothness -2.0"],
    )
    frame = read_frame(out)
    np.testing.assert_array_equal(frame.data, data)
    h = frame.header
    assert h["EXPTIME"] == 120.0 and h["FILTER"] == "L"
    assert h["NSGREF"] == "ref.fits" and h["NWEIGHT"] == pytest.approx(0.8123)
    assert h.comments["NWEIGHT"] == "NSG weight"
    history = " ".join(str(x) for x in h["HISTORY"])
    assert "calibrated" in history and "NSG smoothness -2.0" in history
    m = frame.meta
    assert m.exposure == 120.0 and m.filter == "L" and m.altitude == 45.0
    assert m.airmass == pytest.approx(1.41, abs=0.01) and m.airmass_source == "altitude"
    assert m.image_scale == pytest.approx(206.265 * 3.76 / 530.0, rel=1e-4)
    assert m.noise == {0: 1.5} and m.noise_algorithm == {0: "MRS"}
    assert m.time.year == 2024 and m.time.second == 5


def test_roundtrip_of_a_uint16_header_writes_float(tmp_path):
    path = tmp_path / "cam.fits"
    fits.PrimaryHDU(np.full((10, 10), 1000, np.uint16)).writeto(path)
    frame = read_frame(path)
    out = write_frame(tmp_path / "o.fits", frame.data * 0.5 - 700.0, frame.header)
    h = fits.getheader(out)
    assert h["BITPIX"] == -32 and "BZERO" not in h
    np.testing.assert_allclose(read_frame(out).data, -200.0)


def test_write_refuses_to_replace_unless_told(tmp_path):
    path = write_frame(tmp_path / "a.fits", np.ones((5, 5)))
    with pytest.raises(OutputExistsError) as e:
        write_frame(path, np.zeros((5, 5)))
    assert str(path) in str(e.value)
    assert read_frame(path).data[0, 0] == 1.0
    write_frame(path, np.zeros((5, 5)), overwrite=True)
    assert read_frame(path).data[0, 0] == 0.0


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    class Boom(Exception):
        pass

    def explode(self, *a, **k):
        raise Boom

    monkeypatch.setattr(fits.PrimaryHDU, "writeto", explode)
    monkeypatch.setattr("napari_nsg.io.write._stream", explode)  # float32 frames' writer
    with pytest.raises(Boom):
        write_frame(tmp_path / "x.fits", np.ones((5, 5)))
    assert list(tmp_path.iterdir()) == []


def test_partials_are_cleaned(tmp_path):
    (tmp_path / ".x.fits.partial-abc").write_bytes(b"half")
    (tmp_path / "keep.fits").write_bytes(b"x")
    assert len(remove_partials(tmp_path)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keep.fits"]


def test_atomic_text(tmp_path):
    p = atomic_write_text(tmp_path / "r.json", "{}")
    assert p.read_text() == "{}"
    with pytest.raises(OutputExistsError):
        atomic_write_text(p, "[]")


def test_write_into_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FrameError) as e:
        write_frame(tmp_path / "no" / "x.fits", np.ones((4, 4)))
    assert "does not exist" in str(e.value)


def test_fpack_compressed_frame(tmp_path):
    data = (np.arange(100 * 80) % 4000).astype(np.int32).reshape(80, 100)
    path = tmp_path / "c.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, compression_type="RICE_1")]).writeto(path)
    frame = read_frame(path)
    assert frame.hdu_index == 1
    np.testing.assert_array_equal(frame.data, data.astype(np.float32))


def test_tiff_rgb_channels_last(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    rgb = np.zeros((30, 40, 3), np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 200, 300
    path = tmp_path / "img.tiff"
    tifffile.imwrite(path, rgb, photometric="rgb")
    frame = read_frame(path)
    assert frame.data.shape == (3, 30, 40)
    assert frame.data[:, 0, 0].tolist() == [100, 200, 300]


def test_bayer_kept_raw_unless_asked(tmp_path):
    # RGGB mosaic with R=10, G=20, B=30
    cfa = np.zeros((6, 8), np.uint16)
    cfa[0::2, 0::2], cfa[0::2, 1::2], cfa[1::2, 0::2], cfa[1::2, 1::2] = 10, 20, 20, 30
    hdu = fits.PrimaryHDU(cfa)
    hdu.header["BAYERPAT"] = "RGGB"
    hdu.header["XPIXSZ"], hdu.header["FOCALLEN"] = 2.9, 250.0
    path = tmp_path / "raw.fits"
    hdu.writeto(path)
    raw = read_frame(path)
    assert raw.data.shape == (6, 8) and raw.meta.bayer_pattern == "RGGB"
    sp = read_frame(path, debayer="superpixel")
    assert sp.data.shape == (3, 3, 4)
    assert sp.data[:, 1, 1].tolist() == [10, 20, 30]
    assert sp.meta.image_scale == pytest.approx(2 * raw.meta.image_scale)
    assert "BAYERPAT" not in sp.header
    bl = read_frame(path, debayer="bilinear")
    assert bl.data.shape == (3, 6, 8)
    np.testing.assert_allclose(bl.data[:, 2:4, 2:6].reshape(3, -1).mean(1), [10, 20, 30])


def test_debayer_needs_a_mosaic(tmp_path):
    path = tmp_path / "mono.fits"
    fits.PrimaryHDU(np.ones((8, 8), np.float32)).writeto(path)
    with pytest.raises(FrameError) as e:
        read_frame(path, debayer="bilinear")
    assert "BAYERPAT" in str(e.value)


def test_bayer_offsets_and_roworder():
    h = fits.Header()
    h["BAYERPAT"] = "RGGB"
    h["XBAYROFF"] = 1
    assert parse_metadata(h).bayer_pattern == "GRBG"
    h2 = fits.Header()
    h2["BAYERPAT"] = "RGGB"
    h2["ROWORDER"] = "BOTTOM-UP"
    assert parse_metadata(h2, height=100).bayer_pattern == "GBRG"
    assert parse_metadata(h2, height=101).bayer_pattern == "RGGB"


def test_debayer_superpixel_marks_incomplete_cells_as_no_data():
    cfa = np.full((4, 4), 50.0, np.float32)
    cfa[0, 0] = np.nan  # (a lone 0 is a clipped value now: tests/test_nodata.py)
    out = debayer(cfa, "RGGB", "superpixel")
    assert np.all(out[:, 0, 0] == 0) and np.all(out[:, 1, 1] == 50)


def test_metadata_alternatives():
    h = fits.Header()
    h["EXPOSURE"] = 30.0
    h["AIRMASS"] = 1.3
    h["CENTALT"] = 50.0
    h["DATE-OBS"] = "21/12/90"
    m = parse_metadata(h)
    assert m.exposure == 30.0 and m.airmass == 1.3 and m.airmass_source == "header"
    assert m.altitude == 50.0 and (m.time.year, m.time.month, m.time.day) == (1990, 12, 21)
    h2 = fits.Header()
    h2["ELAPTIME"] = 12.0
    h2["CTYPE1"], h2["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h2["CD1_1"], h2["CD1_2"], h2["CD2_1"], h2["CD2_2"] = -2.777e-4, 0.0, 0.0, 2.777e-4
    m2 = parse_metadata(h2)
    assert m2.exposure == 12.0
    assert m2.image_scale == pytest.approx(1.0, rel=1e-3) and m2.image_scale_source == "WCS"


def test_xisf_colour_and_mono(tmp_path):
    xisf = pytest.importorskip("xisf")
    rgb = np.zeros((20, 30, 3), np.float32)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 0.1, 0.2, 0.3
    keywords = {"EXPTIME": [{"value": "120.", "comment": "s"}],
                "FILTER": [{"value": "'Ha'", "comment": ""}],
                "XPIXSZ": [{"value": "3.76", "comment": ""}],
                "FOCALLEN": [{"value": "530", "comment": ""}]}
    xisf.XISF.write(str(tmp_path / "rgb.xisf"), rgb, image_metadata={"FITSKeywords": keywords})
    frame = read_frame(tmp_path / "rgb.xisf")
    assert frame.data.shape == (3, 20, 30)
    np.testing.assert_allclose(frame.data[:, 5, 5], [0.1, 0.2, 0.3])
    assert frame.header["EXPTIME"] == 120.0 and frame.header["FILTER"] == "Ha"
    assert frame.meta.exposure == 120.0 and frame.meta.image_scale == pytest.approx(1.463, abs=1e-3)
    mono = np.arange(600, dtype=np.uint16).reshape(20, 30, 1)
    xisf.XISF.write(str(tmp_path / "mono.xisf"), mono)
    frame = read_frame(tmp_path / "mono.xisf")
    assert frame.data.shape == (20, 30) and frame.data.dtype == np.float32
    assert frame.data[1, 2] == 32.0
    # and it can be written on as FITS with its header
    out = write_frame(tmp_path / "mono.fits", frame.data, frame.header)
    assert read_frame(out).data[1, 2] == 32.0
