"""Zero borders like those left by registration (strips and wedges of no data)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Border", "random_border"]


@dataclass(frozen=True)
class Border:
    """Widths (px) of the no-data zone along each edge, at both ends of the edge.

    ``left = (w_top, w_bottom)``: column ``x`` of row ``y`` has no data when
    ``x < w_top + (w_bottom - w_top) * y / (ny - 1)``; likewise ``right`` (measured
    from the last column), ``top = (w_left, w_right)`` and ``bottom``. Equal widths
    give a strip, different ones a wedge.
    """

    left: tuple[float, float] = (0.0, 0.0)
    right: tuple[float, float] = (0.0, 0.0)
    top: tuple[float, float] = (0.0, 0.0)
    bottom: tuple[float, float] = (0.0, 0.0)

    @property
    def empty(self) -> bool:
        return not any(max(w) > 0 for w in (self.left, self.right, self.top, self.bottom))

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """Valid-data mask (True = data), shape ``shape``."""
        ny, nx = shape
        valid = np.ones(shape, dtype=bool)
        if self.empty:
            return valid
        ty = np.arange(ny) / max(ny - 1, 1)
        tx = np.arange(nx) / max(nx - 1, 1)
        xs = np.arange(nx)
        ys = np.arange(ny)
        lo = self.left[0] + (self.left[1] - self.left[0]) * ty
        hi = (nx - 1) - (self.right[0] + (self.right[1] - self.right[0]) * ty)
        valid &= (xs[None, :] >= lo[:, None]) & (xs[None, :] <= hi[:, None])
        lo = self.top[0] + (self.top[1] - self.top[0]) * tx
        hi = (ny - 1) - (self.bottom[0] + (self.bottom[1] - self.bottom[0]) * tx)
        valid &= (ys[:, None] >= lo[None, :]) & (ys[:, None] <= hi[None, :])
        return valid

    def to_dict(self) -> dict[str, list[float]]:
        return {k: [float(w) for w in getattr(self, k)] for k in ("left", "right", "top", "bottom")}


def random_border(rng: np.random.Generator, max_width: float) -> Border:
    """Random strips or wedges up to ``max_width`` px on one to four edges."""
    if max_width <= 0:
        return Border()
    edges = rng.random(4) < 0.5
    if not edges.any():
        edges[rng.integers(0, 4)] = True
    widths = []
    for on in edges:
        w0 = rng.uniform(0.3, 1.0) * max_width
        w1 = w0 if rng.random() < 0.5 else rng.uniform(0.0, 1.0) * max_width
        widths.append((float(w0), float(w1)) if on else (0.0, 0.0))
    return Border(*widths)
