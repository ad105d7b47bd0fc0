"""The grid of gradient samples: robust statistics of ``target*scale - reference``.

NSG takes the median of each square in the reference and in the target and
subtracts them. Here each sample is a robust mean of the per-pixel difference
``scale*target - reference`` inside the square: stars, galaxies and nebulae
are the same in both frames and cancel pixel by pixel, so only the noise and
the relative gradient are left; the statistic is a mean clipped at 3 sigma
(sigma from the square's own interquartile range) around the median, which
is nearly as precise as a mean and as robust as a median.

Squares with 1 % or more no-data pixels in either frame are dropped (NSG), and
so are squares near bright reference stars: each of the brightest stars has a
rejection circle of radius ``star radius + aperture_add + growth * flux``
(NSG section 8.2). On large frames the statistics use a regular subset of
each square's pixels (at most about 32 x 32), which keeps the cost small and
the sample noise far below the pixel noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..nodata import no_data_mask, with_nan_no_data
from ..threads import available_threads, in_two_threads

MAX_NO_DATA_FRACTION = 0.01


def _as_is(plane: np.ndarray) -> np.ndarray:
    return plane

MAX_SUBSET_SIDE = 32
MIN_FREE_FRACTION = 0.2  # a bin needs this share of star-free pixels


@dataclass
class SampleGrid:
    """Square bins over the frame, with what the reference contributes.

    Attributes
    ----------
    size : int
        Side of a bin in px.
    x0, y0 : int
        Top-left corner of the first bin (the grid is centred).
    nx, ny : int
        Number of bins across and down.
    stride : int
        Subset stride inside a bin (1 = every pixel).
    rows, cols : ndarray of int
        Subset pixel rows (``ny*m``) and columns (``nx*m``), ``m`` per bin.
    ref_values : ndarray (c, nbins, m*m) float32
        The reference's subset pixels, NaN where it has no data.
    ref_ok : ndarray of bool (nbins,)
        Bins where the reference has under 1 % no-data pixels.
    star_rejected : ndarray of bool (nbins,)
        Bins inside a rejection circle.
    star_pixels : ndarray of bool (nbins, m*m) or None
        Subset pixels on a reference star (left out of the statistics).
    """

    size: int
    x0: int
    y0: int
    nx: int
    ny: int
    stride: int
    rows: np.ndarray
    cols: np.ndarray
    ref_values: np.ndarray
    ref_ok: np.ndarray
    star_rejected: np.ndarray
    star_pixels: np.ndarray | None = None

    @property
    def n_bins(self) -> int:
        return self.nx * self.ny

    @property
    def per_side(self) -> int:
        return len(self.rows) // self.ny

    @property
    def centers(self) -> tuple[np.ndarray, np.ndarray]:
        """Bin centres ``(x, y)`` in pixel coordinates (pixel centres on integers)."""
        ix = np.arange(self.nx)
        iy = np.arange(self.ny)
        cx = self.x0 + ix * self.size + (self.size - 1) / 2.0
        cy = self.y0 + iy * self.size + (self.size - 1) / 2.0
        gx, gy = np.meshgrid(cx, cy)
        return gx.ravel(), gy.ravel()

    @property
    def indices(self) -> tuple[np.ndarray, np.ndarray]:
        """Bin column and row index ``(ix, iy)`` of every bin."""
        gx, gy = np.meshgrid(np.arange(self.nx), np.arange(self.ny))
        return gx.ravel(), gy.ravel()

    @property
    def usable(self) -> np.ndarray:
        """Bins the reference allows: enough data and no bright star."""
        return self.ref_ok & ~self.star_rejected

    def gather(self, plane: np.ndarray) -> np.ndarray:
        """The subset pixels of one 2-D plane as ``(nbins, m*m)``, as they are."""
        m = self.per_side
        plane = np.asarray(plane)
        if m == 0:
            return np.empty((self.n_bins, 0), plane.dtype)
        # the subset is a lattice (``size`` apart, ``stride`` inside a bin): one strided
        # view in bin order, copied once (no index gather, no second copy; 3x faster)
        rs, cs = plane.strides
        view = np.lib.stride_tricks.as_strided(
            plane[self.rows[0]:, self.cols[0]:], (self.ny, self.nx, m, m),
            (self.size * rs, self.size * cs, self.stride * rs, self.stride * cs), writeable=False)
        return np.ascontiguousarray(view).reshape(self.n_bins, m * m)

    def subset(self, data: np.ndarray, *, marked: bool = False) -> np.ndarray:
        """The subset pixels of ``data`` (c, y, x) as ``(c, nbins, m*m)`` float32,
        NaN where there is no data (``marked``: no-data is already NaN in ``data``)."""
        data = data[np.newaxis] if data.ndim == 2 else data
        nan_at_no_data = _as_is if marked else with_nan_no_data
        out = np.stack([self.gather(nan_at_no_data(data[c])) for c in range(data.shape[0])])
        out = out.astype(np.float32, copy=False)
        out[~np.isfinite(out)] = np.nan
        return out


def make_sample_grid(
    reference: np.ndarray,
    size: int,
    *,
    star_x: np.ndarray = np.zeros(0),
    star_y: np.ndarray = np.zeros(0),
    star_radius: np.ndarray = np.zeros(0),
    star_mask: np.ndarray | None = None,
    max_subset_side: int = MAX_SUBSET_SIDE,
) -> SampleGrid:
    """Lay the sample grid over the reference.

    Parameters
    ----------
    reference : ndarray
        ``(y, x)`` or ``(c, y, x)``.
    size : int
        Bin side in px.
    star_x, star_y, star_radius : ndarray
        Rejection circles (the brightest reference stars).
    star_mask : ndarray of bool (y, x), optional
        Pixels covered by stars (:func:`star_pixel_mask`): left out of the
        statistics; a bin with less than ``MIN_FREE_FRACTION`` of its pixels
        free of stars is dropped.
    max_subset_side : int
        At most this many subset pixels per bin side.
    """
    ref = reference[np.newaxis] if reference.ndim == 2 else reference
    _, h, w = ref.shape
    size = int(size)
    nx, ny = w // size, h // size
    if nx < 1 or ny < 1:
        raise ValueError(f"sample size {size} px does not fit in a {w}x{h} frame")
    x0, y0 = int(round((w % size) / 2)), int(round((h % size) / 2))
    stride = max(1, int(np.ceil(size / max_subset_side)))
    m = len(range(stride // 2, size, stride))
    inner = stride // 2 + stride * np.arange(m)
    rows = (y0 + size * np.arange(ny))[:, None] + inner[None, :]
    cols = (x0 + size * np.arange(nx))[:, None] + inner[None, :]
    grid = SampleGrid(size, x0, y0, nx, ny, stride, rows.ravel(), cols.ravel(),
                      np.zeros(0, np.float32), np.ones(nx * ny, bool), np.zeros(nx * ny, bool))
    grid.ref_values = grid.subset(ref)
    nodata = np.isnan(grid.ref_values).mean(axis=2)  # (c, nbins)
    grid.ref_ok = np.all(nodata < MAX_NO_DATA_FRACTION, axis=0)
    grid.star_rejected = star_rejection(grid, star_x, star_y, star_radius)
    if star_mask is not None:
        grid.star_pixels = grid.gather(star_mask).astype(bool)
        grid.star_rejected |= (1.0 - grid.star_pixels.mean(axis=1)) < MIN_FREE_FRACTION
    return grid


def star_pixel_mask(image: np.ndarray, fwhm: float, *, k: float = 3.0) -> np.ndarray:
    """Pixels covered by stars (compact sources) in a 2-D image.

    A difference of Gaussians (the stars' own size minus four times that)
    keeps compact sources and drops the sky, its gradients and extended
    nebulae (which cancel in the difference of the frames anyway); it is
    thresholded at ``k`` robust sigmas and grown by one FWHM.

    Parameters
    ----------
    image : ndarray (y, x)
        The reference intensity; 0/NaN = no data (never masked here).
    fwhm : float
        Star FWHM in px.
    k : float
        Threshold in sigmas of the filtered noise.

    Returns
    -------
    ndarray of bool (y, x)
    """
    import cv2

    img = np.ascontiguousarray(image, dtype=np.float32)
    bad = no_data_mask(img)
    work = img
    if bad.any():
        work = img.copy()
        work[bad] = np.median(img[~bad])
    sigma = max(fwhm, 1.0) / 2.3548
    dog = cv2.GaussianBlur(work, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    dog -= cv2.GaussianBlur(work, (0, 0), 4.0 * sigma, borderType=cv2.BORDER_REFLECT)
    step = max(1, int(np.sqrt(dog.size / 1_000_000)))
    sample = dog[::step, ::step][~bad[::step, ::step]]
    med = float(np.median(sample))
    noise = 1.4826 * float(np.median(np.abs(sample - med)))
    mask = ((dog - med) > k * noise) & ~bad
    r = max(1, int(np.ceil(fwhm)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.dilate(mask.view(np.uint8), kernel).view(bool)


def star_rejection(grid: SampleGrid, x, y, radius) -> np.ndarray:
    """Bins removed by rejection circles (NSG section 8.2).

    A bin goes if its centre is closer than ``R + size/2`` to the star, or if it
    is in the star's own bin column (row) and within ``R + size/2`` of it
    along the row (column).
    """
    cx, cy = grid.centers
    out = np.zeros(grid.n_bins, bool)
    half = grid.size / 2.0
    for sx, sy, r in zip(np.asarray(x, float), np.asarray(y, float), np.asarray(radius, float)):
        if not (np.isfinite(sx) and np.isfinite(sy) and np.isfinite(r)):
            continue
        dx = np.abs(cx - sx)
        dy = np.abs(cy - sy)
        reach = r + half
        out |= dx * dx + dy * dy < reach * reach
        out |= (dx <= half) & (dy < reach)
        out |= (dy <= half) & (dx < reach)
    return out


@dataclass
class Samples:
    """Gradient samples of one target.

    Attributes
    ----------
    x, y : ndarray (n,)
        Sample positions (bin centres, px).
    ix, iy : ndarray of int (n,)
        Bin indices (for binning into super-samples).
    values : ndarray (n, c)
        Robust mean of ``scale*target - reference`` in each bin.
    sigma : ndarray (n, c)
        Robust pixel sigma of the difference in each bin.
    weight : ndarray (n,)
        1 per bin (super-samples carry their member count).
    n_rejected_stars : int
        Bins removed by star rejection circles.
    n_no_data : int
        Bins removed for no-data pixels (either frame).
    """

    x: np.ndarray
    y: np.ndarray
    ix: np.ndarray
    iy: np.ndarray
    values: np.ndarray
    sigma: np.ndarray
    weight: np.ndarray
    n_rejected_stars: int = 0
    n_no_data: int = 0

    def __len__(self) -> int:
        return len(self.x)


def robust_rows(values: np.ndarray, clip: float = 3.0):
    """Per-row clipped mean, median and robust sigma of ``values`` (..., k), NaN = missing.

    The mean is taken over values within ``clip`` sigmas of the median, sigma
    being the interquartile range / 1.349.

    Returns
    -------
    (mean, median, sigma, count)
    """
    s = np.sort(values, axis=-1)  # NaN last
    n = np.sum(np.isfinite(s), axis=-1)
    nn = np.maximum(n, 1)

    def q(frac):
        pos = frac * (nn - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, nn - 1)
        t = pos - lo
        a = np.take_along_axis(s, lo[..., None], axis=-1)[..., 0]
        b = np.take_along_axis(s, hi[..., None], axis=-1)[..., 0]
        return a + (b - a) * t

    med = q(0.5)
    sig = (q(0.75) - q(0.25)) / 1.349
    lim = clip * np.maximum(sig, 1e-30)
    inside = np.abs(values - med[..., None]) <= lim[..., None]  # NaN compares False
    cnt = inside.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(inside, values, 0.0).sum(axis=-1, dtype=np.float64) / cnt
    mean = np.where(cnt > 0, mean, med)
    bad = n == 0
    mean = np.where(bad, np.nan, mean)
    med = np.where(bad, np.nan, med)
    sig = np.where(bad, np.nan, sig)
    return mean, med, sig, n


#: From this many values the bins' statistics are split over two threads.
PARALLEL_VALUES = 500_000


def _robust_rows_threaded(values: np.ndarray):
    """:func:`robust_rows` of ``(c, bins, k)`` values, the bins' halves on two threads
    for large grids (each row on its own: the same numbers)."""
    n_bins = values.shape[1]
    if values.size < PARALLEL_VALUES or n_bins < 2 or available_threads(2) == 1:
        return robust_rows(values)
    cut = n_bins // 2
    first, second = in_two_threads(lambda: robust_rows(values[:, :cut]),
                                   lambda: robust_rows(values[:, cut:]), "samples")
    return tuple(np.concatenate([a, b], axis=1) for a, b in zip(first, second))


@dataclass(frozen=True)
class TargetPixels:
    """A target's subset pixels on a :class:`SampleGrid`, gathered before its scale is
    known (a batch gathers them on the thread that reads the frames).

    Attributes
    ----------
    values : ndarray (c, nbins, m*m) float32
        As :meth:`SampleGrid.subset` gives them, NaN where there is no data.
    ok : ndarray of bool (nbins,)
        Bins where every channel has under ``MAX_NO_DATA_FRACTION`` no-data pixels.
    """

    values: np.ndarray
    ok: np.ndarray


def target_pixels(grid: SampleGrid, target: np.ndarray, *, marked: bool = False
                  ) -> TargetPixels:
    """The :class:`TargetPixels` of ``target`` (``marked``: see :func:`measure_samples`)."""
    values = grid.subset(target, marked=marked)
    ok = np.all(np.isnan(values).mean(axis=2) < MAX_NO_DATA_FRACTION, axis=0)
    return TargetPixels(values, ok)


def measure_samples(grid: SampleGrid, target: np.ndarray, scale: np.ndarray, *,
                    marked: bool = False, pixels: TargetPixels | None = None) -> Samples:
    """Samples of ``scale*target - reference`` on the grid, per channel.

    Parameters
    ----------
    grid : SampleGrid
        From the reference.
    target : ndarray
        ``(y, x)`` or ``(c, y, x)`` with the reference's shape.
    scale : array_like (c,)
        Photometric scale per channel.
    marked : bool
        No-data is already NaN in ``target`` (:func:`~.engine.no_data_as_nan`): its
        planes are used as they are, without the no-data rule's full-frame test.
    pixels : TargetPixels, optional
        ``target_pixels(grid, target)`` when gathered already (``target`` is then
        not read).

    Returns
    -------
    Samples
        Only bins usable in every channel.
    """
    if pixels is None:
        pixels = target_pixels(grid, target, marked=marked)
    tgt, tgt_ok = pixels.values, pixels.ok
    scale = np.asarray(scale, np.float32).reshape(-1, 1, 1)
    diff = tgt * scale - grid.ref_values  # NaN where either has no data
    if grid.star_pixels is not None:
        np.copyto(diff, diff.dtype.type(np.nan), where=grid.star_pixels)  # 10x a fancy index
    use = grid.usable & tgt_ok
    mean, _, sig, count = _robust_rows_threaded(diff[:, use, :])
    ok = np.all(np.isfinite(mean) & (count > 0), axis=0)
    ix, iy = grid.indices
    cx, cy = grid.centers
    sel = np.flatnonzero(use)[ok]
    return Samples(
        x=cx[sel], y=cy[sel], ix=ix[sel], iy=iy[sel],
        values=mean[:, ok].T.astype(np.float64),
        sigma=sig[:, ok].T.astype(np.float64),
        weight=np.ones(len(sel)),
        n_rejected_stars=int((grid.ref_ok & grid.star_rejected).sum()),
        n_no_data=int((~grid.ref_ok | ~tgt_ok).sum()),
    )


def bin_samples(samples: Samples, max_samples: int | None) -> Samples:
    """Combine neighbouring samples into weighted super-samples (NSG section 8.4).

    With ``n > max_samples``: ``f = n / max``; blocks of ``b x b`` bins with
    ``b = ceil(sqrt(f))`` when ``f > 2``, else ``2 x 1``; each super-sample is the
    mean of its members (values and positions) and weighs the member count.
    Repeated once if still too many.
    """
    if max_samples is None or len(samples) <= max_samples:
        return samples
    cur = samples
    limit = max_samples
    for _ in range(2):
        src = samples
        n = len(src)
        f = n / limit
        bx, by = (int(np.ceil(np.sqrt(f))),) * 2 if f > 2 else (2, 1)
        kx, ky = src.ix // bx, src.iy // by
        keys = ky.astype(np.int64) * (int(kx.max()) + 1) + kx
        uniq, inv = np.unique(keys, return_inverse=True)
        w = np.bincount(inv, weights=src.weight)

        def avg(v, inv=inv, w=w, src=src):
            return np.bincount(inv, weights=v * src.weight) / w

        values = np.column_stack([avg(src.values[:, c]) for c in range(src.values.shape[1])])
        sigma = np.column_stack([avg(src.sigma[:, c]) for c in range(src.sigma.shape[1])])
        first = np.zeros(len(uniq), int)
        first[inv[::-1]] = np.arange(n)[::-1]
        cur = Samples(avg(src.x), avg(src.y), kx[first], ky[first], values, sigma, w,
                      samples.n_rejected_stars, samples.n_no_data)
        if len(cur) <= max_samples:
            break
        limit = max(1, int(limit * max_samples / len(cur)))
    return cur
