"""Where one NSG target's time goes: the stages of ``normalize_frame``, old and new code.

Simulates 3 mono frames (6000x4000 float32 by default, as ``bench_nsg.py``:
``synthetic.write_sequence``, seed 0, a 40 px registration border) into a work
folder, prepares the reference, normalizes the first target once (it inverts
the spline system, which the others reuse), then times each stage on the second
target ``--rounds`` times in a fresh process:

    check -> no-data as NaN -> scale (stars, photometry, fit) -> samples -> spline
    -> correction (into a fresh output) -> noise + weight -> correction (into the
    working copy, as normalize_frame does), and normalize_frame as a whole

CPU seconds (``time.process_time``: every thread of the process, so the
threads' work counts however it overlaps) and wall seconds, medians of the
rounds. With ``--compare-with SRC`` (the ``src`` folder of another version, e.g.
a checkout of an older commit) that version and this checkout run alternately,
``--repeat`` times each, and the table shows both and their ratio::

    python benchmarks/bench_nsg_stages.py --compare-with /tmp/base/src

CPU seconds move much less than wall seconds with the load of other jobs, so
they are the figure to compare on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import inspect, json, sys, time
import numpy as np
from napari_nsg.io import read_frame
from napari_nsg.core.nsg import engine as E
from napari_nsg.core.nsg.correction import apply_correction

paths, rounds = json.loads(sys.argv[1]), int(sys.argv[2])
ref = read_frame(paths[0])
model = E.prepare_reference(ref.data, ref.meta)
first = read_frame(paths[1])
E.normalize_frame(model, first.data, first.meta)  # inverts the spline system
target = read_frame(paths[2])
in_place = hasattr(E, "_no_data_as_nan")  # older versions copy the frame
times = {}

def timed(name, f, *a, **k):
    w, c = time.perf_counter(), time.process_time()
    r = f(*a, **k)
    times.setdefault(name, []).append((time.process_time() - c, time.perf_counter() - w))
    return r

for _ in range(rounds):
    work = target.data.copy()
    chans = timed("check", E._check_target, model, work)
    if in_place:
        chans, bad = timed("no-data as NaN", E._no_data_as_nan, chans, True)
        bad = False if bad is None else bad
    else:
        chans, bad = timed("no-data as NaN", E.no_data_as_nan, chans)
    sr = timed("scale (stars, photometry, fit)", E._measure_scale, model, chans)
    samples = timed("samples", E.target_samples, model, chans, sr.scale)
    fitted = timed("spline", E.fit_gradient, model, samples)
    timed("correction", apply_correction, chans, sr.scale, fitted[2], mask=model.no_data,
          no_data=bad)
    timed("noise + weight", E.target_weight, model, chans, sr.scale, target.meta)
    if "out" in inspect.signature(apply_correction).parameters:  # as normalize_frame does
        timed("correction (in place)", apply_correction, chans, sr.scale, fitted[2],
              mask=model.no_data, no_data=bad, out=chans)
    work = target.data.copy()
    kw = {"overwrite_input": True} if in_place else {}
    timed("normalize_frame (all)", E.normalize_frame, model, work, target.meta, **kw)
print(json.dumps({k: [[c for c, _ in v], [w for _, w in v]] for k, v in times.items()}))
"""


def run_child(paths, rounds: int, source: str | None = None) -> dict:
    """Stage times of one fresh process; ``source``: another version's ``src`` folder."""
    env = dict(os.environ)
    if source:
        env["PYTHONPATH"] = os.pathsep.join([str(source), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps([str(p) for p in paths]),
                           str(rounds)], check=True, capture_output=True, text=True, env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median(values) -> float:
    return float(statistics.median(values)) if values else float("nan")


def print_table(runs: dict[str, list[dict]]) -> None:
    """One row per stage: median CPU and wall seconds of each version (and new/old)."""
    names = list(runs)
    stages = list(runs[names[-1]][0])
    head = "".join(f"{n + ' CPU s':>12}{n + ' wall s':>13}" for n in names)
    ratio = f"{'CPU new/old':>13}" if len(names) == 2 else ""
    print(f"{'stage':<33}{head}{ratio}")
    for stage in stages:
        cells, cpu = "", []
        for n in names:
            c = _median([v for run in runs[n] for v in run.get(stage, [[], []])[0]])
            w = _median([v for run in runs[n] for v in run.get(stage, [[], []])[1]])
            cells += f"{c:>12.3f}{w:>13.3f}"
            cpu.append(c)
        extra = f"{cpu[1] / cpu[0]:>13.2f}" if len(names) == 2 else ""
        print(f"{stage:<33}{cells}{extra}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="6000x4000", help="WIDTHxHEIGHT")
    ap.add_argument("--workdir", help="keep the simulated frames here (reused if present)")
    ap.add_argument("--rounds", type=int, default=3, help="timings per process")
    ap.add_argument("--compare-with", metavar="SRC",
                    help="the src folder of another version: run it and this checkout "
                         "alternately, --repeat times each")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_nsg_stages_"))
    frames_dir = work / f"nsg_{width}x{height}_3"
    paths = sorted(frames_dir.glob("frame_*.fits"))
    if len(paths) != 3:
        from napari_nsg.synthetic import write_sequence

        print(f"simulating 3 frames of {width}x{height} into {frames_dir} ...", flush=True)
        paths = write_sequence(frames_dir, 3, (height, width), seed=0, border=40, overwrite=True)
    versions = [("old", args.compare_with), ("new", None)] if args.compare_with else [("new", None)]
    runs: dict[str, list[dict]] = {name: [] for name, _ in versions}
    for _ in range(args.repeat if args.compare_with else 1):
        for name, source in versions:
            runs[name].append(run_child(paths, args.rounds, source))
    print(f"\none {width}x{height} target, medians of {args.rounds} rounds x "
          f"{len(runs[versions[-1][0]])} process(es) per version"
          + (f"; old = {args.compare_with}, new = this checkout, alternated" if args.compare_with
             else ""))
    print_table(runs)


if __name__ == "__main__":
    main()
