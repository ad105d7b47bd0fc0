"""``napari-nsg rank``: reference candidates, best first."""

from __future__ import annotations

import argparse

from ._common import add_progress_flag, not_built


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "rank",
        help="rank frames as reference candidates, best first",
        description="Measure every frame (background, gradients, noise, stars, and scale, "
        "transmission and weight against a provisional reference) and list the reference "
        "candidates best first.",
    )
    p.add_argument("frames", nargs="+", metavar="FRAME", help="registered sub-frames")
    p.add_argument("--json", metavar="F", help="also write the table as JSON to F")
    p.add_argument("--debayer", choices=("superpixel", "bilinear"),
                   help="debayer raw colour (BAYERPAT) frames first")
    add_progress_flag(p)
    return p


def run(args: argparse.Namespace) -> int:
    return not_built("rank")
