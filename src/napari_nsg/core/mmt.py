"""Multiscale median transform (MMT), PixInsight style, with a fast scheme for large images.

The transform (PixInsight/PCL ``MultiscaleMedianTransform``, dyadic scales)::

    c_0 = I
    c_j = Median_{n_j}(c_{j-1}),  n_j = 2^j + 1  (window 3, 5, 9, 17, ... 257 for j = 8)
    w_j = c_{j-1} - c_j           (detail layer j)
    I   = w_1 + ... + w_J + c_J   (exact reconstruction)

Removing the first ``J`` layers keeps the residual ``c_J``: the large scales that
MSGR works with. Two implementations share this module:

* :func:`mmt_residual_reference` is the straightforward PCL port: two-way
  ("multiway") median structures at full resolution for windows 3, 5, 9; for
  larger windows PCL's own scheme, r = n/9, anti-aliased Mitchell-Netravali
  decimation by 1/r, two-way 9x9 median, Keys bicubic (a = -1/2, linear
  clamping at 0.3) back to the full size. About 70 s per 24 Mpx channel.
* :func:`mmt_residual` is the fast hybrid of the research notes: OpenCV box
  medians for windows 3 and 5; "area-decimate by n/5, 5x5 median, cubic
  upsample" for the middle layers; the exact PCL scheme from layer
  ``exact_from`` (7) on, because the largest layers shape the residual. It
  stays within ~0.1 % RMS of the reference. The decimated layers stay small
  (:class:`_Coarse`): the next decimation goes through composed operators
  (:func:`_composed_rows`), the same numbers as through the full-size image,
  and only the residual is brought to full size. The full-resolution layers
  1-3 (with the linear border extension) are one pass over bands of rows in
  two threads (:func:`_first_three_layers`): no full-size intermediate image.
  Timings: docs/msgr.md ("MMT after issue 13").

No data: pixels that are 0, NaN or inf are filled smoothly from their
surroundings before the transform (so borders of registered images do not drag
the medians down) and given back their original value afterwards.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from scipy import ndimage, sparse

from .nodata import find_no_data
from .star_removal import fill_masked
from .threads import available_threads

__all__ = [
    "BORDERS",
    "EXACT_FROM",
    "MMTDecomposition",
    "MMTSizeError",
    "check_mmt_size",
    "layer_window",
    "min_size_for_layers",
    "mmt_decompose",
    "mmt_residual",
    "mmt_residual_binned",
    "mmt_residual_reference",
]

#: First layer :func:`mmt_residual` computes with PCL's exact scheme (finer ones: fast).
EXACT_FROM = 7
#: PCL runs medians of at most this window directly (``MAX_STRUCTURE_SIZE - 2``).
_PCL_DIRECT = 9
#: Keys bicubic linear-clamping threshold of PCL's ``BicubicSplinePixelInterpolation``.
_CLAMP = 0.3
#: Below this many output pixels a resampling pass runs in one thread.
_THREAD_MIN_PIXELS = 1 << 20
#: Memory for the gathered windows of one band of :func:`_two_way_median_fast`.
_MEDIAN_BAND_BYTES = 32 << 20
#: Fewest row bands of :func:`_two_way_median_fast` (per way).
_MEDIAN_BANDS = 4
#: Rows along an image edge whose median smooths the linear extension's edge values.
_EDGE_MEDIAN = 9
#: Compare-exchanges after which element 4 of 9 is their median (Paeth; Devillard's opt_med9).
_MEDIAN9_NETWORK = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8),
                    (0, 3), (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4),
                    (4, 2))
#: Output rows per band of the full-resolution passes of :func:`_first_three_layers`.
_FRONT_BAND_ROWS = 64
#: Rows a band of :func:`_first_three_layers` needs above and below it: the 3x3 then 5x5 medians.
_FRONT_HALO = 1 + 2
#: Most threads of the MMT's parallel passes (fewer where fewer cores or OMP_NUM_THREADS).
_THREADS = 2
#: Largest m * n * k of a matrix product OpenBLAS computes in one thread (its
#: SMP_THRESHOLD_MIN * GEMM_MULTITHREAD_THRESHOLD): more would start its own threads.
_BLAS_ONE_THREAD_WORK = 65536 * 4


class MMTSizeError(ValueError):
    """The image is too small for the number of layers asked."""


def layer_window(j: int) -> int:
    """Median window of layer ``j`` (1-based): ``2**j + 1`` (3, 5, 9, ..., 257 for j = 8)."""
    return 2**j + 1


def min_size_for_layers(n_layers: int) -> int:
    """Shortest image side accepted for ``n_layers`` layers: ``2**n_layers`` px.

    The last layer's median window (``2**n + 1``) may then span the whole short
    side but no more; beyond that the "large scales" would be a global median.
    """
    return 2**n_layers


def check_mmt_size(shape: tuple[int, ...], n_layers: int) -> None:
    """Raise :class:`MMTSizeError` if ``shape`` is too small for ``n_layers`` layers."""
    if n_layers < 1:
        raise MMTSizeError(f"the number of layers must be at least 1, got {n_layers}")
    h, w = shape[-2:]
    need = min_size_for_layers(n_layers)
    if min(h, w) < need:
        most = max(0, int(np.floor(np.log2(max(1, min(h, w))))))
        raise MMTSizeError(
            f"image is {w}x{h} px: too small for {n_layers} multiscale layers (the shorter "
            f"side must be at least {need} px); use at most {most} layers"
        )


# --------------------------------------------------------------------------- structures


def _two_way_structures(n: int) -> tuple[np.ndarray, np.ndarray]:
    """PCL's two-way structuring elements for an n x n median (n odd, <= 11).

    Way 0 is the rounded box (x^2 + y^2 <= r(r+1): 9, 21, 37, 69 elements for
    n = 3, 5, 7, 9); way 1 the disk (x^2 + y^2 <= r^2: 5, 13, 29, 49).
    """
    r = (n - 1) // 2
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    d2 = x * x + y * y
    return d2 <= r * (r + 1), d2 <= r * r


def _two_way_median(img: np.ndarray, n: int) -> np.ndarray:
    """PCL multiway median: the mean of the medians over both structures (mirrored borders)."""
    way0, way1 = _two_way_structures(n)
    m0 = ndimage.median_filter(img, footprint=way0, mode="mirror")
    m1 = ndimage.median_filter(img, footprint=way1, mode="mirror")
    return (np.float32(0.5) * (m0 + m1)).astype(np.float32, copy=False)


def _order_keys(a: np.ndarray) -> np.ndarray:
    """float32 -> int32 keys in the same order, and back (the map is its own inverse).

    A negative float's bits, read as an integer, grow with its magnitude; flipping
    all but the sign bit turns that around. numpy partitions int32 1.7x faster.
    """
    i = a.view(np.int32)
    return i ^ ((i >> 31) & np.int32(0x7FFFFFFF))


def _footprint_median(pad: np.ndarray, footprint: np.ndarray, out: np.ndarray) -> None:
    """Median over ``footprint`` (odd element count) of every window of ``pad``, into ``out``."""
    k = int(footprint.sum()) // 2
    windows = np.lib.stride_tricks.sliding_window_view(pad, footprint.shape)[:, :, footprint]
    windows.partition(k, axis=-1)
    out[...] = windows[..., k]


def _in_threads(func, jobs: list[tuple]) -> None:
    """``func(*job)`` for every job, over up to ``_THREADS`` threads where cores exist
    (:func:`~napari_nsg.core.threads.available_threads`; OpenCV and numpy free the GIL)."""
    workers = available_threads(_THREADS)
    if workers == 1 or len(jobs) == 1:
        for job in jobs:
            func(*job)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda job: func(*job), jobs))


def _two_way_median_fast(img: np.ndarray, n: int) -> np.ndarray:
    """:func:`_two_way_median`, the same numbers, faster on the small decimated images.

    Every window's elements are gathered and partitioned (row bands of at most
    ``_MEDIAN_BAND_BYTES``, both ways and the bands spread over two threads:
    numpy releases the GIL) instead of ``scipy.ndimage.median_filter``, as
    order-preserving integer keys (:func:`_order_keys`; no NaN here).
    """
    r = n // 2
    h, w = img.shape
    if min(h, w) <= r:
        return _two_way_median(img, n)
    ways = _two_way_structures(n)
    # numpy's "reflect" is ndimage's "mirror"
    pad = _order_keys(np.pad(np.asarray(img, np.float32), r, mode="reflect"))
    # at least _MEDIAN_BANDS bands: the two threads finish together
    rows = max(1, min(_MEDIAN_BAND_BYTES // (w * int(ways[0].sum()) * 4), -(-h // _MEDIAN_BANDS)))
    m0, m1 = np.empty((h, w), np.int32), np.empty((h, w), np.int32)
    jobs = [(pad[s : min(s + rows, h) + 2 * r], way, m[s : s + rows])
            for s in range(0, h, rows) for way, m in zip(ways, (m0, m1), strict=True)]
    _in_threads(_footprint_median, jobs)
    m0, m1 = (_order_keys(m).view(np.float32) for m in (m0, m1))
    return (np.float32(0.5) * (m0 + m1)).astype(np.float32, copy=False)


# --------------------------------------------------------------------------- resampling


def _mitchell_netravali(x: np.ndarray) -> np.ndarray:
    """Mitchell-Netravali cubic filter, B = C = 1/3, support [-2, 2]."""
    ax = np.abs(x)
    out = np.zeros_like(ax)
    inner = ax < 1
    outer = (ax >= 1) & (ax < 2)
    a = ax[inner]
    out[inner] = (7.0 * a**3 - 12.0 * a**2 + 16.0 / 3.0) / 6.0
    a = ax[outer]
    out[outer] = (-7.0 / 3.0 * a**3 + 12.0 * a**2 - 20.0 * a + 32.0 / 3.0) / 6.0
    return out


def _mirror(idx: np.ndarray, n: int) -> np.ndarray:
    """Mirror indices into [0, n) excluding the edge pixel (d c b | a b c d | c b a)."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.abs(idx) % period
    return np.where(idx >= n, period - idx, idx)


