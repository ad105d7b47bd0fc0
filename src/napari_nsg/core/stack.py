"""Weighted mean integration with pixel rejection, over a chunk of rows of all frames.

Every function works on a ``(n, ...)`` block: ``n`` frames along axis 0, any
image axes after it (``(n, rows, x)`` mono, ``(n, c, rows, x)`` colour), so
colour is per channel for free and memory is that of one chunk of rows.

No data: NaN and inf, and zeros where they form regions (the borders that
``register`` and ``normalize`` write; :func:`napari_nsg.core.nodata.no_data_mask`,
judged on each frame's chunk of rows, whose cut edges count as borders: a strip
along a side over the chunk's height is a border however thin) are
ignored; an isolated 0 (a clipped camera pixel) is a value. A pixel with no
data in any frame is 0 in the stack.

Rejection methods (thresholds in units of the pixel stack's sigma):

``sigma``
    Iterative sigma clipping about the median: reject ``v < m - low*s`` and
    ``v > m + high*s`` (``s`` the standard deviation of the values kept),
    until nothing changes. Defaults 3.5 / 2.5.
``winsorized``
    As ``sigma``, but ``s`` is the winsorized sigma: values beyond
    ``m +- 1.5 s`` are replaced by those bounds and ``s = 1.134 * std`` is
    iterated to convergence (Huber), so one bright outlier cannot inflate ``s``.
    Defaults 3.5 / 2.2.
``linear-fit``
    The kept values, sorted, are fitted by a straight line of their rank;
    ``s`` is the mean absolute deviation from it times sqrt(pi/2); values
    below ``fit - low*s`` or above ``fit + high*s`` are rejected, iterated.
    Robust for large sets with a spread of sky levels. Defaults 5.0 / 2.5.
``percentile``
    One pass: reject ``v < m - low*|m|`` and ``v > m + high*|m|`` (fractions
    of the median). For a handful of frames where no sigma can be estimated.
    Defaults 0.2 / 0.1.
``auto``
    By the number of frames, as NSG's hand-off to ImageIntegration:
    ``n <= 2`` none, ``n < 8`` percentile, ``n <= 10`` sigma, ``n < 20``
    winsorized, else linear-fit (NSG picks ESD there; linear-fit is the other
    method PixInsight recommends for large sets, and is implemented here).

Pixels with fewer than :data:`MIN_FOR_REJECTION` values are never rejected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .nodata import no_data_mask

__all__ = [
    "DEFAULT_THRESHOLDS",
    "MIN_FOR_REJECTION",
    "REJECTIONS",
    "Rejection",
    "StackChunk",
    "auto_rejection",
    "integrate",
    "reject",
    "valid_mask",
]

REJECTIONS = ("auto", "none", "sigma", "winsorized", "linear-fit", "percentile")

#: (low, high) thresholds per method (sigma units, or median fractions for percentile).
DEFAULT_THRESHOLDS = {
    "none": (0.0, 0.0),
    "sigma": (3.5, 2.5),
    "winsorized": (3.5, 2.2),
    "linear-fit": (5.0, 2.5),
    "percentile": (0.2, 0.1),
}

#: The rejection statistics are computed in float32 (sorting is 3x faster than in
#: float64; sums of at most a few hundred values keep 6 significant digits).
WORK_DTYPE = np.float32
#: Fewest values at a pixel for any rejection to be tried there.
MIN_FOR_REJECTION = 3
#: Iterations of the clipping loops (they normally stop after 2-4).
MAX_ITERATIONS = 10
#: Winsorization: clamp at this many sigma, rescale the std by this factor.
WINSOR_CLAMP = 1.5
WINSOR_FACTOR = 1.134
WINSOR_TOLERANCE = 5e-4
WINSOR_ITERATIONS = 10
#: Mean absolute deviation -> sigma for a Gaussian.
MEAN_ABS_TO_SIGMA = float(np.sqrt(np.pi / 2))

# auto: frame counts at which the method changes (NSG's ImageIntegration hand-off)
AUTO_NONE_MAX = 2
AUTO_PERCENTILE_BELOW = 8
AUTO_SIGMA_MAX = 10
AUTO_WINSORIZED_BELOW = 20


@dataclass(frozen=True)
class Rejection:
    """A resolved rejection method.

    Attributes
    ----------
    method : {"none", "sigma", "winsorized", "linear-fit", "percentile"}
    low, high : float
        Thresholds (see the module text).
    """

    method: str
    low: float
    high: float

    @classmethod
    def resolve(cls, method: str, n_frames: int, low: float | None = None,
                high: float | None = None) -> "Rejection":
        """The method for ``n_frames`` (``auto`` chosen by count), default thresholds."""
        if method not in REJECTIONS:
            raise ValueError(f"unknown rejection {method!r}; use one of {', '.join(REJECTIONS)}")
        if method == "auto":
            method = auto_rejection(n_frames)
        dl, dh = DEFAULT_THRESHOLDS[method]
        return cls(method, dl if low is None else float(low), dh if high is None else float(high))


@dataclass
class StackChunk:
    """The integration of one block.

    Attributes
    ----------
    stack : ndarray, float32
        Weighted mean of the kept values (0 where none).
    n_low, n_high : ndarray, int16
        Values rejected below / above per pixel.
    n_used : ndarray, int16
        Frames contributing per pixel.
    frame_low, frame_high : ndarray, int64, (n,)
        Values rejected below / above in each frame.
    frame_valid : ndarray, int64, (n,)
        Values with data (finite, a positive weight) in each frame.
    """

    stack: np.ndarray
    n_low: np.ndarray
    n_high: np.ndarray
    n_used: np.ndarray
    frame_low: np.ndarray
    frame_high: np.ndarray
    frame_valid: np.ndarray


def auto_rejection(n_frames: int) -> str:
    """The rejection ``auto`` picks for ``n_frames`` frames (see the module text)."""
    if n_frames <= AUTO_NONE_MAX:
        return "none"
    if n_frames < AUTO_PERCENTILE_BELOW:
        return "percentile"
    if n_frames <= AUTO_SIGMA_MAX:
        return "sigma"
    if n_frames < AUTO_WINSORIZED_BELOW:
        return "winsorized"
    return "linear-fit"


def valid_mask(values: np.ndarray) -> np.ndarray:
    """True where a value is data (the shared no-data rule, per image plane).

    ``values`` is ``(n, ..., rows, x)``: each frame's (and channel's) chunk is
    judged as one image. With fewer than 3 axes there are no planes, and every
    exact 0 counts as no data.
    """
    values = np.asarray(values)
    if values.ndim < 3:
        return np.isfinite(values) & (values != 0)
    return ~no_data_mask(values)


def _median(x: np.ndarray) -> np.ndarray:
    """Median along axis 0 ignoring NaN (NaN where all are NaN); sorts once."""
    s = np.sort(x, axis=0)  # NaN last
    k = np.sum(~np.isnan(x), axis=0)
    lo = np.clip((k - 1) // 2, 0, None)[None]
    hi = np.clip(k // 2, 0, x.shape[0] - 1)[None]
    med = 0.5 * (np.take_along_axis(s, lo, 0)[0] + np.take_along_axis(s, hi, 0)[0])
    return np.where(k > 0, med, np.nan)


def _std(x: np.ndarray, kept: np.ndarray) -> np.ndarray:
    n = np.maximum(kept.sum(axis=0), 1)
    mean = np.where(kept, x, 0).sum(axis=0) / n
    var = np.where(kept, (x - mean) ** 2, 0).sum(axis=0) / np.maximum(n - 1, 1)
    return np.sqrt(var)


def _winsorized_sigma(x: np.ndarray, kept: np.ndarray, med: np.ndarray) -> np.ndarray:
    s = _std(x, kept)
    for _ in range(WINSOR_ITERATIONS):
        w = np.clip(x, med - WINSOR_CLAMP * s, med + WINSOR_CLAMP * s)
        new = WINSOR_FACTOR * _std(w, kept)
        moving = np.abs(new - s) > WINSOR_TOLERANCE * np.maximum(s, 1e-30)
        s = new
        if not moving.any():
            break
    return s


def _linear_fit_bounds(xs: np.ndarray, ks: np.ndarray, low: float, high: float):
    """Bounds for values sorted along axis 0 (``ks``: kept), from a line fitted to
    the kept values against their rank."""
    rank = np.cumsum(ks, axis=0) - 1.0  # rank among the kept values
    n = np.maximum(ks.sum(axis=0), 1)
    r_mean = np.where(ks, rank, 0).sum(0) / n
    v_mean = np.where(ks, xs, 0).sum(0) / n
    dr = np.where(ks, rank - r_mean, 0)
    slope = (dr * np.where(ks, xs - v_mean, 0)).sum(0) / np.maximum((dr**2).sum(0), 1e-30)
    fit = v_mean + slope * (rank - r_mean)
    sigma = MEAN_ABS_TO_SIGMA * np.where(ks, np.abs(xs - fit), 0).sum(0) / n
    return fit - low * sigma, fit + high * sigma


def _bounds(method: str, x: np.ndarray, kept: np.ndarray, low: float, high: float):
    if method == "linear-fit":
        return _linear_fit_bounds(x, kept, low, high)
    med = _median(np.where(kept, x, np.nan))
    if method == "percentile":
        return med - low * np.abs(med), med + high * np.abs(med)
    s = _winsorized_sigma(x, kept, med) if method == "winsorized" else _std(x, kept)
    return med - low * s, med + high * s


def reject(values: np.ndarray, rejection: Rejection,
           valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Which values are rejected, low and high.

    Parameters
    ----------
    values : ndarray, (n, ...)
        One value per frame along axis 0.
    rejection : Rejection
    valid : ndarray of bool, optional
        Data mask (default :func:`valid_mask`).

    Returns
    -------
    (low, high) : ndarrays of bool, shaped like ``values``
    """
    x = np.ascontiguousarray(values, dtype=WORK_DTYPE)
    valid = valid_mask(x) if valid is None else np.ascontiguousarray(valid)
    low = np.zeros(x.shape, bool)
    high = np.zeros(x.shape, bool)
    if rejection.method == "none":
        return low, high
    order = None
    if rejection.method == "linear-fit":  # work on the values sorted once
        order = np.argsort(np.where(valid, x, np.inf), axis=0)
        x = np.ascontiguousarray(np.take_along_axis(x, order, 0))
        valid = np.ascontiguousarray(np.take_along_axis(valid, order, 0))
    _clip(x, valid, rejection, low, high)
    if order is not None:
        inv = np.argsort(order, axis=0)
        low, high = np.take_along_axis(low, inv, 0), np.take_along_axis(high, inv, 0)
    return low, high


