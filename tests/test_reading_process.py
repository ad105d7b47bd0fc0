"""A batch's targets read and prepared in a process of their own (pipeline.reading, issue 13).

- what comes back through shared memory = ``prepare_target`` in this process, bit for bit;
- a batch through it writes the same outputs as one without it;
- the process killed mid-batch: the next frames are read here, nothing is lost;
- no shared memory is left once it is closed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import pytest

from napari_nsg.core.nsg import prepare_reference, prepare_target, target_plan
from napari_nsg.io import FrameError, read_frame
from napari_nsg.pipeline import reading
from napari_nsg.pipeline.normalize import NormalizeJob, _load, normalize_frames
from napari_nsg.synthetic import simulate_sequence

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the reading process needs the fork server")


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reading")
    seq = simulate_sequence(4, (300, 340), seed=4, border=10)
    return seq.write(folder)


def _shm_names(process) -> list[str]:
    return [s.name for s in process._all]


def _same_prepared(a, b):
    assert np.array_equal(a.chans, b.chans, equal_nan=True)
    assert (a.no_data is None) == (b.no_data is None)
    if a.no_data is not None:
        assert np.array_equal(a.no_data, b.no_data)
    assert np.array_equal(a.pixels.values, b.pixels.values, equal_nan=True)
    assert np.array_equal(a.pixels.ok, b.pixels.ok)
    for x, y in zip(a.noises, b.noises):
        assert np.array_equal(x.sigma, y.sigma) and x.algorithm == y.algorithm


def test_prepared_in_the_process_equals_prepared_here(sequence):
    model = prepare_reference(read_frame(sequence[0]).data)
    process = reading.ReadingProcess(target_plan(model))
    try:
        for path in sequence[1:]:
            got = process.read(str(path))
            frame = read_frame(path)
            want = prepare_target(model, frame.data.copy(), frame.meta, overwrite_input=True,
                                  with_noise=True)
            assert got.prepared.no_data is not None  # the registration border
            _same_prepared(got.prepared, want)
            assert got.meta.exposure == frame.meta.exposure
            process.give(got.slot)
        assert len(_shm_names(process)) == 1  # one slot, reused
        with pytest.raises(FrameError, match="missing.fits"):
            process.read(str(sequence[0].parent / "missing.fits"))
        names = _shm_names(process)
    finally:
        process.close()
    assert not any(os.path.exists(os.path.join(reading.SHM_DIR, n.lstrip("/"))) for n in names)


def test_a_killed_reading_process_leaves_the_batch_to_the_reading_thread(sequence, tmp_path):
    model = prepare_reference(read_frame(sequence[0]).data)
    job = NormalizeJob(model=model, reference=str(sequence[0]), out_dir=str(tmp_path))
    process = reading.ReadingProcess(target_plan(model))
    try:
        first = _load(job, (str(sequence[1]), False, False), None, process)
        assert first.give_back is not None  # read there
        for pid in list(process._pool._processes):
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(BrokenProcessPool):
            process.read(str(sequence[2]))
        assert process.broken
        later = _load(job, (str(sequence[2]), False, False), None, process)
        assert later.give_back is None  # read here
        frame = read_frame(sequence[2])
        _same_prepared(later.data, prepare_target(model, frame.data.copy(), frame.meta,
                                                  overwrite_input=True, with_noise=True))
    finally:
        process.close()


@pytest.mark.slow
def test_a_batch_through_the_reading_process_writes_the_same_outputs(sequence, tmp_path,
                                                                       monkeypatch):
    outs = {}
    for forced in (False, True):
        monkeypatch.setattr(reading, "READ_PROCESS_MIN_PIXELS", 1 if forced else 10**12)
        out = tmp_path / f"out{int(forced)}"
        report = normalize_frames(sequence, sequence[0], out)
        assert all(r.error is None for r in report.rows)
        outs[forced] = out
    for path in sequence:
        name = f"{path.stem}_nsg.fits"
        assert (outs[True] / name).read_bytes() == (outs[False] / name).read_bytes()


def test_a_script_without_a_main_guard_runs_once(sequence, tmp_path):
    """The reading process (a fork-server child) does not run the caller's script again:
    a script that normalizes at its top level, with no ``if __name__ == "__main__":``."""
    ran = tmp_path / "ran.txt"
    script = tmp_path / "batch.py"
    script.write_text(
        "from napari_nsg.pipeline import normalize, reading\n"
        f"open({str(ran)!r}, 'a').write('ran\\n')\n"
        "reading.READ_PROCESS_MIN_PIXELS = 1\n"
        "read = reading.ReadingProcess.read\n"
        "used = []\n"
        "reading.ReadingProcess.read = lambda self, p: used.append(p) or read(self, p)\n"
        f"paths = {[str(p) for p in sequence]!r}\n"
        f"report = normalize.normalize_frames(paths, paths[0], {str(tmp_path / 'out')!r})\n"
        "print(len(used), len(report.failed))\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(len(sequence) - 1), "0"]  # read there, none failed
    assert "Traceback" not in done.stderr
    assert ran.read_text() == "ran\n"


def test_workers_with_a_reading_process_write_the_same_outputs(sequence, tmp_path, monkeypatch):
    """``--workers N``: the reading process is one of the N processes. With 2 (on any
    machine) the batch is the serial one with its reading process; with 3 on 4 cores a
    worker process also normalizes frames, the calling process's with its reader."""
    from napari_nsg.pipeline import executors, normalize

    monkeypatch.setattr(reading, "READ_PROCESS_MIN_PIXELS", 1)
    started = []
    real = reading.ReadingProcess.__init__
    monkeypatch.setattr(reading.ReadingProcess, "__init__",
                        lambda self, *a, **k: started.append(1) or real(self, *a, **k))
    serial = normalize_frames(sequence, sequence[0], tmp_path / "w1")
    for module in (executors, normalize, reading):
        monkeypatch.setattr(module, "available_cores", lambda: 4)
    parallel = normalize_frames(sequence, sequence[0], tmp_path / "w3", workers=3)
    assert len(started) == 2
    assert [r.error for r in parallel.rows] == [None] * len(sequence)
    assert [r.scale for r in parallel.rows] == [r.scale for r in serial.rows]
    for path in sequence[1:]:
        name = f"{path.stem}_nsg.fits"
        assert (tmp_path / "w3" / name).read_bytes() == (tmp_path / "w1" / name).read_bytes()