def _decimation_matrix(n_src: int, n_dst: int, fr: int) -> sparse.csr_matrix:
    """Rows of normalised Mitchell-Netravali taps (radius fr + 1/2 source px), n_dst x n_src."""
    ratio = n_src / n_dst
    centre = (np.arange(n_dst) + 0.5) * ratio - 0.5
    offsets = np.arange(-fr, fr + 1)
    cols = np.rint(centre)[:, None].astype(np.int64) + offsets[None, :]
    weights = _mitchell_netravali((cols - centre[:, None]) * (2.0 / (fr + 0.5)))
    weights /= weights.sum(axis=1, keepdims=True)
    rows = np.repeat(np.arange(n_dst), offsets.size)
    m = sparse.csr_matrix(
        (weights.ravel().astype(np.float32), (rows, _mirror(cols, n_src).ravel())),
        shape=(n_dst, n_src),
    )
    m.sum_duplicates()
    return m


def _keys_matrices(n_src: int, n_dst: int) -> tuple[sparse.csr_matrix, sparse.csr_matrix, np.ndarray]:
    """Keys cubic (a = -1/2) resampling n_src -> n_dst, split in inner and outer taps.

    Returns ``(inner, outer, inner_sum)``: the rows of taps on the two nearest
    source samples, the rows of taps on the two outer ones, and the sum of the
    inner weights (for PCL's linear clamping).
    """
    ratio = n_src / n_dst
    c = np.clip((np.arange(n_dst) + 0.5) * ratio - 0.5, 0, n_src - 1)
    j1 = np.minimum(np.floor(c).astype(np.int64), n_src - 1)
    t = c - j1
    w0 = -0.5 * t**3 + t**2 - 0.5 * t
    w1 = 1.5 * t**3 - 2.5 * t**2 + 1.0
    w2 = -1.5 * t**3 + 2.0 * t**2 + 0.5 * t
    w3 = 0.5 * t**3 - 0.5 * t**2

    def mat(weights, cols):
        rows = np.repeat(np.arange(n_dst), len(weights))
        data = np.column_stack(weights).ravel().astype(np.float32)
        idx = np.clip(np.column_stack(cols), 0, n_src - 1).ravel()
        m = sparse.csr_matrix((data, (rows, idx)), shape=(n_dst, n_src))
        m.sum_duplicates()
        return m

    inner = mat((w1, w2), (j1, j1 + 1))
    outer = mat((w0, w3), (j1 - 1, j1 + 2))
    return inner, outer, (w1 + w2).astype(np.float32)


