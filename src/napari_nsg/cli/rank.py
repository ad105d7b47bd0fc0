"""``napari-nsg rank``: reference candidates, best first."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..io import FrameError, atomic_write_text, remove_partials
from ..io.atomic import refuse_inputs
from ..pipeline._values import fmt_value
from ..pipeline.progress import TqdmProgress
from ..pipeline.rank import RankResult, rank_frames
from ._common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    add_progress_flag,
    error,
    frame_list,
    output_name,
    warn_frames,
)


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


def _mean(values) -> float:
    return float(np.mean(values)) if values else float("nan")


def format_table(result: RankResult) -> str:
    """The ranking as a text table, best first (per-channel values averaged)."""
    head = (f"{'rank':>4}  {'file':<28} {'rating':>6} {'weight':>6} {'transm':>6} "
            f"{'backgr':>8} {'grad%':>6} {'span':>7} {'lumpy':>6} {'noise':>7} "
            f"{'stars':>5} {'fwhm':>5} {'exp':>6} {'airm':>5}")
    lines = [head, "-" * len(head)]
    for f in result.frames:
        name = Path(f.file).name
        name = name if len(name) <= 28 else "..." + name[-25:]
        lines.append(
            f"{fmt_value(f.rank, 'd'):>4}  {name:<28} {fmt_value(f.rating, '.3f'):>6} "
            f"{fmt_value(f.weight, '.3f'):>6} {fmt_value(_mean(f.transmission), '.3f'):>6} "
            f"{fmt_value(_mean(f.background), '.1f'):>8} {fmt_value(f.gradient_percent, '.2f'):>6} "
            f"{fmt_value(_mean(f.background_span), '.1f'):>7} {fmt_value(_mean(f.complexity), '.2f'):>6} "
            f"{fmt_value(_mean(f.noise), '.2f'):>7} {fmt_value(f.n_stars, 'd'):>5} {fmt_value(f.fwhm, '.2f'):>5} "
            f"{fmt_value(f.exposure, 'g'):>6} {fmt_value(f.airmass, '.2f'):>5}"
        )
    return "\n".join(lines)


LEGEND = """\
rating: weight per unit exposure relative to the best frame (NSG's criterion; the list is
        sorted by it). weight, transm: NSG weight (SNR^2) and transmission relative to the best.
grad%:  NSG's corner-box gradient, hypot of its two diagonals, in % of the background.
span:   2-98 % range of the background map.  lumpy: RMS of that map about its best-fit plane."""


#: Keys of a rank report (:meth:`RankResult.to_dict`): an existing --json file that has them
#: is replaced, any other file is refused.
REPORT_KEYS = ("reference", "yardstick", "frames")
#: An existing file larger than this is not taken for a rank report (a frame, an archive).
MAX_REPORT_BYTES = 64 * 2**20


def _check_json(json_path: str | None, inputs: list[Path]) -> None:
    """Refuse up front a --json that is empty, a folder, one of the frames, in a missing
    folder, or an existing file that is not an earlier rank report (a frame or another
    JSON file not given as a frame was silently replaced)."""
    if output_name(json_path, "--json") is None:
        return
    refuse_inputs([json_path], inputs)
    path = Path(json_path)
    if path.is_dir():
        raise FrameError(json_path, "is a folder; --json takes a file name")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FrameError(json_path, f"its folder {folder} does not exist")
    if path.exists() and not _is_rank_report(path):
        raise FrameError(json_path, "exists and is not a rank report; --json replaces only "
                         "an earlier 'napari-nsg rank' JSON: choose another name")
    remove_partials(folder, keep=inputs)


def _is_rank_report(path: Path) -> bool:
    """Whether ``path`` is a JSON file written by ``rank --json``."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_REPORT_BYTES:
            return False
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and all(k in data for k in REPORT_KEYS)


def run(args: argparse.Namespace) -> int:
    paths = frame_list(args.frames)
    _check_json(args.json, paths)
    with TqdmProgress("ranking", disable=True if args.quiet else None) as bar:
        result = rank_frames(paths, debayer=args.debayer, progress=bar)
    print(format_table(result))
    print()
    print(LEGEND)
    print()
    print(f"recommended reference: {result.reference or 'none (no frame could be measured)'}")
    if result.reference_reason:
        print(f"  why: {result.reference_reason}")
    if result.yardstick and result.yardstick != result.reference:
        print(f"(scales measured against {Path(result.yardstick).name}: {result.yardstick_reason})")
    warn_frames((f.file, w) for f in result.frames for w in f.warnings)
    for f in result.failed:
        error(f"{f.file}: {f.error}")
    if args.json:
        atomic_write_text(args.json, json.dumps(result.to_dict(), indent=2) + "\n", overwrite=True)
    return EXIT_SOME_FAILED if result.failed else EXIT_OK
