"""Register a wide-field image onto a narrow-field image's pixel grid (StarAlignment for MSGR)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from ..stars import StarTable, intensity, no_data_mask
from ..stars.detection import detect_stars_binned, plateau_level
from .matching import match_similarity
from .refine import refine_model
from .transforms import WideTransform
from .warp import model_maps, warp_image

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


def _detect(image: np.ndarray, which: str, max_stars: int, min_stars: int) -> StarTable:
    stars = detect_stars_binned(image, detection_binning(image.shape), threshold=5.0, min_area=5,
                                max_stars=max_stars, saturation=plateau_level(image))
    if len(stars) < min_stars:
        raise RegistrationError(
            f"only {len(stars)} star(s) detected in the {which} image; at least {min_stars} "
            "are needed to register", which=which)
    return stars


def _window_fwhm(stars: StarTable) -> float:
    """Centroid window: the median FWHM of the image's stars.

    (Per-star windows, larger for bright stars, were tried: better on isolated
    simulated stars, worse on the crowded, saturated stars of a plate scan.)
    """
    return float(np.median(stars.fwhm))


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
    progress: Progress | None = None,
) -> Registration:
    """Find the narrow -> wide geometric model from the stars of both images.

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
        star pattern in common (no overlap, or a ratio outside the range).
    """
    lo, hi = _check_range(scale_range)
    timings = {}
    warnings = []
    if scale_hint is not None and not (lo * 0.97 <= scale_hint <= hi * 1.03):
        raise RegistrationError(
            f"the scale ratio from the headers ({scale_hint:.3f} narrow px per wide px) is "
            f"outside the range asked ({lo:g} to {hi:g})")
    nlum = intensity(narrow)
    wlum = intensity(wide)
    t0 = time.perf_counter()
    _report(progress, 0, 4, "detecting stars (narrow)")
    ns = narrow_stars if narrow_stars is not None else _detect(nlum, "narrow", max_stars, min_pairs)
    _report(progress, 1, 4, "detecting stars (wide)")
    ws = wide_stars if wide_stars is not None else _detect(wlum, "wide", max_stars, min_pairs)
    timings["detect"] = time.perf_counter() - t0

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
            f"the scale ratio found ({ratio:.3f}) is outside the range asked ({lo:g} to {hi:g})")
    res = float(np.sqrt(np.mean(np.sum(refined.residual_wide**2, axis=1)))) * ratio
    _report(progress, 4, 4, "registered")
    return Registration(
        transform=refined.transform, scale_ratio=float(ratio), rotation_deg=float(rot),
        flip=bool(flip), residual_px=res, residual_homography_px=refined.homography_rms * ratio,
        n_pairs=len(refined.narrow_index), narrow_xy=refined.narrow_xy, wide_xy=refined.wide_xy,
        n_stars_narrow=len(ns), n_stars_wide=len(ws),
        distortion=refined.transform.distortion is not None, scale_hint=scale_hint,
        scale_range=(lo, hi), timings=timings, warnings=warnings)


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
    map_x, map_y = model_maps(transform, narrow_shape)
    registered = warp_image(wide, map_x, map_y, interpolation)
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
