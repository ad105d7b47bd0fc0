"""Reading is bounded: hostile headers, non-regular files and inconsistent sizes give FrameError.

The cases that hung, crashed or exhausted memory before the structure scan are
read in a watched child process (timeout, address-space limit), so a
regression fails the test instead of hanging the suite.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from astropy.io import fits

from napari_nsg.io import FrameError, read_frame
from napari_nsg.io._fuzz import read_in_children, set_card
from napari_nsg.io.errors import FrameWarning
from napari_nsg.io.fits_scan import BLOCK, MAX_FRAME_PIXELS

WATCHDOG_S = 10.0
SKY = np.random.default_rng(3).normal(1000.0, 20.0, (48, 64))


def _mono(path, **cards):
    hdu = fits.PrimaryHDU(SKY.astype(np.int16))
    for key, value in cards.items():
        hdu.header[key] = value
    hdu.writeto(path)
    return path


def _fz(path, compression="RICE_1", **kw):
    image = fits.CompImageHDU(SKY.astype(np.int16), compression_type=compression, **kw)
    fits.HDUList([fits.PrimaryHDU(), image]).writeto(path)
    return path


def _edited(path, key, value, after=b""):
    raw = bytearray(path.read_bytes())
    set_card(raw, key, value, after)
    path.write_bytes(bytes(raw))
    return path


def _error(path, *words):
    with pytest.raises(FrameError) as e:
        read_frame(path)
    message = str(e.value)
    assert str(path) in message, message
    for word in words:
        assert word.lower() in message.lower(), message
    return message


# --- cases that hung or blew up memory: read in one watched child ----------------------------

def _hostile_files(folder):
    files = {
        "naxis2_negative": _edited(_mono(folder / "n2.fits"), "NAXIS2", "-1"),
        "naxis1_negative": _edited(_mono(folder / "n1.fits"), "NAXIS1", "-64"),
        "naxis_huge": _edited(_mono(folder / "nh.fits"), "NAXIS1", "2000000000"),
        "duplicate_naxis": None,
        "tfields_absurd": _edited(_fz(folder / "tf.fz"), "TFIELDS", "2000000000"),
        "znaxis2_huge": _edited(_fz(folder / "zn.fz"), "ZNAXIS2", "2000000000"),
        "hcompress_tile_lies": _edited(_fz(folder / "hc.fz", "HCOMPRESS_1", tile_shape=(16, 64)),
                                       "ZNAXIS2", "46"),
    }
    raw = bytearray(_mono(folder / "dup.fits").read_bytes())
    end = raw.find(b"END     ")
    raw[end : end + 160] = b"NAXIS   =           2147483648".ljust(80) + b"END".ljust(80)
    files["duplicate_naxis"] = folder / "dup.fits"
    files["duplicate_naxis"].write_bytes(bytes(raw))
    return files


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """name -> (path, child's result) for the formerly hanging files."""
    files = _hostile_files(tmp_path_factory.mktemp("hostile"))
    results = read_in_children([str(p) for p in files.values()], timeout=WATCHDOG_S,
                               memory_limit=2 * 2**30)
    return {name: (path, r) for (name, path), r in zip(files.items(), results)}


@pytest.mark.parametrize("name, words", [
    ("naxis2_negative", ["NAXIS2 = -1", "impossible"]),
    ("naxis1_negative", ["NAXIS1 = -64"]),
    ("naxis_huge", ["truncated"]),
    ("duplicate_naxis", ["two NAXIS cards"]),
    ("tfields_absurd", ["TFIELDS = 2000000000"]),
    ("znaxis2_huge", ["limit is 1,073,741,824 values"]),
    ("hcompress_tile_lies", ["HCOMPRESS tile"]),
])
def test_hostile_header_is_refused_fast(hostile, name, words):
    path, result = hostile[name]
    assert result[0] == "frame_error", result  # not hang, crash, memory or another exception
    assert str(path) in result[1]
    for word in words:
        assert word.lower() in result[1].lower(), result[1]


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "frame.fits"
    os.mkfifo(fifo)
    outcome = []
    reader = threading.Thread(target=lambda: outcome.append(_error(fifo, "not a regular file")),
                              daemon=True)
    reader.start()
    reader.join(WATCHDOG_S)
    assert outcome, "read_frame blocked on a FIFO"


def test_link_to_fifo_refused_link_to_file_read(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "pipe.fits").symlink_to(tmp_path / "pipe")
    _error(tmp_path / "pipe.fits", "not a regular file")
    (tmp_path / "good.fits").symlink_to(_mono(tmp_path / "real.fits"))
    assert read_frame(tmp_path / "good.fits").data.shape == (48, 64)
    (tmp_path / "dangling.fits").symlink_to(tmp_path / "gone.fits")
    _error(tmp_path / "dangling.fits", "not found", "link")


def test_device_is_refused(tmp_path):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    (tmp_path / "zero.fits").symlink_to("/dev/zero")
    _error(tmp_path / "zero.fits", "not a regular file")


def test_uncompressed_frame_above_the_limit_is_refused_before_reading(tmp_path):
    side = int(MAX_FRAME_PIXELS**0.5) + 1  # float32: 4 GiB of data, as a sparse file
    hdu = fits.PrimaryHDU()
    hdu.header.update(BITPIX=-32, NAXIS=2, NAXIS1=side, NAXIS2=side)
    path = tmp_path / "huge.fits"
    path.write_bytes(hdu.header.tostring().encode("ascii"))
    with open(path, "r+b") as fh:
        fh.truncate(BLOCK + side * side * 4)
    _error(path, f"{side * side:,} values", "limit")


def test_compressed_frame_above_the_limit_is_refused(tmp_path):
    path = _edited(_edited(_fz(tmp_path / "big.fz"), "ZNAXIS1", "50000"), "ZNAXIS2", "50000")
    _error(path, "2,500,000,000 values", "limit")


# --- header cards that cannot be parsed ----------------------------------------------------

def test_unparsable_unneeded_card_reads_with_a_warning(tmp_path):
    path = _mono(tmp_path / "alt.fits", OBJCTALT=45.5, EXPTIME=120.0)
    raw = bytearray(path.read_bytes())
    i = raw.find(b"OBJCTALT=")
    raw[i + 25] = ord("X")  # '45.5' -> 'X45.5', as a bit flip does
    path.write_bytes(bytes(raw))
    with pytest.warns(FrameWarning, match="OBJCTALT") as caught:
        frame = read_frame(path)
    assert str(path) in str(caught[0].message)
    assert frame.meta.altitude is None and frame.meta.airmass is None  # treated as missing
    assert frame.meta.exposure == 120.0  # the other cards still count
    np.testing.assert_array_equal(frame.data, SKY.astype(np.int16).astype(np.float32))


def test_unparsable_scaling_card_is_an_error(tmp_path):
    path = _edited(_mono(tmp_path / "bzero.fits", BZERO=32768), "BZERO", "3X768")
    _error(path, "BZERO", "pixel values depend on it")


def test_unparsable_structural_card_is_an_error(tmp_path):
    path = _edited(_mono(tmp_path / "axis.fits"), "NAXIS1", "6X")
    _error(path, "NAXIS1", "not an integer")


# --- inconsistent sizes and corrupted compressed files ------------------------------------

def test_compressed_table_marked_as_image_is_not_read_as_pixels(tmp_path):
    path = _edited(_fz(tmp_path / "x.fz"), "XTENSION", "'IMAGE   '", after=b"XTENSION")
    _error(path, "also describes a table")


def test_compressed_table_without_zimage_is_not_an_image(tmp_path):
    path = _edited(_fz(tmp_path / "z.fz"), "ZIMAGE", "F")
    _error(path, "no hdu holds image data", "zimage")


def test_corrupted_compressed_tiles_give_frame_error(tmp_path):
    path = _fz(tmp_path / "tiles.fz")
    raw = bytearray(path.read_bytes())
    heap = 2 * BLOCK + 8 * 48  # primary header, table header, 48 rows of descriptors
    raw[heap : heap + 400] = np.random.default_rng(0).integers(0, 256, 400, np.uint8).tobytes()
    path.write_bytes(bytes(raw))
    _error(path)  # CfitsioException or a wrong size inside the codec, named and explained


@pytest.mark.parametrize("rows", [47, 10, 1])
def test_lowered_naxis2_is_an_error_not_a_smaller_image(tmp_path, rows):
    path = _edited(_mono(tmp_path / "low.fits"), "NAXIS2", str(rows))
    _error(path, "longer than the header says")


def test_lowered_naxis2_before_another_hdu(tmp_path):
    path = tmp_path / "two.fits"
    table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=np.arange(5.0))])
    fits.HDUList([fits.PrimaryHDU(SKY.astype(np.int16)), table]).writeto(path)
    _error(_edited(path, "NAXIS2", "20"), "longer than the header says")


