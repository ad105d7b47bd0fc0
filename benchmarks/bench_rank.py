"""Benchmark of ``napari-nsg rank``: time per frame and peak memory vs the number of frames.

Simulates N mono frames (default 20 x 6000x4000) once into a work folder, then
runs the ranking in a fresh subprocess for the first 5 and for all N frames and
prints a table: wall time, time per frame, the ratio to just reading the same
frames in the same run, and the peak resident memory of the process (which
must not grow with N: one frame in memory at a time).

    python benchmarks/bench_rank.py [--frames 20] [--size 6000x4000] [--workdir DIR]

``--compare-with SRC`` (the ``src`` folder of another version, e.g. from
``git archive <commit> src | tar -x -C /tmp/old``) alternates reading the
frames, ranking them with that version and with this checkout, ``--repeat``
times (default 3), and prints the seconds per frame of each and the medians::

    python benchmarks/bench_rank.py --frames 8 --compare-with /tmp/old/src

``--stages`` times the stages of this checkout one by one on the frames, in one
process, one thread (CPU seconds: what each costs, whatever runs beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent

CHILD = r"""
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from _memory import peak_rss_mib
from napari_nsg.io import read_frame
from napari_nsg.pipeline.rank import rank_frames
paths = [Path(p) for p in json.loads(sys.argv[1])]
mode = sys.argv[2]
t0 = time.perf_counter()
if mode == "read":
    for p in paths:
        read_frame(p)
    ok = len(paths)
else:
    result = rank_frames(paths)
    ok = sum(r.ok for r in result.frames)
wall = time.perf_counter() - t0
print(json.dumps({"wall": wall, "rss": peak_rss_mib(), "ok": ok}))
"""


def run_child(paths, mode, source=None):
    """One run in a fresh process; ``source``: the ``src`` folder of another version."""
    env = dict(os.environ)
    if source:
        env["PYTHONPATH"] = os.pathsep.join([str(source), env.get("PYTHONPATH", "")])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps([str(p) for p in paths]), mode,
                          str(BENCH_DIR)],
                         check=True, capture_output=True, text=True, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    # CPU seconds (user + system) of the child, imports included: steadier than the wall
    # time on a shared machine
    res["cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return res


def compare_versions(paths, old_source: Path, repeat: int) -> None:
    """Reading, the old and the new ranking alternated on the same frames, ``repeat``
    rounds; seconds per frame of each and their medians."""
    n = len(paths)
    walls = {"read": [], "old": [], "new": []}
    cpus = {"old": [], "new": []}
    print(f"\nrank on {n} frames; old = {old_source}, new = this checkout; "
          "read, old, new alternated")
    print(f"{'round':<7}{'read s/frame':>13}{'old s/frame':>12}{'new s/frame':>12}"
          f"{'old peak MiB':>13}{'new peak MiB':>13}{'old CPU s':>10}{'new CPU s':>10}")
    for r in range(repeat):
        read = run_child(paths, "read")
        old = run_child(paths, "rank", old_source)
        new = run_child(paths, "rank")
        for key, res in (("read", read), ("old", old), ("new", new)):
            walls[key].append(res["wall"] / n)
        cpus["old"].append(old["cpu"])
        cpus["new"].append(new["cpu"])
        print(f"{r + 1:<7}{read['wall'] / n:>13.3f}{old['wall'] / n:>12.3f}"
              f"{new['wall'] / n:>12.3f}{old['rss']:>13.0f}{new['rss']:>13.0f}"
              f"{old['cpu']:>10.1f}{new['cpu']:>10.1f}", flush=True)
    med = {k: statistics.median(v) for k, v in walls.items()}
    cpu = {k: statistics.median(v) for k, v in cpus.items()}
    print(f"medians: read {med['read']:.3f}, old {med['old']:.3f}, new {med['new']:.3f} s per "
          f"frame; new/old {med['new'] / med['old']:.2f}; new/read {med['new'] / med['read']:.1f}; "
          f"CPU s old {cpu['old']:.1f}, new {cpu['new']:.1f} (new/old {cpu['new'] / cpu['old']:.2f})")


STAGES = r"""
import json, statistics, sys, time
from pathlib import Path
from napari_nsg.core.nsg.engine import measure_scale
from napari_nsg.core.reference import (background_map, corner_gradients, holds_data_everywhere,
                                       metric_binning)
