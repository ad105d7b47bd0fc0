"""Star-pattern matching across a scale ratio, a rotation, a flip and a much larger wide field.

astroalign-style triangle invariants fail when the wide frame covers many times
the narrow one (its brightest stars are mostly outside the narrow footprint).
Here the wide star list is searched in windows about the size of the narrow
footprint, for each scale level of the range asked:

1. Triangles of the narrow image's brightest stars, described by the side
   ratios ``(L1/L3, L2/L3)`` (scale, rotation and mirror invariant), their
   longest side ``L3`` and their orientation (the sign that a mirror flips).
2. For each window of the wide star list (side ~1.4x the footprint's diagonal,
   half overlapping), triangles of its brightest stars; candidate pairs are
   triangles whose invariants agree within ``tol`` and whose size ratio fits
   the scale level (a box query in a k-d tree).
3. Each candidate pair gives a similarity (scale, angle, parity, shift). The
   hypotheses vote in a 5-D histogram; the best bins are verified by mapping
   every narrow star into the wide frame and counting the wide stars found
   within 1.5 px; a solution must be unlikely by chance (Poisson tail < 1e-12
   given the local density of wide stars in the predicted footprint).
4. The search stops at the first convincing solution (tail < 1e-15).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree
from scipy.stats import poisson

from .transforms import Similarity, fit_similarity

__all__ = ["MatchResult", "candidate_similarities", "match_similarity", "scale_levels"]


@dataclass
class MatchResult:
    """A similarity narrow -> wide found by :func:`match_similarity`.

    Attributes
    ----------
    similarity : Similarity
        Maps narrow pixel positions to wide pixel positions.
    narrow_index, wide_index : ndarray of int
        Indices (into the star lists given) of the verified pairs.
    expected_random : float
        Pairs expected by chance with the verification tolerance.
    windows_tried : int
        Windows searched before the solution was accepted.
    """

    similarity: Similarity
    narrow_index: np.ndarray
    wide_index: np.ndarray
    expected_random: float
    windows_tried: int

    @property
    def n_pairs(self) -> int:
        return len(self.narrow_index)

    @property
    def scale_ratio(self) -> float:
        return 1.0 / self.similarity.scale


@dataclass
class _Triangles:
    verts: np.ndarray  # (T, 3) star indices, vertex opposite the shortest side first
    inv: np.ndarray  # (T, 2) L1/L3, L2/L3
    size: np.ndarray  # (T,) L3
    orient: np.ndarray  # (T,) +1 / -1

    def __len__(self) -> int:
        return len(self.size)


_COMBOS: dict[int, np.ndarray] = {}


def _combinations(n: int) -> np.ndarray:
    if n not in _COMBOS:
        _COMBOS[n] = np.array(list(itertools.combinations(range(n), 3)), dtype=np.int32).reshape(-1, 3)
    return _COMBOS[n]


def _triangles(xy: np.ndarray, gap: float, min_size: float) -> _Triangles:
    n = len(xy)
    if n < 3:
        return _Triangles(np.zeros((0, 3), int), np.zeros((0, 2)), np.zeros(0), np.zeros(0))
    comb = _combinations(n)
    p = xy[comb]
    opp = np.stack(
        [np.hypot(*(p[:, 1] - p[:, 2]).T), np.hypot(*(p[:, 2] - p[:, 0]).T),
         np.hypot(*(p[:, 0] - p[:, 1]).T)], axis=1)
    order = np.argsort(opp, axis=1)
    sides = np.take_along_axis(opp, order, axis=1)
    verts = np.take_along_axis(comb, order, axis=1)
    l1, l2, l3 = sides.T
    with np.errstate(invalid="ignore", divide="ignore"):
        r1, r2 = l1 / l3, l2 / l3
    good = (l3 >= min_size) & (r1 > 0.1) & ((l2 - l1) / l3 > gap) & ((l3 - l2) / l3 > gap)
    verts, r1, r2, l3 = verts[good], r1[good], r2[good], l3[good]
    a, b, c = xy[verts[:, 0]], xy[verts[:, 1]], xy[verts[:, 2]]
    cross = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    return _Triangles(verts, np.column_stack([r1, r2]), l3, np.sign(cross))


def scale_levels(scale_range: tuple[float, float], band: float = 1.3) -> list[tuple[float, float]]:
    """Split ``scale_range`` into sub-ranges at most ``band**2`` wide (searched one by one)."""
    lo, hi = scale_range
    levels = []
    step = band * band
    a = lo
    while a < hi * 0.999:
        b = min(hi, a * step)
        levels.append((a, b))
        a = b
    return levels or [(lo, hi)]


def _windows(wide_shape, side: float):
    h, w = wide_shape
    out = []
    sx, sy = min(side, w), min(side, h)
    xs = np.arange(0, max(1.0, w - sx) + 1e-9, max(1.0, sx / 2))
    ys = np.arange(0, max(1.0, h - sy) + 1e-9, max(1.0, sy / 2))
    if xs[-1] + sx < w:
        xs = np.append(xs, w - sx)
    if ys[-1] + sy < h:
        ys = np.append(ys, h - sy)
    for y0 in ys:
        for x0 in xs:
            out.append((x0, y0, x0 + sx, y0 + sy))
    return out


class _Verifier:
    """Counts the narrow stars that land on a wide star under a similarity."""

    def __init__(self, narrow_xy, narrow_shape, wide_xy, wide_shape, tol):
        self.narrow = narrow_xy
        self.wide = wide_xy
        self.tree = cKDTree(wide_xy)
        self.tol = tol
        self.wide_shape = wide_shape
        self.narrow_shape = narrow_shape

    def __call__(self, sim: Similarity):
        pred = sim(self.narrow)
        h, w = self.wide_shape
        inside = (pred[:, 0] > -0.5) & (pred[:, 1] > -0.5) & (pred[:, 0] < w - 0.5) & (pred[:, 1] < h - 0.5)
        d, j = self.tree.query(pred, distance_upper_bound=self.tol)
        ok = np.isfinite(d) & inside
        ni, wj, dd = np.nonzero(ok)[0], j[ok], d[ok]
        # one narrow star per wide star: keep the closest
        order = np.argsort(dd)
        _, first = np.unique(wj[order], return_index=True)
        keep = order[first]
        # chance matches: the local density of wide stars in the predicted footprint
        hn, wn = self.narrow_shape
        back = _inverse(sim)(self.wide)
        in_foot = ((back[:, 0] > -0.5) & (back[:, 1] > -0.5) & (back[:, 0] < wn - 0.5)
                   & (back[:, 1] < hn - 0.5)).sum()
        area = hn * wn * sim.scale**2
        expected = inside.sum() * max(in_foot, 1) / max(area, 1.0) * np.pi * self.tol**2
        return ni[keep], wj[keep], float(expected)


def _inverse(sim: Similarity) -> Similarity:
    """The inverse similarity (wide -> narrow)."""
    a = sim.complex_factor
    t = complex(sim.tx, sim.ty)
    # w = a m(z) + t  =>  m(z) = (w - t) / a ; m = conj for a flip
    inv = 1.0 / a
    if sim.flip:
        # z = conj((w - t)/a) = conj(inv) conj(w) - conj(inv t)
        c = np.conj(inv)
        off = -np.conj(inv * t)
        return Similarity(float(abs(c)), float(np.angle(c)), True, float(off.real), float(off.imag))
    off = -inv * t
    return Similarity(float(abs(inv)), float(np.angle(inv)), False, float(off.real), float(off.imag))


def _tail(k: int, lam: float) -> float:
    """P(X >= k) for X ~ Poisson(lam)."""
    return float(poisson.sf(k - 1, max(lam, 1e-12)))


#: Chance probability below which a verified solution is accepted. Thousands of
#: hypotheses are verified (windows x scale levels x vote bins, each refitted to
#: its best count), so a per-hypothesis 1e-7 let a different sky through; 1e-12
#: means e.g. 8 pairs where 0.15 are expected by chance.
ACCEPT_TAIL = 1e-12


def _accept(n: int, expected: float, min_pairs: int) -> bool:
    return n >= min_pairs and _tail(n, expected) < ACCEPT_TAIL


def _hypotheses(tn: _Triangles, nz: np.ndarray, tw: _Triangles, wz: np.ndarray, pairs, allow_flip):
    i, j = pairs
    zn = nz[tn.verts[i]]
    zw = wz[tw.verts[j]]
    flip = tn.orient[i] != tw.orient[j]
    if not allow_flip:
        zn, zw, flip, i, j = zn[~flip], zw[~flip], flip[~flip], i[~flip], j[~flip]
    zn = np.where(flip[:, None], np.conj(zn), zn)
    mn, mw = zn.mean(axis=1), zw.mean(axis=1)
    dn, dw = zn - mn[:, None], zw - mw[:, None]
    a = np.sum(dw * np.conj(dn), axis=1) / np.maximum(np.sum(np.abs(dn) ** 2, axis=1), 1e-300)
    b = mw - a * mn
    return a, b, flip


def _narrow_pattern(narrow_xy: np.ndarray, narrow_shape: tuple[int, int], n_narrow: int,
                    tol: float):
    """The narrow frame's centre (complex), its brightest ``n_narrow`` stars about
    that centre (complex), its diagonal and their triangles."""
    hn, wn = narrow_shape
    centre = complex((wn - 1) / 2.0, (hn - 1) / 2.0)
    nz = narrow_xy[:n_narrow, 0] + 1j * narrow_xy[:n_narrow, 1] - centre
    diag_n = float(np.hypot(hn, wn))
    return centre, nz, diag_n, _triangles(np.column_stack([nz.real, nz.imag]), gap=tol,
                                          min_size=0.05 * diag_n)


@dataclass(frozen=True)
class _WindowHypotheses:
    """The similarity hypotheses ``w = a z + b`` of one window of the wide image."""

    a: np.ndarray
    b: np.ndarray
    flip: np.ndarray
    s_lo: float
    s_hi: float
    bin_shift: float
    tried: int


def _window_hypotheses(tn, nz, wide_xy, wide_shape, diag_n, scale_range, *, allow_flip, tol,
                       max_wide_per_window, progress=None):
    """Walk the scale levels and, in each, the windows of the wide image a narrow
    footprint fits in; yield the hypotheses of every window whose triangles match
    the narrow ones (``tried`` counts the windows walked so far)."""
    wz_all = wide_xy[:, 0] + 1j * wide_xy[:, 1]
    tried = 0
    levels = scale_levels(scale_range)
    for level, (s_lo, s_hi) in enumerate(levels):
        s_mid = np.sqrt(s_lo * s_hi)
        k = tol / (np.log(s_hi / s_lo) / 2 + 0.05)
        foot_diag = diag_n / s_mid
        qtree = cKDTree(np.column_stack([tn.inv, (np.log(tn.size) - np.log(s_mid)) * k]))
        bin_shift = max(3.0, 0.04 * foot_diag)
        windows = list(_windows(wide_shape, 1.4 * foot_diag))
        for k_win, (x0, y0, x1, y1) in enumerate(windows):
            if progress is not None:
                progress(level, len(levels), f"matching star patterns: ratio {s_lo:.2f}-{s_hi:.2f}, "
                         f"window {k_win + 1}/{len(windows)}")
            tried += 1
            inside = np.nonzero((wide_xy[:, 0] >= x0) & (wide_xy[:, 0] < x1)
                                & (wide_xy[:, 1] >= y0) & (wide_xy[:, 1] < y1))[0]
            if len(inside) < 3:
                continue
            sel = inside[:max_wide_per_window]
            tw = _triangles(wide_xy[sel], gap=tol, min_size=0.05 * diag_n / s_hi)
            if len(tw) == 0:
                continue
            wtree = cKDTree(np.column_stack([tw.inv, np.log(tw.size) * k]))
            sdm = qtree.sparse_distance_matrix(wtree, tol, p=np.inf, output_type="ndarray")
            if len(sdm) == 0:
                continue
            a, b, flip = _hypotheses(tn, nz, tw, wz_all[sel], (sdm["i"], sdm["j"]), allow_flip)
            yield _WindowHypotheses(a, b, flip, s_lo, s_hi, bin_shift, tried)


def match_similarity(
    narrow_xy: np.ndarray,
    wide_xy: np.ndarray,
    narrow_shape: tuple[int, int],
    wide_shape: tuple[int, int],
    *,
    scale_range: tuple[float, float] = (1.5, 6.0),
    allow_flip: bool = True,
    n_narrow: int = 30,
    max_wide_per_window: int = 70,
    tol: float = 0.01,
    verify_tol: float = 1.5,
    n_verify: int = 400,
    min_pairs: int = 6,
    progress=None,
) -> MatchResult | None:
    """Find the similarity narrow -> wide from star positions alone.

    Parameters
    ----------
    narrow_xy, wide_xy : ndarray, (n, 2)
        Star positions, brightest first.
    narrow_shape, wide_shape : (int, int)
        Image sizes ``(height, width)``.
    scale_range : (float, float)
        Scale ratios searched: narrow pixels per wide pixel.
    allow_flip : bool
        Also try mirrored solutions.
    n_narrow : int
        Brightest narrow stars used for triangles.
    max_wide_per_window : int
        Brightest wide stars of a window used for triangles.
    tol : float
        Tolerance on the triangle side ratios.
    verify_tol : float
        Wide pixels within which a mapped narrow star must fall on a wide star.
    n_verify : int
        Brightest narrow stars mapped for verification.
    min_pairs : int
        Fewest verified pairs for a solution.
    progress : callable, optional
        ``progress(done, total, message)`` once per scale level and window
        searched (``done``/``total`` count scale levels); it may raise to
        cancel the search.

    Returns
    -------
    MatchResult or None
        None when no window gives a convincing solution.
    """
    narrow_xy = np.asarray(narrow_xy, float)
    wide_xy = np.asarray(wide_xy, float)
    centre, nz, diag_n, tn = _narrow_pattern(narrow_xy, narrow_shape, n_narrow, tol)
    if len(tn) == 0:
        return None
    verifier = _Verifier(narrow_xy[:n_verify], narrow_shape, wide_xy, wide_shape, verify_tol)
    best: MatchResult | None = None
    for win in _window_hypotheses(tn, nz, wide_xy, wide_shape, diag_n, scale_range,
                                  allow_flip=allow_flip, tol=tol,
                                  max_wide_per_window=max_wide_per_window, progress=progress):
        a, b, flip, tried, bin_shift = win.a, win.b, win.flip, win.tried, win.bin_shift
        ratio = 1.0 / np.abs(a)
        ok = (ratio >= max(scale_range[0], win.s_lo) * 0.97) \
            & (ratio <= min(scale_range[1], win.s_hi) * 1.03)
        if not ok.any():
            continue
        a, b, flip = a[ok], b[ok], flip[ok]
        keys = np.column_stack([
            flip.astype(np.int64),
            np.floor(np.log(np.abs(a)) / 0.02).astype(np.int64),
            np.floor(np.angle(a) / np.radians(1.5)).astype(np.int64),
            np.floor(b.real / bin_shift).astype(np.int64),
            np.floor(b.imag / bin_shift).astype(np.int64),
        ])
        keys -= keys.min(axis=0)
        flat = np.ravel_multi_index(keys.T, tuple(keys.max(axis=0) + 1))
        _, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
        for u in np.argsort(-counts)[:5]:
            if counts[u] < 3:
                break
            m = inverse == u
            am = complex(np.median(a[m].real), np.median(a[m].imag))
            bm = complex(np.median(b[m].real), np.median(b[m].imag))
            fl = bool(flip[m][0])
            c = np.conj(centre) if fl else centre
            shift = bm - am * c
            sim = Similarity(abs(am), float(np.angle(am)), fl, shift.real, shift.imag)
            result = _verify_and_refit(sim, verifier, narrow_xy, wide_xy, min_pairs, tried)
            if result is None:
                continue
            if best is None or result.n_pairs > best.n_pairs:
                best = result
        if best is not None and _convincing(best, min_pairs):
            return best
    return best


def _verify_and_refit(sim, verifier, narrow_xy, wide_xy, min_pairs, tried):
    ni, wj, expected = verifier(sim)
    if not _accept(len(ni), expected, min_pairs):
        return None
    for _ in range(2):
        refit = fit_similarity(narrow_xy[ni], wide_xy[wj], sim.flip)
        ni2, wj2, expected2 = verifier(refit)
        if len(ni2) < len(ni):
            break
        sim, ni, wj, expected = refit, ni2, wj2, expected2
    if not _accept(len(ni), expected, min_pairs):
        return None
    return MatchResult(sim, ni, wj, expected, tried)


def _convincing(result: MatchResult, min_pairs: int) -> bool:
    return result.n_pairs >= min_pairs and _tail(result.n_pairs, result.expected_random) < 1e-15


def _dedupe(cands: list[tuple[Similarity, int]], centre: np.ndarray, reach: float,
            min_apart: float, limit: int) -> list[tuple[Similarity, int]]:
    """At most ``limit`` candidates, most pairs first, none mapping the narrow centre and the
    points ``reach`` away from it within ``min_apart`` wide px of a better one's."""
    probe = np.array([centre, centre + (reach, 0.0), centre + (0.0, reach)])
    kept: list[tuple[Similarity, int]] = []
    where = np.zeros((0, 3, 2))
    for sim, n in sorted(cands, key=lambda c: -c[1]):
        p = sim(probe)
        if len(where) and np.min(np.max(np.hypot(*(where - p).transpose(2, 0, 1)), axis=1)) \
                < min_apart:
            continue
        kept.append((sim, n))
        where = np.concatenate([where, p[None]])
        if len(kept) >= limit:
            break
    return kept


