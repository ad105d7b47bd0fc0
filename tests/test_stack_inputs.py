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