@pytest.mark.parametrize("extra, ok", [
    (bytes(BLOCK), True), (bytes(2 * BLOCK), False), (b"\x01" * 100, False),
    (b"SIMPLE  =" + bytes(BLOCK), False),
])
def test_data_after_the_last_hdu(tmp_path, extra, ok):
    path = _mono(tmp_path / "extra.fits")
    path.write_bytes(path.read_bytes() + extra)
    if ok:  # one block of blank padding is harmless
        assert read_frame(path).data.shape == (48, 64)
    else:
        _error(path, "follow the data of hdu 0")


def test_missing_final_padding_is_accepted(tmp_path):
    path = _mono(tmp_path / "short.fits")
    path.write_bytes(path.read_bytes()[: BLOCK + SKY.size * 2])
    np.testing.assert_array_equal(read_frame(path).data, SKY.astype(np.int16).astype(np.float32))


def test_legitimate_multi_hdu_file(tmp_path):
    path = tmp_path / "mef.fits"
    table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=np.arange(5.0))])
    second = fits.ImageHDU((SKY * 2).astype(np.float32))
    fits.HDUList([fits.PrimaryHDU(SKY.astype(np.int16)), table, second]).writeto(path)
    assert read_frame(path).hdu_index == 0
    frame = read_frame(path, hdu=2)
    np.testing.assert_allclose(frame.data, (SKY * 2).astype(np.float32))
    with pytest.raises(FrameError, match="HDU 1 holds no image data"):
        read_frame(path, hdu=1)