def _clip(x: np.ndarray, valid: np.ndarray, rejection: Rejection,
          low: np.ndarray, high: np.ndarray) -> None:
    """The clipping iterations; fills ``low`` and ``high`` (contiguous) in place.

    Each iteration works only on the pixels whose rejections changed in the
    previous one (after the first pass, a few per cent of them).
    """
    n = x.shape[0]
    xf, vf = x.reshape(n, -1), valid.reshape(n, -1)
    lf, hf = low.reshape(n, -1), high.reshape(n, -1)
    idx = np.flatnonzero(vf.sum(axis=0) >= MIN_FOR_REJECTION)
    iterations = 1 if rejection.method == "percentile" else MAX_ITERATIONS
    for _ in range(iterations):
        if idx.size == 0:
            break
        xs = xf[:, idx]
        kept = vf[:, idx] & ~lf[:, idx] & ~hf[:, idx]
        lo_b, hi_b = _bounds(rejection.method, np.where(kept, xs, 0.0), kept,
                             rejection.low, rejection.high)
        new_low = kept & (xs < lo_b)
        new_high = kept & (xs > hi_b)
        # never leave fewer than MIN_FOR_REJECTION - 1 values: keep the pixel as it was
        left = (kept & ~new_low & ~new_high).sum(axis=0)
        too_few = left < MIN_FOR_REJECTION - 1
        new_low &= ~too_few
        new_high &= ~too_few
        changed = (new_low | new_high).any(axis=0)
        idx = idx[changed]
        lf[:, idx] |= new_low[:, changed]
        hf[:, idx] |= new_high[:, changed]


