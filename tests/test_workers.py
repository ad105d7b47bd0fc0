"""Local worker processes (issue 13, ``--workers N``): items go to whoever is free (this
process works too while the workers start), the workers write exactly what a serial run
writes, and they die with a killed parent (the fork server's children included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from test_kill_resume import _alive

from napari_nsg.io import read_frame
from napari_nsg.pipeline import executors
from napari_nsg.pipeline import normalize as nz
from napari_nsg.pipeline.executors import available_cores, map_frames
from napari_nsg.synthetic import simulate_sequence

pytestmark = pytest.mark.skipif(available_cores() < 2, reason="workers need two cores")

WAIT_S = 60.0  # for the workers to start and do something, on a loaded machine
GONE_TIMEOUT_S = 10.0
#: True in the test process only: a worker imports this module afresh.
IN_PARENT = False


def _someone_else_wrote(folder: Path) -> bool:
    return any(p.name.split("_")[-1] != str(os.getpid()) for p in folder.glob("done_*"))


def _wait_for(condition, timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def twice(folder: str, item: int) -> tuple[int, int]:
    """A task: ``2 * item`` and who computed it. In the parent, the second item waits until
    a worker has finished one, so that both kinds of process certainly take items."""
    if IN_PARENT and item > 0:
        _wait_for(lambda: _someone_else_wrote(Path(folder)))
    (Path(folder) / f"done_{item}_{os.getpid()}").touch()
    return 2 * item, os.getpid()


def test_items_go_to_whoever_is_free(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "IN_PARENT", True)
    items = list(range(10))
    got = dict(map_frames(twice, str(tmp_path), items, workers=2))
    assert sorted(got) == items  # each item once
    assert [got[i][0] for i in items] == [2 * i for i in items]
    pids = {pid for _, pid in got.values()}
    assert os.getpid() in pids and len(pids) >= 2  # the parent and at least one worker
    assert len(list(tmp_path.glob("done_*"))) == len(items)  # nothing done twice


def total(context: dict, item: int) -> tuple[float, bool, int]:
    """A task reading the context's array: its sum, whether it may be written, who read it."""
    if IN_PARENT and item > 0:
        _wait_for(lambda: _someone_else_wrote(Path(context["folder"])))
    (Path(context["folder"]) / f"done_{item}_{os.getpid()}").touch()
    return float(context["big"].sum()) + item, context["big"].flags.writeable, os.getpid()


def _shm_blocks() -> set[str]:
    return {p.name for p in Path(executors.SHM_DIR).glob("psm_*")}


def test_large_arrays_reach_the_workers_through_shared_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "IN_PARENT", True)
    shared = []
    real = executors._SharedContext._share
    monkeypatch.setattr(executors._SharedContext, "_share",
                        lambda self, obj: shared.append(real(self, obj)) or shared[-1])
    big = np.random.default_rng(0).normal(size=(700, 1000))  # 5.6 MB
    before = _shm_blocks()
    got = dict(map_frames(total, {"big": big, "folder": str(tmp_path)}, list(range(6)),
                          workers=2))
    assert sorted(got) == list(range(6))
    for i, (value, writeable, pid) in got.items():
        assert value == float(big.sum()) + i
        assert writeable  # mapped copy-on-write: sep, for one, refuses read-only arrays
    assert len({pid for _, _, pid in got.values()}) >= 2
    assert [p[0] for p in shared if p] == ["shm"]  # the one large array, the rest pickled
    assert _shm_blocks() == before  # freed


def test_too_few_items_for_workers_start_none(tmp_path, monkeypatch):
    def no_pool(*args):
        raise AssertionError("a worker process was started")

    monkeypatch.setattr(executors, "_process_pool", no_pool)
    assert dict(map_frames(twice, str(tmp_path), [3], workers=4)) == {0: (6, os.getpid())}
    # an overlapped runner holds two items: two items leave nothing for a worker
    run = list(map_frames(twice, str(tmp_path), [1, 2], workers=4,
                          local=lambda its: ((k, (i, 0)) for k, i in enumerate(its))))
    assert run == [(0, (1, 0)), (1, (2, 0))]


def test_workers_write_what_a_serial_run_writes(tmp_path, monkeypatch):
    """Frames normalized by the workers and by the parent (whose pipeline waits until a
    worker has written a frame) are identical to a serial run's, pixel for pixel."""
    seq = simulate_sequence(6, (256, 256), seed=4, transmission=[1.0, 0.9, 0.8, 0.7, 0.95, 0.85],
                            border=10, star_density=5e-3, n_bright=30,
                            bright_flux_range=(1e3, 1.5e4))
    frames = seq.write(tmp_path / "frames")
    serial = nz.normalize_frames(frames, frames[0], tmp_path / "serial")
    out = tmp_path / "pool"
    measure = nz._measure
    waited = []

    def parent_waits(job, loaded):
        if not loaded.is_reference and not waited:
            mine = {f"{Path(f).stem}_nsg.fits" for f in frames[:3]}  # what the parent holds
            waited.append(_wait_for(lambda: any(p.name not in mine
                                                for p in out.glob("*_nsg.fits"))))
        return measure(job, loaded)

    monkeypatch.setattr(nz, "_measure", parent_waits)
    monkeypatch.setattr(executors, "SHARE_BYTES", 1024)  # the model's arrays: shared memory
    pool = nz.normalize_frames(frames, frames[0], out, workers=2)
    assert waited == [True], "no worker normalized a frame"
    assert [r.scale for r in pool.rows] == [r.scale for r in serial.rows]
    assert [r.weight for r in pool.rows] == [r.weight for r in serial.rows]
    for f in frames:
        name = f"{Path(f).stem}_nsg.fits"
        np.testing.assert_array_equal(read_frame(out / name).data,
                                      read_frame(tmp_path / "serial" / name).data, err_msg=name)


SCRIPT = """
import os, sys, time
from pathlib import Path
from napari_nsg.pipeline.executors import map_frames

def hold(folder, item):
    (Path(folder) / f"pid_{os.getpid()}").touch()
    time.sleep(600)

if __name__ == "__main__":
    for _ in map_frames(hold, sys.argv[1], list(range(8)), workers=2):
        pass
"""


def test_workers_die_with_a_killed_parent(tmp_path):
    """SIGKILL of the parent ends its workers, though they are the fork server's children."""
    script = tmp_path / "hold.py"
    script.write_text(textwrap.dedent(SCRIPT))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)],
                            start_new_session=True, stderr=subprocess.PIPE)
    try:
        assert _wait_for(lambda: len(list(tmp_path.glob("pid_*"))) >= 2), \
            "the parent and its worker did not both take an item"
        pids = [int(p.name[4:]) for p in tmp_path.glob("pid_*")]
        assert proc.pid in pids
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    workers = [pid for pid in pids if pid != proc.pid]
    assert _wait_for(lambda: not any(_alive(pid) for pid in workers), GONE_TIMEOUT_S), \
        "workers outlived their parent"

