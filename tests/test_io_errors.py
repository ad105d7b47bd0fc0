"""Bad input gives one error type whose message names the file and the reason."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from napari_nsg.io import FrameError, read_frame


def _fits(path, data, **header):
    hdu = fits.PrimaryHDU(data)
    for k, v in header.items():
        hdu.header[k] = v
    hdu.writeto(path)
    return path


def _assert_names(exc_info, path, *words):
    message = str(exc_info.value)
    assert str(path) in message
    for word in words:
        assert word in message.lower(), message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.fits"
    with pytest.raises(FrameError) as e:
        read_frame(path)
    _assert_names(e, path, "not found")


def test_folder_is_not_a_frame(tmp_path):
    with pytest.raises(FrameError) as e:
        read_frame(tmp_path)
    _assert_names(e, tmp_path, "folder")
    assert f"give its frames, e.g. {tmp_path}/*.fits" in str(e.value)


def test_not_an_image_file(tmp_path):
    path = tmp_path / "notes.fits"
    path.write_text("these are my observing notes, not an image\n" * 50)
    with pytest.raises(FrameError) as e:
        read_frame(path)
    _assert_names(e, path, "not a fits file")


def test_unknown_suffix(tmp_path):
    path = tmp_path / "frame.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 100)
    with pytest.raises(FrameError) as e:
        read_frame(path)
    _assert_names(e, path, "not an image file", ".jpg")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.fits"
    path.write_bytes(b"")
    with pytest.raises(FrameError) as e:
        read_frame(path)
    _assert_names(e, path, "empty")


def test_no_image_hdu(tmp_path):
    path = tmp_path / "table.fits"
    table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=np.arange(3.0))])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path)
    with pytest.raises(FrameError) as e:
        read_frame(path)
    _assert_names(e, path, "no hdu holds image data")


@pytest.mark.parametrize("shape, ndim", [((100,), 1), ((2, 3, 20, 20), 4)])
def test_wrong_dimensions(tmp_path, shape, ndim):
    path = _fits(tmp_path / f"d{ndim}.fits", np.ones(shape, np.float32))
    with pytest.raises(FrameError) as e:
        read_frame(path)
    _assert_names(e, path, f"{ndim}-d")


def test_cube_that_is_not_rgb(tmp_path):
    path = _fits(tmp_path / "cube.fits", np.ones((5, 20, 20), np.float32))
    with pytest.raises(FrameError) as e:
        read_frame(path)
    _assert_names(e, path, "5 planes")


def test_truncated_file(tmp_path):
    good = _fits(tmp_path / "good.fits", np.ones((200, 200), np.float32))
    path = tmp_path / "cut.fits"
    path.write_bytes(good.read_bytes()[: 2880 + 40_000])
    with pytest.raises(FrameError) as e:
        read_frame(path)
    _assert_names(e, path, "truncated")


def test_unsupported_pixel_type_tiff(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "complex.tif"
    tifffile.imwrite(path, (np.ones((16, 16)) * (1 + 1j)).astype(np.complex64))
    with pytest.raises(FrameError) as e:
        read_frame(path)
    _assert_names(e, path, "unsupported pixel type")


def test_unsupported_bitpix(tmp_path):
    path = _fits(tmp_path / "bitpix.fits", np.ones((16, 16), np.int16))
    raw = bytearray(path.read_bytes())
    i = raw.find(b"BITPIX  =")
    raw[i + 10 : i + 30] = b"                  12"
    path.write_bytes(bytes(raw))
    with pytest.raises(FrameError) as e:
        read_frame(path)
    message = str(e.value)
    assert str(path) in message
    assert "pixel type" in message.lower() or "bitpix" in message.lower(), message


def test_cli_prints_clear_error_without_traceback(tmp_path, capsys):
    from napari_nsg.cli import main

    path = tmp_path / "broken.fits"
    path.write_text("garbage")
    # rank is the command that only reads; any built subcommand must behave the same
    code = main(["normalize", str(path), "--reference", str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err


@pytest.mark.parametrize("card,value", [("ZVAL1", "2"), ("ZVAL1", "'x'"), ("ZVAL2", "3")])
def test_damaged_rice_parameters_are_refused_before_decoding(tmp_path, card, value):
    """A Rice-compressed frame whose BLOCKSIZE (ZVAL1) or BYTEPIX (ZVAL2) is outside the
    convention's values: astropy's decoder trusts them and writes past its buffer (the
    fuzz test's mutant with BLOCKSIZE 2 ended the process with a segmentation fault once);
    the reader refuses it with the file's name and the reason instead."""
    path = tmp_path / "rice.fz"
    data = np.random.default_rng(0).normal(1000, 30, (200, 300)).astype(np.int16)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, compression_type="RICE_1")]
                 ).writeto(path)
    assert read_frame(path).data.shape == (200, 300)  # intact: read
    raw = bytearray(path.read_bytes())
    at = raw.find(f"{card:<8}=".encode())
    raw[at:at + 80] = f"{card:<8}= {value:>20}".ljust(80).encode()
    path.write_bytes(bytes(raw))
    with pytest.raises(FrameError, match=r"rice\.fz.*Rice (BLOCKSIZE|BYTEPIX)"):
        read_frame(path)


def test_rice_tiles_reach_astropys_decoder_padded(tmp_path):
    """astropy's RICE_1 decoder reads past a damaged tile's end within a block (and crashed
    the process with SIGSEGV when that ran into an unmapped page: one fuzzed mutant in
    4000, now and then). Each tile now reaches it as a view of its own length over its
    bytes followed by 0xFF padding (io._rice_guard), and valid tiles decode unchanged."""
    from astropy.io.fits.hdu.compressed import _codecs

    from napari_nsg.io import _rice_guard

    seen = {}

    def spy(view, *args):
        seen["view"] = view
        return b""

    _rice_guard._padded(spy)(b"\x01\x02\x03", 32, 2, 80)
    view = seen["view"]
    assert len(view) == 3 and bytes(view) == b"\x01\x02\x03"
    whole = np.frombuffer(view.base, np.uint8)
    assert len(whole) - 3 >= 200 and whole[3:].min() == 0xFF
    assert getattr(_codecs.decompress_rice_1_c, "napari_nsg_guard", False)
    data = np.random.default_rng(0).integers(0, 4000, (64, 90)).astype(np.int16)
    fits.CompImageHDU(data, compression_type="RICE_1").writeto(tmp_path / "r.fz")
    assert np.array_equal(read_frame(tmp_path / "r.fz").data, data.astype(np.float32))
