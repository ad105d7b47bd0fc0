"""Aperture photometry with a local background ring, per channel.

Circular apertures with sub-pixel edges (a pixel counts with the fraction
``clip(r + 0.5 - d, 0, 1)`` of its centre distance ``d``), so that the same
aperture on slightly different centroids encloses the same flux.

The background is a least-squares plane through a ring outside the aperture,
evaluated at the star (the ring's mean level when the sky has a gradient and
part of the ring is cut off). Both are fixed linear weights on the pixels, and
nothing is clipped or masked: that is what makes a flux *ratio* immune to the
seeing. The light of every neighbour that lies wholly inside the aperture or
wholly inside the ring is the same fraction of the transmission in both frames
whatever its sharpness, and cancels in the ratio; a median, a clipped mean or
a mask of neighbours would cut into their wings by an amount that depends on
the seeing, and in crowded fields that biases the ratio by a percent or more
(measured on the simulator). A bright neighbour or a cosmic ray makes that one
star an outlier, which the robust scale fit removes.

A measurement is invalid when the aperture touches the image edge or a no-data
pixel (0, NaN, inf), when its brightest pixel reaches the saturation level,
when the ring has too few pixels, or when the flux is not positive.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from ..blas import one_thread_product
from ..nodata import with_nan_no_data
from . import psf_match

#: Fewest usable ring pixels for a valid background (:func:`aperture_photometry`).
MIN_RING_PIXELS = 12
#: Integers below this are exact in float32: the ring's pixel counts and grid sums are
#: summed in float32 when no partial sum can reach it (the same sums, half the bytes).
FLOAT32_EXACT = 2.0**24
#: Ring pixels within RING_NEIGHBOUR_MASK_FWHM (x the pair's broader FWHM) of another
#: detected star are left out of a star's background ring, in both frames of a pair
#: (:func:`pair_photometry` ``neighbours=``), unless fewer than MIN_RING_PIXELS (or than
#: RING_MASK_MIN_KEPT of the ring) would be left. 0: off (an experiment;
#: ``--default-ring-mask`` in ``benchmarks/bench_scale_bound.py``; docs/nsg.md
#: "Eighth attempt").
RING_NEIGHBOUR_MASK_FWHM = 0.0
#: A detected star this close (px) to a measured star's centre is that star itself.
SELF_NEIGHBOUR_PX = 1.5
#: The masked ring is used only where it keeps this fraction of the ring's pixels (and
#: MIN_RING_PIXELS): a sliver can leave the plane fit singular.
RING_MASK_MIN_KEPT = 0.25


@dataclass
class Photometry:
    """Aperture photometry of ``n`` stars in ``c`` channels.

    Attributes
    ----------
    flux : ndarray (c, n)
        Background-subtracted aperture flux (NaN where invalid).
    flux_err : ndarray (c, n)
        Its uncertainty from the pixel noise (aperture and background ring);
        star shot noise is not included (the gain is unknown).
    background : ndarray (c, n)
        Background per pixel at the star (plane through the ring).
    background_sigma : ndarray (c, n)
        Robust pixel sigma in the ring.
    peak : ndarray (c, n)
        Brightest aperture pixel (raw).
    valid : ndarray of bool (c, n)
        Usable measurement.
    radius : ndarray (n,)
        Aperture radii used.
    reason : ndarray of str (n,)
        Why a star is invalid in every channel ('' if valid somewhere).
    """

    flux: np.ndarray
    flux_err: np.ndarray
    background: np.ndarray
    background_sigma: np.ndarray
    peak: np.ndarray
    valid: np.ndarray
    radius: np.ndarray
    reason: np.ndarray

    @property
    def n_channels(self) -> int:
        return self.flux.shape[0]


def row_median(values: np.ndarray) -> np.ndarray:
    """Median of each row ignoring NaN (NaN for an empty row); faster than
    ``np.nanmedian`` on many short rows."""
    s = np.sort(values, axis=-1)  # NaN last
    n = np.sum(np.isfinite(s), axis=-1)
    lo = np.take_along_axis(s, np.maximum((n - 1) // 2, 0)[:, None], axis=-1)[:, 0]
    hi = np.take_along_axis(s, np.maximum(n // 2, 0)[:, None], axis=-1)[:, 0]
    return np.where(n > 0, 0.5 * (lo + hi), np.nan)


def row_median_mad(values: np.ndarray, n_finite: np.ndarray | None = None,
                   overwrite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(m, row_median(|values - m|))`` with ``m = row_median(values)``, from one sort:
    the distances below and above the median are two ascending runs of the sorted
    row (``m - s`` read backwards, ``s - m`` forwards), and the middle of their union
    is found by a binary search per row. The same values bit for bit.

    ``n_finite``: the number of non-NaN values of each row where the caller knows it
    (saves a pass); ``overwrite``: sort ``values`` in place."""
    if overwrite:
        values.sort(axis=-1)  # NaN last
        s = values
    else:
        s = np.sort(values, axis=-1)
    n_rows, width = s.shape
    flat = s.ravel()
    base = np.arange(n_rows) * width
    n = (width - np.count_nonzero(np.isnan(s), axis=-1) if n_finite is None
         else np.asarray(n_finite, np.int64))
    nn = np.maximum(n, 1)

    def at(i, base=base):
        return flat[base + _clip_index(i, width)]

    med = np.where(n > 0, 0.5 * (at((nn - 1) // 2) + at(nn // 2)), np.nan)
    below = _first_not_below(at, med, nn // 2)  # the first run's length
    # the two middle distances of every row in one binary search (each row twice)
    k = np.concatenate([(nn - 1) // 2, nn // 2])
    med2, below2, n2 = (np.concatenate([a, a]) for a in (med, below, n))

    base2 = np.concatenate([base, base])

    def at2(i):
        return flat[base2 + _clip_index(i, width)]

    # the k-th smallest distance: i of them from below, k + 1 - i from above
    lo, hi = np.maximum(0, k + 1 - (n2 - below2)), np.minimum(below2, k + 1)
    while True:
        open_ = lo < hi
        if not open_.any():
            break
        i = (lo + hi) // 2
        # too few from below: its next distance is under the last one taken above
        more = open_ & (i < below2) & (med2 - at2(below2 - 1 - i) < at2(below2 + k - i) - med2)
        lo = np.where(more, i + 1, lo)
        hi = np.where(open_ & ~more, i, hi)
    last_below = np.where(lo > 0, med2 - at2(below2 - lo), -np.inf)
    last_above = np.where(k - lo >= 0, at2(below2 + k - lo) - med2, -np.inf)
    middle = np.maximum(last_below, last_above)
    mad = np.where(n > 0, 0.5 * (middle[:n_rows] + middle[n_rows:]), np.nan)
    return med, mad


def _clip_index(i: np.ndarray, width: int) -> np.ndarray:
    """``np.clip(i, 0, width - 1)`` by two ufuncs (a few µs less per call: the binary
    searches of :func:`row_median_mad` make hundreds of calls per frame)."""
    return np.minimum(np.maximum(i, 0), width - 1)


def _first_not_below(at, value: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per sorted row, the number of values under ``value`` (a binary search in
    ``[0, hi]``; ``at(i)`` reads each row's ``i``-th value, ``at(hi) >= value``)."""
    lo, hi = np.zeros_like(hi), hi.copy()
    while True:
        open_ = lo < hi
        if not open_.any():
            return lo
        mid = (lo + hi) // 2
        with np.errstate(invalid="ignore"):
            under = at(mid) < value
        lo = np.where(open_ & under, mid + 1, lo)
        hi = np.where(open_ & ~under, mid, hi)


def ring_fit_grid(v: np.ndarray, use: np.ndarray, gx: np.ndarray, gy: np.ndarray,
                  fx: np.ndarray, fy: np.ndarray):
    """:func:`ring_fit` of pixels on the integer grid ``(gx, gy)`` (``(p,)``, shared by
    the rows) around stars at fractions ``(fx, fy)`` (``(n,)``): ``dx = gx - fx``.

    The normal equations from exact integer sums over the grid (one product of the
    used-pixel mask with the grid's monomials, one of the values with the grid),
    shifted by each star's fraction; no ``dx``/``dy`` arrays. Equal to
    :func:`ring_fit` to float64 rounding (the same counts and the same pixels)."""
    n, p = v.shape
    mono = np.stack([np.ones(p), gx, gy, gx * gx, gx * gy, gy * gy], axis=1)
    if p * float(np.abs(mono).max(initial=0.0)) < FLOAT32_EXACT:  # every partial sum exact
        sums = one_thread_product(use.astype(np.float32), mono.astype(np.float32))
        sums = sums.astype(np.float64)
    else:
        sums = one_thread_product(use.astype(np.float64), mono)  # exact: integers < 2**53
    vsum = one_thread_product(v, mono[:, :3])
    c, sx, sy, sxx, sxy, syy = sums.T
    ata = np.empty((n, 3, 3))
    ata[:, 0, 0] = c
    ata[:, 0, 1] = ata[:, 1, 0] = sx - c * fx
    ata[:, 0, 2] = ata[:, 2, 0] = sy - c * fy
    ata[:, 1, 1] = sxx - 2.0 * fx * sx + c * fx * fx
    ata[:, 1, 2] = ata[:, 2, 1] = sxy - fx * sy - fy * sx + c * fx * fy
    ata[:, 2, 2] = syy - 2.0 * fy * sy + c * fy * fy
    atb = np.stack([vsum[:, 0], vsum[:, 1] - fx * vsum[:, 0], vsum[:, 2] - fy * vsum[:, 0]],
                   axis=-1)
    count = c.astype(np.int64)
    ok = count >= 6
    ata[~ok] = np.eye(3)
    atb[~ok] = 0.0
    coef = np.linalg.solve(ata, atb[..., None])[..., 0]
    # the plane at each pixel, (c0 - c1 fx - c2 fy) + c1 gx + c2 gy: one product
    at_grid = np.stack([coef[:, 0] - coef[:, 1] * fx - coef[:, 2] * fy, coef[:, 1], coef[:, 2]],
                       axis=1)
    resid = one_thread_product(at_grid, np.ascontiguousarray(mono[:, :3].T))
    np.subtract(v, resid, out=resid)
    np.copyto(resid, np.nan, where=~use)
    sig = 1.4826 * row_median_mad(resid, count, overwrite=True)[1]
    return np.where(ok, coef[:, 0], np.nan), sig, count


def _row_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(a * b).sum(axis=-1)`` of 2-D arrays without the product array."""
    return np.einsum("ij,ij->i", a, b)


def ring_statistics(values: np.ndarray, dx: np.ndarray, dy: np.ndarray):
    """Row-wise background of ring pixels: a least-squares plane at the star.

    A plane ``a + b dx + c dy`` is fitted to each row's ring pixels (NaN = not
    used) and evaluated at the star (``dx = dy = 0``): the mean level of the
    ring, also when part of it is cut off (no data, image edge) and the sky has
    a gradient. Nothing is clipped (see the module notes).

    Parameters
    ----------
    values : ndarray (n, p)
    dx, dy : ndarray (n, p)
        Pixel positions relative to each star.

    Returns
    -------
    (level, sigma, count)
        ``sigma`` is the robust (MAD) sigma of the residuals from the plane.
    """
    use = np.isfinite(values)
    return ring_fit(np.where(use, values, 0.0), use, dx, dy)


def ring_fit(v: np.ndarray, use: np.ndarray, dx: np.ndarray, dy: np.ndarray):
    """:func:`ring_statistics` of the values ``v`` (0 where not used) and the pixels
    used, ``use`` (for a caller that has the mask: no finiteness test)."""
    wdx = np.where(use, dx, 0.0)
    wdy = np.where(use, dy, 0.0)
    count = np.count_nonzero(use, axis=-1)
    # the normal equations of the plane, each sum one pass (no product arrays)
    ata = np.empty((v.shape[0], 3, 3))
    ata[:, 0, 0] = count
    ata[:, 0, 1] = ata[:, 1, 0] = wdx.sum(axis=-1)
    ata[:, 0, 2] = ata[:, 2, 0] = wdy.sum(axis=-1)
    ata[:, 1, 1] = _row_dot(wdx, dx)
    ata[:, 1, 2] = ata[:, 2, 1] = _row_dot(wdx, dy)
    ata[:, 2, 2] = _row_dot(wdy, dy)
    atb = np.stack([v.sum(axis=-1), _row_dot(v, dx), _row_dot(v, dy)], axis=-1)
    ok = count >= 6
    ata[~ok] = np.eye(3)
    atb[~ok] = 0.0
    coef = np.linalg.solve(ata, atb[..., None])[..., 0]
    resid = dx * coef[:, 1:2]
    resid += coef[:, 0:1]
    resid += np.multiply(dy, coef[:, 2:3], out=wdx)
    np.subtract(v, resid, out=resid)
    np.copyto(resid, np.nan, where=~use)
    sig = 1.4826 * row_median_mad(resid, count, overwrite=True)[1]
    level = np.where(ok, coef[:, 0], np.nan)
    return level, sig, count


def window(plane: np.ndarray, cx: np.ndarray, cy: np.ndarray, offs: np.ndarray,
           dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`.psf_match.window` (pixels of ``plane`` at the offsets ``offs``, a run of
    consecutive integers, around integer centres: ``(values, inside)``, edge pixels
    repeated where ``inside`` is False), the same values 5-10 x faster: a window
    that lies wholly in the plane is one slice copied, not a gather of indices.

    ``dtype``: of the values (the plane's by default)."""
    h, w = plane.shape
    k = len(offs)
    y0, x0 = cy + int(offs[0]), cx + int(offs[0])
    whole = (y0 >= 0) & (y0 + k <= h) & (x0 >= 0) & (x0 + k <= w)
    values = np.empty((len(cx), k, k), dtype or plane.dtype)
    inside = np.ones(values.shape, bool)
    for i in np.flatnonzero(whole).tolist():
        values[i] = plane[y0[i]:y0[i] + k, x0[i]:x0[i] + k]
    part = np.flatnonzero(~whole)
    if part.size:
        values[part], inside[part] = psf_match.window(plane, cx[part], cy[part], offs)
    return values, inside


#: How far a star lies from its integer centre at most (|fx|, |fy| <= 0.5: sqrt(0.5) px),
#: with a margin: the pixels a group's apertures and rings can reach are chosen with it.
MAX_CENTRE_SHIFT = 0.75


@dataclass
class _Group:
    """The pixels of one group of stars (one stamp size), as lists into its square
    stamp: ``ring_idx`` (the pixels in some star's ring) and ``ap_idx`` (the pixels
    some aperture can touch), with each star's ring mask and aperture weights."""

    offs: np.ndarray
    fx: np.ndarray
    fy: np.ndarray
    ring_idx: np.ndarray
    ring: np.ndarray
    ap_idx: np.ndarray
    weight: np.ndarray
    grid_x: np.ndarray
    grid_y: np.ndarray


def _group_pixels(half: int, fx: np.ndarray, fy: np.ndarray, r: np.ndarray, gap: float,
                  wd: np.ndarray) -> _Group:
    """Ring masks and aperture weights of stars at fractions ``(fx, fy)`` of their
    integer centres, computed only on the pixels of the ``2*half+1`` stamp that an
    aperture or a ring can reach (the annulus and the disc, not the whole square)."""
    offs = np.arange(-half, half + 1)
    rows, cols = np.divmod(np.arange(len(offs) ** 2), len(offs))
    d0 = np.hypot(offs[rows], offs[cols])  # from the integer centre: within MAX_CENTRE_SHIFT
    inner, outer = r + gap, r + gap + wd
    ax = offs[None, :] - fx[:, None]  # (n, side): the squares once per row and column
    ay = offs[None, :] - fy[:, None]
    ax2, ay2 = ax * ax, ay * ay

    def dist(idx):  # as sqrt(ay * ay + ax * ax) on the whole stamp (3x np.hypot's speed)
        d = ay2[:, rows[idx]]
        d += ax2[:, cols[idx]]
        return np.sqrt(d, out=d)  # in place: no fresh pages for a second large array

    cand = np.flatnonzero((d0 >= inner.min() - MAX_CENTRE_SHIFT)
                          & (d0 <= outer.max() + MAX_CENTRE_SHIFT))
    d = dist(cand)
    ring = d >= inner[:, None]
    ring &= d <= outer[:, None]
    in_ring = np.flatnonzero(ring.any(axis=0))  # the pixels in some star's ring only
    ring_idx = cand[in_ring]
    ap_idx = np.flatnonzero(d0 < r.max() + 0.5 + MAX_CENTRE_SHIFT)  # weight > 0: dist < r + 0.5
    weight = dist(ap_idx)
    np.subtract((r + 0.5)[:, None], weight, out=weight)
    np.clip(weight, 0.0, 1.0, out=weight)
    return _Group(offs, fx, fy, ring_idx, ring[:, in_ring], ap_idx, weight,
                  offs[cols[ring_idx]].astype(np.float64), offs[rows[ring_idx]].astype(np.float64))


def aperture_photometry(
    data: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    radius: np.ndarray | float,
    *,
    gap: float = 2.0,
    width: np.ndarray | float = 10.0,
    saturation: np.ndarray | float | None = None,
    min_ring_pixels: int = MIN_RING_PIXELS,
    stamps=None,
    marked: bool = False,
) -> Photometry:
    """Measure stars in circular apertures with a background ring.

    Parameters
    ----------
    data : ndarray
        ``(y, x)`` or ``(c, y, x)`` image in its own units; 0/NaN/inf = no data.
    x, y : ndarray (n,)
        Aperture centres (0-based, pixel centres on integers).
    radius : float or ndarray (n,)
        Aperture radii in px.
    gap : float
        Distance between the aperture edge and the ring (px).
    width : float or ndarray (n,)
        Ring width (px).
    saturation : float or ndarray (c,), optional
        A star whose brightest aperture pixel reaches this level is invalid in
        that channel.
    min_ring_pixels : int
        Fewest usable ring pixels for a valid background.
    stamps : callable, optional
        ``stamps(c, sel, offs) -> (values, inside)``: the pixels of channel
        ``c`` around stars ``sel`` at offsets ``offs`` from their integer
        centres (NaN = no data), instead of gathering them from ``data``
        (PSF-matched stamps, see :func:`matched_pair_photometry`).
    marked : bool
        No-data is already NaN in ``data`` (the planes of
        :func:`~napari_nsg.core.nsg.engine.no_data_as_nan`): used as they are,
        without the no-data rule's full-frame test.

    Returns
    -------
    Photometry
    """
    return _measure_frames([data], [x], [y], radius, gap=gap, width=width,
                           saturation=saturation, min_ring_pixels=min_ring_pixels,
                           stamps=stamps, marked=marked)[0]


def _frame_planes(data, marked: bool) -> list[np.ndarray]:
    """The channel planes of ``(y, x)`` or ``(c, y, x)`` data, no-data as NaN."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[np.newaxis]
    return [data[c] if marked else with_nan_no_data(data[c]) for c in range(data.shape[0])]


def _frame_pixels(planes, cx, cy, sel, n, half, pix):
    """The pixels ``pix`` (indices into the ``2*half+1`` square stamp) of the stars
    ``sel`` (rows ``k*n`` to ``(k+1)*n - 1`` are in ``planes[k]``), in the order of
    ``sel``: ``(values, inside)`` as :func:`window` gives them there, ``inside`` None
    when every stamp lies in its plane. Square stamps copied row by row and then the
    columns taken: measured faster than one gather of just those pixels (its index
    array is as large as the values)."""
    offs = np.arange(-half, half + 1)
    bounds = np.searchsorted(sel, n * np.arange(1, len(planes)))
    values, inside = [], []
    for plane, s in zip(planes, np.split(sel, bounds)):
        st, ins = window(plane, cx[s], cy[s], offs)
        values.append(st.reshape(len(s), -1)[:, pix])
        inside.append(None if ins.all() else ins.reshape(len(s), -1)[:, pix])
    values = values[0] if len(values) == 1 else np.concatenate(values)
    if all(i is None for i in inside):
        return values, None
    return values, np.concatenate([np.ones((len(v), len(pix)), bool) if i is None else i
                                   for v, i in zip(np.split(values, bounds), inside)])


def _ring_near_neighbours(g: _Group, cx, cy, frame, neighbours, mask_radius) -> np.ndarray:
    """``(len(cx), len(g.ring_idx))``: the ring pixels of the stars at integer centres
    ``(cx, cy)`` in frames ``frame`` that lie within ``mask_radius`` px of another
    detected star (``neighbours``: x, y and a KD-tree of the detected stars, and per
    frame their offset). Each neighbour's disc is stamped into its star's square stamp (only the
    pixels of a square around it are tested), then the ring's pixels are read."""
    side = len(g.offs)
    half = side // 2
    reach = np.hypot(g.grid_x, g.grid_y).max(initial=0.0) + mask_radius
    t = np.arange(-int(np.ceil(mask_radius)) - 1, int(np.ceil(mask_radius)) + 2)
    tx, ty = np.tile(t, len(t)), np.repeat(t, len(t))  # the square around a neighbour
    stamp = np.zeros(len(cx) * side * side, bool)
    nx, ny, tree, offsets = neighbours
    for k, (dx, dy) in enumerate(offsets):
        rows = np.flatnonzero(frame == k)
        if rows.size == 0 or len(nx) == 0:
            continue
        found = tree.query_ball_point(np.c_[cx[rows] - dx, cy[rows] - dy], reach)
        counts = np.fromiter(map(len, found), int, len(found))
        j = np.fromiter(itertools.chain.from_iterable(found), int, int(counts.sum()))
        i = np.repeat(rows, counts)
        ox, oy = (nx[j] + dx) - cx[i], (ny[j] + dy) - cy[i]  # from each star's integer centre
        other = np.hypot(ox - g.fx[i], oy - g.fy[i]) > SELF_NEIGHBOUR_PX
        i, ox, oy = i[other], ox[other], oy[other]
        px = np.round(ox).astype(int)[:, None] + tx
        py = np.round(oy).astype(int)[:, None] + ty
        hit = (px - ox[:, None]) ** 2 + (py - oy[:, None]) ** 2 < mask_radius * mask_radius
        hit &= (np.abs(px) <= half) & (np.abs(py) <= half)
        stamp[((i[:, None] * side + py + half) * side + px + half)[hit]] = True
    return stamp.reshape(len(cx), side * side)[:, g.ring_idx]


def _measure_frames(frames, xs, ys, radius, *, gap, width, saturation, min_ring_pixels,
                    stamps, marked, neighbours=None) -> list[Photometry]:
    """:func:`aperture_photometry` of the same ``n`` apertures (radii and ring widths) in
    several frames of one layout at once, at positions ``xs[k], ys[k]`` in frame ``k``:
    the stars of all frames go through each pass together (fewer, longer NumPy calls).

    ``neighbours``: ``((x, y, KD-tree of the detected stars, per frame their offset),
    radius px)``: ring pixels within that radius of one are left out where
    ``min_ring_pixels`` and the fraction ``RING_MASK_MIN_KEPT`` of the ring stay."""
    planes = None if stamps is not None else [_frame_planes(d, marked) for d in frames]
    nf, nc = len(frames), 1 if np.ndim(frames[0]) == 2 else np.shape(frames[0])[0]
    x = np.concatenate([np.asarray(v, float) for v in xs])
    y = np.concatenate([np.asarray(v, float) for v in ys])
    n = len(x) // nf
    radius = np.tile(np.broadcast_to(np.asarray(radius, float), (n,)), nf)
    width = np.tile(np.broadcast_to(np.asarray(width, float), (n,)), nf)
    sat = (np.full(nc, np.inf) if saturation is None
           else np.broadcast_to(np.asarray(saturation, float), (nc,)))
    flux, err, bkg, bsig, peak = (np.full((nc, n * nf), np.nan) for _ in range(5))
    valid = np.zeros((nc, n * nf), bool)
    reason = np.full(n * nf, "", dtype=object)
    finite = np.isfinite(x) & np.isfinite(y) & np.isfinite(radius) & (radius > 0)
    reason[~finite] = "no position"
    outer = np.where(finite, np.ceil(radius + gap + width + 1.0), 0)
    cx = np.where(finite, np.round(x), 0).astype(int)
    cy = np.where(finite, np.round(y), 0).astype(int)
    for half in np.unique(outer[finite]).astype(int):
        sel = np.flatnonzero(finite & (outer == half))
        g = _group_pixels(half, x[sel] - cx[sel], y[sel] - cy[sel], radius[sel], gap, width[sel])
        in_ap = g.weight > 0
        sum_w = g.weight.sum(axis=-1)
        sum_w2 = (g.weight**2).sum(axis=-1)
        pix = np.concatenate([g.ring_idx, g.ap_idx])  # the ring's pixels, then the aperture's
        nr = len(g.ring_idx)
        ring = g.ring
        if neighbours is not None:
            near = _ring_near_neighbours(g, cx[sel], cy[sel], sel // n, *neighbours)
            masked = ring & ~near
            kept = masked.sum(axis=-1)
            enough = (kept >= min_ring_pixels) & (kept >= RING_MASK_MIN_KEPT * ring.sum(axis=-1))
            ring = np.where(enough[:, None], masked, ring)
        for c in range(nc):
            if stamps is None:  # the plane's own type: float64 only where summed
                vals, inside = _frame_pixels([p[c] for p in planes], cx, cy, sel, n, half, pix)
            else:
                st, inside = stamps(c, sel, g.offs)
                vals, inside = st.reshape(len(sel), -1)[:, pix], inside.reshape(len(sel), -1)[:, pix]
                inside = None if inside.all() else inside
            st_ring, st = vals[:, :nr], vals[:, nr:]
            use = ring & np.isfinite(st_ring)  # no-data: NaN
            if inside is not None:
                use &= inside[:, :nr]
            mean, sig, count = ring_fit_grid(np.where(use, st_ring, np.float64(0.0)), use,
                                             g.grid_x, g.grid_y, g.fx, g.fy)
            good = np.isfinite(st)
            ap_outside = (np.zeros(len(sel), bool) if inside is None
                          else np.any(in_ap & ~inside[:, nr:], axis=-1))
            if inside is not None:
                good &= inside[:, nr:]
            counted = in_ap & good
            ap_bad = np.any(in_ap & ~good, axis=-1) | ap_outside
            f = (np.where(counted, st, 0.0) * g.weight).sum(axis=-1) - mean * sum_w
            pk = np.where(counted, st, -np.inf).max(axis=-1)
            e = sig * np.sqrt(sum_w2 + sum_w**2 / np.maximum(count, 1))
            ok = ~ap_bad & (count >= min_ring_pixels) & np.isfinite(f) & (f > 0) & (pk < sat[c])
            flux[c, sel] = np.where(ok, f, np.nan)
            err[c, sel] = np.where(ok, e, np.nan)
            bkg[c, sel] = mean
            bsig[c, sel] = sig
            peak[c, sel] = pk
            valid[c, sel] = ok
            if c == 0:
                reason[sel] = np.select(
                    [ap_outside, ap_bad, count < min_ring_pixels, pk >= sat[c], ~(f > 0)],
                    ["aperture leaves the image", "no-data pixel in the aperture",
                     "background ring has too few pixels", "saturated", "flux not positive"],
                    "")
    out = []
    for k in range(nf):
        cols = slice(k * n, (k + 1) * n)
        rk = reason[cols].copy()
        rk[valid[:, cols].any(axis=0)] = ""
        out.append(Photometry(flux[:, cols], err[:, cols], bkg[:, cols], bsig[:, cols],
                              peak[:, cols], valid[:, cols], radius[cols].copy(), rk.astype(str)))
    return out


def pair_photometry(
    ref: np.ndarray,
    tgt: np.ndarray,
    ref_x: np.ndarray,
    ref_y: np.ndarray,
    tgt_x: np.ndarray,
    tgt_y: np.ndarray,
    radius: np.ndarray | float,
    *,
    gap: float = 2.0,
    width: np.ndarray | float = 10.0,
    saturation: np.ndarray | float | None = None,
    marked: bool = False,
    neighbours: tuple[np.ndarray, np.ndarray, tuple[float, float], float] | None = None,
) -> tuple[Photometry, Photometry]:
    """Photometry of the same stars in two frames with identical apertures.

    Parameters
    ----------
    ref, tgt : ndarray
        ``(y, x)`` or ``(c, y, x)``, same layout.
    ref_x, ref_y, tgt_x, tgt_y : ndarray (n,)
        The stars' centres in each frame.
    radius : float or ndarray (n,)
        Aperture radii (the same in both frames).
    gap, width, saturation, marked :
        As in :func:`aperture_photometry` (``marked``: in both frames).
    neighbours : (x, y, offset, fwhm), optional
        The reference's detected stars, the target's offset from it and the pair's
        broader FWHM: with ``RING_NEIGHBOUR_MASK_FWHM > 0`` the ring pixels within
        that many FWHM of another detected star (at ``(x, y)`` in the reference,
        ``(x, y) + offset`` in the target) are left out of every background ring,
        unless fewer than ``MIN_RING_PIXELS`` or than the fraction
        ``RING_MASK_MIN_KEPT`` of the ring would be left.

    Returns
    -------
    (Photometry, Photometry)
        Reference and target; the errors include the stars' photon noise
        (:func:`add_shot_noise`).
    """
    mask = None
    if neighbours is not None and RING_NEIGHBOUR_MASK_FWHM > 0:
        nx, ny, (ox, oy), fwhm = neighbours
        nx, ny = np.asarray(nx, float), np.asarray(ny, float)
        mask = ((nx, ny, cKDTree(np.c_[nx, ny]), [(0.0, 0.0), (float(ox), float(oy))]),
                RING_NEIGHBOUR_MASK_FWHM * float(fwhm))
    ref_ph, tgt_ph = _measure_frames([ref, tgt], [ref_x, tgt_x], [ref_y, tgt_y], radius,
                                     gap=gap, width=width, saturation=saturation,
                                     min_ring_pixels=MIN_RING_PIXELS, stamps=None, marked=marked,
                                     neighbours=mask)
    add_shot_noise(ref_ph)
    add_shot_noise(tgt_ph)
    return ref_ph, tgt_ph


def add_shot_noise(ph: Photometry) -> float:
    """Add the stars' own photon noise to ``ph.flux_err`` (in place).

    The gain is not known, so the ADU per photo-electron is estimated from the
    background rings: for photon-limited sky the variance is at most the level
    (read noise adds to the variance only), so ``median(sigma^2 / level)`` is
    an upper bound that is close for sky-limited frames. Rings whose level is
    under 5 sigma (sky-subtracted data) give no estimate; then nothing is added.

    Returns
    -------
    float
        The ADU per electron used (0 when none could be estimated).
    """
    with np.errstate(all="ignore"):
        level, sig = ph.background, ph.background_sigma
        ok = ph.valid & np.isfinite(level) & np.isfinite(sig) & (level > 5 * sig) & (sig > 0)
        if ok.sum() < 3:
            return 0.0
        adu_per_e = float(np.median(sig[ok] ** 2 / level[ok]))
        shot = np.clip(np.nan_to_num(ph.flux), 0, None) * adu_per_e
        ph.flux_err = np.sqrt(ph.flux_err**2 + shot)
    return adu_per_e


def _channel_planes(data: np.ndarray) -> list[np.ndarray]:
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[np.newaxis]
    return [with_nan_no_data(data[c]) for c in range(data.shape[0])]


def _matched_stamps(sharp_planes, broad_planes, cx, cy, half, order, fwhm_broad):
    """Per channel: the sharp frame's stamps convolved to the broad PSF (None
    where no kernel could be fitted), and the kernels."""
    fit_half = int(np.ceil(psf_match.FIT_RADIUS_FWHM * fwhm_broad)) + 3
    out, kernels = [], []
    for sp, bp in zip(sharp_planes, broad_planes):
        fit_ids = order[: psf_match.FIT_STARS]
        ksig = fwhm_broad * psf_match.SIGMA_PER_FWHM
        khalf = max(psf_match.MIN_KERNEL_HALF, int(np.ceil(psf_match.KERNEL_HALF_SIGMA * ksig)))
        fh = fit_half + khalf
        fit = psf_match.fit_kernel(psf_match.gather_stamps(sp, cx[fit_ids], cy[fit_ids], fh),
                                   psf_match.gather_stamps(bp, cx[fit_ids], cy[fit_ids], fh),
                                   fwhm_broad)
        kernels.append(fit)
        if fit is None:
            out.append(None)
            continue
        k = fit.kernel.shape[0] // 2
        conv = psf_match.convolve_stamps(psf_match.gather_stamps(sp, cx, cy, half + k), fit.kernel)
        out.append(conv[:, k: k + 2 * half + 1, k: k + 2 * half + 1])
    return out, kernels


def matched_pair_photometry(
    ref: np.ndarray,
    tgt: np.ndarray,
    ref_x: np.ndarray,
    ref_y: np.ndarray,
    tgt_x: np.ndarray,
    tgt_y: np.ndarray,
    radius: np.ndarray | float,
    fwhm: tuple[float, float],
    *,
    gap: float = 2.0,
    width: np.ndarray | float = 10.0,
    saturation: np.ndarray | float | None = None,
) -> tuple[Photometry, Photometry]:
    """Photometry of the same stars in two frames after matching their PSFs.

    The sharper frame's stamps are convolved with a fitted unit-sum kernel
    (:mod:`napari_nsg.core.stars.psf_match`) so that its stars have the
    broader frame's PSF; both are then measured in identical apertures at the
    broader frame's star positions. The apertures then enclose the same
    fraction of every star's light (and of its neighbours') in both frames,
    whatever their size. A channel where no kernel can be fitted (too few
    bright stars) is measured as by :func:`pair_photometry`.

    Parameters
    ----------
    ref, tgt, ref_x, ref_y, tgt_x, tgt_y, radius, gap, width, saturation :
        As in :func:`pair_photometry`.
    fwhm : (float, float)
        FWHM (px) of the reference and of the target.

    Returns
    -------
    (Photometry, Photometry)
        Reference and target. Validity, saturation and the errors come from
        the unconvolved frames (convolution smooths the background noise
        that the errors are measured from).
    """
    kw = {"gap": gap, "width": width, "saturation": saturation}
    ref_ph, tgt_ph = pair_photometry(ref, tgt, ref_x, ref_y, tgt_x, tgt_y, radius, **kw)
    ref_sharper = fwhm[0] < fwhm[1]
    sharp, broad = (ref, tgt) if ref_sharper else (tgt, ref)
    bx, by = (tgt_x, tgt_y) if ref_sharper else (ref_x, ref_y)
    bx, by = np.asarray(bx, float), np.asarray(by, float)
    sharp_ph, broad_ph = (ref_ph, tgt_ph) if ref_sharper else (tgt_ph, ref_ph)
    n = len(bx)
    finite = np.isfinite(bx) & np.isfinite(by)
    if n == 0 or not finite.any():
        return ref_ph, tgt_ph
    cx = np.where(finite, np.round(bx), -10**6).astype(int)
    cy = np.where(finite, np.round(by), -10**6).astype(int)
    r = np.broadcast_to(np.asarray(radius, float), (n,))
    wd = np.broadcast_to(np.asarray(width, float), (n,))
    half = int(np.ceil(np.nanmax(np.where(finite, r + gap + wd, 0)) + 1.0))
    both = sharp_ph.valid & broad_ph.valid
    planes_s, planes_b = _channel_planes(sharp), _channel_planes(broad)
    for c in range(len(planes_s)):
        order = np.flatnonzero(both[c])
        order = order[np.argsort(-broad_ph.flux[c, order])]
        conv, _ = _matched_stamps([planes_s[c]], [planes_b[c]], cx, cy, half, order,
                                  max(fwhm))
        if conv[0] is None:
            continue

        def stamps(_c, sel, offs, conv=conv[0]):
            h = len(offs) // 2
            st = conv[sel, half - h: half + h + 1, half - h: half + h + 1]
            return st, np.isfinite(st)

        sph = aperture_photometry(sharp[c] if np.ndim(sharp) == 3 else sharp, bx, by, r,
                                  stamps=stamps, **kw)
        bph = aperture_photometry(broad[c] if np.ndim(broad) == 3 else broad, bx, by, r, **kw)
        for dst, src in ((sharp_ph, sph), (broad_ph, bph)):
            ok = dst.valid[c] & src.valid[0]
            dst.flux[c] = np.where(ok, src.flux[0], np.nan)
            dst.valid[c] = ok
            dst.background[c] = src.background[0]
    return ref_ph, tgt_ph
