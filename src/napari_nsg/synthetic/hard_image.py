"""A quick, hard test image for the multiscale median transform (tests and benchmarks)."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["hard_image"]

#: Nebula blobs in the image, and their size range (Gaussian sigma, px).
N_BLOBS = 25
BLOB_SIGMA_PX = (15.0, 200.0)
#: One star per this many pixels.
PIXELS_PER_STAR = 300


def hard_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Gradient + nebula blobs (15..200 px) + a star per 300 px + noise, background ~0.1.

    float32 ``(h, w)``: every scale holds structure, which is what makes an
    MMT's approximations show.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 0.1 + 0.03 * (x / w) + 0.02 * (y / h) ** 2
    for _ in range(N_BLOBS):
        cx, cy, s = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(*BLOB_SIGMA_PX)
        img += rng.uniform(0.005, 0.05) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s))
    n = h * w // PIXELS_PER_STAR
    stars = np.zeros((h, w), np.float32)
    np.add.at(stars, (rng.integers(0, h, n), rng.integers(0, w, n)), rng.pareto(1.5, n) * 0.05)
    img += cv2.GaussianBlur(stars, (0, 0), 1.5)
    img += rng.normal(0, 0.002, (h, w)).astype(np.float32)
    return img.astype(np.float32)
