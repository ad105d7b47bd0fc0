"""Separable Lanczos resampling of near-rigid maps: three 1-D shear passes.

Frames of one camera map onto each other by a rotation and a shift (and a fitted
homography that departs from that by thousandths of a pixel). Such a map is
applied here without a 2-D kernel (OpenCV's Lanczos-4: 8 x 8 = 64 taps per
pixel, scalar code):

1. a rotation by a multiple of 90 degrees (exact: a copy), leaving at most 45;
2. the rest, ``M = Ux(a) Ly(b) Ux(c)`` (an x-shear, a y-shear, an x-shear: Paeth's
   three-shear rotation, Unser et al. 1995), each shear a pass of 1-D
   interpolation in which every row (or column) moves by one shift, so one
   kernel of ``2 * LANCZOS_A`` taps serves a whole row (OpenCV's ``filter2D``);
   the y pass runs on the transposed image.

A map that a shift alone applies within the tolerance (no rotation left after
the quarter turn: frames of a well-aligned mount, a meridian flip) is one
separable 2-D filter of the two 8-tap kernels and a crop (:func:`warp_shift`: no
transposes, no third pass, the floor by the same crop: 0.16 instead of 0.40
CPU-s for 6000x4000); a rotation interpolates x twice. Results go to arrays kept
per thread and handed out again once nothing references them
(:func:`output_array`: no page faults of a fresh frame per frame). The
plan (:func:`shear_plan`) is made only when the affine map it applies stays
within :data:`MAX_DEVIATION` px of the fitted map over the whole output (scale
and perspective of frames of one camera); otherwise the caller uses its 2-D
warp. Measured quality and speed: ``docs/register.md``.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass

import cv2
import numpy as np

from .transforms import apply_homography

__all__ = [
    "LANCZOS_A",
    "MAX_DEVIATION",
    "ShearPlan",
    "lanczos_taps",
    "output_array",
    "prepare_work_arrays",
    "release_shear_scratch",
    "results_size",
    "shear_plan",
    "warp_shears",
    "warp_shift",
    "work_array",
]

#: Lanczos kernel order of each pass (2a taps, support +-a px).
LANCZOS_A = 4
#: Largest distance (px) allowed between the applied affine map and the fitted one
#: anywhere on the output (OpenCV's warps quantise positions to 1/32 px: up to 0.016 px).
MAX_DEVIATION = 0.01
#: Shear factors beyond this (an ill-conditioned decomposition) use the rotation's own.
MAX_SHEAR = 1.0
#: Points per side of the output grid on which the deviation is checked.
CHECK_POINTS = 17
_QUARTER_CODES = {1: cv2.ROTATE_90_COUNTERCLOCKWISE, 2: cv2.ROTATE_180,
                  3: cv2.ROTATE_90_CLOCKWISE}


@dataclass(frozen=True)
class ShearPlan:
    """Output pixel ``p`` -> source pixel ``E (L p + t)``, ``L = Ux(a) Ly(b) Ux(c)``.

    Attributes
    ----------
    quarter : int
        ``np.rot90(source, quarter)`` is the image the shears read (``E`` maps its
        pixels back to the source's).
    a, b, c : float
        The shears.
    t : (float, float)
        The shift, in the turned image's pixels.
    affine : ndarray (2, 3)
        The whole applied map, output -> source pixels.
    deviation : float
        Largest distance from the fitted map on the checked grid (px).
    """

    quarter: int
    a: float
    b: float
    c: float
    t: tuple
    affine: np.ndarray
    deviation: float

    @property
    def is_shift(self) -> bool:
        """No shear (a quarter turn and a shift): one separable 2-D filter, no transposes."""
        return self.a == 0.0 and self.b == 0.0 and self.c == 0.0


def lanczos_taps(phase: np.ndarray, a: int = LANCZOS_A) -> np.ndarray:
    """Normalised Lanczos weights ``(n, 1, 2a)`` (float32) of taps ``k-a+1 .. k+a`` for
    sample points ``k + phase``, ``0 <= phase < 1``."""
    j = np.arange(-a + 1, a + 1, dtype=float)
    x = j[None, :] - np.asarray(phase, float)[:, None]
    w = np.sinc(x) * np.sinc(x / a)
    w /= w.sum(axis=1, keepdims=True)
    return w.astype(np.float32)[:, None, :]


def _quarter_turn(k: int, shape: tuple[int, int]) -> np.ndarray:
    """3x3 ``E``: pixel ``p`` of ``np.rot90(image, k)`` is pixel ``E p`` of ``image``."""
    h, w = shape
    return {0: np.eye(3),
            1: np.array([[0.0, -1, w - 1], [1, 0, 0], [0, 0, 1]]),
            2: np.array([[-1.0, 0, w - 1], [0, -1, h - 1], [0, 0, 1]]),
            3: np.array([[0.0, 1, 0], [-1, 0, h - 1], [0, 0, 1]])}[k]


def _grid(shape: tuple[int, int], n: int = CHECK_POINTS) -> np.ndarray:
    h, w = shape
    gx, gy = np.meshgrid(np.linspace(0, w - 1, n), np.linspace(0, h - 1, n))
    return np.column_stack([gx.ravel(), gy.ravel()])


def _shears(m: np.ndarray) -> tuple[float, float, float]:
    """``(a, b, c)`` with ``Ux(a) Ly(b) Ux(c)`` = ``m`` (det 1) when well conditioned, else
    those of ``m``'s rotation (Paeth: ``-tan(theta/2), sin(theta), -tan(theta/2)``)."""
    b = m[1, 0]
    if abs(b) > 1e-12:
        a, c = (m[0, 0] - 1) / b, (m[1, 1] - 1) / b
        if max(abs(a), abs(c)) <= MAX_SHEAR:
            return float(a), float(b), float(c)
    theta = np.arctan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1])
    return float(-np.tan(theta / 2)), float(np.sin(theta)), float(-np.tan(theta / 2))


