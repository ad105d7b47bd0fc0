"""Additive sky gradients: tilt, curvature and a light-pollution glow.

A gradient is evaluated in normalised coordinates centred on the frame,
``u = (x - (nx-1)/2) / L`` and ``v = (y - (ny-1)/2) / L`` with
``L = max(nx-1, ny-1) / 2`` (so ``u`` spans [-1, 1] along the longer axis). In
channel ``c`` the raw shape is::

    raw_c = smooth_colour[c] * (a u + b v + cuu u^2 + cvv v^2 + cuv u v)
            + glow_colour[c] * s * exp(-((u - u0)^2 + (v - v0)^2) / (2 w^2))

and the gradient is ``G_c = amplitude * (raw_c - min_c) / span``, where ``min_c``
is the minimum of ``raw_c`` and ``span`` the peak-to-peak range of the neutral
shape (all colours 1), both taken on a 65 x 65 grid of positions spanning the
frame corner to corner. So ``G_c >= 0`` (to within the grid's resolution) and the
neutral gradient's peak-to-peak range is ``amplitude`` ADU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ._fast import separable_sum

__all__ = ["GradientModel", "random_gradient"]

_GRID = 65


@dataclass(frozen=True)
class GradientModel:
    """An additive gradient for one frame (see the module docstring for the formula).

    Attributes
    ----------
    shape : (ny, nx)
        Frame shape the model is normalised for.
    amplitude : float
        Peak-to-peak range of the neutral gradient (ADU).
    tilt : (a, b)
        Plane coefficients.
    curvature : (cuu, cvv, cuv)
        Quadratic coefficients.
    glow : (u0, v0, w, s)
        Centre, width and strength of the Gaussian light dome.
    smooth_colour, glow_colour : ndarray, shape (c,)
        Per-channel multipliers of the smooth (tilt + curvature) and glow parts.
    """

    shape: tuple[int, int]
    amplitude: float
    tilt: tuple[float, float] = (0.0, 0.0)
    curvature: tuple[float, float, float] = (0.0, 0.0, 0.0)
    glow: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 0.0)
    smooth_colour: np.ndarray = field(default_factory=lambda: np.ones(1))
    glow_colour: np.ndarray = field(default_factory=lambda: np.ones(1))

    @property
    def channels(self) -> int:
        return len(self.smooth_colour)

    def _normalised(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ny, nx = self.shape
        half = max(nx - 1, ny - 1, 1) / 2.0
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        return (x - (nx - 1) / 2.0) / half, (y - (ny - 1) / 2.0) / half

    def _axes(self, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        ny, nx = self.shape
        xs = np.linspace(0, nx - 1, n) if n else np.arange(nx, dtype=np.float64)
        ys = np.linspace(0, ny - 1, n) if n else np.arange(ny, dtype=np.float64)
        return self._normalised(xs, ys)

    def _parts(self, u: np.ndarray, v: np.ndarray):
        """1-D pieces: smooth = cu(u) + cv(v) + cuv*u*v ; glow = s * gu(u) * gv(v)."""
        a, b = self.tilt
        cuu, cvv, cuv = self.curvature
        u0, v0, w, s = self.glow
        cu = a * u + cuu * u * u
        cv = b * v + cvv * v * v
        gu = np.exp(-((u - u0) ** 2) / (2 * w * w))
        gv = s * np.exp(-((v - v0) ** 2) / (2 * w * w))
        return cu, cv, cuv, gu, gv

    def _raw_grid(self, smooth: float, glow: float) -> np.ndarray:
        u, v = self._axes(_GRID)
        cu, cv, cuv, gu, gv = self._parts(u, v)
        return smooth * (cv[:, None] + cu[None, :] + cuv * np.outer(v, u)) + glow * np.outer(gv, gu)

    @cached_property
    def _norm(self) -> tuple[float, np.ndarray]:
        span = float(np.ptp(self._raw_grid(1.0, 1.0)))
        mins = np.array(
            [
                self._raw_grid(self.smooth_colour[c], self.glow_colour[c]).min()
                for c in range(self.channels)
            ]
        )
        return span, mins

    def _factor(self) -> float:
        span, _ = self._norm
        return self.amplitude / span if span > 0 else 0.0

    def render(self) -> np.ndarray:
        """The gradient, shape ``(c, ny, nx)`` float32 (ADU)."""
        u, v = self._axes()
        cu, cv, cuv, gu, gv = self._parts(u, v)
        _, mins = self._norm
        k = self._factor()
        out = np.empty((self.channels, *self.shape), dtype=np.float32)
        for c in range(self.channels):
            ks, kg = k * self.smooth_colour[c], k * self.glow_colour[c]
            separable_sum(
                out[c],
                ks * cv - k * mins[c],
                ks * cu,
                [(v, ks * cuv * u), (gv, kg * gu)],
            )
        return out

    def at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The gradient at pixel positions ``(x, y)`` (any shape), shape ``(c, *x.shape)``."""
        u, v = self._normalised(x, y)
        cu, cv, cuv, gu, gv = self._parts(u, v)
        _, mins = self._norm
        k = self._factor()
        smooth = cu + cv + cuv * u * v
        glow = gu * gv
        return np.stack(
            [
                k * (self.smooth_colour[c] * smooth + self.glow_colour[c] * glow - mins[c])
                for c in range(self.channels)
            ]
        )

    def mean(self) -> np.ndarray:
        """Exact mean over all pixels of each channel, shape ``(c,)`` (ADU)."""
        u, v = self._axes()
        cu, cv, cuv, gu, gv = self._parts(u, v)
        _, mins = self._norm
        k = self._factor()
        smooth = cu.mean() + cv.mean() + cuv * u.mean() * v.mean()
        glow = gu.mean() * gv.mean()
        return k * (self.smooth_colour * smooth + self.glow_colour * glow - mins)


