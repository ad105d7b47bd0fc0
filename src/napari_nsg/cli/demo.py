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
        description="Simulate sub-frames with known truth in DIR/frames, dither copies of them "
        "(DIR/dithered) and register those back (DIR/registered), rank them, normalize them to "
        "the top-ranked one in DIR/nsg, stack them into DIR/stack.fits, then simulate a "
        "wide/narrow pair and run MSGR on it in DIR/msgr, comparing every result with the truth.",
    )
    p.add_argument("dir", nargs="?", default="napari-nsg-demo", metavar="DIR",
                   help="folder to write to (default ./napari-nsg-demo)")
    p.add_argument("--frames", type=int, default=8, help="number of sub-frames (default 8)")
    p.add_argument("--size", type=int, default=512, help="frame size in px, 128-4096 (default 512)")
    p.add_argument("--seed", type=int, default=1, help="simulation seed, 0 or more (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--no-msgr", action="store_true", help="skip the MSGR part")
    return p


def _simulation(args) -> dict:
    """The simulator's arguments of the demo's sub-frames."""
    return dict(n_frames=args.frames, shape=(args.size, args.size), seed=args.seed, nebula=True,
                border=0.04 * args.size, star_density=5e-3,
                n_bright=max(10, args.size**2 // 6500), bright_flux_range=(1e3, 1.5e4))


def _simulate_frames(args, frames_dir: Path) -> list[Path]:
    from ..io import FrameError, OutputExistsError
    from ..synthetic import write_sequence

    try:
        return write_sequence(frames_dir, overwrite=args.overwrite, **_simulation(args))
    except OutputExistsError as exc:
        raise FrameError(exc.path, "demo data exists already (use --overwrite)") from None


def _normalize(args, paths: list[Path], frames_dir: Path, out_dir: Path, names=None):
    """Rank the frames, normalize them to the top-ranked one, compare with the truth.

    ``names`` maps each frame's file name to its simulated frame's (registered
    frames); returns the report."""
    from ..pipeline.normalize import normalize_frames
    from ..pipeline.rank import rank_frames
    from ..pipeline.report import format_table
    from ..synthetic import read_truth

    t0 = time.perf_counter()
    ranking = rank_frames(paths)
    reference = Path(ranking.reference)
    truth = read_truth(frames_dir)
    names = names or {p.name: p.name for p in paths}
    by_file = {f["file"]: f for f in truth["frames"]}
    true_scale = {k: np.asarray(by_file[v]["scale"], float) for k, v in names.items()}
    noise = {k: np.asarray(by_file[v]["noise_sigma"], float) for k, v in names.items()}
    true_best = max(true_scale, key=lambda k: float(np.mean((1 / true_scale[k] / noise[k]) ** 2)))
    t1 = time.perf_counter()
    print(f"\n[3] rank ({t1 - t0:.1f} s): recommended reference {reference.name} "
          f"(by the truth, the highest-SNR frame is {true_best})")
    print("    " + ", ".join(f"{Path(r.file).name} {r.rating:.2f}" for r in ranking.frames if r.ok))
    result = normalize_frames(paths, reference, out_dir, gradient_images=True,
                              overwrite=args.overwrite)
    t2 = time.perf_counter()
    # the truth's scales are relative to the simulated reference; re-express them
    ref_scale = true_scale[reference.name]
    relative = {k: list(v / ref_scale) for k, v in true_scale.items()}
    print(f"\n[4] normalize to {reference.name} ({t2 - t1:.1f} s): outputs, gradient and "
          f"curvature images, nsg_results.json/.csv in {out_dir}")
    print(format_table(result.rows, truth=relative))
    errors = sorted(abs(s / t - 1) for r in result.rows if r.ok and not r.is_reference
                    for s, t in zip(r.scale, relative[Path(r.file).name]))
    if errors:
        print(f"scale error vs truth: median {100 * errors[len(errors) // 2]:.2f} %, "
              f"max {100 * errors[-1]:.2f} %")
    for row in result.failed:
        error(f"{row.file}: {row.error}")
    return result


#: Dithers of the demo: shifts up to this fraction of the frame size, rotations up to
#: this many degrees.
DEMO_SHIFT = 0.03
DEMO_ROTATION = 2.0


def _dither_matrix(rng, size: int, flip: bool) -> np.ndarray:
    """Dithered pixel -> simulated pixel: a rotation about the centre, a shift."""
    a = np.radians(rng.uniform(-DEMO_ROTATION, DEMO_ROTATION) + (180.0 if flip else 0.0))
    c = (size - 1) / 2.0
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    m = np.eye(3)
    m[:2, :2] = rot
    m[:2, 2] = c - rot @ [c, c] + rng.uniform(-1, 1, 2) * DEMO_SHIFT * size
    return m


def _register(args, paths: list[Path], root: Path) -> tuple[list[Path], dict]:
    """Dither copies of the frames (the last turned 180 degrees), register them back."""
    from astropy.io import fits

    from ..core.registration.frames import resample
    from ..core.registration.transforms import WideTransform, apply_homography
    from ..io import read_frame, write_frame
    from ..pipeline.register import register_frames

    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    dith_dir = root / "dithered"
    dith_dir.mkdir(parents=True, exist_ok=True)
    matrices, dithered = {}, []
    for k, p in enumerate(paths):
        f = read_frame(p)
        m = np.eye(3) if k == 0 else _dither_matrix(rng, args.size, k == len(paths) - 1)
        data = f.data if k == 0 else resample(f.data, WideTransform(homography=m),
                                              f.image_shape)[0]
        dithered.append(write_frame(dith_dir / p.name, data, f.header, overwrite=args.overwrite))
        matrices[p.name] = m
    result = register_frames(dithered, dithered[0], root / "registered",
                             overwrite=args.overwrite)
    grid = np.stack(np.meshgrid(*[np.linspace(0.1 * args.size, 0.9 * args.size, 9)] * 2),
                    -1).reshape(-1, 2)
    print(f"\n[2] register ({time.perf_counter() - t0:.1f} s): {len(paths)} dithered copies in "
          f"{dith_dir} (shifts up to {DEMO_SHIFT * args.size:.0f} px, rotations up to "
          f"{DEMO_ROTATION:g} deg, the last turned 180 deg), registered onto "
          f"{dithered[0].name} in {root / 'registered'}")
    names = {}
    for row in result.rows:
        name = Path(row.file).name
        if not row.ok:
            error(f"{row.file}: {row.error}")
            continue
        h = fits.getheader(row.output)
        if "REGH11" in h:
            hom = np.array([[h[f"REGH{i}{j}"] for j in (1, 2, 3)] for i in (1, 2, 3)])
            err = apply_homography(hom, grid) - apply_homography(np.linalg.inv(matrices[name]),
                                                                 grid)
            print(f"    {name}: rotation {row.rotation_deg:8.2f} deg, residual "
                  f"{row.residual_px:.3f} px over {row.n_pairs} stars; transform error vs truth "
                  f"{np.sqrt(np.mean(np.sum(err**2, axis=1))):.3f} px RMS")
        names[Path(row.output).name] = name
    return [Path(r.output) for r in result.rows if r.ok], names


def _stack(args, result, names: dict, root: Path) -> int:
    """Stack the normalized frames; compare with the reference's noise-free image."""
    from ..pipeline.stack import stack_frames
    from ..synthetic import read_truth, simulate_sequence

    t0 = time.perf_counter()
    outputs = [r.output for r in result.rows if r.ok and not r.rejected]
    stacked = stack_frames(outputs, root / "stack.fits", overwrite=args.overwrite)
    ref_name = names[Path(result.reference).name]
    truth = read_truth(root / "frames")
    k = [f["file"] for f in truth["frames"]].index(ref_name)
    ideal = simulate_sequence(**_simulation(args)).noise_free(k)
    full = stacked.n_used == len(outputs)
    resid = (stacked.stack - ideal)[full]
    sigma_ref = float(np.mean(truth["frames"][k]["noise_sigma"]))
    robust = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
    print(f"\n[5] stack ({time.perf_counter() - t0:.1f} s): {len(outputs)} normalized frames, "
          f"rejection {stacked.rejection.method}, in {root / 'stack.fits'}")
    print(f"    against the reference's noise-free image ({ref_name}): median offset "
          f"{np.median(resid):.2f} ADU, noise {robust:.2f} ADU (one frame {sigma_ref:.2f}, "
          f"ideal for {len(outputs)} equal frames {sigma_ref / np.sqrt(len(outputs)):.2f})")
    return len(stacked.failed)


def _msgr(args, msgr_dir: Path) -> None:
    """Simulate a wide/narrow pair, run MSGR on the files, score the result on the truth."""
    from ..io import FrameError, OutputExistsError, read_frame, write_frame
    from ..pipeline.msgr import run_msgr
    from ..synthetic import sample_pair
    from ..synthetic.scoring import nebula_correlation, residual_fraction

    t0 = time.perf_counter()
    pair = sample_pair(args.seed)  # the napari sample pair, with the demo's seed
    msgr_dir.mkdir(parents=True, exist_ok=True)
    narrow, wide = msgr_dir / "narrow.fits", msgr_dir / "wide.fits"
    try:
        write_frame(narrow, pair.narrow, pair.narrow_header, overwrite=args.overwrite)
        write_frame(wide, pair.wide, pair.wide_header, overwrite=args.overwrite)
    except OutputExistsError as exc:
        raise FrameError(exc.path, "demo data exists already (use --overwrite)") from None
    run = run_msgr(narrow, wide, msgr_dir / "narrow_msgr.fits", layers="auto",
                   save_model=msgr_dir / "model.fits", overwrite=args.overwrite)
    layers = run.result.n_layers
    t1 = time.perf_counter()
    reg = run.result.registration
    corrected = read_frame(run.outputs["corrected"]).data
    print(f"\n[6] msgr ({t1 - t0:.1f} s): a 800x600 narrow field and a wide field with 3x larger "
          f"pixels, rotated 25 deg, in {msgr_dir}")
    print(f"    registration: ratio {reg.scale_ratio:.3f} (true {pair.scale_ratio:.3f}), "
          f"rotation {reg.rotation_deg:.2f} deg (true {pair.rotation_deg:.2f}), "
          f"residual {reg.residual_px:.2f} px over {reg.n_pairs} stars")
    print(f"    gradient left (fraction of its peak-to-peak, {layers} layers): "
          f"{residual_fraction(pair, pair.narrow):.2f} before, "
          f"{residual_fraction(pair, corrected):.3f} after; nebula correlation "
          f"{nebula_correlation(pair, pair.narrow):.3f} -> {nebula_correlation(pair, corrected):.4f}")


#: Frame sizes the demo accepts (px): smaller frames hold too few stars to register, larger
#: ones take minutes and gigabytes (--size 100000 asked numpy for 37 GiB and ended in a
#: traceback).
DEMO_MIN_SIZE = 128
DEMO_MAX_SIZE = 4096


def run(args: argparse.Namespace) -> int:
    from ..synthetic import read_truth

    if args.frames < 2:
        error(f"--frames must be at least 2, got {args.frames}")
        return EXIT_BAD_INPUT
    if not DEMO_MIN_SIZE <= args.size <= DEMO_MAX_SIZE:
        error(f"--size must be {DEMO_MIN_SIZE} to {DEMO_MAX_SIZE} px, got {args.size}")
        return EXIT_BAD_INPUT
    if args.seed < 0:
        error(f"--seed must be 0 or more, got {args.seed}")
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
    registered, names = _register(args, paths, root)
    result = _normalize(args, registered, frames_dir, root / "nsg", names)
    n_failed = len(result.failed)
    n_failed += _stack(args, result, names, root)
    if not args.no_msgr:
        _msgr(args, root / "msgr")
    sys.stdout.flush()
    return EXIT_SOME_FAILED if n_failed else EXIT_OK
