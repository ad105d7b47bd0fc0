"""Multiscale Gradient Removal (MSGR): the steps, and the whole recipe.

The narrow-field image ``N`` is corrected with a wide-field image ``W`` of the
same sky (nightphotons' adaptation of Vicent Peris' method)::

    1. W_reg = register W onto N's pixel grid             (register_wide_to_narrow)
    2. optionally replace the stars of both by a smooth fill (remove_stars)
    3. N_L = MMT residual of N, W_L = MMT residual of W_reg, first L layers removed
    4. a, b = LinearFit of W_L onto N_L; W_Lf = a + b W_L   (fit_wide_to_narrow)
    5. model:  multiplicative  M = N_L * med(W_Lf) / W_Lf
               additive        D = N_L - W_Lf
       then the MMT residual of the model with L + 1 layers removed (gradient_model)
    6. result: multiplicative  N * med(M) / M
               additive        N - (D - med(D))            (apply_gradient_model)

Each step is a public function returning arrays or dataclasses (the napari
widget shows each as a layer); :func:`msgr` runs them all. Colour images are
processed per channel (registration is solved once, on the mean of the
channels). No-data pixels (0, NaN, inf) of the narrow image stay no-data in the
result; parts of the narrow image that the wide one does not cover get a model
extrapolated from the covered part (the MMT fills no-data smoothly) and a
warning.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np

from .flatten import FlatSurface, flatten_image
from .linear_fit import (
    DEFAULT_FIT_METHOD,
    LinearFitError,
    LinearFitResult,
    finite_max,
    linear_fit,
)
from .mmt import min_size_for_layers, mmt_residual, mmt_residual_binned
from .msgr_spline import MIN_BOXES, SPLINE_SMOOTHNESS, SplineRefinement, spline_refine
from .registration import (
    DEFAULT_SCALE_RANGE,
    Registration,
    apply_registration,
    register_wide_to_narrow,
)
from .star_removal import detect_star_mask, remove_stars, saturation_level
from .stars import intensity, no_data_mask
from .stars.photometry import aperture_photometry

__all__ = [
    "MODES",
    "GradientModel",
    "LargeScales",
    "MsgrError",
    "MsgrResult",
    "apply_gradient_model",
    "auto_layers",
    "both_star_mask",
    "check_fits",
    "check_msgr_size",
    "checked_fit",
    "create_model",
    "data_ranges",
    "fit_large_scales",
    "fit_wide_to_narrow",
    "fit_with_fallback",
    "flatten_wide_image",
    "gradient_model",
    "large_scales",
    "match_channels",
    "model_binning",
    "msgr",
    "photometric_slopes",
    "remove_stars_both",
    "resolve_layers",
    "slopes_from_stars",
    "smooth_model",
    "spline_step",
    "suggest_layers",
]

MODES = ("multiplicative", "additive")
#: Below this partial correlation of the large scales (smooth surface removed), the
#: robust fit's slope is poorly determined: MSGR warns.
MIN_IDENTIFIABLE = 0.5
#: Largest relative difference between the slopes fitted on the two halves of the
#: image before the fit counts as poorly determined (with shared structure).
MAX_HALF_DISAGREEMENT = 0.5
#: Degrees of the robust fit's surface tried in turn while the fit is refused.
FIT_DEGREES = (2, 3, 4)
#: Pixels (a regular subsample) of the large scales the fit uses: they are smooth above 2^N
#: px, and the fit's cost grows with the count (250 000: 2-6 s on a busy 2-core machine).
FIT_SAMPLES = 60_000
#: A slope more than this factor off the stars' flux ratio counts as collapsed.
#: (A fit pulled by a gradient is off by 5-10x: 0.0087 for a true 0.111 in issue 12;
#: the stars' ratio is good to ~10 %.)
MAX_SLOPE_FACTOR = 2.0
#: Fewest matched stars for the photometric slope.
MIN_PHOTOMETRY_STARS = 5
#: Aperture radius of the photometric slope (narrow px): BASE + PER_RATIO x scale ratio.
PHOT_RADIUS_BASE = 4.0
PHOT_RADIUS_PER_RATIO = 3.0
#: From this many pixels, whole-plane passes run on two row bands in two threads.
BAND_MIN_PIXELS = 1 << 20
#: Largest binning of the raw model before its MMT (:func:`model_binning`).
MODEL_MAX_BINNING = 4

Progress = Callable[[int, int, str], None]


class MsgrError(ValueError):
    """The inputs cannot go through MSGR (sizes, signs, shapes)."""


def _planes(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim == 3:
        return arr
    raise MsgrError(f"expected a (y, x) or (c, y, x) image, got shape {arr.shape}")


def _layout(planes: np.ndarray, like: np.ndarray) -> np.ndarray:
    return planes[0] if np.ndim(like) == 2 else planes


def _valid(a: np.ndarray) -> np.ndarray:
    return ~no_data_mask(a)


def _sample(a: np.ndarray, limit: int = 2_000_000) -> np.ndarray:
    """Every k-th pixel along both axes, at most about ``limit`` of them."""
    k = max(1, int(np.ceil(np.sqrt(a.size / limit))))
    return a[k // 2 :: k, k // 2 :: k] if a.ndim == 2 else a


def _median(a: np.ndarray) -> float:
    """Median of the valid pixels (on a regular subsample of at most ~2 Mpx)."""
    s = _sample(a)
    v = s[_valid(s)]
    if v.size == 0:
        raise MsgrError("no valid pixel")
    return float(np.median(v))


def suggest_layers(shape: tuple[int, ...]) -> int:
    """Layers to remove for an image of this size: the last window ~1/16 of the short side.

    ``round(log2(short / 16))`` between 1 and 8: 8 (window 257) from about
    3000 px, the guide's setting for full-size frames; 5 for 600 px.
    """
    short = min(shape[-2:])
    return int(np.clip(np.round(np.log2(max(short, 2) / 16.0)), 1, 8))


#: Automatic N: the last window (2^N px) about this fraction of the short side ...
AUTO_WINDOW_FRACTION = 1 / 10
#: ... plus 2 x log2(ratio / AUTO_RATIO) layers (rounded, never fewer) for coarse wide images.
AUTO_RATIO = 3.0
AUTO_MAX_LAYERS = 8
AUTO_MIN_LAYERS = 2


def auto_layers(shape: tuple[int, ...], scale_ratio: float | None = None) -> tuple[int, str]:
    """The layer count MSGR uses by default, from the narrow size and the scale ratio.

    ``N = round(log2(short side / 10)) + max(0, round(2 log2(ratio / 3)))``, between
    2 and 8 and at most what the size allows (the model needs ``2^(N+1)`` px).
    The first term keeps the star light of both images (bright stars' halos,
    the wide image's stars ``ratio`` times larger on the narrow grid) in the
    removed layers; the second adds 2 layers at ratio 6 for the wide image's
    blur. The gradient's curvature at scales below ``2^N`` px (glows of
    150-350 px) is then left to the spline step (:func:`spline_step`). Chosen on
    the simulated pairs of ``benchmarks/bench_msgr_accuracy.py`` (field-filling
    nebulae, docs/msgr.md): with the spline, 2 layers more than the earlier
    rule (``short / 40``) took the worst gradient left from 0.16 to 0.04.

    Returns
    -------
    (int, str)
        N and the reason in words.
    """
    short = int(min(shape[-2:]))
    most = int(np.floor(np.log2(max(short, 2)))) - 1
    if most < 1:
        raise MsgrError(f"image is {shape[-1]}x{shape[-2]} px: too small for MSGR")
    n = int(np.round(np.log2(max(short * AUTO_WINDOW_FRACTION, 1.0))))
    why = f"last window ~1/{round(1 / AUTO_WINDOW_FRACTION)} of the short side ({short} px)"
    if scale_ratio is not None and scale_ratio > 0:
        extra = max(0, int(np.round(2 * np.log2(scale_ratio / AUTO_RATIO))))
        if extra:
            n += extra
            why += f", +{extra} for the wide image's {scale_ratio:.2f}x coarser pixels"
    n = int(np.clip(n, AUTO_MIN_LAYERS, AUTO_MAX_LAYERS))
    if n > most:
        n = most
        why = f"the most a {short} px short side allows (the model needs 2^(N+1) px)"
    return n, f"{n} layers (scales above {2 ** n} px kept): {why}"


def check_msgr_size(shape: tuple[int, ...], n_layers: int) -> None:
    """Raise :class:`MsgrError` if the narrow image is too small for ``n_layers`` (+1 for the model)."""
    if n_layers < 1:
        raise MsgrError(f"the number of layers must be at least 1, got {n_layers}")
    h, w = shape[-2:]
    need = min_size_for_layers(n_layers + 1)
    if min(h, w) < need:
        most = int(np.floor(np.log2(max(1, min(h, w))))) - 1
        hint = f"use at most {most} layers" if most >= 1 else "it is too small for MSGR"
        raise MsgrError(
            f"image is {w}x{h} px: too small for {n_layers} multiscale layers (MSGR removes "
            f"layers + 1 = {n_layers + 1} from its model, which needs a shorter side of at least "
            f"{need} px); {hint}")


def both_star_mask(narrow: np.ndarray, wide_registered: np.ndarray,
                   scale_ratio: float = 1.0) -> np.ndarray:
    """The star mask of step 2: stars of the narrow image or of the registered wide one."""
    mask_n, _ = detect_star_mask(narrow)
    mesh = int(min(64 * max(1.0, scale_ratio), max(64, min(np.shape(narrow)[-2:]) // 3)))
    mask_w, _ = detect_star_mask(wide_registered, background_size=mesh)
    return mask_n | mask_w


def remove_stars_both(narrow: np.ndarray, wide_registered: np.ndarray,
                      scale_ratio: float = 1.0, *,
                      mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Replace the stars of both images by a smooth fill over the *same* mask (step 2).

    The mask (:func:`both_star_mask`, unless given) is the union of the stars
    detected in the narrow image and in the registered wide one (where they
    are ``scale_ratio`` times larger). Filling both over identical regions from
    identical surroundings makes the fills' own errors cancel in the ratio (or
    difference) of step 5.
    """
    if mask is None:
        mask = both_star_mask(narrow, wide_registered, scale_ratio)
    return remove_stars(narrow, mask=mask).image, remove_stars(wide_registered, mask=mask).image


