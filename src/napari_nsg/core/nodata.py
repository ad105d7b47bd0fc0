"""Which pixels hold no data: the one rule every part of the package uses.

NaN and inf are always no-data. A 0 is no-data only where it forms a region:
a connected (4-neighbour) patch of zeros that touches the image border
(registration or framing borders, a crop; at least ``MIN_BORDER_REGION``
pixels) or one of at least ``MIN_ZERO_REGION`` pixels (a block masked inside
the frame). An isolated 0, or a small cluster of them, is a value: raw camera
frames clip dark sky pixels to exactly 0 (6.5 % of the photosites of a Seestar
20 s frame), and those must be measured, not dropped.
"""

from __future__ import annotations

import cv2
import numpy as np

from .threads import available_threads, in_two_threads

#: Zero patches of at least this many pixels are no-data wherever they are
#: (a 32 x 32 block); smaller ones not touching the border are clipped values.
MIN_ZERO_REGION = 1024
#: A zero patch touching the border is no-data from this size (a border of a
#: registered frame is a strip along an edge; a few clipped pixels at the
#: edge are values).
MIN_BORDER_REGION = 16
#: Edge zeros tested together for being reached by an earlier flood fill.
SEED_CHUNK = 256
#: Rows per band of :func:`_range_and_zeros` (6000 float32 columns: 768 KB, in the L2 cache).
VALUE_RANGE_ROWS = 32
#: Frames from this size are scanned (value range, zero test) on two threads.
PARALLEL_PIXELS = 2_000_000

__all__ = ["MIN_BORDER_REGION", "MIN_ZERO_REGION", "find_no_data", "may_hold_zero",
           "no_data_mask", "with_nan_no_data", "zero_regions"]