# --- large frames are byte-swapped in place: same pixels as the memmap path ---------------

@pytest.mark.parametrize("dtype, cards, mode", [
    (np.float32, {}, "raw"), (np.float64, {}, "in_place"), (np.int16, {}, "in_place"),
    (np.uint16, {}, "unsigned16"), (np.int32, {}, "in_place"), (np.uint8, {}, "in_place"),
    (np.int16, {"BSCALE": 0.5, "BZERO": 3.0, "BLANK": 1007}, "in_place"),
])
def test_large_frame_paths_read_the_same_pixels_and_header(tmp_path, monkeypatch, dtype, cards,
                                                           mode):
    from napari_nsg.io import read as read_module

    data = np.stack([SKY, SKY * 0.5, SKY + 7.0]).astype(dtype)
    hdu = fits.PrimaryHDU(data)
    hdu.header.update(cards)
    path = tmp_path / "frame.fits"
    hdu.writeto(path)
    small = read_frame(path)  # below the threshold: astropy's memmap
    monkeypatch.setattr(read_module, "IN_PLACE_BYTES", 0)
    with open(path, "rb") as fh:
        assert read_module._read_mode(read_module.find_image(fh, path)) == mode
    large = read_frame(path)
    assert large.data.dtype == np.float32 and large.data.dtype.isnative
    np.testing.assert_array_equal(large.data, small.data)
    assert repr(large.header) == repr(small.header)
    if not cards:
        np.testing.assert_array_equal(large.data, data.astype(np.float32))
    else:
        assert np.isnan(small.data).sum() == (data == 1007).sum() > 0


@pytest.mark.parametrize("suffix", [".tif", ".xisf", ".fits", ".fz"])
def test_frame_limit_applies_to_every_format(tmp_path, monkeypatch, suffix):
    from napari_nsg.io import fits_scan

    path = tmp_path / f"frame{suffix}"
    data = SKY.astype(np.uint16)
    if suffix == ".tif":
        pytest.importorskip("tifffile").imwrite(path, data)
    elif suffix == ".xisf":
        pytest.importorskip("xisf").XISF.write(str(path), data[..., np.newaxis])
    elif suffix == ".fz":
        _fz(path)
    else:
        _mono(path)
    assert read_frame(path).data.shape == (48, 64)
    monkeypatch.setattr(fits_scan, "MAX_FRAME_PIXELS", SKY.size - 1)
    _error(path, f"{SKY.size:,} values", "limit")


def test_damaged_table_after_the_image_does_not_matter(tmp_path):
    path = tmp_path / "img_table.fits"
    table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=np.arange(5.0))])
    fits.HDUList([fits.PrimaryHDU(SKY.astype(np.int16)), table]).writeto(path)
    damaged = _edited(path, "NAXIS2", "-7", after=b"XTENSION")
    np.testing.assert_array_equal(read_frame(damaged).data, SKY.astype(np.int16).astype(np.float32))
    with pytest.raises(FrameError, match="NAXIS2 = -7"):
        read_frame(damaged, hdu=1)


def test_unusable_bitpix_in_an_empty_primary_of_a_fz(tmp_path):
    path = _edited(_fz(tmp_path / "p.fz"), "BITPIX", "10")  # no data: BITPIX is not used
    np.testing.assert_array_equal(read_frame(path).data, SKY.astype(np.int16).astype(np.float32))
