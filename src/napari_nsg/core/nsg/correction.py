"""The full-size gradient image and the correction ``target*scale - gradient``.

The spline is evaluated exactly on a coarse grid of nodes placed on pixel
centres (NSG's 1/5-scale grid is aligned to the top-left corner, which shifts
the model by up to 2 px) that extends two nodes beyond every edge, and is
brought to full size by separable cubic convolution with the Catmull-Rom kernel
(Keys' ``a = -1/2``, which reproduces polynomials up to the second degree;
OpenCV's ``INTER_CUBIC`` uses ``a = -3/4`` and puts a ripple of 5 % of the
node-to-node change on a plain tilt), written as two matrix products.
A thin-plate spline with smoothing varies on scales of the sample size or
more, so a node spacing of half the sample size to one sample size loses
nothing measurable: :func:`gradient_step` takes half the sample size, or a
coarser spacing (at most the sample size) that keeps the grid to about 4000
nodes on large frames (``tests/test_nsg_spline.py`` measures the error at
one sample size: under 0.05 % of the surface's range in RMS at the default
smoothness). The cost then no longer grows with the number of pixels times
the number of spline nodes.

Where the reference has no data there are no samples, and a spline would be
extrapolated blindly (notes, section 19). By default the model is blended,
with the distance from the reference's data, into the samples' best-fit
plane: unchanged up to one sample size from the data, fully the plane three
sample sizes further on.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..nodata import no_data_mask
from .spline import SurfaceModel

MARGIN = 2  # nodes beyond each edge (bicubic needs two)
GRID_NODES = 4000  # about this many evaluation nodes at most, on large frames


def gradient_step(shape: tuple[int, int], sample_size: int) -> int:
    """Spacing of the evaluation grid: half the sample size, coarser on large
    frames (about ``GRID_NODES`` nodes), never more than the sample size."""
    h, w = shape
    want = int(np.ceil(np.sqrt(h * w / GRID_NODES)))
    return int(max(1, min(int(sample_size), max(int(np.ceil(sample_size / 2)), want))))


@dataclass(frozen=True)
class CoarseGrid:
    """Nodes at pixel positions ``(j - margin + 0.5) * step - 0.5``.

    Attributes
    ----------
    shape : (height, width)
        Full image size.
    step : int
        Node spacing in px (the upsampling factor).
    margin : int
        Nodes beyond each edge.
    """

    shape: tuple[int, int]
    step: int
    margin: int = MARGIN

    @property
    def nx(self) -> int:
        return int(np.ceil(self.shape[1] / self.step)) + 2 * self.margin

    @property
    def ny(self) -> int:
        return int(np.ceil(self.shape[0] / self.step)) + 2 * self.margin

    @property
    def xs(self) -> np.ndarray:
        return (np.arange(self.nx) - self.margin + 0.5) * self.step - 0.5

    @property
    def ys(self) -> np.ndarray:
        return (np.arange(self.ny) - self.margin + 0.5) * self.step - 0.5

    def mesh(self) -> tuple[np.ndarray, np.ndarray]:
        """Node coordinates ``(x, y)``, each ``(ny, nx)``."""
        return np.meshgrid(self.xs, self.ys)

    def upsample(self, values: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Cubic full-size image ``(height, width)`` float32 from node values ``(ny, nx)``,
        written into ``out`` when given."""
        h, w = self.shape
        small = np.asarray(values, dtype=np.float32)
        if out is None:
            out = np.empty((h, w), np.float32)
        if self.step == 1:
            m = self.margin
            out[...] = small[m : m + h, m : m + w]
            return out
        wx = cubic_weights(w, self.step, self.margin, self.nx)
        return _upsample_rows(small @ wx.T, out, self.step, self.margin)

    def upsample_columns(self, values: np.ndarray, cols: slice) -> np.ndarray:
        """The columns ``cols`` of :meth:`upsample` (same values to float32 rounding),
        ``(height, len(cols))`` float32: a block of the image computed on its own."""
        h, w = self.shape
        small = np.asarray(values, dtype=np.float32)
        if self.step == 1:
            m = self.margin
            return np.array(small[m : m + h, m : m + w][:, cols], np.float32)
        wx = cubic_weights(w, self.step, self.margin, self.nx)[cols]
        out = np.empty((h, wx.shape[0]), np.float32)
        return _upsample_rows(small @ wx.T, out, self.step, self.margin)

    def coverage(self, valid: np.ndarray) -> np.ndarray:
        """Fraction of valid pixels in each node's cell, ``(ny, nx)``; beyond the
        image the nearest edge pixels count (an image edge is not missing data)."""
        f, m = self.step, self.margin
        h, w = self.shape
        pad = np.pad(np.asarray(valid, bool), ((m * f, self.ny * f - m * f - h),
                                               (m * f, self.nx * f - m * f - w)), mode="edge")
        return pad.reshape(self.ny, f, self.nx, f).mean(axis=(1, 3), dtype=np.float32)


