"""Pairing the stars of a target frame with the stars of the reference.

NSG measures the same stars in both frames, so the pairing must never pair two
different stars. Two ways to find the target's stars are offered:

* :func:`measure_stars_at` ("guided" detection): for every reference star, look
  for a significant local maximum in a small window of the target around the
  position where the star must be (reference position + whole-frame offset),
  and measure it. Only stars inside the search radius can ever be paired, so
  this finds every pair a whole-frame detection would, at a fraction of the
  cost on large frames.
* :func:`detect_stars` on the whole target, then :func:`match_stars`.

Both then go through NSG's flux-ratio passes (:func:`match_stars` /
:func:`gate_pairs`): a first ratio from the brightest 50 pairs within a factor 32,
a second within a factor 4, then all pairs within a factor 4 of that. Pairs
that are ambiguous (two reference stars claiming one target star, or a second
candidate of similar flux inside the search radius) are dropped rather than
guessed. :func:`estimate_offset` finds a whole-frame shift first (frames
registered to within a few pixels, as the real test frames are).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from ..nodata import with_nan_no_data
from .detection import FWHM_PER_SIGMA, StarTable
from .photometry import row_median_mad, window

#: The guided search's smoothed crop: this many px beyond the search radius (the
#: searched pixel + 1 for the fraction, + 1 for its neighbours, + 1 for their 3x3 means).
SEARCH_CROP_MARGIN = 3
GAUSS_FWHM_FROM_AREA = np.sqrt(8.0 * np.log(2.0) / (2.0 * np.pi))  # fwhm = k * sqrt(flux/peak)


@dataclass
class StarMatch:
    """Pairs of reference and target stars.

    Attributes
    ----------
    ref_index, tgt_index : ndarray of int
        Row ``k`` pairs ``reference[ref_index[k]]`` with ``target[tgt_index[k]]``;
        ordered by reference brightness.
    offset : (float, float)
        Whole-frame shift ``(dx, dy)`` of the target relative to the reference
        that was removed before pairing.
    ratio : float
        Detector flux ratio reference/target of the pairs (a first scale guess).
    warnings : list of str
        Why pairing may be unreliable.
    """

    ref_index: np.ndarray
    tgt_index: np.ndarray
    offset: tuple[float, float] = (0.0, 0.0)
    ratio: float = float("nan")
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ref_index)


@dataclass
class OffsetEstimate:
    """A whole-frame shift found by voting: ``target = reference + (dx, dy)``."""

    dx: float
    dy: float
    n_votes: int
    n_tried: int
    ok: bool


# ---------------------------------------------------------------------------
# windows around given positions


def _stamps(image: np.ndarray, cx: np.ndarray, cy: np.ndarray, half: int):
    """Square windows of side ``2*half+1`` centred on integer pixels (cx, cy).

    Returns ``(stamps, inside)``: pixels outside the image are NaN and
    ``inside`` tells which windows lie wholly within it.
    """
    offs = np.arange(-half, half + 1)
    stamps, inside = window(image, cx, cy, offs, np.float32)
    outside = ~inside
    if outside.any():
        stamps = np.where(outside, np.nan, stamps)
    return stamps, inside.all(axis=(1, 2))


def _box3(stamps: np.ndarray) -> np.ndarray:
    """3x3 mean of each stamp (edges: mean of what is there)."""
    p = np.pad(stamps, ((0, 0), (1, 1), (1, 1)), constant_values=np.nan)
    ok = np.isfinite(p)
    p = np.where(ok, p, 0)  # the finite test and the zeros once, not per shift
    acc = np.zeros_like(stamps)
    cnt = np.zeros_like(stamps)
    for dy in range(3):
        for dx in range(3):
            rows, cols = slice(dy, dy + stamps.shape[1]), slice(dx, dx + stamps.shape[2])
            acc += p[:, rows, cols]
            cnt += ok[:, rows, cols]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, acc / cnt, np.nan)


def _search_maximum(stamps: np.ndarray, fx: np.ndarray, fy: np.ndarray, search_radius: float):
    """The brightest pixel of each 3x3-smoothed stamp within ``search_radius`` (+ 0.5)
    of the expected position (``fx, fy`` from the stamp's centre pixel): ``(py, px,
    best, smooth)``, ``smooth`` the smoothed centre crop that the search and the
    local-maximum test read.

    A searched pixel lies at most ``search_radius + 1`` px from the centre along an
    axis, its neighbours one more, and their 3x3 means one more: the crop of half
    side ``ceil(search_radius) + 3`` gives them the whole stamp's values (its own
    edge row, never read, differs)."""
    n, s = stamps.shape[0], stamps.shape[1]
    half = s // 2
    crop = min(half, int(np.ceil(search_radius)) + SEARCH_CROP_MARGIN)
    inner = slice(half - crop, half + crop + 1)
    smooth = _box3(stamps[:, inner, inner])
    offs = np.arange(-crop, crop + 1)
    ddx = offs[None, None, :] - fx[:, None, None]  # from the expected (sub-pixel) position
    ddy = offs[None, :, None] - fy[:, None, None]
    in_search = (ddx**2 + ddy**2) <= (search_radius + 0.5) ** 2
    flat = np.where(in_search & np.isfinite(smooth), smooth, -np.inf).reshape(n, -1)
    k = np.argmax(flat, axis=1)
    py, px = np.unravel_index(k, (2 * crop + 1, 2 * crop + 1))
    best = flat[np.arange(n), k]
    return py + half - crop, px + half - crop, best, smooth


def _border_stats(stamps: np.ndarray, width: int = 2):
    """Median and robust sigma of each stamp's outer ring of ``width`` px."""
    s = stamps.shape[1]
    ring = np.ones((s, s), bool)
    ring[width:-width, width:-width] = False
    vals = stamps[:, ring]
    # NaN for a row without a finite value (no warnings.catch_warnings: not thread-safe,
    # and photometry runs in two threads); np.nanmedian's values, 8 x faster
    med, mad = row_median_mad(vals, overwrite=True)  # row_median twice, bit for bit
    return med, mad * 1.4826