def large_scales(image: np.ndarray, n_layers: int = 8, *, border: str = "linear") -> np.ndarray:
    """The image without its first ``n_layers`` multiscale median layers (step 3), per channel.

    ``border="linear"`` (default) extends the image linearly before the
    transform so gradients keep their slope up to the edges; ``"mirror"`` is
    PixInsight's behaviour (see :func:`napari_nsg.core.mmt.mmt_residual`).
    """
    return mmt_residual(image, n_layers, border=border)


def fit_wide_to_narrow(
    narrow_large: np.ndarray,
    wide_large: np.ndarray,
    *,
    method: str = DEFAULT_FIT_METHOD,
    range_narrow: list[float] | None = None,
    range_wide: list[float] | None = None,
    reject_low: float = 0.0,
    reject_high: float = 0.92,
    poly_degree: int = 2,
) -> list[LinearFitResult]:
    """LinearFit of the wide large scales onto the narrow ones, per channel (step 4).

    Parameters
    ----------
    narrow_large, wide_large : ndarray, (y, x) or (c, y, x)
        MMT residuals of the narrow and the registered wide image. A mono wide
        image is fitted to every channel of a colour narrow one.
    method : {"robust", "pixinsight"}
        See :mod:`napari_nsg.core.linear_fit`.
    range_narrow, range_wide : list of float, optional
        Per channel data range for the rejection limits (MSGR passes the maximum
        of the images before the MMT).
    reject_low, reject_high : float
        PixInsight's limits, as fractions of the range.
    poly_degree : int
        ``robust``: degree of the coordinate polynomial fitted with the slope.

    Returns
    -------
    list of LinearFitResult
        One per channel: ``narrow_large ~ a + b * wide_large``.
    """
    n = _planes(narrow_large)
    w = _planes(wide_large)
    fits = []
    for c in range(len(n)):
        wc = w[c if len(w) > 1 else 0]
        fits.append(linear_fit(
            wc, n[c], method=method, reject_low=reject_low, reject_high=reject_high,
            range_target=None if range_wide is None else range_wide[c if len(w) > 1 else 0],
            range_reference=None if range_narrow is None else range_narrow[c],
            poly_degree=poly_degree, max_samples=FIT_SAMPLES))
    return fits