def _catmull_rom(t: float) -> np.ndarray:
    t2, t3 = t * t, t * t * t
    return np.array([(-t3 + 2 * t2 - t) / 2, (3 * t3 - 5 * t2 + 2) / 2,
                     (-3 * t3 + 4 * t2 + t) / 2, (t3 - t2) / 2], np.float32)


def _upsample_rows(a: np.ndarray, out: np.ndarray, step: int, margin: int) -> np.ndarray:
    """Catmull-Rom along axis 0 from node rows ``a`` into the pixel rows of ``out``.

    Output rows ``q*step + r`` share one set of weights per phase ``r``, so each
    phase is four scaled slices of ``a`` added together (no matrix product:
    4 multiply-adds per output pixel)."""
    n_out = out.shape[0]
    for r in range(min(step, n_out)):
        nq = len(range(r, n_out, step))
        u = (r + 0.5) / step - 0.5
        s = int(np.floor(u))
        w = _catmull_rom(u - s)
        base = margin + s - 1
        acc = w[0] * a[base:base + nq]
        for k in range(1, 4):
            acc += w[k] * a[base + k:base + k + nq]
        out[r::step] = acc
    return out


def cubic_weights(n_out: int, step: int, margin: int, n_nodes: int) -> np.ndarray:
    """Catmull-Rom interpolation matrix ``(n_out, n_nodes)`` float32: output pixel
    ``x`` from nodes at ``(j - margin + 0.5) * step - 0.5``."""
    u = (np.arange(n_out) + 0.5) / step - 0.5 + margin
    i0 = np.floor(u).astype(int)
    t = (u - i0)[:, None]
    t2, t3 = t * t, t * t * t
    k = np.hstack([(-t3 + 2 * t2 - t) / 2, (3 * t3 - 5 * t2 + 2) / 2,
                   (-3 * t3 + 4 * t2 + t) / 2, (t3 - t2) / 2])
    cols = np.clip(i0[:, None] + np.arange(-1, 3)[None, :], 0, n_nodes - 1)
    out = np.zeros((n_out, n_nodes), np.float32)
    np.add.at(out, (np.repeat(np.arange(n_out), 4), cols.ravel()), k.ravel())
    return out


def taper_weights(grid: CoarseGrid, ref_valid: np.ndarray, start: float, length: float):
    """Blend weights toward the plane, 0 near the reference's data and 1 far from it.

    Parameters
    ----------
    grid : CoarseGrid
    ref_valid : ndarray of bool (height, width)
        Where the reference has data.
    start, length : float
        Distance from the data (px) where the blend starts, and over which it
        goes from 0 to 1 (smoothstep).

    Returns
    -------
    ndarray (ny, nx) float, or None when the reference has data everywhere.
    """
    if ref_valid.all():
        return None
    has = grid.coverage(ref_valid) >= 0.5
    if not has.any():
        return None
    dist = ndimage.distance_transform_edt(~has) * grid.step
    t = np.clip((dist - start) / max(length, 1e-9), 0.0, 1.0)
    t = t * t * (3 - 2 * t)
    return t if t.any() else None


