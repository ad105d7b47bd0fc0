"""Evidence for MSGR's automatic layer count (and for flattening the wide image).

Simulates many narrow/wide pairs with :func:`napari_nsg.synthetic.simulate_pair`
(several seeds; narrow sizes 800x600 as ``napari-nsg demo``, 512x323 as M67 and
1500x1000; scale ratios 1.5, 3 and 6; a compact or a field-filling nebula; the
wide image's own linear gradient 0.5-2 % of its sky; a faint nebula too, where
the wide's gradient dominates its large scales), registers each pair once (on
the stars; on the simulator's true geometry where the stars do not register:
the small and ratio-6 fields)
and runs :func:`napari_nsg.core.msgr.msgr` with every layer count N the size
allows, without and with ``flatten_wide``. Prints, per group (size, ratio) and
over all, the median and worst "gradient left" (peak-to-peak of the smoothed
residual gradient over that of the true gradient, 0 = perfect, 1 = untouched;
:func:`napari_nsg.synthetic.scoring.residual_fraction`) for each N, the N chosen
by :func:`napari_nsg.core.msgr.auto_layers`, and what it leaves. Refused fits
count as "refused" (not as a number). Usage::

    python benchmarks/bench_msgr_layers.py [--seeds 2] [--quick] [--no-flatten]

Last run (2 seeds, --quick, ~17 min on 2 shared cores; the full table is in
docs/msgr.md): ratios 1.5 and 3 leave the least gradient with 3-4 layers
(0.017-0.038 median; 7 layers 0.055-0.167), ratio 6 with 5-6 (0.058-0.151;
3 layers up to 0.63); 1500x1000 at ratio 3 is flat in N (0.050-0.060).
Flattening with a plane helps under a faint sky (0.035 -> 0.015) and hurts
with nebulae in the wide field (0.033 -> 0.375 with a field-filling one).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict

import numpy as np

SIZES = ((600, 800), (323, 512), (1000, 1500))
RATIOS = (1.5, 3.0, 6.0)
#: (label, nebula_scales as fractions of the narrow's short side, amplitude ADU)
NEBULAE = (("compact", (0.03, 0.5), 300.0), ("filling", (0.4, 2.0), 150.0),
           ("faint", (0.03, 0.5), 10.0))
#: Peak-to-peak of the narrow gradient (ADU), the same for every case.
NARROW_GRADIENT = 150.0
NARROW_SKY = 500.0
WIDE_GRADIENTS = (0.005, 0.02)
LAYERS = range(3, 8)


def cases(n_seeds: int, quick: bool):
    """Yield (group, kwargs for simulate_pair) for every simulated case."""
    sizes = SIZES[:2] if quick else SIZES
    for shape in sizes:
        ratios = (3.0,) if shape == SIZES[2] else RATIOS
        for ratio in ratios:
            for label, scales, amp in NEBULAE:
                for seed in range(n_seeds):
                    rng = np.random.default_rng(1000 + seed)
                    frac = WIDE_GRADIENTS[seed % 2] if n_seeds > 1 else rng.uniform(0.005, 0.02)
                    kw = {"narrow_shape": shape, "scale_ratio": ratio, "seed": seed, "gain": 25.0,
                              "rotation_deg": float(rng.uniform(-30, 30)),
                              "shift": (float(rng.uniform(-5, 5)), float(rng.uniform(-5, 5))),
                              "nebula_scales": scales, "nebula_amplitude": amp,
                              "narrow_sky": NARROW_SKY, "narrow_gradient": NARROW_GRADIENT,
                              "wide_gradient": frac * NARROW_SKY * ratio**2}
                    yield (f"{shape[1]}x{shape[0]}", ratio, label), kw


def registration(pair, ratio: float):
    """Star registration; when it fails (small or ratio-6 fields), the simulator's true geometry."""
    from napari_nsg.core.registration import (
        Registration,
        RegistrationError,
        apply_registration,
        register_wide_to_narrow,
    )
    from napari_nsg.core.registration.transforms import WideTransform, fit_homography

    try:
        return register_wide_to_narrow(pair.narrow, pair.wide, scale_hint=ratio), "stars"
    except RegistrationError:
        pass
    h, w = pair.narrow.shape[-2:]
    yy, xx = np.mgrid[0:h:16, 0:w:16].astype(float)
    wx, wy = pair.transform.narrow_to_wide(xx.ravel(), yy.ravel())
    tf = WideTransform(fit_homography(np.column_stack([xx.ravel(), yy.ravel()]),
                                      np.column_stack([wx, wy])))
    registered, coverage = apply_registration(pair.wide, tf, (h, w))
    none = np.zeros((0, 2))
    reg = Registration(transform=tf, scale_ratio=ratio, rotation_deg=pair.rotation_deg,
                       flip=False, residual_px=0.0, residual_homography_px=0.0, n_pairs=0,
                       narrow_xy=none, wide_xy=none, n_stars_narrow=0, n_stars_wide=0,
                       distortion=False, scale_hint=None, scale_range=(1.5, 6.0),
                       registered=registered, coverage=coverage,
                       coverage_fraction=float(coverage.mean()))
    return reg, "truth"


