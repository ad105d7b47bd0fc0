"""Register a wide-field image onto a narrow-field image's pixel grid (StarAlignment for MSGR)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from ..stars import StarTable, intensity, no_data_mask
from ..stars.detection import detect_stars_binned, plateau_level
from .intensity import MIN_CORRELATION as INTENSITY_MIN_CORRELATION
from .intensity import (
    IntensityError,
    correlations,
    local_similarity_matrix,
    refine_seed,
    register_by_intensity,
    rescaled,
    search_around,
    search_scales,
)
from .matching import match_similarity
from .refine import refine_model
from .transforms import WideTransform
from .warp import warp_model
from .wcs import CHECK_PAIRS, WcsError, celestial_wcs, register_by_wcs

__all__ = [
    "DEFAULT_SCALE_RANGE",
    "Registration",
    "RegistrationError",
    "apply_registration",
    "register_wide_to_narrow",
    "solve_registration",
]

#: Scale ratios (narrow pixels per wide pixel) searched when none is known.
DEFAULT_SCALE_RANGE = (1.5, 6.0)
#: How the model was found: star patterns, the headers' WCS, or the image structure.
METHODS = ("stars", "wcs", "intensity")
#: Fewest stars in each image for the intensity fallback's seeds.
FALLBACK_MIN_STARS = 3
#: A WCS that fewer than CHECK_PAIRS stars confirm is checked against the image structure
#: searched around it: if the structure's model lies further than this (wide px, anywhere
#: in the narrow field; the stars' own tolerance) from the WCS's, the WCS is not used.
WCS_STRUCTURE_TOLERANCE = 1.5
#: ... and only if the structure's model correlates clearly better than the WCS's: by at least
#: WCS_MIN_GAIN (correlations of the band-passed images, 0..1). Right WCS on simulated starless
#: pairs (300x400 seeds 1-8, 600x800, 1200x1600): the structure's optimum sat up to 1.6 wide px
#: away (1200x1600) but correlated at most 0.0002 better; a WCS 3 deg off: 0.014 (300x400,
#: seed 3) to 0.095 better; 35-45 px off: 0.11-0.75.
WCS_MIN_GAIN = 0.003
#: Narrow pixels per side of the grid on which two models are compared.
COMPARE_SIDE = 9

Progress = Callable[[int, int, str], None]


class RegistrationError(ValueError):
    """The wide image cannot be registered onto the narrow one.

    Attributes
    ----------
    which : {"narrow", "wide", None}
        The image at fault when one is (too few stars), else None.
    """

    def __init__(self, message: str, which: str | None = None):
        super().__init__(message)
        self.which = which


@dataclass
class Registration:
    """The wide image on the narrow grid, and how it got there.

    Attributes
    ----------
    transform : WideTransform
        Narrow pixel ``(x, y)`` -> wide pixel ``(x, y)``: homography plus
        distortion spline (if it helped).
    scale_ratio : float
        Narrow pixels per wide pixel at the narrow centre (wide pixel scale /
        narrow pixel scale in arcsec/px).
    rotation_deg : float
        Rotation of the narrow -> wide map at the narrow centre, degrees,
        in pixel coordinates (x right, y down).
    flip : bool
        The map is mirrored.
    residual_px : float
        RMS distance of the matched stars from the model, in narrow pixels.
    residual_homography_px : float
        The same for the homography alone (before the distortion spline).
    n_pairs : int
        Stars matched and used for the model.
    narrow_xy, wide_xy : ndarray, (n, 2)
        The matched star positions in each image.
    n_stars_narrow, n_stars_wide : int
        Stars detected in each image.
    distortion : bool
        Whether a distortion spline is part of the model.
    scale_hint : float or None
        The ratio expected from the headers, if given.
    scale_range : (float, float)
        The range searched.
    registered : ndarray or None
        The wide image resampled onto the narrow grid (float32, NaN = no data),
        ``(h, w)`` or ``(c, h, w)``.
    coverage : ndarray of bool or None
        True where ``registered`` has data.
    coverage_fraction : float or None
        Fraction of the narrow pixels that have wide data.
    timings : dict
        Seconds per step.
    warnings : list of str
    method : {"stars", "wcs", "intensity"}
        How the model was found: star patterns (the normal path), or, when
        those fail, the WCS of both headers or the images' structure seeded by
        the few stars that match (:mod:`.wcs`, :mod:`.intensity`).
    quality : dict
        The fallback's own measures (empty for ``"stars"``): for ``"wcs"``
        ``grid_rms_px``, ``star_pairs``, ``star_rms_px``, and when fewer than 3 stars
        confirm it ``structure_correlation`` and ``structure_px`` (how far the image
        structure's model lies from the WCS's; None when the structure cannot check it);
        for ``"intensity"`` ``correlation``, ``margin`` (None with one candidate),
        ``disagreement_px``, ``seeds``, ``seed_pairs``, ``star_pairs``, ``star_rms_px``
        (narrow px), plus ``wcs_refused`` (the stars contradicted the WCS) or
        ``wcs_offset_px`` and ``wcs_correlation`` (the structure, seeded by a WCS no star
        confirms, put the wide image that far from it).
    """

    transform: WideTransform
    scale_ratio: float
    rotation_deg: float
    flip: bool
    residual_px: float
    residual_homography_px: float
    n_pairs: int
    narrow_xy: np.ndarray
    wide_xy: np.ndarray
    n_stars_narrow: int
    n_stars_wide: int
    distortion: bool
    scale_hint: float | None
    scale_range: tuple[float, float]
    registered: np.ndarray | None = None
    coverage: np.ndarray | None = None
    coverage_fraction: float | None = None
    timings: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    method: str = "stars"
    quality: dict = field(default_factory=dict)

    def method_text(self) -> str:
        """How the model was found, with the fallback's measures, in words."""
        q = self.quality
        if self.method == "wcs":
            check = (f"{q['star_pairs']} matching stars at {q['star_rms_px']:.2f} px"
                     if q.get("star_pairs") else "no star matches to check it")
            if q.get("structure_agrees"):
                check += f"; the image structure agrees within {q['structure_px']:.2f} px"
            elif q.get("structure_px") is not None:
                check += (f"; the image structure does not contradict it (its own model, "
                          f"{q['structure_px']:.2f} px away, correlates only "
                          f"{q['structure_gain']:.4f} better)")
            elif "structure_px" in q:
                check += "; the image structure cannot check it either"
            return f"WCS of both headers (model vs WCS {q['grid_rms_px']:.3f} px; {check})"
        if self.method == "intensity":
            seed = (f"the WCS, {q['wcs_offset_px']:.1f} px off" if q.get("wcs_offset_px")
                    else f"{q['seed_pairs']} star pairs")
            if q.get("wcs_scale_ratio"):
                seed += f", its pixel scale {q['wcs_scale_ratio']:.3f}x off"
            stars = (f"{q['star_pairs']} stars at {q['star_rms_px']:.2f} px"
                     if q.get("star_pairs") else "no star to check it")
            how = "correlation" if q.get("wcs_offset_px") else "ECC correlation"
            return (f"image structure seeded by {seed} ({how} "
                    f"{q['correlation']:.3f}, runs agree within {q['disagreement_px']:.2f} px, "
                    f"{stars})")
        return f"stars ({self.n_pairs} pairs)"

    def summary(self) -> dict:
        """The numbers, JSON-ready."""
        return {
            "scale_ratio": self.scale_ratio,
            "rotation_deg": self.rotation_deg,
            "flip": self.flip,
            "residual_px": self.residual_px,
            "residual_homography_px": self.residual_homography_px,
            "n_pairs": self.n_pairs,
            "n_stars_narrow": self.n_stars_narrow,
            "n_stars_wide": self.n_stars_wide,
            "distortion": self.distortion,
            "scale_hint": self.scale_hint,
            "scale_range": list(self.scale_range),
            "coverage_fraction": self.coverage_fraction,
            "warnings": list(self.warnings),
            "method": self.method,
            "quality": dict(self.quality),
        }