@dataclass
class GradientField:
    """The gradient model on the coarse grid; full-size images on demand.

    Attributes
    ----------
    grid : CoarseGrid
    values : ndarray (c, ny, nx) float32
    """

    grid: CoarseGrid
    values: np.ndarray

    @property
    def n_channels(self) -> int:
        return self.values.shape[0]

    def full(self, channel: int = 0) -> np.ndarray:
        """Full-size gradient of one channel, float32 ``(height, width)``."""
        return self.grid.upsample(self.values[channel])

    def full_all(self) -> np.ndarray:
        """Full-size gradient ``(c, height, width)`` float32."""
        out = np.empty((self.n_channels,) + tuple(self.grid.shape), np.float32)
        for c in range(self.n_channels):
            self.grid.upsample(self.values[c], out=out[c])
        return out

    def plane(self) -> np.ndarray:
        """Least-squares plane of each channel over the nodes inside the image:
        ``(c, 3)`` coefficients of ``a + b*x/width + c*y/height`` (x, y in px)."""
        x, y = self.grid.mesh()
        h, w = self.grid.shape
        inside = (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)
        a = np.column_stack([np.ones(inside.sum()), x[inside] / max(w, 1), y[inside] / max(h, 1)])
        return np.array([np.linalg.lstsq(a, self.values[c][inside].astype(float), rcond=None)[0]
                         for c in range(self.n_channels)])

    def minus_plane(self) -> GradientField:
        """The curvature: this field minus its least-squares plane (over the nodes
        inside the image), per channel."""
        x, y = self.grid.mesh()
        h, w = self.grid.shape
        u, v = x / max(w, 1), y / max(h, 1)
        out = np.empty_like(self.values)
        for c, coef in enumerate(self.plane()):
            out[c] = self.values[c] - (coef[0] + coef[1] * u + coef[2] * v)
        return GradientField(self.grid, out)

    def curvature_from(self, full: np.ndarray) -> np.ndarray:
        """The full-size curvature from the full-size gradient ``full`` (c, y, x):
        ``full`` minus the plane, without a second upsampling. Catmull-Rom
        reproduces a plane, so this equals ``minus_plane().full_all()`` to float32
        rounding."""
        h, w = self.grid.shape
        xs = (np.arange(w, dtype=np.float32) / np.float32(max(w, 1)))[None, :]
        ys = (np.arange(h, dtype=np.float32) / np.float32(max(h, 1)))[:, None]
        out = np.empty_like(full)
        for c, (a, b, d) in enumerate(self.plane().astype(np.float32)):
            np.subtract(full[c], a + b * xs, out=out[c])
            out[c] -= d * ys
        return out


def evaluate_gradient(model: SurfaceModel, grid: CoarseGrid, taper: np.ndarray | None = None):
    """Evaluate the surface on the coarse grid, blending into its plane where
    ``taper`` (from :func:`taper_weights`) is above 0.

    Returns
    -------
    GradientField
    """
    x, y = grid.mesh()
    vals = model.on_grid(x.ravel(), y.ravel(), key=grid)  # (n, c)
    if taper is not None:
        t = taper.ravel()[:, None]
        plane = model.evaluate_plane(x.ravel(), y.ravel())
        vals = (1.0 - t) * vals + t * plane
    values = vals.T.reshape(-1, grid.ny, grid.nx).astype(np.float32)
    return GradientField(grid, values)


def zero_gradient(grid: CoarseGrid, n_channels: int) -> GradientField:
    """A gradient of zero (the reference's own)."""
    return GradientField(grid, np.zeros((n_channels, grid.ny, grid.nx), np.float32))