def evaluate(kw: dict, flatten_options) -> dict:
    """Gradient left for every N (and flatten option) on one simulated pair."""
    from napari_nsg.core.mmt import min_size_for_layers
    from napari_nsg.core.msgr import MsgrError, auto_layers, msgr
    from napari_nsg.synthetic import simulate_pair
    from napari_nsg.synthetic.scoring import residual_fraction

    pair = simulate_pair(**kw)
    reg, how = registration(pair, kw["scale_ratio"])
    short = min(pair.narrow.shape[-2:])
    auto = auto_layers(pair.narrow.shape, reg.scale_ratio)[0]
    out = {"auto": auto, "registration": how}
    for flatten in flatten_options:
        for n in LAYERS:
            if min_size_for_layers(n + 1) > short:
                break
            if flatten and n != auto:
                continue  # flattening is measured at the automatic N only
            try:
                res = msgr(pair.narrow, pair.wide, n_layers=n, registration=reg,
                           flatten_wide=flatten)
                out[(flatten, n)] = residual_fraction(pair, res.corrected)
            except MsgrError:
                out[(flatten, n)] = None
    return out


def _fmt(values) -> str:
    ok = [v for v in values if v is not None]
    refused = len(values) - len(ok)
    if not ok:
        return "refused" if refused else "-"
    text = f"{np.median(ok):.3f}/{max(ok):.3f}"
    return text + (f" ({refused}r)" if refused else "")


def table(rows: list, flatten) -> list[str]:
    """Markdown table: per group, median/worst gradient left per N, and auto N."""
    groups = defaultdict(list)
    for group, res in rows:
        groups[group].append(res)
        groups[("all", "", "")].append(res)
    ns = LAYERS
    lines = ["| size | ratio | nebula | " + " | ".join(f"N={n}" for n in ns) + " | auto N | auto |",
             "|---|---|---|" + "---|" * (len(ns) + 2)]
    for group, results in groups.items():
        cells = [_fmt([r[(flatten, n)] for r in results if (flatten, n) in r]) for n in ns]
        autos = sorted({r["auto"] for r in results})
        auto_vals = [r.get((flatten, r["auto"])) for r in results]
        lines.append(f"| {group[0]} | {group[1]} | {group[2]} | " + " | ".join(cells)
                     + f" | {','.join(map(str, autos))} | {_fmt(auto_vals)} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="skip the 1500x1000 cases")
    ap.add_argument("--no-flatten", action="store_true", help="skip the flatten-wide runs")
    args = ap.parse_args(argv)
    flatten_options = (None,) if args.no_flatten else (None, "plane")
    rows = []
    t0 = time.perf_counter()
    for group, kw in cases(args.seeds, args.quick):
        try:
            rows.append((group, evaluate(kw, flatten_options)))
        except Exception as exc:  # noqa: BLE001 - a benchmark reports and goes on
            print(f"{group} seed {kw['seed']}: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(f"{group} seed {kw['seed']} done ({time.perf_counter() - t0:.0f} s, "
              f"registration: {rows[-1][1]['registration'] if rows else '?'})", file=sys.stderr)
    print("gradient left, median/worst over seeds and wide gradients "
          "(N = layers removed; 'r' = fits refused)\n")
    for flatten in flatten_options:
        print(f"flatten wide: {flatten or 'no'}\n")
        print("\n".join(table(rows, flatten)))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
