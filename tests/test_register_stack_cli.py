"""``napari-nsg register`` and ``napari-nsg stack`` from the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits

from napari_nsg.cli import main
from napari_nsg.synthetic.dithered import simulate_dithered

SHAPE = (300, 360)


def run_cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def dithered(tmp_path_factory):
    d = simulate_dithered(5, SHAPE, seed=4, max_shift=25.0, max_angle=2.0, flip_frame=3,
                          n_stars=250)
    paths = d.write(tmp_path_factory.mktemp("dither") / "in")
    return d, paths


def test_register_writes_aligned_frames_and_a_report(dithered, tmp_path, capsys):
    d, paths = dithered
    out = tmp_path / "reg"
    assert run_cli("register", *paths, "--reference", paths[0], "--out", out, "-q") == 0
    report = json.loads((out / "register_results.json").read_text())
    rows = report["frames"]
    assert [r["error"] for r in rows] == [None] * len(paths)
    assert rows[0]["is_reference"] and (out / "register_results.csv").is_file()
    ref_stars = d.star_xy[(d.star_xy[:, 0] > 5) & (d.star_xy[:, 0] < SHAPE[1] - 5)
                          & (d.star_xy[:, 1] > 5) & (d.star_xy[:, 1] < SHAPE[0] - 5)]
    for k, row in enumerate(rows[1:], start=1):
        assert row["residual_px"] < 0.2
        angle = (d.angle_deg[k] + 180) % 360 - 180
        assert abs(row["rotation_deg"] - angle) < 0.05
        with fits.open(row["output"]) as hdul:
            h = hdul[0].header
            data = hdul[0].data
            assert data.dtype.kind == "f" and data.shape == SHAPE
            assert h["REGREF"] == paths[0].name and h["REGRMS"] == pytest.approx(
                row["residual_px"], abs=1e-3)
            assert h["EXPTIME"] == 60.0  # the input header is kept
            hom = np.array([[h[f"REGH{i}{j}"] for j in (1, 2, 3)] for i in (1, 2, 3)])
        # the keywords give the transform: it maps reference stars onto the frame's truth
        p = ref_stars @ hom[:2, :2].T + hom[:2, 2]
        p = p / (ref_stars @ hom[2, :2] + hom[2, 2])[:, None]
        err = p - d.reference_to_frame(k, ref_stars)
        assert np.sqrt(np.mean(np.sum(err**2, axis=1))) < 0.1
        assert (data == 0).any() and row["coverage"] < 1  # dithered: uncovered edges are 0
    assert "5 of 5 frame(s) registered" in capsys.readouterr().err


def test_register_resume_guards_and_failures(dithered, tmp_path, capsys):
    d, paths = dithered
    out = tmp_path / "reg"
    other = simulate_dithered(2, SHAPE, seed=77).write(tmp_path / "other", prefix="other")[1]
    bad = tmp_path / "bad.fits"
    bad.write_text("not a fits file")
    assert run_cli("register", *paths[:3], other, bad, "--reference", paths[0], "--out", out,
                   "-q") == 1
    err = capsys.readouterr().err
    assert "cannot be registered" in err and "bad.fits" in err
    rows = json.loads((out / "register_results.json").read_text())["frames"]
    assert [r["error"] is None for r in rows] == [True, True, True, False, False]
    first = (out / "dither_001_reg.fits").stat().st_mtime_ns
    assert run_cli("register", *paths[:3], "--reference", paths[0], "--out", out, "--resume",
                   "-q") == 0
    assert (out / "dither_001_reg.fits").stat().st_mtime_ns == first  # kept, not redone
    # other parameters in the same folder: refused, nothing replaced
    assert run_cli("register", *paths[:3], "--reference", paths[0], "--out", out,
                   "--model", "similarity", "-q") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "dither_001_reg.fits").stat().st_mtime_ns == first
    # an output may never replace an input (the only frame failed: nothing written, exit 2)
    assert run_cli("register", paths[1], "--reference", out / "dither_001_reg.fits",
                   "--out", out, "--overwrite", "-q") == 2
    assert "cannot replace an input" in capsys.readouterr().err
    assert (out / "dither_001_reg.fits").stat().st_mtime_ns == first


def test_register_refuses_raw_bayer_without_debayer(tmp_path, capsys):
    from napari_nsg.synthetic import write_sequence

    paths = write_sequence(tmp_path / "raw", 2, (400, 400), seed=1, channels=3, bayer="RGGB",
                           star_density=4e-3)
    assert run_cli("register", *paths, "--reference", paths[0], "--out", tmp_path / "o",
                   "-q") == 2
    err = capsys.readouterr().err
    assert "raw colour mosaic" in err and str(paths[0].name) in err
    assert "use --debayer superpixel (or bilinear)" in err
    assert run_cli("register", *paths, "--reference", paths[0], "--out", tmp_path / "o",
                   "--debayer", "superpixel", "-q") == 0
    with fits.open(tmp_path / "o" / f"{paths[1].stem}_reg.fits") as hdul:
        assert hdul[0].data.shape == (3, 200, 200) and "BAYERPAT" not in hdul[0].header


def test_stack_cli(dithered, tmp_path, capsys):
    d, paths = dithered
    reg = tmp_path / "reg"
    assert run_cli("register", *paths, "--reference", paths[0], "--out", reg, "-q") == 0
    outs = sorted(reg.glob("*_reg.fits"))
    assert run_cli("stack", *outs, "--out", tmp_path / "s.fits", "-q") == 2
    assert "NWEIGHT" in capsys.readouterr().err
    assert run_cli("stack", *outs, "--out", tmp_path / "s.fits", "--weights", "none",
                   "--rejection", "linear-fit", "-q") == 0
    with fits.open(tmp_path / "s.fits") as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "LOWREJ", "HIGHREJ", "NFRAMES"]
        stack, nframes = hdul[0].data, hdul["NFRAMES"].data
        assert hdul[0].header["STKREJ"] == "linear-fit"
    assert nframes.max() == len(outs) and nframes.min() >= 1
    # the frames' stars line up: bright stars keep their peak in the stack (a misaligned
    # stack spreads them out); measured median peak ratio stack / reference 0.97
    ref = fits.getdata(paths[0]).astype(float)
    ratios = []
    for x, y in np.round(d.star_xy[d.star_flux > 5000]).astype(int):
        if 10 <= x < SHAPE[1] - 10 and 10 <= y < SHAPE[0] - 10 and nframes[y, x] == len(outs):
            box = (slice(y - 2, y + 3), slice(x - 2, x + 3))
            ring = (slice(y - 9, y + 10), slice(x - 9, x + 10))
            ratios.append((stack[box].max() - np.median(stack[ring]))
                          / (ref[box].max() - np.median(ref[ring])))
    assert len(ratios) > 10 and 0.85 < np.median(ratios) < 1.1
    assert run_cli("stack", *outs, "--out", tmp_path / "s.fits", "--weights", "none",
                   "-q") == 2  # exists
    assert "--overwrite" in capsys.readouterr().err
    assert run_cli("stack", *outs, "--out", tmp_path / "s2.fits", "--weights", "none",
                   "--chunk-rows", "0", "-q") == 2


@pytest.mark.real
@pytest.mark.slow
def test_wasp12b_register_normalize_stack_end_to_end(real_data, tmp_path, capsys):
    files = sorted((real_data / "wasp12b_calibrated").glob("*.fits"))
    reg, nsg, out = tmp_path / "reg", tmp_path / "nsg", tmp_path / "stack.fits"
    assert run_cli("register", *files, "--reference", files[0], "--out", reg, "-q") == 0
    rows = json.loads((reg / "register_results.json").read_text())["frames"]
    # measured: residuals 0.10-0.19 px from 35-56 stars, shifts up to 4 px
    assert all(r["residual_px"] < 0.3 for r in rows)
    regs = sorted(reg.glob("*_reg.fits"))
    assert run_cli("normalize", *regs, "--reference", regs[0], "--out", nsg, "-q") == 0
    normed = sorted(nsg.glob("*_nsg.fits"))
    assert len(normed) == len(files)
    assert run_cli("stack", *normed, "--out", out, "-q") == 0
    capsys.readouterr()
    with fits.open(out) as hdul:
        stack = hdul[0].data
        assert hdul[0].header["NSTACK"] == len(files)
        assert hdul[0].header["STKREJ"] == "sigma"  # 8 frames
        nframes = hdul["NFRAMES"].data
    ref = fits.getdata(normed[0]).astype(float)
    core = nframes == len(files)
    assert core.mean() > 0.9
    # stacking 8 frames lowers the background noise (measured: 0.45x the reference's)
    def noise(img):  # robust sigma of pixel-to-pixel differences where all frames cover
        d = (img[:, 1:] - img[:, :-1])[core[:, 1:] & core[:, :-1]]
        return 1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2)

    assert noise(stack) < 0.7 * noise(ref)


@pytest.mark.slow
def test_register_workers_and_dask_equal_serial_and_cancel(dithered, tmp_path):
    import threading

    from napari_nsg.pipeline.progress import Cancelled
    from napari_nsg.pipeline.register import register_frames

    d, paths = dithered
    serial = register_frames(paths, paths[0], tmp_path / "a")
    pool = register_frames(paths, paths[0], tmp_path / "b", workers=2)
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        dask = register_frames(paths, paths[0], tmp_path / "d",
                               scheduler=cluster.scheduler_address)
    name = f"{paths[2].stem}_reg.fits"
    for other, folder in ((pool, "b"), (dask, "d")):
        assert [r.residual_px for r in other.rows] == [r.residual_px for r in serial.rows]
        np.testing.assert_array_equal(fits.getdata(tmp_path / "a" / name),
                                      fits.getdata(tmp_path / folder / name))
    cancel = threading.Event()
    seen = []

    def progress(done, total, message):
        seen.append(done)
        if done >= 2:
            cancel.set()

    with pytest.raises(Cancelled):
        register_frames(paths, paths[0], tmp_path / "c", progress=progress, cancel=cancel)
    written = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert "dither_000_reg.fits" in written and "dither_004_reg.fits" not in written
    assert not [n for n in written if n.startswith(".")]  # no partial file
    rows = json.loads((tmp_path / "c" / "register_results.json").read_text())["frames"]
    assert len(rows) == 2  # the report holds the finished frames


def test_a_full_disk_stops_register_and_resume_finishes_it(dithered, tmp_path, monkeypatch,
                                                           capsys):
    """As normalize: the disk fills up at the third output, the run stops there, the
    frames left say to free space and --resume, which finishes the run."""
    import errno

    import napari_nsg.io.write as writing

    _, paths = dithered
    out = tmp_path / "reg"
    streamed = writing._write_streamed
    written = []

    def fill_up(hdu, tmp):
        if len(written) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(tmp)
        streamed(hdu, tmp)

    monkeypatch.setattr(writing, "_write_streamed", fill_up)
    assert run_cli("register", *paths, "--reference", paths[0], "--out", out, "-q") == 1
    err = capsys.readouterr().err
    rows = json.loads((out / "register_results.json").read_text())["frames"]
    failed = [r for r in rows if r["error"]]
    assert len(failed) == len(paths) - 2
    assert {r["error_kind"] for r in failed} == {"DiskFullError"}
    assert sum("No space left on device" in r["error"] for r in failed) == 1
    assert "free space, then run the same command with --resume" in err
    assert not list(out.glob(".*partial*"))
    monkeypatch.setattr(writing, "_write_streamed", streamed)
    assert run_cli("register", *paths, "--reference", paths[0], "--out", out, "-q",
                   "--resume") == 0
    rows = json.loads((out / "register_results.json").read_text())["frames"]
    assert all(r["error"] is None for r in rows)
