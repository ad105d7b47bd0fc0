"""Benchmark of ``napari-nsg register``: time per frame against reading + writing it.

Simulates N dithered mono frames (default 8 x 6000x4000, shifts up to 30 px,
rotations up to 3 degrees (``--max-angle``), the last one turned 180 degrees) with
:func:`napari_nsg.synthetic.dithered.simulate_dithered`, writes them as
float32 FITS, then in a fresh subprocess:

1. reads each frame with ``read_frame`` and writes it with ``write_frame`` (the
   read+write floor: what any tool must spend to read and write the frame);
2. registers them onto the first with
   :func:`napari_nsg.pipeline.register.register_frames` (the default projective
   model and clamped Lanczos resampling), timing every frame from the progress
   callback, and every stage of every frame (read, stars + match + fit,
   resample, write) by wrapping the pipeline's stage functions;
3. measures the floor of every frame again (it swings 2x with the disk's
   writeback: one pass before and one after, all reduced to their median).

It prints, per frame, the seconds (the time between two finished frames: the
run overlaps reading and star work of the next frame, resampling of this one and
writing of the previous one), both floors, the seconds over the median floor,
the matched-star residual and the error of the recovered transform against the
truth (RMS at the reference stars); then the two numbers that count:

* the median seconds per frame over the median floor, and
* the batch's wall time after the reference (from the reference's row to the
  last frame's) per frame, over the median floor: the rate of a long batch.

``--stages`` (default) runs the second frame once more stage by stage (read,
stars + match + model fit, resampling with clamped Lanczos and with cubic,
write; each resampling once before it is timed, as its work arrays are kept in
a batch); ``--timeline`` prints when each frame's stages ran and how busy each
thread of the pipeline was.

    python benchmarks/bench_register.py [--frames 8] [--size 6000x4000] [--workdir DIR]
                                        [--src OTHER/src] [--compare-with OLD/src --repeat 3]
                                        [--max-angle 3] [--no-stages] [--timeline]
    python benchmarks/bench_register.py --interpolators

``--workdir`` keeps the simulated frames (and their truth) for the next run;
``--src`` registers them with another copy of the code (e.g. ``git archive REV
| tar -x -C /tmp/old`` then ``--src /tmp/old/src``), to compare versions in
alternated runs on the same frames. ``--compare-with OLD/src`` does that in one
command: this checkout (or ``--src``) and ``OLD/src`` alternated ``--repeat`` times,
then the medians of each (seconds per frame, floor, both ratios, CPU of the run,
the resampling stage's wall and CPU seconds). ``--interpolators`` prints only the
interpolator table of ``docs/register.md`` (undershoot, peak and flux errors of stars
shifted and rotated, noise left; OpenCV's 2-D kernels and the 1-D shear passes).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
STAR_DENSITY = 1.2e-4  # stars per pixel of the field
MAX_ANGLE = 3.0  # degrees: rotations of the dithers drawn in +- this

CHILD = r"""
import json, os, shutil, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from _memory import peak_rss_mib
from napari_nsg.io import read_frame, write_frame
import napari_nsg.pipeline.register as R

paths = [Path(p) for p in json.loads(sys.argv[1])]
out = Path(sys.argv[2])
with_stages = sys.argv[4] == "1"
out.mkdir(parents=True, exist_ok=True)

def io_floor():  # read + write of every frame: what any tool pays
    scratch = Path(tempfile.mkdtemp(prefix="io_floor_", dir=out))
    times = {}
    for p in paths:
        t = time.perf_counter()
        f = read_frame(p)
        write_frame(scratch / p.name, f.data, f.header, overwrite=True)
        times[p.name] = time.perf_counter() - t
        del f
    shutil.rmtree(scratch)
    return times

marks = []  # (stage, frame, start, end): the batch's timeline
def _frame_of(args):
    for a in args:
        if isinstance(a, tuple) and a:
            return Path(a[0]).name
        if hasattr(a, "path"):
            return Path(a.path).name
    return "?"
def timed_stage(stage, fn):
    def run(*args, **kw):
        t = time.perf_counter()
        try:
            return fn(*args, **kw)
        finally:
            marks.append((stage, _frame_of(args), t, time.perf_counter()))
    return run
for stage, name in (("read", "_load"), ("stars", "_analyse"), ("resample", "_compute"),
                    ("write", "_store")):
    if hasattr(R, name):  # module globals: the pipeline looks them up at call time
        setattr(R, name, timed_stage(stage, getattr(R, name)))

events = []
def progress(done, total, message):
    events.append((time.perf_counter(), done, message))