def _half_slopes(narrow_large: np.ndarray, wide_large: np.ndarray, method: str,
                 poly_degree: int = 2) -> list[float]:
    """Slopes fitted on the two halves of the image (split across its long axis)."""
    h, w = narrow_large.shape
    halves = ((np.s_[:, : w // 2], np.s_[:, w // 2 :]) if w >= h
              else (np.s_[: h // 2], np.s_[h // 2 :]))
    out = []
    for sl in halves:  # (two threads were tried: no faster, the fit's many small steps hold the GIL)
        try:
            out.append(linear_fit(wide_large[sl], narrow_large[sl], method=method,
                                  reject_high=1.0, max_samples=FIT_SAMPLES,
                                  poly_degree=poly_degree).b)
        except LinearFitError:
            out.append(float("nan"))
    return out


def photometric_slopes(narrow: np.ndarray, wide_registered: np.ndarray,
                       narrow_xy: np.ndarray | None, scale_ratio: float) -> list:
    """The slope the stars imply, per channel: median flux ratio narrow / registered wide.

    Both images are measured at the matched stars' narrow positions with one
    aperture large enough for the wide image's stars (``ratio`` times larger on
    the narrow grid) and a background ring. Stars and extended signal scale
    alike, so this is the slope the large-scale fit should find. None for a
    channel with fewer than :data:`MIN_PHOTOMETRY_STARS` usable stars.
    """
    n_planes = _planes(narrow)
    if narrow_xy is None or len(narrow_xy) < MIN_PHOTOMETRY_STARS:
        return [None] * len(n_planes)
    xy = np.asarray(narrow_xy, float)
    radius = PHOT_RADIUS_BASE + PHOT_RADIUS_PER_RATIO * float(scale_ratio)
    width = max(PHOT_RADIUS_BASE, radius / 2)
    pn = aperture_photometry(n_planes, xy[:, 0], xy[:, 1], radius, width=width,
                             saturation=[saturation_level(p) or np.inf for p in n_planes])
    pw = aperture_photometry(_planes(wide_registered), xy[:, 0], xy[:, 1], radius, width=width)
    out = []
    for c in range(len(n_planes)):
        cw = c if pw.n_channels > 1 else 0
        ok = pn.valid[c] & pw.valid[cw] & (pn.flux[c] > 0) & (pw.flux[cw] > 0)
        out.append(float(np.median(pn.flux[c][ok] / pw.flux[cw][ok]))
                   if ok.sum() >= MIN_PHOTOMETRY_STARS else None)
    return out


def check_fits(narrow_large: np.ndarray, wide_large: np.ndarray,
               fits: list[LinearFitResult], poly_degree: int = 2,
               expected_slopes: list | None = None) -> list[str]:
    """Refuse a collapsed or poorly determined fit; return warnings for weak ones.

    A fit is refused (:class:`MsgrError`) when its slope is not positive, when
    it is more than :data:`MAX_SLOPE_FACTOR` times off the slope the stars
    imply (``expected_slopes``, :func:`photometric_slopes`; skipped where None),
    or when the two images share large-scale structure (partial correlation at
    least :data:`MIN_IDENTIFIABLE`, so the slope matters) and the slopes fitted
    on the two halves of the image differ by more than
    :data:`MAX_HALF_DISAGREEMENT` of the slope. Without shared structure the
    slope hardly matters (nothing but gradient to remove): a warning.
    """
    n, w = _planes(narrow_large), _planes(wide_large)
    warnings = []
    for c, fit in enumerate(fits):
        if not np.isfinite(fit.b) or fit.b <= 0:
            raise MsgrError(
                f"channel {c}: the fit of the wide image to the narrow one collapsed (narrow = "
                f"{fit.a:.6g} + {fit.b:.4g} x wide): the wide image's large scales do not follow "
                "the narrow image's; try more layers, star removal, or check the pair")
        expected = None if expected_slopes is None else expected_slopes[c]
        if expected is not None and not (
                1 / MAX_SLOPE_FACTOR <= fit.b / expected <= MAX_SLOPE_FACTOR):
            raise MsgrError(
                f"channel {c}: the fit of the wide image to the narrow one collapsed (slope "
                f"{fit.b:.4g} where the stars' flux ratio gives {expected:.4g}): try more "
                "layers or star removal")
        if fit.slope_identifiable is None:
            continue
        if fit.slope_identifiable < MIN_IDENTIFIABLE:
            warnings.append(
                f"channel {c}: the two images share little large-scale structure beyond a "
                f"smooth surface (partial correlation {fit.slope_identifiable:.2f}): the fitted "
                "slope is poorly determined and MSGR then removes every large-scale structure")
            continue
        halves = _half_slopes(n[c], w[c if len(w) > 1 else 0], fit.method, poly_degree)
        spread = max(abs(b - fit.b) for b in halves) / fit.b if all(np.isfinite(halves)) else np.inf
        if spread > MAX_HALF_DISAGREEMENT:
            raise MsgrError(
                f"channel {c}: the fit of the wide image to the narrow one is poorly determined "
                f"(slope {fit.b:.4g} over the whole image, "
                f"{' and '.join(f'{b:.4g}' for b in halves)} on its two halves): try more "
                "layers or star removal")
    return warnings


def flatten_wide_image(wide: np.ndarray, registration: Registration, narrow_shape: tuple[int, int], *,
                 surface: str = "plane", mode: str = "subtract",
                 interpolation: str = "cubic") -> tuple[np.ndarray, FlatSurface]:
    """Remove the wide image's own gradient over its whole field, then resample it (step 1b).

    The surface is fitted on the *original* wide frame (its whole field, stars
    and bright nebulae clipped; :func:`napari_nsg.core.flatten.flatten_image`)
    and the flattened frame is resampled onto the narrow grid with the
    registration's model.

    Returns
    -------
    (ndarray, FlatSurface)
        The flattened wide image on the narrow grid (NaN where uncovered) and
        the surface fitted (wide frame coordinates).
    """
    try:
        flat, fit = flatten_image(wide, surface, mode)
    except ValueError as exc:
        raise MsgrError(f"cannot flatten the wide image: {exc}") from None
    registered, _ = apply_registration(flat, registration.transform, tuple(narrow_shape),
                                       interpolation=interpolation)
    return registered, fit


@dataclass
class GradientModel:
    """The smoothed gradient model of step 5.

    Attributes
    ----------
    model : ndarray
        ``M`` (multiplicative: the narrow large scales over the fitted wide
        ones, times a constant) or ``D`` (additive: their difference, ADU),
        after the MMT with ``n_layers`` layers removed; ``(y, x)`` or ``(c, y, x)``.
    mode : str
    n_layers : int
        Layers removed from the model (``--layers`` + 1).
    reference : list of float
        Per channel ``med(model)``: the level the correction keeps.
    """

    model: np.ndarray
    mode: str
    n_layers: int
    reference: list[float]

    def correction_range(self) -> list[tuple[float, float]]:
        """Per channel (min, max) of the correction applied.

        Multiplicative: of the factor ``med(M) / M``; additive: of the offset
        subtracted, ``D - med(D)``, in ADU.
        """
        out = []
        for plane, ref in zip(_planes(self.model), self.reference):
            lo, hi = np.fmin.reduce(plane, axis=None), np.fmax.reduce(plane, axis=None)
            if not (np.isfinite(lo) and np.isfinite(hi) and (lo > 0 or hi < 0)):
                out.append(_correction_range_slow(plane, ref, self.mode))
            elif self.mode == "multiplicative" and ref > 0 and lo > 0:
                # no NaN-free zero or inf: the valid pixels are the non-NaN ones, and
                # ref / v decreases with v (float32 division rounds monotonically)
                out.append((float(np.float32(ref) / hi), float(np.float32(ref) / lo)))
            elif self.mode != "multiplicative":
                out.append((float(lo - ref), float(hi - ref)))
            else:
                out.append(_correction_range_slow(plane, ref, self.mode))
        return out


def _correction_range_slow(plane: np.ndarray, ref: float, mode: str) -> tuple[float, float]:
    """:meth:`GradientModel.correction_range` of one plane over its valid pixels, selected."""
    v = plane[_valid(plane)]
    if v.size == 0:
        return float("nan"), float("nan")
    if mode == "multiplicative":
        f = ref / v
        return float(f.min()), float(f.max())
    return float(v.min() - ref), float(v.max() - ref)


def gradient_model(
    narrow_large: np.ndarray,
    wide_large: np.ndarray,
    fits: list[LinearFitResult],
    n_layers: int = 8,
    mode: str = "multiplicative",
    *,
    border: str = "linear",
) -> GradientModel:
    """Build and smooth the gradient model (step 5).

    Parameters
    ----------
    narrow_large, wide_large : ndarray
        The large scales (step 3); a mono ``wide_large`` serves every channel.
    fits : list of LinearFitResult
        One per narrow channel (step 4).
    n_layers : int
        The layers removed in step 3; the model loses one more.
    mode : {"multiplicative", "additive"}
    border : {"linear", "mirror"}
        Border handling of the model's MMT (see :func:`large_scales`).

    Returns
    -------
    GradientModel

    Raises
    ------
    MsgrError
        Multiplicative mode on large scales that are not positive (sky-subtracted
        data): use the additive mode.
    """
    raw = create_model(narrow_large, wide_large, fits, mode)
    return smooth_model(raw, n_layers, mode, border=border, like=narrow_large)


def _in_row_bands(func: Callable[[slice], None], shape: tuple[int, ...]) -> None:
    """``func(rows)`` over the two halves of a plane's rows, in two threads from 1 Mpx.

    For whole-array numpy passes (they free the GIL): each writes its own rows.
    """
    h = shape[0]
    if h < 2 or h * shape[1] < BAND_MIN_PIXELS:
        func(np.s_[:h])
        return
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(func, (np.s_[: h // 2], np.s_[h // 2 :])))


def _raw_plane(nc: np.ndarray, wc: np.ndarray, fit: LinearFitResult, mode: str) -> np.ndarray:
    """One channel of :func:`create_model` (the wide plane ``wc`` fitted here, band by band)."""
    valid = _valid(nc)  # zero regions: the whole plane at once
    med_w = 0.0
    if mode == "multiplicative":
        sub_wf = fit.apply(_sample(wc))  # = _sample(fit.apply(wc)): elementwise
        sub_ok = _sample(valid) & np.isfinite(sub_wf)
        sub_n, sub_w = _sample(nc)[sub_ok], sub_wf[sub_ok]
        med_n = float(np.median(sub_n)) if sub_n.size else 0.0
        med_w = float(np.median(sub_w)) if sub_w.size else 0.0
        low = (np.count_nonzero(sub_n <= 0) + np.count_nonzero(sub_w <= 0)) / max(1, sub_ok.sum())
        if med_n <= 0 or med_w <= 0 or low > 0.01:
            raise MsgrError(
                "the large scales are not positive (narrow median "
                f"{med_n:.4g}, fitted wide median {med_w:.4g}; {100 * low:.1f}% of pixels <= 0): "
                "the images look sky-subtracted; use the additive mode")
    m = np.empty(nc.shape, np.float32)

    def band(rows: slice) -> None:
        # whole-array passes (boolean indexing of 24 Mpx cost 3x as much); same values
        wf = fit.apply(wc[rows])
        ok = valid[rows]
        ok &= np.isfinite(wf)
        out = m[rows]
        if mode == "multiplicative":
            ok &= wf > 1e-6 * med_w
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                np.multiply(nc[rows], np.float32(med_w), out=out)
                out /= wf
        else:
            np.subtract(nc[rows], wf, out=out)
            # MMT no-data is 0/NaN: an exact 0 of a difference is data, nudge it
            out[out == 0] = np.float32(1e-30)
        np.copyto(out, np.float32(np.nan), where=~ok)

    _in_row_bands(band, nc.shape)
    return m


def create_model(narrow_large: np.ndarray, wide_large: np.ndarray, fits: list[LinearFitResult],
                 mode: str = "multiplicative") -> np.ndarray:
    """The unsmoothed model (step 5a): ``N_L * med(W_Lf) / W_Lf`` or ``N_L - W_Lf``, per channel.

    NaN where either large-scale image has no data. Raises :class:`MsgrError`
    for an unknown mode or non-positive large scales in multiplicative mode.
    """
    if mode not in MODES:
        raise MsgrError(f"unknown mode {mode!r}; use one of {MODES}")
    n = _planes(narrow_large)
    w = _planes(wide_large)
    planes = [_raw_plane(n[c], w[c if len(w) > 1 else 0], fits[c], mode) for c in range(len(n))]
    return planes[0] if np.ndim(narrow_large) == 2 else np.stack(planes)


def model_binning(n_layers: int) -> int:
    """Binning of the raw model before its MMT (:func:`smooth_model`): ``min(4, 2^(N - 4))``.

    ``N`` is the layer count of step 3: the raw model is a ratio (difference)
    of images without their structure below ``2^N`` px, so a bin of
    ``2^(N-4)`` px still puts 16 bins across its finest structure.
    """
    return int(2 ** int(np.clip(n_layers - 4, 0, int(np.log2(MODEL_MAX_BINNING)))))


def smooth_model(raw: np.ndarray, n_layers: int, mode: str = "multiplicative", *,
                 border: str = "linear", like: np.ndarray | None = None) -> GradientModel:
    """Smooth the raw model (step 5b): its MMT residual with ``n_layers + 1`` layers removed.

    The transform runs on the model binned by :func:`model_binning` (4x4 from
    N = 6): the model is smooth there, and the result differs from the
    full-resolution transform by ~5e-5 of the model (rms; 1e-3 at most, at the
    edges) on a 6000x4000 pair, 20x less than the fast MMT's own difference
    from PCL's, for ~1/6 of the time (docs/msgr.md, "Speed").
    """
    planes = _planes(mmt_residual_binned(np.asarray(raw, np.float32), n_layers + 1,
                                         model_binning(n_layers), border=border))
    refs = [_median(p) for p in planes]
    return GradientModel(model=_layout(planes, raw if like is None else like), mode=mode,
                         n_layers=n_layers + 1, reference=refs)


def _apply_plane(tc: np.ndarray, mc: np.ndarray, ref: np.float32, mode: str,
                 res: np.ndarray) -> None:
    """One channel of :func:`apply_gradient_model` into ``res``, band by band."""
    keep = no_data_mask(tc)  # zero regions: the whole plane at once

    def band(rows: slice) -> None:
        # the same operations as t * ref / mc and t - (mc - ref), in place
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if mode == "multiplicative":
                np.multiply(tc[rows], ref, out=res[rows])
                res[rows] /= mc[rows]
            else:
                np.subtract(tc[rows], np.subtract(mc[rows], ref), out=res[rows])
        bad = keep[rows]
        bad |= ~np.isfinite(res[rows])
        np.copyto(res[rows], tc[rows], where=bad)

    _in_row_bands(band, tc.shape)


def apply_gradient_model(target: np.ndarray, model: GradientModel) -> np.ndarray:
    """Remove the model from the original narrow image (step 6).

    Multiplicative: ``T * med(M) / M``; additive: ``T - (D - med(D))``.
    No-data pixels of ``target`` are kept as they are.
    """
    t = _planes(target)
    m = _planes(model.model)
    out = np.empty_like(t)
    for c in range(len(t)):
        k = c if len(m) > 1 else 0
        _apply_plane(t[c], m[k], np.float32(model.reference[k]), model.mode, out[c])
    return _layout(out, target)


@dataclass
class MsgrResult:
    """Everything :func:`msgr` produced.

    Attributes
    ----------
    corrected : ndarray
        The narrow image with the gradient removed (float32, the narrow's shape).
    model : GradientModel
        The smoothed model that was removed.
    registration : Registration
        The wide image on the narrow grid and the geometry.
    fits : list of LinearFitResult
        Per channel wide -> narrow fit.
    narrow_large, wide_large : ndarray
        The large scales of step 3 (after star removal if asked).
    n_layers, mode, fit_method, stars_removed
        The parameters used.
    timings : dict
        Seconds per step.
    warnings : list of str
    layers_reason : str
        Why this layer count (the automatic choice's reason, or "given").
    flat_surface : FlatSurface or None
        The surface removed from the wide image (``flatten_wide``).
    flatten : str or None
        The flatten surface asked ("plane", "quadratic") or None.
    spline : SplineRefinement or None
        The last step's spline (``spline_smoothness``), or None.
    """

    corrected: np.ndarray
    model: GradientModel
    registration: Registration
    fits: list[LinearFitResult]
    narrow_large: np.ndarray
    wide_large: np.ndarray
    n_layers: int
    mode: str
    fit_method: str
    stars_removed: bool
    timings: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    layers_reason: str = "given"
    flat_surface: FlatSurface | None = None
    flatten: str | None = None
    spline: SplineRefinement | None = None

    def summary(self) -> dict:
        """The parameters and numbers, JSON-ready."""
        return {
            "layers": self.n_layers,
            "layers_reason": self.layers_reason,
            "flatten_wide": self.flatten,
            "mode": self.mode,
            "fit_method": self.fit_method,
            "stars_removed": self.stars_removed,
            "registration": self.registration.summary(),
            "fits": [{"a": f.a, "b": f.b, "adev": f.adev, "fraction_used": f.fraction_used}
                     for f in self.fits],
            "correction_range": [list(r) for r in self.model.correction_range()],
            "timings": dict(self.timings),
            "warnings": list(self.warnings),
        }


def _data_max(planes: np.ndarray) -> list[float]:
    return [finite_max(p) for p in planes]


def match_channels(narrow: np.ndarray, wide: np.ndarray) -> np.ndarray:
    """The wide image as MSGR uses it: mono (channel mean) for a mono narrow image.

    Raises :class:`MsgrError` when both are colour with different channel counts.
    """
    n_planes, w_planes = _planes(narrow), _planes(wide)
    if len(n_planes) == 1 and len(w_planes) > 1:
        return intensity(wide)
    if len(w_planes) > 1 and len(w_planes) != len(n_planes):
        raise MsgrError(f"the narrow image has {len(n_planes)} channels and the wide "
                        f"{len(w_planes)}")
    return wide


def resolve_layers(n_layers: int | str, shape: tuple[int, ...],
                   scale_ratio: float | None) -> tuple[int, str]:
    """``(N, reason)`` for ``n_layers`` = an int (checked against the size) or ``"auto"``."""
    if n_layers == "auto":
        n, why = auto_layers(shape, scale_ratio)
        return n, f"automatic: {why}"
    n = int(n_layers)
    check_msgr_size(shape, n)
    return n, "given"


class LargeScales:
    """The large scales (:func:`large_scales`) of images, each image and layer count computed once.

    With a thread pool, :meth:`start` computes in the background: the two
    images' transforms, or one transform and the registration, then share the
    cores (OpenCV and numpy's large passes release the GIL); without one,
    :meth:`get` computes in the calling thread.
    """

    def __init__(self, border: str = "linear", pool: ThreadPoolExecutor | None = None):
        self.border = border
        self.pool = pool
        self._jobs: dict = {}

    def start(self, image: np.ndarray, n_layers: int) -> None:
        """Begin ``large_scales(image, n_layers)`` in the pool (a no-op without one, or if known)."""
        key = (id(image), n_layers)
        if self.pool is not None and key not in self._jobs:
            job = self.pool.submit(large_scales, image, n_layers, border=self.border)
            self._jobs[key] = (image, job)  # the image is kept: its id stays unique

    def get(self, image: np.ndarray, n_layers: int) -> np.ndarray:
        """``large_scales(image, n_layers)``: the pool's result when started, else computed now."""
        key = (id(image), n_layers)
        if key not in self._jobs:
            self._jobs[key] = (image, large_scales(image, n_layers, border=self.border))
        value = self._jobs[key][1]
        return value.result() if isinstance(value, Future) else value

    def drop(self, n_layers: int) -> None:
        """Forget the results for ``n_layers`` (a refused layer count: frees their memory)."""
        for key in [k for k in self._jobs if k[1] == n_layers]:
            del self._jobs[key]


def fit_large_scales(
    narrow: np.ndarray, wide: np.ndarray, n_layers: int, *, fit_method: str = DEFAULT_FIT_METHOD,
    border: str = "linear", ranges: tuple[list, list] | None = None,
    expected_slopes: list | None = None, scales: LargeScales | None = None,
) -> tuple[np.ndarray, np.ndarray, list[LinearFitResult], list[str]]:
    """Steps 3-4 for one layer count: large scales of both, the fit, its check.

    ``scales`` (a :class:`LargeScales` with the same ``border``) reuses or
    parallelises the transforms. Returns ``(narrow_large, wide_large, fits,
    warnings)``; raises :class:`MsgrError` for a refused fit (see
    :func:`check_fits`).
    """
    scales = scales or LargeScales(border)
    scales.start(wide, n_layers)
    n_large = scales.get(narrow, n_layers)
    w_large = scales.get(wide, n_layers)
    return (n_large, w_large,
            *checked_fit(n_large, w_large, fit_method=fit_method, ranges=ranges,
                         expected_slopes=expected_slopes))


def checked_fit(narrow_large: np.ndarray, wide_large: np.ndarray, *,
                fit_method: str = DEFAULT_FIT_METHOD,
                ranges: tuple[list, list] | None = None,
                expected_slopes: list | None = None) -> tuple[list[LinearFitResult], list[str]]:
    """Step 4: the fit, checked (:func:`check_fits`); a richer surface when it is refused.

    The robust fit's polynomial (degree 2) can leave part of a strong narrow
    gradient (a glow) that then pulls the slope (to 0.013 for a true 0.11 on a
    simulated pair with a faint nebula); the fit is retried with degrees
    :data:`FIT_DEGREES` and the first accepted is used. If every degree is
    refused and the stars give the slope of every channel (``expected_slopes``,
    :func:`photometric_slopes`), that slope is used, with a warning
    (:func:`slopes_from_stars`); else the first refusal is raised. Returns
    ``(fits, warnings)``.
    """
    rn, rw = ranges if ranges is not None else (None, None)
    degrees = FIT_DEGREES if fit_method == "robust" else FIT_DEGREES[:1]
    first = None
    for degree in degrees:
        fits = fit_wide_to_narrow(narrow_large, wide_large, method=fit_method, range_narrow=rn,
                                  range_wide=rw, poly_degree=degree)
        try:
            warnings = check_fits(narrow_large, wide_large, fits, degree, expected_slopes)
        except MsgrError as exc:
            first = first or exc
            continue
        if degree != degrees[0]:
            warnings = [(f"the fit with a degree-{degrees[0]} surface was refused ({first}); "
                        f"used degree {degree}"), *warnings]
        return fits, warnings
    if expected_slopes is not None and all(e is not None for e in expected_slopes):
        fits = slopes_from_stars(narrow_large, wide_large, fits, expected_slopes)
        return fits, [f"every fit was refused ({first}); used the stars' flux ratio as the slope ("
                      + ", ".join(f"{f.b:.4g}" for f in fits) + ")"]
    raise first


def slopes_from_stars(narrow_large: np.ndarray, wide_large: np.ndarray,
                      fits: list[LinearFitResult], slopes: list[float]) -> list[LinearFitResult]:
    """The fits with the stars' slopes and intercepts ``median(N_L - b W_L)`` (the fallback)."""
    n, w = _planes(narrow_large), _planes(wide_large)
    out = []
    for c, (fit, b) in enumerate(zip(fits, slopes)):
        wc = w[c if len(w) > 1 else 0]
        ok = _valid(n[c]) & _valid(wc)
        a = float(np.median(_sample(n[c] - np.float32(b) * wc)[_sample(ok)]))
        out.append(replace(fit, a=a, b=float(b)))
    return out


def fit_with_fallback(narrow, wide, n_layers: int, auto: bool, *, fit_method=DEFAULT_FIT_METHOD,
                      border="linear", ranges=None, expected_slopes=None, scales=None):
    """:func:`fit_large_scales`, and with an automatic N, more layers while the fit is refused.

    ``scales``: see :func:`fit_large_scales`. Returns ``(n_layers, narrow_large,
    wide_large, fits, warnings)``.
    """
    most = int(np.floor(np.log2(max(2, min(np.shape(narrow)[-2:]))))) - 1
    first = None
    for n in range(n_layers, (most if auto else n_layers) + 1):
        try:
            out = fit_large_scales(narrow, wide, n, fit_method=fit_method, border=border,
                                   ranges=ranges, expected_slopes=expected_slopes,
                                   scales=scales)
        except MsgrError as exc:
            first = first or exc
            if scales is not None:
                scales.drop(n)
            continue
        warn = [] if n == n_layers else [
            f"the fit with {n_layers} layers was refused ({first}); used {n} layers"]
        return (n, *out[:3], warn + out[3])
    raise first


def spline_step(corrected: np.ndarray, narrow: np.ndarray, wide_registered: np.ndarray,
                narrow_large: np.ndarray, wide_large: np.ndarray, fits: list[LinearFitResult],
                smoothness: float = SPLINE_SMOOTHNESS) -> SplineRefinement:
    """Step 7 (optional): remove a spline of ``corrected - (a + b wide)`` fitted in star-free boxes.

    Stars are the small-scale excess of the narrow image over its large scales
    or of the registered wide one over its own (:func:`residual_star_mask`).
    """
    return spline_refine(corrected, wide_registered, fits=fits, smoothness=smoothness,
                         star_sources=((narrow, narrow_large), (wide_registered, wide_large)))


def data_ranges(narrow: np.ndarray, wide: np.ndarray) -> tuple[list, list]:
    """Per channel maxima of the images before the MMT (the fit's rejection ranges)."""
    return _data_max(_planes(narrow)), _data_max(_planes(wide))


def _register_step(narrow, wide, registration, timings, step, *, scales, early, n_layers,
                   **options) -> Registration:
    """Step 1 of :func:`msgr` (unless ``registration`` is done), timed.

    With ``early``, the narrow image's large scales (the layer count expected
    from the size and ``scale_hint``) are computed in ``scales``' pool meanwhile:
    they do not depend on the registration.
    """
    t0 = time.perf_counter()
    if early:
        try:
            guess = (n_layers if n_layers != "auto"
                     else auto_layers(np.shape(narrow), options["scale_hint"])[0])
        except MsgrError:
            guess = None  # too small: said after the registration, as before
        if guess is not None:
            scales.start(narrow, guess)
    if registration is None or registration.registered is None:
        step(0, "registering the wide image")
        wcs = options.pop("wcs") or (None, None)
        progress = options.pop("progress")
        registration = register_wide_to_narrow(
            narrow, wide, narrow_wcs=wcs[0], wide_wcs=wcs[1], **options,
            progress=None if progress is None else lambda d, t, m: step(0, m))
    timings["register"] = time.perf_counter() - t0
    return registration


def msgr(
    narrow: np.ndarray,
    wide: np.ndarray,
    *,
    n_layers: int | str = "auto",
    mode: str = "multiplicative",
    fit_method: str = DEFAULT_FIT_METHOD,
    remove_stars_first: bool = False,
    flatten_wide: str | None = None,
    flatten_mode: str = "subtract",
    scale_hint: float | None = None,
    scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
    registration: Registration | None = None,
    wcs: tuple | None = None,
    interpolation: str = "cubic",
    min_coverage: float = 0.5,
    border: str = "linear",
    spline_smoothness: float | None = SPLINE_SMOOTHNESS,
    progress: Progress | None = None,
) -> MsgrResult:
    """Multiscale Gradient Removal of ``narrow`` with ``wide`` (all steps).

    Parameters
    ----------
    narrow : ndarray, (y, x) or (c, y, x)
        The narrow-field image to correct (linear, its own units).
    wide : ndarray, (y, x) or (c, y, x)
        The wide-field image of the same sky (any size; pixels 1.5-6x larger).
    n_layers : int or "auto"
        Multiscale median layers removed; ``"auto"`` (default) chooses from the
        size and the scale ratio (:func:`auto_layers`) and takes more layers if
        the fit is refused.
    mode : {"multiplicative", "additive"}
        How the model is removed (default multiplicative, as the nightphotons guide).
    fit_method : {"robust", "pixinsight"}
        LinearFit variant (default robust; see docs/msgr.md).
    remove_stars_first : bool
        Replace stars by a smooth fill in both images before the MMT.
    flatten_wide : {None, "plane", "quadratic"}
        Remove the wide image's own gradient first (:func:`flatten_wide_image`).
    flatten_mode : {"subtract", "divide"}
        How the flatten surface is removed.
    scale_hint : float, optional
        Expected scale ratio (narrow px per wide px), e.g. from the headers.
    scale_range : (float, float)
        Scale ratios accepted by the registration.
    registration : Registration, optional
        A registration already made (with ``registered`` set); skips step 1.
    wcs : (narrow, wide) headers or WCS, optional
        For the registration's WCS fallback when the stars do not match.
    interpolation : {"cubic", "lanczos", "linear"}
        Resampling of the wide image.
    min_coverage : float
        Fewest fraction of the narrow image the wide one must cover.
    border : {"linear", "mirror"}
        Border handling of the three MMTs: ``"linear"`` (default) keeps
        gradients right up to the edges; ``"mirror"`` is PixInsight's.
    spline_smoothness : float or None
        A last step removes a smooth thin-plate spline (this smoothness, NSG's
        scale; default -2) of the corrected image minus the fitted wide one,
        measured in star-free boxes (:func:`spline_step`); None skips it.
    progress : callable, optional
        ``progress(done, total, message)``, called between steps and inside the
        registration (a callback may raise to cancel).

    Returns
    -------
    MsgrResult

    Raises
    ------
    MsgrError
        Narrow image too small for the layers, bad mode, non-positive large
        scales in multiplicative mode, channel mismatch, a refused fit.
    napari_nsg.core.registration.RegistrationError
        The wide image cannot be registered (too few stars, no overlap, ratio
        outside ``scale_range``).
    napari_nsg.core.linear_fit.LinearFitError
        Too few pixels for the fit.
    """
    if mode not in MODES:
        raise MsgrError(f"unknown mode {mode!r}; use one of {MODES}")
    wide = match_channels(narrow, wide)
    if n_layers != "auto":
        check_msgr_size(np.shape(narrow), int(n_layers))
    total = 8
    timings: dict = {}
    warnings: list = []

    def step(k, message):
        if progress is not None:
            progress(k, total, message)

    with ThreadPoolExecutor(max_workers=2) as pool:
        scales = LargeScales(border, pool)
        registration = _register_step(
            narrow, wide, registration, timings, step, scales=scales,
            early=not remove_stars_first, n_layers=n_layers,
            scale_hint=scale_hint, scale_range=scale_range, interpolation=interpolation,
            min_coverage=min_coverage, wcs=wcs, progress=progress)
        warnings.extend(registration.warnings)
        w_reg, flat = registration.registered, None

        t0 = time.perf_counter()
        if flatten_wide:
            step(1, "flattening the wide image")
            w_reg, flat = flatten_wide_image(wide, registration, np.shape(narrow)[-2:],
                                             surface=flatten_wide, mode=flatten_mode,
                                             interpolation=interpolation)
        timings["flatten"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        n0, w0 = narrow, w_reg
        if remove_stars_first:
            step(2, "removing stars")
            n0, w0 = remove_stars_both(narrow, w_reg, registration.scale_ratio)
        timings["remove_stars"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        step(3, "large scales and fit")
        n_first, reason = resolve_layers(n_layers, np.shape(narrow), registration.scale_ratio)
        scales.start(w0, n_first)  # while the stars' slopes and the ranges are measured here
        expected = photometric_slopes(narrow, w_reg, registration.narrow_xy,
                                      registration.scale_ratio)
        n_used, n_large, w_large, fits, fit_warnings = fit_with_fallback(
            n0, w0, n_first, n_layers == "auto", fit_method=fit_method, border=border,
            ranges=data_ranges(narrow, w_reg), expected_slopes=expected, scales=scales)
        del scales
    warnings.extend(fit_warnings)
    timings["mmt_fit"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    step(5, "gradient model")
    model = gradient_model(n_large, w_large, fits, n_used, mode, border=border)
    timings["model"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    step(7, "removing the gradient")
    corrected = apply_gradient_model(narrow, model)
    timings["apply"] = time.perf_counter() - t0
    refinement = None
    if spline_smoothness is not None:
        t0 = time.perf_counter()
        step(7, "spline of what the model left")
        refinement = spline_step(corrected, narrow, w_reg, n_large, w_large, fits,
                                 spline_smoothness)
        corrected = refinement.corrected
        warnings.extend(
            f"channel {c}: the spline step was skipped: only {n} star-free boxes "
            f"(at least {MIN_BOXES} are needed)"
            for c, n in enumerate(refinement.n_boxes) if n < MIN_BOXES)
        timings["spline"] = time.perf_counter() - t0
    step(8, "done")
    if n_used != n_first:
        reason = f"{reason}; raised to {n_used} (fit refused with {n_first})"
    return MsgrResult(corrected=corrected, model=model, registration=registration, fits=fits,
                      narrow_large=n_large, wide_large=w_large, n_layers=n_used, mode=mode,
                      fit_method=fit_method, stars_removed=remove_stars_first, timings=timings,
                      warnings=warnings, layers_reason=reason, flat_surface=flat,
                      flatten=flatten_wide or None, spline=refinement)
