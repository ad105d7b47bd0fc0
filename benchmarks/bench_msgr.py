"""Benchmark of MSGR: multiscale median transform, registration, the whole recipe.

Simulates a narrow frame (default 6000x4000) and a wide frame of the same pixel
size at a 3x coarser scale (9x the sky), writes both as float32 FITS in a
temporary folder, and times, in one run:

* reading both frames and writing one (the I/O every run pays: the baseline),
* the MMT residual with 8 layers of one 6000x4000 channel (mirror borders as
  PixInsight, and the linear-extension borders MSGR uses), and with 9 layers,
* the registration (detection, matching, model, resampling),
* the whole ``napari-nsg msgr`` recipe file to file (default options, then
  with ``--remove-stars``),
* the accuracy of the fast MMT against the slow PCL port on a 1000x1500 crop,
* with ``--compare-detection N``: the registration with the star search on the
  full-resolution images (the code before issue 13) and on 2x2-binned images
  (now), alternated N times, medians and map errors against the simulator.
* with ``--compare-with SRC`` (instead of the table above): the whole recipe
  file to file and the MMT of one channel, by the code in ``SRC`` (a ``src``
  folder or a checkout holding one, e.g. a ``git worktree`` of an older
  commit) and by this code, each in its own process, alternated ``--rounds``
  times; medians per step, the ratios, and how far the two outputs differ.

Prints a table with each time and its ratio to read+write, and the
registration's stages (detect, match, refine, warp). Usage::

    python benchmarks/bench_msgr.py [--height 4000 --width 6000 --ratio 3 --repeat 1]
        [--compare-detection 3] [--compare-with /tmp/base --rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _timed(func, repeat: int):
    best = np.inf
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = func()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _compare_detection(narrow, wide, args, map_error) -> list[str]:
    """Registration with the star search at full resolution (before) and 2x2-binned (now),
    alternated ``args.compare_detection`` times; lines with medians and map errors."""
    from napari_nsg.core.registration import register as reg_module
    from napari_nsg.core.registration import register_wide_to_narrow

    binning = reg_module.detection_binning
    runs = {"full resolution (before)": [], "2x2 binned (now)": []}
    errors = {}
    try:
        for _ in range(args.compare_detection):
            for name, rule in (("full resolution (before)", lambda shape: 1),
                               ("2x2 binned (now)", binning)):
                reg_module.detection_binning = rule
                t0 = time.perf_counter()
                reg = register_wide_to_narrow(narrow, wide, scale_hint=args.ratio)
                runs[name].append((time.perf_counter() - t0, reg.timings["detect"]))
                errors[name] = map_error(reg)
    finally:
        reg_module.detection_binning = binning
    lines = [f"star search, alternated {args.compare_detection}x (medians):"]
    for name, vals in runs.items():
        tot, det = np.median([v[0] for v in vals]), np.median([v[1] for v in vals])
        e = errors[name]
        lines.append(f"  {name:<26} registration {tot:6.2f} s (detect {det:5.2f} s); map error "
                     f"rms {np.sqrt(np.mean(e**2)):.4f} px, max {e.max():.4f} px")
    return lines


#: The code each side of ``--compare-with`` runs in its own process: one JSON line per command
#: read from stdin ("recipe OUT" or "mmt"), with the wall times.
_WORKER = r"""
import json, sys, time
import numpy as np
from napari_nsg.core.mmt import mmt_residual
from napari_nsg.io import read_frame
from napari_nsg.pipeline.msgr import run_msgr
narrow, wide = sys.argv[1], sys.argv[2]
channel = read_frame(narrow).data
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    cmd, *rest = line.split()
    t0, c0 = time.perf_counter(), time.process_time()
    if cmd == "recipe":
        run = run_msgr(narrow, wide, rest[0], overwrite=True)
        out = {"total": time.perf_counter() - t0, **run.result.timings,
               "cpu": time.process_time() - c0, "b": run.result.fits[0].b}
    else:
        mmt_residual(channel, 8, border="linear")
        out = {"mmt": time.perf_counter() - t0, "mmt cpu": time.process_time() - c0}
    print(json.dumps(out), flush=True)