import napari_nsg
before = io_floor()
t0, c0 = time.perf_counter(), os.times()
res = R.register_frames(paths, paths[0], out, overwrite=True, progress=progress)
wall = time.perf_counter() - t0
c1 = os.times()
cpu = (c1.user - c0.user) + (c1.system - c0.system)
peak = peak_rss_mib()
after = io_floor()
code = str(Path(napari_nsg.__file__).parents[1])
times, last, done_at = {}, t0, []
for t, done, message in events:
    if done >= 1:
        times[message] = t - last
        done_at.append(t)
    last = t
# the batch after the reference: from the reference's row to the last frame's
batch = (done_at[-1] - done_at[0]) if len(done_at) > 1 else float("nan")
stages = {}
if with_stages and len(paths) > 1:  # one frame again, stage by stage
    from napari_nsg.core.registration.frames import register_frame, resample
    job = R._prepare(paths[0], out, None, "projective", False, "lanczos-clamped")
    scratch = Path(tempfile.mkdtemp(dir=out))
    def timed(name, fn):  # wall and CPU seconds (all threads) of one stage
        t, c = time.perf_counter(), time.process_time()
        value = fn()
        stages[name] = (time.perf_counter() - t, time.process_time() - c)
        return value
    f = timed("read", lambda: read_frame(paths[1]))
    reg = timed("stars+match+fit", lambda: register_frame(
        job.reference_lum, f.data, reference_stars=job.reference_stars))
    for method in ("lanczos-clamped", "cubic"):
        # once untimed: the work arrays are warm from frame to frame in a batch
        resample(f.data, reg.transform, job.reference_lum.shape, method=method)
        data, _ = timed("resample " + method, lambda: resample(
            f.data, reg.transform, job.reference_lum.shape, method=method))
    timed("write", lambda: write_frame(scratch / "stage.fits", data, f.header, overwrite=True))
    shutil.rmtree(scratch)
rows = [{"file": Path(r.file).name, "residual": r.residual_px, "error": r.error,
         "output": r.output} for r in res.rows]
print(json.dumps({"wall": wall, "batch": batch, "times": times, "before": before,
                  "after": after, "rows": rows, "peak_mib": peak, "stages": stages,
                  "cpu": cpu, "code": code, "t0": t0, "marks": marks}))
"""


def _frames(work: Path, n: int, w: int, h: int, max_angle: float = MAX_ANGLE):
    """The simulated frames in ``work/frames`` (``frames_rot<max_angle>`` for other
    rotations; made once), the reference stars inside the frame, and their true positions
    in every frame (saved with the frames)."""
    folder = work / ("frames" if max_angle == MAX_ANGLE else f"frames_rot{max_angle:g}")
    truth_file = folder / "truth.npz"
    paths = [folder / f"dither_{k:03d}.fits" for k in range(n)]
    if truth_file.exists() and all(p.exists() for p in paths):
        saved = np.load(truth_file)
        if saved["shape"].tolist() == [h, w] and len(saved["frames"]) == n:
            return paths, saved["inside"], dict(zip(
                [p.name for p in paths], saved["frames"], strict=True))
    from napari_nsg.synthetic.dithered import simulate_dithered

    n_stars = int(STAR_DENSITY * w * h * 1.7**2)
    sim = simulate_dithered(n, (h, w), seed=1, flip_frame=n - 1, n_stars=n_stars,
                            max_angle=max_angle)
    paths = sim.write(folder)
    inside = sim.star_xy[(sim.star_xy[:, 0] > 0) & (sim.star_xy[:, 0] < w - 1)
                         & (sim.star_xy[:, 1] > 0) & (sim.star_xy[:, 1] < h - 1)]
    frames = np.stack([sim.reference_to_frame(k, inside) for k in range(n)])
    np.savez(truth_file, shape=np.array([h, w]), inside=inside, frames=frames)
    return paths, inside, dict(zip([p.name for p in paths], frames, strict=True))


def _run(paths: list[Path], work: Path, src: str | None, stages: bool) -> dict:
    """One registration run in a fresh process (``src``: another copy of the package)."""
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps([str(p) for p in paths]),
                           str(work / "out"), str(BENCH_DIR), "1" if stages else "0"],
                          capture_output=True, text=True, check=True, env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _truth_rms(output: str, inside, truth) -> float:
    """RMS distance (px) between the written transform's and the true star positions."""
    from astropy.io import fits

    from napari_nsg.core.registration.transforms import apply_homography

    hdr = fits.getheader(output)
    hom = np.array([[hdr[f"REGH{i}{j}"] for j in (1, 2, 3)] for i in (1, 2, 3)])
    err = apply_homography(hom, inside) - truth
    return float(np.sqrt(np.mean(np.sum(err**2, axis=1))))