def _report(progress: Progress | None, done: int, total: int, message: str) -> None:
    if progress is not None:
        progress(done, total, message)


#: Images with more pixels than this are searched for stars 2x2-binned (4x less work;
#: the refinement re-measures every paired star on the full image).
BIN_ABOVE_PIXELS = 8_000_000


def detection_binning(shape: tuple[int, int]) -> int:
    """The binning factor of the star search for an image of ``shape``."""
    return 2 if shape[0] * shape[1] > BIN_ABOVE_PIXELS else 1


#: Detection threshold (sigma) of the star search, and of a first, quick search on
#: binned (large) images: on a crowded field it already finds the ``max_stars``
#: brightest, at a fraction of the cost (fewer pixels above it to label and deblend).
DETECT_THRESHOLD = 5.0
QUICK_THRESHOLD = 12.0


def _detect(image: np.ndarray, max_stars: int) -> StarTable:
    k = detection_binning(image.shape)
    kw = {"min_area": 5, "max_stars": max_stars, "saturation": plateau_level(image)}
    if k > 1:  # one background map for both searches
        kw["quick_threshold"] = QUICK_THRESHOLD
    return detect_stars_binned(image, k, threshold=DETECT_THRESHOLD, **kw)


def _check_count(stars: StarTable, which: str, min_stars: int) -> None:
    if len(stars) < min_stars:
        raise RegistrationError(
            f"only {len(stars)} star(s) detected in the {which} image; at least {min_stars} "
            "are needed to register", which=which)


