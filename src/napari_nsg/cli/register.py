"""``napari-nsg register``: register frames onto a reference."""

from __future__ import annotations

import argparse

from ._common import add_progress_flag, not_built


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "register",
        help="register frames onto a reference frame",
        description="Align frames onto the pixel grid of a reference by star matching.",
    )
    p.add_argument("frames", nargs="+", metavar="FRAME", help="frames to register")
    p.add_argument("--reference", required=True, metavar="REF", help="the reference frame")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_progress_flag(p)
    return p


def run(args: argparse.Namespace) -> int:
    return not_built("register")
