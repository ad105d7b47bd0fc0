"""``napari-nsg register``: register frames onto a reference."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..io import MosaicError
from ._common import (
    DEBAYER_HINT,
    EXIT_BAD_INPUT,
    add_progress_flag,
    batch_status,
    error,
    error_frames,
    existing_frames,
    frame_list,
    output_name,
    warn_frames,
)


def add_parser(sub) -> argparse.ArgumentParser:
    from ..core.registration.frames import FRAME_MODELS, RESAMPLERS

    p = sub.add_parser(
        "register",
        help="register frames onto a reference frame",
        description="Align frames onto the pixel grid of a reference by star matching "
        "(shifts, rotation, 180 degree meridian flips). Writes <stem>_reg.fits per frame "
        "(0 where the frame does not cover the reference) and register_results.json/.csv.",
    )
    p.add_argument("frames", nargs="+", metavar="FRAME", help="frames to register")
    p.add_argument("--reference", required=True, metavar="REF", help="the reference frame")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--model", default="projective", choices=FRAME_MODELS,
                   help="geometric model (default projective)")
    p.add_argument("--distortion", action="store_true",
                   help="add a smooth distortion term (thin-plate spline of the residuals)")
    p.add_argument("--resampling", default="lanczos-clamped", choices=RESAMPLERS,
                   help="interpolation (default lanczos-clamped: sharp, no dark rings)")
    p.add_argument("--debayer", choices=("superpixel", "bilinear"),
                   help="debayer raw colour (BAYERPAT) frames first (required for them)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--resume", action="store_true",
                   help="skip frames whose outputs and report rows are complete")
    ex = p.add_mutually_exclusive_group()
    ex.add_argument("--workers", type=int, default=1, metavar="N",
                    help="process N frames at once on this machine (default 1)")
    ex.add_argument("--scheduler", metavar="ADDRESS",
                    help="run on a Dask distributed scheduler (needs the 'distributed' extra)")
    add_progress_flag(p)
    return p


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _print_rows(rows) -> None:
    print(f"{'frame':40s} {'stars':>6s} {'pairs':>6s} {'resid.px':>9s} {'rot.deg':>8s} "
          f"{'dx':>8s} {'dy':>8s} {'cover':>6s}  status")
    for r in rows:
        status = "reference" if r.is_reference else "ok"
        if r.error:
            status = f"FAILED: {r.error}"
        print(f"{Path(r.file).name:40s} {_fmt(r.n_stars, 'd'):>6s} {_fmt(r.n_pairs, 'd'):>6s} "
              f"{_fmt(r.residual_px, '.3f'):>9s} {_fmt(r.rotation_deg, '.2f'):>8s} "
              f"{_fmt(r.shift_x, '.2f'):>8s} {_fmt(r.shift_y, '.2f'):>8s} "
              f"{_fmt(r.coverage, '.3f'):>6s}  {status}")


def _hint(row) -> str:
    return DEBAYER_HINT if row.error_kind == MosaicError.__name__ else ""


def run(args: argparse.Namespace) -> int:
    from ..pipeline.progress import TqdmProgress
    from ..pipeline.register import register_frames

    if args.workers < 1:
        error(f"--workers must be at least 1, got {args.workers}")
        return EXIT_BAD_INPUT
    output_name(args.out, "--out")
    frames = frame_list(args.frames)
    reference = existing_frames([args.reference])[0]
    with TqdmProgress("register", disable=True if args.quiet else None) as bar:
        result = register_frames(
            frames, reference, args.out, model=args.model, distortion=args.distortion,
            resampling=args.resampling, debayer=args.debayer, overwrite=args.overwrite,
            resume=args.resume, workers=args.workers, scheduler=args.scheduler, progress=bar)
    _print_rows(result.rows)
    error_frames((row.file, row.error + _hint(row)) for row in result.failed)
    if any(row.error_kind == "OutputExistsError" for row in result.failed):
        error("some outputs exist and are not this run's: use --overwrite to replace them, "
              "or choose another --out")
    warn_frames((row.file, text) for row in result.rows for text in row.warnings)
    n_ok = len(result.rows) - len(result.failed)
    print(f"{n_ok} of {len(result.rows)} frame(s) registered; report: {result.json_path}",
          file=sys.stderr)
    return batch_status(len(result.rows), len(result.failed), "registered")