def _window_fwhm(stars: StarTable) -> float:
    """Centroid window: the median FWHM of the image's stars.

    (Per-star windows, larger for bright stars, were tried: better on isolated
    simulated stars, worse on the crowded, saturated stars of a plate scan.)
    """
    return float(np.median(stars.fwhm))


def _swapped_hint(ratio: float) -> str:
    """What to say when the "narrow" image has the larger pixels (ratio below 1)."""
    if not 0 < ratio < 1:
        return ""
    return (": the two images look swapped (the narrow-field image is the one with the "
            "smaller pixels)")


def _check_range(scale_range: tuple[float, float]) -> tuple[float, float]:
    lo, hi = float(scale_range[0]), float(scale_range[1])
    if not (0 < lo <= hi):
        raise ValueError(f"invalid scale range {scale_range}: need 0 < low <= high")
    return lo, hi


def solve_registration(
    narrow: np.ndarray,
    wide: np.ndarray,
    *,
    scale_hint: float | None = None,
    scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
    allow_flip: bool = True,
    distortion: bool = True,
    min_pairs: int = 6,
    max_stars: int = 4000,
    narrow_stars: StarTable | None = None,
    wide_stars: StarTable | None = None,
    narrow_wcs=None,
    wide_wcs=None,
    fallback: bool = True,
    progress: Progress | None = None,
) -> Registration:
    """Find the narrow -> wide geometric model from the stars of both images.

    When the star patterns cannot be matched (too few stars, or too few in
    common: a star-poor narrow field), and ``fallback`` is on, the model comes
    from the WCS of both images if both have one (:func:`~.wcs.register_by_wcs`),
    else from the images' structure seeded by the few stars that match
    (:func:`~.intensity.register_by_intensity`); ``method`` and ``quality`` of
    the result say which and how well, and a warning says why. A fallback that
    is not trustworthy is refused like the star match. A WCS that fewer than 3
    stars confirm is checked against the image structure searched around it, and
    replaced by the structure's model when they disagree by more than
    ``WCS_STRUCTURE_TOLERANCE`` wide px (refused when that model is not well
    determined); a WCS the stars contradict lets the star-seeded structure try.

    Parameters
    ----------
    narrow, wide : ndarray, (y, x) or (c, y, x)
        The images (colour is solved on the mean of the channels).
    scale_hint : float, optional
        Expected scale ratio (narrow px per wide px), e.g. from the headers'
        pixel scales. Searched first within +-10 %, then the whole range.
    scale_range : (float, float)
        Scale ratios accepted (default 1.5 to 6).
    allow_flip : bool
        Accept a mirrored solution.
    distortion : bool
        Model the homography's residuals with a smoothing thin-plate spline.
    min_pairs : int
        Fewest matched stars accepted.
    max_stars : int
        Brightest stars kept per image.
    narrow_stars, wide_stars : StarTable, optional
        Detections already made on these images.
    narrow_wcs, wide_wcs : astropy.wcs.WCS or astropy.io.fits.Header, optional
        The images' world coordinates (headers), for the WCS fallback.
    fallback : bool
        Try the WCS / intensity fallbacks when the stars do not match.
    progress : callable, optional
        ``progress(done, total, message)``: per stage and per window of the
        star-pattern search; it may raise (e.g. ``Cancelled``) to stop the
        registration there.

    Returns
    -------
    Registration
        Without the resampled image (see :func:`register_wide_to_narrow`).

    Raises
    ------
    RegistrationError
        Too few stars in one image, the scale hint outside ``scale_range``, no
        star pattern in common (no overlap, or a ratio outside the range), and
        the fallback failed too (its reason appended).
    """
    lo, hi = _check_range(scale_range)
    timings = {}
    warnings = []
    if scale_hint is not None and not (lo * 0.97 <= scale_hint <= hi * 1.03):
        raise RegistrationError(
            f"the scale ratio from the headers ({scale_hint:.3f} narrow px per wide px) is "
            f"outside the range asked ({lo:g} to {hi:g}){_swapped_hint(scale_hint)}")
    nlum = intensity(narrow)
    wlum = intensity(wide)
    t0 = time.perf_counter()
    _report(progress, 0, 4, "detecting stars (narrow)")
    ns = narrow_stars if narrow_stars is not None else _detect(nlum, max_stars)
    _report(progress, 1, 4, "detecting stars (wide)")
    ws = wide_stars if wide_stars is not None else _detect(wlum, max_stars)
    timings["detect"] = time.perf_counter() - t0
    kw = {"lo": lo, "hi": hi, "scale_hint": scale_hint, "allow_flip": allow_flip,
          "timings": timings, "warnings": warnings}
    try:
        return _solve_by_stars(nlum, wlum, ns, ws, distortion=distortion, min_pairs=min_pairs,
                               progress=progress, **kw)
    except RegistrationError as exc:
        if not fallback:
            raise
        _report(progress, 3, 4, "stars do not match: trying the fallback")
        return _solve_fallback(exc, nlum, wlum, ns, ws, narrow_wcs, wide_wcs, **kw)


