"""A WCS that no star checks, against the image structure (msgr registration, session 22).

Starless narrow fields of the sample pair (ratio 3), the wide header made wrong by moving
CRPIX and turning the CD matrix, or by scaling its CD matrix (a wrong pixel scale; the cases
of ``tests/test_registration_wcs_check.py``).
Per case: what the WCS alone gives (the map error over a grid, in narrow px) and what
``register_wide_to_narrow`` gives now (method, median / max error, the fallback's seconds).

    python benchmarks/bench_msgr_wcs_check.py [--seeds 1 2 3 4 5 6 7 8] [--big] [--scales]

``--big`` adds seed 1 at 600x800 and 1200x1600 (right, 45 px off, turned 3 deg; about
15 s on a 2-core machine). docs/msgr.md ("A WCS that no star checks") has the tables.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_registration_wcs_check import (
    SHAPE,
    WRONG,
    WRONG_SCALES,
    _errors_px,
    _headers,
    _scaled_headers,
    _starless,
)

from napari_nsg.core.registration import RegistrationError, register_wide_to_narrow
from napari_nsg.core.registration.wcs import register_by_wcs

#: A wrong WCS for the seeds WRONG does not list: (wide px offset, degrees turned).
DEFAULT_WRONG = ((10.0, -6.0), 2.0)
#: The larger starless pairs of --big and their wrong headers.
BIG_SHAPES = ((600, 800), (1200, 1600))
BIG_CASES = (((0.0, 0.0), 0.0), ((15.0, 0.0), 0.0), ((0.0, 0.0), 3.0))
#: Spacing (narrow px) of the grid the map error is measured on for --big.
BIG_GRID = 32


def _after(pair, nh, wh, errors) -> str:
    """What the registration does now with headers ``nh``, ``wh``."""
    try:
        reg = register_wide_to_narrow(pair.narrow, pair.wide, narrow_wcs=nh, wide_wcs=wh)
    except RegistrationError as exc:
        return f"refused ({str(exc)[-100:]})"
    e = errors(reg.transform)
    return (f"{reg.method}, {np.median(e):.3f} / {e.max():.3f} px, "
            f"fallback {reg.timings['fallback']:.2f} s")


def _before_after(pair, nh, wh) -> str:
    """Two table cells: the map error of the WCS alone (median / max) and what the
    registration does now, for a 300x400 starless pair and headers ``nh``, ``wh``."""
    before = _errors_px(register_by_wcs(nh, wh, SHAPE).transform, pair)
    after = _after(pair, nh, wh, functools.partial(_errors_px, pair=pair))
    return f"{np.median(before):.2f} / {before.max():.2f} px | {after}"


def seeds_table(seeds) -> None:
    print("| seed | wide WCS | the WCS alone: median / max | now |")
    print("|---|---|---|---|")
    for seed in seeds:
        pair = _starless(seed)
        for label, (off, turn) in (("right", ((0, 0), 0.0)),
                                   ("wrong", WRONG.get(seed, DEFAULT_WRONG))):
            print(f"| {seed} | {label} {off} {turn} deg | "
                  f"{_before_after(pair, *_headers(pair, off, turn))} |", flush=True)


def scales_table() -> None:
    """The wrong pixel scales of the tests (and 1.03 on three seeds: 4-7 px off)."""
    print("| seed | wide pixel scale x | the WCS alone: median / max | now | seconds |")
    print("|---|---|---|---|---|")
    for seed, factor in [*WRONG_SCALES, (1, 1.03), (2, 1.03), (4, 1.03)]:
        pair = _starless(seed)
        t0 = time.perf_counter()
        cells = _before_after(pair, *_scaled_headers(pair, factor))
        print(f"| {seed} | {factor} | {cells} | {time.perf_counter() - t0:.1f} |", flush=True)


def big_table() -> None:
    from napari_nsg.synthetic import sample_pair

    print("| narrow | wide WCS | now | seconds |")
    print("|---|---|---|---|")
    for shape in BIG_SHAPES:
        pair = sample_pair(seed=1, narrow_shape=shape, star_density=0.0, n_bright=0)
        yy, xx = np.mgrid[0:shape[0]:BIG_GRID, 0:shape[1]:BIG_GRID]
        xy = np.column_stack([xx.ravel(), yy.ravel()]).astype(float)
        true = np.column_stack(pair.transform.narrow_to_wide(xy[:, 0], xy[:, 1]))

        def errors(transform, true=true, xy=xy, pair=pair):
            return np.hypot(*(transform(xy) - true).T) * pair.scale_ratio

        for off, turn in BIG_CASES:
            nh, wh = _headers(pair, off, turn)
            t0 = time.perf_counter()
            after = _after(pair, nh, wh, errors)
            print(f"| {shape[0]}x{shape[1]} | {off} {turn} deg | {after} | "
                  f"{time.perf_counter() - t0:.1f} |", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 9)))
    ap.add_argument("--big", action="store_true", help="also the 600x800 and 1200x1600 pairs")
    ap.add_argument("--scales", action="store_true", help="also wide WCS of a wrong pixel scale")
    args = ap.parse_args(argv)
    seeds_table(args.seeds)
    if args.scales:
        scales_table()
    if args.big:
        big_table()


if __name__ == "__main__":
    main()
