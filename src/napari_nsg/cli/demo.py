"""``napari-nsg demo``: simulate a small data set and run the pipeline on it."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ..io import remove_partials
from ._common import EXIT_BAD_INPUT, EXIT_OK, EXIT_SOME_FAILED, error


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo",
        help="simulate a small data set and run the whole pipeline on it",
        description="Simulate sub-frames with known truth in DIR/frames, rank them, normalize "
        "them to the top-ranked one in DIR/nsg, then simulate a wide/narrow pair and run MSGR "
        "on it in DIR/msgr, comparing every result with the truth.",
    )
    p.add_argument("dir", nargs="?", default="napari-nsg-demo", metavar="DIR",
                   help="folder to write to (default ./napari-nsg-demo)")
    p.add_argument("--frames", type=int, default=8, help="number of sub-frames (default 8)")
    p.add_argument("--size", type=int, default=512, help="frame size in px (default 512)")
    p.add_argument("--seed", type=int, default=1, help="simulation seed (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--no-msgr", action="store_true", help="skip the MSGR part")
    return p


def _simulate_frames(args, frames_dir: Path) -> list[Path]:
    from ..io import FrameError, OutputExistsError
    from ..synthetic import write_sequence

    try:
        return write_sequence(frames_dir, args.frames, (args.size, args.size), seed=args.seed,
                              nebula=True, border=0.04 * args.size, overwrite=args.overwrite,
                              star_density=5e-3, n_bright=max(10, args.size**2 // 6500),
                              bright_flux_range=(1e3, 1.5e4))
    except OutputExistsError as exc:
        raise FrameError(exc.path, "demo data exists already (use --overwrite)") from None


def _normalize(args, paths: list[Path], frames_dir: Path, out_dir: Path) -> int:
    """Rank the frames, normalize them to the top-ranked one, compare with the truth."""
    from ..pipeline.normalize import normalize_frames
    from ..pipeline.rank import rank_frames
    from ..pipeline.report import format_table
    from ..synthetic import read_truth

    t0 = time.perf_counter()
    ranking = rank_frames(paths)
    reference = Path(ranking.reference)
    truth = read_truth(frames_dir)
    true_scale = {f["file"]: np.asarray(f["scale"], float) for f in truth["frames"]}
    noise = {f["file"]: np.asarray(f["noise_sigma"], float) for f in truth["frames"]}
    true_best = max(true_scale, key=lambda k: float(np.mean((1 / true_scale[k] / noise[k]) ** 2)))
    t1 = time.perf_counter()
    print(f"\n[2] rank ({t1 - t0:.1f} s): recommended reference {reference.name} "
          f"(by the truth, the highest-SNR frame is {true_best})")
    print("    " + ", ".join(f"{Path(r.file).name} {r.rating:.2f}" for r in ranking.frames if r.ok))
    result = normalize_frames(paths, reference, out_dir, gradient_images=True,
                              overwrite=args.overwrite)
    t2 = time.perf_counter()
    # the truth's scales are relative to the simulated reference; re-express them
    ref_scale = true_scale[reference.name]
    relative = {k: list(v / ref_scale) for k, v in true_scale.items()}
    print(f"\n[3] normalize to {reference.name} ({t2 - t1:.1f} s): outputs, gradient and "
          f"curvature images, nsg_results.json/.csv in {out_dir}")
    print(format_table(result.rows, truth=relative))
    errors = sorted(abs(s / t - 1) for r in result.rows if r.ok and not r.is_reference
                    for s, t in zip(r.scale, relative[Path(r.file).name]))
    if errors:
        print(f"scale error vs truth: median {100 * errors[len(errors) // 2]:.2f} %, "
              f"max {100 * errors[-1]:.2f} %")
    for row in result.failed:
        error(f"{row.file}: {row.error}")
    return len(result.failed)


def _msgr(args, msgr_dir: Path) -> None:
    """Simulate a wide/narrow pair, run MSGR on the files, score the result on the truth."""
    from ..core.msgr import suggest_layers
    from ..io import FrameError, OutputExistsError, read_frame, write_frame
    from ..pipeline.msgr import run_msgr
    from ..synthetic import simulate_pair
    from ..synthetic.scoring import nebula_correlation, residual_fraction

    t0 = time.perf_counter()
    pair = simulate_pair((600, 800), scale_ratio=3.0, rotation_deg=25.0, seed=args.seed,
                         gain=25.0, wide_gradient=0.01 * 500.0 * 9)
    msgr_dir.mkdir(parents=True, exist_ok=True)
    narrow, wide = msgr_dir / "narrow.fits", msgr_dir / "wide.fits"
    try:
        write_frame(narrow, pair.narrow, pair.narrow_header, overwrite=args.overwrite)
        write_frame(wide, pair.wide, pair.wide_header, overwrite=args.overwrite)
    except OutputExistsError as exc:
        raise FrameError(exc.path, "demo data exists already (use --overwrite)") from None
    layers = suggest_layers(pair.narrow.shape)
    run = run_msgr(narrow, wide, msgr_dir / "narrow_msgr.fits", layers=layers,
                   save_model=msgr_dir / "model.fits", overwrite=args.overwrite)
    t1 = time.perf_counter()
    reg = run.result.registration
    corrected = read_frame(run.outputs["corrected"]).data
    print(f"\n[4] msgr ({t1 - t0:.1f} s): a 800x600 narrow field and a wide field with 3x larger "
          f"pixels, rotated 25 deg, in {msgr_dir}")
    print(f"    registration: ratio {reg.scale_ratio:.3f} (true {pair.scale_ratio:.3f}), "
          f"rotation {reg.rotation_deg:.2f} deg (true {pair.rotation_deg:.2f}), "
          f"residual {reg.residual_px:.2f} px over {reg.n_pairs} stars")
    print(f"    gradient left (fraction of its peak-to-peak, {layers} layers): "
          f"{residual_fraction(pair, pair.narrow):.2f} before, "
          f"{residual_fraction(pair, corrected):.3f} after; nebula correlation "
          f"{nebula_correlation(pair, pair.narrow):.3f} -> {nebula_correlation(pair, corrected):.4f}")


def run(args: argparse.Namespace) -> int:
    from ..synthetic import read_truth

    if args.frames < 2:
        error(f"--frames must be at least 2, got {args.frames}")
        return EXIT_BAD_INPUT
    if args.size < 128:
        error(f"--size must be at least 128 px, got {args.size}")
        return EXIT_BAD_INPUT
    root = Path(args.dir)
    frames_dir = root / "frames"
    if frames_dir.is_dir():
        remove_partials(frames_dir)  # left by a demo that was killed while simulating
    t0 = time.perf_counter()
    paths = _simulate_frames(args, frames_dir)
    truth = read_truth(frames_dir)
    print(f"[1] simulated {len(paths)} sub-frames of {args.size}x{args.size} px with different "
          f"transparency, sky and gradients in {frames_dir} ({time.perf_counter() - t0:.1f} s; "
          f"truth in {frames_dir / 'truth.json'}, simulated reference "
          f"{truth['reference_file']})")
    n_failed = _normalize(args, paths, frames_dir, root / "nsg")
    if not args.no_msgr:
        _msgr(args, root / "msgr")
    sys.stdout.flush()
    return EXIT_SOME_FAILED if n_failed else EXIT_OK