def _solve_by_stars(nlum, wlum, ns, ws, *, lo, hi, scale_hint, allow_flip, distortion,
                    min_pairs, progress, timings, warnings) -> Registration:
    """The star path: pattern match, refinement, checks."""
    _check_count(ns, "narrow", min_pairs)
    _check_count(ws, "wide", min_pairs)
    t0 = time.perf_counter()
    _report(progress, 2, 4, "matching star patterns")
    searches = [(lo, hi)]
    if scale_hint is not None:
        searches = [(max(lo, scale_hint / 1.1), min(hi, scale_hint * 1.1)), (lo, hi)]
    match = None
    for rng in searches:
        match = match_similarity(
            ns.xy, ws.xy, nlum.shape, wlum.shape, scale_range=rng, allow_flip=allow_flip,
            min_pairs=min_pairs,
            progress=None if progress is None else lambda d, t, m: _report(progress, 2, 4, m))
        if match is not None:
            break
    timings["match"] = time.perf_counter() - t0
    if match is None:
        raise RegistrationError(
            f"no star pattern of the narrow image was found in the wide image for scale ratios "
            f"{lo:g} to {hi:g} ({len(ns)} and {len(ws)} stars): the images may not overlap, or "
            "their scale ratio is outside that range")
    if scale_hint is not None and abs(match.scale_ratio / scale_hint - 1) > 0.1:
        warnings.append(f"the scale ratio found ({match.scale_ratio:.3f}) differs from the "
                        f"headers' ({scale_hint:.3f})")

    t0 = time.perf_counter()
    _report(progress, 3, 4, "fitting the distortion model")
    # saturated in either image: paired, but kept out of the fits
    exclude = ns.saturated.copy()
    if ws.saturated.any():
        pred = match.similarity(ns.xy)
        near = cKDTree(ws.xy).query(pred, distance_upper_bound=3.0)[1]
        hit = near < len(ws)
        exclude[hit] |= ws.saturated[near[hit]]
    try:
        refined = refine_model(
            ns.xy, ws.xy, match.similarity, narrow_image=nlum, wide_image=wlum, exclude=exclude,
            narrow_fwhm=_window_fwhm(ns), wide_fwhm=_window_fwhm(ws),
            narrow_shape=nlum.shape, tol=2.5, distortion=distortion, min_pairs=min_pairs)
    except ValueError as exc:
        raise RegistrationError(f"the star match could not be refined: {exc}") from None
    timings["refine"] = time.perf_counter() - t0
    h, w = nlum.shape
    ratio, rot, flip = refined.transform.local_similarity(((w - 1) / 2.0, (h - 1) / 2.0))
    if not (lo * 0.97 <= ratio <= hi * 1.03):
        raise RegistrationError(
            f"the scale ratio found ({ratio:.3f}) is outside the range asked ({lo:g} to {hi:g})"
            f"{_swapped_hint(ratio)}")
    res = float(np.sqrt(np.mean(np.sum(refined.residual_wide**2, axis=1)))) * ratio
    _report(progress, 4, 4, "registered")
    return Registration(
        transform=refined.transform, scale_ratio=float(ratio), rotation_deg=float(rot),
        flip=bool(flip), residual_px=res, residual_homography_px=refined.homography_rms * ratio,
        n_pairs=len(refined.narrow_index), narrow_xy=refined.narrow_xy, wide_xy=refined.wide_xy,
        n_stars_narrow=len(ns), n_stars_wide=len(ws),
        distortion=refined.transform.distortion is not None, scale_hint=scale_hint,
        scale_range=(lo, hi), timings=timings, warnings=warnings)


