"""Normalization to a reference: ours (NSG) against Siril and photutils.

Simulated sequences (truth): scale error ``|scale / true scale - 1|`` per frame, and the residual
gradient, the RMS of star-masked 32 px block medians of ``normalized - reference`` in the
reference's noise sigmas (``tests/test_nsg_simulated.residual_block_rms``, as docs/nsg.md).

Real frames (``wasp12b_calibrated``, shifted into register by whole pixels as
``tests/test_nsg_real.py`` does): the scale against an independent photutils star-flux ratio, and
the large-scale background difference to the reference (RMS of a quadratic surface fitted to
block medians) before and after.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np

from . import photutils_peer, siril
from .common import Score, scores, tests_module, timed

OURS = "ours (NSG)"
LINEAR_MATCH = "Siril linear_match"
ADDSCALE = "Siril stack addscale"
MULSCALE = "Siril stack mulscale"
PHOT_STARS = "photutils Background2D + star flux ratio"
PHOT_MEDIAN = "global median ratio"
SIRIL_TOOLS = (LINEAR_MATCH, ADDSCALE, MULSCALE)
TOOLS = (OURS, *SIRIL_TOOLS, PHOT_STARS, PHOT_MEDIAN)
#: Transmissions of the reference and the targets (the tests' first six).
TRANSMISSION = (1.0, 0.95, 0.62, 0.85, 0.7, 0.9)


def simulated(shape: tuple[int, int], seed: int, n_frames: int):
    """A sequence as tests/test_nsg_simulated.py makes it (other seeds, other size)."""
    from napari_nsg.synthetic import simulate_sequence

    sim = tests_module("test_nsg_simulated")
    trans = (TRANSMISSION * (n_frames // len(TRANSMISSION) + 1))[:n_frames]
    return simulate_sequence(n_frames, shape, seed=seed, transmission=list(trans), border=16,
                             **sim.FIELD)


def _ours(reference: np.ndarray, targets: list[np.ndarray]):
    from napari_nsg.core.nsg import normalize_frame, prepare_reference

    model = prepare_reference(reference)
    out = [normalize_frame(model, t) for t in targets]
    return [r.corrected for r in out], [float(r.scale[0]) for r in out]


def _photutils(reference, targets, fwhm):
    out = [photutils_peer.normalize(reference, t, fwhm=fwhm) for t in targets]
    return [o.corrected for o in out], [o.scale for o in out]


def _median_ratio(reference, targets):
    scales = [photutils_peer.median_scale(reference, t) for t in targets]
    return [np.where(t != 0, s * t, 0).astype(np.float32) for s, t in zip(scales, targets)], scales


def _siril(exe, tool, reference, targets):
    with tempfile.TemporaryDirectory(prefix="peers_siril_") as tmp:
        folder = Path(tmp)
        if tool == LINEAR_MATCH:
            fits, seconds = siril.linear_match(exe, folder, reference, targets)
        else:
            kind = "addscale" if tool == ADDSCALE else "mulscale"
            fits, seconds = siril.stack_normalization(exe, folder, reference, targets, kind)
    return seconds, ([f.apply(t) for f, t in zip(fits, targets)], [f.a for f in fits])


def run_tools(reference, targets, siril_exe, fwhm, repeat: int = 1):
    """``{tool: (seconds, (corrected frames, scales)) or an exception}`` for every tool.

    With ``repeat`` > 1 the tools run in turn (A, B, ..., A, B, ...) that many times and the
    seconds are the median; the results are those of the first round.
    """
    jobs = {OURS: lambda: timed(_ours, reference, targets),
            PHOT_STARS: lambda: timed(_photutils, reference, targets, fwhm),
            PHOT_MEDIAN: lambda: timed(_median_ratio, reference, targets)}
    if siril_exe:
        for tool in SIRIL_TOOLS:
            jobs[tool] = lambda tool=tool: _siril(siril_exe, tool, reference, targets)
    out, times = {}, {}
    for _ in range(repeat):
        for tool, job in jobs.items():
            if isinstance(out.get(tool), Exception):
                continue
            try:
                seconds, result = job()
            except Exception as exc:  # noqa: BLE001 - a tool failing is a result of the benchmark
                out[tool] = exc
                continue
            out.setdefault(tool, result)
            times.setdefault(tool, []).append(seconds)
    return {tool: res if isinstance(res, Exception) else (float(np.median(times[tool])), res)
            for tool, res in out.items()}


def _record(score: Score, result, measure) -> None:
    if isinstance(result, Exception):
        score.error = f"{type(result).__name__}: {str(result).splitlines()[0]}"
        return
    seconds, (corrected, scales) = result
    score.seconds.append(seconds)
    measure(score, corrected, scales)


def bench_simulated(shape, seeds, n_frames, siril_exe, progress=print) -> dict[str, Score]:
    """Scale error and residual gradient of every tool on simulated sequences."""
    sim = tests_module("test_nsg_simulated")
    table = scores(list(TOOLS))
    for seed in seeds:
        seq = simulated(shape, seed, n_frames)
        ref = seq.frame(seq.reference)
        sigma = float(seq.truth[seq.reference].noise_sigma[0])
        frames = [seq.frame(k) for k in range(seq.n_frames) if k != seq.reference]
        reference = siril.quantize(ref.data)
        targets = [siril.quantize(f.data) for f in frames]
        truth = [float(f.truth.scale[0]) for f in frames]

        def measure(score, corrected, scales, frames=frames, truth=truth, reference=reference,
                    ref=ref, sigma=sigma):
            for f, c, s, t in zip(frames, corrected, scales, truth, strict=True):
                resid = sim.residual_block_rms(c, reference, ref.signal(), f.valid & ref.valid, sigma)
                score.add(scale_error=abs(s / t - 1), residual=resid)

        for tool, result in run_tools(reference, targets, siril_exe, fwhm=3.0).items():
            _record(table[tool], result, measure)
        progress(f"normalization, simulated {shape[1]}x{shape[0]} seed {seed}: done")
    return table


def _real_frames(folder: Path):
    from napari_nsg.io import read_frame

    real = tests_module("test_nsg_real")
    frames = [read_frame(folder / f"{n}.fits").data for n in real.NAMES]
    ref = frames[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        registered = [real.into_register(f, real.independent_offset(ref, f)) for f in frames[1:]]
    return real, ref, registered


def bench_real(folder: Path, siril_exe, progress=print, repeat: int = 3) -> dict[str, Score] | None:
    """Scale vs photutils star fluxes, and background difference before/after, on WASP-12b.

    One data set, so the tools' times are medians of ``repeat`` interleaved runs.
    """
    if not folder.is_dir():
        progress(f"({folder} is missing: no real-data table)")
        return None
    from scipy import ndimage

    real, ref, targets = _real_frames(folder)
    stars = real.bright_stars(ref)
    sky = np.median(ref)
    mad = 1.4826 * np.median(np.abs(ref - sky))
    star_free = ~ndimage.binary_dilation(ref > sky + 5 * mad, iterations=12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        independent = [float(np.median(real.photutils_flux(ref, stars) / real.photutils_flux(t, stars)))
                       for t in targets]
    uses = [(t != 0) & star_free for t in targets]
    before = [real.large_scale_rms(t - ref, u) for t, u in zip(targets, uses)]

    def measure(score, corrected, scales):
        for c, s, ind, u, b in zip(corrected, scales, independent, uses, before):
            after = real.large_scale_rms(c - ref, u)
            score.add(scale_diff=abs(s / ind - 1), before=b, after=after)

    table = scores(list(TOOLS))
    for tool, result in run_tools(ref, targets, siril_exe, fwhm=8.0, repeat=repeat).items():
        _record(table[tool], result, measure)
    progress("normalization, wasp12b_calibrated: done")
    return table
