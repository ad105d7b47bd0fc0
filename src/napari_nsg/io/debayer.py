"""Debayering of raw one-shot-colour (CFA) frames, only when asked for."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..core.nodata import no_data_mask

METHODS = ("superpixel", "bilinear")
_CHANNEL = {"R": 0, "G": 1, "B": 2}


def _channel_masks(pattern: str, shape: tuple[int, int]) -> np.ndarray:
    """Boolean (3, y, x) masks of where each colour sits in the mosaic."""
    masks = np.zeros((3, *shape), dtype=bool)
    for k, colour in enumerate(pattern):
        dy, dx = divmod(k, 2)
        masks[_CHANNEL[colour], dy::2, dx::2] = True
    return masks


def debayer(data: np.ndarray, pattern: str, method: str = "superpixel") -> np.ndarray:
    """Turn a CFA mosaic into a (3, y, x) RGB array.

    Parameters
    ----------
    data : ndarray, (y, x)
        The raw mosaic, in its own units.
    pattern : str
        ``"RGGB"``, ``"BGGR"``, ``"GRBG"`` or ``"GBRG"``, for row 0 / column 0 of ``data``.
    method : {"superpixel", "bilinear"}
        ``superpixel`` makes each 2x2 cell one RGB pixel (half size; the two
        greens averaged): no interpolation, so photometry stays exact.
        ``bilinear`` keeps the full size and fills each colour's missing
        pixels by normalised 3x3 convolution of its own samples.

    Returns
    -------
    ndarray, float32, (3, y', x')
        No-data samples (:func:`~napari_nsg.core.nodata.no_data_mask`: NaN/inf,
        zero regions) give no-data outputs.
    """
    if data.ndim != 2:
        raise ValueError(f"a CFA mosaic is 2-D, got shape {data.shape}")
    pattern = pattern.upper()
    if sorted(pattern) != ["B", "G", "G", "R"]:
        raise ValueError(f"unknown Bayer pattern {pattern!r}")
    if method not in METHODS:
        raise ValueError(f"debayer method must be one of {METHODS}, got {method!r}")
    data = np.asarray(data, dtype=np.float32)
    valid = ~no_data_mask(data)  # a lone 0 is a clipped value, not no-data
    if method == "superpixel":
        h, w = (data.shape[0] // 2) * 2, (data.shape[1] // 2) * 2
        out = np.zeros((3, h // 2, w // 2), dtype=np.float32)
        greens = []
        cell_ok = np.ones((h // 2, w // 2), dtype=bool)
        for k, colour in enumerate(pattern):
            dy, dx = divmod(k, 2)
            plane = data[dy:h:2, dx:w:2]
            cell_ok &= valid[dy:h:2, dx:w:2]
            if colour == "G":
                greens.append(plane)
            else:
                out[_CHANNEL[colour]] = plane
        out[1] = 0.5 * (greens[0] + greens[1])
        out[:, ~cell_ok] = 0.0
        return out
    masks = _channel_masks(pattern, data.shape) & valid
    clean = np.where(valid, data, 0.0).astype(np.float32)
    kernel = np.array([[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]], dtype=np.float32)
    out = np.empty((3, *data.shape), dtype=np.float32)
    for c in range(3):
        num = ndimage.convolve(clean * masks[c], kernel, mode="mirror")
        den = ndimage.convolve(masks[c].astype(np.float32), kernel, mode="mirror")
        plane = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
        out[c] = np.where(masks[c], clean, plane)
    out[:, ~valid] = 0.0
    return out
