"""Issue 8, through the CLI: inputs never written, foreign runs left alone, one --resume
enough, write errors named, missing frames per frame, empty --out, umask, partial files.

Every case checks the exit status, that stderr has no traceback, that the inputs'
checksums are unchanged and that the report agrees with the files on disk.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from astropy.io import fits

from napari_nsg.cli import main
from napari_nsg.io import atomic
from napari_nsg.io.atomic import PARTIAL_TAG
from napari_nsg.pipeline.normalize import ForeignRunError
from napari_nsg.synthetic import simulate_pair, simulate_sequence

FIELD = dict(star_density=5e-3, n_bright=30, bright_flux_range=(1e3, 1.5e4))
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Three 256 x 256 mono frames (simulated, frame_000 the best)."""
    folder = tmp_path_factory.mktemp("rel_frames")
    seq = simulate_sequence(3, (256, 256), seed=5, transmission=[1.0, 0.9, 0.95],
                            border=10, **FIELD)
    return seq.write(folder)


@pytest.fixture()
def frames(source, tmp_path):
    """A private copy of the frames (tests may put outputs next to them)."""
    folder = tmp_path / "in"
    folder.mkdir()
    return [Path(shutil.copy2(p, folder / p.name)) for p in source]


def digest(paths) -> dict[str, str]:
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def normalize(*args) -> int:
    return main(["normalize", *map(str, args), "--quiet"])


def report_of(out: Path) -> dict:
    return json.loads((out / "nsg_results.json").read_text())


def assert_consistent(out: Path, gradient_images: bool = False) -> None:
    """Every ok row's outputs exist; every normalized image on disk has an ok row."""
    rows = report_of(out)["frames"]
    listed = set()
    for r in rows:
        if r["error"] is None:
            keys = ["output"] + (["gradient_output", "curvature_output"] if gradient_images else [])
            for k in keys:
                assert Path(r[k]).is_file(), (r["file"], k)
                listed.add(Path(r[k]).name)
    on_disk = {p.name for p in out.glob("*_nsg.fits")}
    assert on_disk <= listed, on_disk - listed
    assert not list(out.glob(f".*{PARTIAL_TAG}*"))


