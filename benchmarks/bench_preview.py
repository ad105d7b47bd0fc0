"""Benchmark of the live preview: how long a smoothness change takes to refresh it.

Simulates two mono frames (default 6000x4000, float32) once into a work
folder, opens them in an :class:`~napari_nsg.pipeline.session.NsgSession`
(the first is the reference), previews the second once (stars, photometry,
samples: the cold start), then moves the smoothness through a few values
as a slider would. For each it times, separately:

* ``spline``: :meth:`NsgSession.update_params` plus :meth:`NsgSession.preview`
  (the spline refit and its evaluation on the coarse grid: the only stage a
  smoothness change invalidates);
* ``gradient``, ``curvature``, ``corrected``: the full-size images a viewer
  shows (computed on demand from the coarse grid);

and prints them with the total, the process's CPU time for the same work (on a
shared, loaded machine the wall time also counts waiting for a core; the load
average is printed), and the ratio of the total to reading the frame once
(``read_frame``, the floor of anything that shows a new frame). A value seen
before reuses that frame's remembered fit (the last row).

    python benchmarks/bench_preview.py [--size 6000x4000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

SMOOTHNESS = (-1.5, -1.0, -0.5, 0.0, -2.5, -3.0, -1.0)  # the last one: a value seen before


def _timed(func):
    t = time.perf_counter()
    out = func()
    return out, time.perf_counter() - t


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _frames(workdir: Path, shape: tuple[int, int]) -> list[Path]:
    from napari_nsg.synthetic import write_sequence

    folder = workdir / f"frames_{shape[1]}x{shape[0]}"
    paths = sorted(folder.glob("*.fits"))
    if len(paths) >= 2:
        return paths[:2]
    folder.mkdir(parents=True, exist_ok=True)
    return list(write_sequence(folder, 2, shape, seed=0, border=40, overwrite=True))[:2]


def run(paths: list[Path]) -> list[dict]:
    """Time the cold preview and each smoothness change; returns table rows."""
    from napari_nsg.io import read_frame
    from napari_nsg.pipeline.session import NsgSession

    _, read_s = _timed(lambda: read_frame(paths[1]))
    session = NsgSession()
    session.add_files(paths)
    _, ref_s = _timed(lambda: session.set_reference(paths[0].name))
    rows = []
    name = paths[1].name
    for smoothness in (None,) + SMOOTHNESS:
        cpu = time.process_time()
        if smoothness is None:
            preview, spline_s = _timed(lambda: session.preview(name))
        else:
            preview, spline_s = _timed(lambda s=smoothness: (
                session.update_params(smoothness=s), session.preview(name))[1])
        _, grad_s = _timed(preview.gradient)
        _, curv_s = _timed(preview.curvature)
        _, corr_s = _timed(lambda p=preview: p.corrected)
        cpu = time.process_time() - cpu
        total = spline_s + grad_s + curv_s + corr_s
        step = "cold start" if smoothness is None else f"smoothness {smoothness:+.1f}"
        rows.append({"step": step,
                     "spline": spline_s, "gradient": grad_s, "curvature": curv_s,
                     "corrected": corr_s, "total": total, "cpu": cpu, "ratio": total / read_s,
                     "nodes": preview.n_nodes})
    print(f"reference prepared in {ref_s:.2f} s; reading the frame once: {read_s:.3f} s; "
          f"{rows[0]['nodes']} spline nodes; load average {_load()}")
    return rows


def print_table(rows: list[dict]) -> None:
    head = (f"{'step':<17} {'spline s':>8} {'grad s':>7} {'curv s':>7} {'corr s':>7} "
            f"{'total s':>8} {'cpu s':>6} {'x read':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['step']:<17} {r['spline']:8.3f} {r['gradient']:7.3f} {r['curvature']:7.3f} "
              f"{r['corrected']:7.3f} {r['total']:8.3f} {r['cpu']:6.3f} {r['ratio']:7.2f}")
    changes = sorted(r["total"] for r in rows[1:-1])
    cpus = sorted(r["cpu"] for r in rows[1:-1])
    print(f"new smoothness value: median {changes[len(changes) // 2]:.3f} s wall "
          f"({cpus[len(cpus) // 2]:.3f} s CPU), worst {changes[-1]:.3f} s (target < 1 s); "
          f"a value seen before: {rows[-1]['total']:.3f} s")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="6000x4000", help="WIDTHxHEIGHT (default 6000x4000)")
    ap.add_argument("--workdir", help="keep the simulated frames here (reused if present)")
    args = ap.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="bench_preview_") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        paths = _frames(workdir, (height, width))
        print_table(run(paths))


if __name__ == "__main__":
    main()
