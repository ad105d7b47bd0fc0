"""``napari-nsg normalize``: NormalizeScaleGradient over a batch of frames."""

from __future__ import annotations

import argparse

from ._common import add_progress_flag, not_built


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


def run(args: argparse.Namespace) -> int:
    return not_built("normalize")
