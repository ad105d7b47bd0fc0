"""Per-frame metrics for choosing the NSG reference frame.

NSG only makes every frame match the reference's gradient, so the reference
should have the smallest and simplest gradient, good transparency and low
noise. The functions here measure one frame at a time (pure numpy/scipy); the
batch ranking lives in :mod:`napari_nsg.pipeline.rank`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .rank_stars import detect_stars_lightly
from .stars import StarTable, detect_stars, intensity, no_data_mask
from .stars.detection import bin_image


@dataclass
class CornerGradients:
    """NSG's two diagonal gradient estimates (per channel).

    Square boxes of side ``H/10`` inset ``H/10`` from the edges (as NSG's blink
    dialog); each box's level is a sigma-clipped mean (:func:`sky_level`).

    Attributes
    ----------
    diagonal_1 : ndarray
        bottom-right minus top-left (NSG's "red" line), in the frame's units.
    diagonal_2 : ndarray
        top-right minus bottom-left (NSG's "blue" line).
    boxes : dict
        The box levels ``{"top_left": ..., ...}`` per channel. "top" is row 0.
    box_size : int
        Side of the boxes in pixels.
    positions : dict
        ``{corner: (y0, x0, y1, x1)}`` of the boxes measured. A box with less
        than half of its pixels holding data (a registration border) is slid
        toward the centre until it has enough, and the difference is scaled
        to the nominal corner-to-corner distance.
    """

    diagonal_1: np.ndarray
    diagonal_2: np.ndarray
    boxes: dict
    box_size: int
    positions: dict | None = None

    @property
    def magnitude(self) -> np.ndarray:
        """``hypot(diagonal_1, diagonal_2)``: the size of the corner-to-corner gradient."""
        return np.hypot(self.diagonal_1, self.diagonal_2)


@dataclass
class BackgroundMap:
    """A coarse map of the sky background: sigma-clipped levels of a grid of cells.

    Attributes
    ----------
    values : ndarray, (c, ny, nx)
        The cell levels (NaN where a cell has too little valid data).
    centres_y, centres_x : ndarray
        Pixel coordinates of the cell centres.
    cell : int
        Cell size in pixels.
    """

    values: np.ndarray
    centres_y: np.ndarray
    centres_x: np.ndarray
    cell: int


@dataclass
class GradientComplexity:
    """How far the background departs from a plane (per channel).

    Attributes
    ----------
    plane : ndarray, (c, 3)
        Best-fit plane ``a + b*x + c*y`` of the background map (x, y in pixels).
    residual_rms : ndarray
        RMS of the background map about that plane, in the frame's units.
    residual_ptp : ndarray
        Peak-to-peak (2nd to 98th percentile) of that residual.
    plane_ptp : ndarray
        Peak-to-peak of the plane over the frame: the size of the linear part.
    """

    plane: np.ndarray
    residual_rms: np.ndarray
    residual_ptp: np.ndarray
    plane_ptp: np.ndarray


def _channels(data: np.ndarray) -> np.ndarray:
    return data[np.newaxis] if data.ndim == 2 else data


CLEAN_TEST_ROWS = 32  # rows tested at a time: a band stays in the L2 cache between its
# minimum and its maximum (8 instead of 24 ms on a 6000 x 4000 frame with 256 rows)


def holds_data_everywhere(data: np.ndarray) -> bool:
    """True when every pixel is finite and none is 0: the frame has no no-data
    (:mod:`~napari_nsg.core.nodata` needs zeros or NaN/inf), so the metrics can
    skip the no-data mask. The minimum and maximum of each band of rows, no
    temporaries, no labelling: a NaN or an inf shows in them, and a 0 can only be
    in a band whose range holds 0 (then looked for); the first band with a NaN, an
    inf or a 0 ends it."""
    data = np.asarray(data)
    rows = data.reshape(-1, data.shape[-1]) if data.ndim >= 2 else data[np.newaxis]
    for start in range(0, len(rows), CLEAN_TEST_ROWS):
        band = rows[start:start + CLEAN_TEST_ROWS]
        lo, hi = band.min(), band.max()  # NaN if the band has one
        if not (-np.inf < lo and hi < np.inf):
            return False
        if lo <= 0 <= hi and (band == 0).any():
            return False
    return True


def sky_level(values: np.ndarray, sigma: float = 3.0, iterations: int = 5) -> float:
    """Sky level of a box: the mean after iterative sigma clipping about the median.

    Clipping (MAD-based, both sides) removes stars and hot pixels; the mean of
    what is left is not quantised the way a median of integer ADU data is.
    No-data is ignored (:func:`~napari_nsg.core.nodata.no_data_mask` for a 2-D
    box, NaN and inf for values already picked); NaN if nothing is left.
    """
    v = np.asarray(values, dtype=np.float64)
    v = (v[~no_data_mask(v)] if v.ndim >= 2 else v[np.isfinite(v)]).ravel()
    if v.size == 0:
        return float("nan")
    for _ in range(iterations):
        med = _median(v)
        dev = np.abs(v - med)
        mad = 1.4826 * _median(dev)
        if mad <= 0:
            break
        keep = dev <= sigma * mad
        if keep.all():
            break
        v = v[keep]
    return float(np.mean(v))


def _median(v: np.ndarray) -> float:
    """``np.median`` of a 1-D float array without NaN (the same value: the middle
    element, or the mean of the two middle ones), by a partition alone: about twice
    as fast on the few thousand values of a background cell."""
    k = v.size // 2
    if v.size % 2:
        return np.partition(v, k)[k]
    part = np.partition(v, (k - 1, k))
    return (part[k - 1] + part[k]) / 2


def sky_levels(rows: np.ndarray, sigma: float = 3.0, iterations: int = 5) -> np.ndarray:
    """:func:`sky_level` of every row of ``rows`` at once (NaN/inf = no value).

    The same clipping, the same values: each row is sorted once, after which the
    values kept by a clipping are a run of the sorted row, its median is the
    middle of the run, and the median absolute deviation is found by bisection
    (the ``t + 1`` values closest to the median are a window of the run). One
    sort of all the rows instead of two partitions per row and iteration: the
    160 cells of a background map in a few milliseconds.
    """
    rows = np.asarray(rows)
    if rows.dtype != np.float32:  # float32 is sorted as such (half the bytes), then widened
        rows = rows.astype(np.float64)
    s = np.sort(np.where(np.isfinite(rows), rows, rows.dtype.type(np.nan)), axis=1)
    s = s.astype(np.float64, copy=False)  # no value last
    lo = np.zeros(len(s), np.intp)
    hi = np.isfinite(s).sum(axis=1)
    active = hi > 0
    for _ in range(iterations):
        r = np.flatnonzero(active)
        if r.size == 0:
            break
        a, b = lo[r], hi[r]
        new_a, new_b, done = _clip_runs(s, r, a, b, sigma)
        lo[r[~done]], hi[r[~done]] = new_a[~done], new_b[~done]
        active[r[done]] = False
    return np.array([np.mean(row[i:j]) if j > i else np.nan for row, i, j in zip(s, lo, hi)])


def _clip_runs(s, r, a, b, sigma):
    """One clipping of :func:`sky_level` on the runs ``s[r, a:b]`` of sorted rows:
    ``(first kept, end of kept, done)``; done where the MAD is 0 or nothing is clipped."""
    m = b - a
    med = (s[r, a + (m - 1) // 2] + s[r, a + m // 2]) / 2
    dev = (_kth_deviation(s, r, a, b, med, (m - 1) // 2)
           + _kth_deviation(s, r, a, b, med, m // 2)) / 2
    thr = sigma * (1.4826 * dev)
    new_a = _first_true(lambda j: med - s[r, j] <= thr, a, b)
    new_b = _first_true(lambda j: s[r, j] - med > thr, a, b)
    return new_a, new_b, (thr <= 0) | ((new_a == a) & (new_b == b))


def _first_true(pred, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per row, the first index ``j`` in ``[lo, hi)`` where ``pred(j)`` holds (``pred``
    false then true along a row), or ``hi`` where it never does (a bisection)."""
    lo, hi = lo.copy(), hi.copy()
    while (open_ := lo < hi).any():
        mid = np.where(open_, (lo + hi) // 2, 0)
        ok = pred(mid)
        hi = np.where(open_ & ok, mid, hi)
        lo = np.where(open_ & ~ok, mid + 1, lo)
    return lo


def _kth_deviation(s, r, a, b, med, t):
    """The ``t``-th smallest (from 0) of ``|s[r, j] - med|`` for ``j`` in ``[a, b)``
    (``s`` sorted along its rows): the least largest deviation of the windows of
    ``t + 1`` values, whose largest deviations are at their ends."""
    def worst(u):
        return np.maximum(med - s[r, u], s[r, u + t] - med)

    u = _first_true(lambda j: med - s[r, j] <= s[r, j + t] - med, a, b - t)
    before = np.maximum(u - 1, a)
    return np.minimum(worst(np.minimum(u, b - t - 1)), worst(before))


def _padded(samples: list[np.ndarray]) -> np.ndarray:
    """Rows of unequal length as one array, NaN after each row's values (float32 if
    every row is float32, else float64)."""
    dtype = np.float32 if all(v.dtype == np.float32 for v in samples) else np.float64
    out = np.full((len(samples), max(len(v) for v in samples)), np.nan, dtype)
    for k, v in enumerate(samples):
        out[k, :len(v)] = v
    return out


def corner_gradients(data: np.ndarray, box_fraction: float = 0.1,
                     binning: int = 1, clean: bool = False) -> CornerGradients:
    """NSG's corner-box gradient estimates.

    Parameters
    ----------
    data : ndarray
        ``(y, x)`` or ``(c, y, x)`` frame.
    box_fraction : float
        Box side and inset as a fraction of the image height (NSG: 0.1).
    binning : int
        > 1: each box's level from its ``binning x binning`` block means (a
        block with a no-data pixel left out): fewer values to sort on large
        frames, the same boxes.
    clean : bool
        The caller knows that every pixel holds data (:func:`holds_data_everywhere`):
        the no-data mask is not computed.

    Returns
    -------
    CornerGradients
    """
    chans = _channels(np.asarray(data))
    nominal = corner_box_slices(chans.shape[-2:], box_fraction)
    valid = (np.broadcast_to(np.True_, chans.shape[-2:]) if clean
             else ~np.any(no_data_mask(chans), axis=0))
    where = {key: _box_with_data(valid, rows, cols) for key, (rows, cols) in nominal.items()}
    values = [_box_values(ch[rows, cols], valid[rows, cols], binning)
              for rows, cols in where.values() for ch in chans]
    levels = sky_levels(_padded(values)).reshape(len(where), len(chans))  # one sort for all
    boxes = dict(zip(where, levels))
    d1 = (boxes["bottom_right"] - boxes["top_left"]) * _baseline_ratio(
        nominal, where, "top_left", "bottom_right")
    d2 = (boxes["top_right"] - boxes["bottom_left"]) * _baseline_ratio(
        nominal, where, "bottom_left", "top_right")
    size = where["top_left"][0].stop - where["top_left"][0].start
    positions = {key: (r.start, c.start, r.stop, c.stop) for key, (r, c) in where.items()}
    return CornerGradients(diagonal_1=d1, diagonal_2=d2, boxes=boxes, box_size=size,
                           positions=positions)


def _box_values(box: np.ndarray, valid: np.ndarray, binning: int) -> np.ndarray:
    """What a box's level is the :func:`sky_level` of: its data pixels, or its block
    means (``binning`` > 1)."""
    if binning <= 1:
        return box[valid]
    means = bin_image(box if valid.all() else np.where(valid, box, np.float32(np.nan)), binning)
    return means[np.isfinite(means)]


MIN_BOX_VALID = 0.5  # a corner box needs this fraction of data pixels to be measured
BOX_SLIDE_STEPS = 16  # positions tried between the nominal corner box and the centre


def _box_with_data(valid: np.ndarray, rows: slice, cols: slice) -> tuple[slice, slice]:
    """The corner box, slid toward the image centre until at least
    ``MIN_BOX_VALID`` of it is data (the nominal box when none is)."""
    h, w = valid.shape
    s = rows.stop - rows.start
    y_end, x_end = (h - s) / 2, (w - s) / 2
    for t in np.linspace(0.0, 1.0, BOX_SLIDE_STEPS + 1):
        y0 = round(rows.start + t * (y_end - rows.start))
        x0 = round(cols.start + t * (x_end - cols.start))
        if valid[y0 : y0 + s, x0 : x0 + s].mean() >= MIN_BOX_VALID:
            return slice(y0, y0 + s), slice(x0, x0 + s)
    return rows, cols


def _baseline_ratio(nominal: dict, where: dict, start: str, end: str) -> float:
    """Nominal over actual distance between two box centres: scales a difference
    of slid boxes to the nominal corner-to-corner baseline (exact for a plane)."""
    def centre(rc):
        return np.array([(rc[0].start + rc[0].stop) / 2, (rc[1].start + rc[1].stop) / 2])

    full = np.linalg.norm(centre(nominal[end]) - centre(nominal[start]))
    actual = np.linalg.norm(centre(where[end]) - centre(where[start]))
    return float(full / actual) if actual > 0 else float("nan")


CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")


def corner_box_slices(shape: tuple[int, int], box_fraction: float = 0.1) -> dict:
    """``{corner: (row slice, column slice)}`` of NSG's corner boxes: side and
    inset ``box_fraction`` of the image height (at least 4 px); "top" is row 0."""
    h, w = shape
    s = max(4, round(h * box_fraction))
    rows = {"top": slice(s, 2 * s), "bottom": slice(h - 2 * s, h - s)}
    cols = {"left": slice(s, 2 * s), "right": slice(w - 2 * s, w - s)}
    return {key: (rows[key.split("_")[0]], cols[key.split("_")[1]]) for key in CORNERS}


def corner_boxes(shape: tuple[int, int],
                 box_fraction: float = 0.1) -> list[tuple[int, int, int, int]]:
    """The corner boxes of :func:`corner_gradients` as ``(y0, x0, y1, x1)`` (end
    exclusive), in the order top-left, top-right, bottom-left, bottom-right."""
    where = corner_box_slices(shape, box_fraction)
    return [(r.start, c.start, r.stop, c.stop) for r, c in (where[k] for k in CORNERS)]


def background_map(data: np.ndarray, cells: int = 16, min_valid: float = 0.5,
                   binning: int = 1, binned: list[np.ndarray] | None = None) -> BackgroundMap:
    """Sigma-clipped background levels on a grid of about ``cells`` cells along the long side.

    ``binning`` > 1 measures each cell on the ``binning x binning`` block means
    (:func:`~napari_nsg.core.stars.detection.bin_image`) instead of a subsample
    of its pixels: every pixel counts, at ``binning**2`` fewer values to sort
    (for large frames; see :func:`metric_binning`). No-data must then be NaN
    (a zero region would be averaged into its neighbours' blocks): NaN spreads
    to its block, which is left out. The cells and their centres are the same
    for any ``binning``. ``binned``: those block means of each channel, when the
    caller has them already (``bin_image(channel, binning)``).
    """
    chans = _channels(np.asarray(data))
    h, w = chans.shape[-2:]
    cell = max(8, int(np.ceil(max(h, w) / cells)))
    ny, nx = max(1, h // cell), max(1, w // cell)
    y0, x0 = (h - ny * cell) // 2, (w - nx * cell) // 2
    values = np.full((len(chans), ny, nx), np.nan)
    f = max(1, int(binning))
    step = max(1, cell // f // 128)  # about 16k values per cell is plenty for a median
    for c, ch in enumerate(chans):
        plane = (binned[c] if binned is not None else bin_image(ch, f)) if f > 1 else ch
        good = np.isfinite(plane) if f > 1 else ~no_data_mask(ch)
        cells_at, samples = [], []
        for j in range(ny):
            for i in range(nx):
                where = (slice((y0 + j * cell) // f, (y0 + (j + 1) * cell) // f, step),
                         slice((x0 + i * cell) // f, (x0 + (i + 1) * cell) // f, step))
                block, valid = plane[where], good[where]
                if valid.mean() >= min_valid:
                    cells_at.append((j, i))
                    samples.append(block[valid])
        if cells_at:
            at = np.array(cells_at)
            values[c, at[:, 0], at[:, 1]] = sky_levels(_padded(samples))
    cy = y0 + (np.arange(ny) + 0.5) * cell - 0.5
    cx = x0 + (np.arange(nx) + 0.5) * cell - 0.5
    return BackgroundMap(values=values, centres_y=cy, centres_x=cx, cell=cell)


METRIC_BIN_PIXELS = 1024  # binned frames keep at least this many pixels along the long side
MAX_METRIC_BINNING = 4


def metric_binning(shape: tuple[int, int], max_factor: int = MAX_METRIC_BINNING) -> int:
    """The binning for the background map (and, capped lower, star statistics) of
    a frame: 1 up to 2047 px along the long side, then one more per 1024 px, at
    most ``max_factor``. Small frames are measured at full resolution."""
    return int(np.clip(max(shape) // METRIC_BIN_PIXELS, 1, max_factor))


def gradient_complexity(bmap: BackgroundMap, shape: tuple[int, int]) -> GradientComplexity:
    """Fit a plane to a background map and measure what the plane leaves."""
    yy, xx = np.meshgrid(bmap.centres_y, bmap.centres_x, indexing="ij")
    h, w = shape
    corners = np.array([[1, 0, 0], [1, w - 1, 0], [1, 0, h - 1], [1, w - 1, h - 1]], float)
    planes, rms, ptp, plane_ptp = [], [], [], []
    for values in bmap.values:
        ok = np.isfinite(values)
        if ok.sum() < 4:
            planes.append(np.full(3, np.nan))
            rms.append(np.nan), ptp.append(np.nan), plane_ptp.append(np.nan)
            continue
        A = np.column_stack([np.ones(ok.sum()), xx[ok], yy[ok]])
        coef, *_ = np.linalg.lstsq(A, values[ok], rcond=None)
        resid = values[ok] - A @ coef
        planes.append(coef)
        rms.append(float(np.sqrt(np.mean(resid**2))))
        lo, hi = np.percentile(resid, [2, 98])
        ptp.append(float(hi - lo))
        at_corners = corners @ coef
        plane_ptp.append(float(at_corners.max() - at_corners.min()))
    return GradientComplexity(
        plane=np.array(planes),
        residual_rms=np.array(rms),
        residual_ptp=np.array(ptp),
        plane_ptp=np.array(plane_ptp),
    )


@dataclass
class StarStatistics:
    """Star count and median FWHM of a frame (on its intensity image)."""

    n_stars: int
    median_fwhm: float
    #: the detection itself (in the central crop when ``binning`` > 1), brightest first;
    #: None when the stars were detected in :func:`star_tiles`
    stars: StarTable | None = None


TILED_STARS_FROM = 16_000_000  # frames of this many pixels or more: stars in star_tiles
STAR_TILES = 3  # tiles along each side of the frame (3 x 3 tiles)
STAR_TILE_FRACTION = 8  # each tile is 1/8 of the frame's width and height
MIN_TILED_STARS = 150  # fewer stars in the tiles: the central crop instead


def star_tiles(shape: tuple[int, ...], per_side: int = STAR_TILES,
               fraction: int = STAR_TILE_FRACTION,
               from_pixels: int | None = None) -> list[tuple[slice, slice]] | None:
    """Where the stars of a large frame are detected: ``per_side`` x ``per_side``
    tiles of ``1/fraction`` of the width and height each, centred at evenly spaced
    points inside the frame (a quarter, half and three quarters of the way across for 3),
    so that the FWHM and the star density stand for the whole field, not just its
    centre (about 14 % of the frame for 3 tiles of 1/8). None for frames under
    ``from_pixels`` (default ``TILED_STARS_FROM``) pixels: they keep the central crop
    of :func:`star_statistics`."""
    h, w = shape[-2:]
    if h * w < (TILED_STARS_FROM if from_pixels is None else from_pixels):
        return None
    th, tw = h // fraction, w // fraction
    ys = [int(v) for v in np.linspace(0, h - th, per_side + 2)[1:-1].round()]
    xs = [int(v) for v in np.linspace(0, w - tw, per_side + 2)[1:-1].round()]
    return [(slice(y, y + th), slice(x, x + tw)) for y in ys for x in xs]


def _data_pixels(image: np.ndarray) -> int:
    """Pixels that hold data: finite and not 0."""
    return int(np.count_nonzero(np.isfinite(image) & (image != 0)))


def star_statistics(data: np.ndarray, threshold: float = 5.0, binning: int = 1,
                    clean: bool = False,
                    tiles: list[tuple[slice, slice]] | None = None) -> StarStatistics:
    """Count the stars detected at ``threshold`` sigma and take their median FWHM.

    ``binning`` > 1 (large frames): stars are detected at full resolution in the
    central ``1/binning`` of the width and of the height only, and the count is
    scaled by the ratio of data pixels in the frame to those in that crop
    (an estimate, good to a few per cent where stars are spread evenly); the
    FWHM is measured the same way as on the whole frame. ``tiles`` (very large
    frames, :func:`star_tiles`): detected in each of those windows instead (with
    :func:`~napari_nsg.core.rank_stars.detect_stars_lightly`, whose background map
    lets other threads run), the FWHM the median of all their stars and the count
    scaled the same way; when
    they hold fewer than ``MIN_TILED_STARS`` stars (a sparse field) the central
    crop is used after all. ``clean``: every pixel holds data
    (:func:`holds_data_everywhere`), so none is counted.
    """
    if tiles:
        tiled = _tiled_star_statistics(data, threshold, clean, tiles)
        if tiled is not None:
            return tiled
    inten = intensity(data)
    h, w = inten.shape
    f = max(1, int(binning))
    ch, cw = h // f, w // f
    crop = inten[(h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw]
    stars = detect_stars(crop if f > 1 else inten, threshold=threshold)
    fwhm = float(np.median(stars.fwhm)) if len(stars) else float("nan")
    n = len(stars)
    if f > 1 and n and clean:
        n = round(n * inten.size / crop.size)
    elif f > 1 and n:
        n = round(n * _data_pixels(inten) / max(_data_pixels(crop), 1))
    return StarStatistics(n_stars=n, median_fwhm=fwhm, stars=stars)


def _tiled_star_statistics(data: np.ndarray, threshold: float, clean: bool,
                           tiles: list[tuple[slice, slice]]) -> StarStatistics | None:
    """:func:`star_statistics` in ``tiles``; None when they hold fewer than
    ``MIN_TILED_STARS`` stars."""
    data = np.asarray(data)
    parts = [intensity(data[(Ellipsis, *tile)]) for tile in tiles]
    found = [detect_stars_lightly(part, threshold=threshold) for part in parts]
    n = sum(len(s) for s in found)
    if n < MIN_TILED_STARS:
        return None
    fwhm = float(np.median(np.concatenate([s.fwhm for s in found])))
    if clean:
        in_frame, in_tiles = data.shape[-2] * data.shape[-1], sum(p.size for p in parts)
    else:
        in_frame, in_tiles = _data_pixels(intensity(data)), sum(_data_pixels(p) for p in parts)
    return StarStatistics(n_stars=round(n * in_frame / max(in_tiles, 1)), median_fwhm=fwhm)


def blink_normalize(
    data: np.ndarray, scale, background, reference_background
) -> np.ndarray:
    """Scale a frame and offset it to the reference's background, for blinking.

    ``out = data * scale - (background * scale - reference_background)`` per
    channel, so every frame can be shown with one fixed stretch. Gradients are
    not removed. No-data stays 0.

    Parameters
    ----------
    data : ndarray
        ``(y, x)`` or ``(c, y, x)``.
    scale, background, reference_background : float or array of one value per channel
        The frame's scale to the reference, its own background level and the
        reference's background level.
    """
    chans = _channels(np.asarray(data, dtype=np.float32))
    n = len(chans)
    scale = np.broadcast_to(np.asarray(scale, np.float32), (n,))
    background = np.broadcast_to(np.asarray(background, np.float32), (n,))
    ref = np.broadcast_to(np.asarray(reference_background, np.float32), (n,))
    out = chans * scale[:, None, None] - (background * scale - ref)[:, None, None]
    out = np.where(no_data_mask(chans), 0, out).astype(np.float32)
    return out[0] if np.asarray(data).ndim == 2 else out
