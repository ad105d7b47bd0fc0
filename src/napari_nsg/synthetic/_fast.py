"""Small helpers for filling large float32 images quickly.

Allocating a new full-size array costs more than the arithmetic on it (page
faults), so large results are filled in place, a band of rows at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["add_scaled", "separable_sum"]

_BAND = 128


def separable_sum(
    out: np.ndarray,
    row: np.ndarray,
    col: np.ndarray,
    products: Sequence[tuple[np.ndarray, np.ndarray]] = (),
) -> np.ndarray:
    """Fill ``out[y, x] = row[y] + col[x] + sum_j a_j[y] * b_j[x]`` in place.

    Parameters
    ----------
    out : ndarray, shape (ny, nx)
        Destination (float32).
    row : ndarray, shape (ny,)
    col : ndarray, shape (nx,)
    products : sequence of (a, b)
        Rank-one terms, ``a`` of shape (ny,), ``b`` of shape (nx,).
    """
    dtype = out.dtype
    row = np.asarray(row, dtype=dtype)
    col = np.asarray(col, dtype=dtype)[None, :]
    products = [
        (np.asarray(a, dtype=dtype), np.asarray(b, dtype=dtype)[None, :]) for a, b in products
    ]
    for start in range(0, out.shape[0], _BAND):
        stop = min(start + _BAND, out.shape[0])
        band = out[start:stop]
        np.add(row[start:stop, None], col, out=band)
        for a, b in products:
            band += a[start:stop, None] * b
    return out


def add_scaled(out: np.ndarray, a: np.ndarray, k: float) -> np.ndarray:
    """``out += k * a`` in place without a full-size temporary (2-D arrays)."""
    k = out.dtype.type(k)
    for start in range(0, out.shape[0], _BAND):
        out[start : start + _BAND] += a[start : start + _BAND] * k
    return out