def _has_zero_neighbour(zero: np.ndarray) -> np.ndarray:
    """True where one of the 4 neighbours is zero (cheap: 4 shifted ORs)."""
    nb = np.zeros_like(zero)
    nb[1:] |= zero[:-1]
    nb[:-1] |= zero[1:]
    nb[:, 1:] |= zero[:, :-1]
    nb[:, :-1] |= zero[:, 1:]
    return nb


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice] | None:
    """The smallest (rows, cols) slices holding every True of ``mask``; None if none."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _border_regions(zero: np.ndarray, min_area: int, n_zero: int | None = None
                    ) -> np.ndarray | None:
    """:func:`zero_regions` of ``zero`` when every zero is connected to the image
    border, else None. ``n_zero``: the number of zeros, when known.

    A registration border surrounds the whole frame, so its bounding box is the
    frame and labelling it costs a pass over every pixel; flood fills from the
    zeros on the edges cost about the zeros' own number (5x faster on 24 Mpx).
    A lone zero on an edge is a region of one pixel, too small to count.
    """
    h, w = zero.shape
    mask = np.zeros((h + 2, w + 2), np.uint8)  # cv2's fill mask: 3 kept, 2 too small
    inner = mask[1:-1, 1:-1]
    small = min(min_area, MIN_BORDER_REGION, h * w)
    img = np.ascontiguousarray(zero).view(np.uint8)
    top, bottom = np.flatnonzero(zero[0]), np.flatnonzero(zero[-1])
    left, right = np.flatnonzero(zero[:, 0]), np.flatnonzero(zero[:, -1])
    xs = np.concatenate([top, bottom, np.zeros_like(left), np.full_like(right, w - 1)])
    ys = np.concatenate([np.zeros_like(top), np.full_like(bottom, h - 1), left, right])
    filled = kept = dropped = 0
    for k in range(0, len(xs), SEED_CHUNK):  # seeds a fill already reached: skipped at once
        cx, cy = xs[k:k + SEED_CHUNK], ys[k:k + SEED_CHUNK]
        for x, y in zip(cx[inner[cy, cx] == 0], cy[inner[cy, cx] == 0]):
            if inner[y, x]:
                continue
            area, _, _, (rx, ry, rw, rh) = cv2.floodFill(
                img, mask, (int(x), int(y)), 0, 0, 0, 4 | cv2.FLOODFILL_MASK_ONLY | (3 << 8))
            if area >= small or (area > 1 and _side_strip(ry, rh, rx, rw, h, w)):  # kept
                kept += 1
            else:
                _mark_small(inner, zero, (rx, ry, rw, rh), (int(x), int(y)), kept > 0)
                dropped += 1
            filled += int(area)
    if filled != (np.count_nonzero(zero) if n_zero is None else n_zero):
        return None  # a region away from the border: label them all
    return zero if dropped == 0 else inner == 3  # every zero kept: no pass over the mask


def _side_strip(y0, rows, x0, cols, h: int, w: int):
    """Whether a region (top ``y0``, ``rows`` tall, left ``x0``, ``cols`` wide) runs along
    the left or right side over the plane's whole height: a border strip however thin.
    A whole frame's strip that thin is a border from MIN_BORDER_REGION rows; a chunk of
    rows (``stack`` judges each frame's chunk on its own) may be fewer rows tall, and a
    1-2 px border was then stacked as zeros at 4-15 rows a chunk. A lone zero stays a
    value (in a one-row chunk, a 1 px border too)."""
    return (y0 == 0) & (y0 + rows == h) & ((x0 == 0) | (x0 + cols == w))


def _mark_small(inner: np.ndarray, zero: np.ndarray, rect, seed, others: bool) -> None:
    """Mark the region just filled (value 3 in ``inner``, bounding box ``rect``) as too
    small (2). ``others``: kept regions (also 3) may lie in that box, so the region's
    own pixels are found by labelling the box (a few pixels)."""
    rx, ry, rw, rh = rect
    box = inner[ry:ry + rh, rx:rx + rw]
    if not others:
        box[box == 3] = 2
        return
    crop = np.ascontiguousarray(zero[ry:ry + rh, rx:rx + rw]).view(np.uint8)
    _, labels = cv2.connectedComponents(crop, connectivity=4, ltype=cv2.CV_32S)
    box[labels == labels[seed[1] - ry, seed[0] - rx]] = 2


def zero_regions(zero: np.ndarray, min_area: int = MIN_ZERO_REGION) -> np.ndarray:
    """The pixels of ``zero`` (2-D bool) in 4-connected regions of at least
    ``min_area`` pixels, or of ``MIN_BORDER_REGION`` when they touch the border."""
    n_zero = np.count_nonzero(zero)
    if n_zero == 0:
        return zero
    if min_area > 1:
        # a border alone: no more passes (a lone zero on an edge is a region too small
        # to count, unless the image is one pixel)
        from_border = _border_regions(zero, min_area, n_zero) if zero.size > 1 else None
        if from_border is not None:
            return from_border
        # a lone zero is a value, wherever it is: leave it out of the labelling
        zero = zero & _has_zero_neighbour(zero)
        from_border = _border_regions(zero, min_area)
        if from_border is not None:
            return from_border
    box = _bounding_box(zero)
    if box is None:
        return zero
    h, w = zero.shape
    crop = np.ascontiguousarray(zero[box])  # label only where zeros are (a border band: cheap)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(
        crop.view(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    area = stats[:, cv2.CC_STAT_AREA]
    keep = area >= min_area
    ry, rx = box
    x0 = stats[:, cv2.CC_STAT_LEFT] + rx.start
    y0 = stats[:, cv2.CC_STAT_TOP] + ry.start
    x1 = x0 + stats[:, cv2.CC_STAT_WIDTH]
    y1 = y0 + stats[:, cv2.CC_STAT_HEIGHT]
    border = (x0 == 0) | (y0 == 0) | (x1 == w) | (y1 == h)
    # a region touching the border counts from MIN_BORDER_REGION pixels, or when
    # it is the whole plane (a tiny image with nothing in it)
    keep |= border & (area >= min(min_area, MIN_BORDER_REGION, h * w))
    keep |= _side_strip(y0, y1 - y0, x0, x1 - x0, h, w)
    keep[0] = False  # label 0 is the background (the non-zero pixels)
    out = np.zeros_like(zero)
    out[box] = keep[labels]
    return out


def no_data_mask(data: np.ndarray, min_area: int = MIN_ZERO_REGION) -> np.ndarray:
    """True where a pixel holds no data.

    Parameters
    ----------
    data : ndarray
        ``(y, x)`` or ``(..., y, x)``; each plane is judged on its own.
    min_area : int
        Zero patches not touching the border count as no-data from this size.

    Returns
    -------
    ndarray of bool, the shape of ``data``
        NaN/inf, and zeros in regions (see the module docstring).
    """
    bad, _ = find_no_data(data, min_area)
    return np.zeros(np.shape(data), bool) if bad is None else bad


def find_no_data(data: np.ndarray, min_area: int = MIN_ZERO_REGION, *,
                 out: np.ndarray | None = None) -> tuple[np.ndarray | None, bool]:
    """``(no_data_mask(data), whether any zero region is part of it)``, the mask
    None when surely no pixel lacks data.

    The full-size passes are only those that the data needs: a frame whose
    smallest and largest values are finite has no NaN/inf (no finiteness test),
    and one that is positive (or negative) everywhere has no zero (no zero test,
    no regions): such a frame costs two reductions and no mask.

    ``out``: a C-contiguous bool array of ``data``'s shape for the zero test; the
    mask returned is ``out`` itself when it is all there is (zeros in border regions
    only: a registered frame), else a new array (``out`` then holds scratch).
    """
    data = np.asarray(data)
    if data.ndim < 2:
        return ~np.isfinite(data) | (data == 0), False
    lo, hi, zero = _range_and_zeros(data, out)
    finite = bool(np.isfinite(lo) and np.isfinite(hi))  # no NaN, no inf
    if finite and (lo > 0 or hi < 0):
        return None, False
    if not finite and not (may_hold_zero(data) if zero is None else zero.any()):
        return ~np.isfinite(data), False
    zero = data == 0 if zero is None else zero
    planes = zero.reshape(-1, *zero.shape[-2:])
    regions = [zero_regions(np.ascontiguousarray(p), min_area) for p in planes]
    found = any(r.any() for r in regions)
    if finite:  # the zero regions are all there is
        bad = regions[0] if len(regions) == 1 else np.stack(regions)
        return bad.reshape(data.shape), found
    bad = ~np.isfinite(data)
    for b, r in zip(bad.reshape(planes.shape), regions):
        b |= r
    return bad, found


def _value_range(data: np.ndarray) -> tuple[float, float]:
    """Smallest and largest value, NaN when there is a NaN (NaN for the largest when
    the smallest is not finite); no temporary array. Contiguous frames go by bands
    instead (:func:`_range_and_zeros`)."""
    if data.size == 0:
        return float("nan"), float("nan")
    with np.errstate(invalid="ignore"):
        lo = float(np.min(data))
        return lo, (float(np.max(data)) if np.isfinite(lo) else float("nan"))


def _range_and_zeros(data: np.ndarray, out: np.ndarray | None = None
                     ) -> tuple[float, float, np.ndarray | None]:
    """``(*_value_range(data), data == 0)`` in one pass from memory: each band's zero
    test while the band is in the cache, skipped (left False) in a band whose values
    are all above or all below 0 (into ``out`` when given). The mask is None where
    :func:`_value_range` does not go by bands (it is then made by the caller if
    needed)."""
    if data.size == 0 or data.ndim < 2 or not data.flags.c_contiguous:
        return (*_value_range(data), None)
    rows = data.reshape(-1, data.shape[-1])
    # not cleared: a reused heap block would be zeroed for nothing
    zero = np.empty(rows.shape, bool) if out is None else out.reshape(rows.shape)
    starts = range(0, len(rows), VALUE_RANGE_ROWS)
    n = available_threads(2) if data.size >= PARALLEL_PIXELS else 1
    if n == 1:
        lows, highs, tested = _scan_bands(rows, zero, starts)
    else:  # the bands' halves on two threads (NumPy releases the GIL)
        cut = len(starts) // 2
        (lows, highs, tested), more = in_two_threads(
            lambda: _scan_bands(rows, zero, starts[:cut]),
            lambda: _scan_bands(rows, zero, starts[cut:]), "no-data")
        lows, highs, tested = lows + more[0], highs + more[1], tested + more[2]
    if any(tested):  # the bands not tested hold no zero
        for i, done in zip(starts, tested):
            if not done:
                zero[i:i + VALUE_RANGE_ROWS] = False
    elif out is None:  # no zero anywhere: pages that nothing touches
        zero = np.zeros(rows.shape, bool)
    else:
        zero[...] = False
    with np.errstate(invalid="ignore"):
        lo = float(np.min(lows))  # NaN if a band has one
        hi = float(np.max(highs)) if np.isfinite(lo) else float("nan")
    return lo, hi, zero.reshape(data.shape)


def _scan_bands(rows: np.ndarray, zero: np.ndarray, starts) -> tuple[list, list, list]:
    """Each band's smallest and largest value, and its zero test into ``zero``
    where the band may hold a zero (see :func:`_range_and_zeros`): ``(lows, highs,
    tested)``, ``tested`` whether each band's zero test was written."""
    lows, highs, tested = [], [], []
    with np.errstate(invalid="ignore"):
        for i in starts:
            band = rows[i:i + VALUE_RANGE_ROWS]
            low, high = band.min(), band.max()
            lows.append(low)
            highs.append(high)
            tested.append(not (low > 0 or high < 0))  # a zero may be there (or a NaN)
            if tested[-1]:
                np.equal(band, 0, out=zero[i:i + VALUE_RANGE_ROWS])
    return lows, highs, tested


def may_hold_zero(data: np.ndarray) -> bool:
    """False when ``data`` surely holds no 0: its smallest value (NaN left out) is
    positive or its largest negative. Two reductions, no temporary array: most sky
    frames are above 0 everywhere, so their zero test costs no full-size pass."""
    data = np.asarray(data)
    if data.size == 0 or not np.issubdtype(data.dtype, np.floating):
        return data.size > 0
    with np.errstate(invalid="ignore"):
        if np.fmin.reduce(data, axis=None) > 0:
            return False
        return not np.fmax.reduce(data, axis=None) < 0


def with_nan_no_data(plane: np.ndarray) -> np.ndarray:
    """``plane`` as float with NaN where it holds no data (the input itself when
    it has no zero, so a frame without zeros costs no copy)."""
    plane = np.asarray(plane)
    if not np.issubdtype(plane.dtype, np.floating):
        plane = plane.astype(np.float32)
    if not may_hold_zero(plane) or not (plane == 0).any():
        return plane
    return np.where(no_data_mask(plane), np.nan, plane).astype(plane.dtype, copy=False)