def candidate_similarities(
    narrow_xy: np.ndarray,
    wide_xy: np.ndarray,
    narrow_shape: tuple[int, int],
    wide_shape: tuple[int, int],
    *,
    scale_range: tuple[float, float] = (1.5, 6.0),
    allow_flip: bool = True,
    n_narrow: int = 30,
    max_wide_per_window: int = 70,
    tol: float = 0.01,
    verify_tol: float = 2.0,
    min_pairs: int = 3,
    max_candidates: int = 200,
    max_hypotheses: int = 3000,
) -> list[tuple[Similarity, int]]:
    """Similarities narrow -> wide that a few stars support (too few to prove one).

    Every pair of similar triangles (as in :func:`match_similarity`) within the
    scale range gives a hypothesis; each distinct one is verified by counting
    the narrow stars that land within ``verify_tol`` wide px of a wide star and
    refitted to those. With 3-5 such pairs a chance alignment is likely, so the
    candidates must be told apart by other evidence (the image intensities:
    :mod:`.intensity`). Hypotheses are binned as in :func:`match_similarity`
    (one verified per bin) and at most ``max_hypotheses`` bins are verified.

    Returns
    -------
    list of (Similarity, int)
        Distinct candidates with at least ``min_pairs`` star pairs, most pairs
        first, at most ``max_candidates``.
    """
    narrow_xy = np.asarray(narrow_xy, float)
    wide_xy = np.asarray(wide_xy, float)
    zc, nz, diag_n, tn = _narrow_pattern(narrow_xy, narrow_shape, n_narrow, tol)
    centre = np.array([zc.real, zc.imag])
    if len(tn) == 0 or len(wide_xy) < 3:
        return []
    verifier = _Verifier(narrow_xy, narrow_shape, wide_xy, wide_shape, verify_tol)
    seen: set = set()
    cands: list[tuple[Similarity, int]] = []
    for win in _window_hypotheses(tn, nz, wide_xy, wide_shape, diag_n, scale_range,
                                  allow_flip=allow_flip, tol=tol,
                                  max_wide_per_window=max_wide_per_window):
        ratio = 1.0 / np.abs(win.a)
        ok = (ratio >= scale_range[0] * 0.97) & (ratio <= scale_range[1] * 1.03)
        a, b, flip, bin_shift = win.a[ok], win.b[ok], win.flip[ok], win.bin_shift
        # one hypothesis per bin of (parity, scale, angle, where the centre lands)
        keys = np.column_stack([flip, np.round(np.log(np.abs(a)) / 0.02),
                                np.round(np.angle(a) / np.radians(1.5)),
                                np.round(b.real / bin_shift), np.round(b.imag / bin_shift)])
        _, first = np.unique(keys, axis=0, return_index=True)
        for u in first:
            key = tuple(keys[u])
            if key in seen or len(seen) >= max_hypotheses:
                continue
            seen.add(key)
            fl, am = bool(flip[u]), a[u]
            shift = b[u] - am * (np.conj(zc) if fl else zc)
            sim = Similarity(abs(am), float(np.angle(am)), fl, shift.real, shift.imag)
            ni, wj, _ = verifier(sim)
            if len(ni) < min_pairs:
                continue
            sim = fit_similarity(narrow_xy[ni], wide_xy[wj], sim.flip)
            ni, wj, _ = verifier(sim)
            if len(ni) >= min_pairs:
                cands.append((sim, len(ni)))
    return _dedupe(cands, centre, 0.5 * diag_n, 2 * verify_tol, max_candidates)
