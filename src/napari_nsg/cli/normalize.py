"""``napari-nsg normalize``: NormalizeScaleGradient over a batch of frames."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..io.atomic import make_output_folder
from ._common import (
    EXIT_BAD_INPUT,
    add_progress_flag,
    batch_status,
    error,
    error_frames,
    existing_frames,
    frame_list,
    output_name,
    warn,
    warn_frames,
)

KEPT_PREFIX = "kept the output of an earlier run"
EXISTS_HINT = ("some outputs exist and are not this run's: use --overwrite to replace them, "
               "or choose another --out")


#: The photometry modes the command line offers (the others are experiments: docs/nsg.md).
PHOTOMETRY_CHOICES = ("psf", "aperture")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "normalize",
        help="normalize sub-frames to a reference (scale + gradient)",
        description="Bring registered, linear sub-frames to the brightness scale and gradient "
        "of one reference frame: scale from star photometry, relative gradient from a "
        "smoothed surface spline. Writes <stem>_nsg.fits per frame and "
        "nsg_results.json/.csv.",
    )
    p.add_argument("frames", nargs="+", metavar="FRAME", help="registered sub-frames")
    p.add_argument("--reference", required=True, metavar="REF",
                   help="the reference frame, or 'auto' for the top-ranked one")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--smoothness", type=float, default=-2.0,
                   help="log10 of the spline smoothing, -4..4 (4 = a plane; default -2.0)")
    p.add_argument("--sample-size", default="auto",
                   help="sample square size in px, or 'auto' from the image scale (default)")
    p.add_argument("--min-weight", type=float, default=0.25,
                   help="reject frames whose relative weight is at or below this (default 0.25)")
    p.add_argument("--min-transmission", type=float, default=0.75,
                   help="reject frames whose relative transmission is at or below this "
                   "(default 0.75)")
    p.add_argument("--photometry", choices=PHOTOMETRY_CHOICES, default="psf",
                   help="how star fluxes are measured for the scale: 'psf' (default: "
                   "PSF-weighted with a profile fitted to each frame, less than half the "
                   "apertures' scale error on simulated sequences; where it disagrees with the "
                   "apertures, as on PSFs the profile does not fit, the apertures' scale is "
                   "used, with a warning) or 'aperture' (NSG's large apertures alone: about "
                   "half the time per 24 Mpx frame); see docs/nsg.md")
    p.add_argument("--gradient-images", action="store_true",
                   help="also write <stem>_gradient.fits and <stem>_curvature.fits")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--resume", action="store_true",
                   help="skip frames whose outputs and report rows are complete")
    p.add_argument("--debayer", choices=("superpixel", "bilinear"),
                   help="debayer raw colour (BAYERPAT) frames first")
    ex = p.add_mutually_exclusive_group()
    ex.add_argument("--workers", type=int, default=1, metavar="N",
                    help="process N frames at once on this machine (default 1)")
    ex.add_argument("--scheduler", metavar="ADDRESS",
                    help="run on a Dask distributed scheduler (needs the 'distributed' extra)")
    add_progress_flag(p)
    return p


def _parameters(args: argparse.Namespace):
    from ..core.nsg import NsgParameterError, NsgParameters

    size = str(args.sample_size).strip().lower()
    if size == "auto":
        sample_size = None
    else:
        try:
            value = float(size)
        except ValueError:
            raise NsgParameterError(f"--sample-size must be a number of pixels or 'auto', "
                                    f"got {args.sample_size!r}") from None
        if not math.isfinite(value) or value != int(value):
            raise NsgParameterError(f"--sample-size must be a whole number of pixels, got {size}")
        sample_size = int(value)
    names = {"smoothness": "--smoothness", "sample_size": "--sample-size",
             "min_weight": "--min-weight", "min_transmission": "--min-transmission"}
    try:
        return NsgParameters(smoothness=args.smoothness, sample_size=sample_size,
                             min_weight=args.min_weight, min_transmission=args.min_transmission,
                             photometry=args.photometry)
    except NsgParameterError as exc:
        text = str(exc)
        for key, flag in names.items():
            if text.startswith(key + " "):
                text = flag + text[len(key):]
        raise NsgParameterError(text) from None


def run(args: argparse.Namespace) -> int:
    from ..core.nsg import NsgParameterError
    from ..pipeline.normalize import normalize_frames
    from ..pipeline.progress import TqdmProgress
    from ..pipeline.report import format_table

    try:
        params = _parameters(args)
    except NsgParameterError as exc:
        error(str(exc))
        return EXIT_BAD_INPUT
    if args.workers < 1:
        error(f"--workers must be at least 1, got {args.workers}")
        return EXIT_BAD_INPUT
    output_name(args.out, "--out")
    frames = frame_list(args.frames)
    if Path(args.out).is_file():  # before a ranking that would be for nothing
        make_output_folder(args.out)
    if str(args.reference).lower() == "auto":
        from ..pipeline.rank import choose_reference

        with TqdmProgress("ranking", disable=True if args.quiet else None) as bar:
            reference = choose_reference(frames, debayer=args.debayer, params=params,
                                         progress=bar)
        print(f"reference (auto): {reference}", file=sys.stderr)
    else:
        reference = existing_frames([args.reference])[0]
    with TqdmProgress("normalize", disable=True if args.quiet else None) as bar:
        result = normalize_frames(
            frames, reference, args.out, params,
            gradient_images=args.gradient_images, overwrite=args.overwrite,
            resume=args.resume, debayer=args.debayer, workers=args.workers,
            scheduler=args.scheduler, progress=bar,
        )
    print(format_table(result.rows))
    error_frames((row.file, row.error) for row in result.failed)
    if any(row.error_kind == "OutputExistsError" for row in result.failed):
        error(EXISTS_HINT)
    if not args.resume and any(w.startswith(KEPT_PREFIX) for r in result.rows for w in r.warnings):
        warn("use --overwrite to redo the frames kept from the earlier run")
    warn_frames((row.file, text) for row in result.rows for text in row.warnings)
    n_ok = len(result.rows) - len(result.failed)
    print(f"{n_ok} of {len(result.rows)} frame(s) normalized, {len(result.rejected)} rejected; "
          f"report: {result.json_path}", file=sys.stderr)
    return batch_status(len(result.rows), len(result.failed), "normalized")
