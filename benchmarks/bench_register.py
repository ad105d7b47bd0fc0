"""Benchmark of ``napari-nsg register``: time per frame against reading + writing it.

Simulates N dithered mono frames (default 4 x 6000x4000, shifts up to 30 px,
rotations up to 3 degrees, the last one turned 180 degrees) with
:func:`napari_nsg.synthetic.dithered.simulate_dithered`, writes them as
float32 FITS, then in a fresh subprocess:

1. registers them onto the first with
   :func:`napari_nsg.pipeline.register.register_frames` (the default projective
   model and clamped Lanczos resampling), timing every frame from the progress
   callback (the reference's star detection is timed apart);
2. reads each frame with ``read_frame`` and writes it with ``write_frame`` (the
   I/O floor: what any tool must spend to read and write the frame).

It prints, per frame, the seconds, the I/O floor, their ratio, the matched-star
residual and the error of the recovered transform against the truth (RMS at
the reference stars); then the second frame once more stage by stage (read,
stars + match + model fit, resampling with clamped Lanczos and with cubic,
write), to show where the time goes.

    python benchmarks/bench_register.py [--frames 4] [--size 6000x4000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
STAR_DENSITY = 1.2e-4  # stars per pixel of the field

CHILD = r"""
import json, shutil, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from _memory import peak_rss_mib
from napari_nsg.io import read_frame, write_frame
from napari_nsg.pipeline.register import register_frames

paths = [Path(p) for p in json.loads(sys.argv[1])]
out = Path(sys.argv[2])
events = []
def progress(done, total, message):
    events.append((time.perf_counter(), done, message))
t0 = time.perf_counter()
res = register_frames(paths, paths[0], out, overwrite=True, progress=progress)
wall = time.perf_counter() - t0
peak = peak_rss_mib()
times, last = {}, t0
for t, done, message in events:
    if done >= 1:
        times[message] = t - last
    last = t
scratch = Path(tempfile.mkdtemp(dir=out))
io = {}
for p in paths:
    t = time.perf_counter()
    f = read_frame(p)
    write_frame(scratch / p.name, f.data, f.header, overwrite=True)
    io[p.name] = time.perf_counter() - t
    del f
stages = {}
if len(paths) > 1:  # one frame again, stage by stage (the reference's stars come from the job)
    from napari_nsg.core.registration.frames import register_frame, resample
    from napari_nsg.pipeline.register import _prepare
    job = _prepare(paths[0], out, None, "projective", False, "lanczos-clamped")
    t = time.perf_counter()
    f = read_frame(paths[1])
    stages["read"] = time.perf_counter() - t
    t = time.perf_counter()
    reg = register_frame(job.reference_lum, f.data, reference_stars=job.reference_stars)
    stages["stars+match+fit"] = time.perf_counter() - t
    for method in ("lanczos-clamped", "cubic"):
        t = time.perf_counter()
        data, _ = resample(f.data, reg.transform, job.reference_lum.shape, method=method)
        stages["resample " + method] = time.perf_counter() - t
    t = time.perf_counter()
    write_frame(scratch / "stage.fits", data, f.header, overwrite=True)
    stages["write"] = time.perf_counter() - t
shutil.rmtree(scratch)
rows = [{"file": Path(r.file).name, "residual": r.residual_px, "error": r.error,
         "output": r.output} for r in res.rows]
print(json.dumps({"wall": wall, "times": times, "io": io, "rows": rows, "peak_mib": peak,
                  "stages": stages}))
"""


def main(argv=None) -> int:
    from napari_nsg.synthetic.dithered import simulate_dithered

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--size", default="6000x4000", help="WIDTHxHEIGHT")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_register_"))
    n_stars = int(STAR_DENSITY * w * h * 1.7**2)
    sim = simulate_dithered(args.frames, (h, w), seed=1, flip_frame=args.frames - 1,
                            n_stars=n_stars)
    paths = sim.write(work / "frames")
    truth = {p.name: k for k, p in enumerate(paths)}
    inside = sim.star_xy[(sim.star_xy[:, 0] > 0) & (sim.star_xy[:, 0] < w - 1)
                         & (sim.star_xy[:, 1] > 0) & (sim.star_xy[:, 1] < h - 1)]
    del sim.frames[:]
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps([str(p) for p in paths]),
                           str(work / "out"), str(BENCH_DIR)],
                          capture_output=True, text=True, check=True)
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"register {args.frames} frames of {w}x{h} float32 (work folder {work}); "
          f"peak memory {r['peak_mib']:.0f} MiB, total {r['wall']:.1f} s")
    print(f"{'frame':18s} {'seconds':>8s} {'read+write':>10s} {'ratio':>6s} {'resid.px':>9s} "
          f"{'truth RMS px':>12s}")
    from astropy.io import fits

    from napari_nsg.core.registration.transforms import apply_homography

    for row in r["rows"][1:]:
        name = row["file"]
        hdr = fits.getheader(row["output"])
        hom = np.array([[hdr[f"REGH{i}{j}"] for j in (1, 2, 3)] for i in (1, 2, 3)])
        err = apply_homography(hom, inside) - sim.reference_to_frame(truth[name], inside)
        rms = float(np.sqrt(np.mean(np.sum(err**2, axis=1))))
        sec, io = r["times"].get(name, float("nan")), r["io"][name]
        print(f"{name:18s} {sec:8.2f} {io:10.2f} {sec / io:6.1f} {row['residual']:9.3f} "
              f"{rms:12.4f}")
    if r["stages"]:
        print(f"stages of {r['rows'][1]['file']} run again (s): "
              + ", ".join(f"{k} {v:.2f}" for k, v in r["stages"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