def _linear(a: float, b: float, c: float) -> np.ndarray:
    ux = np.array([[1.0, a], [0, 1]])
    return ux @ np.array([[1.0, 0], [b, 1]]) @ np.array([[1.0, c], [0, 1]])


def shear_plan(h: np.ndarray, shape: tuple[int, int], source_shape: tuple[int, int],
               tol: float = MAX_DEVIATION) -> ShearPlan | None:
    """The shear passes that apply homography ``h`` (output -> source pixels) within ``tol``
    px everywhere on an output of ``shape``; None for maps they cannot (mirrored, scaled,
    perspective beyond ``tol``).
    """
    pts = _grid(shape)
    target = apply_homography(h, pts)
    centre = np.array([(shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0])
    design = np.column_stack([pts, np.ones(len(pts))])
    fit = np.linalg.lstsq(design, target, rcond=None)[0].T  # (2, 3) affine, least squares
    if np.linalg.det(fit[:, :2]) <= 0:
        return None
    for k in range(4):
        e = _quarter_turn(k, source_shape)
        turned = np.linalg.inv(e) @ np.vstack([fit, [0, 0, 1]])
        m = turned[:2, :2]
        if m[0, 0] + m[1, 1] > 0 and abs(m[1, 0] - m[0, 1]) <= (m[0, 0] + m[1, 1]):
            break  # the rotation left is within +-45 degrees
    # a shift alone where it is within tol (no rotation left: frames of a good mount), else
    # the three shears
    for a, b, c in ((0.0, 0.0, 0.0), _shears(m / np.sqrt(np.linalg.det(m)))):
        lin = _linear(a, b, c)  # the scale (~1) is left out
        t = turned[:2, :2] @ centre + turned[:2, 2] - lin @ centre  # exact at the centre
        applied = (e @ np.vstack([np.column_stack([lin, t]), [0, 0, 1]]))[:2]
        deviation = float(np.max(np.hypot(*(pts @ applied[:, :2].T + applied[:, 2]
                                            - target).T)))
        if np.isfinite(deviation) and deviation <= tol:
            return ShearPlan(quarter=k, a=a, b=b, c=c, t=(float(t[0]), float(t[1])),
                             affine=applied, deviation=deviation)
    return None


_SCRATCH = threading.local()
#: Work arrays are made this much larger than asked: the next frame's (another rotation) fits.
SCRATCH_SPARE = 1.15
#: Pixels of the work arrays made ahead (:func:`prepare_work_arrays`) per pixel of the frame.
WARM_ROOM = 1.1


def _scratch(name: str, size: int) -> np.ndarray:
    """A flat float32 work array of this thread, kept between calls (contents undefined)."""
    store = _SCRATCH.__dict__
    arr = store.get(name)
    if arr is None or arr.size < size:
        store[name] = None
        arr = store[name] = np.empty(int(size * SCRATCH_SPARE), np.float32)
    return arr[:size]


_OUTPUTS = threading.local()
#: Output arrays of this thread kept for reuse (three frames are in flight in a pipeline).
OUTPUTS_KEPT = 3
#: ``sys.getrefcount(pool[k])`` of a kept output that nothing else holds: the pool's
#: reference and the argument's.
_FREE_REFS = 2


def output_array(size: int) -> np.ndarray:
    """A flat float32 array of ``size`` for results (of :func:`warp_shears`,
    :func:`warp_shift`): a kept one that nothing else references any more (neither it nor a
    view of it), else a new one (kept in its turn).

    A fresh frame-sized array costs its page faults (0.01-0.05 CPU-s for 6000x4000, more
    with two threads faulting); a batch drops each frame's result once it is written.
    """
    pool = _OUTPUTS.__dict__.setdefault("pool", [])
    for k in range(len(pool)):
        if pool[k].size == size and sys.getrefcount(pool[k]) == _FREE_REFS:
            return pool[k]
    pool.append(np.empty(size, np.float32))
    del pool[:-OUTPUTS_KEPT]
    return pool[-1]


def work_array(name: str, shape: tuple[int, int]) -> np.ndarray:
    """Kept float32 work array ``name`` ("a" or "b") of :func:`warp_shears`, free for other
    use between its calls (fewer fresh frame-sized arrays: page faults, peak memory)."""
    return _scratch(name, int(np.prod(shape))).reshape(shape)


def results_size(planes: int, shape: tuple[int, int], a: int = LANCZOS_A) -> int:
    """Pixels of the flat array that takes ``planes`` results of ``shape`` in turn (the last
    row's spill included)."""
    return planes * shape[0] * shape[1] + 2 * a


def prepare_work_arrays(shape: tuple[int, int], room: float = WARM_ROOM, *, planes: int = 1,
                        outputs: int = 0) -> None:
    """Make and touch this thread's work arrays for frames of ``shape`` (``room`` times its
    pixels: rotations of a few degrees fit), and ``outputs`` kept result arrays for frames of
    ``planes`` planes (:func:`results_size`), so that the first frames do not pay their page
    faults (0.3-0.5 s of system time for the two work arrays of 6000x4000 on this machine)
    while they wait."""
    size = int(room * shape[0] * shape[1])
    for name in ("a", "b"):
        _scratch(name, size).fill(0.0)
    pool = _OUTPUTS.__dict__.setdefault("pool", [])
    size = results_size(planes, shape)
    for _ in range(min(outputs, OUTPUTS_KEPT) - sum(buf.size == size for buf in pool)):
        pool.append(np.empty(size, np.float32))
        pool[-1].fill(0.0)
    del pool[:-OUTPUTS_KEPT]


def release_shear_scratch() -> None:
    """Free this thread's work arrays of :func:`warp_shears` and its kept outputs."""
    _SCRATCH.__dict__.clear()
    _OUTPUTS.__dict__.clear()


#: Threads sharing the rows of a pass (OpenCV releases the GIL).
PASS_THREADS = 2


def _in_threads(run, n: int) -> None:
    """``run(first, stop)`` over ``range(n)`` cut in :data:`PASS_THREADS` runs of rows."""
    cuts = np.linspace(0, n, PASS_THREADS + 1).astype(int)
    if PASS_THREADS < 2 or n < 64:
        run(0, n)
        return
    workers = [threading.Thread(target=run, args=(int(cuts[j]), int(cuts[j + 1])))
               for j in range(PASS_THREADS)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()


def _reach(shifts: np.ndarray, width: int, a: int, columns: int) -> int:
    """Columns by which a source of ``columns`` must be padded for :func:`_xpass`."""
    lo = np.floor(shifts).astype(np.int64) - a + 1
    return int(max(0, -lo.min(), (lo + width + 2 * a - 1).max() - columns))


def _xpass(src: np.ndarray, rows: np.ndarray, shifts: np.ndarray, width: int, a: int,
           flat: np.ndarray) -> np.ndarray:
    """``out[i, x] = src[rows[i], x + shifts[i]]``, Lanczos-``a`` along x; the source's
    edge rows replicated (its columns must reach: :func:`_reach` is 0). ``flat`` holds
    the (contiguous) result."""
    n = len(rows)
    span = width + 2 * a - 1  # filter2D writes the whole span; rows overlap in ``flat``
    k = np.floor(shifts).astype(np.int64)
    taps = lanczos_taps(shifts - k, a)
    lo = k - a + 1
    if _reach(shifts, width, a, src.shape[1]):
        raise ValueError("the source does not reach the pass's columns")
    rows = np.clip(rows, 0, src.shape[0] - 1)

    def run(first: int, stop: int) -> None:
        for i in range(first, stop):  # in order: row i's spill is overwritten by row i + 1
            dst = flat[i * width:i * width + span]
            if i == stop - 1 and stop < n:  # the next row is another thread's: no spill
                dst = np.empty(span, np.float32)
            cv2.filter2D(src[rows[i], lo[i]:lo[i] + span][None], -1, taps[i], dst=dst[None],
                         anchor=(0, 0), borderType=cv2.BORDER_REPLICATE)  # (the fast border)
            if i == stop - 1 and stop < n:
                flat[i * width:(i + 1) * width] = dst[:width]

    _in_threads(run, n)
    return flat[:n * width].reshape(n, width)


def _padded_source(plane: np.ndarray, quarter: int, pad: int) -> np.ndarray:
    """``np.rot90(plane, quarter)`` with ``pad`` replicated columns each side (kept array)."""
    h, w = plane.shape if quarter % 2 == 0 else plane.shape[::-1]
    out = _scratch("a", h * (w + 2 * pad)).reshape(h, w + 2 * pad)
    if quarter == 0:
        return cv2.copyMakeBorder(plane, 0, 0, pad, pad, cv2.BORDER_REPLICATE, dst=out)
    cv2.rotate(plane, _QUARTER_CODES[quarter], dst=out[:, pad:pad + w])
    out[:, :pad] = out[:, pad:pad + 1]
    out[:, pad + w:] = out[:, pad + w - 1:pad + w]
    return out


def _shift_source(plane: np.ndarray, quarter: int) -> np.ndarray:
    """``np.rot90(plane, quarter)`` with one replicated pixel each side (kept array "a"): the
    sample points on the frame's pixel area read pixels -1 .. n-1."""
    h, w = plane.shape if quarter % 2 == 0 else plane.shape[::-1]
    out = _scratch("a", (h + 2) * (w + 2)).reshape(h + 2, w + 2)
    if quarter == 0:
        return cv2.copyMakeBorder(plane, 1, 1, 1, 1, cv2.BORDER_REPLICATE, dst=out)
    cv2.rotate(plane, _QUARTER_CODES[quarter], dst=out[1:-1, 1:-1])
    out[1:-1, 0] = out[1:-1, 1]
    out[1:-1, -1] = out[1:-1, -2]
    out[0] = out[1]
    out[-1] = out[-2]
    return out


def _overlap(offset: int, n: int, size: int) -> tuple[slice, slice]:
    """Output indices ``i`` in ``[0, n)`` with ``i + offset`` in ``[0, size)``, and those."""
    first, stop = max(0, -offset), min(n, size - offset)
    stop = max(stop, first)
    return slice(first, stop), slice(first + offset, stop + offset)


def _banded(run, rows: slice) -> None:
    """``run(band)`` over the rows of ``rows`` in :data:`PASS_THREADS` bands (numpy and
    OpenCV release the GIL on these full-row operations)."""
    _in_threads(lambda i, j: run(slice(rows.start + i, rows.start + j)),
                rows.stop - rows.start)


def warp_shift(plane: np.ndarray, plan: ShearPlan, shape: tuple[int, int],
               floor: tuple[int, int] | None = None, a: int = LANCZOS_A,
               out: np.ndarray | None = None) -> np.ndarray:
    """``plane`` (float32, finite) resampled through a shift plan (:attr:`ShearPlan.is_shift`:
    a quarter turn and a shift) onto ``shape``: in the first pixels of flat float32 ``out``
    (default: a new array).

    One separable Lanczos filter of the (turned) plane, both kernels of ``2 a`` taps at the
    exact phase of the shift, then a crop: the values of the shear passes without their
    transposes and third pass. ``floor = (size, anchor)``: no sample below the darkest of the
    ``size`` x ``size`` pixels around its pixel (the erosion at ``anchor``, as the clamp of
    :func:`~.frames.resample`). Sample points off the plane read its replicated edge pixels,
    the output outside the plane's reach is 0 (the caller masks what is off the frame).
    """
    src = _shift_source(np.ascontiguousarray(plane, dtype=np.float32), plan.quarter)
    tx, ty = plan.t
    kx, ky = int(np.floor(tx)), int(np.floor(ty))
    taps_x = lanczos_taps(np.array([tx - kx]), a)[0, 0]
    taps_y = lanczos_taps(np.array([ty - ky]), a)[0, 0]
    work = _scratch("b", src.size).reshape(src.shape)
    cv2.sepFilter2D(src, -1, taps_x, taps_y, dst=work, anchor=(a - 1, a - 1),
                    borderType=cv2.BORDER_REPLICATE)
    rows_out, rows_in = _overlap(ky + 1, shape[0], src.shape[0])  # +1: the padding
    cols_out, cols_in = _overlap(kx + 1, shape[1], src.shape[1])
    size = shape[0] * shape[1]
    out = (output_array(size) if out is None else out[:size]).reshape(shape)
    out[:rows_out.start] = 0
    out[rows_out.stop:] = 0
    out[:, :cols_out.start] = 0
    out[:, cols_out.stop:] = 0
    shift = rows_in.start - rows_out.start

    def copy(band: slice) -> None:
        out[band, cols_out] = work[band.start + shift:band.stop + shift, cols_in]

    _banded(copy, rows_out)
    if floor is not None:
        size, anchor = floor
        lo = cv2.erode(src, np.ones((size, size), np.uint8), dst=work, anchor=(anchor, anchor),
                       borderType=cv2.BORDER_REPLICATE)

        def clamp(band: slice) -> None:
            view = out[band, cols_out]
            np.fmax(view, lo[band.start + shift:band.stop + shift, cols_in], out=view)

        _banded(clamp, rows_out)
    return out


def _transposed(img: np.ndarray, name: str) -> np.ndarray:
    """``img.T`` in kept array ``name``, bands of its rows in :data:`PASS_THREADS` threads
    (OpenCV's transpose runs on one core)."""
    out = _scratch(name, img.size).reshape(img.shape[1], img.shape[0])

    def run(band: slice) -> None:
        cv2.transpose(img[:, band], dst=out[band])

    _banded(run, slice(0, out.shape[0]))
    return out


def warp_shears(plane: np.ndarray, plan: ShearPlan, shape: tuple[int, int],
                a: int = LANCZOS_A, out: np.ndarray | None = None) -> np.ndarray:
    """``plane`` (float32, finite) resampled through ``plan`` onto ``shape``: in the first
    pixels of flat float32 ``out`` (default: a new array), which must hold ``2 a`` more
    (the last row's spill).

    Sample points off the plane read its replicated edge pixels (the caller masks them).
    """
    h, w = shape
    plane = np.ascontiguousarray(plane, dtype=np.float32)
    pa, pb, pc = plan.a, plan.b, plan.c
    tx, ty = plan.t
    reach = a + 1
    cy = pc * np.array([0.0, h - 1])
    x0 = int(np.floor(cy.min())) - reach
    x1 = int(np.ceil(w - 1 + cy.max())) + reach + 1
    by = pb * np.array([x0, x1 - 1.0]) + ty
    y0 = int(np.floor(by.min())) - reach
    y1 = int(np.ceil(h - 1 + by.max())) + reach + 1
    nx, ny = x1 - x0, y1 - y0
    qy = np.arange(y0, y1)
    shifts = x0 + pa * qy + tx - pa * ty
    pad = _reach(shifts, nx, a, plane.shape[1 if plan.quarter % 2 == 0 else 0])
    src = _padded_source(plane, plan.quarter, pad)
    # two kept arrays, used in turn: each pass's input is dead once it has run
    g1 = _xpass(src, qy, shifts + pad, nx, a, _scratch("b", ny * nx + 2 * a))
    g1t = _transposed(g1, "a")
    rx = np.arange(x0, x1)
    g2t = _xpass(g1t, np.arange(nx), pb * rx + ty - y0, h, a, _scratch("b", nx * h + 2 * a))
    g2 = _transposed(g2t, "a")
    yy = np.arange(h)
    flat = output_array(h * w + 2 * a) if out is None else out
    return _xpass(g2, yy, pc * yy - x0, w, a, flat)
