"""Hostile inputs to ``stack``: a FIFO, an unparsable weight card, a bad metadata card."""

from __future__ import annotations

import os
import threading

import numpy as np
from astropy.io import fits

from napari_nsg.cli import main

SHAPE = (64, 80)


def _frame(path, value, weight_card=None):
    rng = np.random.default_rng(int(value))
    data = (value + rng.normal(0, 1, SHAPE)).astype(np.float32)
    hdu = fits.PrimaryHDU(data)
    hdu.header["NWEIGHT"] = 1.0
    hdu.writeto(path)
    if weight_card is not None:  # replace the NWEIGHT card's 80 bytes in place
        raw = bytearray(path.read_bytes())
        at = raw.index(b"NWEIGHT =")
        raw[at:at + 80] = weight_card.ljust(80).encode()
        path.write_bytes(bytes(raw))


def test_a_fifo_is_that_frames_error_and_never_blocks(tmp_path, capsys):
    frames = [tmp_path / f"f{k}.fits" for k in range(3)]
    for k, p in enumerate(frames):
        _frame(p, 100 + k)
    fifo = tmp_path / "pipe.fits"
    os.mkfifo(fifo)
    done = {}
    run = threading.Thread(target=lambda: done.setdefault(
        "code", main(["stack", *map(str, frames), str(fifo), "--out", str(tmp_path / "s.fits"),
                      "--weights", "none", "--rejection", "none"])), daemon=True)
    run.start()
    run.join(60)
    assert "code" in done, "stack blocked on a FIFO"
    err = capsys.readouterr().err
    assert "pipe.fits" in err and "regular file" in err
    assert "Traceback" not in err


def test_an_unparsable_weight_card_is_a_clear_error(tmp_path, capsys):
    good = [tmp_path / f"f{k}.fits" for k in range(3)]
    for k, p in enumerate(good):
        _frame(p, 100 + k)
    bad = tmp_path / "bad.fits"
    _frame(bad, 103, weight_card="NWEIGHT = 1.0.3e@x / garbled")
    code = main(["stack", *map(str, good), str(bad), "--out", str(tmp_path / "s.fits")])
    err = capsys.readouterr().err
    assert code != 0 or "bad.fits" in err
    assert "bad.fits" in err and "NWEIGHT" in err
    assert "Traceback" not in err


def test_a_frame_without_data_is_not_counted_as_stacked(tmp_path, capsys):
    """A frame that is NaN everywhere (no data) adds nothing: its row says so, the
    stack's header counts the two frames that have data, exit 1; with no frame of
    data there is no stack (exit 2), at any chunk height."""
    frames = [tmp_path / f"f{k}.fits" for k in range(3)]
    for k, p in enumerate(frames):
        _frame(p, 100 + k)
    empty = tmp_path / "empty.fits"
    hdu = fits.PrimaryHDU(np.full(SHAPE, np.nan, np.float32))
    hdu.header["NWEIGHT"] = 1.0
    hdu.writeto(empty)
    out = tmp_path / "s.fits"
    code = main(["stack", *map(str, frames[:2]), str(empty), "--out", str(out),
                 "--rejection", "none", "--chunk-rows", "16"])
    err = capsys.readouterr().err
    assert code == 1
    assert "empty.fits" in err and "no data" in err
    assert "2 of 3 frame(s) stacked" in err
    assert fits.getheader(out)["NSTACK"] == 2
    assert np.allclose(fits.getdata(out).mean(), 100.5, atol=0.05)
    code = main(["stack", str(empty), "--out", str(tmp_path / "none.fits"), "--rejection", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "no data" in err and not (tmp_path / "none.fits").exists()


def test_stack_arrays_marks_a_frame_without_data():
    from napari_nsg.pipeline.stack import NO_DATA_ERROR, stack_arrays

    frames = [np.ones(SHAPE), np.full(SHAPE, np.nan), 3.0 * np.ones(SHAPE)]
    result = stack_arrays(frames, rejection="none", chunk_rows=16)
    assert [r["error"] for r in result.rows] == [None, NO_DATA_ERROR, None]
    assert len(result.stacked) == 2 and np.allclose(result.stack, 2.0)
