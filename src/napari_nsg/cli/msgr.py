"""``napari-nsg msgr``: Multiscale Gradient Removal of a narrow image with a wide one."""

from __future__ import annotations

import argparse

from ._common import add_progress_flag, not_built


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "msgr",
        help="remove the gradient of a narrow-field image using a wide-field image",
        description="Register the wide image onto the narrow one, keep the large scales of "
        "both (multiscale median transform), fit the wide to the narrow, build a gradient "
        "model and remove it from the narrow image.",
    )
    p.add_argument("narrow", metavar="NARROW", help="the narrow-field image to correct")
    p.add_argument("wide", metavar="WIDE", help="the wide-field image of the same sky")
    p.add_argument("--out", required=True, metavar="FILE", help="corrected image (FITS)")
    p.add_argument("--layers", type=int, default=8,
                   help="multiscale median layers removed (default 8: keeps scales > 256 px)")
    p.add_argument("--mode", choices=("multiplicative", "additive"), default="multiplicative",
                   help="how the model is removed (default multiplicative, as the guide)")
    p.add_argument("--remove-stars", action="store_true",
                   help="mask and fill stars in both images before the transform")
    p.add_argument("--save-model", metavar="F", help="also write the gradient model")
    p.add_argument("--save-registered", metavar="F",
                   help="also write the wide image registered onto the narrow grid")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_progress_flag(p)
    return p


def run(args: argparse.Namespace) -> int:
    return not_built("msgr")
