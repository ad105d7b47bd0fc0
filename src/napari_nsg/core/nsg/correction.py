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

import functools
import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.linalg.blas import sgemm

from ..blas import BLAS_ONE_THREAD
from ..nodata import no_data_mask
from ..threads import available_threads
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
        if out is None:
            out = np.empty((h, w), np.float32)
        if self.step == 1:
            m = self.margin
            out[...] = np.asarray(values, dtype=np.float32)[m : m + h, m : m + w]
            return out
        for rows, band in self.row_bands(values):
            band(out[rows])
        return out

    def row_bands(self, values: np.ndarray):
        """The full-size image of :meth:`upsample` as bands of rows: ``(rows, band)``
        pairs, ``rows`` a slice and ``band(out=None)`` the float32 image of those rows
        (into ``out`` when given). Each band lies between two node rows, so that its
        rows come from the same four rows of nodes; the bands can be computed in
        any order, e.g. by several threads (``step`` > 1 only)."""
        for rows, across, weights in self.row_blocks(values):
            yield rows, functools.partial(_band, across, weights)

    def row_blocks(self, values: np.ndarray):
        """:meth:`row_bands` as ``(rows, across, weights)``: each band is
        ``weights @ across``, ``weights`` ``(n, 4)`` and ``across`` ``(4, width)``
        (the four node rows interpolated across, float32, C-contiguous)."""
        h, w = self.shape
        across = _across(np.asarray(values, dtype=np.float32),
                         cubic_weights(w, self.step, self.margin, self.nx).T)  # (ny, width)
        for base, rows, weights in _row_phases(h, self.step, self.margin):
            yield rows, across[base:base + 4], weights

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


@functools.lru_cache(maxsize=8)
def _row_phases(n_out: int, step: int, margin: int) -> tuple:
    """``(base, rows, weights)`` per band of output rows that share the four node rows
    ``base .. base+3``: ``rows`` a slice, ``weights`` ``(len(rows), 4)`` float32,
    each row's Catmull-Rom weights (those of its phase ``y % step``)."""
    phase = [_catmull_rom((r + 0.5) / step - 0.5 - np.floor((r + 0.5) / step - 0.5))
             for r in range(step)]
    offset = [int(np.floor((r + 0.5) / step - 0.5)) for r in range(step)]
    y = np.arange(n_out)
    base = margin - 1 + y // step + np.array(offset)[y % step]
    table = np.stack([phase[r] for r in range(step)])[y % step]
    edges = np.flatnonzero(np.diff(base)) + 1
    starts = np.concatenate([[0], edges])
    stops = np.concatenate([edges, [n_out]])
    return tuple((int(base[a]), slice(int(a), int(b)), table[a:b])
                 for a, b in zip(starts, stops))


#: At most this many rows per product in :func:`_correct_fused` (the rows of a
#: 6000 px wide frame stay in the L1/L2 cache between the passes over them).
FUSED_ROWS = 16


#: Columns per product in :func:`_across` are a multiple of this (OpenBLAS's
#: kernel width).
ACROSS_COLUMNS = 16