def apply_correction(
    target: np.ndarray,
    scale: np.ndarray,
    gradient: GradientField,
    *,
    mask: np.ndarray | None = None,
    no_data: np.ndarray | None = None,
) -> np.ndarray:
    """``target*scale - gradient`` where the target has data; no-data stays 0.

    Parameters
    ----------
    target : ndarray
        ``(y, x)`` or ``(c, y, x)``.
    scale : array_like (c,)
        Photometric scale per channel.
    gradient : GradientField, or any object whose ``full(c)`` gives channel ``c`` full size
    mask : ndarray of bool (y, x), optional
        Extra pixels to make no-data (where the reference has none, in "mask" mode).
    no_data : ndarray of bool (c, y, x), optional
        The target's own no-data pixels, when already known (an interactive preview
        keeps them per frame); else computed with :func:`~napari_nsg.core.nodata.no_data_mask`.

    Returns
    -------
    ndarray float32, the shape of ``target``
        Not truncated: negative values are kept. A corrected value of exactly 0
        at a pixel with data is nudged to the smallest positive float32, so it
        is not mistaken for no-data.
    """
    mono = target.ndim == 2
    tgt = target[np.newaxis] if mono else target
    scale = np.broadcast_to(np.asarray(scale, float), (tgt.shape[0],))
    out = np.empty(tgt.shape, np.float32)
    for c in range(tgt.shape[0]):
        t = tgt[c]
        bad = no_data_mask(t) if no_data is None else no_data[c]
        if mask is not None:
            bad = bad | mask
        blocks = _column_blocks(t.shape[1], t.size)
        if len(blocks) == 1:
            _correct_block(t, np.float32(scale[c]), gradient, c, bad, out[c], blocks[0])
            continue
        with ThreadPoolExecutor(len(blocks), thread_name_prefix="nsg-correct") as pool:
            for fut in [pool.submit(_correct_block, t, np.float32(scale[c]), gradient, c, bad,
                                    out[c], cols) for cols in blocks]:
                fut.result()
    return out[0] if mono else out


PARALLEL_PIXELS = 2_000_000  # frames from this size are corrected in column blocks, in threads
MAX_BLOCKS = 2


def _column_blocks(width: int, pixels: int) -> list[slice]:
    """Column ranges corrected in parallel: one for small frames, else one per
    core (at most ``MAX_BLOCKS``; ``OMP_NUM_THREADS``, which worker processes
    set to 1, caps it like the native libraries' threads)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    limit = os.environ.get("OMP_NUM_THREADS", "")
    n = min(MAX_BLOCKS, cores or 1, int(limit) if limit.isdigit() and int(limit) > 0 else 99)
    n = n if pixels >= PARALLEL_PIXELS else 1
    edges = np.linspace(0, width, n + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(edges)]


def _gradient_columns(gradient, c: int, cols: slice) -> np.ndarray:
    """Columns ``cols`` of the full-size gradient of channel ``c``: upsampled for those
    columns only from a :class:`GradientField`, or cut from ``gradient.full(c)`` for any
    other object that gives full-size channels (e.g. images computed once)."""
    grid = getattr(gradient, "grid", None)
    if grid is None:
        return gradient.full(c)[:, cols]
    return grid.upsample_columns(gradient.values[c], cols)


def _correct_block(t: np.ndarray, scale: np.float32, gradient, c: int,
                   bad: np.ndarray, out: np.ndarray, cols: slice) -> None:
    """``out[:, cols] = t*scale - gradient`` with the no-data rule of
    :func:`apply_correction` (NumPy releases the GIL: blocks run in parallel)."""
    tiny = np.finfo(np.float32).tiny
    o = out[:, cols]
    np.multiply(t[:, cols], scale, out=o, dtype=np.float32, casting="unsafe")
    o -= _gradient_columns(gradient, c, cols)
    o[o == 0] = tiny
    o[bad[:, cols]] = 0.0
