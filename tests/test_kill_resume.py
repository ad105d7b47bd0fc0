"""Issue 8: kill ``napari-nsg normalize`` at chosen moments, then one ``--resume`` gives
outputs bit-identical to an uninterrupted run (pixels and report).

The run is a subprocess; the test hook ``NAPARI_NSG_TEST_PAUSE_AT=<point>:<n>``
(:func:`napari_nsg.io.atomic.pause_for_test`) makes it stop at the n-th passage of a
named point and touch a file, and the test then kills it (SIGKILL, or SIGINT as
Ctrl-C does). Points: ``before_rename`` (an atomic write's temporary files are
complete; the report's writes count too), ``after_rename`` (a frame's outputs are
in place, its report row not yet written), ``after_row``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from napari_nsg.cli import main
from napari_nsg.io.atomic import PARTIAL_TAG, PAUSE_ENV, PAUSE_FILE_ENV
from napari_nsg.synthetic import simulate_sequence

FIELD = dict(star_density=5e-3, n_bright=30, bright_flux_range=(1e3, 1.5e4))
N_FRAMES = 4
START_TIMEOUT_S = 90.0  # to reach the pause point (imports included)
GONE_TIMEOUT_S = 10.0  # for orphaned workers to die


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Frames, and the outputs of an uninterrupted run (the expected result)."""
    root = tmp_path_factory.mktemp("kill")
    seq = simulate_sequence(N_FRAMES, (256, 256), seed=8, transmission=[1.0, 0.9, 0.8, 0.95],
                            border=10, **FIELD)
    frames = seq.write(root / "frames")
    expected = root / "expected"
    assert main(["normalize", *map(str, frames), *_options(frames, expected)]) == 0
    return frames, expected


def _options(frames, out: Path) -> list[str]:
    return ["--reference", str(frames[0]), "--out", str(out), "--gradient-images", "--quiet"]


