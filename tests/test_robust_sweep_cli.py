"""Holes found by the session-22 robustness sweep of register, stack and normalize."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits

from napari_nsg.cli import main
from napari_nsg.synthetic import read_truth, write_sequence
from napari_nsg.synthetic.dithered import simulate_dithered

#: A frame under the 8 Mpx binning threshold: the reference path (sep) finds its stars.
SHAPE = (300, 360)
#: Fixed-pattern hot pixels (0.1 % of the pixels), the same sensor place in every frame.
N_HOT = 100
HOT_LEVELS = (3000.0, 65535.0)
#: A registration this close to the truth (px, degrees) is right; the hot pixels' identity
#: map missed the frame's shift by 10-30 px.
SHIFT_TOLERANCE = 0.3
ANGLE_TOLERANCE = 0.05
#: A weight in the header of a normalized frame.
WEIGHT = 0.7
#: Registered frames for normalize, their absolute transmissions (the scale truth ~1.4) and
#: fixed hot pixels (0.07 %: they pulled the scale to 1.00, 30 % off).
SEQ_SHAPE = (480, 560)
SEQ_TRANSMISSION = (1.0, 0.7)
N_SEQ_HOT = 180
#: The scale with the hot pixels left out of the photometry: within its reported error (1-4 %
#: where hot pixels fall into the stars' apertures; 0.5-1.5 % without hot pixels).
SCALE_TOLERANCE = 0.05


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def _add_hot(data, iy, ix, level, pairs):
    """Hot pixels at ``(iy, ix)``; with ``pairs`` each with a hot right-hand neighbour too
    (at 0.8 of its level): adjacent hot pixels, common on CMOS sensors."""
    for dx, share in ((0, 1.0), (1, 0.8)) if pairs else ((0, 1.0),):
        cols = np.minimum(ix + dx, data.shape[1] - 1)
        data[iy, cols] = np.maximum(data[iy, cols], level * share)


@pytest.fixture(scope="module", params=[False, True], ids=["single", "adjacent pairs"])
def hot_frames(tmp_path_factory, request):
    """Three dithered frames that share one pattern of hot pixels (single, or adjacent
    pairs: 0.2 % of the pixels)."""
    d = simulate_dithered(3, SHAPE, seed=21, n_stars=250, max_shift=25.0, max_angle=1.0)
    rng = np.random.default_rng(2)
    iy, ix = rng.integers(0, SHAPE[0], N_HOT), rng.integers(0, SHAPE[1], N_HOT)
    level = rng.uniform(*HOT_LEVELS, N_HOT).astype(np.float32)
    folder = tmp_path_factory.mktemp("hot")
    paths = []
    for k, (frame, header) in enumerate(zip(d.frames, d.headers)):
        data = frame.copy()
        _add_hot(data, iy, ix, level, request.param)
        paths.append(folder / f"hot_{k}.fits")
        fits.PrimaryHDU(data, header).writeto(paths[-1])
    return d, paths


def test_fixed_hot_pixels_do_not_register_frames_onto_themselves(hot_frames, tmp_path):
    """Before: the hot pixels outshone the stars and matched each other: every frame got an
    identity map (dx = dy = 0, residual 0.005 px) and exit 0; adjacent pairs did so until
    the lone-peak test left each peak's brightest neighbour out (residual 0.003 px)."""
    d, paths = hot_frames
    out = tmp_path / "reg"
    assert run_cli("register", *paths[1:], "--reference", paths[0], "--out", out, "-q") == 0
    rows = json.loads((out / "register_results.json").read_text())["frames"]
    for k, row in enumerate(rows, start=1):
        assert abs(row["shift_x"] - d.dx[k]) < SHIFT_TOLERANCE, row
        assert abs(row["shift_y"] - d.dy[k]) < SHIFT_TOLERANCE, row
        assert abs(row["rotation_deg"] - d.angle_deg[k]) < ANGLE_TOLERANCE, row


