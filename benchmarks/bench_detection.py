"""Benchmark of the star detection (``core/stars/detection.py: detect_stars``), old and new alternated.

Simulates one dithered 6000x4000 mono frame (the star density of
``bench_register.py``) and times ``detect_stars`` (threshold 5, the brightest
1000, as registration asks) on four images:

* the 2x2-binned frame (what ``register`` and MSGR search on frames above 8 Mpx);
* the 2x2-binned frame with a no-data border (NaN wedge, zero band: a registered frame);
* the full frame with that border (``rank`` and ``normalize`` on registered frames);
* the full clean frame;

MSGR's search on the two binned images (threshold 12 first, 5 if that found fewer than
1000: one background map since ``quick_threshold``, two before);

and ``intensity`` (the detection image of a colour frame: the mean of the channels,
no-data kept) on a 3-channel version of the frame, clean and with the border.

With ``--compare-with OLD/src`` the ``detection.py`` of that tree is loaded next to
this one (both with this tree's ``no_data_mask``, so only detection's own work
differs) and the two run alternated, ``--repeat`` times each; the table gives
median CPU seconds (``time.process_time``: all threads, user + system), median
wall seconds, and whether both found the same stars at the same positions.

    python benchmarks/bench_detection.py [--compare-with /tmp/base/src] [--repeat 3]
                                         [--size 6000x4000]
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import time
from pathlib import Path

import cv2
import numpy as np

STAR_DENSITY = 1.2e-4  # stars per pixel of the field, as bench_register.py
MAX_STARS = 1000
THRESHOLD = 5.0
QUICK_THRESHOLD = 12.0  # MSGR's first search (core/registration/register.py)


def _frame(h: int, w: int) -> np.ndarray:
    from napari_nsg.synthetic.dithered import simulate_dithered

    sim = simulate_dithered(2, (h, w), seed=1, n_stars=int(STAR_DENSITY * w * h * 1.7**2))
    return np.ascontiguousarray(sim.frames[1], dtype=np.float32)


def _with_border(image: np.ndarray) -> np.ndarray:
    out = image.copy()
    h, w = out.shape
    yy, xx = np.ogrid[:h, :w]
    out[xx < 0.03 * w + 0.02 * yy] = np.nan
    out[: h // 50] = 0.0
    return out


def _binned(image: np.ndarray) -> np.ndarray:
    h, w = image.shape
    return cv2.resize(image[: h // 2 * 2, : w // 2 * 2], (w // 2, h // 2),
                      interpolation=cv2.INTER_AREA)


def _load(src: Path, tag: str):
    """``detection.py`` of another tree as a module beside this one (relative imports: ours)."""
    spec = importlib.util.spec_from_file_location(
        f"napari_nsg.core.stars._bench_{tag}", src / "napari_nsg/core/stars/detection.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _timed(fn, image):
    t, c = time.perf_counter(), time.process_time()
    value = fn(image)
    return time.perf_counter() - t, time.process_time() - c, value


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return bool(np.array_equal(a, b, equal_nan=True))
    return len(a) == len(b) and bool(np.all(np.abs(a.x - b.x) < 1e-3)
                                     and np.all(np.abs(a.y - b.y) < 1e-3))


def _detector(module):
    return lambda image: module.detect_stars(image, threshold=THRESHOLD, max_stars=MAX_STARS)


def _two_searches(module):
    """MSGR's search: at QUICK_THRESHOLD first, at THRESHOLD if that found too few (code
    without ``quick_threshold``: two calls, two background maps)."""
    if "quick_threshold" in inspect.signature(module.detect_stars).parameters:
        return lambda image: module.detect_stars(image, threshold=THRESHOLD, max_stars=MAX_STARS,
                                                 quick_threshold=QUICK_THRESHOLD)

    def run(image):
        quick = module.detect_stars(image, threshold=QUICK_THRESHOLD, max_stars=MAX_STARS)
        return quick if len(quick) >= MAX_STARS else _detector(module)(image)
    return run


_FUNCTIONS = {"detect_stars": _detector, "quick then full": _two_searches,
              "intensity": lambda module: module.intensity}


def _table(tasks: dict, codes: dict, repeat: int) -> None:
    """One row per ``tasks`` item ``name: (function name, image)``, codes alternated."""
    print(f"{'task':42s} {'shape':>12s} " + " ".join(f"{k + ' CPU/wall s':>18s}" for k in codes)
          + ("  CPU ratio  same result" if len(codes) > 1 else ""))
    for name, (what, image) in tasks.items():
        cpu, wall, found = {k: [] for k in codes}, {k: [] for k in codes}, {}
        for _ in range(repeat):
            for k, module in codes.items():
                fn = _FUNCTIONS[what](module)
                dw, dc, found[k] = _timed(fn, image)
                wall[k].append(dw)
                cpu[k].append(dc)
        med = {k: (float(np.median(cpu[k])), float(np.median(wall[k]))) for k in codes}
        cols = " ".join(f"{med[k][0]:8.3f} / {med[k][1]:6.3f}  " for k in codes)
        tail = (f"  {med['new'][0] / med['old'][0]:9.2f}  {_same(found['old'], found['new'])}"
                if len(codes) > 1 else "")
        shape = "x".join(map(str, image.shape[::-1]))
        print(f"{what + ', ' + name.strip():42s} {shape:>12s} {cols}{tail}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare-with", type=Path, help="another tree's src/ (e.g. /tmp/base/src)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--size", default="6000x4000")
    args = ap.parse_args()
    from napari_nsg.core.stars import detection

    w, h = (int(v) for v in args.size.split("x"))
    frame = _frame(h, w)
    border = _with_border(frame)
    tasks = {"binned, clean": ("detect_stars", _binned(frame)),
             "binned, no-data border": ("detect_stars", _binned(border)),
             "full, no-data border": ("detect_stars", border),
             "full, clean": ("detect_stars", frame),
             "binned, clean ": ("quick then full", _binned(frame)),
             "binned, no-data border ": ("quick then full", _binned(border)),
             "colour, clean": ("intensity", np.stack([frame, 0.9 * frame, 1.1 * frame])),
             "colour, no-data border": ("intensity", np.stack([border, 0.9 * border, border]))}
    codes = {"new": detection}
    if args.compare_with:
        codes = {"old": _load(args.compare_with, "old"), **codes}
    print(f"detect_stars (threshold {THRESHOLD}, brightest {MAX_STARS}) and intensity on a "
          f"simulated {w}x{h} frame; median of {args.repeat}, codes alternated")
    _table(tasks, codes, args.repeat)

if __name__ == "__main__":
    main()
