"""Resampling the wide image onto the narrow pixel grid, with a coverage mask.

The narrow -> wide model is evaluated on a coarse grid of nodes (every
``step`` narrow pixels, one node beyond each edge) and brought to full
resolution by separable linear interpolation (sparse matrices; the models are
smooth, so the error is far below 0.01 px). ``cv2.remap`` then reads the wide
image with a cubic (default) or Lanczos-4 kernel; everything outside the wide
image or touching its no-data pixels becomes NaN.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import sparse

from ..stars import no_data_mask

__all__ = ["INTERPOLATIONS", "model_maps", "warp_image"]

INTERPOLATIONS = {
    "cubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
    "linear": cv2.INTER_LINEAR,
}


def _linear_matrix(n: int, nodes: np.ndarray) -> sparse.csr_matrix:
    """(n x len(nodes)) linear interpolation from equally spaced ``nodes`` to 0..n-1."""
    step = nodes[1] - nodes[0]
    pos = (np.arange(n) - nodes[0]) / step
    k = np.clip(np.floor(pos).astype(int), 0, len(nodes) - 2)
    t = pos - k
    rows = np.repeat(np.arange(n), 2)
    cols = np.column_stack([k, k + 1]).ravel()
    data = np.column_stack([1 - t, t]).ravel()
    return sparse.csr_matrix((data, (rows, cols)), shape=(n, len(nodes)))


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
    h, w = shape
    xs = np.arange(-step, w - 1 + 2 * step, step, dtype=float)
    ys = np.arange(-step, h - 1 + 2 * step, step, dtype=float)
    gx, gy = np.meshgrid(xs, ys)
    out = transform(np.column_stack([gx.ravel(), gy.ravel()]))
    ax = _linear_matrix(w, xs).astype(np.float64)
    ay = _linear_matrix(h, ys).astype(np.float64)
    maps = []
    for k in range(2):
        grid = out[:, k].reshape(len(ys), len(xs))
        tmp = np.asarray(ay @ grid)  # (h, gx)
        full = np.asarray(ax @ tmp.T).T  # (h, w)
        maps.append(np.ascontiguousarray(full, dtype=np.float32))
    return maps[0], maps[1]


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
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; use one of {tuple(INTERPOLATIONS)}")
    flag = INTERPOLATIONS[interpolation]
    arr = np.asarray(wide, dtype=np.float32)
    planes = arr[None] if arr.ndim == 2 else arr
    out = []
    for plane in planes:
        src = plane
        bad = no_data_mask(plane)
        if bad.any():
            src = plane.copy()
            src[bad] = np.nan
        out.append(cv2.remap(np.ascontiguousarray(src), map_x, map_y, flag,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=float("nan")))
    res = np.stack(out)
    return res[0] if arr.ndim == 2 else res