def _keys_rows(inner, outer, inner_sum, a: np.ndarray, clamp: float) -> np.ndarray:
    """Resample the rows axis (axis 0) of ``a`` with clamped Keys cubic interpolation."""
    f12 = np.asarray(inner @ a, dtype=np.float32)
    out = np.asarray(outer @ a, dtype=np.float32)  # f03, becomes the result
    if clamp >= 1.0:
        out += f12
        return out
    # PCL: cubic unless the outer (negative) lobes outweigh clamp * the inner part,
    # -f03 >= clamp * f12, then linear interpolation between the two inner samples.
    linear = np.multiply(f12, np.float32(-clamp))
    np.greater_equal(linear, out, out=linear)  # True where linear is used (as float)
    use_linear = linear.astype(bool)
    out += f12
    f12 /= inner_sum[:, None]
    np.copyto(out, f12, where=use_linear)
    return out


def _keys_taps(n_src: int, n_dst: int) -> tuple[np.ndarray, np.ndarray]:
    """Keys cubic (a = -1/2) taps n_src -> n_dst: first inner source index and weights.

    Returns ``(j1, w)``: ``j1[i]`` is the source sample left of output ``i``
    (centres clipped to the source, as :func:`_keys_matrices`), ``w[i]`` the four
    weights on samples ``j1 - 1 .. j1 + 2`` (float32, shape ``(n_dst, 4)``).
    """
    ratio = n_src / n_dst
    c = np.clip((np.arange(n_dst) + 0.5) * ratio - 0.5, 0, n_src - 1)
    j1 = np.minimum(np.floor(c).astype(np.int64), n_src - 1)
    t = c - j1
    w = np.column_stack((-0.5 * t**3 + t**2 - 0.5 * t,
                         1.5 * t**3 - 2.5 * t**2 + 1.0,
                         -1.5 * t**3 + 2.0 * t**2 + 0.5 * t,
                         0.5 * t**3 - 0.5 * t**2))
    return j1, w.astype(np.float32)


def _clamp_may_act(a0, a1, a2, a3, w: np.ndarray, clamp: float) -> bool:
    """False if PCL's clamp keeps the cubic value in every output row of a block (rows ``a0..a3``).

    The outer taps are <= 0 and the inner ones >= 0, so ``-f03 <= q max(a0, a3, 0)``
    and ``f12 >= (w1 + w2) min(a1, a2)``, ``q`` the largest outer-to-inner weight
    ratio of the block: the clamp cannot act where ``q max(a0, a3, 0) < clamp min(a1, a2)``
    (1 % margin for rounding). Four passes over one source row, not the block's rows.
    """
    q = float(np.max(-(w[:, 0] + w[:, 3]) / (w[:, 1] + w[:, 2])))
    if q <= 0:
        return False
    outer = np.maximum(np.maximum(a0, a3), 0)
    return bool(np.any(np.float32(1.01 * q) * outer >= np.float32(clamp) * np.minimum(a1, a2)))


