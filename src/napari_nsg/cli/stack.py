"""``napari-nsg stack``: weighted integration with pixel rejection."""

from __future__ import annotations

import argparse

from ._common import add_progress_flag, not_built


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "stack",
        help="integrate normalized frames into one image",
        description="Weighted average of normalized frames with pixel rejection.",
    )
    p.add_argument("frames", nargs="+", metavar="FRAME", help="normalized frames")
    p.add_argument("--out", required=True, metavar="FILE", help="output FITS file")
    p.add_argument("--weights", default="NWEIGHT", metavar="NWEIGHT|none",
                   help="header keyword holding each frame's weight, or 'none' (default NWEIGHT)")
    p.add_argument("--rejection", default="auto",
                   choices=("auto", "none", "sigma", "winsorized", "percentile"),
                   help="pixel rejection (default auto: chosen from the number of frames)")
    add_progress_flag(p)
    return p


def run(args: argparse.Namespace) -> int:
    return not_built("stack")