def test_warnings_of_the_reading_process_reach_the_caller(sequence, tmp_path):
    """A FrameWarning raised while reading there (an unparsable OBJCTALT card) is raised
    again here, where the CLI prints it, as when the frame is read on the reading thread."""
    from napari_nsg.io.errors import FrameWarning

    raw = bytearray(sequence[1].read_bytes())
    card = raw.find(b"OBJCTALT=")
    assert card >= 0
    raw[card + 20] = ord("X")  # '40.54...' -> 'X0.54...', as a bit flip does
    bad = tmp_path / "alt.fits"
    bad.write_bytes(bytes(raw))
    model = prepare_reference(read_frame(sequence[0]).data)
    process = reading.ReadingProcess(target_plan(model))
    try:
        with pytest.warns(FrameWarning, match="OBJCTALT") as caught:
            got = process.read(str(bad))
        assert str(bad) in str(caught[0].message)
        assert got.meta.exposure == 60.0 and got.prepared.noises is not None
        process.give(got.slot)
    finally:
        process.close()


def test_a_hang_up_leaves_no_shared_memory(sequence, tmp_path):
    """SIGHUP to the batch's whole process group (a closed terminal): the resource tracker,
    started with SIGHUP blocked, outlives the others and unlinks the reading slots."""
    script = tmp_path / "hangup.py"
    script.write_text(
        "import os, sys, time\n"
        "from napari_nsg.pipeline import normalize, reading\n"
        "reading.READ_PROCESS_MIN_PIXELS = 1\n"
        "made = reading._Slot.__init__\n"
        "def slot(self, n):\n"
        "    made(self, n)\n"
        "    os.write(1, f'{self.name}\\n'.encode())  # one write: lines of two threads never mix\n"
        "reading._Slot.__init__ = slot\n"
        "measure = normalize._measure\n"
        "def slow(job, loaded):\n"
        "    if not loaded.is_reference:\n"
        "        os.write(1, b'measuring\\n')\n"
        "        time.sleep(60)\n"
        "    return measure(job, loaded)\n"
        "normalize._measure = slow\n"
        f"paths = {[str(p) for p in sequence]!r}\n"
        f"normalize.normalize_frames(paths, paths[0], {str(tmp_path / 'out')!r})\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    names = []
    try:
        for line in proc.stdout:
            if line.strip() == "measuring":
                break
            names.append(line.strip())
        assert names  # a slot was made
        assert all(os.path.exists(os.path.join(reading.SHM_DIR, n.lstrip("/"))) for n in names)
        os.killpg(proc.pid, signal.SIGHUP)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    gone = lambda: not any(os.path.exists(os.path.join(reading.SHM_DIR, n.lstrip("/")))
                           for n in names)
    deadline = time.monotonic() + 10
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone(), "the reading slots outlived a hang-up"


def _gone(names) -> bool:
    return not any(os.path.exists(os.path.join(reading.SHM_DIR, n.lstrip("/"))) for n in names)


@pytest.mark.parametrize("step", ["ftruncate", "mmap"])
def test_a_kill_while_a_slot_is_made_leaves_no_shared_memory(tmp_path, step):
    """SIGKILL after the block exists but before it is fully made (sized, mapped): the
    resource tracker already knows its name and unlinks it once the process is gone."""
    script = tmp_path / "kill.py"
    script.write_text(
        "import mmap, os, signal, sys\n"
        "from multiprocessing import resource_tracker\n"
        "from napari_nsg.pipeline import reading\n"
        "resource_tracker.ensure_running()\n"
        "real = os.open\n"
        "def opened(*args, **kwargs):\n"
        "    fd = real(*args, **kwargs)\n"
        "    if args[1] & os.O_CREAT:\n"
        "        print(args[0], flush=True)\n"
        f"        if {step!r} == 'ftruncate':\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return fd\n"
        "os.open = opened\n"
        "def mapped(*args, **kwargs):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "mmap.mmap = mapped\n"
        "reading._Slot(1 << 16)\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    names = [line for line in proc.stdout.split() if line]
    assert len(names) == 1 and names[0].startswith(reading.SHM_DIR)
    deadline = time.monotonic() + 10
    while not _gone(names) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(names), "a slot killed while it was made outlived its process"


def test_an_interrupt_while_a_slot_is_made_unlinks_it(monkeypatch):
    """An exception while the block is sized (a stop signal's, in this thread): unlinked."""
    made = []
    real = os.ftruncate

    def stopped(fd, n):
        made.append(os.readlink(f"/proc/self/fd/{fd}"))
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "ftruncate", stopped)
    with pytest.raises(KeyboardInterrupt):
        reading._Slot(1 << 16)
    monkeypatch.setattr(os, "ftruncate", real)
    assert len(made) == 1 and _gone(made)


def test_a_slot_made_while_the_process_closes_is_unlinked(sequence):
    """The reading thread making a slot while the batch closes the process: the slot is
    unlinked, not kept past close(), and the frame is read without the process."""
    model = prepare_reference(read_frame(sequence[0]).data)
    process = reading.ReadingProcess(target_plan(model))
    made = []
    real = reading._Slot.__init__

    def closing(slot, nbytes):
        real(slot, nbytes)
        made.append(slot.name)
        process.close()

    try:
        reading._Slot.__init__ = closing
        with pytest.raises(BrokenProcessPool):
            process.read(str(sequence[1]))
    finally:
        reading._Slot.__init__ = real
        process.close()
    assert process.broken and made and _gone(made)
