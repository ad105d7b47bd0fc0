"""gzip-compressed FITS (``.fits.gz``): read as the plain file is, bad ones refused with the
file's name, outputs named without the suffixes."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from astropy.io import fits

from napari_nsg.cli import main
from napari_nsg.io import FrameError, read_frame
from napari_nsg.io import read as read_module
from napari_nsg.synthetic import simulate_sequence


def _gzip(plain, packed):
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    return packed


@pytest.mark.parametrize("dtype, bzero", [(np.float32, None), (np.int16, 32768)])
def test_a_gzip_frame_reads_as_the_plain_one(tmp_path, dtype, bzero):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 30000, (40, 52)).astype(dtype)
    hdu = fits.PrimaryHDU(data)
    if bzero is not None:
        hdu.header["BZERO"] = bzero
    hdu.header["EXPTIME"] = 30.0
    plain = tmp_path / "f.fits"
    hdu.writeto(plain)
    frame = read_frame(_gzip(plain, tmp_path / "f.fits.gz"))
    same = read_frame(plain)
    assert frame.data.dtype == np.float32
    assert np.array_equal(frame.data, same.data)
    assert frame.header["EXPTIME"] == 30.0 and frame.meta.exposure == 30.0


def test_corrupt_or_oversized_gzip_is_that_files_error(tmp_path, monkeypatch):
    plain = tmp_path / "f.fits"
    fits.PrimaryHDU(np.ones((64, 64), np.float32)).writeto(plain)
    packed = gzip.compress(plain.read_bytes())
    cut = tmp_path / "cut.fits.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(FrameError, match=r"cut\.fits\.gz.*corrupt gzip"):
        read_frame(cut)
    garbled = tmp_path / "garbled.fits.gz"
    garbled.write_bytes(packed[:12] + bytes(200) + packed[212:])
    with pytest.raises(FrameError, match=r"garbled\.fits\.gz"):
        read_frame(garbled)
    monkeypatch.setattr(read_module, "GZIP_LIMIT_BYTES", 4096)
    with pytest.raises(FrameError, match=r"f\.fits\.gz.*decompresses to more than"):
        read_frame(_gzip(plain, tmp_path / "f.fits.gz"))


def test_normalize_and_register_gzip_frames(tmp_path, capsys):
    seq = simulate_sequence(3, (256, 256), seed=4, border=10, star_density=5e-3)
    packed = [_gzip(p, p.with_name(p.name + ".gz")) for p in seq.write(tmp_path / "in")]
    for p in packed:
        p.with_name(p.name[:-3]).unlink()  # only the .fits.gz frames are left
    out = tmp_path / "nsg"
    assert main(["normalize", *map(str, packed), "--reference", str(packed[0]),
                 "--out", str(out), "--quiet"]) == 0
    names = sorted(p.name for p in out.glob("*_nsg.fits"))
    assert names == ["frame_000_nsg.fits", "frame_001_nsg.fits", "frame_002_nsg.fits"]
    reg = tmp_path / "reg"
    assert main(["register", *map(str, packed), "--reference", str(packed[0]),
                 "--out", str(reg), "--quiet"]) == 0
    assert sorted(p.name for p in reg.glob("*_reg.fits")) == [
        "frame_000_reg.fits", "frame_001_reg.fits", "frame_002_reg.fits"]
    capsys.readouterr()


def test_the_napari_reader_takes_gzip_frames(tmp_path):
    from napari_nsg._reader import napari_get_reader

    plain = tmp_path / "f.fits"
    fits.PrimaryHDU(np.ones((16, 16), np.float32)).writeto(plain)
    reader = napari_get_reader(str(_gzip(plain, tmp_path / "f.FITS.GZ")))
    assert reader is not None
    (data, _, kind), = reader(str(tmp_path / "f.FITS.GZ"))
    assert kind == "image" and np.all(np.asarray(data) == 1.0)


def test_stack_and_rank_take_gzip_frames(tmp_path, capsys):
    seq = simulate_sequence(3, (256, 256), seed=4, border=10, star_density=5e-3)
    packed = [_gzip(p, p.with_name(p.name + ".gz")) for p in seq.write(tmp_path / "in")]
    out = tmp_path / "stack.fits"
    assert main(["stack", *map(str, packed), "--out", str(out), "--weights", "none",
                 "--quiet"]) == 0
    assert fits.getheader(out)["NSTACK"] == 3
    assert main(["rank", *map(str, packed), "--quiet"]) == 0
    assert "frame_000.fits.gz" in capsys.readouterr().out
