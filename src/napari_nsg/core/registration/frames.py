"""Registering sub-frames of one target onto a reference frame (same pixel scale).

The MSGR engine (:func:`~.register.solve_registration`) is used with a scale
range near 1 (:data:`FRAME_SCALE_RANGE`): its triangle matcher is rotation and
mirror invariant, so dithers, field rotation and a 180 degree meridian flip
need nothing more. Its refined star pairs (windowed centroids) are then fitted
by the model asked for:

``similarity``  shift, rotation, one scale (4 parameters);
``affine``      6 parameters;
``projective``  a homography (8), the default;

each only when enough pairs support it (30 for a homography, 12 for an affine
map, as the MSGR refinement): with fewer, the next simpler model is fitted and
a warning says so. Among the models the pairs support, the simplest one that
the star pairs do not reject is fitted (an F-test of the residuals at
:data:`MODEL_TEST_LEVEL`): extra terms the pairs cannot tell from zero only fit
centroid noise (a faint field's 14 pairs: 0.13 px with an affine map, 0.06 px
with the similarity that is the truth).
plus an optional smooth distortion spline (``distortion=True``).

Resampling (:func:`resample`, default ``lanczos-clamped``) uses the Lanczos
kernel (a = 4, OpenCV's) with a floor: no sample may fall below the darkest of
the 4x4 pixels around it. Maps of frames of one camera (rotation and shift
within 0.01 px) run it as three 1-D shear passes (:mod:`.separable`, 8 taps a
pass instead of 8x8); other maps through OpenCV's 2-D warps. Lanczos keeps star
profiles and noise sharpest of the kernels OpenCV offers (least smoothing), but like every
sinc-like kernel it rings: a dark undershoot around bright, undersampled
stars, which a later rejection or a stretch turns into black rings. The floor
removes the undershoot and leaves the peaks alone (clamping both sides, as
PixInsight's clamped Lanczos does at a threshold, flattened undersampled peaks
by 27-40 % here). Measured numbers are in ``docs/register.md``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..nodata import find_no_data, no_data_mask
from ..star_removal import saturation_level
from ..stars import StarTable, detect_stars, intensity
from ..stars.detection import lone_peaks
from .frame_match import match_frame, reference_index
from .frame_stars import bright_stars
from .refine import _choose_spline, _fit_spline
from .register import RegistrationError, solve_registration
from .separable import (
    LANCZOS_A,
    ShearPlan,
    output_array,
    prepare_work_arrays,
    release_shear_scratch,
    results_size,
    shear_plan,
    warp_shears,
    warp_shift,
    work_array,
)
from .transforms import (
    AFFINE_MIN_PAIRS,
    HOMOGRAPHY_MIN_PAIRS,
    WideTransform,
    fit_affine,
    fit_homography,
    fit_similarity,
)
from .warp import model_maps

__all__ = [
    "FRAME_MODELS",
    "FRAME_SCALE_RANGE",
    "RESAMPLERS",
    "FrameRegistration",
    "detect_frame_stars",
    "detect_reference_stars",
    "prepare_scratch",
    "register_frame",
    "release_scratch",
    "resample",
]

#: Scale ratios searched between frames of one camera (focus and refraction change it by < 1 %).
FRAME_SCALE_RANGE = (0.95, 1.05)
FRAME_MODELS = ("similarity", "affine", "projective")
RESAMPLERS = ("lanczos-clamped", "lanczos", "cubic", "linear")
DETECT_THRESHOLD = 5.0
DETECT_MIN_AREA = 5
MAX_STARS = 1000
#: Frames with more pixels are searched for stars on a binned image: the reference (once) on
#: its 2x2 binning by sep, the others on their 4x4 binning for their MAX_FRAME_STARS brightest.
BIN_ABOVE_PIXELS = 8_000_000
MAX_FRAME_STARS = 800
MIN_PAIRS = 6
#: Smoothings tried (cross-validated) for the distortion spline.
SPLINE_SMOOTHINGS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
SPLINE_MIN_PAIRS = 20
#: The clamp: no sample below the darkest of the CLAMP_SIZE^2 pixels around it.
CLAMP_SIZE = 4
CLAMP_ANCHOR = 1
#: As :func:`~..star_removal.saturation_level`: a plateau of SATURATION_MIN_PIXELS pixels within
#: SATURATION_NEAR of the maximum marks stars from SATURATION_FRACTION of it as saturated.
SATURATION_NEAR = 0.98
SATURATION_MIN_PIXELS = 5
SATURATION_FRACTION = 0.9


@dataclass
class FrameRegistration:
    """How one frame maps onto the reference.

    Attributes
    ----------
    transform : WideTransform
        Reference pixel ``(x, y)`` -> frame pixel ``(x, y)``.
    model : str
    residual_px : float
        RMS distance of the matched stars from the model (px).
    n_pairs : int
    n_stars : int
        Stars detected in the frame.
    rotation_deg, scale : float
        Of the map at the reference centre (scale in frame px per reference px).
    shift : (float, float)
        Where the reference centre lands in the frame, minus the centre.
    flip : bool
        Mirrored (never for frames of one camera; reported if found).
    warnings : list of str
    """

    transform: WideTransform
    model: str
    residual_px: float
    n_pairs: int
    n_stars: int
    rotation_deg: float
    scale: float
    shift: tuple
    flip: bool
    warnings: list = field(default_factory=list)


def _saturation_level(lum: np.ndarray) -> float | None:
    """:func:`~..star_removal.saturation_level` without copying the finite pixels out (one
    NaN-skipping max and one count over the frame instead of a 24 Mpx boolean gather)."""
    top = float(np.fmax.reduce(lum, axis=None)) if lum.size else float("nan")
    if not np.isfinite(top):  # all NaN, or +inf present: the exact (slower) definition
        return saturation_level(lum)
    if top <= 0 or np.count_nonzero(lum >= SATURATION_NEAR * top) < SATURATION_MIN_PIXELS:
        return None
    return SATURATION_FRACTION * top


def detect_reference_stars(image: np.ndarray) -> StarTable:
    """The reference's stars (detected once for all frames): sep, the brightest :data:`MAX_STARS`.

    Frames above :data:`BIN_ABOVE_PIXELS` are searched on their 2x2-binned
    intensity (4x less work; positions and sizes brought back to full
    pixels): the matching re-measures every star on the full image.
    """
    lum = intensity(image)
    sat = _saturation_level(lum)
    kw = {"threshold": DETECT_THRESHOLD, "min_area": DETECT_MIN_AREA, "max_stars": None,
          "saturation": sat}
    if lum.size <= BIN_ABOVE_PIXELS:
        return _without_hot_pixels(lum, detect_stars(lum, **kw))
    h, w = (lum.shape[0] // 2) * 2, (lum.shape[1] // 2) * 2
    # the mean of each 2x2 block (INTER_AREA at exactly 1/2): 10x faster than numpy's mean
    binned = cv2.resize(np.ascontiguousarray(lum[:h, :w]), (w // 2, h // 2),
                        interpolation=cv2.INTER_AREA)
    st = detect_stars(binned, **kw)
    for name in ("x", "y"):
        setattr(st, name, 2.0 * getattr(st, name) + 0.5)
    for name in ("a", "b", "fwhm"):
        setattr(st, name, 2.0 * getattr(st, name))
    st.npix = st.npix * 4
    return _without_hot_pixels(lum, st)


def _without_hot_pixels(lum: np.ndarray, st: StarTable) -> StarTable:
    """The :data:`MAX_STARS` brightest detections whose light is not one pixel
    (:func:`~..stars.detection.lone_peaks`): 100 fixed hot pixels in a 300x360 reference
    and its dithered frames outshone the stars and matched each other (an identity map,
    0.005 px residual, exit 0)."""
    return st.take(np.flatnonzero(~lone_peaks(lum, st))[:MAX_STARS])


def detect_frame_stars(image: np.ndarray) -> StarTable:
    """A frame's stars for matching.

    Frames up to :data:`BIN_ABOVE_PIXELS`: as the reference's
    (:func:`detect_reference_stars`). Bigger ones: the :data:`MAX_FRAME_STARS`
    brightest, found on the 4x4-binned intensity and measured (windowed
    centroids) on the full one (:func:`~.frame_stars.bright_stars`: 0.04 CPU-s
    against 0.17 for sep on the 2x2 binning of a 6000x4000 frame; 800 stars
    spread over the frame fit its map within the fit's noise, as 1000 did).
    """
    if not _is_big(image):
        return detect_reference_stars(image)
    return bright_stars(image, MAX_FRAME_STARS)  # colour: no frame-sized intensity made


def _all_no_data(image: np.ndarray) -> bool:
    """Every pixel NaN, inf or 0 (an empty or blank frame: 'only 0 star(s)' said less)."""
    bad, _ = find_no_data(image)
    return bad is not None and bool(bad.all())


def _is_big(image: np.ndarray) -> bool:
    """More pixels than :data:`BIN_ABOVE_PIXELS` (per channel)."""
    h, w = np.shape(image)[-2:]
    return h * w > BIN_ABOVE_PIXELS


def _supported_model(model: str, n_pairs: int) -> str:
    """The model asked for, or a simpler one when too few pairs support it (as
    :func:`~.transforms.fit_projective`: extra freedom would fit centroid noise)."""
    if model == "projective" and n_pairs < HOMOGRAPHY_MIN_PAIRS:
        model = "affine"
    if model == "affine" and n_pairs < AFFINE_MIN_PAIRS:
        model = "similarity"
    return model


#: Significance level at which star pairs must support a model's extra terms.
MODEL_TEST_LEVEL = 0.01
#: Free parameters of each model.
_MODEL_PARAMETERS = {"similarity": 4, "affine": 6, "projective": 8}


def _residual_ss(model: str, src: np.ndarray, dst: np.ndarray, flip: bool) -> tuple:
    h = _fit_model(model, src, dst, flip)
    return h, float(np.sum((WideTransform(homography=h)(src) - dst) ** 2))


def _model_by_evidence(model: str, src, dst, flip: bool) -> tuple[str, np.ndarray]:
    """The simplest of the models up to ``model`` whose residuals the richer ones do
    not beat significantly (F-test at :data:`MODEL_TEST_LEVEL`), with its matrix."""
    from scipy.stats import f as f_dist

    order = list(_MODEL_PARAMETERS)
    chosen = order[0]
    h, rss = _residual_ss(chosen, src, dst, flip)
    n_obs = 2 * len(src)
    for richer in order[1:order.index(model) + 1]:
        k0, k1 = _MODEL_PARAMETERS[chosen], _MODEL_PARAMETERS[richer]
        h1, rss1 = _residual_ss(richer, src, dst, flip)
        dof = n_obs - k1
        if dof <= 0 or rss1 <= 0:
            break
        stat = (rss - rss1) / (k1 - k0) / (rss1 / dof)
        if stat > f_dist.ppf(1.0 - MODEL_TEST_LEVEL, k1 - k0, dof):
            chosen, h, rss = richer, h1, rss1
    return chosen, h


def _fit_model(model: str, src: np.ndarray, dst: np.ndarray, flip: bool) -> np.ndarray:
    if model == "similarity":
        return fit_similarity(src, dst, flip).matrix()
    if model == "affine":
        return fit_affine(src, dst)
    return fit_homography(src, dst)


def _with_distortion(h: np.ndarray, src, dst, shape) -> WideTransform:
    """``h`` plus a cross-validated smoothing spline of its residuals (if it helps)."""
    if len(src) < SPLINE_MIN_PAIRS:
        return WideTransform(homography=h)
    hh, ww = shape
    origin = np.array([(ww - 1) / 2.0, (hh - 1) / 2.0])
    norm = float(np.hypot(hh, ww) / 2.0)
    best, _, _ = _choose_spline(src, dst, h, origin, norm, np.random.default_rng(0),
                                SPLINE_SMOOTHINGS)
    if best is None:
        return WideTransform(homography=h)
    from .transforms import apply_homography

    spline = _fit_spline(src, dst - apply_homography(h, src), best, origin, norm)
    return WideTransform(homography=h, distortion=spline)


def _full_search(reference, frame, reference_stars, frame_stars, scale_range, min_pairs):
    """The registration of :func:`~.register.solve_registration` (full star-pattern search,
    its fallbacks), its messages in the words of frames."""
    try:
        return solve_registration(reference, frame, scale_range=scale_range, distortion=False,
                                  min_pairs=min_pairs, max_stars=MAX_STARS,
                                  narrow_stars=reference_stars, wide_stars=frame_stars)
    except RegistrationError as exc:
        text = str(exc).replace("narrow image", "reference").replace("wide image", "frame")
        raise RegistrationError(text.replace("narrow", "reference").replace("wide", "frame"),
                                which=exc.which) from None


def register_frame(
    reference: np.ndarray,
    frame: np.ndarray,
    *,
    model: str = "projective",
    distortion: bool = False,
    reference_stars: StarTable | None = None,
    scale_range: tuple[float, float] = FRAME_SCALE_RANGE,
    min_pairs: int = MIN_PAIRS,
) -> FrameRegistration:
    """Find the reference -> frame map from the stars of both.

    Parameters
    ----------
    reference, frame : ndarray, (y, x) or (c, y, x)
        Colour is matched on the mean of the channels.
    model : {"similarity", "affine", "projective"}
    distortion : bool
        Add a smoothing thin-plate spline of the residuals (cross-validated).
    reference_stars : StarTable, optional
        From :func:`detect_reference_stars` (detected here if None).
    scale_range : (float, float)
        Frame px per reference px accepted.
    min_pairs : int

    Raises
    ------
    RegistrationError
        Too few stars, no common star pattern, or too few pairs for the model.
    """
    if model not in FRAME_MODELS:
        raise ValueError(f"unknown model {model!r}; use one of {FRAME_MODELS}")
    if reference_stars is None:
        reference_stars = detect_reference_stars(reference)
    frame_stars = detect_frame_stars(frame)
    for which, stars in (("reference", reference_stars), ("frame", frame_stars)):
        if len(stars) < min_pairs and which == "frame" and _all_no_data(frame):
            raise RegistrationError("the frame has no data (all pixels are 0 or NaN)",
                                    which=which)
        if len(stars) < min_pairs:
            raise RegistrationError(f"only {len(stars)} star(s) detected in the {which}; at "
                                    f"least {min_pairs} are needed to register", which=which)
    # the quick search (reference prepared once per run), else the full one as before
    found = match_frame(reference_index(reference, reference_stars), frame, frame_stars,
                        measured=_is_big(frame), scale_range=scale_range, min_pairs=min_pairs)
    if found is not None:
        src, dst, flipped, warnings = found.narrow_xy, found.wide_xy, found.flip, []
    else:
        reg = _full_search(reference, frame, reference_stars, frame_stars, scale_range,
                           min_pairs)
        src, dst, flipped, warnings = reg.narrow_xy, reg.wide_xy, reg.flip, list(reg.warnings)
    supported = _supported_model(model, len(src))
    used, h = _model_by_evidence(supported, src, dst, flipped)
    if supported != model:
        warnings.append(f"{len(src)} star pairs: fitted the {used} model instead of {model}")
    shape = np.shape(reference)[-2:]
    transform = (_with_distortion(h, src, dst, shape) if distortion
                 else WideTransform(homography=h))
    resid = transform(src) - dst
    centre = np.array([[(shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0]])
    ratio, rot, flip = transform.local_similarity(tuple(centre[0]))
    moved = transform(centre)[0] - centre[0]
    if flip:
        warnings.append("the frame is mirrored relative to the reference")
    return FrameRegistration(
        transform=transform, model=used,
        residual_px=float(np.sqrt(np.mean(np.sum(resid**2, axis=1)))),
        n_pairs=len(src), n_stars=len(frame_stars), rotation_deg=float(rot),
        scale=float(1.0 / ratio), shift=(float(moved[0]), float(moved[1])), flip=bool(flip),
        warnings=warnings)


def _floor_of_neighbours(plane: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    """Min of the 4x4 pixels around each sample point (the Lanczos kernel's core)."""
    kernel = np.ones((CLAMP_SIZE, CLAMP_SIZE), np.uint8)
    lo = cv2.erode(plane, kernel, anchor=(CLAMP_ANCHOR, CLAMP_ANCHOR),
                   borderType=cv2.BORDER_REPLICATE)
    return cv2.remap(lo, np.floor(map_x), np.floor(map_y), interpolation=cv2.INTER_NEAREST,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=float("nan"))


_CV_FLAGS = {"lanczos-clamped": cv2.INTER_LANCZOS4, "lanczos": cv2.INTER_LANCZOS4,
             "cubic": cv2.INTER_CUBIC, "linear": cv2.INTER_LINEAR}


def _outside(map_x: np.ndarray, map_y: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """True where the sample point is off the frame (more than half a pixel out)."""
    h, w = shape
    return (map_x < -0.5) | (map_y < -0.5) | (map_x > w - 0.5) | (map_y > h - 0.5)


_SCRATCH = threading.local()


def _scratch(name: str, shape: tuple, dtype) -> np.ndarray:
    """A work array of this thread kept between calls (contents undefined).

    A fresh frame-sized array costs its page faults, 0.1-0.8 s of kernel time per frame on a
    busy machine (measured); :func:`release_scratch` frees them.
    """
    store = _SCRATCH.__dict__
    arr = store.get(name)
    if arr is None or arr.shape != tuple(shape) or arr.dtype != np.dtype(dtype):
        store[name] = None
        arr = store[name] = np.empty(shape, dtype)
    return arr


#: Result arrays made ahead by :func:`prepare_scratch`: the first two frames' (the third
#: frame's result reuses the first's once it is written).
PREPARED_RESULTS = 2


def prepare_scratch(shape: tuple[int, int], method: str = "lanczos-clamped",
                    planes: int = 1) -> None:
    """Make this thread's work arrays of :func:`resample` for frames of ``shape`` and
    ``planes`` planes ahead of the first frame (a pipeline does it while the first frame is
    being read), and its first results' arrays."""
    if method in ("lanczos-clamped", "lanczos"):
        prepare_work_arrays(shape, planes=planes, outputs=PREPARED_RESULTS)


def release_scratch() -> None:
    """Free this thread's work arrays of :func:`resample` (kept for the next frame)."""
    _SCRATCH.__dict__.clear()
    release_shear_scratch()


def _nan_no_data(plane: np.ndarray) -> np.ndarray:
    """``plane`` as contiguous float32 with its no-data pixels (NaN, inf, and zeros that form
    regions: :func:`~napari_nsg.core.nodata.no_data_mask`) set to NaN (a copy only when it has
    some). Isolated zeros, as clipped sky in raw camera frames, stay values."""
    src = np.ascontiguousarray(plane, dtype=np.float32)
    bad = no_data_mask(src)
    if bad.any():
        src = src.copy()
        src[bad] = np.nan
    return src


def _resample_plane(plane: np.ndarray, map_x, map_y, method: str) -> np.ndarray:
    """One plane resampled; NaN off the frame and near its no-data pixels.

    The frame's edge pixels are replicated for the kernel's reach, so a small
    shift loses no more than the pixels it moves off the frame.
    """
    src = _nan_no_data(plane)
    out = cv2.remap(src, map_x, map_y, _CV_FLAGS[method], borderMode=cv2.BORDER_REPLICATE)
    missing = np.isnan(out) | _outside(map_x, map_y, plane.shape)
    if method == "lanczos-clamped":
        np.fmax(out, _floor_of_neighbours(src, map_x, map_y), out=out)
    out[missing] = np.nan
    return out


def _warp_homography(plane: np.ndarray, h: np.ndarray, shape: tuple[int, int], method: str,
                     off: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One plane through a homography (OpenCV computes the coordinates on the fly).

    Returns ``(out, missing)``: ``out`` is 0 where ``missing`` is True, i.e. off the
    frame (``off``) or near its no-data pixels, as :func:`_resample_plane`. Every
    full-frame pass is done once, in place, in kept work arrays (``missing`` is one).
    """
    src = _nan_no_data(plane)
    size = (shape[1], shape[0])
    inverse = cv2.WARP_INVERSE_MAP  # h maps output (reference) pixels to frame pixels
    out = cv2.warpPerspective(src, h, size, flags=_CV_FLAGS[method] | inverse,
                              borderMode=cv2.BORDER_REPLICATE)
    missing = np.isnan(out, out=_scratch("missing", shape, bool))
    missing |= off
    if method == "lanczos-clamped":
        kernel = np.ones((CLAMP_SIZE, CLAMP_SIZE), np.uint8)
        lo = cv2.erode(src, kernel, dst=_scratch("lo", src.shape, np.float32),
                       anchor=(CLAMP_ANCHOR, CLAMP_ANCHOR), borderType=cv2.BORDER_REPLICATE)
        to_floor = np.array([[1.0, 0, -0.5], [0, 1.0, -0.5], [0, 0, 1.0]]) @ h  # nearest = floor
        floor = cv2.warpPerspective(lo, to_floor, size, dst=_scratch("floor", shape, np.float32),
                                    flags=cv2.INTER_NEAREST | inverse,
                                    borderMode=cv2.BORDER_REPLICATE)
        np.fmax(out, floor, out=out)
    out[missing] = 0.0
    return out, missing


def _off_frame(h: np.ndarray, frame_shape: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """True where the reference pixel's nearest frame pixel is off the frame."""
    ones = _scratch("ones", frame_shape, np.uint8)
    ones.fill(1)
    covered = cv2.warpPerspective(ones, h, (shape[1], shape[0]),
                                  dst=_scratch("covered", shape, np.uint8),
                                  flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return np.equal(covered, 0, out=_scratch("off", shape, bool))


#: Sub-sampling step of the pixels whose median fills no-data pixels before the shear passes.
FILL_STEP = 16


def _inside_columns(affine: np.ndarray, frame_shape: tuple[int, int],
                    shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per output row, the columns ``[lo, hi)`` whose sample point (``affine``: output ->
    frame pixels) lies on the frame's pixel area (as :func:`_outside`)."""
    h, w = shape
    y = np.arange(h, dtype=float)
    lo, hi = np.zeros(h), np.full(h, w - 1.0)
    for r, size in ((0, frame_shape[1]), (1, frame_shape[0])):
        alpha, beta = affine[r, 0], affine[r, 1] * y + affine[r, 2]
        if abs(alpha) < 1e-12:
            inside = (beta >= -0.5) & (beta <= size - 0.5)
            hi = np.where(inside, hi, -1.0)
            continue
        ends = np.stack([(-0.5 - beta) / alpha, (size - 0.5 - beta) / alpha])
        lo, hi = np.maximum(lo, ends.min(axis=0)), np.minimum(hi, ends.max(axis=0))
    first = np.ceil(lo).astype(np.int64)
    stop = np.maximum(np.floor(hi).astype(np.int64) + 1, first)
    return first, stop


def _floor_warp(image: np.ndarray, affine: np.ndarray, shape: tuple[int, int],
                dst: np.ndarray, border: int) -> np.ndarray:
    """``image`` read at the pixel below-left of each sample point (nearest of ``u - 0.5``)."""
    to_floor = affine - np.array([[0, 0, 0.5], [0, 0, 0.5]])
    return cv2.warpAffine(image, to_floor, (shape[1], shape[0]), dst=dst,
                          flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderMode=border,
                          borderValue=0)


def _shear_plane(plane: np.ndarray, plan: ShearPlan, shape: tuple[int, int], method: str,
                 flat: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """One plane through the shear passes, floored for ``lanczos-clamped``, into the first
    pixels of ``flat`` (as :func:`~.separable.warp_shears`); ``(out, missing)``, ``missing``
    (None if the plane has no no-data pixel) True where the kernel's core (the 2a x 2a
    pixels around the sample point) touches a no-data pixel."""
    src = np.ascontiguousarray(plane, dtype=np.float32)
    bad, _ = find_no_data(src)
    if bad is not None:
        good = src[::FILL_STEP, ::FILL_STEP][~bad[::FILL_STEP, ::FILL_STEP]]
        src = src.copy()
        src[bad] = np.median(good) if good.size else 0.0  # finite, near the sky: no spill
    if plan.is_shift:  # no rotation: one separable filter, the floor by the same crop
        clamp = (CLAMP_SIZE, CLAMP_ANCHOR) if method == "lanczos-clamped" else None
        out = warp_shift(src, plan, shape, floor=clamp, out=flat)
    else:
        out = warp_shears(src, plan, shape, out=flat)
    if method == "lanczos-clamped" and not plan.is_shift:
        kernel = np.ones((CLAMP_SIZE, CLAMP_SIZE), np.uint8)
        # the passes' work arrays are free now: the erosion and the floor go there
        lo = cv2.erode(src, kernel, dst=work_array("a", src.shape),
                       anchor=(CLAMP_ANCHOR, CLAMP_ANCHOR), borderType=cv2.BORDER_REPLICATE)
        floor = _floor_warp(lo, plan.affine, shape, work_array("b", shape),
                            cv2.BORDER_REPLICATE)
        np.fmax(out, floor, out=out)
    if bad is None:
        return out, None
    core = np.ones((2 * LANCZOS_A, 2 * LANCZOS_A), np.uint8)
    near = cv2.dilate(bad.view(np.uint8), core, anchor=(LANCZOS_A - 1, LANCZOS_A - 1),
                      borderType=cv2.BORDER_REPLICATE)
    missing = _floor_warp(near, plan.affine, shape, _scratch("near", shape, np.uint8),
                          cv2.BORDER_CONSTANT).astype(bool)
    out[missing] = 0.0
    return out, missing


def _resample_shears(planes: np.ndarray, plan: ShearPlan, shape: tuple[int, int],
                     method: str) -> tuple[np.ndarray, float]:
    """``(c, y, x)`` planes through the shear passes with 0 for no data, and the coverage."""
    first, stop = _inside_columns(plan.affine, planes.shape[-2:], shape)
    size = shape[0] * shape[1]
    # the planes written in turn into one array (the spill of a plane's last row is
    # overwritten by the next plane): no stacking copy
    flat = output_array(results_size(len(planes), shape))
    outs, any_missing = [], None
    for k, plane in enumerate(planes):
        out, missing = _shear_plane(plane, plan, shape, method, flat[k * size:])
        outs.append(out)
        if missing is not None:
            any_missing = missing if any_missing is None else any_missing | missing
    for y in range(shape[0]):  # off the frame: no data
        for arr in outs + ([] if any_missing is None else [any_missing]):
            arr[y, :first[y]] = 0
            arr[y, stop[y]:] = 0
    covered = int(np.sum(stop - first))
    if any_missing is not None:
        covered -= int(np.count_nonzero(any_missing))
    coverage = covered / float(size)
    return flat[:len(planes) * size].reshape(len(planes), *shape), coverage


def _resample_homography(planes: np.ndarray, h: np.ndarray, shape: tuple[int, int],
                         method: str) -> tuple[np.ndarray, float]:
    """``(c, y, x)`` planes through ``h`` with 0 for no data, and the coverage.

    Lanczos on a map within :data:`~.separable.MAX_DEVIATION` of an affine map of
    determinant 1 (frames of one camera) runs as three 1-D shear passes
    (:mod:`.separable`); other maps and kernels through OpenCV's 2-D warp.
    """
    if method in ("lanczos-clamped", "lanczos"):
        plan = shear_plan(h, shape, planes.shape[-2:])
        if plan is not None:
            return _resample_shears(planes, plan, shape, method)
    off = _off_frame(h, planes.shape[-2:], shape)
    outs = []
    any_missing = _scratch("any_missing", shape, bool)
    for k, plane in enumerate(planes):
        out, missing = _warp_homography(plane, h, shape, method, off)
        outs.append(out)
        if k == 0:
            np.copyto(any_missing, missing)
        else:
            any_missing |= missing
    coverage = float(1.0 - np.count_nonzero(any_missing) / any_missing.size)
    return (outs[0][None] if len(outs) == 1 else np.stack(outs)), coverage


def resample(frame: np.ndarray, transform, shape: tuple[int, int], *,
             method: str = "lanczos-clamped", map_step: int = 32) -> tuple[np.ndarray, float]:
    """``frame`` on the reference grid; 0 where it has no data. Returns ``(data, coverage)``.

    Parameters
    ----------
    frame : ndarray, (y, x) or (c, y, x)
    transform : callable
        Reference ``(n, 2)`` -> frame ``(n, 2)`` pixel positions; a
        :class:`~.transforms.WideTransform` without distortion is applied by
        ``cv2.warpPerspective`` directly (no coordinate maps: 3x faster on big frames).
    shape : (int, int)
        The reference's ``(height, width)``.
    method : {"lanczos-clamped", "lanczos", "cubic", "linear"}
    map_step : int
        Node spacing of the coordinate maps (see :func:`~.warp.model_maps`).

    Returns
    -------
    (ndarray float32, float)
        The resampled frame, and the fraction of reference pixels it covers.
    """
    if method not in RESAMPLERS:
        raise ValueError(f"unknown resampling {method!r}; use one of {RESAMPLERS}")
    arr = np.asarray(frame, dtype=np.float32)
    planes = arr[None] if arr.ndim == 2 else arr
    h = getattr(transform, "homography", None)
    if h is not None and getattr(transform, "distortion", None) is None:
        out, covered = _resample_homography(planes, h, shape, method)
        return (out[0] if arr.ndim == 2 else out), covered
    map_x, map_y = model_maps(transform, shape, step=map_step)
    out = np.stack([_resample_plane(p, map_x, map_y, method) for p in planes])
    bad = ~np.isfinite(out)
    covered = float(1.0 - bad.any(axis=0).mean())
    out[bad] = 0.0
    return (out[0] if arr.ndim == 2 else out), covered
