"""Resampling the wide image onto the narrow pixel grid, with a coverage mask.

The narrow -> wide model is evaluated on a coarse grid of nodes (every
``step`` narrow pixels, one node beyond each edge) and brought to full
resolution by separable linear interpolation (down the rows on the node
columns, then each run of ``step`` columns in one broadcast; the models are
smooth, so the error is far below 0.01 px). ``cv2.remap`` then reads the wide
image with a cubic (default) or Lanczos-4 kernel; everything outside the wide
image or touching its no-data pixels becomes NaN.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..stars import no_data_mask

__all__ = ["INTERPOLATIONS", "WARP_BAND_ROWS", "model_maps", "warp_image", "warp_model"]

INTERPOLATIONS = {
    "cubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
    "linear": cv2.INTER_LINEAR,
}


def _linear_weights(n: int, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For 0..n-1 between equally spaced ``nodes``: the left node index and the weight
    of the right one (linear interpolation)."""
    step = nodes[1] - nodes[0]
    pos = (np.arange(n) - nodes[0]) / step
    k = np.clip(np.floor(pos).astype(int), 0, len(nodes) - 2)
    return k, pos - k


def _interpolate_rows(values: np.ndarray, k: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``values`` along axis 0 at left nodes ``k``, weights ``t``."""
    left = values[k]
    return left + (values[k + 1] - left) * t[:, None]


def _expand_columns(nodes: np.ndarray, step: int, width: int) -> np.ndarray:
    """Columns ``0..width-1`` linearly interpolated between node columns ``-step, 0,
    step, ...`` of ``nodes`` (h, n): each run of ``step`` columns is one broadcast,
    written in place into the one output array (no full-size temporaries)."""
    h = nodes.shape[0]
    t = np.arange(step, dtype=np.float32) / step
    out = np.empty((h, width), np.float32)
    whole = width // step
    runs = out[:, :whole * step].reshape(h, whole, step)  # a view: splits the column axis
    left = nodes[:, 1:whole + 1, None]
    np.multiply(nodes[:, 2:whole + 2, None] - left, t, out=runs)
    runs += left
    rest = width - whole * step
    if rest:
        left = nodes[:, whole + 1, None]
        out[:, whole * step:] = left + (nodes[:, whole + 2, None] - left) * t[:rest]
    return out


def _node_rows(transform, shape: tuple[int, int], step: int) -> list[np.ndarray]:
    """The model's x and y on the node columns of every narrow row: two float32
    ``(h, nodes in x)`` arrays (small), to be expanded along the columns."""
    h, w = shape
    xs = np.arange(-step, w - 1 + 2 * step, step, dtype=float)
    ys = np.arange(-step, h - 1 + 2 * step, step, dtype=float)
    gx, gy = np.meshgrid(xs, ys)
    out = transform(np.column_stack([gx.ravel(), gy.ravel()]))
    ky, ty = _linear_weights(h, ys)
    return [_interpolate_rows(out[:, k].reshape(len(ys), len(xs)), ky, ty).astype(np.float32)
            for k in range(2)]


def model_maps(transform, shape: tuple[int, int], step: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``(map_x, map_y)``: wide-pixel coordinates of every narrow pixel, float32 ``(h, w)``.

    Parameters
    ----------
    transform : callable
        Narrow ``(n, 2)`` -> wide ``(n, 2)`` positions.
    shape : (int, int)
        Narrow ``(height, width)``.
    step : int
        Node spacing of the grid on which ``transform`` is evaluated.
    """
    # the full-size pass in float32 (the maps' own type; 6000 px: 5e-4 px resolution)
    rows_x, rows_y = _node_rows(transform, shape, step)
    return _expand_columns(rows_x, int(step), shape[1]), _expand_columns(rows_y, int(step), shape[1])


#: Rows of narrow pixels resampled at a time by :func:`warp_model` (their maps stay
#: in the cache instead of two full-size map arrays).
WARP_BAND_ROWS = 256


def warp_model(wide: np.ndarray, transform, shape: tuple[int, int],
               interpolation: str = "cubic", step: int = 32) -> np.ndarray:
    """:func:`warp_image` at the maps of :func:`model_maps`, band by band of rows.

    The same pixels as ``warp_image(wide, *model_maps(transform, shape, step))``,
    without allocating the two full-size coordinate maps.
    """
    flag = _flag(interpolation)
    rows_x, rows_y = _node_rows(transform, shape, step)
    planes = _no_data_as_nan(wide)
    out = np.empty((len(planes), *shape), np.float32)
    for y0 in range(0, shape[0], WARP_BAND_ROWS):
        band = slice(y0, min(y0 + WARP_BAND_ROWS, shape[0]))
        map_x = _expand_columns(rows_x[band], int(step), shape[1])
        map_y = _expand_columns(rows_y[band], int(step), shape[1])
        for src, dst in zip(planes, out):
            cv2.remap(src, map_x, map_y, flag, dst=dst[band], borderMode=cv2.BORDER_CONSTANT,
                      borderValue=float("nan"))
    return out[0] if np.ndim(wide) == 2 else out


def _flag(interpolation: str) -> int:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; use one of {tuple(INTERPOLATIONS)}")
    return INTERPOLATIONS[interpolation]


def _no_data_as_nan(wide: np.ndarray) -> list[np.ndarray]:
    """The planes of ``wide`` as contiguous float32, NaN where they hold no data."""
    arr = np.asarray(wide, dtype=np.float32)
    planes = []
    for plane in (arr[None] if arr.ndim == 2 else arr):
        bad = no_data_mask(plane)
        if bad.any():
            plane = plane.copy()
            plane[bad] = np.nan
        planes.append(np.ascontiguousarray(plane))
    return planes


def warp_image(
    wide: np.ndarray,
    map_x: np.ndarray,
    map_y: np.ndarray,
    interpolation: str = "cubic",
) -> np.ndarray:
    """Read ``wide`` at ``(map_x, map_y)``; NaN where it has no data.

    Parameters
    ----------
    wide : ndarray, (y, x) or (c, y, x)
        The wide image; 0/NaN/inf pixels are no data.
    map_x, map_y : ndarray, float32, (h, w)
        From :func:`model_maps`.
    interpolation : {"cubic", "lanczos", "linear"}

    Returns
    -------
    ndarray, float32, (h, w) or (c, h, w)
    """
    flag = _flag(interpolation)
    out = [cv2.remap(src, map_x, map_y, flag, borderMode=cv2.BORDER_CONSTANT,
                     borderValue=float("nan")) for src in _no_data_as_nan(wide)]
    return out[0] if np.ndim(wide) == 2 else np.stack(out)
