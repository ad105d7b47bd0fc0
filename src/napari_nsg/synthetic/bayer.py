"""Colour filter array (Bayer) mosaics."""

from __future__ import annotations

import numpy as np

__all__ = ["PATTERNS", "cfa_index", "mosaic"]

#: Channel (0 R, 1 G, 2 B) at (y % 2, x % 2) for each pattern; the pattern string
#: reads the top-left 2x2 cell row by row, as the FITS keyword BAYERPAT does.
PATTERNS = {
    "RGGB": ((0, 1), (1, 2)),
    "BGGR": ((2, 1), (1, 0)),
    "GRBG": ((1, 0), (2, 1)),
    "GBRG": ((1, 2), (0, 1)),
}


def _check(pattern: str) -> tuple[tuple[int, int], tuple[int, int]]:
    try:
        return PATTERNS[pattern.upper()]
    except KeyError:
        raise ValueError(
            f"unknown Bayer pattern {pattern!r}; use one of {', '.join(PATTERNS)}"
        ) from None


def cfa_index(pattern: str, shape: tuple[int, int]) -> np.ndarray:
    """Channel index (0 R, 1 G, 2 B) of every pixel of a mosaic, shape ``shape``, uint8."""
    cell = np.array(_check(pattern), dtype=np.uint8)
    ny, nx = shape
    return np.tile(cell, (ny // 2 + 1, nx // 2 + 1))[:ny, :nx]


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Sample a ``(3, ny, nx)`` image through the colour filter array -> ``(ny, nx)``."""
    cell = _check(pattern)
    out = np.empty(rgb.shape[1:], dtype=rgb.dtype)
    for dy in (0, 1):
        for dx in (0, 1):
            out[dy::2, dx::2] = rgb[cell[dy][dx], dy::2, dx::2]
    return out