def _report(r: dict, n: int, w: int, h: int, work: Path, inside, truth_xy) -> dict:
    """Print one run's table; its summary (medians, ratios to the median floor, CPU, stages)."""
    floors = [r[k][name] for k in ("before", "after") for name in r[k]]
    floor = float(np.median(floors))
    print(f"register {n} frames of {w}x{h} float32 (work folder {work}, code "
          f"{r['code']}); peak memory {r['peak_mib']:.0f} MiB, total {r['wall']:.1f} s, "
          f"CPU {r['cpu']:.1f} s")
    print(f"{'frame':18s} {'seconds':>8s} {'floor before':>12s} {'after':>6s} "
          f"{'/median floor':>13s} {'resid.px':>9s} {'truth RMS px':>12s}")
    secs = []
    for row in r["rows"][1:]:
        name = row["file"]
        sec = r["times"].get(name, float("nan"))
        rms = (_truth_rms(row["output"], inside, truth_xy[name]) if row["output"]
               else float("nan"))
        print(f"{name:18s} {sec:8.2f} {r['before'][name]:12.2f} {r['after'][name]:6.2f} "
              f"{sec / floor:13.2f} {row['residual'] or float('nan'):9.3f} {rms:12.4f}")
        secs.append(sec)
    frames = max(len(secs), 1)
    summary = {"seconds": float(np.median(secs)) if secs else float("nan"), "floor": floor,
               "wall_frame": r["batch"] / frames, "cpu": r["cpu"],
               "resample": r["stages"].get("resample lanczos-clamped", [np.nan, np.nan])}
    summary["ratio"] = summary["seconds"] / floor
    summary["wall_ratio"] = summary["wall_frame"] / floor
    print(f"read+write floor (before and after the run, {len(floors)} passes): median "
          f"{floor:.3f} s (min {min(floors):.3f}, max {max(floors):.3f})")
    print(f"median s/frame {summary['seconds']:.3f} -> {summary['ratio']:.2f}x the median "
          f"floor; batch after the reference {r['batch']:.2f} s / {len(secs)} frames = "
          f"{summary['wall_frame']:.3f} s/frame -> **{summary['wall_ratio']:.2f}x** the floor")
    if r["stages"]:
        print(f"stages of {r['rows'][1]['file']} run again (wall / CPU s): "
              + ", ".join(f"{k} {v[0]:.2f} / {v[1]:.2f}" for k, v in r["stages"].items()))
    return summary


def _timeline(r: dict) -> None:
    """Per frame, when each stage ran (s from the start of the run), and how busy each was."""
    marks = r["marks"]
    names = list(dict.fromkeys(m[1] for m in marks))
    order = ("read", "stars", "resample", "write")
    print(f"{'timeline (s)':18s} " + " ".join(f"{s:>13s}" for s in order))
    for name in names:
        cells = []
        for stage in order:
            hit = [m for m in marks if m[0] == stage and m[1] == name]
            cells.append(f"{hit[0][2] - r['t0']:6.2f}-{hit[0][3] - r['t0']:6.2f}" if hit
                         else f"{'':13s}")
        print(f"{name:18s} " + " ".join(cells))
    total = r["wall"]
    runs = sorted((m[2], m[3]) for m in marks if m[0] == "resample")
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(runs)]
    if gaps:  # bubbles: the compute thread waiting between two frames' resampling
        print(f"compute thread idle between resamplings: {sum(gaps):.2f} s in all, longest "
              f"{max(gaps):.2f} s")
    busy = {s: sum(m[3] - m[2] for m in marks if m[0] == s) for s in order}
    print("busy over the run's " + f"{total:.2f} s: "
          + ", ".join(f"{s} {busy[s]:.2f} s" for s in order)
          + f"; reader thread (read + stars) {(busy['read'] + busy['stars']) / total:.0%}, "
            f"compute thread {busy['resample'] / total:.0%}, writer {busy['write'] / total:.0%}")


def _compare(summaries: dict) -> None:
    """Medians over the alternated runs of each code version."""
    print("\nalternated runs, medians per code version:")
    print(f"{'code':36s} {'runs':>4s} {'s/frame':>8s} {'floor':>6s} {'ratio':>6s} "
          f"{'wall/frame':>10s} {'wall ratio':>10s} {'CPU run':>8s} {'resample wall/CPU':>18s}")
    for code, runs in summaries.items():
        med = {k: float(np.median([x[k] for x in runs]))
               for k in ("seconds", "floor", "ratio", "wall_frame", "wall_ratio", "cpu")}
        rw = np.median([x["resample"][0] for x in runs])
        rc = np.median([x["resample"][1] for x in runs])
        print(f"{code[-36:]:36s} {len(runs):4d} {med['seconds']:8.3f} {med['floor']:6.3f} "
              f"{med['ratio']:6.2f} {med['wall_frame']:10.3f} {med['wall_ratio']:10.2f} "
              f"{med['cpu']:8.1f} {rw:8.2f} / {rc:.2f}")


INTERPOLATION_CASES = {"shift": (0.0, 1.0), "rotation 2.7 deg": (2.7, 1.0)}
INTERPOLATION_SHIFT = (0.5, 0.37)


