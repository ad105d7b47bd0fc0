"""Noise estimates: NOISExx keywords, or measured with a multiresolution support.

NSG prefers the ``NOISExx`` keywords that PixInsight's ImageCalibration writes
before registration (the noise of the unresampled frame); when a frame lacks
them it measures the noise with PixInsight's MRS estimator. This module does
the same with its own implementation of the estimator of Starck & Murtagh
(1998), "Automatic noise estimation from the multiresolution support":

1. the image's starlet (B3-spline "a trous") transform with 4 layers;
2. a first sigma from k-sigma clipping of the first layer (the "K-Sigma"
   estimate), scaled by that layer's response to unit white noise (on large
   frames from every 4th coefficient, as the start of step 4; from all of them
   when it is the result);
3. the multiresolution support: pixels where any layer ``j`` is significant,
   ``|w_j| >= 3 sigma s_j`` (``s_j`` the layer's white-noise response);
4. a new sigma from the pixels outside the support, as the standard deviation
   of the sum of the layers divided by its white-noise response; repeated
   until it changes by less than 0.1 %.

If fewer than 1 % of the pixels are outside the support, the K-Sigma value is
used (as PixInsight does). Clipping makes both estimates low for pure Gaussian
noise (by 2.0 % for MRS and 1.6 % for K-Sigma with these settings, measured on
white noise); both are divided by that factor so they are unbiased there. Frames
larger than about 1 Mpx are measured on four or more 512 x 512 tiles, each centred in
an equal part of the frame (away from the edges, where registration borders are);
no-data pixels (and a margin around them) are excluded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from ..nodata import no_data_mask

B3 = np.array([1, 4, 6, 4, 1], np.float32) / 16.0
N_LAYERS = 4
K_SIGMA = 3.0
TILE = 512
# sigma_true / sigma_estimated for white Gaussian noise (4 layers, k = 3),
# measured on 1024x1024 noise images with several seeds
MRS_CALIBRATION = 1.0205
KSIGMA_CALIBRATION = 1.016
#: The MRS iteration starts from the K-Sigma sigma of every SEED_STRIDE-th first-layer
#: coefficient (4x cheaper; the MRS noise moves by at most 1.2e-4 on the simulator,
#: WASP-12b and 6000x4000 targets, against its own 1e-3 tolerance).
SEED_STRIDE = 4
SEED_MIN_VALUES = 250_000  # smaller frames start from all their coefficients
FILL_STRIDE = 4  # no-data fill: the median of a 1/16 lattice of the tile


@dataclass
class NoiseEstimate:
    """A noise sigma per channel and how it was obtained.

    Attributes
    ----------
    sigma : ndarray (c,)
        Gaussian noise sigma in the frame's units.
    algorithm : list of str
        Per channel: a NOISEAxx name ("MRS", "K-Sigma", or the header's) for
        keywords, "MRS"/"K-Sigma" for measured values.
    source : str
        ``"keywords"`` or ``"measured"``.
    fraction : ndarray (c,)
        Fraction of the pixels used (measured only; NaN for keywords).
    """

    sigma: np.ndarray
    algorithm: list[str]
    source: str
    fraction: np.ndarray


def _atrous_kernel(level: int) -> np.ndarray:
    step = 2**level
    k = np.zeros(4 * step + 1, np.float32)
    k[::step] = B3
    return k


def _smooth(img: np.ndarray, level: int) -> np.ndarray:
    k = _atrous_kernel(level)
    return cv2.sepFilter2D(img, cv2.CV_32F, k, k, borderType=cv2.BORDER_REFLECT)


@lru_cache(maxsize=None)
def layer_responses(n_layers: int = N_LAYERS) -> tuple[tuple[float, ...], float]:
    """White-noise response of each starlet layer and of the sum of the first
    ``n_layers`` (standard deviation for unit-sigma white noise)."""
    size = 16 * 2**n_layers + 1
    delta = np.zeros((size, size), np.float32)
    delta[size // 2, size // 2] = 1.0
    c = delta
    norms = []
    for j in range(n_layers):
        nxt = _smooth(c, j)
        norms.append(float(np.sqrt(np.sum((c - nxt).astype(np.float64) ** 2))))
        c = nxt
    total = float(np.sqrt(np.sum((delta - c).astype(np.float64) ** 2)))
    return tuple(norms), total


def _kclip_std(values: np.ndarray, k: float = K_SIGMA, n_iter: int = 50) -> float:
    """Standard deviation after iterative k-sigma clipping around the mean.

    The values (float32 starlet coefficients) stay float32: the deviations from the
    mean, their magnitudes (the next clip's test) and squares are float32 arrays,
    the sums float64 (``np.add.reduce(..., dtype=float64)``). Half the memory
    traffic of float64 copies; the same sigma as float64 arithmetic to about 1e-10
    (measured on the simulator and on WASP-12b)."""
    v = np.asarray(values, np.float32)
    dev_buf = np.empty(v.shape, np.float32)
    sq_buf = np.empty(v.shape, np.float32)
    dev, sigma = _deviations(v, dev_buf, sq_buf)
    for _ in range(n_iter):
        keep = np.abs(dev, out=dev) < k * sigma
        n_keep = int(np.count_nonzero(keep))
        if n_keep == v.size or n_keep < 10:
            break
        v = v[keep]
        dev, new = _deviations(v, dev_buf, sq_buf)
        if abs(new - sigma) <= 1e-4 * max(new, 1e-30):
            sigma = new
            break
        sigma = new
    return sigma


def _deviations(v: np.ndarray, dev_buf: np.ndarray, sq_buf: np.ndarray
                ) -> tuple[np.ndarray, float]:
    """``(v - mean(v), std(v))`` of a 1-D float32 array: the deviations float32 (in
    ``dev_buf``), the mean and the sum of squares (in ``sq_buf``) summed in float64."""
    mean = np.add.reduce(v, dtype=np.float64) / v.size
    dev = np.subtract(v, np.float32(mean), out=dev_buf[: v.size])
    sq = np.multiply(dev, dev, out=sq_buf[: v.size])
    return dev, math.sqrt(np.add.reduce(sq, dtype=np.float64) / v.size)


def _std32(values: np.ndarray) -> float:
    """``np.std`` of float32 values without their float64 copy: float32 deviations,
    float64 sums (as :func:`_deviations`; equal to ``np.std`` in float64 to ~1e-9)."""
    v = np.asarray(values, np.float32)
    buf = np.empty(v.shape, np.float32)
    return _deviations(v, buf, buf)[1]


def _fill_value(tile: np.ndarray, bad: np.ndarray) -> float:
    """What no-data pixels of a tile are replaced with before the starlet transform:
    the median of every ``FILL_STRIDE``-th row and column of its data (the whole
    tile's median where the lattice holds no data). The margin dilated around
    no-data leaves the filled pixels out of the estimate but for the far corners
    of the starlet's reach: no compared noise changed with it."""
    step = (slice(None, None, FILL_STRIDE),) * 2
    sub = tile[step][~bad[step]]
    return float(np.median(sub if sub.size else tile[~bad]))


def _dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    """``ndimage.binary_dilation(mask, iterations=iterations)`` (4-neighbour cross,
    nothing beyond the edges): the pixels within a city-block distance of
    ``iterations`` from the mask, by one exact L1 distance transform (OpenCV; the same
    pixels as ``iterations`` cross dilations, 1.6x faster than them at 32)."""
    away = np.ascontiguousarray(~np.asarray(mask, bool)).view(np.uint8)
    return cv2.distanceTransform(away, cv2.DIST_L1, 3) <= iterations


def _tiles(shape: tuple[int, int], max_pixels: int):
    h, w = shape
    if h * w <= max_pixels or h <= TILE or w <= TILE:
        return [(slice(0, h), slice(0, w))]
    n = max(1, int(max_pixels // (TILE * TILE)))
    ny = max(1, int(round(np.sqrt(n * h / w))))
    nx = max(1, int(np.ceil(n / ny)))
    ys = _tile_starts(h, ny)
    xs = _tile_starts(w, nx)
    return [(slice(y, y + TILE), slice(x, x + TILE)) for y in ys for x in xs]


def _tile_starts(length: int, n: int) -> np.ndarray:
    """Where ``n`` tiles start along an axis: centred in ``n`` equal parts of it (away
    from the frame's edges, where registration borders and their no-data lie), and
    inside the frame."""
    centres = (np.arange(n) + 0.5) * length / n
    return np.clip(np.round(centres - TILE / 2), 0, length - TILE).astype(int)


def _layers(tile: np.ndarray, n_layers: int):
    c = tile
    layers = []
    for j in range(n_layers):
        nxt = _smooth(c, j)
        layers.append(c - nxt)
        c = nxt
    return layers, tile - c


def _significance(layers: list[np.ndarray], responses, use: np.ndarray) -> np.ndarray:
    """Per pixel, the largest ``|w_j| / s_j`` over the layers (``s_j`` the layer's
    white-noise response; inf where not ``use``), in place of the layers: a pixel lies
    outside the multiresolution support at ``sigma`` when this is under ``k sigma``
    (one comparison per MRS step instead of one per layer)."""
    out = np.abs(layers[0], out=layers[0])
    out /= np.float32(responses[0])
    for w, r in zip(layers[1:], responses[1:]):
        np.abs(w, out=w)
        w /= np.float32(r)
        np.maximum(out, w, out=out)
    out[~use] = np.inf
    return out


def measure_noise(
    image: np.ndarray,
    *,
    n_layers: int = N_LAYERS,
    k: float = K_SIGMA,
    max_pixels: int = 4 * TILE * TILE,
    tolerance: float = 1e-3,
) -> tuple[float, str, float]:
    """Gaussian noise sigma of one 2-D image (MRS, else K-Sigma).

    Parameters
    ----------
    image : ndarray (y, x)
        0/NaN/inf = no data.
    n_layers : int
        Starlet layers of the multiresolution support.
    k : float
        Significance threshold in sigmas.
    max_pixels : int
        Larger images are measured on tiles totalling about this many pixels.
    tolerance : float
        Relative change at which the MRS iteration stops.

    Returns
    -------
    (sigma, algorithm, fraction)
        ``algorithm`` is "MRS" or "K-Sigma"; ``fraction`` the share of pixels
        outside the support (NaN for K-Sigma). sigma is NaN for an image with
        no data.
    """
    image = np.asarray(image)
    responses, total = layer_responses(n_layers)
    edge = 2 * 2**n_layers
    w1_vals, tiles_data = [], []
    for sy, sx in _tiles(image.shape, max_pixels):
        tile = np.asarray(image[sy, sx], np.float32)
        bad = no_data_mask(tile)
        if bad.all():
            continue
        if bad.any():
            tile = tile.copy()
            tile[bad] = _fill_value(tile, bad)
            bad = _dilate(bad, edge)
        use = ~bad
        if min(tile.shape) > 4 * edge:
            inner = np.zeros_like(use)
            inner[edge:-edge, edge:-edge] = True
            use &= inner
        if use.sum() < 16:
            continue
        layers, resid = _layers(tile, n_layers)
        w1_vals.append(layers[0][use])
        # the support tests |w_j| / s_j only: their largest once (the layers are finite:
        # no-data was replaced by the median)
        tiles_data.append((_significance(layers, responses, use), resid, use))
    if not w1_vals:
        return float("nan"), "none", float("nan")
    w1_all = np.concatenate(w1_vals)
    # the MRS iteration's first sigma: from every SEED_STRIDE-th value (the MRS result
    # moves by ~1e-4, under its own tolerance); the whole K-Sigma value if it is the result
    stride = SEED_STRIDE if w1_all.size >= SEED_MIN_VALUES else 1
    sigma_k = _kclip_std(w1_all[::stride], k) / responses[0]
    calibrate = n_layers == N_LAYERS and k == K_SIGMA
    sigma = sigma_k
    fraction = float("nan")
    n_total = max(sum(int(np.count_nonzero(use)) for _, _, use in tiles_data), 1)
    for _ in range(20):
        vals = np.concatenate([resid[significance < np.float32(k * sigma)]
                               for significance, resid, _ in tiles_data])
        fraction = len(vals) / n_total
        if fraction < 0.01 or len(vals) < 16:
            if stride > 1:
                sigma_k = _kclip_std(w1_all, k) / responses[0]
            return float(sigma_k * (KSIGMA_CALIBRATION if calibrate else 1.0)), "K-Sigma", \
                float("nan")
        new = _std32(vals) / total
        if abs(new - sigma) <= tolerance * new:
            sigma = new
            break
        sigma = new
    return float(sigma * (MRS_CALIBRATION if calibrate else 1.0)), "MRS", float(fraction)


def measure_frame_noise(data: np.ndarray, **kwargs) -> NoiseEstimate:
    """:func:`measure_noise` for each channel of ``(y, x)`` or ``(c, y, x)`` data."""
    chans = data[np.newaxis] if data.ndim == 2 else data
    sig, alg, frac = [], [], []
    for c in range(chans.shape[0]):
        s, a, f = measure_noise(chans[c], **kwargs)
        sig.append(s)
        alg.append(a)
        frac.append(f)
    return NoiseEstimate(np.array(sig), alg, "measured", np.array(frac))


def noise_from_keywords(noise: dict, algorithm: dict, n_channels: int) -> NoiseEstimate | None:
    """Per-channel noise from NOISExx keywords (NSG's index rules), or None.

    Parameters
    ----------
    noise : dict {index: value}
        ``FrameMetadata.noise``.
    algorithm : dict {index: name}
        ``FrameMetadata.noise_algorithm``.
    n_channels : int
        1 or 3.

    Notes
    -----
    Colour frames need NOISE00, 01 and 02. A mono frame uses NOISE00 when it is
    the only one, NOISE01 when 00 and 01 are given (the green plane of a split
    CFA), NOISE02 when 00 and 02 are (blue); with all three it is ambiguous and
    None is returned (the noise is then measured).
    """
    keys = {k for k, v in noise.items() if v and v > 0}
    if n_channels == 3:
        if not {0, 1, 2} <= keys:
            return None
        idx = [0, 1, 2]
    elif keys == {0}:
        idx = [0]
    elif keys == {0, 1}:
        idx = [1]
    elif keys == {0, 2}:
        idx = [2]
    else:
        return None
    sig = np.array([float(noise[i]) for i in idx])
    alg = [str(algorithm.get(i, "")) for i in idx]
    return NoiseEstimate(sig, alg, "keywords", np.full(len(idx), np.nan))
