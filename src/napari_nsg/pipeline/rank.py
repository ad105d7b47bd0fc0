"""Reference selection: measure every frame and rank the reference candidates.

NSG only makes every frame match the reference's gradient, so the reference
decides the result. :func:`rank_frames` measures each frame once (background,
NSG's two diagonal gradient estimates, how far the background departs from a
plane, noise, stars and FWHM, exposure, altitude/airmass) and then, against
one yardstick frame, its photometric scale, transmission and weight with the
NSG engine (:mod:`napari_nsg.core.nsg`). Frames are ranked best first by
NSG's criterion, the weight per unit exposure; the gradient measures sit
beside it so a user can prefer a frame with a simpler gradient.

Memory stays flat in the number of frames: two passes over the files, at most
three frames in memory. Pass 1 measures each frame on its own, but for its
noise: the next frame is read while the sky metrics of one are measured and
the stars of the one before are detected. Pass 2 makes the yardstick's model
(in a thread of its own) and measures each other frame's scale against it,
while the next frame is read and the noise of each frame measured. On
frames over 2047 px the background map and the corner boxes are measured on
block means, the stars in the central half of the frame
(:func:`~napari_nsg.core.reference.metric_binning`; from 16 Mpx in 3 x 3 tiles
spread over it, :func:`~napari_nsg.core.reference.star_tiles`) and the scales
in that half too (:func:`scale_window`).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..core.nodata import no_data_mask
from ..core.nsg.engine import (
    NotRegisteredError,
    NsgError,
    measure_scale,
    no_data_as_nan,
    prepare_reference,
)
from ..core.nsg.noise import NoiseEstimate, measure_frame_noise, noise_from_keywords
from ..core.nsg.params import NsgParameters
from ..core.nsg.registered import REGISTER_HINT
from ..core.nsg.weights import compute_weight
from ..core.reference import (
    background_map,
    blink_normalize,
    corner_gradients,
    gradient_complexity,
    holds_data_everywhere,
    metric_binning,
    sky_level,
    star_statistics,
    star_tiles,
)
from ..core.stars import StarTable
from ..core.stars.detection import bin_image
from ..io import FrameError, read_frame
from ._values import floats, json_clean
from .executors import overlapped_frames
from .progress import CancelToken, ProgressCallback, check_cancel, report

AEROSOL_EXTINCTION = 0.36  # NSG's airmass-scaled noise: exp(-0.36 * airmass)


@dataclass
class FrameRank:
    """One frame's measurements and its place in the ranking.

    Per-channel values are lists (one entry for mono). Values relative to the
    reference (``scale``, ``transmission``, ``weight``, ``rating``) are relative
    to the recommended reference, the top-ranked frame.

    Attributes
    ----------
    file : str
    rank : int or None
        1 = best; None for a frame that failed.
    rating : float or None
        Weight per unit exposure relative to the best frame (1.0 for the best).
    weight : float or None
        NSG weight (SNR squared, mean over channels) relative to the best frame.
    scale, transmission : list of float
        Photometric scale (multiplies this frame) and its inverse, relative to
        the best frame.
    background : list of float
        Sky level (median of the background map), in the frame's units.
    gradient_1, gradient_2 : list of float
        NSG's diagonal estimates: bottom-right minus top-left and top-right
        minus bottom-left corner boxes (row 0 on top), in the frame's units.
    gradient_percent : float
        ``hypot(gradient_1, gradient_2)`` as a percentage of the background,
        mean over channels: the size of the corner-to-corner gradient.
    background_span : list of float
        2nd-98th percentile range of the background map (all of the gradient,
        whatever its shape).
    complexity : list of float
        RMS of the background map about its best-fit plane: how far the
        gradient is from a simple tilt (0 for a pure plane).
    noise : list of float
        Gaussian noise sigma (NOISExx keywords when every frame has them, else
        measured with the multiresolution-support estimator).
    noise_source : str
    n_stars : int
        Stars detected at 5 sigma on the intensity image (frames over 2047 px:
        detected in the central half of the width and height, from 16 Mpx in
        3 x 3 tiles of 1/8 of the width and height spread over the frame; the
        count scaled to the frame's data pixels: an estimate).
    fwhm : float
        Median star FWHM in pixels (of those stars).
    exposure, altitude, airmass : float or None
    date_obs, filter : str or None
    airmass_scaled_noise : float or None
        NSG's display noise ``NOISE / EXPOSURE / exp(-0.36 airmass)``, when the
        frame has NOISExx keywords, an exposure and an airmass.
    n_star_pairs : list of int
        Star pairs used for the scale against the yardstick.
    warnings : list of str
    error : str or None
        Why the frame could not be measured.
    """

    file: str
    rank: int | None = None
    rating: float | None = None
    weight: float | None = None
    scale: list[float] = field(default_factory=list)
    transmission: list[float] = field(default_factory=list)
    background: list[float] = field(default_factory=list)
    gradient_1: list[float] = field(default_factory=list)
    gradient_2: list[float] = field(default_factory=list)
    gradient_percent: float | None = None
    background_span: list[float] = field(default_factory=list)
    complexity: list[float] = field(default_factory=list)
    noise: list[float] = field(default_factory=list)
    noise_source: str | None = None
    n_stars: int | None = None
    fwhm: float | None = None
    exposure: float | None = None
    altitude: float | None = None
    airmass: float | None = None
    date_obs: str | None = None
    filter: str | None = None
    airmass_scaled_noise: float | None = None
    n_star_pairs: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True if the frame was measured and ranked."""
        return self.error is None and self.rank is not None


@dataclass
class RankResult:
    """The ranking of a set of frames.

    Attributes
    ----------
    frames : list of FrameRank
        Best first; frames that failed come last, in input order.
    reference : str or None
        The recommended reference (:func:`recommend_reference`): a well-rated
        frame with a small and simple gradient, not always the top-ranked one.
    yardstick : str or None
        The provisional reference the scales were measured against (NSG's:
        lowest airmass-scaled noise when every frame has NOISExx keywords,
        else the frame with the most stars). Values in ``frames`` are
        re-expressed relative to ``reference``.
    yardstick_reason : str
    per_exposure : bool
        True when every frame had an exposure time and the rating is per unit
        exposure.
    reference_reason : str
        Why ``reference`` is recommended, in words.
    """

    frames: list[FrameRank]
    reference: str | None
    yardstick: str | None
    yardstick_reason: str
    per_exposure: bool
    reference_reason: str = ""

    @property
    def failed(self) -> list[FrameRank]:
        """Frames that could not be measured."""
        return [f for f in self.frames if not f.ok]

    def to_dict(self) -> dict:
        """JSON-ready content."""
        return {
            "reference": self.reference,
            "reference_reason": self.reference_reason,
            "yardstick": self.yardstick,
            "yardstick_reason": self.yardstick_reason,
            "per_exposure": self.per_exposure,
            "frames": [json_clean(asdict(f)) for f in self.frames],
        }

    def row(self, file: str | Path) -> FrameRank:
        """The row of one file."""
        key = str(file)
        for f in self.frames:
            if f.file == key:
                return f
        raise KeyError(key)


@dataclass
class _Measured:
    """Pass-1 state of a frame kept between the passes (small)."""

    row: FrameRank
    shape: tuple
    measured_noise: NoiseEstimate | None = None
    keyword_noise: NoiseEstimate | None = None
    #: pass 1's star detection, when it is the one the yardstick's model would make
    #: (:func:`_reusable_stars`): the yardstick's stars are then not detected twice
    stars: StarTable | None = None
    #: every pixel holds data (:func:`~napari_nsg.core.reference.holds_data_everywhere`)
    clean: bool = False


def _nanmean(values) -> float:
    """Mean of the finite values; NaN (without numpy's warning) when there are none."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


STAR_BINNING = 2  # large frames: stars detected in the central half (width and height)
STAR_THRESHOLD = 5.0  # star count and FWHM: detection threshold in noise sigmas
SCALE_CROP = 2  # large frames: scales measured in the central half (width and height)
CORNER_BINNING = 2  # corner boxes (H/10 a side) keep at least 40k block means on 4000-px frames
SKY_SAMPLE_STEP = 4  # every 4th pixel each way is plenty for a whole-frame sky level


def _whole_frame_sky(chans: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Fill a channel whose background map has no cell with enough data (a frame
    mostly no-data) with the sky level of all its data pixels."""
    out = np.asarray(background, dtype=float).copy()
    for c in np.flatnonzero(~np.isfinite(out)):
        step = (slice(None, None, SKY_SAMPLE_STEP),) * 2
        out[c] = sky_level(chans[c][step][~no_data_mask(chans[c])[step]])
    return out


def measure_frame(data: np.ndarray, meta=None) -> tuple[FrameRank, NoiseEstimate]:
    """Measure one frame on its own (no reference needed).

    Parameters
    ----------
    data : ndarray
        ``(y, x)`` or ``(c, y, x)`` pixels in their own units.
    meta : FrameMetadata, optional
        For exposure, altitude, airmass, date, filter and NOISExx keywords.

    Returns
    -------
    (FrameRank, NoiseEstimate)
        The row with the frame's own measurements filled in (no rank yet), and
        its measured noise.
    """
    sky = _sky_metrics(data)
    return _with_stars(sky, meta)[:2]


@dataclass
class _SkyMetrics:
    """The first half of :func:`measure_frame` (numpy and OpenCV: it lets the other
    thread run): the row with everything but the stars, and what the stars need."""

    row: FrameRank
    noise: NoiseEstimate | None  # None: not measured yet (the ranking's pass 2 measures it)
    data: np.ndarray  # (y, x) or (c, y, x), no-data as NaN
    clean: bool  # every pixel holds data


HAS_DATA_LOOK = (61, 7)  # the sparse first look of _has_data: every 61st row, 7th column


def _has_data(chans: np.ndarray) -> bool:
    """Some pixel is finite and not 0 (a sparse look first: a frame with data
    usually shows it in a few rows' every 7th pixel)."""
    def some(a):
        return bool(np.any(np.isfinite(a) & (a != 0)))

    rows, cols = HAS_DATA_LOOK
    return some(chans[:, ::rows, ::cols]) or some(chans)


def _data_channels(data: np.ndarray, clean: bool | None = None) -> tuple[np.ndarray, bool]:
    """``(c, y, x)`` float32 channels of a frame with its no-data as NaN, and whether
    every pixel holds data (``clean``: already known)."""
    data = np.asarray(data, dtype=np.float32)
    chans = data[np.newaxis] if data.ndim == 2 else data
    if clean is None:
        clean = holds_data_everywhere(chans)  # then no no-data mask anywhere
    if not clean:
        chans, _ = no_data_as_nan(chans)  # the no-data rule applied once, not by every metric
    return chans, clean


def _frame_noise(data: np.ndarray, clean: bool | None = None) -> NoiseEstimate:
    """The measured noise of a frame, as :func:`_sky_metrics` measures it."""
    return measure_frame_noise(_data_channels(data, clean)[0])


def _sky_metrics(data: np.ndarray, with_noise: bool = True) -> _SkyMetrics:
    """Background, corner gradients, span, complexity and (``with_noise``) noise of
    one frame."""
    data = np.asarray(data, dtype=np.float32)
    if not _has_data(data[np.newaxis] if data.ndim == 2 else data):
        raise NsgError("the frame has no data (all pixels are 0 or NaN)")
    chans, clean = _data_channels(data)
    data = chans[0] if data.ndim == 2 else chans
    row = FrameRank(file="")
    binning = metric_binning(chans.shape[-2:])
    corners = corner_gradients(chans, binning=min(binning, CORNER_BINNING), clean=clean)
    binned = [bin_image(ch, binning) for ch in chans] if binning > 1 else None
    bmap = background_map(chans, binning=binning, binned=binned)
    complexity = gradient_complexity(bmap, chans.shape[-2:])
    flat = bmap.values.reshape(len(chans), -1)
    with warnings.catch_warnings():  # a channel with no background cell gives NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        background = np.nanmedian(flat, axis=1)
        span = np.nanpercentile(flat, 98, axis=1) - np.nanpercentile(flat, 2, axis=1)
    background = _whole_frame_sky(chans, background)
    noise = measure_frame_noise(chans) if with_noise else None
    row.background = floats(background)
    row.gradient_1 = floats(corners.diagonal_1)
    row.gradient_2 = floats(corners.diagonal_2)
    with np.errstate(divide="ignore", invalid="ignore"):
        row.gradient_percent = _nanmean(100.0 * corners.magnitude / np.abs(background))
    row.background_span = floats(span)
    row.complexity = floats(complexity.residual_rms)
    if noise is not None:
        _set_noise(row, noise)
    return _SkyMetrics(row, noise, data, clean)


def _set_noise(row: FrameRank, noise: NoiseEstimate) -> None:
    row.noise, row.noise_source = floats(noise.sigma), noise.source


def _with_stars(sky: _SkyMetrics, meta=None) -> tuple[FrameRank, NoiseEstimate,
                                                      StarTable | None]:
    """The second half of :func:`measure_frame`: stars, FWHM and the header values
    (star detection holds the GIL: it runs beside the next frame's sky metrics), and
    the detection if the yardstick's model can reuse it (:func:`_reusable_stars`)."""
    row = sky.row
    data = sky.data
    stars = star_statistics(data, threshold=STAR_THRESHOLD,
                            binning=metric_binning(data.shape[-2:], STAR_BINNING),
                            clean=sky.clean, tiles=star_tiles(data.shape))
    row.n_stars = stars.n_stars
    row.fwhm = stars.median_fwhm
    if meta is not None:
        row.exposure = meta.exposure
        row.altitude = meta.altitude
        row.airmass = meta.airmass
        row.date_obs = meta.date_obs
        row.filter = meta.filter
    return row, sky.noise, _reusable_stars(stars.stars, sky)


def _reusable_stars(stars: StarTable | None, sky: _SkyMetrics) -> StarTable | None:
    """``stars`` if :func:`prepare_reference` on the frame's :func:`scale_window`
    would detect exactly them: every pixel holds data (its no-data rule then changes
    nothing) and the star crop is the scale window; else None."""
    return stars if sky.clean and STAR_BINNING == SCALE_CROP else None


def airmass_scaled_noise(noise: float, exposure: float | None, airmass: float | None) -> float | None:
    """NSG's display noise, ``noise / exposure / exp(-0.36 airmass)`` (lower is better)."""
    if not noise or not exposure or exposure <= 0 or airmass is None:
        return None
    return float(noise / exposure / math.exp(-AEROSOL_EXTINCTION * airmass))


def _choose_yardstick(measured: list[_Measured], noise_of) -> tuple[int, str]:
    """The yardstick and why; ``noise_of(i)``: the mean measured noise of frame ``i``
    (asked only to break a tie in the number of stars)."""
    ok = [i for i, m in enumerate(measured) if m.row.error is None]
    scaled = [measured[i].row.airmass_scaled_noise for i in ok]
    if all(v is not None for v in scaled):
        best = ok[int(np.argmin(scaled))]
        return best, "lowest airmass-scaled noise (NOISExx keywords)"
    # Without keywords NSG measures weights against a provisional reference;
    # the frame with the most stars is the best yardstick (most pairs, best
    # transparency and sky), ties broken by the lowest noise.
    most = max(measured[i].row.n_stars or 0 for i in ok)
    tied = [i for i in ok if (measured[i].row.n_stars or 0) == most]
    best = tied[0] if len(tied) == 1 else min(tied, key=noise_of)
    return best, "most stars detected (no NOISExx keywords in every frame)"


def rank_frames(
    paths,
    *,
    debayer: str | None = None,
    params: NsgParameters | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> RankResult:
    """Measure every frame and rank them as reference candidates, best first.

    Parameters
    ----------
    paths : sequence of path-like
        Registered frames of one target (same size and colour depth).
    debayer : {None, "superpixel", "bilinear"}
        Debayer raw colour frames first.
    params : NsgParameters, optional
        NSG parameters for the photometric scale (defaults otherwise); the scales are
        always measured with ``RANK_PHOTOMETRY`` (the large apertures).
    progress : callable, optional
        ``progress(done, total, message)``; ``total`` is twice the number of frames.
    cancel : threading.Event, optional
        Checked between frames; raises :class:`~napari_nsg.pipeline.progress.Cancelled`.

    Returns
    -------
    RankResult
        A frame that cannot be read or measured gets its ``error`` and is listed
        last; the others are still ranked.

    Raises
    ------
    FrameError
        When no frame at all can be measured.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise FrameError(None, "no frames given")
    return rank_loaded([str(p) for p in paths], lambda i: read_frame(paths[i], debayer=debayer),
                       params=params, progress=progress, cancel=cancel)


def measure_loaded(name: str, frame) -> _Measured:
    """Pass 1 of the ranking for one loaded frame (never raises: errors go in the row).

    Parameters
    ----------
    name : str
        The frame's name in the ranking (its file, or a layer name).
    frame : object with ``data``, ``meta`` and ``n_channels``
        A :class:`~napari_nsg.io.Frame` or alike.
    """
    try:
        sky = _sky_metrics(frame.data)
    except NsgError as exc:
        return _Measured(FrameRank(file=name, error=str(exc)), ())
    return _measured_row(name, frame, sky)


def _measured_row(name: str, frame, sky: _SkyMetrics) -> _Measured:
    """Pass 1 finished: the stars and the header values added to a frame's sky metrics
    (never raises for a frame that cannot be measured: the error goes in the row)."""
    try:
        own, noise, stars = _with_stars(sky, frame.meta)
    except NsgError as exc:
        return _Measured(FrameRank(file=name, error=str(exc)), ())
    own.file = name
    if frame.data.ndim == 2 and frame.meta.bayer_pattern:
        own.warnings.append("raw Bayer mosaic measured as mono: use debayering for "
                            "meaningful colour metrics")
    keywords = noise_from_keywords(frame.meta.noise, frame.meta.noise_algorithm,
                                   frame.n_channels)
    if keywords is not None:
        own.airmass_scaled_noise = airmass_scaled_noise(
            float(keywords.sigma[0]), own.exposure, own.airmass)
    return _Measured(own, frame.data.shape, noise, keywords, stars, sky.clean)


def _failed(name: str, exc: Exception) -> _Measured:
    """The row of a frame that could not be read or measured (a bug is raised)."""
    if isinstance(exc, FrameError):
        return _Measured(FrameRank(file=name, error=exc.reason), ())
    if isinstance(exc, NsgError):
        return _Measured(FrameRank(file=name, error=str(exc)), ())
    raise exc


def rank_loaded(
    names: list[str],
    load,
    *,
    params: NsgParameters | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    measured: dict | None = None,
) -> RankResult:
    """:func:`rank_frames` over frames given by a loader (files or arrays in memory).

    Parameters
    ----------
    names : list of str
        One name per frame (``FrameRank.file``).
    load : callable ``load(i) -> Frame``
        Loads frame ``i`` (may raise :class:`~napari_nsg.io.FrameError`); called
        twice per frame, from a reader thread, the next frame while this one is
        measured (at most three in memory); a third time only for frames tied
        for the most stars (their noise breaks the tie) and, when the
        yardstick's central half has no measurable star, for the targets.
    params, progress, cancel :
        As for :func:`rank_frames`.
    measured : dict, optional
        A cache of pass-1 measurements by name, filled and reused (frames
        already in it are not measured again).

    Returns
    -------
    RankResult
    """
    n = len(names)
    total = 2 * n
    cache = {} if measured is None else measured
    # pass 1: each frame on its own. Reading, the sky metrics (numpy, OpenCV) of one
    # frame and the star detection (which holds the GIL) of the one before overlap.
    todo = [i for i, name in enumerate(names) if name not in cache]
    report(progress, n - len(todo), total, "measuring the frames")
    steps = overlapped_frames(
        todo, lambda k, i: (i, load(i)), lambda loaded: _sky_metrics(loaded[1].data, False),
        lambda loaded, sky: _measured_row(names[loaded[0]], loaded[1], sky),
        lambda k, i, loaded, exc: _failed(names[i], exc), cancel=cancel, name="rank")
    for done, (k, m) in enumerate(steps, start=n - len(todo) + 1):
        cache[names[todo[k]]] = m
        report(progress, done, total, f"measured {Path(names[todo[k]]).name}")
    rows = [_fresh(cache[name]) for name in names]
    result = _scale_pass(rows, load, params, progress, cancel)
    for name, m in zip(names, rows):  # pass 2 measured it: not again in a later ranking
        if cache[name].measured_noise is None and m.measured_noise is not None:
            cache[name].measured_noise = m.measured_noise
            _set_noise(cache[name].row, m.measured_noise)
    return result


def _fresh(m: _Measured) -> _Measured:
    """A copy of a pass-1 measurement whose row pass 2 may fill in."""
    row = FrameRank(**{k: (list(v) if isinstance(v, list) else v)
                       for k, v in asdict(m.row).items()})
    return _Measured(row, m.shape, m.measured_noise, m.keyword_noise, m.stars, m.clean)


def _scale_pass(measured: list[_Measured], load, params, progress, cancel) -> RankResult:
    """Pass 2: scale and weight of every frame against the yardstick, then the ranking."""
    n = len(measured)
    good = [m for m in measured if m.row.error is None]
    if not good:
        reasons = "; ".join(f"{Path(m.row.file).name}: {m.row.error}" for m in measured)
        raise FrameError(None, f"no frame could be measured ({reasons})")
    # frames that do not match the majority's size / colour depth cannot be compared
    shapes = [m.shape for m in good]
    common = max(set(shapes), key=shapes.count)
    for m in good:
        if m.shape != common:
            m.row.error = (f"size or colour depth {m.shape} differs from the other frames "
                           f"{common}; frames must be registered")
    yard, reason = _choose_yardstick(measured, _noise_loader(measured, load))
    use_keywords = "NOISExx" in reason and all(
        m.keyword_noise is not None for m in measured if m.row.error is None)
    ystick = measured[yard]
    check_cancel(cancel)
    try:
        frame = load(yard)
    except FrameError as exc:
        raise FrameError(ystick.row.file,
                         f"cannot serve as the yardstick reference ({exc.reason})") from None

    def needs_noise(m: _Measured) -> bool:  # measured in pass 2, unless keywords give it
        return not use_keywords and m.measured_noise is None and bool(m.shape)

    # the yardstick's model is made in a thread of its own while this thread measures the
    # yardstick's noise and the first targets are read (and their noise measured)
    beside = ThreadPoolExecutor(1, thread_name_prefix="rank-model")
    making = beside.submit(_yardstick_model, ystick.row.file, frame, params, ystick.stars)
    beside.shutdown(wait=False)
    if needs_noise(ystick):
        _store_noise(ystick, _frame_noise(frame.data, ystick.clean))
    frame = None
    ref_noise = ystick.keyword_noise if use_keywords else ystick.measured_noise
    n_channels = common[0] if len(common) == 3 else 1
    raw_scale = np.full((n, n_channels), np.nan)
    raw_weight = np.full(n, np.nan)
    raw_scale[yard], raw_weight[yard] = 1.0, 1.0
    if use_keywords:
        for m in measured:
            if m.row.error is None:
                m.row.noise, m.row.noise_source = floats(m.keyword_noise.sigma), "keywords"
    # the targets' scales, and the noise of every frame measured in pass 1 (also of those
    # refused for their size, for their row)
    items = [(i, m.row.error is None, needs_noise(m)) for i, m in enumerate(measured)
             if i != yard and (m.row.error is None or needs_noise(m))]
    unregistered, done = 0, 0
    for i, sr, noise in _scales(making, items, load, cancel, measured):
        m = measured[i]
        if noise is not None:
            _store_noise(m, noise)
        if sr is None:  # a frame refused for its size: its noise only
            continue
        done += 1
        report(progress, n + done, 2 * n, f"scale of {Path(m.row.file).name}")
        tgt_noise = m.keyword_noise if use_keywords else m.measured_noise
        if isinstance(sr, Exception):
            m.row.error = sr.reason if isinstance(sr, FrameError) else str(sr)
            unregistered += isinstance(sr, NotRegisteredError)
            continue
        w = compute_weight(ref_noise, tgt_noise, sr.scale)
        raw_scale[i], raw_weight[i] = sr.scale, w.weight
        m.row.n_star_pairs = [int(v) for v in sr.n_star_pairs]
        m.row.warnings.extend(sr.warnings + w.warnings)
    model = making.result()[0]  # its FrameError if it could not be made (no target asked)
    ystick.row.n_star_pairs = [len(model.candidates)] * n_channels
    _warn_other_filters(measured, ystick.row)
    report(progress, 2 * n, 2 * n, "ranked")
    _refuse_lone_yardstick(ystick.row, raw_weight, yard, unregistered)
    return _rank(measured, raw_scale, raw_weight, yard, reason)


def _warn_other_filters(measured: list[_Measured], yardstick: FrameRank) -> None:
    """Warn on each measured frame whose FILTER differs from the yardstick's: its scale,
    weight and rating then compare two filters, not two skies (as normalize warns)."""
    ref = (yardstick.filter or "").strip()
    for m in measured:
        own = (m.row.filter or "").strip()
        if m.row.error is None and ref and own and own != ref:
            m.row.warnings.append(f"FILTER '{own}' differs from the yardstick's '{ref}' "
                                  f"({Path(yardstick.file).name}): its scale and rating "
                                  "compare two filters")


def scale_window(shape: tuple[int, ...]) -> tuple[slice, slice]:
    """Where the scales are measured: the central ``1/SCALE_CROP`` of the width and
    of the height on frames over 2047 px, else the whole frame. Photometry is local; the crop spares the whole-frame passes
    (star detection, star mask, sample grid, no-data tests) of the yardstick's model
    and of every target."""
    h, w = shape[-2:]
    f = metric_binning((h, w), SCALE_CROP)
    ch, cw = h // f, w // f
    return slice((h - ch) // 2, (h - ch) // 2 + ch), slice((w - cw) // 2, (w - cw) // 2 + cw)


def _crop(data: np.ndarray, window: tuple[slice, slice]) -> np.ndarray:
    """The window of a frame, as its own array (the full frame can then be freed)."""
    data = np.asarray(data)
    if window[0] == slice(0, data.shape[-2]) and window[1] == slice(0, data.shape[-1]):
        return data
    return np.ascontiguousarray(data[(Ellipsis, *window)])


def _yardstick_model(name: str, frame, params, stars: StarTable | None = None):
    """The yardstick's reference model on its :func:`scale_window`; on the whole
    frame when the window has no measurable star (``(model, window)``); only what
    the scales need (``scale_only``: no star mask, sample grids or noise). ``stars``:
    pass 1's detection in the scale window (:func:`_reusable_stars`), reused there
    when the model detects at the same threshold."""
    scale_params = _scale_params(params, True)
    if scale_params.detection_threshold != STAR_THRESHOLD:
        stars = None
    whole = (slice(0, frame.data.shape[-2]), slice(0, frame.data.shape[-1]))
    windows = [scale_window(frame.data.shape)]
    if windows[0] != whole:
        windows.append(whole)
    for k, window in enumerate(windows):
        try:
            return prepare_reference(_crop(frame.data, window), frame.meta,
                                     _scale_params(params, window != whole),
                                     stars=stars if k == 0 else None, scale_only=True), window
        except NsgError as exc:
            if k + 1 == len(windows):
                raise FrameError(name, f"cannot serve as the yardstick reference ({exc})") from None
    raise AssertionError("unreachable")


SCALE_PAIRS = 100  # large frames: star pairs for a scale (more add little precision there)
#: The photometry of rank's scales, whatever the caller's parameters say (``normalize
#: --reference auto`` passes normalize's, PSF weights by default): the large apertures,
#: 2-3x faster per target (measure_scale on a 6000 x 4000 target) and precise enough to
#: order frames (0.1-0.2 % against differences of several % between frames).
RANK_PHOTOMETRY = "aperture"


def _scale_params(params: NsgParameters | None, cropped: bool) -> NsgParameters:
    """The NSG parameters of the scales: the caller's (default ones otherwise) with
    ``RANK_PHOTOMETRY``; on a cropped large frame at most ``SCALE_PAIRS`` star pairs
    unless the caller chose a number. The scale's precision is set by the brightest pairs
    (on the 6000 x 4000 benchmark frames its standard error is 0.09 % with 100 pairs and
    with 250), the photometry's time by their number."""
    params = replace(params or NsgParameters(), photometry=RANK_PHOTOMETRY)
    if not cropped or params.max_star_pairs is not None:
        return params
    return replace(params, max_star_pairs=SCALE_PAIRS)


class _NoYardstick(Exception):
    """The yardstick's model could not be made (its FrameError in ``error``): ends the
    ranking, not just one target's scale."""

    def __init__(self, error: FrameError):
        super().__init__(str(error))
        self.error = error


def _scales(making, items: list[tuple[int, bool, bool]], load, cancel,
            measured: list[_Measured]):
    """Yield ``(i, ScaleResult or the exception or None, NoiseEstimate or None)`` for each
    item ``(i, scale, noise)``, in order: the scale of frame ``i`` if ``scale``, its
    noise if ``noise``. ``making``: the future of :func:`_yardstick_model`. The reader
    thread reads the next frame and crops it to its :func:`scale_window` while the
    compute thread measures the scale of this one; the noise (numpy: it lets go of
    Python's lock) is measured by the reader for every other frame, then let go, and
    for the others by this thread once their scale is measured: reading and the
    noise of every frame would keep the reader the busiest thread, this thread's
    noise of every frame would keep one whole frame more in memory."""
    def loaded(k, item):
        i, scale, noise = item
        data = load(i).data
        window = scale_window(data.shape)
        here = noise and k % 2 == 0
        return (i, _frame_noise(data, measured[i].clean) if here else None,
                (_crop(data, window), window) if scale else None,
                data if noise and not here else None)

    def stored(got, sr):
        later = got[3]
        return got[0], sr, got[1] if later is None else _frame_noise(later, measured[got[0]].clean)

    def scaled(got):
        if got[2] is None:
            return None
        try:
            model, window = making.result()
        except FrameError as exc:
            raise _NoYardstick(exc) from None
        crop, cropped_to = got[2]
        if cropped_to != window:  # the model fell back to the whole frame
            crop = _crop(load(got[0]).data, window)
        return measure_scale(model, crop)

    def failed(k, item, got, exc):
        if isinstance(exc, (FrameError, NsgError)):
            return (item[0], exc, None) if got is None else stored(got, exc)
        raise exc

    steps = overlapped_frames(items, loaded, scaled, stored, failed, cancel=cancel,
                              name="rank-scale")
    try:
        for _, result in steps:
            yield result
    except _NoYardstick as exc:
        raise exc.error from None


def _store_noise(m: _Measured, noise: NoiseEstimate) -> None:
    """A frame's measured noise, in its state and its row."""
    m.measured_noise = noise
    _set_noise(m.row, noise)


def _noise_loader(measured: list[_Measured], load):
    """``noise_of(i)``: the mean measured noise of frame ``i``, measured now (the frame
    read again) if pass 1 left it out; infinite if the frame cannot be read."""
    def noise_of(i: int) -> float:
        m = measured[i]
        if m.measured_noise is None:
            try:
                _store_noise(m, _frame_noise(load(i).data, m.clean))
            except FrameError:
                return float("inf")
        return float(np.mean(m.measured_noise.sigma))
    return noise_of


def _refuse_lone_yardstick(row: FrameRank, raw_weight: np.ndarray, yard: int,
                           unregistered: int) -> None:
    """When no other frame could be paired with the yardstick because they are
    not registered to it, the yardstick cannot be ranked or recommended either."""
    others = np.isfinite(np.delete(raw_weight, yard))
    if unregistered and not others.any():
        row.error = (f"no other frame is registered to this one ({unregistered} frame(s) "
                     f"refused as not registered): {REGISTER_HINT}")


def _rank(measured, raw_scale, raw_weight, yard, reason) -> RankResult:
    for i, m in enumerate(measured):
        if m.row.error is None and not (np.isfinite(raw_weight[i]) and raw_weight[i] > 0):
            m.row.error = "no noise estimate, so no weight: cannot be ranked"
    ok = np.array([m.row.error is None for m in measured])
    exposure = np.array([m.row.exposure if m.row.exposure else np.nan for m in measured], float)
    per_exposure = bool(np.all(np.isfinite(exposure[ok]) & (exposure[ok] > 0)))
    merit = raw_weight / exposure if per_exposure else raw_weight.copy()
    merit[~ok] = np.nan
    order = [int(i) for i in np.argsort(-np.where(ok, merit, -np.inf)) if ok[i]]
    best = order[0] if order else None
    rows = []
    for rank, i in enumerate(order, start=1):
        row = measured[i].row
        rel_scale = raw_scale[i] / raw_scale[best]
        row.rank = rank
        row.rating = float(merit[i] / merit[best])
        row.weight = float(raw_weight[i] / raw_weight[best])
        row.scale = floats(rel_scale)
        row.transmission = floats(1.0 / rel_scale)
        rows.append(row)
    rows.extend(m.row for m in measured if m.row.error is not None)
    pick, why = recommend_reference(rows)
    return RankResult(
        frames=rows,
        reference=pick.file if pick is not None else None,
        yardstick=measured[yard].row.file,
        yardstick_reason=reason,
        per_exposure=per_exposure,
        reference_reason=why,
    )


MIN_RATING = 0.6  # a reference candidate keeps at least this share of the best frame's rating
MIN_TRANSMISSION = 0.75  # ... and this transmission relative to it (NSG's default cut-off)
LUMPY_WEIGHT = 2.0  # ADU of "lumpy" (RMS about a plane) weigh this many ADU of plain span
GRADIENT_TOLERANCE = 0.10  # gradients within 10 % of the smallest count as equally small


def gradient_cost(row: FrameRank) -> float:
    """How much gradient a frame would impose as the reference, in the top-ranked
    frame's units: its background span plus ``LUMPY_WEIGHT`` times its
    complexity (a tilt is removed easily after stacking, lumps are not)."""
    scale = np.asarray(row.scale, float)
    span = np.asarray(row.background_span, float) * scale
    lumpy = np.asarray(row.complexity, float) * scale
    return _nanmean(span + LUMPY_WEIGHT * lumpy)


def recommend_reference(rows: list[FrameRank]) -> tuple[FrameRank | None, str]:
    """The reference to recommend among ranked frames, and why.

    NSG only makes every frame match the reference's gradient, so the reference
    should have a small, simple gradient; it must also be a good frame (its
    noise and transparency set the scale of the others). The candidates are
    the frames rated at least ``MIN_RATING`` of the best, with a transmission
    of at least ``MIN_TRANSMISSION``; of those whose :func:`gradient_cost` is
    within ``GRADIENT_TOLERANCE`` of the smallest, the best-rated is recommended.

    Parameters
    ----------
    rows : list of FrameRank
        Ranked rows (``rank`` set), best first; failed rows are ignored.

    Returns
    -------
    (FrameRank or None, str)
    """
    ranked = [r for r in rows if r.ok]
    if not ranked:
        return None, "no frame could be ranked"
    top = ranked[0]
    eligible = [r for r in ranked
                if (r.rating or 0) >= MIN_RATING
                and _nanmean(r.transmission) >= MIN_TRANSMISSION
                and np.isfinite(gradient_cost(r))]
    if not eligible:
        return top, f"{Path(top.file).name}: the best-rated frame (no gradient measure to compare)"
    least = min(gradient_cost(r) for r in eligible)
    small = [r for r in eligible if gradient_cost(r) <= (1 + GRADIENT_TOLERANCE) * least]
    pick = min(small, key=lambda r: r.rank)
    return pick, _recommend_reason(pick, top, len(eligible), least)


def _describe_gradient(row: FrameRank) -> str:
    return (f"span {_nanmean(row.background_span):.3g}, lumpy {_nanmean(row.complexity):.3g}"
            f" ADU, rating {row.rating:.2f}")


def _recommend_reason(pick: FrameRank, top: FrameRank, n_good: int, least: float) -> str:
    name = Path(pick.file).name
    lead = (f"{name} ({_describe_gradient(pick)}): among the {n_good} frame(s) rated at least "
            f"{MIN_RATING:g} of the best with transmission >= {MIN_TRANSMISSION:g}, the best-rated "
            f"whose gradient is within {100 * GRADIENT_TOLERANCE:.0f} % of the smallest")
    if pick is top:
        return lead
    more = 100.0 * (gradient_cost(top) / least - 1.0)
    return (f"{lead}; the best-rated {Path(top.file).name} has {more:.0f} % more gradient "
            f"({_describe_gradient(top)})")


def choose_reference(paths, *, debayer: str | None = None, params: NsgParameters | None = None,
                     progress: ProgressCallback | None = None,
                     cancel: CancelToken | None = None) -> Path:
    """The top-ranked frame of :func:`rank_frames` (``normalize --reference auto``)."""
    result = rank_frames(paths, debayer=debayer, params=params, progress=progress, cancel=cancel)
    if result.reference is None:
        raise FrameError(None, "no frame could be ranked, so no reference could be chosen"
                               f"{_why_none(result.failed)}")
    return Path(result.reference)


def _why_none(failed: list[FrameRank]) -> str:
    """The frames' reasons, the most common first (``napari-nsg rank`` lists them all)."""
    reasons = Counter(row.error for row in failed if row.error)
    if not reasons:
        return ""
    text, count = reasons.most_common(1)[0]
    first = next(row for row in failed if row.error == text)
    who = f"{Path(first.file).name}" + (f" and {count - 1} more" if count > 1 else "")
    others = len(failed) - count
    more = f"; {others} other frame(s) for other reasons" if others else ""
    return f" ({who}: {text}{more}; napari-nsg rank lists every frame's reason)"


def blink_frame(data: np.ndarray, row: FrameRank, reference: FrameRank) -> np.ndarray:
    """A frame scaled and offset to the reference's background, for blinking.

    All frames of a ranking prepared this way can be shown with one fixed
    stretch (gradients are not removed). See
    :func:`napari_nsg.core.reference.blink_normalize`.
    """
    if not row.scale:
        raise ValueError(f"{row.file} has no scale (it was not ranked)")
    return blink_normalize(data, row.scale, row.background, reference.background)