@pytest.mark.parametrize("pairs", [False, True], ids=["single", "adjacent pairs"])
def test_fixed_hot_pixels_do_not_pull_the_scale_to_one(tmp_path, pairs):
    """Before: the hot pixels were reference "stars" of the same brightness in every frame:
    scale 1.00 for a truth of 1.45, exit 0, no warning."""
    folder = tmp_path / "seq"
    paths = write_sequence(folder, len(SEQ_TRANSMISSION), SEQ_SHAPE, seed=8,
                           transmission=SEQ_TRANSMISSION)
    rng = np.random.default_rng(3)
    iy, ix = rng.integers(0, SEQ_SHAPE[0], N_SEQ_HOT), rng.integers(0, SEQ_SHAPE[1], N_SEQ_HOT)
    level = rng.uniform(*HOT_LEVELS, N_SEQ_HOT).astype(np.float32)
    for path in paths:
        data, header = fits.getdata(path, header=True)
        data = data.astype(np.float32)
        _add_hot(data, iy, ix, level, pairs)
        fits.PrimaryHDU(data, header).writeto(path, overwrite=True)
    out = tmp_path / "nsg"
    assert run_cli("normalize", paths[1], "--reference", paths[0], "--out", out,
                   "--min-transmission", "0", "--min-weight", "0", "-q") == 0
    row = json.loads((out / "nsg_results.json").read_text())["frames"][0]
    truth = read_truth(folder)["frames"][1]["scale"][0]
    assert abs(row["scale"][0] / truth - 1) < SCALE_TOLERANCE, (row["scale"], truth)


def _weighted(folder, name: str, weight: float, level: float = 100.0):
    path = folder / name
    header = fits.Header()
    header["NWEIGHT"] = weight
    fits.PrimaryHDU(np.full((8, 10), level, np.float32), header).writeto(path)
    return path


def test_frames_of_weight_zero_are_refused_not_stacked_as_zeros(tmp_path, capsys):
    """Before: NWEIGHT = 0 in every frame gave a stack of zeros (no data), '2 of 2 frame(s)
    stacked' and exit 0; one such frame was counted as stacked but added nothing."""
    a, b = _weighted(tmp_path, "a.fits", 0.0), _weighted(tmp_path, "b.fits", 0.0)
    assert run_cli("stack", a, b, "--out", tmp_path / "zero.fits", "-q") == 2
    err = capsys.readouterr().err
    assert "a.fits: NWEIGHT = 0.0" in err and "weight 0" in err
    assert not (tmp_path / "zero.fits").exists()
    good = _weighted(tmp_path, "good.fits", WEIGHT)
    assert run_cli("stack", a, good, "--out", tmp_path / "one.fits", "-q") == 1
    assert "a.fits: NWEIGHT = 0.0" in capsys.readouterr().err
    assert np.allclose(fits.getdata(tmp_path / "one.fits"), 100.0)


def test_a_frame_listed_twice_is_used_once(tmp_path, capsys):
    """Before: stack averaged it twice (exit 0); register failed its second copy with 'output
    exists ... not this run's' (exit 1)."""
    low = _weighted(tmp_path, "low.fits", WEIGHT, level=100.0)
    high = _weighted(tmp_path, "high.fits", WEIGHT, level=400.0)
    out = tmp_path / "stack.fits"
    assert run_cli("stack", low, tmp_path / "." / "low.fits", high, "--out", out,
                   "--rejection", "none", "-q") == 0
    assert np.allclose(fits.getdata(out), 250.0)  # (100 + 400) / 2, not (2 x 100 + 400) / 3
    err = capsys.readouterr().err
    assert "low.fits: listed 2 times; used once" in err
    assert "2 of 2 frame(s) stacked" in err


