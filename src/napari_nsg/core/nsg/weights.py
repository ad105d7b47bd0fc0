"""Weights (SNR squared), transmission, and rejection of frames.

NSG's SNR of a target is a noise ratio relative to the reference, after the
target has been scaled: ``SNR_c = noise_ref_c / (scale_c * noise_tgt_c)``;
the weight is ``SNR^2`` per channel and ``NWEIGHT`` is its mean over the
channels. The reference has SNR 1 and weight 1. Transmission is ``1/scale``.
Relative values (per unit exposure when every frame has one) and rejection
come after all frames are measured (section 13 of the notes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .noise import NoiseEstimate


@dataclass
class FrameWeight:
    """SNR and weight of one frame relative to the reference.

    Attributes
    ----------
    snr : ndarray (c,)
    weight : float
        Mean over channels of ``snr**2`` (NWEIGHT).
    noise : ndarray (c,)
        The target's noise sigma (unscaled, in its own units).
    noise_ref : ndarray (c,)
    source : str
        "keywords" or "measured".
    warnings : list of str
    """

    snr: np.ndarray
    weight: float
    noise: np.ndarray
    noise_ref: np.ndarray
    source: str
    warnings: list[str] = field(default_factory=list)


def compute_weight(ref_noise: NoiseEstimate, tgt_noise: NoiseEstimate, scale) -> FrameWeight:
    """SNR per channel and NWEIGHT of a target.

    Parameters
    ----------
    ref_noise, tgt_noise : NoiseEstimate
        Noise of the reference and of the (unscaled) target, same source.
    scale : array_like (c,)
        The target's photometric scale.

    Returns
    -------
    FrameWeight
    """
    scale = np.asarray(scale, float)
    warnings: list[str] = []
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = ref_noise.sigma / (scale * tgt_noise.sigma)
    ok = np.isfinite(snr) & (snr > 0)
    weight = float(np.mean(snr[ok] ** 2)) if ok.any() else float("nan")
    if not ok.all():
        warnings.append("no noise estimate in some channel(s): weight from the others"
                        if ok.any() else "no noise estimate: no weight")
    ref_alg = {a for a in ref_noise.algorithm if a}
    tgt_alg = {a for a in tgt_noise.algorithm if a}
    if ref_alg and tgt_alg and ref_alg != tgt_alg:
        warnings.append(f"noise estimates differ in kind ({'/'.join(sorted(ref_alg))} vs "
                        f"{'/'.join(sorted(tgt_alg))}): the weight is less accurate")
    return FrameWeight(snr, weight, tgt_noise.sigma.copy(), ref_noise.sigma.copy(),
                       tgt_noise.source, warnings)


def transmission_of(scale) -> np.ndarray:
    """Transmission per channel: ``1 / scale``."""
    scale = np.asarray(scale, float)
    with np.errstate(divide="ignore"):
        return 1.0 / scale


def relative_values(
    weight: np.ndarray,
    transmission: np.ndarray,
    exposure: np.ndarray,
    *,
    ref_exposure: float | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Relative weight and transmission over a set of frames (NSG section 13).

    Parameters
    ----------
    weight, transmission : ndarray (n,)
        NWEIGHT and mean transmission of each frame (NaN for failed frames).
    exposure : ndarray (n,)
        Exposure times (NaN where unknown).
    ref_exposure : float, optional
        The reference's exposure when it is not one of the frames: it then
        takes part with weight 1 and transmission 1.

    Returns
    -------
    (relative_weight, relative_transmission, per_exposure)
        Each divided by the largest; ``per_exposure`` is True when every frame
        (and the reference) had an exposure time, and values were divided by it.
    """
    weight = np.asarray(weight, float)
    transmission = np.asarray(transmission, float)
    exposure = np.asarray(exposure, float)
    ok = np.isfinite(weight) & np.isfinite(transmission)
    exps = exposure[ok]
    per_exposure = bool(len(exps)) and bool(np.all(np.isfinite(exps) & (exps > 0)))
    if ref_exposure is not None:
        per_exposure = per_exposure and np.isfinite(ref_exposure) and ref_exposure > 0
    t = exposure if per_exposure else np.ones_like(weight)
    w = weight / t
    tr = transmission / t
    w_all, t_all = list(w[ok]), list(tr[ok])
    if ref_exposure is not None:
        rt = ref_exposure if per_exposure else 1.0
        w_all.append(1.0 / rt)
        t_all.append(1.0 / rt)
    w_max = max(w_all) if w_all else np.nan
    t_max = max(t_all) if t_all else np.nan
    return w / w_max, tr / t_max, per_exposure


def rejection(
    relative_weight: np.ndarray,
    relative_transmission: np.ndarray,
    *,
    min_weight: float = 0.25,
    min_transmission: float = 0.75,
    is_reference: np.ndarray | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Frames to reject: relative weight <= ``min_weight`` ("light pollution") or
    relative transmission <= ``min_transmission`` ("clouds"); never the reference.

    Returns
    -------
    (rejected, reasons)
    """
    n = len(relative_weight)
    ref = np.zeros(n, bool) if is_reference is None else np.asarray(is_reference, bool)
    rejected = np.zeros(n, bool)
    reasons = [""] * n
    for i in range(n):
        if ref[i]:
            continue
        why = []
        rw, rt = relative_weight[i], relative_transmission[i]
        if np.isfinite(rw) and rw <= min_weight:
            why.append(f"relative weight {rw:.3f} <= {min_weight:g} (light pollution or noise)")
        if np.isfinite(rt) and rt <= min_transmission:
            why.append(f"relative transmission {rt:.3f} <= {min_transmission:g} (clouds)")
        if why:
            rejected[i] = True
            reasons[i] = "; ".join(why)
    return rejected, reasons


#: Exposures this many times apart (or more) hint at a header in other units (ms for s):
#: the per-exposure transmission is then off by that factor and the frame looks clouded.
EXPOSURE_UNIT_RATIO = 100.0


def exposure_hint(exposure, reference_exposure) -> str:
    """A hint for a rejected frame whose EXPTIME is EXPOSURE_UNIT_RATIO times the
    reference's or more (or less); "" otherwise or when either is unknown."""
    if not exposure or not reference_exposure:
        return ""
    ratio = float(exposure) / float(reference_exposure)
    if 1 / EXPOSURE_UNIT_RATIO < ratio < EXPOSURE_UNIT_RATIO:
        return ""
    return (f" (its exposure {exposure:g} s is {ratio:.3g}x the reference's "
            f"{reference_exposure:g} s: is one header's EXPTIME in other units, e.g. ms?)")