def measure_stars_at(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    *,
    search_radius: float = 2.0,
    threshold: float = 5.0,
    fwhm: float = 3.0,
    noise: float | None = None,
    marked: bool = False,
) -> tuple[StarTable, np.ndarray]:
    """Find and measure one star near each given position ("guided" detection).

    For each position the brightest local maximum of the 3x3-smoothed image
    within ``search_radius`` is taken if it stands ``threshold`` sigmas above
    the window's background; its centroid, flux, peak and FWHM are measured in
    a window of about two FWHM.

    Parameters
    ----------
    image : ndarray (y, x)
        The detection image (intensity); 0/NaN = no data.
    x, y : ndarray
        Where each star is expected (0-based pixel coordinates).
    search_radius : float
        How far from the expected position the star may be (px).
    threshold : float
        Significance needed, in sigmas of the pixel noise.
    fwhm : float
        Typical star FWHM in px (sets the measuring window).
    noise : float, optional
        Pixel noise sigma; by default the median of the windows' robust sigmas.
    marked : bool
        No-data is already NaN in ``image`` (:func:`~napari_nsg.core.nsg.engine.no_data_as_nan`):
        used as it is, without the no-data rule's full-frame test.

    Returns
    -------
    (StarTable, found)
        A table with one row per position (NaN where nothing was found) and a
        boolean array ``found``.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    n = len(x)
    nan = np.full(n, np.nan)
    if n == 0:
        return StarTable.empty(), np.zeros(0, bool)
    win = max(2, int(np.ceil(1.2 * fwhm)))
    half = int(np.ceil(search_radius)) + win + 3
    cx = np.round(x).astype(int)
    cy = np.round(y).astype(int)
    stamps, _ = _stamps(image if marked else with_nan_no_data(image), cx, cy, half)
    bad = ~np.isfinite(stamps)  # no-data (NaN from with_nan_no_data) or outside the image
    np.copyto(stamps, np.nan, where=bad)  # our own copy: infinities to NaN in place
    bkg, sig = _border_stats(stamps)
    if noise is None or not np.isfinite(noise) or noise <= 0:
        good = np.isfinite(sig) & (sig > 0)
        noise = float(np.median(sig[good])) if good.any() else 1.0
    py, px, best, smooth = _search_maximum(stamps, x - cx, y - cy, search_radius)
    offs = np.arange(-half, half + 1)
    gy, gx = np.meshgrid(offs, offs, indexing="ij")
    col, row = offs[None, None, :], offs[None, :, None]  # broadcast: (n, 1, s), (n, s, 1)
    # a real maximum: not lower than any of its 8 neighbours in the smoothed stamp
    padded = np.pad(smooth, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    padded = np.where(np.isfinite(padded), padded, -np.inf)
    edge = half - (smooth.shape[1] // 2)  # the smoothed crop's first row in the stamp
    neigh = np.stack(
        [padded[np.arange(n), py - edge + 1 + dy, px - edge + 1 + dx]
         for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx], axis=1)
    is_max = np.all(best[:, None] >= neigh, axis=1)
    signif = (best - bkg) > threshold * noise / 3.0  # a 3x3 mean has sigma/3
    found = np.isfinite(best) & is_max & signif & np.isfinite(bkg)
    # measure in a window around the peak
    wy = row - (py - half)[:, None, None]
    wx = col - (px - half)[:, None, None]
    inwin = (wx**2 + wy**2) <= win**2
    sub = stamps - bkg[:, None, None]
    sub_pos = np.where(inwin & np.isfinite(sub), np.clip(sub, 0, None), 0.0)
    flux = np.where(inwin & np.isfinite(sub), sub, 0.0).sum(axis=(1, 2))
    tot = sub_pos.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = (sub_pos * gx[None]).sum(axis=(1, 2)) / tot
        my = (sub_pos * gy[None]).sum(axis=(1, 2)) / tot
    mx, my = _windowed_centroid(np.where(np.isfinite(sub), sub, 0.0), gx, gy, mx, my, fwhm)
    raw = np.where(inwin & np.isfinite(stamps), stamps, -np.inf)
    raw_peak = raw.reshape(n, -1).max(axis=1)
    peak = raw_peak - bkg
    nwin_bad = (inwin & bad).sum(axis=(1, 2))
    found &= (tot > 0) & (flux > 0) & (nwin_bad == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        star_fwhm = GAUSS_FWHM_FROM_AREA * np.sqrt(np.clip(flux, 0, None) / peak)
    above = (sub > threshold * noise) & np.isfinite(sub)
    npix = above.sum(axis=(1, 2))
    sigma = star_fwhm / FWHM_PER_SIGMA
    table = StarTable(
        x=np.where(found, cx + mx, nan),
        y=np.where(found, cy + my, nan),
        flux=np.where(found, flux, nan),
        peak=np.where(found, peak, nan),
        raw_peak=np.where(found, raw_peak, nan),
        background=np.where(found, bkg, nan),
        a=np.where(found, sigma, nan),
        b=np.where(found, sigma, nan),
        theta=np.zeros(n),
        fwhm=np.where(found, star_fwhm, nan),
        npix=np.where(found, npix, 0).astype(int),
        saturated=np.zeros(n, bool),
    )
    return table, found


def _windowed_centroid(sub, gx, gy, mx, my, fwhm, n_iter: int = 5):
    """Gaussian-windowed centroids (SExtractor's XWIN): unbiased by the pixel grid,
    unlike a plain barycentre in a window centred on the brightest pixel.

    The Gaussian window is separable: each step is one product of the stamps with
    the column weights (``w_x`` and ``w_x dx``, batched) and row sums, not a full
    window image per star (the same centroids to float64 rounding)."""
    s2 = max(fwhm / 2.3548, 0.7) ** 2
    col, row = gx[0, :], gy[:, 0]  # the grid's offsets: x along rows, y down
    sub = np.asarray(sub, np.float64)
    cols = np.empty((len(mx), len(col), 2))
    for _ in range(n_iter):
        dx = col[None, :] - mx[:, None]  # (n, s)
        dy = row[None, :] - my[:, None]
        np.exp(-(dx**2) / (2 * s2), out=cols[:, :, 0])
        np.multiply(cols[:, :, 0], dx, out=cols[:, :, 1])
        per_row = np.matmul(sub, cols)  # (n, s rows, 2): sums along each row
        wy = np.exp(-(dy**2) / (2 * s2))
        norm = np.einsum("ni,ni->n", per_row[:, :, 0], wy)
        with np.errstate(invalid="ignore", divide="ignore"):
            step_x = 2.0 * np.einsum("ni,ni->n", per_row[:, :, 1], wy) / norm
            step_y = 2.0 * np.einsum("ni,ni->n", per_row[:, :, 0], wy * dy) / norm
        ok = np.isfinite(step_x) & np.isfinite(step_y) & (norm > 0)
        mx = np.where(ok, mx + np.clip(step_x, -1, 1), mx)
        my = np.where(ok, my + np.clip(step_y, -1, 1), my)
    return mx, my


# ---------------------------------------------------------------------------
# offsets


def vote_offset(dxy: np.ndarray, tolerance: float = 1.5, min_votes: int = 3) -> OffsetEstimate:
    """The shift most candidate pairs agree on.

    Parameters
    ----------
    dxy : ndarray (n, 2)
        Candidate shifts (target - reference), several per star allowed.
    tolerance : float
        Shifts within this distance (px) count as agreeing.
    min_votes : int
        Fewest agreeing candidates for a result (else ``ok`` is False).
    """
    dxy = np.asarray(dxy, float).reshape(-1, 2)
    dxy = dxy[np.all(np.isfinite(dxy), axis=1)]
    if len(dxy) == 0:
        return OffsetEstimate(0.0, 0.0, 0, 0, False)
    tree = cKDTree(dxy)
    counts = np.array([len(c) for c in tree.query_ball_point(dxy, tolerance)])
    best = int(np.argmax(counts))
    members = tree.query_ball_point(dxy[best], tolerance)
    dx, dy = np.median(dxy[members], axis=0)
    # refine once around the median
    members = tree.query_ball_point([dx, dy], tolerance)
    if members:
        dx, dy = np.median(dxy[members], axis=0)
    votes = len(members)
    return OffsetEstimate(float(dx), float(dy), votes, len(dxy), votes >= min_votes)


def estimate_offset(
    ref: StarTable,
    target: StarTable | np.ndarray,
    max_offset: float,
    *,
    n_bright: int = 50,
    fwhm: float = 3.0,
    threshold: float = 5.0,
    marked: bool = False,
) -> OffsetEstimate:
    """Whole-frame shift of the target relative to the reference.

    Parameters
    ----------
    ref : StarTable
        Reference stars, brightest first.
    target : StarTable or ndarray
        The target's star list ("full" detection), or its intensity image:
        then each bright reference star is looked for within ``max_offset`` px.
    max_offset : float
        Largest shift looked for (px).
    n_bright : int
        How many of the brightest reference stars vote.
    marked : bool
        No-data is already NaN in the target image (see :func:`measure_stars_at`).

    Returns
    -------
    OffsetEstimate
        ``ok`` is False when fewer than 3 stars (and fewer than a third of
        those tried) agree; the shift is then (0, 0).
    """
    ref = ref.take(slice(0, n_bright))
    if len(ref) == 0 or max_offset <= 0:
        return OffsetEstimate(0.0, 0.0, 0, 0, max_offset <= 0)
    if isinstance(target, StarTable):
        tgt = target.take(slice(0, 2 * n_bright))
        if len(tgt) == 0:
            return OffsetEstimate(0.0, 0.0, 0, 0, False)
        tree = cKDTree(tgt.xy)
        cands = []
        for i, nbrs in enumerate(tree.query_ball_point(ref.xy, max_offset)):
            for j in nbrs:
                cands.append(tgt.xy[j] - ref.xy[i])
        dxy = np.array(cands).reshape(-1, 2)
    else:
        found_tab, found = measure_stars_at(
            target, ref.x, ref.y, search_radius=max_offset, threshold=threshold, fwhm=fwhm,
            marked=marked)
        dxy = (found_tab.xy - ref.xy)[found]
    est = vote_offset(dxy, tolerance=1.5, min_votes=3)
    need = max(3, int(np.ceil(len(ref) / 3)))
    ok = est.n_votes >= min(need, max(3, len(dxy)))
    if not ok:
        return OffsetEstimate(0.0, 0.0, est.n_votes, est.n_tried, False)
    return OffsetEstimate(est.dx, est.dy, est.n_votes, est.n_tried, True)


# ---------------------------------------------------------------------------
# ratio passes


def _origin_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least squares through the origin: ``sum(xy) / sum(x^2)``."""
    den = float(np.sum(x * x))
    return float(np.sum(x * y) / den) if den > 0 else float("nan")


def gate_pairs(
    ref_flux: np.ndarray,
    tgt_flux: np.ndarray,
    *,
    final_tolerance: float = 4.0,
    first_pairs: int = 50,
) -> tuple[np.ndarray, float]:
    """NSG's flux-ratio passes over candidate pairs (brightest first).

    Pass 1: ratio 1, tolerance 32, 50 pairs -> slope ``r1`` through the origin;
    pass 2: ratio ``r1``, tolerance 4 -> ``r2``; pass 3: every pair within
    ``final_tolerance`` of ``r2``.

    Returns
    -------
    (keep, ratio)
        Boolean mask over the pairs and the ratio ``r2`` (reference/target).
    """
    ref_flux = np.asarray(ref_flux, float)
    tgt_flux = np.asarray(tgt_flux, float)
    ok = np.isfinite(ref_flux) & np.isfinite(tgt_flux) & (ref_flux > 0) & (tgt_flux > 0)
    ratio = np.full(ref_flux.shape, np.nan)
    ratio[ok] = ref_flux[ok] / tgt_flux[ok]
    r = 1.0
    for tol in (32.0, 4.0):
        sel = ok & (ratio >= r / tol) & (ratio <= r * tol)
        idx = np.flatnonzero(sel)[:first_pairs]
        if len(idx) == 0:
            return np.zeros(ref_flux.shape, bool), float("nan")
        # the median ratio is robust where NSG's least squares is not
        r_ls = _origin_slope(tgt_flux[idx], ref_flux[idx])
        r = float(np.median(ratio[idx])) if len(idx) >= 3 else r_ls
    keep = ok & (ratio >= r / final_tolerance) & (ratio <= r * final_tolerance)
    return keep, r


def match_stars(
    ref: StarTable,
    target: StarTable,
    *,
    offset: tuple[float, float] = (0.0, 0.0),
    search_radius: float = 2.0,
    final_tolerance: float = 4.0,
    max_pairs: int | None = None,
) -> StarMatch:
    """Pair two star lists (the target's from a whole-frame detection).

    Each target star, brightest first, takes the unpaired reference star within
    ``search_radius`` of its position minus ``offset`` whose flux is closest to
    the expected ratio; NSG's three flux-ratio passes follow (see
    :func:`gate_pairs`). A target star with two reference stars of similar flux
    (within a factor 2 of each other) in its search circle is ambiguous and
    left unpaired.

    Parameters
    ----------
    ref, target : StarTable
        Brightest first.
    offset : (dx, dy)
        Target position minus reference position of the same star.
    search_radius : float
        Largest distance (px) after removing ``offset``.
    final_tolerance : float
        Flux-ratio tolerance of the last pass.
    max_pairs : int, optional
        Keep only the brightest pairs (by reference order).

    Returns
    -------
    StarMatch
    """
    warnings: list[str] = []
    if len(ref) == 0 or len(target) == 0:
        return StarMatch(np.zeros(0, int), np.zeros(0, int), offset, float("nan"),
                         ["no stars to pair"])
    tree = cKDTree(ref.xy)
    shifted = target.xy - np.asarray(offset, float)[None, :]
    cands = tree.query_ball_point(shifted, search_radius)
    expected = 1.0
    # a first ratio from unambiguous nearest pairs among the brightest
    simple = [(c[0], j) for j, c in enumerate(cands) if len(c) == 1][:50]
    if simple:
        ri, ti = np.array(simple).T
        with np.errstate(all="ignore"):
            rr = ref.flux[ri] / target.flux[ti]
        rr = rr[np.isfinite(rr) & (rr > 0)]
        if len(rr):
            expected = float(np.median(rr))
    used = np.zeros(len(ref), bool)
    pairs = []
    n_ambiguous = 0
    for j in np.argsort(-target.flux):
        c = [i for i in cands[j] if not used[i]]
        if not c:
            continue
        c = np.array(c)
        want = target.flux[j] * expected
        dist = np.abs(np.log(np.clip(ref.flux[c], 1e-30, None) / max(want, 1e-30)))
        order = np.argsort(dist)
        if len(c) > 1:
            f0, f1 = ref.flux[c[order[0]]], ref.flux[c[order[1]]]
            if max(f0, f1) < 2.0 * min(f0, f1):
                n_ambiguous += 1
                continue
        i = int(c[order[0]])
        used[i] = True
        pairs.append((i, j))
    if n_ambiguous:
        warnings.append(f"{n_ambiguous} star(s) left unpaired: two reference stars of similar "
                        "flux inside the search radius")
    if not pairs:
        return StarMatch(np.zeros(0, int), np.zeros(0, int), offset, float("nan"),
                         warnings + ["no star pairs within the search radius"])
    pairs = np.array(sorted(pairs))
    keep, ratio = gate_pairs(ref.flux[pairs[:, 0]], target.flux[pairs[:, 1]],
                             final_tolerance=final_tolerance)
    pairs = pairs[keep]
    if max_pairs is not None:
        pairs = pairs[:max_pairs]
    return StarMatch(pairs[:, 0].astype(int), pairs[:, 1].astype(int), offset, ratio, warnings)


def match_found(
    ref: StarTable,
    found_table: StarTable,
    found: np.ndarray,
    *,
    offset: tuple[float, float] = (0.0, 0.0),
    final_tolerance: float = 4.0,
    max_pairs: int | None = None,
    duplicate_radius: float = 1.0,
) -> StarMatch:
    """Pairs from guided detection (:func:`measure_stars_at`, one row per reference star).

    Two reference stars that found the same target star (within
    ``duplicate_radius`` px) are both dropped; then NSG's flux-ratio passes.
    """
    warnings: list[str] = []
    idx = np.flatnonzero(found)
    if len(idx) > 1:
        tree = cKDTree(found_table.xy[idx])
        dup = np.zeros(len(idx), bool)
        for a, b in tree.query_pairs(duplicate_radius):
            dup[a] = dup[b] = True
        if dup.any():
            # a few close pairs are normal (and rightly left out); many mean the
            # frames do not line up
            if dup.sum() > max(2, 0.1 * len(idx)):
                warnings.append(f"{int(dup.sum())} of {len(idx)} star(s) left unpaired: two "
                                "reference stars found the same target star")
            idx = idx[~dup]
    if len(idx) == 0:
        return StarMatch(np.zeros(0, int), np.zeros(0, int), offset, float("nan"),
                         warnings + ["no target stars found near the reference stars"])
    keep, ratio = gate_pairs(ref.flux[idx], found_table.flux[idx], final_tolerance=final_tolerance)
    idx = idx[keep]
    if max_pairs is not None:
        idx = idx[:max_pairs]
    return StarMatch(idx.astype(int), idx.astype(int), offset, ratio, warnings)
