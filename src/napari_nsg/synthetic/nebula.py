"""Extended signal (nebulae, galaxies): a sum of smooth elliptical Gaussian blobs.

The blobs are defined in continuous *sky* coordinates and evaluated at the sky
position of each pixel centre, so the same nebula can be rendered into frames
with different pixel grids (the wide/narrow pair). To stay fast on large frames
the surface brightness is evaluated on a coarse grid (at least 4 nodes per
smallest blob sigma) and upsampled with Catmull-Rom cubic interpolation (error
< 0.1 % of the peak); the rendered array *is* the truth that the simulator
reports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Nebula", "coarse_step", "random_nebula", "render_smooth"]

#: Colours (R, G, B) of blob families, brightest channel = 1: emission (H-alpha
#: red), reflection (blue), galaxy / dust (warm white).
_PALETTE = np.array([[1.0, 0.35, 0.45], [0.45, 0.7, 1.0], [1.0, 0.85, 0.6]])

CoordMap = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Nebula:
    """A set of elliptical Gaussian blobs.

    The surface brightness in channel ``c`` at sky position ``(u, v)`` is
    ``sum_b amplitude_b * colour_b[c] * exp(-0.5 * q_b)`` with ``q_b`` the squared
    Mahalanobis distance to the blob centre (axes ``sigma_major``,
    ``sigma_minor`` rotated by ``angle``).

    Attributes
    ----------
    x, y : ndarray, shape (n,)
        Blob centres (sky coordinates).
    sigma_major, sigma_minor : ndarray, shape (n,)
        Gaussian widths along the blob's axes.
    angle : ndarray, shape (n,)
        Position angle of the major axis (radians, from +x towards +y).
    amplitude : ndarray, shape (n,)
        Peak surface brightness in the brightest channel.
    colour : ndarray, shape (n, c)
        Channel multipliers (max 1).
    """

    x: np.ndarray
    y: np.ndarray
    sigma_major: np.ndarray
    sigma_minor: np.ndarray
    angle: np.ndarray
    amplitude: np.ndarray
    colour: np.ndarray

    @property
    def channels(self) -> int:
        return self.colour.shape[1]

    @property
    def min_sigma(self) -> float:
        return float(self.sigma_minor.min()) if len(self.x) else np.inf

    def evaluate(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Surface brightness at sky positions ``(u, v)``; returns shape ``(c, *u.shape)``.

        Each blob is cut beyond 6 sigma (relative value < 2e-8), which lets the
        evaluation skip blobs far from a tile of positions.
        """
        u = np.asarray(u, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        if u.ndim != 2:
            flat = self.evaluate(u.reshape(1, -1), v.reshape(1, -1))
            return flat.reshape(self.channels, *u.shape)
        out = np.zeros((self.channels, *u.shape), dtype=np.float64)
        if u.size == 0 or len(self.x) == 0:
            return out
        reach = _CUT * self.sigma_major
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        for tile in _tiles(u.shape):
            tu, tv = u[tile], v[tile]
            near = (
                (self.x + reach >= tu.min())
                & (self.x - reach <= tu.max())
                & (self.y + reach >= tv.min())
                & (self.y - reach <= tv.max())
            )
            for b in np.nonzero(near)[0]:
                du = tu - self.x[b]
                dv = tv - self.y[b]
                a = (du * cos[b] + dv * sin[b]) / self.sigma_major[b]
                m = (-du * sin[b] + dv * cos[b]) / self.sigma_minor[b]
                q = a * a + m * m
                g = np.where(q < _CUT * _CUT, np.exp(-0.5 * q), 0.0)
                for c in range(self.channels):
                    out[(c, *tile)] += (self.amplitude[b] * self.colour[b, c]) * g
        return out


_CUT = 6.0
_TILE = 128


def _tiles(shape: tuple[int, int]):
    """Index tuples of the tiles covering a 2-D array (rows of one-row arrays: chunks)."""
    rows = _TILE if shape[0] > 1 else 1
    cols = _TILE if shape[0] > 1 else _TILE * _TILE
    for r in range(0, shape[0], rows):
        for c in range(0, shape[1], cols):
            yield (slice(r, r + rows), slice(c, c + cols))


def random_nebula(
    rng: np.random.Generator,
    bounds: tuple[float, float, float, float],
    *,
    n_blobs: int,
    sigma_range: tuple[float, float],
    amplitude: float,
    channels: int,
    main_sigma: float | None = None,
    main_center: tuple[float, float] | None = None,
) -> Nebula:
    """Random blobs in ``bounds`` plus an optional bright main object.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random stream.
    bounds : (xmin, xmax, ymin, ymax)
        Region (sky coordinates) where blob centres are placed.
    n_blobs : int
        Number of random blobs; widths log-uniform in ``sigma_range``, axis ratio
        1-3, peak ``amplitude`` times log-uniform(0.1, 0.6).
    sigma_range : (min, max)
        Range of the blob widths (major axis); minor axes stay >= min.
    amplitude : float
        Peak surface brightness of the main object (brightest channel).
    channels : int
        1 or 3.
    main_sigma, main_center
        The main object (e.g. the imaged galaxy), elongated 1.5-2.5 : 1; omitted
        when ``main_sigma`` is None.
    """
    smin, smax = sigma_range
    major = np.exp(rng.uniform(np.log(smin), np.log(smax), n_blobs))
    minor = np.maximum(major / rng.uniform(1.0, 3.0, n_blobs), smin)
    amp = amplitude * np.exp(rng.uniform(np.log(0.1), np.log(0.6), n_blobs))
    xs = rng.uniform(bounds[0], bounds[1], n_blobs)
    ys = rng.uniform(bounds[2], bounds[3], n_blobs)
    angle = rng.uniform(0, np.pi, n_blobs)
    family = rng.integers(0, len(_PALETTE), n_blobs)
    if main_sigma is not None:
        cx, cy = main_center
        ratio = rng.uniform(1.5, 2.5)
        major = np.r_[main_sigma, major]
        minor = np.r_[max(main_sigma / ratio, smin), minor]
        amp = np.r_[amplitude, amp]
        xs = np.r_[cx, xs]
        ys = np.r_[cy, ys]
        angle = np.r_[rng.uniform(0, np.pi), angle]
        family = np.r_[rng.integers(0, len(_PALETTE)), family]
    colour = _PALETTE[family] if channels == 3 else np.ones((len(xs), 1))
    return Nebula(xs, ys, major, minor, angle, amp, colour)


def coarse_step(min_sigma: float, limit: int = 8) -> int:
    """Coarse-grid step (px), >= 4 nodes per ``min_sigma`` (the finest width, px), at most ``limit``."""
    if not np.isfinite(min_sigma):
        return limit
    return int(max(1, min(limit, np.floor(min_sigma / 4.0))))


def render_smooth(
    func: Callable[[np.ndarray, np.ndarray], np.ndarray],
    shape: tuple[int, int],
    step: int,
    to_sky: CoordMap | None = None,
) -> np.ndarray:
    """Render a smooth field into a pixel grid.

    Parameters
    ----------
    func : callable
        ``func(u, v) -> (c, *u.shape)`` values at sky positions.
    shape : (ny, nx)
        Output pixel grid.
    step : int
        Evaluate every ``step`` px and upsample with separable Catmull-Rom
        (cubic, exact at the nodes, error ~ (step / sigma)^3; 1 = every pixel).
        The coarse grid extends two nodes beyond the frame on all sides, so the
        interpolation never extrapolates.
    to_sky : callable, optional
        Maps pixel coordinates ``(x, y)`` to sky coordinates; identity if None.

    Returns
    -------
    ndarray, shape (c, ny, nx), float32
    """
    ny, nx = shape
    pad = 2
    if step <= 1:
        xs = np.arange(nx, dtype=np.float64)
        ys = np.arange(ny, dtype=np.float64)
    else:
        # node j sits at pixel (j + 0.5 - pad) * step - 0.5: output pixel d of the
        # upsampled grid maps back to node coordinate (d + 0.5) / step - 0.5
        xs = (np.arange(-(-nx // step) + 2 * pad) + 0.5 - pad) * step - 0.5
        ys = (np.arange(-(-ny // step) + 2 * pad) + 0.5 - pad) * step - 0.5
    gx, gy = np.meshgrid(xs, ys)
    if to_sky is not None:
        gx, gy = to_sky(gx, gy)
    vals = np.asarray(func(gx, gy), dtype=np.float32)
    if step <= 1:
        return vals
    off = pad * step
    out = np.empty((vals.shape[0], len(ys) * step, nx), dtype=np.float32)
    for c in range(vals.shape[0]):
        wide = _upsample_rows(np.ascontiguousarray(vals[c].T), step)  # (nodes_x * step, ny_c)
        rows = np.ascontiguousarray(wide[off : off + nx].T)  # (ny_c, nx)
        _upsample_rows(rows, step, out=out[c])
    return out[:, off : off + ny]


def _catmull_rom(step: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights (step, 4) for source nodes j-1..j+2 and the node offset per output phase."""
    o = (np.arange(step) + 0.5) / step - 0.5
    base = np.where(o < 0, -1, 0)
    t = o - base
    t2, t3 = t * t, t * t * t
    w = np.stack(
        [
            (-t3 + 2 * t2 - t) / 2,
            (3 * t3 - 5 * t2 + 2) / 2,
            (-3 * t3 + 4 * t2 + t) / 2,
            (t3 - t2) / 2,
        ],
        axis=1,
    )
    return w.astype(np.float32), base


def _upsample_rows(a: np.ndarray, step: int, out: np.ndarray | None = None) -> np.ndarray:
    """Upsample along axis 0 by an integer factor: (h, w) -> (h * step, w), edges clamped."""
    h = a.shape[0]
    if out is None:
        out = np.empty((h * step, a.shape[1]), dtype=np.float32)
    w, base = _catmull_rom(step)
    padded = np.pad(a, ((2, 3), (0, 0)), mode="edge")  # padded[j + 2] = a[j]
    for p in range(step):
        dst = out[p::step]
        first = base[p] + 1  # padded row of source node j + base - 1 for output row j
        np.multiply(padded[first : first + h], w[p, 0], out=dst)
        for k in range(1, 4):
            dst += padded[first + k : first + k + h] * w[p, k]
    return out
