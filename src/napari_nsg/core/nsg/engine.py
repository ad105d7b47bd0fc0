"""NSG for one reference and one target at a time: the engine the pipeline runs.

One target's path reads top to bottom in :func:`normalize_frame`::

    stars -> photometry -> scale -> samples -> spline -> correct -> weight

Everything that depends on the reference alone (its stars, the sample grid
with its rejection circles, its noise, the coarse gradient grid) is computed
once by :func:`prepare_reference` into a :class:`ReferenceModel`, which is
small enough to send to worker processes. :func:`measure_scale` (the
photometric scale alone) and :func:`compute_weight` are public so that
reference ranking can reuse them without correcting anything.
"""

from __future__ import annotations

import hashlib
import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.spatial import cKDTree

from ..nodata import find_no_data
from ..stars import StarTable, detect_stars, intensity, photometry, psf_photometry
from ..stars.aperture_correction import corrected_pair_photometry
from ..stars.detection import lone_peaks
from ..stars.empirical import empirical_pair_photometry
from ..stars.matching import (
    StarMatch,
    estimate_offset,
    match_found,
    match_stars,
    measure_stars_at,
)
from ..stars.photometry import Photometry, pair_photometry
from ..stars.psf_photometry import psf_pair_photometry
from ..threads import available_threads
from .correction import (
    PARALLEL_PIXELS,
    CoarseGrid,
    GradientField,
    apply_correction,
    evaluate_gradient,
    gradient_step,
    taper_weights,
    zero_gradient,
)
from .intermediates import RejectionCircles
from .noise import NoiseEstimate, measure_frame_noise, noise_from_keywords
from .params import NsgParameters, max_samples_for
from .registered import REGISTER_HINT, UnregisteredError, check_registered
from .samples import (
    SampleGrid,
    Samples,
    TargetPixels,
    bin_samples,
    make_sample_grid,
    measure_samples,
    star_pixel_mask,
    target_pixels,
)
from .scale import ChannelScale, fit_scale
from .spline import NodeKernel, SplineOperator, SurfaceModel
from .weights import FrameWeight, compute_weight, transmission_of

__all__ = [
    "NormalizationResult",
    "NotRegisteredError",
    "NsgError",
    "PreparedTarget",
    "ReferenceModel",
    "ScaleResult",
    "TargetPlan",
    "assemble_result",
    "fit_gradient",
    "measure_scale",
    "measure_target_noise",
    "normalize_frame",
    "prepare_reference",
    "prepare_target",
    "reference_result",
    "target_plan",
    "target_samples",
    "target_weight",
]


RING_AREA_RATIO = 4.0
#: photometry="psf" when the PSF weights were not used for a frame.
PSF_FALLBACK_WARNING = ("PSF weights not used: the scale is from the large apertures, as with "
                        "--photometry aperture (the stars' shape does not follow the fitted "
                        "profile, or too few isolated stars to fit one)")
#: Every 61st row, every 7th pixel of it: whether a frame has any data (0.08 ms on
#: 24 Mpx; every 7th row took 1.5 ms), the whole frame only if that finds none.
SPARSE_LOOK = (61, 7)


class NsgError(ValueError):
    """A frame cannot be normalized; the message says why (without the file name,
    which the caller adds)."""


class NotRegisteredError(NsgError):
    """The target's stars are not at the reference's star positions: the frames
    are not registered (or show another field); no scale is measured."""


def _channels(data: np.ndarray) -> np.ndarray:
    data = np.asarray(data)
    if data.ndim == 2:
        return data[np.newaxis]
    if data.ndim == 3:
        return data
    raise NsgError(f"image data is {data.ndim}-D; expected (y, x) or (c, y, x)")


def _describe(shape: tuple[int, ...]) -> str:
    if len(shape) == 2:
        return f"mono {shape[1]}x{shape[0]}"
    return f"{shape[0]}-channel {shape[2]}x{shape[1]}"


@dataclass
class ReferenceModel:
    """Everything about the reference that every target needs.

    Attributes
    ----------
    data : ndarray (c, y, x) float32
        The reference pixels, NaN where it has no data (see :func:`no_data_as_nan`).
    params : NsgParameters
        Resolved (no "auto" left).
    meta : object or None
        The reference's metadata (``FrameMetadata``: noise keywords, exposure...).
    stars : StarTable
        Every star detected in the reference's intensity, brightest first.
    candidates : StarTable
        The stars that may be measured: unsaturated and inside the linear
        range, re-measured the way target stars are (see ``candidate_radius``).
    candidate_radius : ndarray
        Isophotal radius (px) of each candidate, the base of its aperture.
    flux_unit : float
        The reference intensity's maximum: fluxes in NSG's growth formulas are
        in this unit.
    saturation : ndarray (c,)
        ``linear_range * max`` of each reference channel.
    fwhm : float
        Median FWHM of the candidates (px).
    star_mask : ndarray of bool (y, x)
        Pixels covered by the reference's stars (:func:`.samples.star_pixel_mask`):
        left out of the gradient samples and of other stars' background rings.
    grid : SampleGrid
        The sample grid with the reference's values and rejection circles.
    coarse : CoarseGrid
        Where the gradient model is evaluated.
    taper : ndarray or None
        Blend weights toward the plane where the reference has no data.
    no_data : ndarray of bool (y, x) or None
        Where the reference has no data (kept for "mask" mode only).
    noise : NoiseEstimate
        The reference's noise (keywords if it has them, else measured).
    measured_noise : NoiseEstimate or None
        Its measured noise (used when a target has no keywords).
    warnings : list of str
    spline_cache : dict
        The thin-plate system of the reference's usable bins, inverted when the
        first target needs it and reused by the others (see
        :class:`.spline.SplineOperator`), keyed by what it depends on
        (:func:`spline_cache_key`: node set and smoothness); the
        ``SPLINE_CACHE_SIZE`` most recently used are kept, with the kernel of
        the bins that they share (key ``("kernel", ...)``).
    rejection_circles : RejectionCircles or None
        The circles around the brightest reference stars that removed bins.
    """

    data: np.ndarray
    params: NsgParameters
    meta: object | None
    stars: StarTable
    candidates: StarTable
    candidate_radius: np.ndarray
    flux_unit: float
    saturation: np.ndarray
    fwhm: float
    star_mask: np.ndarray
    grid: SampleGrid
    coarse: CoarseGrid
    taper: np.ndarray | None
    no_data: np.ndarray | None
    noise: NoiseEstimate
    measured_noise: NoiseEstimate | None
    warnings: list[str] = field(default_factory=list)
    spline_cache: dict = field(default_factory=dict, repr=False)
    rejection_circles: RejectionCircles | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return tuple(self.data.shape[-2:])

    @property
    def n_channels(self) -> int:
        return self.data.shape[0]

    @property
    def data_shape(self) -> tuple[int, ...]:
        """The shape targets must have: ``(y, x)`` mono, ``(c, y, x)`` colour."""
        return self.shape if self.n_channels == 1 else tuple(self.data.shape)


