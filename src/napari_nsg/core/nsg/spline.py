"""The relative-gradient surface: a smoothed thin-plate spline, or a plane.

PixInsight's ``SurfaceSpline`` (which NSG uses) centres the node coordinates
on their centroid and scales them by ``1/r_max`` so all nodes lie in the unit
circle, then solves ``[[K + diag(lambda/w), P], [P^T, 0]] [c; a] = [z; 0]``
with the thin-plate kernel ``r^2 log r`` and a first-degree polynomial
``P = (1, x, y)``; ``lambda = 10**smoothness``. SciPy's
``RBFInterpolator(kernel="thin_plate_spline", degree=1, smoothing=lambda/w)``
solves the same system, so the smoothness parameter means what it means in NSG.
At smoothness 4 NSG fits a least-squares plane instead; so does this module.
All channels share the nodes and the weights, so one solve serves them all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import RBFInterpolator

from .params import MAX_SMOOTHNESS


@dataclass
class SurfaceModel:
    """A fitted surface ``z(x, y)`` per channel, in pixel coordinates.

    Attributes
    ----------
    kind : {"spline", "plane"}
    center : ndarray (2,)
        Node centroid (x, y) in px.
    radius : float
        Largest node distance from the centroid (px): coordinates are divided by it.
    plane : ndarray (3, c)
        Weighted least-squares plane ``a + b*u + c*v`` in normalized
        coordinates ``(u, v)`` (always fitted; the whole model when ``kind`` is
        "plane").
    smoothness : float
        log10 of the smoothing.
    n_nodes : int
    """

    kind: str
    center: np.ndarray
    radius: float
    plane: np.ndarray
    smoothness: float
    n_nodes: int
    _rbf: RBFInterpolator | None = None

    @property
    def n_channels(self) -> int:
        return self.plane.shape[1]

    def _norm(self, x, y):
        x = np.asarray(x, float)
        y = np.asarray(y, float)
        return (x - self.center[0]) / self.radius, (y - self.center[1]) / self.radius

    def evaluate_plane(self, x, y) -> np.ndarray:
        """The best-fit plane at pixel positions; ``(n, c)``."""
        u, v = self._norm(np.ravel(x), np.ravel(y))
        return np.column_stack([np.ones_like(u), u, v]) @ self.plane

    def __call__(self, x, y) -> np.ndarray:
        """The surface at pixel positions ``x, y`` (same shape); returns ``(n, c)``."""
        if self.kind == "plane" or self._rbf is None:
            return self.evaluate_plane(x, y)
        u, v = self._norm(np.ravel(x), np.ravel(y))
        out = self._rbf(np.column_stack([u, v]))
        return out.reshape(len(u), -1)


def _weighted_plane(u, v, z, w) -> np.ndarray:
    a = np.column_stack([np.ones_like(u), u, v]) * np.sqrt(w)[:, None]
    coef, *_ = np.linalg.lstsq(a, z * np.sqrt(w)[:, None], rcond=None)
    return coef


def fit_surface(
    x: np.ndarray,
    y: np.ndarray,
    values: np.ndarray,
    *,
    smoothness: float = -2.0,
    weights: np.ndarray | None = None,
) -> SurfaceModel:
    """Fit the relative-gradient surface to samples.

    Parameters
    ----------
    x, y : ndarray (n,)
        Sample positions in px.
    values : ndarray (n,) or (n, c)
        Sample values per channel.
    smoothness : float
        log10 of the smoothing, -4..4; 4 (or more) gives a plane.
    weights : ndarray (n,), optional
        Node weights (super-sample member counts): the smoothing at a node is
        ``10**smoothness / weight``.

    Returns
    -------
    SurfaceModel

    Raises
    ------
    ValueError
        Fewer than 3 samples.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    z = np.asarray(values, float)
    if z.ndim == 1:
        z = z[:, None]
    n = len(x)
    if n < 3:
        raise ValueError(f"too few samples ({n}) to model the gradient (3 needed)")
    w = np.ones(n) if weights is None else np.asarray(weights, float)
    center = np.array([x.mean(), y.mean()])
    radius = float(np.max(np.hypot(x - center[0], y - center[1])))
    if not radius > 0:
        radius = 1.0
    u, v = (x - center[0]) / radius, (y - center[1]) / radius
    plane = _weighted_plane(u, v, z, w)
    if smoothness >= MAX_SMOOTHNESS or n < 4:
        return SurfaceModel("plane", center, radius, plane, float(smoothness), n)
    lam = 10.0 ** float(smoothness)
    rbf = RBFInterpolator(np.column_stack([u, v]), z, kernel="thin_plate_spline", degree=1,
                          smoothing=lam / w)
    return SurfaceModel("spline", center, radius, plane, float(smoothness), n, rbf)
