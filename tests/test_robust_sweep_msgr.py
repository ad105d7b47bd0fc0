"""Holes found by the session-22 robustness sweep of ``msgr``, ``rank``, ``demo`` and the
napari reader/writer (each test failed before its fix)."""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import pytest
from astropy.io import fits

from napari_nsg._reader import napari_get_reader, read_frames
from napari_nsg._writer import write_fits
from napari_nsg.cli import main
from napari_nsg.io import FrameError, read_frame
from napari_nsg.io.errors import FrameWarning
from napari_nsg.synthetic import write_sequence

EXIT_BAD_INPUT = 2


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _frame(path, value: float = 100.0, shape=(32, 40)) -> None:
    fits.PrimaryHDU(np.full(shape, value, np.float32)).writeto(path)


# --- demo -------------------------------------------------------------------------------


def test_demo_negative_seed_is_refused_without_traceback(tmp_path, capsys):
    # was: ValueError traceback from the simulator's random streams, exit 1
    code = main(["demo", str(tmp_path / "d"), "--seed", "-5", "--frames", "2", "--size", "128"])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert "--seed" in err and "-5" in err and "Traceback" not in err
    assert not (tmp_path / "d").exists()


def test_demo_huge_size_is_refused_before_simulating(tmp_path, capsys):
    # was: numpy's MemoryError (37 GiB asked) as a traceback, exit 1
    code = main(["demo", str(tmp_path / "d"), "--size", "100000"])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert "--size" in err and "100000" in err and "4096" in err
    assert not (tmp_path / "d").exists()


# --- rank --json --------------------------------------------------------------------------


def test_rank_json_never_replaces_a_frame_that_is_not_an_input(tmp_path, capsys):
    # was: rank --json other.fits replaced that FITS frame with the JSON table, exit 0
    frames = [tmp_path / f"f{k}.fits" for k in range(2)]
    for k, f in enumerate(frames):
        _frame(f, 100.0 + k)
    victim = tmp_path / "other.fits"
    _frame(victim)
    before = _digest(victim)
    code = main(["rank", *map(str, frames), "--json", str(victim), "-q"])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert str(victim) in err and "not a rank report" in err
    assert _digest(victim) == before


def test_rank_json_never_replaces_another_json_file(tmp_path, capsys):
    # was: a simulator's truth.json (or any JSON) next to the frames was replaced, exit 0
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"frames": [{"scale": 1.0}], "reference": 0}))
    before = _digest(truth)
    code = main(["rank", str(tmp_path / "f0.fits"), "--json", str(truth), "-q"])
    assert code == EXIT_BAD_INPUT
    assert "not a rank report" in capsys.readouterr().err
    assert _digest(truth) == before


def test_rank_json_in_a_missing_folder_is_refused_up_front(tmp_path, capsys):
    # was: every frame was measured first, then the write failed (the table was printed)
    target = tmp_path / "nodir" / "rank.json"
    code = main(["rank", str(tmp_path / "missing.fits"), "--json", str(target), "-q"])
    captured = capsys.readouterr()
    assert code == EXIT_BAD_INPUT
    assert "does not exist" in captured.err and str(tmp_path / "nodir") in captured.err
    assert "recommended reference" not in captured.out  # nothing was ranked


def test_rank_json_still_replaces_an_earlier_rank_report(tmp_path):
    frames = write_sequence(tmp_path / "frames", 3, (256, 256), seed=0, star_density=3e-3)
    report = tmp_path / "rank.json"
    report.write_text(json.dumps({"reference": None, "yardstick": None, "frames": []}))
    assert main(["rank", *map(str, frames), "--json", str(report), "-q"]) == 0
    data = json.loads(report.read_text())
    assert sorted(r["file"] for r in data["frames"]) == sorted(map(str, frames))


# --- msgr ---------------------------------------------------------------------------------


def test_msgr_out_onto_a_folder_says_so_without_suggesting_overwrite(tmp_path, capsys):
    # was: "exists; use --overwrite to replace it", and with --overwrite "is a folder"
    narrow, wide = tmp_path / "n.fits", tmp_path / "w.fits"
    _frame(narrow)
    _frame(wide)
    folder = tmp_path / "out"
    folder.mkdir()
    code = main(["msgr", str(narrow), str(wide), "--out", str(folder), "-q"])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert "is a folder" in err and "--overwrite" not in err


# --- napari reader / writer -----------------------------------------------------------------