def integrate(values: np.ndarray, weights: np.ndarray | None = None,
              rejection: Rejection | None = None) -> StackChunk:
    """Weighted mean of a block of all frames, with pixel rejection.

    Parameters
    ----------
    values : ndarray, (n, ...)
        The frames' pixels for one block (rows of every frame).
    weights : ndarray, (n,), optional
        One weight per frame (default equal). Non-positive weights drop the frame.
    rejection : Rejection, optional
        Default: no rejection.

    Returns
    -------
    StackChunk
    """
    x = np.asarray(values)
    n = x.shape[0]
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"need one weight per frame ({n}), got shape {w.shape}")
    valid = valid_mask(x) & (w > 0).reshape((n,) + (1,) * (x.ndim - 1))
    low, high = reject(x, rejection or Rejection("none", 0, 0), valid)
    kept = valid & ~low & ~high
    wk = np.where(kept, w.reshape((n,) + (1,) * (x.ndim - 1)), 0.0)
    total = wk.sum(axis=0)
    num = (wk * np.where(kept, x, 0.0)).sum(axis=0, dtype=np.float64)
    stack = np.where(total > 0, num / np.where(total > 0, total, 1), 0.0)
    per_frame = tuple(range(1, x.ndim))
    return StackChunk(stack=stack.astype(np.float32), n_low=low.sum(0).astype(np.int16),
                      n_high=high.sum(0).astype(np.int16), n_used=kept.sum(0).astype(np.int16),
                      frame_low=low.sum(per_frame), frame_high=high.sum(per_frame),
                      frame_valid=valid.sum(per_frame))
