"""Where the wall of ``normalize``'s pipeline goes: each thread's stages, per target.

``normalize`` in one process reads the next frame, normalizes the current one and
writes the last one at once (:func:`napari_nsg.pipeline.normalize.pipelined_frames`):

    reading thread:   read_frame -> no-data as NaN -> noise      (prepare_target)
    compute thread:   scale -> samples -> spline -> correction   (normalize_frame)
    calling thread:   write_frames                                (the outputs)

On large frames and two or more cores the reading thread's work runs in a reading
process (:mod:`napari_nsg.pipeline.reading`): its stages are then not timed one by
one, and the row "reading process" gives that process's wall, run and runqueue per
frame (``/proc/<pid>/schedstat`` around each frame; "blocked" there is the time it
waited for the next request). ``--reading thread`` turns it off (the earlier
pipeline, every reading stage timed).

Each target takes as long as the slowest of the three. This benchmark runs
``normalize_frames`` on the frames of ``bench_nsg.py`` (simulated the same way, or
reused from ``--workdir``) in a fresh process with every stage timed, and prints the
median per target (the first three targets and the last left out: the pipeline
fills and drains there) of

* each stage's wall seconds, and
* each thread's wall, split (Linux: ``/proc/self/task/<tid>/schedstat``) into the
  time it ran, the time it waited for a core while runnable (``runqueue``), and
  the time it was blocked (the GIL, a helper thread, the disk).

    python benchmarks/bench_nsg_threads.py --workdir /tmp/bench_nsg --repeat 3

Absolute times differ from machine to machine; the split says which thread sets
the pace and why.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_nsg import simulated_frames  # the same frames (benchmarks/ is on the path)

CHILD = r"""
import json, shutil, sys, threading, time
from pathlib import Path
from napari_nsg.core.nsg import engine as E
from napari_nsg.pipeline import normalize as N

paths, out, mode = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
events = []  # (thread role, stage, start, wall, (run, runqueue) or None)
try:
    from napari_nsg.pipeline import reading as R
    if mode == "thread":
        R.READ_PROCESS_MIN_PIXELS = 10**15
except ImportError:  # older versions: threads only
    R = None

def sched(task=None):
    task = task or f"self/task/{threading.get_native_id()}"
    try:
        with open(f"/proc/{task}/schedstat") as f:
            run, wait, _ = map(int, f.read().split())
        return run / 1e9, wait / 1e9
    except OSError:
        return None

if R is not None:
    _read = R.ReadingProcess.read
    def read_there(self, path):  # the reading process's own schedstat around each frame
        pid = next(iter(self._pool._processes), None)
        task = None if pid is None else f"{pid}/task/{pid}"
        s0, t0 = sched(task), time.perf_counter()
        try:
            return _read(self, path)
        finally:
            t1, s1 = time.perf_counter(), sched(task)
            used = None if s0 is None or s1 is None else (s1[0] - s0[0], s1[1] - s0[1])
            events.append(("reading process", "thread", t0, t1 - t0, used))
    R.ReadingProcess.read = read_there

def timed(module, name, role, stage, split=False):
    f = getattr(module, name)
    def wrapper(*a, **k):
        s0, t0 = (sched() if split else None), time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            t1, s1 = time.perf_counter(), (sched() if split else None)
            used = None if s0 is None or s1 is None else (s1[0] - s0[0], s1[1] - s0[1])
            events.append((role, stage, t0, t1 - t0, used))
    setattr(module, name, wrapper)

for module, name, role, stage in [
        (N, "read_frame", "reading", "read"), (E, "_no_data_as_nan", "reading", "no-data"),
        (E, "measure_target_noise", "reading", "noise"), (E, "_measure_scale", "compute", "scale"),
        (E, "target_samples", "compute", "samples"), (E, "fit_gradient", "compute", "spline"),
        (E, "_corrected", "compute", "correction"), (N, "write_frames", "writing", "write")]:
    timed(module, name, role, stage)
timed(N, "_load", "reading", "thread", split=True)
timed(N, "_measure", "compute", "thread", split=True)
timed(N, "_stored_row", "writing", "thread", split=True)
shutil.rmtree(out, ignore_errors=True)
marks = []
N.normalize_frames(paths, paths[0], out, progress=lambda *a: marks.append(time.perf_counter()))
print(json.dumps({"events": events, "marks": marks}))
"""


def run_child(paths: list[Path], out: Path, mode: str = "process") -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps([str(p) for p in paths]),
                           str(out), mode], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


STAGES = {"reading": ["read", "no-data", "noise"],
          "reading process": [],
          "compute": ["scale", "samples", "spline", "correction"],
          "writing": ["write"]}


def steady(values: list, n_targets: int) -> list:
    """The values of the steady targets (the first three and the last left out)."""
    return values[3:n_targets - 1] if n_targets > 5 else values


def summarize(result: dict) -> dict:
    """Medians per target: each stage's wall, each thread's wall/run/runqueue/blocked."""
    marks = result["marks"]
    n_targets = len(marks) - 1  # the reference's own row comes first
    period = statistics.median(steady([b - a for a, b in itertools.pairwise(marks)], n_targets))
    rows = {"period": period}
    for role, stages in STAGES.items():
        for stage in stages + ["thread"]:
            evs = [e for e in result["events"] if e[0] == role and e[1] == stage]
            if len(evs) < n_targets // 2:  # not once per target (e.g. only the reference's)
                continue
            evs = steady(sorted(evs, key=lambda e: e[2]), len(evs))
            rows[(role, stage, "wall")] = statistics.median(e[3] for e in evs)
            if stage == "thread" and all(e[4] is not None for e in evs):
                rows[(role, "thread", "run")] = statistics.median(e[4][0] for e in evs)
                rows[(role, "thread", "runqueue")] = statistics.median(e[4][1] for e in evs)
                rows[(role, "thread", "blocked")] = statistics.median(
                    e[3] - e[4][0] - e[4][1] for e in evs)
    return rows


def print_table(runs: list[dict]) -> None:
    def med(key):
        vals = [r[key] for r in runs if key in r]
        return f"{statistics.median(vals):.3f}" if vals else "-"

    print(f"\n{len(runs)} run(s); medians per steady target, s")
    print(f"{'thread':15s} {'stage':12s} {'wall':>7s}")
    for role, stages in STAGES.items():
        if not any((role, "thread", "wall") in r for r in runs):
            continue
        for stage in stages:
            print(f"{role:15s} {stage:12s} {med((role, stage, 'wall')):>7s}")
        parts = "  ".join(f"{p} {med((role, 'thread', p))}"
                          for p in ("run", "runqueue", "blocked"))
        print(f"{role:15s} {'(thread)':12s} {med((role, 'thread', 'wall')):>7s}   {parts}")
    print(f"per target (between two finished frames): {med('period')} s")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--size", default="6000x4000", help="WIDTHxHEIGHT")
    ap.add_argument("--workdir", help="keep the simulated frames here (reused if present)")
    ap.add_argument("--repeat", type=int, default=1, help="runs, each in a fresh process")
    ap.add_argument("--reading", choices=("process", "thread"), default="process",
                    help="read in a reading process where normalize would (default), or "
                         "always on the reading thread")
    args = ap.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_nsg_threads_"))
    paths = simulated_frames(work, args.frames, width, height)
    runs = [summarize(run_child(paths, work / "out_threads", args.reading))
            for _ in range(args.repeat)]
    print_table(runs)


if __name__ == "__main__":
    main()