def _fallback_model(exc, nlum, wlum, ns, ws, narrow_wcs, wide_wcs, rng, allow_flip):
    """``(method, transform, quality, narrow_xy, wide_xy)`` of the WCS or intensity fallback."""
    if celestial_wcs(narrow_wcs) is not None and celestial_wcs(wide_wcs) is not None:
        try:
            m = register_by_wcs(narrow_wcs, wide_wcs, nlum.shape, ns.xy, ws.xy)
        except WcsError as err:
            # the stars contradict the WCS: the stars may still seed the image structure
            method, transform, quality, nxy, wxy = _intensity_model(
                exc, nlum, wlum, ns, ws, rng, allow_flip,
                because=f"the WCS fallback failed: {err}")
            quality["wcs_refused"] = str(err)
            return method, transform, quality, nxy, wxy
        quality = {"grid_rms_px": m.grid_rms_px, "star_pairs": len(m.narrow_xy),
                   "star_rms_px": m.star_rms_px if len(m.narrow_xy) else None}
        if len(m.narrow_xy) >= CHECK_PAIRS:
            return "wcs", m.transform, quality, m.narrow_xy, m.wide_xy
        return _structure_check(exc, nlum, wlum, ns, ws, m, quality)
    return _intensity_model(exc, nlum, wlum, ns, ws, rng, allow_flip,
                            because="no WCS in both headers")