def _four_taps(w: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
    """``out = w @ rows`` (k x 4 weights, 4 source rows), by products small enough that
    OpenBLAS runs each in the calling thread (4-5x less CPU than its threads here)."""
    step = max(1, _BLAS_ONE_THREAD_WORK // (4 * rows.shape[1]))
    for s in range(0, w.shape[0], step):
        np.matmul(w[s : s + step], rows, out=out[s : s + step])


def _keys_block(src: np.ndarray, j: int, w: np.ndarray, out: np.ndarray, clamp: float) -> None:
    """Output rows sharing the inner source rows ``j, j + 1`` (weights ``w``, k x 4) into ``out``.

    Where the clamp cannot act the rows are ``w @ [a0, a1, a2, a3]``: one BLAS
    product per few rows (float rounding: 2e-7 relative from the sums below).
    """
    last = src.shape[0] - 1
    a0, a1, a2, a3 = (src[min(max(k, 0), last)] for k in (j - 1, j, j + 1, j + 2))
    if clamp >= 1.0 or not _clamp_may_act(a0, a1, a2, a3, w, clamp):
        _four_taps(w, src[j - 1 : j + 3] if 0 < j < last - 1 else np.stack((a0, a1, a2, a3)), out)
        return
    f12 = w[:, 1:2] * a1
    f12 += w[:, 2:3] * a2
    np.multiply(w[:, 0:1], a0, out=out)
    out += w[:, 3:4] * a3  # f03
    # PCL: cubic unless the outer (negative) lobes outweigh clamp * the inner part,
    # -f03 >= clamp * f12, then linear interpolation between the two inner samples.
    use_linear = (f12 * np.float32(-clamp)) >= out
    out += f12
    f12 /= w[:, 1:2] + w[:, 2:3]
    np.copyto(out, f12, where=use_linear)


def _keys_upsample_rows(src: np.ndarray, n_dst: int, clamp: float = _CLAMP,
                        crop: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """Clamped Keys resampling of the rows axis of ``src`` (n_src, w) to ``n_dst`` rows.

    ``crop`` > 0 leaves out the first and last ``crop`` output rows. ``out``:
    a float32 array of the result's shape to write into (else a new one).

    The same numbers as :func:`_keys_rows`, computed block by block: the output
    rows that share their four source rows are done together, so every
    temporary stays in cache and the full-size result is written once. The
    blocks are split between two threads (numpy releases the GIL).
    """
    j1, w = _keys_taps(src.shape[0], n_dst)
    if crop:
        j1, w = j1[crop:-crop], w[crop:-crop]
    if out is None:
        out = np.empty((j1.size, src.shape[1]), np.float32)
    starts = np.flatnonzero(np.diff(j1, prepend=-1))
    ends = np.append(starts[1:], j1.size)

    def run(blocks):
        for s, e in blocks:
            _keys_block(src, int(j1[s]), w[s:e], out[s:e], clamp)

    blocks = list(zip(starts.tolist(), ends.tolist(), strict=True))
    half = len(blocks) // 2
    if out.size < _THREAD_MIN_PIXELS or half == 0:
        run(blocks)
    else:
        _in_threads(run, [(blocks[:half],), (blocks[half:],)])
    return out


def _transposed(a: np.ndarray) -> np.ndarray:
    """``a.T`` as a C-contiguous float32 array (OpenCV's blocked transpose: faster than numpy's copy)."""
    return cv2.transpose(np.ascontiguousarray(a, dtype=np.float32))


def _keys_resize(small: np.ndarray, h: int, w: int, clamp: float = _CLAMP,
                 crop: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """PCL ``BicubicSplinePixelInterpolation`` resize of ``small`` to (h, w): x first, then y.

    ``crop`` > 0 computes only the inner ``(h - 2 crop, w - 2 crop)`` part.
    """
    ix, ox, sx = _keys_matrices(small.shape[1], w)
    if crop:
        keep = slice(crop, w - crop)
        ix, ox, sx = ix[keep], ox[keep], sx[keep]
    tmp = _transposed(_keys_rows(ix, ox, sx, _transposed(small), clamp))  # (sh, w)
    return _keys_upsample_rows(tmp, h, clamp, crop, out)


# --------------------------------------------------------------------------- coarse layers


@dataclass(frozen=True)
class _Coarse:
    """The smooth image of a decimated layer, kept at low resolution.

    ``full()`` is the layer's full-size image: ``small`` upsampled to ``shape``
    with OpenCV's bicubic (``kind="cubic"``, the fast middle layers) or PCL's
    clamped Keys cubic (``kind="keys"``, the exact scheme). The next layer
    decimates it without building it (:func:`_decimate`).
    """

    small: np.ndarray
    shape: tuple[int, int]
    kind: str

    def full(self, crop: int = 0, out: np.ndarray | None = None) -> np.ndarray:
        """The full-size image, without a border of ``crop`` px if ``crop`` > 0 (into ``out``)."""
        h, w = self.shape
        if self.kind == "keys":
            return _keys_resize(self.small, h, w, crop=crop, out=out)
        return _into(_cropped(cv2.resize(self.small, (w, h), interpolation=cv2.INTER_CUBIC), crop),
                     out)


def _cropped(a: np.ndarray, crop: int) -> np.ndarray:
    return a[crop:-crop, crop:-crop] if crop else a


def _into(a: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """``a``, or ``out`` holding a copy of it."""
    if out is None or a is out:
        return a
    np.copyto(out, a)
    return out


def _full(c: np.ndarray | _Coarse, crop: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """The full-size image of a layer (a view when ``c`` is an array and no ``out`` is
    given), less ``crop`` px of border."""
    return c.full(crop, out) if isinstance(c, _Coarse) else _into(_cropped(c, crop), out)


def _up_rows(a: np.ndarray, n_dst: int, kind: str) -> np.ndarray:
    """Upsample the rows axis of ``a`` (n, k) to ``n_dst`` rows: OpenCV bicubic or unclamped Keys."""
    if kind == "cubic":
        return cv2.resize(a, (a.shape[1], n_dst), interpolation=cv2.INTER_CUBIC)
    inner, outer, _ = _keys_matrices(a.shape[0], n_dst)
    return np.asarray(inner @ a + outer @ a, dtype=np.float32)


def _down_rows(a: np.ndarray, n_dst: int, fr: int) -> np.ndarray:
    """Decimate the rows axis of ``a`` (n, k): OpenCV area (``fr == 0``) or Mitchell radius ``fr``."""
    if fr == 0:
        return cv2.resize(a, (a.shape[1], n_dst), interpolation=cv2.INTER_AREA)
    return np.asarray(_decimation_matrix(a.shape[0], n_dst, fr) @ a, dtype=np.float32)


@lru_cache(maxsize=64)
def _composed_rows(kind: str, n_small: int, n_full: int, n_dst: int, fr: int) -> sparse.csr_matrix:
    """The 1-D operator "upsample n_small -> n_full, decimate to n_dst" as a sparse matrix.

    Read off by applying both passes to a comb (column ``k`` is 1 on the source
    rows ``s = k (mod period)``, ``period`` longer than the operator's support):
    each output row then sees each of its source rows in a different column.
    Checked on a random column before use.
    """
    up, down = n_full / n_small, n_full / n_dst
    half = (max(fr, down / 2) + 2) / up + 3  # support half-width, in source rows
    period = 2 * int(np.ceil(half)) + 4
    comb = (np.arange(n_small)[:, None] % period == np.arange(period)[None, :]).astype(np.float32)
    out = _down_rows(_up_rows(comb, n_full, kind), n_dst, fr)
    centre = np.floor((np.arange(n_dst) + 0.5) * (n_small / n_dst)).astype(np.int64)
    lo = centre - period // 2
    cols = lo[:, None] + (np.arange(period)[None, :] - lo[:, None]) % period
    inside = (cols >= 0) & (cols < n_small)
    rows = np.broadcast_to(np.arange(n_dst)[:, None], cols.shape)
    m = sparse.csr_matrix((out[inside], (rows[inside], cols[inside])), shape=(n_dst, n_small))
    m.eliminate_zeros()
    # (OpenCV resizes arrays narrower than 4 columns by another path: probe with 4)
    probe = np.random.default_rng(0).random((n_small, 4), dtype=np.float32)
    expect = _down_rows(_up_rows(probe, n_full, kind), n_dst, fr)
    if not np.allclose(m @ probe, expect, rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"composed resampling {n_small}->{n_full}->{n_dst}: support too wide")
    return m


def _keys_linear_everywhere(a: np.ndarray, n_dst: int, clamp: float = _CLAMP) -> bool:
    """True if PCL's clamp cannot switch any output of the Keys upsampling of ``a``'s rows.

    The outer taps are <= 0 and the inner ones >= 0, so the cubic value is kept
    wherever ``q * max(outer samples, 0) < clamp * min(inner samples)``, ``q`` the
    largest ratio of outer to inner weight among the rows of an interval (1 %
    margin for rounding; the float32 products are within 1e-7 of exact, so the
    margin covers them too).
    """
    j1, w = _keys_taps(a.shape[0], n_dst)
    q = np.zeros(a.shape[0])
    np.maximum.at(q, j1, -(w[:, 0] + w[:, 3]) / (w[:, 1] + w[:, 2]))
    js = np.flatnonzero(q > 0)
    if js.size == 0:
        return True
    last = a.shape[0] - 1

    def rows(d: int) -> np.ndarray:
        return a[np.clip(js + d, 0, last)]

    inner = np.minimum(rows(0), rows(1))
    inner *= np.float32(clamp)
    outer = np.maximum(rows(-1), rows(2))
    np.maximum(outer, 0, out=outer)
    outer *= (1.01 * q[js]).astype(np.float32)[:, None]
    return bool(np.all(outer < inner))


def _decimate(c: np.ndarray | _Coarse, sh: int, sw: int, fr: int) -> np.ndarray:
    """``c`` decimated to (sh, sw): OpenCV area (``fr == 0``) or Mitchell (radius ``fr`` px).

    A :class:`_Coarse` input is decimated through the composed operators of
    :func:`_composed_rows`, never at full size: the same numbers to float
    rounding. Where PCL's clamp could act (Keys), the full image is built.
    """
    if not isinstance(c, _Coarse):
        if fr == 0:
            return cv2.resize(c, (sw, sh), interpolation=cv2.INTER_AREA)
        tmp = _down_rows(c, sh, fr)  # (sh, w)
        return _transposed(_down_rows(_transposed(tmp), sw, fr))
    h, w = c.shape
    small = c.small
    if c.kind == "cubic":  # rows first: the transposed array is the smaller one
        tmp = np.asarray(_composed_rows("cubic", small.shape[0], h, sh, fr) @ small,
                         dtype=np.float32)  # (sh, sw_small)
        mx = _composed_rows("cubic", small.shape[1], w, sw, fr)
        return _transposed(np.asarray(mx @ _transposed(tmp), dtype=np.float32))
    ix, ox, sx = _keys_matrices(small.shape[1], w)
    rows = _transposed(_keys_rows(ix, ox, sx, _transposed(small), _CLAMP))
    if not _keys_linear_everywhere(rows, h):
        return _decimate(c.full(), sh, sw, fr)
    tmp = np.asarray(_composed_rows("keys", rows.shape[0], h, sh, fr) @ rows, dtype=np.float32)
    return _transposed(_down_rows(_transposed(tmp), sw, fr))


def _pcl_large_median(c: np.ndarray | _Coarse, n: int, median=_two_way_median_fast) -> _Coarse:
    """PCL's median for a window n > 9: decimate by r = n/9, two-way 9x9 median, Keys back."""
    h, w = c.shape
    r = n / _PCL_DIRECT
    fr = max(2, int(1.5 * r))
    small = _decimate(c, max(1, round(h / r)), max(1, round(w / r)), fr)
    return _Coarse(median(small, _PCL_DIRECT), (h, w), "keys")


def _box_shape(h: int, w: int, n: int) -> tuple[int, int]:
    """Size of the image a fast middle layer (window ``n``) takes its 5x5 median of: 1/(n/5)."""
    r = n / 5.0
    return max(1, round(h / r)), max(1, round(w / r))


def _box_median(small: np.ndarray, shape: tuple[int, int]) -> _Coarse:
    """The 5x5 median of a decimated image (from 3 px on), kept small for a layer of ``shape``."""
    if min(small.shape) >= 3:
        small = _median_blur(small, 5)
    return _Coarse(small, shape, "cubic")


def _decimated_box_median(c: np.ndarray | _Coarse, n: int) -> _Coarse:
    """Fast middle layers: area-decimate by n/5, 5x5 box median, bicubic back (OpenCV)."""
    return _box_median(_decimate(c, *_box_shape(*c.shape, n), 0), c.shape)


# --------------------------------------------------------------------------- layers


def _bands(n_rows: int, rows: int) -> list[tuple[int, int]]:
    """Row bands ``(start, end)`` covering ``n_rows``, each at least ``rows`` long (or all of it)."""
    edges = np.linspace(0, n_rows, max(1, n_rows // rows) + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))


def _median_blur(img: np.ndarray, n: int) -> np.ndarray:
    """``cv2.medianBlur(img, n)`` by bands of rows in threads: the same values.

    OpenCV runs its float medians in one thread; each band reads ``n // 2``
    rows of its neighbours (the image's own edges stay OpenCV's replicated ones).
    """
    h = img.shape[0]
    if img.size < _THREAD_MIN_PIXELS:
        return cv2.medianBlur(img, n)
    out = np.empty_like(img)
    r = n // 2

    def band(s: int, e: int) -> None:
        a, b = max(0, s - r), min(h, e + r)
        out[s:e] = cv2.medianBlur(img[a:b], n)[s - a : e - a]

    _in_threads(band, _bands(h, _FRONT_BAND_ROWS * 4))
    return out


def _extended_rows(c: np.ndarray, p: int, strips, a: int, b: int) -> np.ndarray:
    """Rows ``a:b`` of ``_pad_linear(c, p)`` (``strips``: :func:`_linear_strips`), without building it.

    ``p == 0``: rows of ``c`` itself (a view).
    """
    if p == 0:
        return c[a:b]
    top, left, right, bottom = strips
    h, w = c.shape
    out = np.empty((b - a, w + 2 * p), np.float32)
    if a < p:
        out[: min(b, p) - a] = top[a : min(b, p)]
    m0, m1 = max(a, p), min(b, p + h)
    if m1 > m0:
        mid = out[m0 - a : m1 - a]
        mid[:, :p] = left[m0 - p : m1 - p]
        mid[:, p : p + w] = c[m0 - p : m1 - p]
        mid[:, p + w :] = right[m0 - p : m1 - p]
    if b > p + h:
        b0 = max(a, p + h)
        out[b0 - a :] = bottom[b0 - p - h : b - p - h]
    return out


def _first_three_layers(c: np.ndarray, p: int, strips=None) -> _Coarse:
    """Layers 1-3 of :func:`_layer_fast` on ``_pad_linear(c, p)`` (``c`` itself if ``p == 0``).

    The same values as the layer by layer path, in one pass over the image:
    bands of rows of the extension are built, 3x3- and 5x5-median filtered and
    area-decimated along x (layer 3, n = 9) in cache, in threads; then the
    area decimation along y (OpenCV's area resize is separable: the same
    numbers) and layer 3's 5x5 median. The extension and the two median-filtered
    images are never written at full size; the x-decimated one (1/1.8 of the
    width) is. ``strips``: ``_linear_strips(c, p)`` if already at hand.
    """
    if p and strips is None:
        strips = _linear_strips(c, p)
    h, w = c.shape[0] + 2 * p, c.shape[1] + 2 * p
    sh, sw = _box_shape(h, w, layer_window(3))
    across = np.empty((h, sw), np.float32)

    def band(s: int, e: int) -> None:
        a, b = max(0, s - _FRONT_HALO), min(h, e + _FRONT_HALO)
        x = cv2.medianBlur(cv2.medianBlur(_extended_rows(c, p, strips, a, b), 3), 5)
        across[s:e] = cv2.resize(x[s - a : e - a], (sw, e - s), interpolation=cv2.INTER_AREA)

    _in_threads(band, _bands(h, _FRONT_BAND_ROWS))
    return _box_median(cv2.resize(across, (sw, sh), interpolation=cv2.INTER_AREA), (h, w))


def _layer_fast(c: np.ndarray | _Coarse, j: int, exact_from: int) -> np.ndarray | _Coarse:
    n = layer_window(j)
    if n <= 5:
        c = _full(c)
        return _median_blur(c, n) if min(c.shape) >= n else _two_way_median(c, n)
    if j < exact_from:
        return _decimated_box_median(c, n)
    return _pcl_large_median(c, n)


def _layer_reference(c: np.ndarray, j: int) -> np.ndarray:
    n = layer_window(j)
    if n <= _PCL_DIRECT:
        return _two_way_median(c, n)
    return _pcl_large_median(c, n, _two_way_median).full()


BORDERS = ("mirror", "linear")


def _edge_median(band: np.ndarray) -> np.ndarray:
    """Running median of 9 rows of ``band`` (``_EDGE_MEDIAN``), edge rows repeated.

    The same values as ``ndimage.median_filter(band, size=(9, 1), mode="nearest")``
    (a median is one of the values; no NaN here, the no-data is filled), ~10x
    faster: Paeth's 19-exchange median-of-9 network on whole shifted planes.
    """
    k = _EDGE_MEDIAN // 2
    pad = np.pad(band, ((k, k), (0, 0)), mode="edge")
    n = band.shape[0]
    v = [pad[i : i + n] for i in range(_EDGE_MEDIAN)]
    for a, b in _MEDIAN9_NETWORK:
        v[a], v[b] = np.minimum(v[a], v[b]), np.maximum(v[a], v[b])
    return v[k]


def _edge_values(band: np.ndarray) -> np.ndarray:
    """Value at column 0 of each row of ``band`` (rows along an image edge, columns inward).

    Rows are median-smoothed along the edge (9 px), a straight line is fitted
    across the band per row and its intercept smoothed (Gaussian, 4 px).
    """
    b = band.shape[1]
    v = _edge_median(band).astype(np.float64)
    x = np.arange(b, dtype=np.float64)
    xm = x.mean()
    slope = ((v - v.mean(axis=1, keepdims=True)) * (x - xm)).sum(axis=1) / np.sum((x - xm) ** 2)
    edge = v.mean(axis=1) - slope * xm
    return ndimage.gaussian_filter1d(edge, 4.0, mode="nearest")


def _linear_strips(img: np.ndarray, p: int) -> tuple[np.ndarray, ...]:
    """The four strips :func:`_pad_linear` adds: top, left, right, bottom.

    Left and right are ``(h, p)``, top and bottom ``(p, w + 2p)`` (corners
    included): point reflections about smoothed edge values, columns first,
    then the rows of the column-padded image.
    """
    h, w = img.shape
    band = min(16, w)
    left = _edge_values(img[:, :band]).astype(np.float32)
    right = _edge_values(img[:, ::-1][:, :band]).astype(np.float32)
    lstrip = 2 * left[:, None] - img[:, p:0:-1]
    rstrip = 2 * right[:, None] - img[:, w - 1 - p : w - 1][:, ::-1]

    def rows(sl: slice) -> np.ndarray:  # rows of the column-padded image
        return np.hstack([lstrip[sl], img[sl], rstrip[sl]])

    band = min(16, h)
    top = _edge_values(np.ascontiguousarray(rows(np.s_[:band]).T)).astype(np.float32)
    bottom = _edge_values(np.ascontiguousarray(rows(np.s_[h - band :])[::-1].T)).astype(np.float32)
    tstrip = 2 * top[None, :] - rows(np.s_[1 : p + 1])[::-1]
    bstrip = 2 * bottom[None, :] - rows(np.s_[h - 1 - p : h - 1])[::-1]
    return tstrip, lstrip, rstrip, bstrip


def _pad_linear(img: np.ndarray, p: int) -> np.ndarray:
    """Point-reflection padding by ``p`` (< each side - 1): a linear gradient runs on unchanged.

    Columns first (pad = 2 * edge value - mirrored column), then rows of the
    column-padded image, so the corners are consistent (:func:`_linear_strips`).
    """
    h, w = img.shape
    top, left, right, bottom = _linear_strips(img, p)
    out = np.empty((h + 2 * p, w + 2 * p), np.float32)
    out[p : p + h, p : p + w] = img
    out[p : p + h, :p] = left
    out[p : p + h, p + w :] = right
    out[:p] = top
    out[p + h :] = bottom
    return out


def _pad_width(shape: tuple[int, int], n_layers: int) -> int:
    # half the last window: as accurate as a full window on simulated gradients
    # (residual 0.058 vs 0.059 of the gradient), a quarter was worse (0.090)
    return int(max(1, min(2 ** (n_layers - 1), shape[0] - 2, shape[1] - 2)))


def _prepared(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 copy with no-data filled, and the no-data mask (None if there is none)."""
    img = np.ascontiguousarray(image, dtype=np.float32)
    bad, _ = find_no_data(img)  # None, without a full-size mask, on finite non-zero data
    if bad is None or not bad.any():
        return img, None
    if bad.all():
        raise ValueError("the image has no valid pixel")
    return fill_masked(img, bad), bad


def _prepared_with_strips(image: np.ndarray, p: int):
    """``(*_prepared(image), _linear_strips(c, p))``, the two side by side in threads.

    The strips are those of the image as given, computed again from the
    filled image where it has no-data.
    """
    img = np.ascontiguousarray(image, dtype=np.float32)
    done: dict = {}

    def job(name: str) -> None:
        done[name] = _prepared(img) if name == "prepared" else _linear_strips(img, p)

    _in_threads(job, [("prepared",), ("strips",)])
    c, bad = done["prepared"]
    return c, bad, done["strips"] if bad is None else _linear_strips(c, p)


def _per_channel(image: np.ndarray, func, into: bool = False) -> np.ndarray:
    """``func(channel)`` of a (y, x) image or of each channel of a (c, y, x) one.

    ``into``: ``func(channel, out)`` writes into its plane of the result (no
    stacking copy of the channels).
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        return func(arr, None) if into else func(arr)
    if arr.ndim == 3:
        # one channel at a time: two in threads took as long and 6-27 % more CPU (measured)
        if not into:
            return np.stack([func(ch) for ch in arr])
        result = np.empty(arr.shape, np.float32)
        for ch, out in zip(arr, result, strict=True):
            func(ch, out)
        return result
    raise ValueError(f"expected a (y, x) or (c, y, x) image, got shape {arr.shape}")


def _residual_2d(image: np.ndarray, n_layers: int, layer, border: str = "mirror",
                 fused: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """Residual of ``n_layers`` applications of ``layer(c, j)`` (into ``out`` if given).

    ``fused``: layers 1-3 are :func:`_layer_fast`'s, computed by :func:`_first_three_layers`.
    """
    check_mmt_size(image.shape, n_layers)
    if border not in BORDERS:
        raise ValueError(f"unknown border {border!r}; use one of {BORDERS}")
    p = _pad_width(image.shape, n_layers) if border == "linear" else 0
    fused = fused and n_layers >= 3 and min(image.shape) >= layer_window(2)
    c, bad, strips = _prepared_with_strips(image, p) if fused and p else (*_prepared(image), None)
    first = 1
    if fused:
        c, first = _first_three_layers(c, p, strips), 4
    elif p:
        c = _pad_linear(c, p)
    for j in range(first, n_layers + 1):
        c = layer(c, j)
    res = _full(c, p, out)
    if out is None:
        res = np.ascontiguousarray(res, dtype=np.float32)
        res = res if res.flags.writeable else res.copy()
    if bad is not None:
        res[bad] = np.asarray(image, dtype=np.float32)[bad]
    return res


def mmt_residual(image: np.ndarray, n_layers: int = 8, *, exact_from: int = EXACT_FROM,
                 border: str = "mirror") -> np.ndarray:
    """Large-scale residual ``c_J`` of the multiscale median transform (fast hybrid).

    Equivalent to PixInsight's MultiscaleMedianTransform with the first
    ``n_layers`` detail layers disabled and the residual kept.

    Parameters
    ----------
    image : ndarray, (y, x) or (c, y, x)
        The image; colour is transformed per channel.
    n_layers : int
        Number of detail layers removed (window of the last one: ``2**n_layers + 1``).
    exact_from : int
        First layer computed with PCL's exact scheme (decimation by n/9,
        two-way 9x9 median, Keys upsampling); finer layers use the fast
        approximations. ``exact_from=1`` gives the reference for windows > 9.
    border : {"mirror", "linear"}
        ``"mirror"`` (PixInsight): the medians see the image mirrored at its
        edges, which flattens a gradient within about a window of the edges.
        ``"linear"``: the image is first extended by ``2**(n_layers - 1)``
        pixels (at most its size) by point reflection about smoothed edge values, so a
        linear gradient runs on unchanged and the large scales follow it up to
        the edges (MSGR's default). Costs the extra area.

    Returns
    -------
    ndarray, float32, same shape
        No-data pixels (0, NaN, inf) keep their input value.

    Raises
    ------
    MMTSizeError
        If the shorter side is below ``2**n_layers`` pixels.
    """
    def channel(ch: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        return _residual_2d(ch, n_layers, lambda c, j: _layer_fast(c, j, exact_from), border,
                            fused=exact_from > 3, out=out)

    return _per_channel(image, channel, into=True)


def _binned_2d(image: np.ndarray, n_layers: int, k: int, border: str, exact_from: int) -> np.ndarray:
    check_mmt_size(image.shape, n_layers)
    if border not in BORDERS:
        raise ValueError(f"unknown border {border!r}; use one of {BORDERS}")
    shift = int(np.log2(k))
    if k < 1 or 2**shift != k or shift >= n_layers:
        raise ValueError(f"binning must be a power of 2 below 2^n_layers, got {k}")
    c, bad = _prepared(image)
    p = _pad_width(c.shape, n_layers) if border == "linear" else 0
    small = _binned_extended(c, p, k)
    small = _residual_2d(small, n_layers - shift,
                         lambda x, j: _layer_fast(x, j, max(1, exact_from - shift)))
    h, w = c.shape
    # the interior of the upsampled extension: a view (a crop would copy 24 Mpx)
    out = _cropped(cv2.resize(small, (w + 2 * p, h + 2 * p), interpolation=cv2.INTER_LINEAR), p)
    if bad is not None:
        out[bad] = np.asarray(image, dtype=np.float32)[bad]
    return out


def _binned_extended(c: np.ndarray, p: int, k: int) -> np.ndarray:
    """``_pad_linear(c, p)`` area-binned by ``k``; from the strips and ``c`` when the bins align
    (the same block means, without writing the extended image)."""
    def binned(a):
        return cv2.resize(a, (-(-a.shape[1] // k), -(-a.shape[0] // k)),
                          interpolation=cv2.INTER_AREA)

    h, w = c.shape
    if p == 0 or p % k or h % k or w % k:
        return binned(_pad_linear(c, p) if p else c)
    top, left, right, bottom = _linear_strips(c, p)
    return np.vstack([binned(top), np.hstack([binned(left), binned(c), binned(right)]),
                      binned(bottom)])


def mmt_residual_binned(image: np.ndarray, n_layers: int, binning: int, *,
                        exact_from: int = EXACT_FROM, border: str = "mirror") -> np.ndarray:
    """:func:`mmt_residual` of a *smooth* image, computed on ``binning x binning`` bins.

    The no-data fill and the border extension are those of :func:`mmt_residual`
    (full resolution); the extended image is then area-binned, its transform
    removes ``n_layers - log2(binning)`` layers (the same windows in full
    pixels, PCL's exact scheme from the same scale on) and the residual comes
    back by bilinear interpolation. On an image without structure below
    ``16 x binning`` px (MSGR's raw model) this is the full transform to ~1e-4
    of its range, at a fraction of the cost (docs/msgr.md, "Speed").

    Parameters
    ----------
    image : ndarray, (y, x) or (c, y, x)
    n_layers : int
        Layers removed, as in :func:`mmt_residual`.
    binning : int
        A power of 2 below ``2**n_layers`` (1: the full-resolution transform).
    exact_from, border
        As in :func:`mmt_residual`.
    """
    if binning == 1:
        return mmt_residual(image, n_layers, exact_from=exact_from, border=border)
    return _per_channel(image, lambda ch: _binned_2d(ch, n_layers, binning, border, exact_from))


def mmt_residual_reference(image: np.ndarray, n_layers: int = 8, *,
                           border: str = "mirror") -> np.ndarray:
    """Slow, straightforward PCL port of the MMT residual (for checking :func:`mmt_residual`).

    Two-way structures at full resolution for windows 3, 5 and 9
    (``scipy.ndimage.median_filter``), PCL's decimated scheme for larger windows.
    About 3 s per Mpx; use it on small images.
    """
    return _per_channel(image, lambda ch: _residual_2d(ch, n_layers, _layer_reference, border))


@dataclass
class MMTDecomposition:
    """Detail layers and residual of a multiscale median transform.

    Attributes
    ----------
    layers : list of ndarray
        ``layers[j-1]`` is the detail layer ``w_j`` (window ``windows[j-1]``),
        same shape as the input; 0 on no-data pixels.
    residual : ndarray
        The large-scale residual ``c_J``; no-data pixels hold the input's value,
        so ``sum(layers) + residual`` gives the input back (to float32 rounding).
    windows : tuple of int
        The median window of each layer.
    no_data : ndarray of bool or None
        The input's no-data pixels, if any.
    """

    layers: list[np.ndarray]
    residual: np.ndarray
    windows: tuple[int, ...]
    no_data: np.ndarray | None = None

    def reconstruct(self) -> np.ndarray:
        """``sum(layers) + residual`` in float64, returned as float32."""
        total = self.residual.astype(np.float64)
        for w in self.layers:
            total += w
        return total.astype(np.float32)

    def large_scales(self, n_removed: int) -> np.ndarray:
        """The image without its first ``n_removed`` layers (``c_{n_removed}``)."""
        total = self.residual.astype(np.float64)
        for w in self.layers[n_removed:]:
            total += w
        return total.astype(np.float32)


def mmt_decompose(image: np.ndarray, n_layers: int = 8, *, exact_from: int = EXACT_FROM,
                  border: str = "mirror") -> MMTDecomposition:
    """Multiscale median decomposition of a 2-D image into ``n_layers`` layers and a residual.

    Same computation as :func:`mmt_residual` (the same ``border`` handling, so
    ``decomposition.residual`` equals ``mmt_residual(image, n_layers,
    border=border)``), keeping every layer (``n_layers`` + 1 images of the
    input's size in memory).

    Parameters
    ----------
    image : ndarray, (y, x)
        A single channel.
    n_layers : int
        Number of detail layers.
    exact_from : int
        See :func:`mmt_residual`.
    border : {"mirror", "linear"}
        See :func:`mmt_residual`; MSGR uses ``"linear"``.

    Returns
    -------
    MMTDecomposition
    """
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"mmt_decompose needs a single channel (y, x), got shape {img.shape}")
    check_mmt_size(img.shape, n_layers)
    if border not in BORDERS:
        raise ValueError(f"unknown border {border!r}; use one of {BORDERS}")
    c, bad = _prepared(img)
    p = _pad_width(c.shape, n_layers) if border == "linear" else 0
    if p:
        c = _pad_linear(c, p)
    layers = []
    prev = _full(c, p)
    for j in range(1, n_layers + 1):
        c = _layer_fast(c, j, exact_from)
        nxt = _full(c, p)
        w = np.subtract(prev, nxt, dtype=np.float32)
        if bad is not None:
            w[bad] = 0
        layers.append(w)
        prev = nxt
    residual = np.array(prev, dtype=np.float32)
    if bad is not None:
        residual[bad] = np.asarray(img, dtype=np.float32)[bad]
    return MMTDecomposition(layers=layers, residual=residual,
                            windows=tuple(layer_window(j) for j in range(1, n_layers + 1)),
                            no_data=bad)