def _as_from_a_terminal() -> None:
    """In the child: Ctrl-C and Ctrl-\\ as a shell's foreground job gets them. A test
    run started in the background of a non-interactive shell (``pytest &``) ignores both,
    its children inherit that, and the command line then rightly leaves them ignored
    (``test_stop_signals_are_handled_only_where_they_would_kill``)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def _start(frames, out: Path, point: str, flag: Path, workers: int = 1) -> subprocess.Popen:
    """Start the run in its own process group (as a shell job) and wait for the pause."""
    env = dict(os.environ, **{PAUSE_ENV: point, PAUSE_FILE_ENV: str(flag)})
    cmd = [sys.executable, "-m", "napari_nsg.cli", "normalize", *map(str, frames),
           *_options(frames, out), "--workers", str(workers)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, preexec_fn=_as_from_a_terminal)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not flag.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {point}: {proc.stderr.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the run did not reach {point}")
        time.sleep(0.05)
    return proc


def _children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def _descendants(pid: int) -> list[int]:
    """Live children of ``pid`` and theirs: workers forked from a fork server are grandchildren."""
    found, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        found += kids
        todo += kids
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _same_as_expected(out: Path, expected: Path) -> None:
    names = sorted(p.name for p in expected.glob("*.fits"))
    assert sorted(p.name for p in out.glob("*.fits")) == names
    for name in names:
        np.testing.assert_array_equal(fits.getdata(out / name), fits.getdata(expected / name),
                                      err_msg=name)
    got = (out / "nsg_results.json").read_text().replace(str(out), "<out>")
    want = (expected / "nsg_results.json").read_text().replace(str(expected), "<out>")
    assert json.loads(got) == json.loads(want)
    got = (out / "nsg_results.csv").read_text().replace(str(out), "<out>")
    assert got == (expected / "nsg_results.csv").read_text().replace(str(expected), "<out>")
    assert not list(out.glob(f".*{PARTIAL_TAG}*"))


def _resume(frames, out: Path, workers: int = 1) -> None:
    assert main(["normalize", *map(str, frames), *_options(frames, out), "--resume",
                 "--workers", str(workers)]) == 0


# journal = 1st before_rename; frame 0's unit the 2nd, its row the 3rd, frame 1's unit the 4th
@pytest.mark.parametrize("point", [
    "after_rename:2",   # frame 1's outputs in place, no report row
    "before_rename:4",  # frame 1's outputs complete under temporary names
    "after_row:1",      # between frames
    pytest.param("before_rename:1", marks=pytest.mark.slow),  # before the journal
    pytest.param("after_rename:1", marks=pytest.mark.slow),   # the reference's outputs, no row
])
def test_sigkill_then_one_resume(setup, tmp_path, point):
    frames, expected = setup
    out = tmp_path / "nsg"
    proc = _start(frames, out, point, tmp_path / "paused")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _resume(frames, out)
    _same_as_expected(out, expected)


def test_ctrl_c_leaves_no_partial_outputs(setup, tmp_path):
    frames, expected = setup
    out = tmp_path / "nsg"
    proc = _start(frames, out, "before_rename:4", tmp_path / "paused")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert b"no partial outputs were left" in err and b"Traceback" not in err
    assert not list(out.glob(f".*{PARTIAL_TAG}*"))
    assert not (out / "frame_001_nsg.fits").exists()
    assert len(list(out.glob("frame_000_*.fits"))) == 3  # finished frame: a whole unit
    _resume(frames, out)
    _same_as_expected(out, expected)


@pytest.mark.parametrize("sig, to_group, status", [
    (signal.SIGTERM, False, 143),  # kill PID
    pytest.param(signal.SIGHUP, True, 129, marks=pytest.mark.slow),  # the terminal closed
])
def test_stop_signals_leave_no_partial_outputs(setup, tmp_path, sig, to_group, status):
    """SIGTERM and SIGHUP stop a run as Ctrl-C does (by default they ended the process at
    once, leaving the frame being written as a hidden partial file)."""
    frames, expected = setup
    out = tmp_path / "nsg"
    proc = _start(frames, out, "before_rename:4", tmp_path / "paused")
    if to_group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status
    name = signal.Signals(sig).name
    assert f"stopped by {name}; no partial outputs were left".encode() in err
    assert b"Traceback" not in err
    assert not list(out.glob(f".*{PARTIAL_TAG}*"))
    assert not (out / "frame_001_nsg.fits").exists()
    _resume(frames, out)
    _same_as_expected(out, expected)


def test_stop_signals_are_handled_only_where_they_would_kill():
    """An ignored SIGHUP (``nohup``) stays ignored; the handlers go when the run ends."""
    from napari_nsg.cli._common import Stopped, stop_signals_as_interrupts

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN), signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with stop_signals_as_interrupts():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            handler = signal.getsignal(signal.SIGTERM)
            with pytest.raises(Stopped) as caught:
                handler(signal.SIGTERM, None)
            assert caught.value.name == "SIGTERM" and isinstance(caught.value, KeyboardInterrupt)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, before[0])
        signal.signal(signal.SIGTERM, before[1])


@pytest.mark.parametrize("point", [
    "after_row:1",
    pytest.param("after_row:2", marks=pytest.mark.slow),
])
def test_sigkill_with_workers_kills_the_workers(setup, tmp_path, point):
    frames, expected = setup
    out = tmp_path / "nsg"
    proc = _start(frames, out, point, tmp_path / "paused", workers=2)
    # the fork server, the resource tracker and any worker forked by then (tests/test_workers.py
    # checks workers that hold frames)
    workers = _descendants(proc.pid)
    assert len(workers) >= 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [w for w in workers if _alive(w)], "workers outlived their parent"
    _resume(frames, out, workers=2)
    _same_as_expected(out, expected)


@pytest.mark.slow
def test_ctrl_c_with_workers(setup, tmp_path):
    """Ctrl-C reaches the whole process group: the workers ignore it, the parent drops the
    pending frames, waits for the running ones, exits 130 without a traceback."""
    frames, expected = setup
    out = tmp_path / "nsg"
    proc = _start(frames, out, "after_row:1", tmp_path / "paused", workers=2)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert b"no partial outputs were left" in err and b"Traceback" not in err
    assert not list(out.glob(f".*{PARTIAL_TAG}*"))
    for nsg in out.glob("*_nsg.fits"):  # every frame written is a whole unit
        stem = nsg.name[: -len("_nsg.fits")]
        assert (out / f"{stem}_gradient.fits").exists() and (out / f"{stem}_curvature.fits").exists()
    _resume(frames, out, workers=2)
    _same_as_expected(out, expected)