def prepare_reference(
    data: np.ndarray,
    meta=None,
    params: NsgParameters | None = None,
    stars: StarTable | None = None,
    scale_only: bool = False,
) -> ReferenceModel:
    """Analyse the reference once: stars, auto parameters, sample grid, noise.

    Parameters
    ----------
    data : ndarray
        ``(y, x)`` or ``(c, y, x)`` reference pixels in their own units.
    meta : FrameMetadata, optional
        Its metadata: pixel size / focal length / image scale for the auto
        parameters, NOISExx keywords, exposure.
    params : NsgParameters, optional
        Defaults when omitted; "auto" values are resolved here.
    stars : StarTable, optional
        ``detect_stars`` of this frame's intensity at ``params.detection_threshold``
        when the caller has it already (no second detection); detected here if omitted.
    scale_only : bool
        Only what :func:`measure_scale` needs (the ranking): no star mask, sample
        grids or measured noise (those attributes are None; the model cannot
        normalize).

    Returns
    -------
    ReferenceModel

    Raises
    ------
    NsgError
        No data, no stars that can be measured, or no usable sample.
    """
    params = params or NsgParameters()
    chans = _channels(data).astype(np.float32, copy=False)
    nc, h, w = chans.shape
    if nc not in (1, 3):
        raise NsgError(f"{nc} channels; expected mono or RGB")
    chans, bad = no_data_as_nan(chans)  # kept as model.data: targets reuse it, NaN at no-data
    valid = ~bad
    if not valid.any():
        raise NsgError("the reference has no data (all pixels are 0 or NaN)")
    inten = intensity(chans if nc > 1 else chans[0])
    flux_unit = float(np.max(inten[np.isfinite(inten)]))
    if stars is None:
        stars = detect_stars(inten, threshold=params.detection_threshold)
    if len(stars) == 0:
        raise NsgError("no stars found in the reference")
    params = params.resolved(shape=(h, w), meta=meta,
                             max_star_flux=float(stars.flux[0]) / flux_unit,
                             n_ref_stars=len(stars))
    warnings: list[str] = []
    # candidates: unsaturated, inside the linear range, re-measured like target stars
    limit = params.linear_range * flux_unit
    ok = (stars.raw_peak < limit) & ~lone_peaks(inten, stars)  # hot pixels: a scale of 1
    cands = stars.take(ok)
    if len(cands) == 0:
        raise NsgError("every reference star peaks above the linear range "
                       f"({params.linear_range:g} x max): none can be measured")
    fwhm0 = float(np.median(cands.fwhm[: min(len(cands), 50)]))
    max_pairs = params.max_star_pairs or max(250, len(stars) // 20)
    cands = cands.take(slice(0, 2 * max_pairs))
    remeasured, found = measure_stars_at(inten, cands.x, cands.y, search_radius=1.5,
                                         threshold=params.detection_threshold, fwhm=fwhm0)
    found &= remeasured.raw_peak < limit
    iso = np.sqrt(cands.npix / np.pi)
    candidates = remeasured.take(found)
    candidate_radius = iso[found]
    if len(candidates) == 0:
        raise NsgError("no reference star could be measured")
    fwhm = float(np.nanmedian(candidates.fwhm[: min(len(candidates), 100)]))
    saturation = np.array([params.linear_range * float(np.max(np.where(valid[c], chans[c], -np.inf)))
                           for c in range(nc)])
    # rejection circles: the brightest limit_sample_stars % of all reference stars
    n_rej = int(np.floor(len(stars) * params.limit_sample_stars / 100.0))
    rej = stars.take(slice(0, n_rej))
    r_star = np.maximum(np.sqrt(rej.npix / np.pi), rej.fwhm)
    radius = r_star + params.aperture_add + params.sample_star_growth * rej.flux / flux_unit
    if scale_only:
        return ReferenceModel(
            data=chans, params=params, meta=meta, stars=stars, candidates=candidates,
            candidate_radius=candidate_radius, flux_unit=flux_unit, saturation=saturation,
            fwhm=fwhm, star_mask=None, grid=None, coarse=None, taper=None, no_data=None,
            noise=None, measured_noise=None, warnings=warnings)
    star_mask = star_pixel_mask(inten, fwhm)
    grid = make_sample_grid(chans, params.sample_size, star_x=rej.x, star_y=rej.y,
                            star_radius=radius, star_mask=star_mask)
    if grid.usable.sum() < 3:
        raise NsgError(f"only {int(grid.usable.sum())} usable gradient samples in the reference "
                       f"(sample size {params.sample_size} px)")
    coarse = CoarseGrid((h, w), gradient_step((h, w), params.sample_size))
    ref_valid = valid.all(axis=0)
    taper = None
    no_data = None
    if params.no_reference == "taper":
        taper = taper_weights(coarse, ref_valid, params.sample_size, 3.0 * params.sample_size)
    elif params.no_reference == "mask" and not ref_valid.all():
        no_data = ~ref_valid
    if not ref_valid.all():
        frac = 1.0 - float(ref_valid.mean())
        warnings.append(f"the reference has no data over {100 * frac:.1f} % of the frame")
    measured = measure_frame_noise(chans)
    keywords = None
    if meta is not None:
        keywords = noise_from_keywords(getattr(meta, "noise", {}) or {},
                                       getattr(meta, "noise_algorithm", {}) or {}, nc)
    return ReferenceModel(
        data=chans, params=params, meta=meta, stars=stars, candidates=candidates,
        candidate_radius=candidate_radius, flux_unit=flux_unit, saturation=saturation,
        fwhm=fwhm, star_mask=star_mask, grid=grid, coarse=coarse, taper=taper, no_data=no_data,
        noise=keywords or measured, measured_noise=measured, warnings=warnings,
        rejection_circles=RejectionCircles(np.asarray(rej.x, float), np.asarray(rej.y, float),
                                           np.asarray(radius, float)),
    )


def _check_target(model: ReferenceModel, data: np.ndarray) -> np.ndarray:
    data = np.asarray(data)
    if data.ndim not in (2, 3):
        raise NsgError(f"image data is {data.ndim}-D; expected (y, x) or (c, y, x)")
    if data.ndim != len(model.data_shape) or data.shape != model.data_shape:
        want, got = model.data_shape, data.shape
        if len(want) != len(got):
            raise NsgError(f"colour depth differs from the reference (target is {_describe(got)}, "
                           f"reference is {_describe(want)})")
        raise NsgError(f"image size differs from the reference (target is {_describe(got)}, "
                       f"reference is {_describe(want)}); frames must be registered")
    chans = _channels(data)
    rows, cols = SPARSE_LOOK
    if not _has_data(chans[:, ::rows, ::cols]) and not _has_data(chans):  # a sparse look first
        raise NsgError("the frame has no data (all pixels are 0 or NaN)")
    return chans


def no_data_as_nan(chans: np.ndarray, *, in_place: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(chans with NaN at every no-data pixel, the no-data mask)``.

    The no-data rule (:func:`~napari_nsg.core.nodata.no_data_mask`) labels zero
    regions, which costs about 0.2 s on a 24 Mpx frame; every later stage
    (stars, photometry, samples, noise) would apply it again. With the zero
    regions turned into NaN it is applied once: NaN is no-data by the same rule,
    so each stage finds the same pixels with a cheap finiteness test. The input
    is not modified (a float32 copy is made when there is a zero region) unless
    ``in_place`` (a float array that the caller no longer needs).
    """
    chans, bad = _no_data_as_nan(chans, in_place)
    return chans, (np.zeros(chans.shape, bool) if bad is None else bad)


def _no_data_as_nan(chans: np.ndarray, in_place: bool, mask_out: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`no_data_as_nan` with ``None`` for the mask of a frame without no-data
    (no full-size mask made: most frames); ``mask_out`` as ``find_no_data``'s ``out``."""
    chans = np.asarray(chans)
    if not np.issubdtype(chans.dtype, np.floating):
        chans, in_place = chans.astype(np.float32), True
    bad, regions = find_no_data(chans, out=mask_out)
    if regions:  # else NaN/inf only: no copy
        if not in_place or not chans.flags.writeable:
            chans = chans.copy()
        np.copyto(chans, chans.dtype.type(np.nan), where=bad)
    return chans, bad


def _own_copy(chans: np.ndarray, target, overwrite_input: bool) -> np.ndarray | None:
    """``chans`` when the correction may be written into it (float32, writable, and
    either the caller's own working copy or a copy made here), else ``None``."""
    copied = not np.may_share_memory(chans, np.asarray(target))
    if (overwrite_input or copied) and chans.dtype == np.float32 and chans.flags.writeable:
        return chans
    return None


def _has_data(a: np.ndarray) -> bool:
    return bool(np.any(np.isfinite(a) & (a != 0)))


@dataclass
class ScaleResult:
    """The photometric scale of a target relative to the reference.

    Attributes
    ----------
    scale : ndarray (c,)
        Factor that multiplies the target, per channel.
    scale_error : ndarray (c,)
        Standard error of each scale.
    channels : list of ChannelScale
        Details of each channel's fit.
    n_star_pairs : ndarray of int (c,)
        Pairs used in each channel's fit.
    match : StarMatch
        The star pairing (indices into ``ReferenceModel.candidates`` and into
        ``target_stars``).
    target_stars : StarTable
        The target's stars (one row per candidate with guided detection).
    ref_photometry, target_photometry : Photometry
        Aperture photometry of the pairs.
    offset : (float, float)
        Whole-frame shift of the target found before matching.
    target_fwhm : float
        Median FWHM of the target's paired stars (px).
    warnings : list of str
    """

    scale: np.ndarray
    scale_error: np.ndarray
    channels: list[ChannelScale]
    n_star_pairs: np.ndarray
    match: StarMatch
    target_stars: StarTable
    ref_photometry: Photometry
    target_photometry: Photometry
    offset: tuple[float, float]
    target_fwhm: float
    warnings: list[str] = field(default_factory=list)

    @property
    def transmission(self) -> np.ndarray:
        """``1 / scale`` per channel."""
        return transmission_of(self.scale)


def measure_scale(model: ReferenceModel, target: np.ndarray) -> ScaleResult:
    """Photometric scale of one target against the reference, per channel.

    Stars are found on the target's intensity (near the reference's
    candidates, or everywhere with ``target_detection="full"``), paired,
    measured in identical apertures in both frames, and fitted (see
    :mod:`napari_nsg.core.nsg.scale`).

    Parameters
    ----------
    model : ReferenceModel
    target : ndarray
        ``(y, x)`` or ``(c, y, x)``, the reference's shape.

    Returns
    -------
    ScaleResult

    Raises
    ------
    NsgError
        Wrong shape or colour depth, no data, or no usable star pair in a channel.
    """
    chans, _ = no_data_as_nan(_check_target(model, target))
    return _measure_scale(model, chans)


def _measure_scale(model: ReferenceModel, chans: np.ndarray) -> ScaleResult:
    """:func:`measure_scale` of a target ``(c, y, x)`` whose no-data is NaN already."""
    p = model.params
    inten = intensity(chans if chans.shape[0] > 1 else chans[0])
    warnings: list[str] = []
    cands = model.candidates
    full = None
    if p.target_detection == "full":
        full = detect_stars(inten, threshold=p.detection_threshold)
        if len(full) == 0:
            raise NsgError("no stars found in the frame")
    offset = (0.0, 0.0)
    offset_found = True
    if p.max_offset > 0:
        est = estimate_offset(cands, full if full is not None else inten, p.max_offset,
                              fwhm=model.fwhm, threshold=p.detection_threshold,
                              marked=chans.shape[0] == 1)  # mono: inten is chans[0]
        if est.ok:
            offset = (est.dx, est.dy)
            if np.hypot(*offset) > p.star_search_radius:
                warnings.append(f"frame is offset by ({offset[0]:+.1f}, {offset[1]:+.1f}) px from "
                                "the reference: NSG expects registered frames (stars were "
                                "paired after removing the shift; the gradient model assumes "
                                f"none): {REGISTER_HINT}")
        else:
            offset_found = False
            warnings.append("could not find a whole-frame offset (too few bright stars agree); "
                            "assuming the frame is registered")
    if full is None:
        tgt_stars, found = measure_stars_at(inten, cands.x + offset[0], cands.y + offset[1],
                                            search_radius=p.star_search_radius,
                                            threshold=p.detection_threshold, fwhm=model.fwhm,
                                            marked=chans.shape[0] == 1)  # mono: inten is chans[0]
        match = match_found(cands, tgt_stars, found, offset=offset)
    else:
        tgt_stars = full
        match = match_stars(cands, full, offset=offset, search_radius=p.star_search_radius)
    warnings.extend(match.warnings)
    n_paired = len(match)
    # the target's linear range: the same level as the reference's (NSG)
    in_range = tgt_stars.raw_peak[match.tgt_index] < p.linear_range * model.flux_unit
    ri, ti = match.ref_index[in_range], match.tgt_index[in_range]
    max_pairs = p.max_star_pairs or max(250, len(model.stars) // 20)
    ri, ti = ri[:max_pairs], ti[:max_pairs]
    match = StarMatch(ri, ti, offset, match.ratio, match.warnings)
    if len(ri) == 0:
        raise NotRegisteredError("no star of the reference was found in the frame: cannot measure the "
                       "scale (clouds, a different field, or frames not registered: "
                       f"{REGISTER_HINT})")
    if not offset_found and len(ri) < p.min_star_pairs:
        # one or two stars near reference stars, and no three bright stars agreeing on a
        # position: chance coincidences are as likely as real pairs
        raise NotRegisteredError(f"only {len(ri)} star(s) near reference stars and no whole-frame offset "
                       "that three bright stars agree on: cannot pair stars reliably (a "
                       f"different field, clouds, or frames not registered: {REGISTER_HINT})")
    try:
        check_registered(n_paired, cands, model.stars, inten, offset,
                         threshold=p.detection_threshold, target_stars=full)
    except UnregisteredError as e:
        raise NotRegisteredError(str(e)) from None
    ref_s, tgt_s = cands.take(ri), tgt_stars.take(ti)
    tgt_fwhm = float(np.nanmedian(tgt_s.fwhm))
    seeing = max(model.fwhm, tgt_fwhm if np.isfinite(tgt_fwhm) else 0.0)
    flux_n = np.maximum(ref_s.flux, tgt_s.flux * match.ratio if np.isfinite(match.ratio)
                        else tgt_s.flux) / model.flux_unit
    base = np.maximum(p.aperture_fwhm * seeing, model.candidate_radius[ri])
    radius = base + p.aperture_add + p.aperture_growth * flux_n
    width = ring_width(radius, p.aperture_gap, p.aperture_bg_delta)
    if p.photometry == "corrected":  # small apertures + per-frame correction
        small = np.full(len(ri), p.small_aperture_fwhm * seeing)
        ref_ph, tgt_ph, _ = corrected_pair_photometry(
            model.data, chans, ref_s.x, ref_s.y, tgt_s.x, tgt_s.y, small,
            (model.fwhm, tgt_fwhm if np.isfinite(tgt_fwhm) else model.fwhm),
            (model.stars.x, model.stars.y, model.stars.flux), offset=offset,
            gap=p.aperture_gap, width=ring_width(small, p.aperture_gap, p.aperture_bg_delta),
            saturation=model.saturation, large=(radius, width))
        radius = ref_ph.radius
        width = ring_width(radius, p.aperture_gap, p.aperture_bg_delta)
    elif p.photometry == "psf":  # PSF-weighted, each frame's profile; large apertures check
        ref_ph, tgt_ph, weighted = psf_pair_photometry(
            model.data, chans, ref_s.x, ref_s.y, tgt_s.x, tgt_s.y,
            (model.fwhm, tgt_fwhm if np.isfinite(tgt_fwhm) else model.fwhm),
            (model.stars.x, model.stars.y, model.stars.flux), (radius, width), offset=offset,
            gap=p.aperture_gap, saturation=model.saturation,
            profile_stars=(cands.x, cands.y, cands.flux),
            crowding=_crowding(model.stars, ref_s,
                               [radius, radius + p.aperture_gap, radius + p.aperture_gap + width],
                               2.0 * seeing) if psf_photometry.CROWDED_CHECK else None)
        if not weighted:
            warnings.append(PSF_FALLBACK_WARNING)
        radius = ref_ph.radius
        width = ring_width(radius, p.aperture_gap, p.aperture_bg_delta)
    elif p.photometry == "empirical":  # small apertures + measured wing ratio
        small = np.full(len(ri), p.small_aperture_fwhm * seeing)
        s_width = ring_width(small, p.aperture_gap, p.aperture_bg_delta)
        edges = [r + d for r, w in ((small, s_width), (radius, width))
                 for d in (0, p.aperture_gap, p.aperture_gap + w)]
        ref_ph, tgt_ph, _ = empirical_pair_photometry(
            model.data, chans, ref_s.x, ref_s.y, tgt_s.x, tgt_s.y, small, (radius, width),
            gap=p.aperture_gap, width=s_width, saturation=model.saturation,
            crowding=_crowding(model.stars, ref_s, edges, 2.0 * seeing))
        radius = ref_ph.radius
        width = ring_width(radius, p.aperture_gap, p.aperture_bg_delta)
    else:
        neighbours = ((model.stars.x, model.stars.y, offset, seeing)
                      if photometry.RING_NEIGHBOUR_MASK_FWHM > 0 else None)
        ref_ph, tgt_ph = pair_photometry(model.data, chans, ref_s.x, ref_s.y, tgt_s.x, tgt_s.y,
                                         radius, gap=p.aperture_gap, width=width,
                                         saturation=model.saturation, marked=True,
                                         neighbours=neighbours)
    crowd = _crowding(model.stars, ref_s,
                      [radius, radius + p.aperture_gap, radius + p.aperture_gap + width],
                      2.0 * seeing)
    if p.photometry == "psf" and weighted and not psf_photometry.FIT_CROWDING:
        crowd = None  # the PSF weights' fluxes: the apertures' crowding term does not apply
    fits: list[ChannelScale] = []
    for c in range(chans.shape[0]):
        ok = ref_ph.valid[c] & tgt_ph.valid[c]
        fits.append(fit_scale(np.where(ok, ref_ph.flux[c], np.nan),
                              np.where(ok, tgt_ph.flux[c], np.nan),
                              ref_ph.flux_err[c], tgt_ph.flux_err[c], crowding=crowd,
                              flux_tolerance=p.star_flux_tolerance,
                              outlier_percent=p.outlier_removal,
                              min_pairs_warn=p.min_star_pairs))
    for c, cs in enumerate(fits):
        name = f"channel {c}: " if chans.shape[0] > 1 else ""
        warnings.extend(name + w for w in cs.warnings)
    scale = np.array([f.scale for f in fits])
    if not np.all(np.isfinite(scale)):
        bad = [c for c in range(len(fits)) if not np.isfinite(fits[c].scale)]
        where = "" if chans.shape[0] == 1 else f" in channel(s) {', '.join(map(str, bad))}"
        raise NsgError(f"no usable star pair{where} ({len(ri)} matched star(s), none measurable "
                       "in both frames): cannot measure the scale")
    return ScaleResult(
        scale=scale,
        scale_error=np.array([f.error for f in fits]),
        channels=fits,
        n_star_pairs=np.array([f.n_used for f in fits], int),
        match=match,
        target_stars=tgt_stars,
        ref_photometry=ref_ph,
        target_photometry=tgt_ph,
        offset=offset,
        target_fwhm=tgt_fwhm,
        warnings=warnings,
    )


def ring_width(radius, gap, min_width, area_ratio: float = RING_AREA_RATIO):
    """Background ring width: at least ``min_width`` and enough for the ring to
    cover ``area_ratio`` times the aperture's area (so that the background adds
    little noise to the flux)."""
    inner = np.asarray(radius, float) + gap
    need = np.sqrt(area_ratio * np.asarray(radius, float) ** 2 + inner**2) - inner
    return np.maximum(float(min_width), need)


def _crowding(stars: StarTable, measured: StarTable, edges: list[np.ndarray],
              margin: float) -> np.ndarray:
    """Flux of the other detected stars whose light crosses an aperture or ring
    edge (within ``margin`` px of one of the radii in ``edges``), relative to
    the measured star's own (detector fluxes)."""
    if len(stars) < 2 or len(measured) == 0:
        return np.zeros(len(measured))
    tree = cKDTree(stars.xy)
    edges = np.stack([np.asarray(e, float) for e in edges])  # (k, n)
    reach = edges.max(axis=0) + margin
    found = tree.query_ball_point(measured.xy, reach)  # one list of neighbours per star
    counts = np.fromiter(map(len, found), int, len(found))
    j = np.fromiter(itertools.chain.from_iterable(found), int, int(counts.sum()))
    i = np.repeat(np.arange(len(measured)), counts)  # all (star, neighbour) pairs at once
    d = np.hypot(stars.x[j] - measured.x[i], stars.y[j] - measured.y[i])
    near = (d > 1.5) & np.any(np.abs(d[None, :] - edges[:, i]) < margin, axis=0)
    crossing = np.bincount(i[near], weights=stars.flux[j][near], minlength=len(measured))
    out = np.zeros(len(measured))
    has = counts > 0
    out[has] = crossing[has] / np.maximum(np.asarray(measured.flux, float)[has], 1e-30)
    return out


def measure_target_noise(model: ReferenceModel, target: np.ndarray, meta=None):
    """The target's and the matching reference noise: NOISExx keywords when both
    frames have them in the same layout, else both measured.

    Returns
    -------
    (reference_noise, target_noise) : NoiseEstimate
    """
    chans = _channels(target)
    if meta is not None and model.noise.source == "keywords":
        kw = noise_from_keywords(getattr(meta, "noise", {}) or {},
                                 getattr(meta, "noise_algorithm", {}) or {}, chans.shape[0])
        if kw is not None:
            return model.noise, kw
    ref = model.measured_noise or measure_frame_noise(model.data)
    return ref, measure_frame_noise(chans)


def target_weight(model: ReferenceModel, target: np.ndarray, scale, meta=None) -> FrameWeight:
    """SNR and NWEIGHT of a target with the given scale (see :mod:`.weights`)."""
    ref_noise, tgt_noise = measure_target_noise(model, target, meta)
    return compute_weight(ref_noise, tgt_noise, scale)


@dataclass
class NormalizationResult:
    """What normalizing one frame gives.

    Attributes
    ----------
    scale, scale_error, transmission, snr, noise : ndarray (c,)
        Photometric scale (multiplies the target), its error, ``1/scale``,
        SNR relative to the reference, the target's noise sigma.
    weight : float
        NWEIGHT = mean over channels of ``snr**2``.
    noise_source : str
        "keywords" or "measured".
    n_star_pairs : ndarray of int (c,)
    n_samples : int
        Gradient samples (before binning into spline nodes).
    n_nodes : int
        Spline nodes after binning.
    offset : (float, float)
        Whole-frame shift of the target found while pairing stars.
    corrected : ndarray or None
        ``target*scale - gradient``, float32, the target's shape, no-data = 0.
    gradient, curvature : ndarray or None
        Full-size images (only when asked for), no-data = 0.
    gradient_field : GradientField
        The gradient on the coarse grid (cheap to keep).
    surface : SurfaceModel or None
        Nodes and coefficients only (no solver: the result stays small).
    samples : Samples or None
    nodes : Samples or None
        The spline nodes (the samples, binned when there are too many).
    scale_result : ScaleResult or None
    weight_result : FrameWeight or None
    is_reference : bool
    warnings : list of str
    """

    scale: np.ndarray
    scale_error: np.ndarray
    transmission: np.ndarray
    snr: np.ndarray
    weight: float
    noise: np.ndarray
    noise_source: str
    n_star_pairs: np.ndarray
    n_samples: int
    n_nodes: int
    offset: tuple[float, float]
    corrected: np.ndarray | None
    gradient: np.ndarray | None
    curvature: np.ndarray | None
    gradient_field: GradientField
    surface: SurfaceModel | None = None
    samples: Samples | None = None
    scale_result: ScaleResult | None = None
    weight_result: FrameWeight | None = None
    is_reference: bool = False
    warnings: list[str] = field(default_factory=list)
    nodes: Samples | None = None

    def slim(self) -> NormalizationResult:
        """A copy without the full-size images (``corrected``, ``gradient``,
        ``curvature``): what is worth keeping per frame or sending between
        processes. The images come back from :attr:`gradient_field` and the
        target with :func:`~.correction.apply_correction`."""
        return replace(self, corrected=None, gradient=None, curvature=None)


def _masked_full(fieldv: GradientField, no_data: np.ndarray | None, mono: bool) -> np.ndarray:
    out = fieldv.full_all()
    if no_data is not None:
        np.copyto(out, np.float32(0), where=no_data)
    return out[0] if mono else out


@dataclass
class PreparedTarget:
    """A target made ready for :func:`normalize_frame` by :func:`prepare_target`.

    Attributes
    ----------
    chans : ndarray (c, y, x)
        The working copy, its no-data NaN.
    no_data : ndarray of bool or None
        The no-data mask (None: the frame has none).
    target : ndarray
        The array given (its shape; whether ``chans`` is a copy of it).
    overwrite_input : bool
        ``target`` may receive the corrected image.
    noises : (NoiseEstimate, NoiseEstimate) or None
        The reference's and the target's noise, when measured already.
    pixels : TargetPixels or None
        The target's pixels on the reference's sample grid, when gathered already.
    """

    chans: np.ndarray
    no_data: np.ndarray | None
    target: np.ndarray
    overwrite_input: bool
    noises: tuple[NoiseEstimate, NoiseEstimate] | None = None
    pixels: TargetPixels | None = None


@dataclass(frozen=True)
class TargetPlan:
    """What :func:`prepare_target` needs of a :class:`ReferenceModel`: small and
    picklable (a batch's reading process holds one instead of the model; see
    :func:`target_plan`). Attributes as the model's."""

    data_shape: tuple[int, ...]
    noise: NoiseEstimate
    measured_noise: NoiseEstimate
    grid: SampleGrid


def target_plan(model: ReferenceModel) -> TargetPlan:
    """The :class:`TargetPlan` of ``model`` (the reference's noise measured now if
    only its keywords were known)."""
    measured = model.measured_noise or measure_frame_noise(model.data)
    return TargetPlan(model.data_shape, model.noise, measured, model.grid)


def prepare_target(model: ReferenceModel | TargetPlan, target: np.ndarray, meta=None, *,
                   overwrite_input: bool = False, with_noise: bool = False,
                   mask_out: np.ndarray | None = None) -> PreparedTarget:
    """The first steps of :func:`normalize_frame`: the target checked against the
    reference, its no-data turned into NaN, and its noise measured (``with_noise``).

    A batch runs them on the thread that reads the frames, so that the thread that
    normalizes starts at the stars; the result is the same as on one thread.

    Parameters
    ----------
    model : ReferenceModel or TargetPlan
    target : ndarray
        ``(y, x)`` or ``(c, y, x)`` with the reference's shape.
    meta : FrameMetadata, optional
        The target's metadata (NOISExx keywords), for ``with_noise``.
    overwrite_input, with_noise : bool
        See :func:`normalize_frame`; measure the noise now.
    mask_out : ndarray of bool, optional
        ``(c, y, x)``, C-contiguous: where the no-data mask is made (a batch's shared
        memory); ``no_data`` is then this array when the frame's no-data is zero
        borders only (a registered frame), else a new one.

    Raises
    ------
    NsgError
        Shape or colour depth differ from the reference's; the frame has no data.
    """
    chans, bad = _no_data_as_nan(_check_target(model, target), overwrite_input, mask_out)
    noises = measure_target_noise(model, chans, meta) if with_noise else None
    pixels = target_pixels(model.grid, chans, marked=True)
    return PreparedTarget(chans, bad, np.asarray(target), overwrite_input, noises, pixels)


def normalize_frame(
    model: ReferenceModel,
    target: np.ndarray | PreparedTarget,
    meta=None,
    *,
    gradient_images: bool = False,
    keep_corrected: bool = True,
    overwrite_input: bool = False,
) -> NormalizationResult:
    """Normalize one target to the reference: scale, gradient, correction, weight.

    Parameters
    ----------
    model : ReferenceModel
        From :func:`prepare_reference`.
    target : ndarray or PreparedTarget
        ``(y, x)`` or ``(c, y, x)`` with the reference's shape, own units; or
        what :func:`prepare_target` made of it (its ``overwrite_input`` then holds).
    meta : FrameMetadata, optional
        The target's metadata (NOISExx keywords).
    gradient_images : bool
        Also return the full-size gradient and curvature images.
    keep_corrected : bool
        Compute the corrected image (False: measurements only).
    overwrite_input : bool
        ``target`` (float) may be used as the working copy: its no-data pixels
        become NaN (no 96 MB copy of a 24 Mpx frame, for a caller that no longer
        needs its pixels), and a float32 ``target`` then receives the corrected
        image (``corrected`` is a view of it: no fresh 96 MB output).

    Returns
    -------
    NormalizationResult

    Raises
    ------
    NsgError
        The frame cannot be normalized (shape, colour depth, no data, no star
        pairs, too few gradient samples); the message says why.
    """
    prep = target if isinstance(target, PreparedTarget) else \
        prepare_target(model, target, overwrite_input=overwrite_input)
    chans, bad = prep.chans, prep.no_data
    # the target's noise (for its weight) on a thread of its own, next to the rest
    background = ThreadPoolExecutor(1, thread_name_prefix="nsg-noise") \
        if (prep.noises is None and chans[0].size >= PARALLEL_PIXELS
            and available_threads(2) > 1) else None
    try:
        noise = None if background is None else \
            background.submit(measure_target_noise, model, chans, meta)
        # stars -> photometry -> scale
        sr = _measure_scale(model, chans)
        warnings = list(sr.warnings)
        # samples -> spline
        samples = target_samples(model, chans, sr.scale, marked=True, pixels=prep.pixels)
        nodes, surface, fieldv = fit_gradient(model, samples)
        # weight (the noise first: the correction may overwrite the working copy)
        if prep.noises is not None:
            noises = prep.noises
        else:
            noises = measure_target_noise(model, chans, meta) if noise is None else noise.result()
        corrected = _corrected(model, prep, sr.scale, fieldv) if keep_corrected else None
    finally:
        if background is not None:
            background.shutdown(wait=True)
    wr = compute_weight(*noises, sr.scale)
    warnings.extend(wr.warnings)
    gradient = curvature = None
    if gradient_images:
        mono = prep.target.ndim == 2
        gradient = _masked_full(fieldv, bad, mono)
        curvature = _masked_full(fieldv.minus_plane(), bad, mono)
    return assemble_result(sr, wr, samples, (nodes, surface, fieldv), warnings,
                           corrected=corrected, gradient=gradient, curvature=curvature)


def _corrected(model: ReferenceModel, prep: PreparedTarget, scale,
               fieldv: GradientField) -> np.ndarray:
    out = apply_correction(prep.chans, scale, fieldv, mask=model.no_data,
                           no_data=False if prep.no_data is None else prep.no_data,
                           out=_own_copy(prep.chans, prep.target, prep.overwrite_input))
    return out[0] if prep.target.ndim == 2 else out


def assemble_result(sr: ScaleResult, wr: FrameWeight, samples: Samples, fitted: tuple,
                    warnings: list[str], *, corrected=None, gradient=None,
                    curvature=None) -> NormalizationResult:
    """A :class:`NormalizationResult` from the stages' outputs (``fitted`` is what
    :func:`fit_gradient` returns)."""
    nodes, surface, fieldv = fitted
    return NormalizationResult(
        scale=sr.scale, scale_error=sr.scale_error, transmission=sr.transmission,
        snr=wr.snr, weight=wr.weight, noise=wr.noise, noise_source=wr.source,
        n_star_pairs=sr.n_star_pairs, n_samples=len(samples), n_nodes=len(nodes),
        offset=sr.offset, corrected=corrected, gradient=gradient, curvature=curvature,
        gradient_field=fieldv, surface=surface, samples=samples, scale_result=sr,
        weight_result=wr, warnings=warnings, nodes=nodes,
    )


def target_samples(model: ReferenceModel, target: np.ndarray, scale, *,
                   marked: bool = False, pixels: TargetPixels | None = None) -> Samples:
    """The gradient samples of a target (``(c, y, x)``) at its scale (``marked``: its
    no-data is already NaN; ``pixels``: gathered already; see :func:`measure_samples`).

    Raises
    ------
    NsgError
        Fewer than 3 samples where both frames have data.
    """
    samples = measure_samples(model.grid, target, scale, marked=marked, pixels=pixels)
    if len(samples) < 3:
        raise NsgError(f"only {len(samples)} gradient sample(s) where both frames have data "
                       "(3 needed): the frames hardly overlap")
    return samples


def fit_gradient(model: ReferenceModel, samples: Samples, *, reuse: bool = True
                 ) -> tuple[Samples, SurfaceModel, GradientField]:
    """Bin the samples into nodes, fit the surface and evaluate it on the coarse grid.

    The spline's system is shared by all targets (see :func:`_surface`); the
    returned surface does not keep it (see :meth:`.spline.SurfaceModel.slim`).
    ``reuse=False`` (one target, e.g. a live preview) solves the system once
    instead of inverting it for the targets to come: the same surface, sooner.

    Returns
    -------
    (nodes, surface, gradient_field)
    """
    p = model.params
    nodes = bin_samples(samples, max_samples_for(p.smoothness, p.max_samples))
    surface = _surface(model, samples, nodes, reuse=reuse)
    fieldv = evaluate_gradient(surface, model.coarse, model.taper)
    return nodes, surface.slim(), fieldv


def _surface(model: ReferenceModel, samples: Samples, nodes: Samples, *,
             reuse: bool = True) -> SurfaceModel:
    """Fit the spline, reusing the reference's prepared system when the nodes are
    a large enough subset of the reference's usable bins (not binned).

    The kernel of those bins (and its matrix to the evaluation grid) is kept
    whatever the smoothness; the system of each smoothness is inverted for reuse
    over many targets (``reuse``), or solved once for a single target."""
    p = model.params
    grid = model.grid
    full = grid.usable
    n_full = int(full.sum())
    if (p.is_plane or len(nodes) != len(samples) or n_full > max_samples_for(p.smoothness,
                                                                          p.max_samples)
            or len(nodes) < REUSE_FRACTION * n_full):
        return SplineOperator(nodes.x, nodes.y, smoothness=p.smoothness,
                              weights=nodes.weight).fit(nodes.values)
    op = _cached_operator(model, p.smoothness)
    if reuse:
        op.prepare()
    ids = np.flatnonzero(full)
    index = np.searchsorted(ids, nodes.iy * grid.nx + nodes.ix)
    return op.fit_subset(index, nodes.values)


def _cached_operator(model: ReferenceModel, smoothness: float) -> SplineOperator:
    """The spline operator of the reference's usable bins at this smoothness, from
    the cache (least recently used out), on the bins' kept kernel."""
    grid = model.grid
    key = spline_cache_key(grid, smoothness)
    cache = model.spline_cache
    op = cache.pop(key, None)
    if op is None:
        kernel_key = ("kernel",) + key[:-1]
        kernel = cache.get(kernel_key)
        if kernel is None:
            for old in [k for k in cache if k[0] == "kernel"]:
                del cache[old]  # another node set (the grid was replaced)
            cx, cy = grid.centers
            kernel = cache[kernel_key] = NodeKernel(cx[grid.usable], cy[grid.usable])
        op = SplineOperator(kernel.x, kernel.y, smoothness=smoothness, kernel=kernel)
    operators = [k for k in cache if k[0] != "kernel"]
    for old in operators[: max(0, len(operators) - SPLINE_CACHE_SIZE + 1)]:
        del cache[old]
    cache[key] = op
    return op


def prepare_spline_system(model: ReferenceModel) -> None:
    """Invert the reference's spline system now, as the first target would.

    For a model about to be sent to worker processes: each then starts with the
    inverse (shipped with the model) instead of inverting its own, one thread
    each. A no-op for a plane or when the reference's bins are too many to be
    used unbinned.
    """
    p = model.params
    if p.is_plane or int(model.grid.usable.sum()) > max_samples_for(p.smoothness, p.max_samples):
        return
    _cached_operator(model, p.smoothness).prepare()


REUSE_FRACTION = 0.6  # below this share of the reference's bins a fresh solve is cheaper
SPLINE_CACHE_SIZE = 2  # systems kept per reference (an inverse is 32 MB at 2000 nodes)


def spline_cache_key(grid: SampleGrid, smoothness: float) -> tuple:
    """What the reference's prepared spline system depends on: the node set (the
    grid's geometry and its usable bins; node weights are all 1 there) and the
    smoothness. A model whose parameters or grid were replaced (e.g. with
    :func:`dataclasses.replace`, which shares the cache) never gets a stale system."""
    usable = hashlib.sha1(np.packbits(grid.usable).tobytes()).hexdigest()
    return (grid.size, grid.x0, grid.y0, grid.nx, grid.ny, usable, float(smoothness))


def reference_result(model: ReferenceModel, *, gradient_images: bool = False,
                     keep_corrected: bool = True) -> NormalizationResult:
    """The reference's own result: scale 1, SNR 1, weight 1, no gradient.

    Its output is its own pixels with no-data (NaN, inf) written as 0.
    """
    nc = model.n_channels
    mono = nc == 1
    chans = model.data
    corrected = None
    if keep_corrected:
        corrected = np.where(np.isfinite(chans), chans, 0).astype(np.float32)
        corrected = corrected[0] if mono else corrected
    zero = zero_gradient(model.coarse, nc)
    grad = None
    if gradient_images:
        grad = np.zeros(chans.shape, np.float32)
        grad = grad[0] if mono else grad
    ones = np.ones(nc)
    return NormalizationResult(
        scale=ones, scale_error=np.zeros(nc), transmission=ones.copy(), snr=ones.copy(),
        weight=1.0, noise=np.asarray(model.noise.sigma, float), noise_source=model.noise.source,
        n_star_pairs=np.full(nc, len(model.candidates)), n_samples=int(model.grid.usable.sum()),
        n_nodes=0, offset=(0.0, 0.0), corrected=corrected, gradient=grad,
        curvature=None if grad is None else grad.copy(), gradient_field=zero,
        is_reference=True, warnings=list(model.warnings),
    )
