"""``napari-nsg normalize`` and ``napari-nsg demo``: outputs, report, bad frames, resume, executors."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from napari_nsg.cli import main
from napari_nsg.core.nsg import NsgParameters
from napari_nsg.io import read_frame, write_frame
from napari_nsg.pipeline import reading
from napari_nsg.pipeline.normalize import normalize_frames
from napari_nsg.pipeline.progress import Cancelled
from napari_nsg.pipeline.report import CSV_COLUMNS
from napari_nsg.synthetic import read_truth, simulate_sequence

FIELD = dict(star_density=5e-3, n_bright=30, bright_flux_range=(1e3, 1.5e4))


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """Five 320 x 320 mono frames with truth, written to disk."""
    folder = tmp_path_factory.mktemp("frames")
    seq = simulate_sequence(5, (320, 320), seed=2, transmission=[1.0, 0.9, 0.8, 0.55, 0.95],
                            border=12, **FIELD)
    paths = seq.write(folder)
    return paths, read_truth(folder)


def run_cli(*args) -> int:
    return main(["normalize", *map(str, args), "--quiet"])


def test_outputs_keywords_and_report(frames, tmp_path, capsys):
    paths, truth = frames
    out = tmp_path / "nsg"
    assert run_cli(*paths, "--reference", paths[0], "--out", out, "--gradient-images") == 0
    printed = capsys.readouterr().out
    assert "frame_003.fits" in printed and "rejected" in printed
    report = json.loads((out / "nsg_results.json").read_text())
    rows = report["frames"]
    assert [r["file"] for r in rows] == [str(p) for p in paths]
    with open(out / "nsg_results.csv", newline="") as fh:
        table = list(csv.reader(fh))
    assert tuple(table[0]) == CSV_COLUMNS
    assert len(table) == len(paths) + 1
    for k, (path, row) in enumerate(zip(paths, rows)):
        true_scale = truth["frames"][k]["scale"][0]
        assert row["scale"][0] == pytest.approx(true_scale, rel=0.01)
        assert row["transmission"][0] == pytest.approx(1 / row["scale"][0])
        assert row["is_reference"] == (k == 0)
        assert row["error"] is None
        assert row["exposure"] == 60.0 and row["filter"] == "L"
        assert row["n_samples"] > 50 and row["n_star_pairs"][0] >= 3
        out_file = out / f"{path.stem}_nsg.fits"
        assert row["output"] == str(out_file)
        header = fits.getheader(out_file)
        assert header["NSGREF"] == paths[0].name
        assert header["NSGS0"] == pytest.approx(row["transmission"][0], rel=1e-4)
        assert header["NSGSNR0"] == pytest.approx(row["snr"][0], rel=1e-4)
        assert header["NWEIGHT"] == pytest.approx(row["weight"], rel=1e-4)
        assert header["EXPTIME"] == 60.0  # the input header is kept
        assert any("smoothness" in str(h) for h in header["HISTORY"])
        data = read_frame(out_file).data
        src = read_frame(path).data
        assert data.dtype == np.float32 and data.shape == src.shape
        assert np.all((data == 0) == (src == 0))  # no-data stays no-data
        for kind in ("gradient", "curvature"):
            assert (out / f"{path.stem}_{kind}.fits").exists()
    # the reference: scale 1, weight 1, its own pixels
    assert rows[0]["scale"] == [1.0] and rows[0]["weight"] == 1.0
    np.testing.assert_array_equal(read_frame(out / "frame_000_nsg.fits").data,
                                  read_frame(paths[0]).data)
    # rejection after all frames: the clouded frame 3 (T = 0.55), still written
    assert rows[3]["rejected"] and "transmission" in rows[3]["reject_reason"]
    assert not any(r["rejected"] for i, r in enumerate(rows) if i != 3)
    assert report["per_exposure"] is True
    assert max(r["relative_weight"] for r in rows) == pytest.approx(1.0)


@pytest.fixture()
def bad_set(frames, tmp_path):
    """Good frames plus one of each kind of bad frame."""
    paths, _ = frames
    ref = read_frame(paths[0])
    folder = tmp_path / "bad"
    folder.mkdir()
    d = ref.data
    bad = {
        "small.fits": d[:200, :200],
        "colour.fits": np.stack([d, d, d]),
        "zeros.fits": np.zeros_like(d),
        "nostars.fits": np.random.default_rng(0).normal(1000, 10, d.shape).astype(np.float32),
    }
    nan = read_frame(paths[1]).data.copy()
    nan[:, 24:] = np.nan  # a NaN block over all but a 24 px strip
    bad["nanblock.fits"] = nan
    bad_paths = {}
    for name, data in bad.items():
        bad_paths[name] = write_frame(folder / name, data, ref.header)
    holes = read_frame(paths[2]).data.copy()
    holes[100:140, 60:200] = np.nan  # a NaN block in a frame that is still usable
    bad_paths["holes.fits"] = write_frame(folder / "holes.fits", holes, ref.header)
    (folder / "notfits.fits").write_text("hello")
    bad_paths["notfits.fits"] = folder / "notfits.fits"
    return paths, bad_paths


@pytest.mark.parametrize("reading_process", [False, True])
def test_bad_frames_are_reported_and_the_good_ones_written(bad_set, tmp_path, capsys,
                                                          monkeypatch, reading_process):
    """Also with the frames read and prepared in a process of their own (forced on these
    small frames): the same rows and outputs."""
    read_there = []
    if reading_process:
        monkeypatch.setattr(reading, "READ_PROCESS_MIN_PIXELS", 1)
        read = reading.ReadingProcess.read
        monkeypatch.setattr(reading.ReadingProcess, "read",
                            lambda self, path: read_there.append(path) or read(self, path))
    paths, bad = bad_set
    out = tmp_path / "nsg"
    inputs = [paths[0], bad["small.fits"], paths[1], bad["colour.fits"], bad["zeros.fits"],
              bad["nostars.fits"], bad["nanblock.fits"], bad["holes.fits"], bad["notfits.fits"],
              paths[2]]
    assert run_cli(*inputs, "--reference", paths[0], "--out", out) == 1
    err = capsys.readouterr().err
    rows = {r["file"]: r for r in json.loads((out / "nsg_results.json").read_text())["frames"]}
    expect = {
        "small.fits": "image size differs from the reference",
        "colour.fits": "colour depth differs from the reference",
        "zeros.fits": "no data",
        "nostars.fits": "no star of the reference was found",
        "nanblock.fits": "star",
        "notfits.fits": "not a FITS file",
    }
    for name, text in expect.items():
        row = rows[str(bad[name])]
        assert row["error"], name
        assert text in row["error"], (name, row["error"])
        assert row["output"] is None
        assert not (out / f"{name[:-5]}_nsg.fits").exists()
        assert str(bad[name]) in err  # the CLI names the file
    assert "Traceback" not in err
    for name in ("small.fits", "colour.fits", "zeros.fits"):  # refused as they were read
        assert rows[str(bad[name])]["exposure"] == rows[str(paths[1])]["exposure"] is not None
    for p in (paths[0], paths[1], paths[2], bad["holes.fits"]):
        assert rows[str(p)]["error"] is None
        assert (out / f"{p.stem}_nsg.fits").exists()
    holes = read_frame(out / "holes_nsg.fits").data
    assert np.all(holes[100:140, 60:200] == 0) and np.isfinite(holes).all()
    assert len(read_there) == (len(inputs) - 1 if reading_process else 0)  # not the reference


def test_existing_outputs_overwrite_and_resume(frames, tmp_path, capsys):
    paths, _ = frames
    out = tmp_path / "nsg"
    assert run_cli(*paths[:3], "--reference", paths[0], "--out", out) == 0
    first = (out / "frame_001_nsg.fits").stat().st_mtime_ns
    # again without --overwrite: the outputs and their report rows are kept
    assert run_cli(*paths[:3], "--reference", paths[0], "--out", out) == 0
    assert "kept the output of an earlier run" in capsys.readouterr().err
    assert (out / "frame_001_nsg.fits").stat().st_mtime_ns == first
    # another reference: the folder holds another run's outputs, refused as a whole
    # (exit 2), its outputs and its report untouched
    before = (out / "nsg_results.json").read_bytes()
    assert run_cli(*paths[:3], "--reference", paths[1], "--out", out) == 2
    err = capsys.readouterr().err
    assert "another reference" in err and "--overwrite" in err
    assert (out / "frame_001_nsg.fits").stat().st_mtime_ns == first
    assert (out / "nsg_results.json").read_bytes() == before
    assert run_cli(*paths[:3], "--reference", paths[0], "--out", out, "--overwrite") == 0
    first = (out / "frame_001_nsg.fits").stat().st_mtime_ns
    # --resume: the complete frames are skipped, the new one is done
    assert run_cli(*paths[:4], "--reference", paths[0], "--out", out, "--resume") == 0
    assert (out / "frame_001_nsg.fits").stat().st_mtime_ns == first
    rows = json.loads((out / "nsg_results.json").read_text())["frames"]
    assert len(rows) == 4 and all(r["error"] is None for r in rows)
    # an output that disappeared is redone on resume
    (out / "frame_002_nsg.fits").unlink()
    assert run_cli(*paths[:4], "--reference", paths[0], "--out", out, "--resume") == 0
    assert (out / "frame_002_nsg.fits").exists()
    # --resume with other parameters is refused (exit 2), --overwrite redoes everything
    assert run_cli(*paths[:4], "--reference", paths[0], "--out", out, "--resume",
                   "--smoothness", "1") == 2
    assert "other parameters" in capsys.readouterr().err
    assert run_cli(*paths[:4], "--reference", paths[0], "--out", out, "--overwrite") == 0
    assert (out / "frame_001_nsg.fits").stat().st_mtime_ns != first
    assert not list(out.glob(".*partial*"))


@pytest.mark.parametrize("args,text", [
    (["--smoothness", "5"], "--smoothness must be in -4.0..4.0"),
    (["--sample-size", "1"], "--sample-size must be in 2..150"),
    (["--sample-size", "big"], "--sample-size must be a number"),
    (["--min-weight", "0.95"], "--min-weight"),
    (["--workers", "0"], "--workers must be at least 1"),
])
def test_bad_arguments_exit_2(frames, tmp_path, capsys, args, text):
    paths, _ = frames
    assert run_cli(*paths[:2], "--reference", paths[0], "--out", tmp_path / "o", *args) == 2
    assert text in capsys.readouterr().err


def test_unusable_reference_exit_2_missing_frame_exit_1(frames, tmp_path, capsys):
    paths, _ = frames
    empty = write_frame(tmp_path / "empty.fits", np.zeros((320, 320), np.float32))
    assert run_cli(*paths[:2], "--reference", empty, "--out", tmp_path / "o") == 2
    assert "empty.fits" in capsys.readouterr().err
    # a missing frame is that frame's error, the others go on (exit 1)
    assert run_cli(tmp_path / "nope.fits", paths[1], "--reference", paths[0],
                   "--out", tmp_path / "o") == 1
    assert "nope.fits: file not found" in capsys.readouterr().err
    assert (tmp_path / "o" / f"{paths[1].stem}_nsg.fits").is_file()
    # a missing reference is still exit 2
    assert run_cli(paths[1], "--reference", tmp_path / "nope.fits",
                   "--out", tmp_path / "o2") == 2
    assert "nope.fits: file not found" in capsys.readouterr().err


def test_workers_and_dask_give_the_same_results(frames, tmp_path):
    paths, _ = frames
    params = NsgParameters()
    local = normalize_frames(paths, paths[0], tmp_path / "a", params)
    pool = normalize_frames(paths, paths[0], tmp_path / "b", params, workers=2)
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        dask = normalize_frames(paths, paths[0], tmp_path / "c", params,
                                scheduler=cluster.scheduler_address)
    for other in (pool, dask):
        assert [r.scale for r in other.rows] == [r.scale for r in local.rows]
        assert [r.weight for r in other.rows] == [r.weight for r in local.rows]
    a = read_frame(tmp_path / "a" / "frame_002_nsg.fits").data
    for d in ("b", "c"):
        np.testing.assert_array_equal(read_frame(tmp_path / d / "frame_002_nsg.fits").data, a)


def test_progress_and_cancel(frames, tmp_path):
    paths, _ = frames
    seen = []
    normalize_frames(paths, paths[0], tmp_path / "p",
                     progress=lambda done, total, msg: seen.append((done, total)))
    assert seen[-1] == (len(paths), len(paths))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    cancel = threading.Event()

    def stop_after_two(done, total, msg):
        if done >= 2:
            cancel.set()

    with pytest.raises(Cancelled):
        normalize_frames(paths, paths[0], tmp_path / "q", progress=stop_after_two, cancel=cancel)
    written = sorted(p.name for p in (tmp_path / "q").glob("*_nsg.fits"))
    assert written == ["frame_000_nsg.fits", "frame_001_nsg.fits"]
    rows = json.loads((tmp_path / "q" / "nsg_results.json").read_text())["frames"]
    assert len(rows) == 2  # resumable
    assert not list((tmp_path / "q").glob(".*partial*"))


def test_scheduler_unreachable_is_a_clear_error(frames, tmp_path, capsys, monkeypatch):
    paths, _ = frames
    pytest.importorskip("distributed")
    monkeypatch.setattr("napari_nsg.pipeline.executors.SCHEDULER_TIMEOUT", "1s")
    assert run_cli(*paths[:2], "--reference", paths[0], "--out", tmp_path / "o",
                   "--scheduler", "tcp://127.0.0.1:1") == 2
    assert "cannot reach the Dask scheduler" in capsys.readouterr().err


def test_demo_runs_and_matches_truth(tmp_path, capsys):
    # 384 px: the registered copies keep enough stars in common for 2 % scales
    assert main(["demo", str(tmp_path / "demo"), "--frames", "4", "--size", "384"]) == 0
    out = capsys.readouterr().out
    assert "true scale" in out and "scale error vs truth" in out
    assert "recommended reference" in out and "registration: ratio" in out
    assert "transform error vs truth" in out and "[5] stack" in out
    assert (tmp_path / "demo" / "stack.fits").is_file()
    truth = read_truth(tmp_path / "demo" / "frames")
    report = json.loads((tmp_path / "demo" / "nsg" / "nsg_results.json").read_text())
    # the reference is the top-ranked frame; the truth's scales are relative to frame 0
    # the demo normalizes registered copies (<stem>_reg.fits) of the simulated frames
    true = {f["file"].replace(".fits", "_reg.fits"): f["scale"][0] for f in truth["frames"]}
    ref = true[Path(report["reference"]).name]
    for r in report["frames"]:
        assert r["scale"][0] == pytest.approx(true[Path(r["file"]).name] / ref, rel=0.02)
    assert (tmp_path / "demo" / "msgr" / "narrow_msgr.fits").is_file()
    assert main(["demo", str(tmp_path / "demo"), "--frames", "4", "--size", "384"]) == 2


@pytest.mark.parametrize("reading_process", [False, True])
def test_colour_and_bayer_frames(tmp_path, monkeypatch, reading_process):
    """Also with the frames read in a reading process (forced on these small frames):
    colour planes and superpixel-debayered mosaics go through its slots."""
    if reading_process:
        monkeypatch.setattr(reading, "READ_PROCESS_MIN_PIXELS", 1)
    seq = simulate_sequence(3, (256, 256), seed=9, channels=3, transmission=[1.0, 0.8, 0.9],
                            **FIELD)
    paths = seq.write(tmp_path / "rgb")
    out = tmp_path / "nsg_rgb"
    assert run_cli(*paths, "--reference", paths[0], "--out", out) == 0
    header = fits.getheader(out / "frame_001_nsg.fits")
    assert [header[f"NSGS{c}"] for c in range(3)] == pytest.approx(
        list(seq.truth[1].transmission), rel=0.02)
    assert "NSGS3" not in header
    with open(out / "nsg_results.csv", newline="") as fh:
        row = list(csv.DictReader(fh))[1]
    assert len(row["scale"].split(";")) == 3 and len(row["n_star_pairs"].split(";")) == 3
    # raw Bayer frames are debayered on request only
    bayer = simulate_sequence(3, (256, 256), seed=9, bayer="RGGB", transmission=[1.0, 0.8, 0.9],
                              **FIELD)
    bpaths = bayer.write(tmp_path / "bayer")
    out = tmp_path / "nsg_bayer"
    assert run_cli(*bpaths, "--reference", bpaths[0], "--out", out, "--debayer",
                   "superpixel") == 0
    data = read_frame(out / "frame_002_nsg.fits").data
    assert data.shape == (3, 128, 128)
    rows = json.loads((out / "nsg_results.json").read_text())["frames"]
    assert rows[2]["scale"] == pytest.approx(list(bayer.truth[2].scale), rel=0.02)


def test_a_warning_many_frames_share_is_printed_once(capsys):
    from napari_nsg.cli._common import GROUP_WARNINGS_FROM, warn_frames

    shared = "noise estimates differ in kind (K-Sigma vs MRS): the weight is less accurate"
    n = GROUP_WARNINGS_FROM + 2
    pairs = [(f"reg/f{k}.fits", shared) for k in range(n)] + [("reg/f1.fits", "own warning")]
    warn_frames(pairs)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == (f"napari-nsg: warning: {n} frames (f0.fits, f1.fits, f2.fits, ...): "
                        f"{shared}")
    assert lines[1] == "napari-nsg: warning: reg/f1.fits: own warning"
    warn_frames(pairs[: GROUP_WARNINGS_FROM - 1])  # fewer: frame by frame, with the path
    assert capsys.readouterr().err.count("reg/f") == GROUP_WARNINGS_FROM - 1


def test_a_full_disk_stops_the_run_and_resume_finishes_it(frames, tmp_path, monkeypatch, capsys):
    """The disk fills up at frame 2: the run stops there (the frames after it are not
    read and normalized for nothing), each says why and what to do, nothing partial is
    left, and one --resume finishes the run once there is room."""
    import errno

    import napari_nsg.io.write as writing

    paths, _ = frames
    out = tmp_path / "nsg"
    streamed = writing._write_streamed
    written = []

    def fill_up(hdu, tmp):
        if len(written) >= 2:  # the reference's output and frame 1's fit
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(tmp)
        streamed(hdu, tmp)

    monkeypatch.setattr(writing, "_write_streamed", fill_up)
    assert run_cli(*paths, "--reference", paths[0], "--out", out) == 1
    err = capsys.readouterr().err
    rows = json.loads((out / "nsg_results.json").read_text())["frames"]
    assert [r["error"] is None for r in rows] == [True, True, False, False, False]
    assert "No space left on device" in rows[2]["error"]
    assert all("disk filled up at frame_002.fits" in r["error"] for r in rows[3:])
    assert {r["error_kind"] for r in rows[2:]} == {"DiskFullError"}
    assert "run the same command with --resume" in err
    assert not list(out.glob(".*partial*"))
    monkeypatch.setattr(writing, "_write_streamed", streamed)
    assert run_cli(*paths, "--reference", paths[0], "--out", out, "--resume") == 0
    rows = json.loads((out / "nsg_results.json").read_text())["frames"]
    assert all(r["error"] is None for r in rows)


def test_psf_photometry_from_the_command_line(tmp_path):
    """``--photometry psf`` reaches the engine: the report and the headers record it, the
    scales are the psf mode's (those of ``NsgParameters(photometry="psf")``, not the
    apertures'), within 0.5 % of the truth on the issue-like sequence."""
    from test_scale_precision import independent_like  # tests/ is on the path (rootdir)

    seq = independent_like(0)
    folder = tmp_path / "frames"
    folder.mkdir()
    paths = [folder / f"frame_{k:03d}.fits" for k in range(seq.n_frames)]
    for k, path in enumerate(paths):  # 16-bit values, as the engine's tests measure them
        frame = seq.frame(k)
        write_frame(path, np.round(frame.data).astype(np.float32), header=frame.header)
    runs = {}
    for mode in ("aperture", "psf"):
        out = tmp_path / mode
        assert run_cli(*paths, "--reference", paths[0], "--out", out, "--photometry", mode) == 0
        report = json.loads((out / "nsg_results.json").read_text())
        assert report["parameters"]["photometry"] == mode
        header = fits.getheader(out / "frame_001_nsg.fits")
        assert f"NSG.photometry = {mode}" in [str(h) for h in header["HISTORY"]]
        runs[mode] = [r["scale"][0] for r in report["frames"][1:]]
    truth = [float(seq.truth[k].scale[0]) for k in range(1, seq.n_frames)]
    assert runs["psf"] != runs["aperture"]
    np.testing.assert_allclose(runs["psf"], truth, rtol=5e-3)