def _intensity_model(exc, nlum, wlum, ns, ws, rng, allow_flip, *, because):
    """The star-seeded intensity fallback (or the error, with ``because`` and its reason)."""
    if len(ns) < FALLBACK_MIN_STARS or len(ws) < FALLBACK_MIN_STARS:
        raise RegistrationError(f"{exc}; {because}, and too few stars to seed a "
                                "registration by the image structure", which=exc.which)
    try:
        m = register_by_intensity(nlum, wlum, ns.xy, ws.xy, scale_range=rng,
                                  allow_flip=allow_flip)
    except IntensityError as err:
        text = "" if because.startswith("no WCS") else f"{because}; "
        raise RegistrationError(f"{exc}; {text}the registration by the image structure failed "
                                f"too: {err}", which=exc.which) from None
    return "intensity", WideTransform(homography=m.matrix), _intensity_quality(m), \
        m.narrow_xy, m.wide_xy


def _intensity_quality(m, **extra) -> dict:
    return {"correlation": m.correlation,
            "margin": m.margin if np.isfinite(m.margin) else None,  # None: one candidate
            "disagreement_px": m.disagreement_px, "seeds": m.seeds,
            "seed_pairs": m.seed_pairs, "star_pairs": len(m.narrow_xy),
            "star_rms_px": m.star_rms_px, **extra}


def _model_distance(t1, t2, shape: tuple[int, int]) -> float:
    """Largest distance (wide px) between two narrow -> wide maps over the narrow field."""
    h, w = shape
    yy, xx = np.meshgrid(np.linspace(0, h - 1, COMPARE_SIDE), np.linspace(0, w - 1, COMPARE_SIDE),
                         indexing="ij")
    xy = np.column_stack([xx.ravel(), yy.ravel()])
    return float(np.max(np.hypot(*(np.asarray(t1(xy)) - np.asarray(t2(xy))).T)))


def _structure_check(exc, nlum, wlum, ns, ws, m, quality):
    """A WCS that no star confirms, checked against the images' structure searched around it
    (at its scale and at the scales of SCALE_SCAN: a header's pixel scale can be wrong too):
    kept when the structure agrees (or has too little to say), replaced by the structure's
    model when they disagree and that model is well determined, else refused."""
    seed = local_similarity_matrix(m.transform, nlum.shape)
    search = search_around(nlum, wlum, seed)
    search, free_scale = _scale_checked(nlum, wlum, seed, search, quality)
    quality["structure_correlation"] = search.correlation
    if search.correlation < INTENSITY_MIN_CORRELATION:
        quality["structure_px"] = None  # too little structure: unchecked, as the text says
        return "wcs", m.transform, quality, m.narrow_xy, m.wide_xy
    scale = np.sqrt(abs(np.linalg.det(seed[:2, :2])))  # wide px per narrow px
    try:
        found = refine_seed(nlum, wlum, search, ns.xy, ws.xy, free_scale=free_scale)
    except IntensityError as err:
        return _unrefined(exc, search, m, quality, scale, nlum.shape, err)
    transform = WideTransform(homography=found.matrix)
    off = _model_distance(transform, m.transform, nlum.shape)
    at_wcs, at_found = correlations(nlum, wlum, [seed, found.matrix])
    quality["structure_px"] = off / scale
    quality["structure_agrees"] = off <= WCS_STRUCTURE_TOLERANCE
    quality["structure_gain"] = at_found - at_wcs
    if quality["structure_agrees"] or quality["structure_gain"] < WCS_MIN_GAIN:
        return "wcs", m.transform, quality, m.narrow_xy, m.wide_xy
    extra = {"wcs_scale_ratio": float(np.sqrt(abs(np.linalg.det(found.matrix[:2, :2])))
                                      / scale)} if free_scale else {}
    q = _intensity_quality(found, wcs_offset_px=off / scale, wcs_correlation=at_wcs,
                           wcs_gain=at_found - at_wcs, **extra)
    return "intensity", transform, q, found.narrow_xy, found.wide_xy


