"""Detector noise: shot noise (Gaussian approximation of Poisson) and read noise.

All in ADU: a noise-free level ``L`` (ADU) has variance ``max(L, 0) / gain +
read_noise^2`` with ``gain`` in e-/ADU and ``read_noise`` in ADU.
"""

from __future__ import annotations

import numpy as np

__all__ = ["add_noise", "noise_sigma", "sigma_map"]

_BAND = 128


def noise_sigma(level: np.ndarray | float, gain: float, read_noise: float) -> np.ndarray:
    """Noise sigma (ADU) at a noise-free level (ADU): ``sqrt(max(level,0)/gain + read^2)``."""
    level = np.maximum(np.asarray(level, dtype=np.float64), 0.0)
    return np.sqrt(level / gain + read_noise**2)


def sigma_map(noise_free: np.ndarray, gain: float, read_noise: float) -> np.ndarray:
    """Per-pixel noise sigma (ADU, float32) of a noise-free image."""
    out = np.maximum(noise_free, 0, dtype=np.float32)
    out *= np.float32(1.0 / gain)
    out += np.float32(read_noise**2)
    return np.sqrt(out, out=out)


def add_noise(
    image: np.ndarray, gain: float, read_noise: float, rng: np.random.Generator
) -> np.ndarray:
    """Add noise to a noise-free float32 image in place (a band of rows at a time).

    The draws depend only on ``rng`` and the image shape.
    """
    flat = image.reshape(-1, image.shape[-1])
    inv_gain = np.float32(1.0 / gain)
    read2 = np.float32(read_noise**2)
    for start in range(0, flat.shape[0], _BAND):
        band = flat[start : start + _BAND]
        sigma = np.maximum(band, 0) * inv_gain
        sigma += read2
        np.sqrt(sigma, out=sigma)
        sigma *= rng.standard_normal(band.shape, dtype=np.float32)
        band += sigma
    return image
