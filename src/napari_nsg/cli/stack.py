"""``napari-nsg stack``: weighted integration with pixel rejection."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._common import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    EXIT_SOME_FAILED,
    add_progress_flag,
    error,
    frame_list,
    output_name,
)


def add_parser(sub) -> argparse.ArgumentParser:
    from ..core.stack import REJECTIONS

    p = sub.add_parser(
        "stack",
        help="integrate normalized frames into one image",
        description="Weighted average of registered, normalized frames with pixel rejection, "
        "read a chunk of rows at a time (memory does not grow with the number of frames). "
        "Writes a float32 FITS file: the stack, then the LOWREJ, HIGHREJ and NFRAMES "
        "extensions (rejected values and contributing frames per pixel).",
    )
    p.add_argument("frames", nargs="+", metavar="FRAME", help="normalized frames")
    p.add_argument("--out", required=True, metavar="FILE", help="output FITS file")
    p.add_argument("--weights", default="NWEIGHT", metavar="NWEIGHT|none",
                   help="header keyword holding each frame's weight, or 'none' (default NWEIGHT)")
    p.add_argument("--rejection", default="auto", choices=REJECTIONS,
                   help="pixel rejection (default auto: none for 2 frames, percentile below 8, "
                   "sigma up to 10, winsorized below 20, linear-fit from 20)")
    p.add_argument("--chunk-rows", type=int, default=None, metavar="N",
                   help="rows of every frame read at once (default: from a 256 MiB budget)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--include-rejected", action="store_true",
                   help="also stack the frames that normalize rejected (by default they are "
                   "skipped, as its report nsg_results.json beside them says)")
    ex = p.add_mutually_exclusive_group()
    ex.add_argument("--workers", type=int, default=1, metavar="N",
                    help="integrate N chunks at once on this machine (default 1)")
    ex.add_argument("--scheduler", metavar="ADDRESS",
                    help="run on a Dask distributed scheduler (needs the 'distributed' extra)")
    add_progress_flag(p)
    return p


def _print_rows(result) -> None:
    print(f"{'frame':40s} {'weight':>9s} {'rej.low %':>10s} {'rej.high %':>10s}  status")
    for row in result.rows:
        name = Path(row["file"]).name
        if row["error"]:
            print(f"{name:40s} {'-':>9s} {'-':>10s} {'-':>10s}  FAILED: {row['error']}")
            continue
        if row.get("skipped"):
            print(f"{name:40s} {'-':>9s} {'-':>10s} {'-':>10s}  skipped: {row['skipped']}")
            continue
        print(f"{name:40s} {row['weight']:9.4g} {100 * row['rejected_low']:10.3f} "
              f"{100 * row['rejected_high']:10.3f}  ok")


def _hint(text: str) -> str:
    return "; use --weights none for equal weights" if "weight" in text else ""


def run(args: argparse.Namespace) -> int:
    from ..pipeline.progress import TqdmProgress
    from ..pipeline.stack import stack_frames

    if args.workers < 1:
        error(f"--workers must be at least 1, got {args.workers}")
        return EXIT_BAD_INPUT
    if args.chunk_rows is not None and args.chunk_rows < 1:
        error(f"--chunk-rows must be at least 1, got {args.chunk_rows}")
        return EXIT_BAD_INPUT
    out = output_name(args.out, "--out")
    weights = None if str(args.weights).strip().lower() == "none" else args.weights.strip()
    frames = frame_list(args.frames)
    with TqdmProgress("stack", disable=True if args.quiet else None) as bar:
        result = stack_frames(frames, out, weights=weights, rejection=args.rejection,
                              chunk_rows=args.chunk_rows, overwrite=args.overwrite,
                              include_rejected=args.include_rejected, workers=args.workers,
                              scheduler=args.scheduler, progress=bar)
    _print_rows(result)
    for row in result.failed:
        error(f"{row['file']}: {row['error']}" + _hint(row["error"]))
    r = result.rejection
    skipped = (f" ({len(result.skipped)} left out: rejected by normalize; --include-rejected "
               "stacks them)" if result.skipped else "")
    print(f"{len(result.stacked)} of {len(result.rows)} frame(s) stacked{skipped}, rejection "
          f"{r.method} (low {r.low:g}, high {r.high:g}); stack: {result.output}", file=sys.stderr)
    return EXIT_SOME_FAILED if result.failed else EXIT_OK