def test_register_a_frame_listed_twice(hot_frames, tmp_path, capsys):
    _, paths = hot_frames
    out = tmp_path / "reg"
    assert run_cli("register", paths[1], paths[1], "--reference", paths[0], "--out", out,
                   "-q") == 0
    assert len(json.loads((out / "register_results.json").read_text())["frames"]) == 1
    assert "listed 2 times; used once" in capsys.readouterr().err


def test_a_pattern_that_matched_nothing_is_named_as_one(tmp_path, capsys):
    """Before: 'zzz*.fits: file not found', nothing said the shell passed a pattern on."""
    good = _weighted(tmp_path, "good.fits", WEIGHT)
    assert run_cli("stack", good, tmp_path / "zzz*.fits", "--out", tmp_path / "s.fits",
                   "-q") == 1
    err = capsys.readouterr().err
    assert "zzz*.fits: file not found (a shell pattern that matched no file" in err


def test_stack_reads_frame_shapes_as_the_other_commands(tmp_path, capsys):
    """Before: stack streamed any 3-D FITS: colour planes last, (y, x, 3), were stacked as
    y planes of 3 columns (exit 0; register and normalize refuse that frame), and a single
    plane (1, y, x) could not be stacked with mono frames ('has shape (400, 480), the first
    frame ... has (1, 300, 360)')."""
    plane = np.full((8, 10), 100.0, np.float32)
    last = [tmp_path / "last_a.fits", tmp_path / "last_b.fits"]
    for path in last:
        fits.PrimaryHDU(np.stack([plane] * 3, axis=-1)).writeto(path)
    assert run_cli("stack", *last, "--weights", "none", "--out", tmp_path / "s.fits",
                   "-q") == 2
    assert "colour planes last" in capsys.readouterr().err
    assert not (tmp_path / "s.fits").exists()
    single, mono = tmp_path / "single.fits", tmp_path / "mono.fits"
    fits.PrimaryHDU(plane[None]).writeto(single)
    fits.PrimaryHDU(plane + 200.0).writeto(mono)
    out = tmp_path / "m.fits"
    assert run_cli("stack", single, mono, "--weights", "none", "--rejection", "none",
                   "--out", out, "-q") == 0
    stack = fits.getdata(out)
    assert stack.shape == plane.shape and np.allclose(stack, 200.0)


def test_register_names_a_blank_frame(hot_frames, tmp_path, capsys):
    """Before: an all-NaN or all-zero frame 'cannot be registered: only 0 star(s) detected
    in the frame' (as a starless one); normalize says it has no data."""
    _, paths = hot_frames
    blank = tmp_path / "blank.fits"
    fits.PrimaryHDU(np.full(SHAPE, np.nan, np.float32)).writeto(blank)
    assert run_cli("register", blank, "--reference", paths[0], "--out", tmp_path / "r",
                   "-q") == 2  # its only frame failed: nothing written
    assert "blank.fits: cannot be registered: the frame has no data" in capsys.readouterr().err


def test_file_names_beyond_ascii_reach_the_headers_escaped(hot_frames, tmp_path, capsys):
    """Before: a reference named 'réf.fits' failed every frame of register and normalize
    ('unexpected ValueError: FITS header values must contain standard printable ASCII'),
    and stack of 'кадр.fits' ended in that traceback (its HISTORY line), exit 1."""
    _, paths = hot_frames
    ref = tmp_path / "réf.fits"
    ref.write_bytes(paths[0].read_bytes())
    out = tmp_path / "reg"
    assert run_cli("register", paths[1], "--reference", ref, "--out", out, "-q") == 0
    assert fits.getheader(out / "hot_1_reg.fits")["REGREF"] == "r\\xe9f.fits"
    frame = _weighted(tmp_path, "кадр.fits", WEIGHT)
    stack = tmp_path / "stäck.fits"
    assert run_cli("stack", frame, "--out", stack, "-q") == 0
    history = [str(line) for line in fits.getheader(stack)["HISTORY"]]
    assert any("\\u043a\\u0430\\u0434\\u0440.fits" in line for line in history)
    assert "Traceback" not in capsys.readouterr().err
