"""``napari-nsg demo``: simulate a small data set and run the pipeline on it."""

from __future__ import annotations

import argparse

import sys
import time
from pathlib import Path

from ._common import EXIT_BAD_INPUT, EXIT_OK, EXIT_SOME_FAILED, error


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo",
        help="simulate a small data set and run the whole pipeline on it",
        description="Write simulated sub-frames (with known truth) to DIR and run the "
        "pipeline on them.",
    )
    p.add_argument("dir", nargs="?", default="napari-nsg-demo", metavar="DIR",
                   help="folder to write to (default ./napari-nsg-demo)")
    p.add_argument("--frames", type=int, default=8, help="number of sub-frames (default 8)")
    p.add_argument("--size", type=int, default=512, help="frame size in px (default 512)")
    p.add_argument("--seed", type=int, default=1, help="simulation seed (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return p


def run(args: argparse.Namespace) -> int:
    from ..io import FrameError, OutputExistsError
    from ..pipeline.normalize import normalize_frames
    from ..pipeline.report import format_table
    from ..synthetic import read_truth, write_sequence

    if args.frames < 2:
        error(f"--frames must be at least 2, got {args.frames}")
        return EXIT_BAD_INPUT
    if args.size < 128:
        error(f"--size must be at least 128 px, got {args.size}")
        return EXIT_BAD_INPUT
    root = Path(args.dir)
    frames_dir, out_dir = root / "frames", root / "nsg"
    t0 = time.perf_counter()
    try:
        paths = write_sequence(frames_dir, args.frames, (args.size, args.size), seed=args.seed,
                               nebula=True, border=0.04 * args.size, overwrite=args.overwrite,
                               star_density=5e-3, n_bright=max(10, args.size**2 // 6500),
                               bright_flux_range=(1e3, 1.5e4))
    except OutputExistsError as exc:
        raise FrameError(exc.path, "demo data exists already (use --overwrite)") from None
    truth = read_truth(frames_dir)
    reference = frames_dir / truth["reference_file"]
    t1 = time.perf_counter()
    print(f"simulated {len(paths)} frames of {args.size}x{args.size} px in {frames_dir} "
          f"({t1 - t0:.1f} s); reference {reference.name}")
    result = normalize_frames(paths, reference, out_dir, gradient_images=True,
                              overwrite=args.overwrite)
    t2 = time.perf_counter()
    true_scale = {f["file"]: f["scale"] for f in truth["frames"]}
    print(format_table(result.rows, truth=true_scale))
    errors = [abs(s / t - 1) for r in result.rows if r.ok and not r.is_reference
              for s, t in zip(r.scale, true_scale[Path(r.file).name])]
    if errors:
        errors.sort()
        print(f"scale error vs truth: median {100 * errors[len(errors) // 2]:.2f} %, "
              f"max {100 * errors[-1]:.2f} %")
    print(f"normalized in {t2 - t1:.1f} s; outputs and nsg_results.json/.csv in {out_dir}")
    for row in result.failed:
        error(f"{row.file}: {row.error}")
    sys.stdout.flush()
    return EXIT_SOME_FAILED if result.failed else EXIT_OK