def _scale_checked(nlum, wlum, seed, search, quality):
    """The search at another scale than the WCS's when the structure correlates better there
    (coarse scan, then the usual search at the best factor): the headers' pixel scales
    themselves are wrong (a wrong focal length or pixel size, a frame binned after its WCS
    was written); and whether the refinement must free the scale."""
    coarse = search_scales(nlum, wlum, seed)
    factor = max(coarse, key=lambda f: coarse[f].correlation)
    if factor == 1.0 or coarse[factor].correlation <= coarse[1.0].correlation + WCS_MIN_GAIN:
        return search, False
    other = search_around(nlum, wlum, rescaled(seed, factor, nlum.shape))
    if other.correlation <= search.correlation + WCS_MIN_GAIN:
        return search, False
    quality["structure_scale_factor"] = factor
    return other, True


def _unrefined(exc, search, m, quality, scale, shape, err):
    """The structure's best place could not be refined: the WCS is kept (unchecked) when
    that place is near it (within the search grid's pixel) or correlates hardly better than
    the WCS's, else refused."""
    off = _model_distance(lambda xy: xy @ search.matrix[:2, :2].T + search.matrix[:2, 2],
                          m.transform, shape)
    near = off <= WCS_STRUCTURE_TOLERANCE + search.grid_px * scale
    if near or search.correlation - search.seed_correlation < WCS_MIN_GAIN:
        quality["structure_px"] = None
        return "wcs", m.transform, quality, m.narrow_xy, m.wide_xy
    raise RegistrationError(
        f"{exc}; the WCS of the headers, which no star confirms, disagrees with the image "
        f"structure (which correlates {search.correlation:.2f} {off / scale:.0f} narrow px "
        f"away from it, {search.seed_correlation:.2f} at it), and the structure's own model "
        f"is not trustworthy: {err}", which=exc.which)


def _solve_fallback(exc, nlum, wlum, ns, ws, narrow_wcs, wide_wcs, *, lo, hi, scale_hint,
                    allow_flip, timings, warnings) -> Registration:
    """The WCS or intensity model when the star patterns do not match (or the error)."""
    t0 = time.perf_counter()
    rng = (lo, hi)
    if scale_hint is not None:
        rng = (max(lo, scale_hint / 1.1), min(hi, scale_hint * 1.1))
    method, transform, quality, nxy, wxy = _fallback_model(
        exc, nlum, wlum, ns, ws, narrow_wcs, wide_wcs, rng, allow_flip)
    timings["fallback"] = time.perf_counter() - t0
    h, w = nlum.shape
    ratio, rot, flip = transform.local_similarity(((w - 1) / 2.0, (h - 1) / 2.0))
    if not (lo * 0.97 <= ratio <= hi * 1.03):
        raise RegistrationError(f"{exc}; the {method} fallback gives a scale ratio of {ratio:.3f}, "
                                f"outside the range asked ({lo:g} to {hi:g})", which=exc.which)
    # no star to measure it: the WCS grid fit, or how far apart the ECC runs end
    res = (quality["star_rms_px"] if len(nxy)
           else quality.get("grid_rms_px", quality.get("disagreement_px", float("nan"))))
    reg = Registration(
        transform=transform, scale_ratio=float(ratio), rotation_deg=float(rot), flip=bool(flip),
        residual_px=float(res), residual_homography_px=float(res), n_pairs=len(nxy),
        narrow_xy=nxy, wide_xy=wxy, n_stars_narrow=len(ns), n_stars_wide=len(ws),
        distortion=transform.distortion is not None, scale_hint=scale_hint, scale_range=(lo, hi),
        timings=timings, warnings=warnings, method=method, quality=quality)
    warnings.append(f"the star patterns did not match ({exc}); registered by "
                    f"{reg.method_text()}")
    if quality.get("wcs_refused"):
        warnings.append(f"the headers' WCS was not used ({quality['wcs_refused']}): registered "
                        "by the image structure instead; check the plate solutions")
    if quality.get("wcs_offset_px"):
        warnings.append(f"the headers' WCS is {quality['wcs_offset_px']:.1f} narrow px off the "
                        "image structure (and no star confirms it): registered by the structure "
                        "instead; check the plate solutions")
    return reg