@pytest.mark.parametrize("path", [None, 5, b"/data/a.fits", [b"/data/a.fits"]])
def test_reader_returns_none_for_what_is_not_a_path(path):
    # was: TypeError from napari_get_reader, whose contract is "never raises"
    assert napari_get_reader(path) is None


def test_writer_never_replaces_the_file_the_layer_was_read_from(tmp_path):
    # was: layer.save(<its own file>) replaced the raw uint16 frame with float32 data silently
    src = tmp_path / "raw.fits"
    fits.PrimaryHDU(np.arange(12, dtype=np.uint16).reshape(3, 4)).writeto(src)
    before = _digest(src)
    data, kwargs, _ = read_frames(str(src))[0]
    with pytest.raises(FrameError, match="cannot replace an input"):
        write_fits(str(src), data * 2, kwargs)
    assert _digest(src) == before
    out = write_fits(str(tmp_path / "copy.fits"), data * 2, kwargs)  # another name: written
    assert read_frame(out[0]).data[2, 3] == pytest.approx(22.0)


@pytest.mark.parametrize("channels", [3, 4])
def test_writer_saves_an_rgb_layer_as_colour_planes_the_reader_opens(tmp_path, channels):
    # was: written as (y, x, 3) FITS (NAXIS1 = 3), which the reader refused: "64 planes"
    rgb = np.zeros((6, 8, channels), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 30
    out = write_fits(str(tmp_path / "rgb.fits"), rgb, {"name": "png", "rgb": True})
    data = read_frame(out[0]).data
    assert data.shape == (3, 6, 8)
    assert data[:, 0, 0].tolist() == [10.0, 20.0, 30.0]


def test_writer_with_a_header_that_is_not_a_fits_header_warns_and_saves(tmp_path):
    # was: ValueError/TypeError traceback from fits.Header(<another plugin's metadata>)
    out = tmp_path / "x.fits"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_fits(str(out), np.ones((4, 5)), {"metadata": {"header": 12}})
    assert any(issubclass(w.category, FrameWarning) and str(out) in str(w.message)
               for w in caught)
    assert read_frame(out).data.shape == (4, 5)


def test_writer_reads_a_header_given_as_text(tmp_path):
    header = fits.Header({"EXPTIME": 30.0, "OBJECT": "M 94"})
    for text in (header.tostring(), header.tostring(sep="\n")):
        out = write_fits(str(tmp_path / "t.fits"), np.ones((4, 5)),
                         {"metadata": {"header": text}})
        frame = read_frame(out[0])
        assert frame.meta.exposure == 30.0 and frame.header["OBJECT"] == "M 94"


def test_rank_warns_about_a_frame_taken_through_another_filter(tmp_path, capsys):
    # was: an Ha frame ranked against an R yardstick without a word (normalize warns)
    frames = write_sequence(tmp_path / "frames", 3, (256, 256), seed=0, star_density=3e-3)
    for path, name in zip(frames, ("R", "R", "Ha")):
        with fits.open(path, mode="update") as hdul:
            hdul[0].header["FILTER"] = name
    assert main(["rank", *map(str, frames), "-q"]) == 0
    err = capsys.readouterr().err
    assert f"{frames[2]}: FILTER 'Ha' differs from the yardstick's 'R'" in err
    assert f"{frames[0]}: FILTER" not in err and f"{frames[1]}: FILTER" not in err


def test_msgr_warns_when_one_image_is_mono_and_the_other_colour(tmp_path):
    """A mono wide image for a colour narrow one is accepted, but nebulae whose colour
    changes across the field leak into the model (measured 0.35-0.59 of the gradient left,
    0.022 with an RGB wide): the run says so; an RGB pair does not get the warning."""
    from napari_nsg.pipeline.msgr import MIXED_CHANNELS_WARNING, run_msgr
    from napari_nsg.synthetic import sample_pair

    pair = sample_pair(seed=1, channels=3)
    narrow, rgb_wide, mono_wide = (tmp_path / n for n in ("n.fits", "w3.fits", "w1.fits"))
    fits.PrimaryHDU(pair.narrow.astype(np.float32), pair.narrow_header).writeto(narrow)
    fits.PrimaryHDU(pair.wide.astype(np.float32), pair.wide_header).writeto(rgb_wide)
    fits.PrimaryHDU(pair.wide.mean(axis=0).astype(np.float32), pair.wide_header).writeto(mono_wide)
    warned = [MIXED_CHANNELS_WARNING in run_msgr(narrow, wide, tmp_path / f"o{k}.fits").warnings
              for k, wide in enumerate((mono_wide, rgb_wide))]
    assert warned == [True, False]