def clean_stderr(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# 1. no output replaces an input ------------------------------------------------------------

@pytest.mark.parametrize("how", ["same", "dotdot", "symlink", "hardlink"])
def test_rank_json_never_replaces_an_input(frames, tmp_path, capsys, how):
    a = frames[0]
    target = {"same": a, "dotdot": a.parent / ".." / a.parent.name / a.name,
              "symlink": tmp_path / "link.json", "hardlink": tmp_path / "hard.json"}[how]
    if how == "symlink":
        target.symlink_to(a)
    elif how == "hardlink":
        os.link(a, target)
    before = digest(frames)
    assert main(["rank", *map(str, frames), "--json", str(target), "--quiet"]) == 2
    err = clean_stderr(capsys)
    assert "cannot replace an input" in err and str(target) in err
    assert digest(frames) == before


def test_rank_json_is_written_with_the_umask(frames, tmp_path, capsys):
    old = os.umask(0o027)
    try:
        assert main(["rank", *map(str, frames), "--json", str(tmp_path / "r.json"),
                     "--quiet"]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o640
    assert json.loads((tmp_path / "r.json").read_text())["frames"]


# 2. an input named like another's output -------------------------------------------------

def test_output_named_like_an_input_fails_that_frame(frames, capsys):
    folder = frames[0].parent
    impostor = folder / f"{frames[1].stem}_nsg.fits"  # f1_nsg.fits is an input here
    shutil.copy2(frames[2], impostor)
    inputs = [*frames, impostor]
    before = digest(inputs)
    assert normalize(*inputs, "--reference", frames[0], "--out", folder, "--overwrite") == 1
    err = clean_stderr(capsys)
    assert f"{frames[1]}: " in err and "cannot replace an input" in err
    assert digest(inputs) == before
    rows = {Path(r["file"]).name: r for r in report_of(folder)["frames"]}
    assert rows[frames[1].name]["error_kind"] == "InputCollisionError"
    assert rows[frames[1].name]["output"] is None
    for f in (frames[0], frames[2], impostor):  # the others are done (f1_nsg -> f1_nsg_nsg)
        assert rows[f.name]["error"] is None
        assert (folder / f"{f.stem}_nsg.fits").is_file()


def test_report_named_like_an_input_refuses_the_run(frames, capsys):
    folder = frames[0].parent
    fake = folder / "nsg_results.json"
    fake.write_text("my notes")
    assert normalize(*frames, fake, "--reference", frames[0], "--out", folder,
                     "--overwrite") == 2
    assert "cannot replace an input" in clean_stderr(capsys)
    assert fake.read_text() == "my notes"


# 3. another run's outputs and report are left alone -----------------------------------------

def test_another_reference_leaves_the_first_run_alone(frames, tmp_path, capsys):
    out = tmp_path / "nsg"
    assert normalize(*frames, "--reference", frames[0], "--out", out) == 0
    first = digest([*out.glob("*.fits"), out / "nsg_results.json", out / "nsg_results.csv"])
    assert normalize(*frames, "--reference", frames[1], "--out", out) == 2
    err = clean_stderr(capsys)
    assert "another reference" in err and "--overwrite" in err
    assert normalize(*frames, "--reference", frames[1], "--out", out, "--resume") == 2
    err = clean_stderr(capsys)
    assert "--resume only finishes a run with the same reference" in err
    assert digest(first) == first
    assert report_of(out)["reference"] == str(frames[0])
    assert_consistent(out)
    # --overwrite is the way to replace it
    assert normalize(*frames, "--reference", frames[1], "--out", out, "--overwrite") == 0
    assert report_of(out)["reference"] == str(frames[1])
    assert fits.getheader(out / "frame_000_nsg.fits")["NSGREF"] == frames[1].name
    assert_consistent(out)


def test_pipeline_errors_do_not_speak_in_flags(frames, tmp_path):
    from napari_nsg.pipeline.normalize import normalize_frames

    out = tmp_path / "nsg"
    normalize_frames(frames[:2], frames[0], out)
    with pytest.raises(ForeignRunError) as info:
        normalize_frames(frames[:2], frames[1], out)
    assert info.value.differs == "reference" and info.value.other_reference == str(frames[0])
    assert "--" not in str(info.value)
    # a frame whose output exists and is not this run's
    (out / "frame_002_nsg.fits").write_bytes(b"someone else's")
    res = normalize_frames(frames, frames[0], out)
    row = res.rows[2]
    assert row.error_kind == "OutputExistsError" and "--" not in row.error
    assert (out / "frame_002_nsg.fits").read_bytes() == b"someone else's"


# 5. one --resume is enough; a frame's outputs are a unit --------------------------------------

def test_resume_after_outputs_renamed_before_the_row(frames, tmp_path, capsys):
    out = tmp_path / "nsg"
    assert normalize(*frames, "--reference", frames[0], "--out", out, "--gradient-images") == 0
    done = digest(out.glob("frame_*.fits"))
    # what a kill between the rename and the report row leaves: outputs, no row
    doc = report_of(out)
    doc["frames"] = doc["frames"][:1]
    (out / "nsg_results.json").write_text(json.dumps(doc))
    assert normalize(*frames, "--reference", frames[0], "--out", out, "--gradient-images",
                     "--resume") == 0
    clean_stderr(capsys)
    assert digest(done) == done  # redone, bit-identical
    assert [r["error"] for r in report_of(out)["frames"]] == [None] * 3
    assert_consistent(out, gradient_images=True)


def test_interrupt_between_renames_leaves_no_partial_unit(frames, tmp_path, capsys,
                                                          monkeypatch):
    out = tmp_path / "nsg"
    real_replace = os.replace
    calls = []

    def replace_then_interrupt(src, dst):
        calls.append(dst)
        if len(calls) == 7:  # journal, frame 0 (3), its row, frame 1: nsg in place, not gradient
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace_then_interrupt)
    assert normalize(*frames, "--reference", frames[0], "--out", out, "--gradient-images") == 130
    assert "no partial outputs were left" in clean_stderr(capsys)
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert not (out / "frame_001_nsg.fits").exists()  # removed with its unit
    assert sorted(p.name for p in out.glob("*.fits")) == [
        "frame_000_curvature.fits", "frame_000_gradient.fits", "frame_000_nsg.fits"]
    assert_consistent(out, gradient_images=True)
    assert normalize(*frames, "--reference", frames[0], "--out", out, "--gradient-images",
                     "--resume") == 0
    assert len(list(out.glob("frame_*.fits"))) == 9
    assert_consistent(out, gradient_images=True)


# 7. partial files ------------------------------------------------------------------------

def test_partials_of_dead_processes_are_removed(frames, tmp_path, capsys):
    out = tmp_path / "nsg"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = out / f".frame_001_nsg.fits{PARTIAL_TAG}999999999-abc"
        old_style = out / f".frame_002_nsg.fits{PARTIAL_TAG}x1y2"
        alive = out / f".frame_000_nsg.fits{PARTIAL_TAG}{sleeper.pid}-abc"
        for p in (dead, old_style, alive):
            p.write_bytes(b"half")
        assert normalize(*frames, "--reference", frames[0], "--out", out) == 0
        assert not dead.exists() and not old_style.exists()
        assert alive.exists()  # a running process may still be writing it
        # rank --json and msgr clean the folders they write to
        for p in (dead, old_style):
            p.write_bytes(b"half")
        assert main(["rank", *map(str, frames), "--json", str(out / "r.json"), "--quiet"]) == 0
        assert not dead.exists() and not old_style.exists()
        dead.write_bytes(b"half")
        assert main(["msgr", str(frames[0]), str(frames[1]), "--out",
                     str(out / "m.fits"), "--quiet"]) in (0, 2)
        assert not dead.exists() and alive.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    clean_stderr(capsys)


# 10. full disk -----------------------------------------------------------------------------

def test_full_disk_frame_outputs(frames, tmp_path, capsys, monkeypatch):
    out = tmp_path / "nsg"

    def no_space(self, *args, **kwargs):
        raise ENOSPC

    monkeypatch.setattr(fits.PrimaryHDU, "writeto", no_space)
    monkeypatch.setattr("napari_nsg.io.write._stream", no_space)  # float32 frames' writer
    before = digest(frames)
    assert normalize(*frames, "--reference", frames[0], "--out", out) == 2  # nothing written
    err = clean_stderr(capsys)
    # the first output that does not fit stops the run; the others say so
    first = frames[0]
    assert f"{out / (first.stem + '_nsg.fits')}: cannot be written (No space left on device)" in err
    assert f"the output disk filled up at {first.name}" in err and "--resume" in err
    assert "unexpected" not in err
    assert digest(frames) == before
    rows = report_of(out)["frames"]
    assert all(r["error_kind"] == "DiskFullError" for r in rows)
    assert not list(out.glob("*.fits"))
    assert_consistent(out)


def test_full_disk_report_and_rank_json(frames, tmp_path, capsys, monkeypatch):
    def no_space(self, *args, **kwargs):
        raise ENOSPC

    monkeypatch.setattr(Path, "write_text", no_space)
    out = tmp_path / "nsg"
    assert normalize(*frames, "--reference", frames[0], "--out", out) == 2
    err = clean_stderr(capsys)
    assert f"{out / 'nsg_results.json'}: cannot be written (No space left on device)" in err
    assert not list(out.glob("*.fits"))  # the journal comes first: nothing written
    assert not list(out.glob(f".*{PARTIAL_TAG}*"))
    js = tmp_path / "rank.json"
    assert main(["rank", *map(str, frames), "--json", str(js), "--quiet"]) == 2
    err = clean_stderr(capsys)
    assert f"{js}: cannot be written (No space left on device)" in err
    assert not js.exists()


@pytest.mark.slow
def test_full_disk_msgr(tmp_path, capsys, monkeypatch):
    from napari_nsg.io import write_frame

    pair = simulate_pair((600, 800), scale_ratio=3.0, rotation_deg=25.0, seed=4, gain=25.0)
    narrow = write_frame(tmp_path / "narrow.fits", pair.narrow, pair.narrow_header)
    wide = write_frame(tmp_path / "wide.fits", pair.wide, pair.wide_header)
    real = fits.PrimaryHDU.writeto
    n = []

    def second_fails(self, *args, **kwargs):
        n.append(1)
        if len(n) == 2:
            raise ENOSPC
        return real(self, *args, **kwargs)

    monkeypatch.setattr(fits.PrimaryHDU, "writeto", second_fails)
    from napari_nsg.io import write as write_module  # float32 frames' writer: the same count
    real_stream = write_module._stream

    def second_stream_fails(*args):
        n.append(1)
        if len(n) == 2:
            raise ENOSPC
        return real_stream(*args)

    monkeypatch.setattr(write_module, "_stream", second_stream_fails)
    out, model = tmp_path / "out.fits", tmp_path / "model.fits"
    assert main(["msgr", str(narrow), str(wide), "--out", str(out), "--layers", "4",
                 "--save-model", str(model), "--quiet"]) == 2
    err = clean_stderr(capsys)
    assert f"{model}: cannot be written (No space left on device)" in err
    assert not out.exists() and not model.exists()  # the outputs are a unit
    assert not list(tmp_path.glob(f".*{PARTIAL_TAG}*"))


# 11. missing, folder, dangling link: that frame's error ---------------------------------

def test_missing_folder_and_dangling_link_are_frame_errors(frames, tmp_path, capsys):
    missing = tmp_path / "missing.fits"
    folder = tmp_path / "afolder.fits"
    folder.mkdir()
    dangling = tmp_path / "dangling.fits"
    dangling.symlink_to(tmp_path / "gone.fits")
    out = tmp_path / "nsg"
    args = [frames[0], missing, frames[1], folder, dangling, frames[2]]
    assert normalize(*args, "--reference", frames[0], "--out", out) == 1
    err = clean_stderr(capsys)
    rows = {Path(r["file"]).name: r for r in report_of(out)["frames"]}
    assert [Path(r["file"]).name for r in report_of(out)["frames"]] == [Path(a).name
                                                                        for a in args]
    for bad in (missing, folder, dangling):
        assert rows[bad.name]["error"] and str(bad) in err
    assert "folder" in rows[folder.name]["error"]
    for f in frames:
        assert rows[f.name]["error"] is None
    assert_consistent(out)
    assert main(["rank", *map(str, args), "--quiet"]) == 1
    assert f"{missing}: " in clean_stderr(capsys)


# 12. empty --out, umask ------------------------------------------------------------------

def test_empty_out_is_refused(frames, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert normalize(*frames, "--reference", frames[0], "--out", "") == 2
    assert "--out is empty" in clean_stderr(capsys)
    assert main(["msgr", str(frames[0]), str(frames[1]), "--out", " ", "--quiet"]) == 2
    assert main(["rank", *map(str, frames), "--json", "", "--quiet"]) == 2
    clean_stderr(capsys)
    assert list(tmp_path.iterdir()) == [frames[0].parent]


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_follow_the_umask(frames, tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        assert normalize(*frames[:2], "--reference", frames[0], "--out", tmp_path / "o",
                         "--gradient-images") == 0
    finally:
        os.umask(old)
    made = list((tmp_path / "o").iterdir())
    assert len(made) == 8
    assert {stat.S_IMODE(p.stat().st_mode) for p in made} == {mode}


# 13. --resume from another working folder ----------------------------------------------

def test_resume_from_another_working_folder(frames, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(frames[0].parent)
    names = [f.name for f in frames]
    assert normalize(*names[:2], "--reference", names[0], "--out", "../nsg") == 0
    out = tmp_path / "nsg"
    first = digest(out.glob("*_nsg.fits"))
    monkeypatch.chdir(tmp_path)
    rel = [f"in/{n}" for n in names]
    assert normalize(*rel, "--reference", rel[0], "--out", "nsg", "--resume") == 0
    clean_stderr(capsys)
    assert digest(first) == first  # the two finished frames were kept, not redone
    assert (out / "frame_002_nsg.fits").is_file()
    rows = report_of(out)["frames"]
    assert [r["error"] for r in rows] == [None] * 3
    assert_consistent(out)


def test_unreadable_report_is_not_replaced(frames, tmp_path, capsys):
    out = tmp_path / "nsg"
    out.mkdir()
    for text in ("[1, 2]", '{"frames": [{"x": 1}]}', "{not json"):
        (out / "nsg_results.json").write_text(text)
        assert normalize(*frames, "--reference", frames[0], "--out", out) == 2
        assert "cannot be read back" in clean_stderr(capsys)
        assert (out / "nsg_results.json").read_text() == text
    assert normalize(*frames, "--reference", frames[0], "--out", out, "--overwrite") == 0
    assert_consistent(out)


@pytest.fixture()
def small_disk(tmp_path):
    """A 600 KiB tmpfs (root only, where mounting is allowed; skips otherwise)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_real_full_disk(frames, small_disk, capsys):
    """Three 256 x 256 outputs (257 KiB each) on 600 KiB: the third does not fit."""
    out = small_disk / "nsg"
    before = digest(frames)
    assert normalize(*frames, "--reference", frames[0], "--out", out) == 1
    err = clean_stderr(capsys)
    assert f"{out / 'frame_002_nsg.fits'}: cannot be written (" in err
    assert digest(frames) == before
    assert_consistent(out)
    assert [r["error"] is None for r in report_of(out)["frames"]] == [True, True, False]
    # now full: the journal cannot be written, nothing is (exit 2)
    filler = small_disk / "filler"
    with open(filler, "wb") as fh, pytest.raises(OSError):
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()
    other = small_disk / "other"
    assert normalize(*frames, "--reference", frames[0], "--out", other) == 2
    err = clean_stderr(capsys)
    assert f"{other / 'nsg_results.json'}: cannot be written (No space left on device)" in err
    assert list(other.iterdir()) == []
    js = small_disk / "rank.json"
    assert main(["rank", *map(str, frames), "--json", str(js), "--quiet"]) == 2
    assert f"{js}: cannot be written (No space left on device)" in clean_stderr(capsys)
    assert not js.exists()


def test_an_output_folder_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    """``--out`` naming a file: one clear message, before ``--reference auto`` ranks
    anything (the file is left as it is)."""
    from napari_nsg.cli import main as cli

    afile = tmp_path / "results"
    afile.write_text("not a folder")
    for argv in (["normalize", str(afile), "--reference", "auto", "--out", str(afile)],
                 ["register", str(afile), "--reference", str(afile), "--out", str(afile)]):
        assert cli([*argv, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"{afile}: is a file, not a folder: give a folder for the outputs" in err
        assert "ranking" not in err and "Traceback" not in err
    assert afile.read_text() == "not a folder"
