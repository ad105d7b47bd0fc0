"""``napari-nsg demo``: simulate a small data set and run the pipeline on it."""

from __future__ import annotations

import argparse

from ._common import not_built


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
    return not_built("demo")