from napari_nsg.core.stars.detection import bin_image
from napari_nsg.io import read_frame
from napari_nsg.pipeline import rank as R
paths = [Path(p) for p in json.loads(sys.argv[1])]
times = {}
def timed(name, func, *args, **kwargs):
    t0 = time.process_time()
    out = func(*args, **kwargs)
    times.setdefault(name, []).append(time.process_time() - t0)
    return out
frames = []
for p in paths:
    frame = timed("read (twice per frame)", read_frame, p)
    data = frame.data
    clean = timed("  no-data test", holds_data_everywhere, data)
    f = metric_binning(data.shape)
    timed("  corner boxes", corner_gradients, data, binning=min(f, R.CORNER_BINNING), clean=clean)
    binned = timed("  block means", lambda: [bin_image(data, f)])
    timed("  background map", background_map, data[None], binning=f, binned=binned)
    sky = timed("pass 1: sky metrics (above)", R._sky_metrics, data, False)
    _, _, stars = timed("pass 1: stars + FWHM", R._with_stars, sky, frame.meta)
    timed("pass 2: noise", R._frame_noise, data, clean)
    frames.append((frame, stars))
# the yardstick's model as rank_frames makes it: with pass 1's stars when they can be reused
model, window = timed("pass 2: yardstick model (once)", R._yardstick_model, "yardstick",
                      frames[0][0], None, frames[0][1])
for frame, _ in frames[1:]:
    timed("pass 2: scale of a target", measure_scale, model, R._crop(frame.data, window))
print(json.dumps({k: statistics.median(v) for k, v in times.items()}))
"""


def print_stages(paths) -> None:
    """CPU seconds of each stage of this checkout (median over the frames, one thread)."""
    out = subprocess.run([sys.executable, "-c", STAGES, json.dumps([str(p) for p in paths[:4]])],
                         check=True, capture_output=True, text=True)
    stages = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\nstages of rank on {min(len(paths), 4)} frames (CPU s, median per frame, one thread;"
          " in a ranking pass 1 overlaps reading, the sky metrics and the stars, pass 2 the"
          " reading, the scales, the noise and the model)")
    for name, sec in stages.items():
        print(f"  {name:<32}{sec:>7.3f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--size", default="6000x4000", help="WIDTHxHEIGHT")
    ap.add_argument("--workdir", help="keep the simulated frames here (reused if present)")
    ap.add_argument("--compare-with", metavar="SRC",
                    help="the src folder of another version: rank with it and with this "
                         "checkout alternately, --repeat times")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--stages", action="store_true",
                    help="also time the stages of this checkout one by one")
    args = ap.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_rank_"))
    frames_dir = work / f"rank_{width}x{height}_{args.frames}"
    paths = sorted(frames_dir.glob("frame_*.fits"))
    if len(paths) != args.frames:
        from napari_nsg.synthetic import write_sequence

        t0 = time.perf_counter()
        paths = write_sequence(frames_dir, args.frames, (height, width), seed=5, overwrite=True,
                               nebula=True)
        print(f"simulated {args.frames} frames of {width}x{height} in "
              f"{time.perf_counter() - t0:.1f} s -> {frames_dir}")
    if args.stages:
        print_stages(paths)
    if args.compare_with:
        compare_versions(paths, Path(args.compare_with), args.repeat)
        return
    small = paths[:5]
    rows = []
    for n, subset in ((len(small), small), (len(paths), paths)):
        read = run_child(subset, "read")
        rank = run_child(subset, "rank")
        rows.append((n, rank["wall"], rank["wall"] / n, read["wall"] / n,
                     rank["wall"] / read["wall"], rank["rss"], read["rss"], rank["ok"]))
    print()
    print(f"napari-nsg rank on {width}x{height} mono float32 frames "
          "(each row a fresh process; two passes over the files)")
    head = (f"{'frames':>6} {'wall s':>8} {'s/frame':>8} {'read s/frame':>13} {'ratio':>6} "
            f"{'peak MiB':>9} {'read-only MiB':>14} {'ranked':>7}")
    print(head)
    print("-" * len(head))
    for n, wall, per, read_per, ratio, rss, read_rss, ok in rows:
        print(f"{n:>6} {wall:>8.1f} {per:>8.2f} {read_per:>13.2f} {ratio:>6.1f} {rss:>9.0f} "
              f"{read_rss:>14.0f} {ok:>7}")
    print()
    print("ratio = rank time / time to read the same frames once, in the same run.")


if __name__ == "__main__":
    main()