"""


def _src_folder(path: str) -> Path:
    """The folder holding ``napari_nsg`` in ``path`` (a ``src`` folder or a checkout)."""
    p = Path(path)
    for cand in (p, p / "src"):
        if (cand / "napari_nsg" / "__init__.py").exists():
            return cand.resolve()
    raise SystemExit(f"{path}: no napari_nsg package there (nor in its src/)")


def _worker(src: Path, narrow: Path, wide: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(src))
    proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(narrow), str(wide)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    json.loads(proc.stdout.readline())
    return proc


def _ask(proc: subprocess.Popen, command: str) -> dict:
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"a benchmark worker died on {command!r}")
    return json.loads(line)


def _compare_code(args, narrow_path: Path, wide_path: Path, tmp: Path) -> list[str]:
    """The recipe and the MMT by the code in ``args.compare_with`` (before) and this code (now),
    alternated ``args.rounds`` times; the table lines."""
    from napari_nsg.io import read_frame

    here = Path(__file__).resolve().parents[1] / "src"
    sides = {"before": _src_folder(args.compare_with), "now": _src_folder(str(here))}
    procs = {k: _worker(v, narrow_path, wide_path) for k, v in sides.items()}
    runs: dict = {k: [] for k in sides}
    try:
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]
            for k in order:
                rec = _ask(procs[k], f"recipe {tmp / f'{k}.fits'}")
                rec.update(_ask(procs[k], "mmt"))
                runs[k].append(rec)
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait()
    keys = [k for k in runs["now"][0] if k != "b" and all(k in r for r in runs["before"])]
    med = {k: {key: float(np.median([r[key] for r in v])) for key in keys}
           for k, v in runs.items()}
    keys = [k for k in keys if max(med["before"][k], med["now"][k]) >= 0.005]  # steps not run
    old, new = (read_frame(tmp / f"{k}.fits").data for k in sides)
    diff = np.abs(new - old)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = diff / np.abs(old)
    lines = [(f"before = {sides['before']}, now = {sides['now']}; {args.rounds} rounds "
              "alternated, medians (s):"), "",
             f"| {'step':<27} | {'before':>8} | {'now':>8} | {'before/now':>10} |",
             f"|{'-' * 29}|{'-' * 10}|{'-' * 10}|{'-' * 12}|"]
    for key in keys:
        b, n = med["before"][key], med["now"][key]
        name = {"total": "whole recipe (file to file)", "cpu": "  CPU time of the recipe",
                "mmt": "MMT 8 layers, 1 channel", "mmt cpu": "  CPU time of the MMT",
                }.get(key, f"  {key}")
        lines.append(f"| {name:<27} | {b:8.2f} | {n:8.2f} | {b / max(n, 1e-9):10.2f} |")
    lines += ["", "whole recipe, each round (s): " + "; ".join(
        f"{k} " + ", ".join(f"{r['total']:.2f}" for r in v) for k, v in runs.items()),
        (f"slope b: before {runs['before'][0]['b']:.6g}, now {runs['now'][0]['b']:.6g}; "
         f"corrected images, |now - before|: median {np.nanmedian(diff):.3g}, p99 "
         f"{np.nanpercentile(diff, 99):.3g}, max {np.nanmax(diff):.3g} ADU (sky "
         f"{np.nanmedian(old):.4g}); relative to the pixel: p99 {np.nanpercentile(rel, 99):.2g}, "
         f"max {np.nanmax(rel[np.isfinite(rel)]):.2g}")]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--height", type=int, default=4000)
    ap.add_argument("--width", type=int, default=6000)
    ap.add_argument("--ratio", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=1, help="best of N for each timing")
    ap.add_argument("--compare-detection", type=int, default=0, metavar="N",
                    help="alternate N times: star search at full resolution vs 2x2-binned")
    ap.add_argument("--compare-with", metavar="SRC",
                    help="time the recipe and the MMT by the code in SRC against this code "
                         "(alternated, medians) instead of the table")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of --compare-with")
    ap.add_argument("--skip-reference", action="store_true",
                    help="skip the (slow) MMT accuracy check against the PCL port")
    args = ap.parse_args(argv)

    from napari_nsg.core.mmt import mmt_residual, mmt_residual_reference
    from napari_nsg.core.registration import register_wide_to_narrow
    from napari_nsg.io import read_frame, write_frame
    from napari_nsg.pipeline.msgr import run_msgr
    from napari_nsg.synthetic import simulate_pair

    shape = (args.height, args.width)
    print(f"napari-nsg MSGR benchmark: narrow {args.width}x{args.height}, wide "
          f"{args.width}x{args.height} at {args.ratio:g}x the pixel scale, "
          f"{os.cpu_count()} CPU(s), numpy {np.__version__}")
    t0 = time.perf_counter()
    pair = simulate_pair(shape, scale_ratio=args.ratio, rotation_deg=20.0, seed=3, gain=25.0,
                         wide_gradient=0.01 * 500.0 * args.ratio**2)
    print(f"simulated in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_msgr_") as tmp:
        tmp = Path(tmp)
        narrow_path, wide_path = tmp / "narrow.fits", tmp / "wide.fits"
        write_frame(narrow_path, pair.narrow, pair.narrow_header)
        write_frame(wide_path, pair.wide, pair.wide_header)
        truth = pair.transform
        del pair
        if args.compare_with:
            for line in _compare_code(args, narrow_path, wide_path, tmp):
                print(line)
            return 0

        def io():
            n = read_frame(narrow_path)
            read_frame(wide_path)
            write_frame(tmp / "io.fits", n.data, n.header, overwrite=True)
            return n.data

        t_io, narrow = _timed(io, args.repeat)
        rows.append(("read both + write one (baseline)", t_io))

        t, _ = _timed(lambda: mmt_residual(narrow, 8), args.repeat)
        rows.append(("MMT residual, 8 layers, 1 channel (mirror borders)", t))
        t, _ = _timed(lambda: mmt_residual(narrow, 8, border="linear"), args.repeat)
        rows.append(("MMT residual, 8 layers, 1 channel (linear borders)", t))
        t, _ = _timed(lambda: mmt_residual(narrow, 9, border="linear"), args.repeat)
        rows.append(("MMT residual, 9 layers, 1 channel (linear borders)", t))

        wide = read_frame(wide_path).data
        t, reg = _timed(lambda: register_wide_to_narrow(narrow, wide, scale_hint=args.ratio),
                        args.repeat)
        rows.append(("registration (detect, match, model, resample)", t))
        stages = reg.timings
        yy, xx = np.mgrid[0 : shape[0] : 50, 0 : shape[1] : 50]
        xy = np.column_stack([xx.ravel(), yy.ravel()]).astype(float)
        tx, ty = truth.narrow_to_wide(xy[:, 0], xy[:, 1])

        def map_error(r):
            fitted = r.transform(xy)
            return np.hypot(fitted[:, 0] - tx, fitted[:, 1] - ty) * args.ratio

        map_err = map_error(reg)
        reg = None
        compare = _compare_detection(narrow, wide, args, map_error) if args.compare_detection else []

        out = tmp / "out.fits"
        t, run = _timed(lambda: run_msgr(narrow_path, wide_path, out, overwrite=True),
                        args.repeat)
        rows.append(("whole recipe, file to file (napari-nsg msgr)", t))
        steps = run.result.timings
        t, _ = _timed(lambda: run_msgr(narrow_path, wide_path, out, overwrite=True,
                                       remove_stars=True), args.repeat)
        rows.append(("whole recipe with --remove-stars", t))

    print()
    print(f"| {'step':<54} | {'seconds':>8} | {'x read+write':>12} |")
    print(f"|{'-' * 56}|{'-' * 10}|{'-' * 14}|")
    for name, sec in rows:
        print(f"| {name:<54} | {sec:8.2f} | {sec / t_io:12.2f} |")
    print()
    print("registration stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
    for line in compare:
        print(line)
    print("recipe steps (s): " + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()))
    reg = run.result.registration
    print(f"registration: ratio {reg.scale_ratio:.4f}, rotation {reg.rotation_deg:.3f} deg, "
          f"residual {reg.residual_px:.3f} px over {reg.n_pairs} stars; map error vs truth "
          f"rms {np.sqrt(np.mean(map_err**2)):.3f} px, max {map_err.max():.3f} px")

    if not args.skip_reference:
        crop = narrow[:1000, :1500].copy()
        t_ref, ref = _timed(lambda: mmt_residual_reference(crop, 8), 1)
        t_fast, fast = _timed(lambda: mmt_residual(crop, 8), 1)
        rel = (fast - ref) / ref
        print(f"MMT 8 layers, fast vs PCL port on a 1500x1000 crop: rms "
              f"{100 * np.sqrt(np.mean(rel**2)):.4f} %, p99 "
              f"{100 * np.percentile(np.abs(rel), 99):.4f} %, max {100 * np.abs(rel).max():.4f} % "
              f"(reference {t_ref:.1f} s, fast {t_fast:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