def _across(small: np.ndarray, weights_t: np.ndarray) -> np.ndarray:
    """``small @ weights_t`` (node rows interpolated across, ``(ny, width)``) by blocks of
    columns each under ``BLAS_ONE_THREAD``: OpenBLAS would share one whole product
    among its threads, which then spin for tens of ms after it, on CPU time that the
    rest of the target needs. The same sums; OpenBLAS's kernels for small and large
    products may round them differently (float32 rounding of the gradient: the
    corrected pixels of the WASP-12b frames move by at most 7e-7 of the sky level,
    those of the 6000 x 4000 benchmark frames not at all)."""
    per = max(1, small.size)
    if per * weights_t.shape[1] <= BLAS_ONE_THREAD:  # on one thread already
        return small @ weights_t
    out = np.empty((small.shape[0], weights_t.shape[1]), np.float32)
    cols = max(ACROSS_COLUMNS, BLAS_ONE_THREAD // per // ACROSS_COLUMNS * ACROSS_COLUMNS)
    for c0 in range(0, out.shape[1], cols):
        np.matmul(small, weights_t[:, c0:c0 + cols], out=out[:, c0:c0 + cols])
    return out


def _band(across: np.ndarray, weights: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Rows ``weights @ across`` (``(n, 4)`` by ``(4, width)``), float32, into ``out``.

    Products of a few hundred columns at a time: each stays in the cache and on
    this thread (see ``BLAS_ONE_THREAD``); 8x faster than four scaled rows added
    with NumPy, and equal to them to float32 rounding."""
    n, width = weights.shape[0], across.shape[1]
    if out is None:
        out = np.empty((n, width), np.float32)
    cols = max(64, BLAS_ONE_THREAD // (4 * max(n, 1)))
    for c0 in range(0, width, cols):
        np.matmul(weights, across[:, c0:c0 + cols], out=out[:, c0:c0 + cols])
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
    out: np.ndarray | None = None,
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
    no_data : ndarray of bool (c, y, x), or False, optional
        The target's own no-data pixels, when already known (an interactive preview
        keeps them per frame); ``False`` when it is known to have none; else
        computed with :func:`~napari_nsg.core.nodata.no_data_mask`.
    out : ndarray float32, optional
        Where to write the result, the shape of ``target``; it may be ``target``
        itself (corrected in place: no fresh 96 MB output of a 24 Mpx frame, whose
        pages would all be faulted in).

    Returns
    -------
    ndarray float32, the shape of ``target``
        Not truncated: negative values are kept. A corrected value of exactly 0
        at a pixel with data is nudged to the smallest positive float32, so it
        is not mistaken for no-data.

    Notes
    -----
    A :class:`GradientField` is upsampled band by band of rows (the rows between
    two node rows), each band corrected while it is in the cache: into a
    C-contiguous ``out`` a few rows at a time, the gradient subtracted by BLAS in
    place (one thread); else with a gradient buffer, the bands shared among
    threads on frames of ``PARALLEL_PIXELS`` or more. No full-size gradient image
    or temporary is made.
    """
    mono = target.ndim == 2
    tgt = target[np.newaxis] if mono else target
    scale = np.broadcast_to(np.asarray(scale, float), (tgt.shape[0],))
    if out is None:
        out = np.empty(target.shape, np.float32)
    elif out.shape != target.shape or out.dtype != np.float32:
        raise ValueError(f"out is {out.dtype} {out.shape}; expected float32 {target.shape}")
    out = out[np.newaxis] if mono else out
    for c in range(tgt.shape[0]):
        t = tgt[c]
        if no_data is False:
            bad = mask
        else:
            bad = no_data_mask(t) if no_data is None else no_data[c]
            bad = bad if mask is None else bad | mask
        _correct_plane(t, np.float32(scale[c]), gradient, c, bad, out[c])
    return out[0] if mono else out


PARALLEL_PIXELS = 2_000_000  # frames from this size are corrected by bands of rows, in threads
MAX_THREADS = 2


def _thread_count(pixels: int) -> int:
    """Threads for the correction: one for small frames, else one per core (at most
    ``MAX_THREADS``, see :func:`~napari_nsg.core.threads.available_threads`)."""
    return available_threads(MAX_THREADS) if pixels >= PARALLEL_PIXELS else 1


def _correct_plane(t: np.ndarray, scale: np.float32, gradient, c: int,
                   bad: np.ndarray | None, out: np.ndarray) -> None:
    """``out = t*scale - gradient`` of channel ``c``, no-data 0, by bands of rows."""
    grid = getattr(gradient, "grid", None)
    if grid is None or grid.step == 1:  # any full-size gradient: one block
        full = gradient.full(c)
        bands = [(slice(0, t.shape[0]), full)]
        _correct_rows(t, scale, bands, bad, out)
        return
    if out.flags.c_contiguous:
        # one pass on this thread: 23 ms on 24 Mpx, against 33 ms wall and 43 ms CPU
        # on two threads (SciPy's BLAS wrapper holds the GIL through each small product)
        _correct_fused(t, scale, list(grid.row_blocks(gradient.values[c])), bad, out)
        return
    bands = list(grid.row_bands(gradient.values[c]))
    n = _thread_count(t.size)
    if n == 1:
        _correct_rows(t, scale, bands, bad, out)
        return
    cut = np.linspace(0, len(bands), n + 1).round().astype(int)
    with ThreadPoolExecutor(n, thread_name_prefix="nsg-correct") as pool:
        for fut in [pool.submit(_correct_rows, t, scale, bands[a:b], bad, out)
                    for a, b in itertools.pairwise(cut)]:
            fut.result()


def _correct_fused(t: np.ndarray, scale: np.float32, blocks, bad: np.ndarray | None,
                   out: np.ndarray) -> None:
    """:func:`_correct_rows` in one pass from memory, for a C-contiguous ``out``:
    ``blocks`` from :meth:`CoarseGrid.row_blocks`, taken a few rows at a time (in
    the L1/L2 cache): ``out = t*scale`` then the gradient subtracted by BLAS itself
    (``sgemm`` with ``beta = 1`` into ``out``: no gradient buffer), then the no-data
    rule. The same float32 operations as :func:`_correct_rows`, so the same values
    (bit for bit: a ``beta`` equal to the scale would round once, not twice)."""
    tiny = np.finfo(np.float32).tiny
    step = max(1, min(FUSED_ROWS, BLAS_ONE_THREAD // (4 * t.shape[1])))
    zero = np.empty((step, t.shape[1]), bool)
    for rows, across, weights in blocks:
        a_t = across.T  # (width, 4), Fortran order: no copy into BLAS
        for r0 in range(0, weights.shape[0], step):
            a, b = rows.start + r0, min(rows.stop, rows.start + r0 + step)
            o = out[a:b]
            np.multiply(t[a:b], scale, out=o, dtype=np.float32, casting="unsafe")
            # o.T is (width, rows) in Fortran order: BLAS writes o in place
            sgemm(-1.0, a_t, weights[r0:r0 + step].T, beta=1.0, c=o.T, overwrite_c=1)
            z = np.equal(o, 0, out=zero[: b - a])
            if z.any():
                np.copyto(o, tiny, where=z)
            if bad is not None:
                np.copyto(o, np.float32(0), where=bad[a:b])


def _correct_rows(t: np.ndarray, scale: np.float32, bands, bad: np.ndarray | None,
                  out: np.ndarray) -> None:
    """``out[rows] = t[rows]*scale - g`` for each ``(rows, g)`` of ``bands`` (``g`` an
    array, or a band function of :meth:`CoarseGrid.row_bands` computed here into one
    buffer), with the no-data rule of :func:`apply_correction` (NumPy and BLAS release
    the GIL: threads run in parallel)."""
    tiny = np.finfo(np.float32).tiny
    longest = max((r.stop - r.start for r, g in bands if callable(g)), default=0)
    buf = np.empty((longest, t.shape[1]), np.float32)
    for rows, g in bands:
        o = out[rows]
        np.multiply(t[rows], scale, out=o, dtype=np.float32, casting="unsafe")
        o -= g(buf[: rows.stop - rows.start]) if callable(g) else g
        np.copyto(o, tiny, where=o == 0)
        if bad is not None:
            np.copyto(o, np.float32(0), where=bad[rows])
