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

Prints a table with each time and its ratio to read+write, and the
registration's stages (detect, match, refine, warp). Usage::

    python benchmarks/bench_msgr.py [--height 4000 --width 6000 --ratio 3 --repeat 1]
        [--compare-detection 3]
"""

from __future__ import annotations

import argparse
import os
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--height", type=int, default=4000)
    ap.add_argument("--width", type=int, default=6000)
    ap.add_argument("--ratio", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=1, help="best of N for each timing")
    ap.add_argument("--compare-detection", type=int, default=0, metavar="N",
                    help="alternate N times: star search at full resolution vs 2x2-binned")
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