def apply_registration(
    wide: np.ndarray,
    transform,
    narrow_shape: tuple[int, int],
    *,
    interpolation: str = "cubic",
) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``wide`` onto the narrow grid; returns ``(registered, coverage)``.

    ``registered`` is float32 with NaN where the wide image has no data;
    ``coverage`` is True where it has data (in every channel).
    """
    registered = warp_model(wide, transform, tuple(narrow_shape), interpolation)
    valid = ~no_data_mask(registered)
    coverage = valid if valid.ndim == 2 else valid.all(axis=0)
    return registered, coverage


def register_wide_to_narrow(
    narrow: np.ndarray,
    wide: np.ndarray,
    *,
    scale_hint: float | None = None,
    scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
    allow_flip: bool = True,
    distortion: bool = True,
    interpolation: str = "cubic",
    min_coverage: float = 0.5,
    min_pairs: int = 6,
    narrow_wcs=None,
    wide_wcs=None,
    fallback: bool = True,
    progress: Progress | None = None,
) -> Registration:
    """Register ``wide`` onto ``narrow``'s pixel grid (detect, match, model, resample).

    Parameters are those of :func:`solve_registration`, plus:

    interpolation : {"cubic", "lanczos", "linear"}
        Resampling kernel (OpenCV ``remap``).
    min_coverage : float
        Fewest fraction of the narrow image's valid pixels that the wide image
        must cover.

    Returns
    -------
    Registration
        With ``registered``, ``coverage`` and ``coverage_fraction`` set.

    Raises
    ------
    RegistrationError
        See :func:`solve_registration`; also when the wide image covers less
        than ``min_coverage`` of the narrow one ("no overlap" when nothing).
    """
    reg = solve_registration(narrow, wide, scale_hint=scale_hint, scale_range=scale_range,
                             allow_flip=allow_flip, distortion=distortion, min_pairs=min_pairs,
                             narrow_wcs=narrow_wcs, wide_wcs=wide_wcs, fallback=fallback,
                             progress=progress)
    _report(progress, 4, 4, "resampling the wide image")
    t0 = time.perf_counter()
    shape = np.shape(narrow)[-2:]
    registered, coverage = apply_registration(wide, reg.transform, shape,
                                              interpolation=interpolation)
    narrow_valid = ~no_data_mask(intensity(narrow))
    frac = float((coverage & narrow_valid).sum()) / max(1, int(narrow_valid.sum()))
    reg.timings["warp"] = time.perf_counter() - t0
    if frac == 0:
        raise RegistrationError("no overlap: the wide image covers none of the narrow image")
    if frac < min_coverage:
        raise RegistrationError(
            f"the wide image covers only {100 * frac:.1f}% of the narrow image "
            f"(at least {100 * min_coverage:.0f}% needed)")
    if frac < 0.999:
        reg.warnings.append(f"the wide image covers {100 * frac:.1f}% of the narrow image; the "
                            "gradient model is extrapolated elsewhere")
    reg.registered = registered
    reg.coverage = coverage
    reg.coverage_fraction = frac
    return reg