def test_an_exposure_in_other_units_is_hinted(frames, tmp_path):
    """A frame whose EXPTIME was written in ms (60000 for 60 s) looks clouded per unit of
    exposure and is rejected; the reason then asks about the header's units."""
    import shutil

    paths, _ = frames
    copies = []
    for p in paths[:3]:
        copies.append(tmp_path / p.name)
        shutil.copy(p, copies[-1])
    with fits.open(copies[1], mode="update") as hdul:
        hdul[0].header["EXPTIME"] = 60000.0
    out = tmp_path / "nsg"
    assert run_cli(*copies, "--reference", copies[0], "--out", out) == 0
    rows = json.loads((out / "nsg_results.json").read_text())["frames"]
    assert rows[1]["rejected"] and "EXPTIME in other units" in rows[1]["reject_reason"]
    assert not rows[2]["rejected"] and "EXPTIME" not in rows[2]["reject_reason"]


def test_every_frame_failing_exits_2(frames, tmp_path, capsys):
    """Nothing could be written (the reference not among the frames, every frame missing):
    exit 2, as the user guide says, not 1 ("some frames failed, the others are written")."""
    paths, _ = frames
    code = run_cli(tmp_path / "gone_1.fits", tmp_path / "gone_2.fits", "--reference", paths[0],
                   "--out", tmp_path / "nsg")
    err = capsys.readouterr().err
    assert code == 2 and "no frame could be normalized" in err and "gone_1.fits" in err
    code = run_cli(paths[1], tmp_path / "gone_1.fits", "--reference", paths[0],
                   "--out", tmp_path / "nsg2")
    assert code == 1  # one written, one failed
