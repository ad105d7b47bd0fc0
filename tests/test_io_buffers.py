"""The normalize pipeline's cheaper I/O (issue 13, fourth round): unscaled float32 FITS
read straight into reused buffers, float32 frames written through one reused
big-endian buffer (``O_DIRECT`` for big frames). Every path must give exactly the
bytes and pixels of the astropy paths it replaces."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from napari_nsg.core.nsg import NsgParameters, normalize_frame, prepare_reference
from napari_nsg.io import FrameError, read_frame
from napari_nsg.io import read as read_module
from napari_nsg.io import write as write_module
from napari_nsg.io.atomic import OutputWriteError
from napari_nsg.io.buffers import FrameBuffers
from napari_nsg.io.fits_scan import HduInfo
from napari_nsg.io.write import frame_hdu, write_frames
from napari_nsg.pipeline import normalize as nz
from napari_nsg.synthetic import simulate_sequence

PAGE = 4096
SMALL_CHUNK = 2 * PAGE  # many chunks even for a small frame


def _special_values(shape, seed=0) -> np.ndarray:
    """float32 pixels with the values a byte swap could spoil: NaNs with payloads,
    infinities, signed zeros, subnormals, the extremes."""
    rng = np.random.default_rng(seed)
    data = rng.normal(1000.0, 50.0, shape).astype(np.float32)
    flat = data.reshape(-1)
    specials = np.array([0x7FC00001, 0xFFC12345, 0x7F800000, 0xFF800000, 0x80000000, 0x00000001,
                         0x807FFFFF, 0x7F7FFFFF], np.uint32).view(np.float32)
    flat[: specials.size] = specials
    flat[-specials.size :] = specials
    return data


def _header() -> fits.Header:
    h = fits.Header()
    h["EXPTIME"] = (120.0, "seconds")
    h["OBJECT"] = "M 42 " + "with a long name " * 8  # CONTINUE cards
    h["OBJCTALT"] = 45.5
    h["CHECKSUM"] = "dropped by clean_header"
    h.add_history("calibrated")
    h.add_comment("a comment")
    return h


# --- writing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(37, 53), (3, 29, 41), (64, 128)])
@pytest.mark.parametrize("direct", [False, True])
def test_streamed_write_is_byte_identical_to_astropy(tmp_path, monkeypatch, shape, direct):
    monkeypatch.setattr(write_module, "WRITE_CHUNK_BYTES", SMALL_CHUNK)
    monkeypatch.setattr(write_module, "_scratch", type(write_module._scratch)())
    monkeypatch.setattr(write_module, "DIRECT_MIN_BYTES", 0 if direct else 2**40)
    data = _special_values(shape)
    kw = {"NSGREF": ("ref.fits", "NSG reference"), "NWEIGHT": (0.25, "weight"),
          "NSGBAD": float("nan")}
    hdu = frame_hdu(data, _header(), kw, ["NSG: one", "NSG: two"])
    assert write_module._streamable(hdu)
    ours = write_frames({tmp_path / "ours.fits": hdu})[0]
    astropy = tmp_path / "astropy.fits"
    frame_hdu(data, _header(), kw, ["NSG: one", "NSG: two"]).writeto(
        astropy, output_verify="silentfix")
    assert ours.read_bytes() == astropy.read_bytes()
    assert os.path.getsize(ours) % write_module.FITS_BLOCK == 0
    back = read_frame(ours).data
    assert back.view(np.uint32).tolist() == data.view(np.uint32).tolist()  # NaN payloads too


def test_header_bigger_than_half_a_chunk_is_written_buffered(tmp_path, monkeypatch):
    monkeypatch.setattr(write_module, "WRITE_CHUNK_BYTES", SMALL_CHUNK)
    monkeypatch.setattr(write_module, "_scratch", type(write_module._scratch)())
    monkeypatch.setattr(write_module, "DIRECT_MIN_BYTES", 0)
    header = _header()
    for k in range(80):  # 2 blocks of 36 cards and more: > 4096 bytes
        header.add_history(f"line {k}")
    data = _special_values((40, 60))
    ours = write_frames({tmp_path / "ours.fits": frame_hdu(data, header)})[0]
    frame_hdu(data, header).writeto(tmp_path / "astropy.fits", output_verify="silentfix")
    assert ours.read_bytes() == (tmp_path / "astropy.fits").read_bytes()


def test_direct_write_refused_goes_on_through_the_page_cache(tmp_path, monkeypatch):
    """A file system that refuses O_DIRECT at open, or at the first write, gets the same
    file written the ordinary way."""
    if not hasattr(os, "O_DIRECT"):
        pytest.skip("no O_DIRECT here")
    monkeypatch.setattr(write_module, "WRITE_CHUNK_BYTES", SMALL_CHUNK)
    monkeypatch.setattr(write_module, "_scratch", type(write_module._scratch)())
    monkeypatch.setattr(write_module, "DIRECT_MIN_BYTES", 0)
    data = _special_values((50, 70))
    frame_hdu(data, _header()).writeto(tmp_path / "astropy.fits", output_verify="silentfix")
    expected = (tmp_path / "astropy.fits").read_bytes()
    real_open, real_write, refused = os.open, os.write, []

    def open_no_direct(path, flags, *a):
        if flags & os.O_DIRECT:
            refused.append("open")
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *a)

    monkeypatch.setattr(os, "open", open_no_direct)
    assert write_frames({tmp_path / "a.fits": frame_hdu(data, _header())})[0].read_bytes() \
        == expected
    monkeypatch.setattr(os, "open", real_open)

    def write_refuses_direct(fd, chunk):
        if write_module._is_direct(fd):
            refused.append("write")
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, chunk)

    monkeypatch.setattr(os, "write", write_refuses_direct)
    assert write_frames({tmp_path / "b.fits": frame_hdu(data, _header())})[0].read_bytes() \
        == expected
    assert refused == ["open", "write"]


def test_full_disk_names_the_output_and_leaves_nothing(tmp_path, monkeypatch):
    def no_space(fd, chunk):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", no_space)
    with pytest.raises(OutputWriteError, match="No space left on device") as e:
        write_frames({tmp_path / "x.fits": frame_hdu(_special_values((30, 40)))})
    assert "x.fits" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_other_pixel_types_still_go_through_astropy(tmp_path):
    hdu = frame_hdu(np.ones((8, 8)))
    assert write_module._streamable(hdu)  # frame_hdu makes float32
    scaled = fits.PrimaryHDU(np.ones((8, 8), np.int16))
    scaled.header["BZERO"] = 10.0
    assert not write_module._streamable(scaled)
    assert not write_module._streamable(fits.PrimaryHDU(np.ones((8, 8), ">f4")))


# --- reading ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(37, 53), (3, 29, 41)])
def test_raw_read_equals_astropy_bit_for_bit(tmp_path, monkeypatch, shape):
    monkeypatch.setattr(read_module, "READ_CHUNK_BYTES", 1000)  # chunks end mid-row
    data = _special_values(shape, seed=3)
    path = tmp_path / "f.fits"
    fits.PrimaryHDU(data, header=_header()).writeto(path)
    with open(path, "rb") as fh:
        assert read_module._read_mode(read_module.find_image(fh, path)) == "raw"
    frame = read_frame(path)
    expected = fits.getdata(path).astype(np.float32)
    assert frame.data.dtype == np.float32 and frame.data.dtype.isnative
    assert frame.data.flags.c_contiguous and frame.data.flags.writeable
    assert frame.data.view(np.uint32).tolist() == expected.view(np.uint32).tolist()
    assert repr(frame.header) == repr(fits.getheader(path))


def test_scaled_float32_is_left_to_astropy(tmp_path):
    path = tmp_path / "s.fits"
    hdu = fits.PrimaryHDU(np.full((8, 8), 2.0, np.float32))
    hdu.header["BZERO"] = 100.0
    hdu.writeto(path)
    with open(path, "rb") as fh:
        assert read_module._read_mode(read_module.find_image(fh, path)) != "raw"
    np.testing.assert_array_equal(read_frame(path).data, fits.getdata(path))


@pytest.mark.parametrize("mapped", [True, False])
def test_truncated_raw_read_is_a_frame_error_and_the_buffer_comes_back(tmp_path, monkeypatch,
                                                                       mapped):
    """A file that lost its end after the structure check (both ways of reading)."""
    if not mapped:
        monkeypatch.setattr(read_module, "IN_PLACE_BYTES", 0)
    path = tmp_path / "t.fits"
    path.write_bytes(b"\0" * (2880 + 30))
    pool = FrameBuffers(1)
    info = HduInfo(index=0, kind="image", data_start=2880, data_bytes=4 * 20, shape=(4, 5))
    with open(path, "rb") as fh, pytest.raises(FrameError, match="truncated"):
        read_module._read_raw(path, fh, info, pool)
    reused = pool.take((4, 5))
    assert pool.created == 1 and reused.shape == (4, 5)


@pytest.mark.parametrize("mapped", [True, False])
def test_both_raw_paths_read_the_same_bits(tmp_path, monkeypatch, mapped):
    monkeypatch.setattr(read_module, "MAP_WINDOW_BYTES", 3 * PAGE)  # windows end mid-row
    monkeypatch.setattr(read_module, "READ_CHUNK_BYTES", 1000)
    if not mapped:
        monkeypatch.setattr(read_module, "IN_PLACE_BYTES", 0)
    data = _special_values((3, 61, 47), seed=7)
    path = tmp_path / "f.fits"
    fits.PrimaryHDU(data, header=_header()).writeto(path)
    frame = read_frame(path)
    assert frame.data.view(np.uint32).tolist() == data.view(np.uint32).tolist()


def test_frames_read_into_the_pool_reuse_its_memory(tmp_path):
    paths = []
    for k in range(3):
        paths.append(tmp_path / f"f{k}.fits")
        fits.PrimaryHDU(_special_values((30, 40), seed=k)).writeto(paths[-1])
    pool = FrameBuffers(1)
    first = read_frame(paths[0], buffers=pool)
    address = first.data.__array_interface__["data"][0]
    assert pool.give(first.data[1:, 2:])  # any view of it
    for p in paths[1:]:
        frame = read_frame(p, buffers=pool)
        assert frame.data.__array_interface__["data"][0] == address
        expected = fits.getdata(p).astype(np.float32)
        assert frame.data.view(np.uint32).tolist() == expected.view(np.uint32).tolist()
        pool.give(frame.data)
    assert pool.created == 1


def test_pool_keeps_at_most_its_slots_and_only_its_own():
    pool = FrameBuffers(2)
    a, b, c = (pool.take((10, 10)) for _ in range(3))
    assert pool.created == 3
    assert not pool.give(np.zeros((10, 10), np.float32))  # not from this pool
    assert pool.give(a) and pool.give(b) and not pool.give(c)  # 2 slots
    assert not pool.give(a)  # already back
    small = pool.take((5, 5))  # fits in a kept buffer
    big = pool.take((20, 20))  # does not: a new one
    assert pool.created == 4 and small.shape == (5, 5) and big.shape == (20, 20)
    with pytest.raises(ValueError, match="slots"):
        FrameBuffers(0)


# --- the pipeline ----------------------------------------------------------------------------

def test_pipeline_with_reused_buffers_writes_what_each_frame_alone_gives(tmp_path, monkeypatch):
    """Six targets through three reused buffers, an unreadable frame and a frame that
    cannot be normalized among them: every output equals that frame normalized on its
    own from a fresh array, and the scales are the simulator's."""
    seq = simulate_sequence(7, (192, 224), seed=5, border=8, star_density=5e-3, n_bright=30,
                            bright_flux_range=(1e3, 1.5e4),
                            transmission=[1.0, 0.9, 0.8, 0.95, 0.85, 0.7, 0.75])
    frames = seq.write(tmp_path / "frames")
    broken = tmp_path / "frames" / "broken.fits"
    broken.write_bytes(frames[1].read_bytes()[:5000])
    empty = tmp_path / "frames" / "empty.fits"
    fits.PrimaryHDU(np.zeros((192, 224), np.float32)).writeto(empty)
    order = [frames[0], frames[1], broken, frames[2], empty, *frames[3:]]
    pools = []

    class Recorded(FrameBuffers):
        def __init__(self, slots):
            super().__init__(slots)
            pools.append(self)

    monkeypatch.setattr(nz, "FrameBuffers", Recorded)
    report = nz.normalize_frames(order, frames[0], tmp_path / "out")
    assert [Path(r.file).name for r in report.failed] == ["broken.fits", "empty.fits"]
    assert len(pools) == 1 and pools[0].created <= nz.PIPELINE_FRAMES
    ref = read_frame(frames[0])
    model = prepare_reference(ref.data, ref.meta, NsgParameters())
    rows = {Path(r.file).name: r for r in report.rows}
    for k, f in enumerate(frames[1:], start=1):
        frame = read_frame(f)
        alone = normalize_frame(model, frame.data.copy(), frame.meta)
        written = read_frame(tmp_path / "out" / f"{f.stem}_nsg.fits").data
        np.testing.assert_array_equal(written, alone.corrected, err_msg=f.name)
        assert rows[f.name].scale == [float(s) for s in alone.scale]
        assert rows[f.name].scale[0] == pytest.approx(float(seq.scale[k][0]), rel=0.03)
