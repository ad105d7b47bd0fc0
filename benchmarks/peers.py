"""napari-nsg side by side with Siril, GraXpert and photutils, on the same inputs.

Two jobs, each scored on the simulator's truth (and, for normalization, on real frames):

* **normalization to a reference** - ours (NSG: ``prepare_reference`` + ``normalize_frame``)
  against Siril 1.0.6 ``linear_match`` (all pixels), Siril's stacking normalization
  (``addscale``, ``mulscale``; coefficients recovered by stacking the reference with each frame),
  photutils Background2D + the median flux ratio of the brightest stars, and the global median
  ratio; on simulated sequences (median scale error, residual gradient in noise sigmas, as
  docs/nsg.md) and on the real ``wasp12b_calibrated`` frames (scale against photutils star
  fluxes, background difference to the reference before and after);
* **gradient removal from one narrow image** - ours (MSGR with the wide image) against Siril
  ``seqsubsky`` (polynomial degree 1-4), GraXpert's interpolation methods (RBF, Kriging, Splines)
  and photutils Background2D (boxes 64, 128, 256), on simulated wide/narrow pairs at four nebula
  sizes, compact to field-filling (gradient left as a fraction of the original, nebula kept).

Every tool gets the same 16-bit-quantized pixels (Siril reads 16-bit FITS in ADU). Times are
each tool's own: ours and photutils in this process from arrays; Siril's as it logs them
(sequence operations include reading and writing their FITS; ``linear_match`` and the stacking
normalization are the difference to the same script without them); GraXpert's inside its
process (background point selection + extraction). Nothing is installed: missing peers are
listed with the command that installs them, and their rows are left out.

Usage::

    python benchmarks/peers.py                      # test sizes, ~3-5 min on 2 busy cores
    python benchmarks/peers.py --graxpert-python /opt/graxpert-venv/bin/python --plots docs/images
    python benchmarks/peers.py --big                # also at 6000x4000 (10-15 min more, most
                                                    # of it scoring against the full-size truth)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _peers import gradient, graxpert_peer, normalization, report, siril

SEQUENCE_SHAPE = (640, 896)
SEQUENCE_FRAMES = 6
NORMALIZE_SEEDS = (101, 102, 103)
PAIR_SHAPE = (600, 800)
PAIR_SEEDS = (11, 12)
BIG_SHAPE = (4000, 6000)
BIG_SEQUENCE_FRAMES = 3
BIG_SIZE = "field-filling"


def _peers(args) -> tuple[str | None, str | None]:
    """Find the peers, print their versions or how to install them."""
    import photutils

    exe = siril.find()
    print("## Peers\n")
    print(f"- photutils {photutils.__version__} (in this environment)")
    print(f"- {siril.version(exe)} ({exe})" if exe else f"- Siril: not found. {siril.INSTALL_HINT}")
    python, text = graxpert_peer.check(args.graxpert_python)
    print(f"- {text} ({python})" if python else
          f"- GraXpert: not used ({text}). {graxpert_peer.INSTALL_HINT}")
    print(f"- CPUs: {os.cpu_count()}; load average {os.getloadavg()[0]:.1f} at the start\n")
    return exe, python


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _normalization(shape, seeds, frames, exe, real: bool) -> dict:
    print(f"## Normalization, simulated: {len(seeds)} sequence(s) of {frames} frames "
          f"{shape[1]}x{shape[0]} (reference + {frames - 1})\n")
    sim = normalization.bench_simulated(shape, seeds, frames, exe, _progress)
    print(report.normalization_table(sim, normalization.OURS) + "\n")
    if real:
        folder = normalization.tests_module("conftest").REAL_DATA / "wasp12b_calibrated"
        table = normalization.bench_real(folder, exe, _progress)
        if table:
            print("## Normalization, real: wasp12b_calibrated (reference wasp12b_300 + 7 frames, "
                  "1020x912)\n")
            print(report.real_table(table, normalization.OURS) + "\n")
    return sim


def _gradient(shape, seeds, sizes, exe, python) -> dict:
    print(f"## Gradient removal: narrow {shape[1]}x{shape[0]}, wide at {gradient.RATIO:g}x the "
          f"pixel scale, seeds {', '.join(map(str, seeds))}; medians; left = gradient left "
          f"(1 = untouched, 0 = removed), kept = nebula kept (1 = kept, 0 = removed)\n")
    tables = gradient.bench(shape, seeds, sizes, exe, python, _progress)
    print(report.gradient_table(tables, gradient.OURS) + "\n")
    return tables


def _plots(folder: Path, norm, grad) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    report.plot_gradient(grad, "left", "gradient left (fraction of the original)",
                         folder / "bench_gradient_left.png", ideal=0.0, ylim=(0.0, 2.5))
    report.plot_gradient(grad, "kept", "nebula kept (1 = kept)",
                         folder / "bench_nebula_kept.png", ideal=1.0, ylim=(-0.6, 1.6))
    report.plot_normalization(norm, folder / "bench_normalization.png")
    _progress(f"plots written to {folder}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graxpert-python", help="Python of an environment where graxpert imports")
    ap.add_argument("--big", action="store_true",
                    help=f"also run both jobs at {BIG_SHAPE[1]}x{BIG_SHAPE[0]} (times; several minutes)")
    ap.add_argument("--big-only", action="store_true", help="only the 6000x4000 runs")
    ap.add_argument("--no-real", action="store_true", help="skip the wasp12b_calibrated frames")
    ap.add_argument("--plots", type=Path, help="write PNG plots (matplotlib, Agg) to this folder")
    args = ap.parse_args(argv)
    exe, python = _peers(args)
    if not args.big_only:
        norm = _normalization(SEQUENCE_SHAPE, NORMALIZE_SEEDS, SEQUENCE_FRAMES, exe, not args.no_real)
        grad = _gradient(PAIR_SHAPE, PAIR_SEEDS, list(gradient.NEBULA_SIZES), exe, python)
        if args.plots:
            _plots(args.plots, norm, grad)
    if args.big or args.big_only:
        print(f"# At {BIG_SHAPE[1]}x{BIG_SHAPE[0]}\n")
        _normalization(BIG_SHAPE, NORMALIZE_SEEDS[:1], BIG_SEQUENCE_FRAMES, exe, False)
        _gradient(BIG_SHAPE, PAIR_SEEDS[:1], [BIG_SIZE], exe, python)
    print("(measured on this machine; times are medians over the cases, or of 3 interleaved "
          "runs on the real frames, single runs at 6000x4000; a busy machine moves them: "
          "compare the ratios)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
