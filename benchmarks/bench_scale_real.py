"""NSG scale on the real WASP-12b sequence, per photometry mode, against photutils.

The frames of ``<data>/wasp12b_calibrated`` are registered and measured as in
``tests/test_nsg_real.py`` (``tests/test_scale_precision.py:wasp_targets``): the
independent scale is the median ratio of photutils 30-px aperture fluxes of the
reference's bright stars; every ``photometry`` mode of :class:`NsgParameters` is
printed beside it, and with ``--kernel`` the kernel-fit scale
(:mod:`napari_nsg.core.nsg.kernel_scale`). The real tests require the default
and the empirical mode within 1 %. A ``*`` after the ``psf`` mode's scale: its
check refused the PSF weights and the large apertures' scale was used. With
``--free-shape`` the psf mode fits every star with the profile's width and tail
derivatives free (an experiment; docs/nsg.md "Fourth attempt"). ``--shared-tail``
adds a column: the psf mode with the reference's tail ``u`` imposed on every
target's profile (``psf_photometry.SHARED_TAIL``; docs/nsg.md "Fifth attempt"), and
``--shape-cull N`` drops the psf mode's profile stars of odd width or tail
(``psf_photometry.SHAPE_CULL_ROUNDS``), ``--residual-mask N`` masks companions
found in their residuals (``psf_photometry.RESIDUAL_MASK_ROUNDS``; "Sixth attempt"),
``--ring-mask F`` leaves the ring pixels within F FWHM of a detected neighbour out of
each star's background (``psf_photometry.RING_NEIGHBOUR_MASK_FWHM``; "Seventh attempt"),
``--matched-response`` weights both frames so that their fluxes respond alike to light at
any offset (``psf_photometry.MATCHED_RESPONSE``; same section), ``--width-noise`` adds the
noise absorbed by each profile star's flux and shift to the profile fit's chi-square
(``psf_photometry.WIDTH_NOISE_TERM``; "Ninth attempt"), ``--width-weights`` weights its
pixels by their variance (``psf_photometry.WIDTH_VARIANCE_WEIGHTS``) and
``--profile-ring-mask F`` masks the ring neighbours in the profile fit's rings only
(``psf_photometry.PROFILE_RING_MASK_FWHM``), ``--residual-split`` finds the residual mask's
bumps on one checkerboard half of each stamp and masks the other half
(``psf_photometry.RESIDUAL_MASK_SPLIT``) and ``--residual-asymmetric`` seeks them in the
residual less its ring-symmetric part (``psf_photometry.RESIDUAL_MASK_ASYMMETRIC``) and
``--ring-bumps`` cleans the profile fit's rings of bumps (``psf_photometry.RING_BUMP_MASK``; same
section).

    python benchmarks/bench_scale_real.py [--data ../shared/data/real] [--small F] [--kernel]
                                          [--free-shape] [--shared-tail] [--shape-cull 2] [--residual-mask 2]
                                          [--ring-mask 2] [--matched-response] [--width-noise]
                                          [--width-weights] [--profile-ring-mask 2]
                                          [--residual-split] [--residual-asymmetric]
                                          [--ring-bumps]

About 1-2 minutes on a busy 2-core machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_nsg.core.nsg import NsgParameters, measure_scale, prepare_reference
from napari_nsg.core.nsg.kernel_scale import kernel_scale_of
from napari_nsg.core.nsg.params import PHOTOMETRY_MODES
from napari_nsg.core.stars import psf_photometry
from napari_nsg.core.stars.psf_photometry import WEIGHT_RADIUS_FWHM

#: Above this radius (FWHM of the reference) the psf mode returned the large apertures.
PSF_RADIUS_FWHM = WEIGHT_RADIUS_FWHM + 0.5

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_scale_precision import wasp_targets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale_bound import add_psf_switches, apply_psf_switches


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/real"))
    ap.add_argument("--small", type=float, default=NsgParameters.small_aperture_fwhm,
                    help="small_aperture_fwhm of the corrected and empirical modes")
    ap.add_argument("--kernel", action="store_true",
                    help="also the scale of a free pixel kernel fit (1-2 s a frame)")
    ap.add_argument("--shared-tail", action="store_true",
                    help="also the psf mode with the reference's tail imposed on the targets")
    own = ("--shared-tail",)  # a column here, not a switch for every psf run
    add_psf_switches(ap, skip=own)  # the psf mode's experiments, as there
    args = ap.parse_args(argv)
    apply_psf_switches(args, skip=own)
    tail = psf_photometry.SHARED_TAIL  # --shipped's (True) or the plain mode's
    folder = Path(args.data) / "wasp12b_calibrated"
    ref, targets = wasp_targets(folder)
    models = {m: prepare_reference(ref.data, ref.meta, params=NsgParameters(
        photometry=m, small_aperture_fwhm=args.small)) for m in PHOTOMETRY_MODES}
    extra = (["kernel fit"] if args.kernel else []) + (["psf, shared tail"] if args.shared_tail
                                                        else [])
    print("| frame | photutils scale | " + " | ".join(f"{m}: scale (difference)"
                                                    for m in [*models, *extra]) + " |")
    print("|---|---|" + "---|" * (len(models) + len(extra)))
    for name, reg, ind in targets:
        cells, results = [], []
        runs = [(m, False) for m in models.values()]
        runs += [(models["psf"], True)] if args.shared_tail else []
        for model, shared in runs:
            psf_photometry.SHARED_TAIL = shared or tail  # the column's, else as the flags say
            results.append(measure_scale(model, reg))
            psf_photometry.SHARED_TAIL = tail
            s = float(results[-1].scale[0])
            fell_back = (model.params.photometry == "psf"
                         and results[-1].ref_photometry.radius[0]
                         > PSF_RADIUS_FWHM * max(model.fwhm, results[-1].target_fwhm))
            cells.append(f"{s:.5f} ({100 * (s / ind - 1):+.2f} %){' *' if fell_back else ''}")
        if args.kernel:
            s = kernel_scale_of(models[PHOTOMETRY_MODES[0]], reg, results[0])
            cells.insert(len(models), f"{s:.5f} ({100 * (s / ind - 1):+.2f} %)")
        print(f"| {name} | {ind:.5f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
