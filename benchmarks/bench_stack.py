"""Benchmark of ``napari-nsg stack``: peak memory and time against the frame count.

Generates N frames (default 50 x 6000x4000) on the fly into a work folder:
each is written straight into a memory-mapped FITS file (uint16 with BZERO,
as cameras write them), band of rows by band of rows, from one star field
plus per-frame noise, a sky offset, hot pixels and a satellite trail in every
fifth frame, with an ``NWEIGHT`` keyword. Then, for each count asked (default
10, 25, 50), a fresh subprocess:

1. stacks the first N frames with :func:`napari_nsg.pipeline.stack.stack_frames`
   (default rejection ``auto``), timing it and reading the process's peak
   resident memory (VmHWM) right after;
2. reads every frame once, whole, with ``read_frame`` (the floor any stacker
   that reads the frames must spend) and times that.

It prints one line per count: seconds, seconds per frame, the ratio to
reading the frames once, and the peak memory, which must stay flat (bounded by
a chunk of rows of all frames, not by N).

    python benchmarks/bench_stack.py [--counts 10,25,50] [--size 6000x4000]
                                     [--rejection auto] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits

BENCH_DIR = Path(__file__).resolve().parent
BAND_ROWS = 500
SKY = 1000.0
NOISE = 12.0

CHILD = r"""
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from _memory import peak_rss_mib
from napari_nsg.io import read_frame
from napari_nsg.pipeline.stack import stack_frames

paths = [Path(p) for p in json.loads(sys.argv[1])]
out = Path(sys.argv[2])
t0 = time.perf_counter()
res = stack_frames(paths, out, rejection=sys.argv[3], overwrite=True)
wall = time.perf_counter() - t0
peak = peak_rss_mib()
t0 = time.perf_counter()
for p in paths:
    f = read_frame(p)
    del f
read = time.perf_counter() - t0
print(json.dumps({"wall": wall, "read": read, "peak_mib": peak, "chunk_rows": res.chunk_rows,
                  "method": res.rejection.method}))
"""


def _star_field(shape, rng) -> np.ndarray:
    from napari_nsg.synthetic.psf import PSF, render_stars

    h, w = shape
    n = int(h * w * 4e-4)
    flux = np.exp(rng.uniform(np.log(200), np.log(2e5), n))
    return render_stars(shape, rng.uniform(0, w, n), rng.uniform(0, h, n), flux, PSF(3.0))


def _write_frame(path: Path, stars: np.ndarray, k: int, rng) -> None:
    """One uint16 FITS frame written band by band into a memory map."""
    h, w = stars.shape
    header = fits.Header()
    header["SIMPLE"] = True
    header["BITPIX"] = 16
    header["NAXIS"] = 2
    header["NAXIS1"] = w
    header["NAXIS2"] = h
    header["BZERO"] = 32768
    header["BSCALE"] = 1
    header["NWEIGHT"] = float(1.0 - 0.01 * (k % 10))
    head = header.tostring().encode("ascii")
    data_bytes = h * w * 2
    size = len(head) + data_bytes + (-data_bytes) % 2880
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(size)
    mm = np.memmap(path, dtype=">i2", mode="r+", offset=len(head), shape=(h, w))
    offset = rng.normal(0, 5)
    for y0 in range(0, h, BAND_ROWS):
        y1 = min(h, y0 + BAND_ROWS)
        band = stars[y0:y1] + SKY + offset + rng.normal(0, NOISE, (y1 - y0, w)).astype(np.float32)
        if k % 5 == 1:  # a satellite trail across the frame
            rows = np.arange(y0, y1)
            xs = (rows * w / h).astype(int)
            band[rows - y0, np.clip(xs, 0, w - 1)] += 3000
        mm[y0:y1] = (np.clip(np.round(band), 0, 65535) - 32768).astype(">i2")
    hot = rng.integers(0, [h, w], (200, 2))
    mm[hot[:, 0], hot[:, 1]] = 65535 - 32768
    mm.flush()
    del mm


def make_frames(workdir: Path, n: int, shape) -> list[Path]:
    """Write ``n`` frames (reused when they exist with that shape)."""
    workdir.mkdir(parents=True, exist_ok=True)
    paths = [workdir / f"frame_{k:03d}.fits" for k in range(n)]
    stamp = workdir / "shape.json"
    if stamp.exists() and json.loads(stamp.read_text()) == list(shape) and all(
            p.exists() for p in paths):
        return paths
    rng = np.random.default_rng(0)
    stars = _star_field(shape, rng)
    for k, p in enumerate(paths):
        _write_frame(p, stars, k, rng)
        print(f"  wrote {p.name}", file=sys.stderr)
    stamp.write_text(json.dumps(list(shape)))
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="10,25,50")
    ap.add_argument("--size", default="6000x4000", help="WIDTHxHEIGHT")
    ap.add_argument("--rejection", default="auto")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    w, h = (int(v) for v in args.size.lower().split("x"))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_stack_"))
    paths = make_frames(work / "frames", max(counts), (h, w))
    print(f"stack of {w}x{h} uint16 frames, rejection {args.rejection} (work folder {work})")
    print(f"{'frames':>6s} {'method':>10s} {'chunk':>6s} {'stack s':>9s} {'s/frame':>8s} "
          f"{'read s':>8s} {'ratio':>6s} {'peak MiB':>9s}")
    for n in counts:
        out = work / f"stack_{n}.fits"
        proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps([str(p) for p in paths[:n]]),
                               str(out), args.rejection, str(BENCH_DIR)],
                              capture_output=True, text=True, check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{n:6d} {r['method']:>10s} {r['chunk_rows']:6d} {r['wall']:9.1f} "
              f"{r['wall'] / n:8.2f} {r['read']:8.1f} {r['wall'] / r['read']:6.1f} "
              f"{r['peak_mib']:9.0f}")
        out.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
