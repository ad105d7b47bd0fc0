"""Benchmark of the multiscale median transform: seconds per 6000x4000 channel.

Times :func:`napari_nsg.core.mmt.mmt_residual` (8 layers, the default fast
hybrid) on a synthetic 6000x4000 channel (gradient, nebula blobs, stars,
noise), with PixInsight's mirrored borders and with the linear borders MSGR
uses, and on a 3-channel image (seconds per channel). Each timing is repeated
and the median printed: wall, CPU of all threads, CPU of the calling thread
alone (the serial part: the work in the MMT's worker threads runs beside it)
and "2 cores", the wall time these give on two idle cores, serial + (CPU -
serial) / 2 (an estimate for a busy machine, where the wall time is not one).

``--against OTHER/src`` times the ``core/mmt.py`` of another copy of the code
in the same process, alternated with this one (A, B, A, B, ...), and prints
the ratio and the largest difference between the two results (e.g. ``git
archive REV src | tar -x -C /tmp/old`` then ``--against /tmp/old/src``).

    python benchmarks/bench_mmt.py [--repeat 3] [--size 6000x4000] [--against OTHER/src]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np

#: The image is a tile of this size repeated (quick to make; the MMT does not care).
TILE = (1000, 1500)
N_LAYERS = 8


def _tile(seed: int = 1) -> np.ndarray:
    """Gradient, 25 nebula blobs (15-200 px), ~5000 stars and noise, background ~0.1."""
    from napari_nsg.synthetic.hard_image import hard_image

    return hard_image(*TILE, seed=seed)


def _image(h: int, w: int) -> np.ndarray:
    tile = _tile()
    reps = (-(-h // TILE[0]), -(-w // TILE[1]))
    return np.ascontiguousarray(np.tile(tile, reps)[:h, :w])


def _other_mmt(src: str):
    """``core/mmt.py`` of another source tree, as a module of this package (same helpers)."""
    path = Path(src) / "napari_nsg" / "core" / "mmt.py"
    spec = importlib.util.spec_from_file_location("napari_nsg.core._mmt_against", path)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "napari_nsg.core"
    sys.modules[spec.name] = module  # (dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


def _time(func, *args, **kw) -> tuple[np.ndarray, np.ndarray]:
    """(wall s, CPU s of all threads, CPU s of this thread) and the result."""
    t0, c0, s0 = time.perf_counter(), time.process_time(), time.thread_time()
    out = func(*args, **kw)
    return np.array([time.perf_counter() - t0, time.process_time() - c0,
                     time.thread_time() - s0]), out


def _two_cores(wall_cpu_serial: np.ndarray) -> float:
    """Wall time on two idle cores: the serial CPU plus half the rest."""
    _, cpu, serial = wall_cpu_serial
    return float(serial + (cpu - serial) / 2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--size", default="6000x4000", help="WIDTHxHEIGHT")
    ap.add_argument("--against", default=None, help="another tree's src folder to compare")
    args = ap.parse_args(argv)
    from napari_nsg.core import mmt

    w, h = (int(v) for v in args.size.lower().split("x"))
    mono = _image(h, w)
    rgb = np.stack([mono, 1.5 * mono, mono[::-1].copy()])
    codes = {"this": mmt}
    if args.against:
        codes["against"] = _other_mmt(args.against)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"MMT residual, {N_LAYERS} layers, {w}x{h}, {os.cpu_count()} CPU(s), numpy "
          f"{np.__version__}, load average {load:.1f}; median of {args.repeat}, seconds per "
          "channel: wall, CPU of all threads, serial (CPU of the calling thread), and the "
          "wall time these give on 2 idle cores")
    cases = [("mono, mirror borders", mono, "mirror"), ("mono, linear borders", mono, "linear"),
             ("3 channels, linear borders", rgb, "linear")]
    print(f"{'case':28s} " + " ".join(f"{name:>9s} {'CPU':>5s} {'serial':>6s} {'2 cores':>7s}"
                                      for name in codes)
          + ("   ratio  CPU ratio  2-core ratio  max rel. diff" if len(codes) > 1 else ""))
    for label, image, border in cases:
        per = image.shape[0] if image.ndim == 3 else 1
        runs: dict = {name: [] for name in codes}
        outs: dict = {}
        for _ in range(args.repeat):
            for name, module in codes.items():  # alternated
                secs, outs[name] = _time(module.mmt_residual, image, N_LAYERS, border=border)
                runs[name].append(secs / per)
        med = {name: np.median(np.array(r), axis=0) for name, r in runs.items()}
        two = {name: _two_cores(m) for name, m in med.items()}
        line = f"{label:28s} " + " ".join(
            f"{med[name][0]:9.3f} {med[name][1]:5.2f} {med[name][2]:6.2f} {two[name]:7.3f}"
            for name in codes)
        if len(codes) > 1:
            ref = np.abs(outs["against"])
            diff = np.abs(outs["this"] - outs["against"]) / np.maximum(ref, np.finfo(np.float32).tiny)
            line += (f"  {med['against'][0] / med['this'][0]:6.2f}"
                     f"  {med['against'][1] / med['this'][1]:9.2f}"
                     f"  {two['against'] / two['this']:12.2f}  {float(diff.max()):.2g}")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
