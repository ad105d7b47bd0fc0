"""``napari-nsg msgr``: Multiscale Gradient Removal of a narrow image with a wide one."""

from __future__ import annotations

import argparse

from ._common import add_progress_flag


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
    p.add_argument("--layers", type=_layers, default="auto", metavar="auto|N",
                   help="multiscale median layers removed (default auto: from the image size "
                   "and the scale ratio; N keeps scales above 2^N px)")
    p.add_argument("--mode", choices=("multiplicative", "additive"), default="multiplicative",
                   help="how the model is removed (default multiplicative, as the guide)")
    p.add_argument("--remove-stars", action="store_true",
                   help="mask and fill stars in both images before the transform")
    p.add_argument("--spline", type=_spline, default=-2.0, metavar="S|off",
                   help="last step: remove a smooth spline (smoothness S, NSG's scale; default "
                   "-2) of what the model left, measured in star-free boxes; off skips it")
    p.add_argument("--flatten-wide", nargs="?", const="plane", default=None,
                   choices=("plane", "quadratic"),
                   help="first remove the wide image's own gradient: a plane (default) or a "
                   "quadratic surface fitted over its whole field, stars and nebulae clipped")
    p.add_argument("--save-model", metavar="F", help="also write the gradient model")
    p.add_argument("--save-registered", metavar="F",
                   help="also write the wide image registered onto the narrow grid")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_progress_flag(p)
    return p


def _layers(text: str):
    """``auto`` or a whole number."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a whole number, got {text!r}") \
            from None


def _spline(text: str):
    """``off`` or a smoothness (log10, -4..4)."""
    if text == "off":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'off' or a number, got {text!r}") from None
    if not -4.0 <= value <= 4.0:
        raise argparse.ArgumentTypeError(f"the spline smoothness must be within -4..4, got {value}")
    return value


def _format_summary(run) -> list[str]:
    res = run.result
    reg = res.registration
    lines = [
        f"layers: {res.n_layers} ({res.layers_reason})"
        + (f"; wide flattened ({res.flatten})" if res.flatten else ""),
        f"registration: scale ratio {reg.scale_ratio:.4f} (narrow px per wide px), rotation "
        f"{reg.rotation_deg:.3f} deg, {'mirrored, ' if reg.flip else ''}residual "
        f"{reg.residual_px:.3f} px over {reg.n_pairs} stars, coverage "
        f"{100 * (reg.coverage_fraction or 0):.1f}%"
        + (f" (headers: {run.scale_hint:.4f})" if run.scale_hint else "")
        + ("" if reg.method == "stars" else f"; registered by {reg.method_text()}"),
    ]
    for c, fit in enumerate(res.fits):
        label = f" ch {c}" if len(res.fits) > 1 else ""
        lines.append(f"linear fit ({res.fit_method}){label}: narrow = {fit.a:.6g} + "
                     f"{fit.b:.6g} x wide ({100 * fit.fraction_used:.1f}% of pixels used)")
    for c, (lo, hi) in enumerate(res.model.correction_range()):
        label = f" ch {c}" if len(res.fits) > 1 else ""
        if res.mode == "multiplicative":
            lines.append(f"gradient model ({res.n_layers}+1 layers, multiplicative){label}: "
                         f"factor {lo:.4f} .. {hi:.4f}")
        else:
            lines.append(f"gradient model ({res.n_layers}+1 layers, additive){label}: "
                         f"{lo:+.6g} .. {hi:+.6g}")
    if res.spline is not None:
        sp = res.spline
        lines.append(f"spline (smoothness {sp.smoothness:g}): {sp.n_boxes[0]} boxes of {sp.box} px, "
                     f"surface {float(sp.surface.max() - sp.surface.min()):.4g} ADU peak-to-peak")
    for kind, path in run.outputs.items():
        lines.append(f"wrote {kind}: {path}")
    return lines


def run(args: argparse.Namespace) -> int:
    from ..pipeline.msgr import run_msgr
    from ..pipeline.progress import TqdmProgress
    from ._common import EXIT_BAD_INPUT, EXIT_OK, error, existing_frames, output_name, warn

    if args.layers != "auto" and args.layers < 1:
        error(f"--layers must be at least 1, got {args.layers}")
        return EXIT_BAD_INPUT
    for value, flag in ((args.out, "--out"), (args.save_model, "--save-model"),
                        (args.save_registered, "--save-registered")):
        output_name(value, flag)
    narrow, wide = existing_frames([args.narrow, args.wide])
    with TqdmProgress("msgr", disable=True if args.quiet else None) as bar:
        result = run_msgr(
            narrow, wide, args.out, layers=args.layers, mode=args.mode,
            remove_stars=args.remove_stars, flatten_wide=args.flatten_wide, spline=args.spline,
            save_model=args.save_model,
            save_registered=args.save_registered, overwrite=args.overwrite, progress=bar,
        )
    for line in _format_summary(result):
        print(line)
    for text in result.warnings:
        warn(text)
    return EXIT_OK