def interpolators() -> None:
    """The interpolator table of docs/register.md: 60 stars of 50,000 ADU on a 200 px frame,
    shifted (and rotated about the centre), resampled by OpenCV's 2-D kernels and by the 1-D
    shear passes, against the exactly rendered truth; then Gaussian noise of sigma 1."""
    from napari_nsg.core.registration import frames
    from napari_nsg.core.registration.transforms import WideTransform
    from napari_nsg.synthetic.psf import PSF, render_stars

    rng = np.random.default_rng(0)
    size, n = 200, 60
    x, y = rng.uniform(10, 190, n), rng.uniform(10, 190, n)
    flux, inner = np.full(n, 5e4), (slice(15, 185), slice(15, 185))
    plan = frames.shear_plan
    paths = {"2-D": lambda *a, **k: None, "1-D passes": plan}
    print(f"{'map':18s} {'FWHM':>4s} {'path':10s} {'kernel':16s} {'undershoot':>10s} "
          f"{'peak err':>8s} {'flux':>7s}")
    for case, (deg, scale) in INTERPOLATION_CASES.items():
        a = np.deg2rad(deg)
        m = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        c = np.array([99.5, 99.5])
        hom = np.vstack([np.column_stack([m, c - m @ c + INTERPOLATION_SHIFT]), [0, 0, 1]])
        inv = np.linalg.inv(hom)
        tx, ty = inv[:2, :2] @ np.vstack([x, y]) + inv[:2, 2:]
        for fwhm in (1.5, 2.0, 3.0):
            img = render_stars((size, size), x, y, flux, PSF(fwhm)) + 100.0
            truth = (render_stars((size, size), tx, ty, flux, PSF(fwhm)) + 100.0)[inner]
            for path, fn in paths.items():
                frames.shear_plan = fn
                for method in frames.RESAMPLERS:
                    if path != "2-D" and not method.startswith("lanczos"):
                        continue
                    r = frames.resample(img, WideTransform(homography=hom), (size, size),
                                        method=method)[0][inner]
                    print(f"{case:18s} {fwhm:4.1f} {path:10s} {method:16s} "
                          f"{100 * (r.min() - 100) / truth.max():9.2f}% "
                          f"{100 * np.abs(r - truth).max() / truth.max():7.2f}% "
                          f"{100 * ((r - 100).sum() / (truth - 100).sum() - 1):+6.2f}%")
        noise = rng.normal(0, 1, (400, 400)).astype(np.float32) + 1000
        for path, fn in paths.items():
            frames.shear_plan = fn
            r = frames.resample(noise, WideTransform(homography=hom), (400, 400))[0]
            r = r[50:350, 50:350]
            print(f"{case:18s} noise {path:10s} lanczos-clamped: mean {r.mean() - 1000:+.4f}, "
                  f"std {r.std():.3f} (sigma 1)")
    frames.shear_plan = plan


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", default="6000x4000", help="WIDTHxHEIGHT")
    ap.add_argument("--workdir", default=None,
                    help="folder for the frames; frames simulated there before are reused")
    ap.add_argument("--src", default=None, help="register with the package found in this folder")
    ap.add_argument("--compare-with", default=None, metavar="OTHER_SRC",
                    help="also run the package in this folder, alternated with --src (or this "
                         "checkout), --repeat times each, and print the medians of both")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each version with "
                    "--compare-with")
    ap.add_argument("--max-angle", type=float, default=MAX_ANGLE,
                    help="rotations of the dithers drawn in +- this (degrees; 0: a good mount, "
                         "frames only shifted, and the last one turned 180 degrees)")
    ap.add_argument("--stages", action=argparse.BooleanOptionalAction, default=True,
                    help="run the second frame once more stage by stage (default: yes)")
    ap.add_argument("--timeline", action="store_true",
                    help="print when each frame's read, stars, resample and write ran")
    ap.add_argument("--interpolators", action="store_true",
                    help="only print the interpolator table (stars and noise, seconds)")
    args = ap.parse_args(argv)
    if args.interpolators:
        interpolators()
        return 0
    w, h = (int(v) for v in args.size.lower().split("x"))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_register_"))
    paths, inside, truth_xy = _frames(work, args.frames, w, h, args.max_angle)
    versions = [args.src] + ([args.compare_with] if args.compare_with else [])
    summaries: dict = {}
    for _ in range(args.repeat if args.compare_with else 1):
        for src in versions:
            r = _run(paths, work, src, args.stages)
            summaries.setdefault(r["code"], []).append(
                _report(r, args.frames, w, h, work, inside, truth_xy))
            if args.timeline:
                _timeline(r)
    if args.compare_with:
        _compare(summaries)
    return 0


if __name__ == "__main__":
    sys.exit(main())