def random_gradient(
    rng: np.random.Generator,
    shape: tuple[int, int],
    amplitude: float,
    *,
    mix: tuple[float, float, float] = (1.0, 0.5, 1.0),
    channels: int = 1,
    glow_corner: tuple[int, int] | None = None,
) -> GradientModel:
    """A random gradient of given peak-to-peak amplitude.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random stream.
    shape : (ny, nx)
        Frame shape.
    amplitude : float
        Peak-to-peak range of the neutral gradient (ADU).
    mix : (tilt, curvature, glow)
        Relative weights of the three parts before normalisation; ``(1, 0, 0)``
        gives a pure plane.
    channels : int
        1 or 3. In colour the smooth part is slightly blue (airglow, moonlight),
        the glow orange (sodium / LED light pollution).
    glow_corner : (sx, sy), optional
        Signs (+1 / -1) of the corner the glow sits near (right/bottom = +1);
        random if None.
    """
    ny, nx = shape
    half = max(nx - 1, ny - 1, 1) / 2.0
    umax, vmax = (nx - 1) / 2.0 / half, (ny - 1) / 2.0 / half
    theta = rng.uniform(0, 2 * np.pi)
    tilt = (mix[0] * np.cos(theta), mix[0] * np.sin(theta))
    sign = rng.choice([-1.0, 1.0])
    curvature = (
        sign * mix[1] * rng.uniform(0.3, 1.0),
        sign * mix[1] * rng.uniform(0.3, 1.0),
        mix[1] * rng.uniform(-0.3, 0.3),
    )
    if glow_corner is None:
        glow_corner = (rng.choice([-1, 1]), rng.choice([-1, 1]))
    glow = (
        glow_corner[0] * umax * rng.uniform(0.8, 1.3),
        glow_corner[1] * vmax * rng.uniform(0.8, 1.3),
        rng.uniform(0.4, 0.9),
        2.0 * mix[2],
    )
    if channels == 3:
        smooth_colour = np.array([0.9, 1.0, 1.15]) * rng.uniform(0.95, 1.05, 3)
        glow_colour = np.array([1.0, 0.8, 0.5]) * rng.uniform(0.95, 1.05, 3)
    else:
        smooth_colour = glow_colour = np.ones(1)
    return GradientModel(
        shape=(int(ny), int(nx)),
        amplitude=float(amplitude),
        tilt=tuple(float(t) for t in tilt),
        curvature=tuple(float(c) for c in curvature),
        glow=tuple(float(g) for g in glow),
        smooth_colour=smooth_colour,
        glow_colour=glow_colour,
    )
