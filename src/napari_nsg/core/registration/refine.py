"""From a rough similarity to the final model: all-star pairing, projective fit, distortion spline.

1. Every narrow star is mapped into the wide frame and paired with the wide star
   nearest to it (one to one) within a tolerance that starts at a few wide
   pixels and tightens to ``5 x 1.4826 x MAD`` of the residuals (not below 1 px).
2. A projective model (homography from 30 pairs, affine from 12, else a
   similarity), plus a stiff thin-plate spline once there are 20 pairs, is
   fitted to the pairs and the pairing repeated with it until no pair is added:
   the pairs grow outward from where the similarity was right, so distortion
   of several pixels is followed. Pairs beyond 4 robust sigma (MAD) are then
   dropped.
3. Star positions of the pairs are refined with Gaussian-windowed centroids
   (SExtractor's XWIN scheme), which are several times more precise than
   isophotal barycentres.
4. The homography's residuals are modelled by a smoothing thin-plate spline,
   its smoothing chosen by 5-fold cross-validation (and dropped when it does
   not beat the homography alone on held-out stars).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .transforms import (
    HOMOGRAPHY_MIN_PAIRS,
    DistortionSpline,
    WideTransform,
    apply_homography,
    fit_projective,
)

__all__ = ["RefinedModel", "gather_stamps", "pair_stars", "refine_model", "windowed_centroids"]


def pair_stars(pred: np.ndarray, target: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one pairs ``(i, j)`` with ``|pred[i] - target[j]| < tol``, closest first."""
    if len(pred) == 0 or len(target) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    tree = cKDTree(target)
    d, j = tree.query(pred, distance_upper_bound=tol)
    ok = np.isfinite(d)
    i, j, d = np.nonzero(ok)[0], j[ok], d[ok]
    order = np.argsort(d)
    _, first = np.unique(j[order], return_index=True)
    keep = np.sort(order[first])
    return i[keep], j[keep]


def gather_stamps(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``image[rows[:, :, None], cols[:, None, :]]`` as float64, no data (NaN, inf) as 0.

    ``image`` is ``(y, x)``, or ``(c, y, x)``: then the mean of the channels' stamps (the
    stamps of :func:`~..stars.intensity`, without the frame-sized mean of the channels).
    """
    img = np.asarray(image, dtype=np.float32)
    planes = img[None] if img.ndim == 2 else img
    w = img.shape[-1]
    stamps = None
    for plane in planes:
        if plane.flags.c_contiguous:  # one flat gather: 2x faster than two index arrays
            one = plane.ravel()[rows[:, :, None] * w + cols[:, None, :]].astype(np.float64)
        else:
            one = plane[rows[:, :, None], cols[:, None, :]].astype(np.float64)
        stamps = one if stamps is None else stamps + one
    if len(planes) > 1:
        stamps /= len(planes)
    return np.where(np.isfinite(stamps), stamps, 0.0)


def windowed_centroids(image: np.ndarray, xy: np.ndarray, fwhm,
                       iterations: int = 8) -> np.ndarray:
    """Gaussian-windowed centroids (SExtractor XWIN) of the stars at ``xy`` (``(n, 2)``).

    ``image`` is ``(y, x)``, or ``(c, y, x)`` (measured on the mean of the channels).
    ``fwhm`` (a number, or one per star) sets each window: a Gaussian of the
    same FWHM. The local background is the median of each stamp's outer ring.
    Stars whose iteration wanders more than one FWHM keep their input position.
    """
    img = np.asarray(image, dtype=np.float32)
    h, w = img.shape[-2:]
    xy = np.asarray(xy, float)
    if len(xy) == 0:
        return xy.copy()
    fwhm = np.broadcast_to(np.asarray(fwhm, float), (len(xy),))
    sigma = np.maximum(0.5, fwhm / 2.3548)[:, None, None]
    r = int(np.ceil(4 * sigma.max()))
    off = np.arange(-r, r + 1)
    ix0 = np.rint(xy[:, 0]).astype(int)
    iy0 = np.rint(xy[:, 1]).astype(int)
    cols = np.clip(ix0[:, None] + off[None, :], 0, w - 1)
    rows = np.clip(iy0[:, None] + off[None, :], 0, h - 1)
    stamps = gather_stamps(img, rows, cols)  # (n, 2r+1, 2r+1)
    ring = np.ones((2 * r + 1, 2 * r + 1), bool)
    ring[2:-2, 2:-2] = False
    bkg = np.median(stamps[:, ring], axis=1)
    stamps -= bkg[:, None, None]
    # the Gaussian window is separable: exp(-(dx^2 + dy^2) / 2s^2) = ex(x) ey(y), so each
    # iteration is a batched matrix product over the stamps (no (n, 2r+1, 2r+1) weights)
    gx, gy = cols.astype(float), rows.astype(float)  # (n, 2r+1)
    two_var = 2 * sigma[:, 0] * sigma[:, 0]  # (n, 1)
    step = sigma[:, 0, 0]
    x = xy[:, 0].copy()
    y = xy[:, 1].copy()
    for _ in range(iterations):
        dx, dy = gx - x[:, None], gy - y[:, None]
        ex, ey = np.exp(-dx * dx / two_var), np.exp(-dy * dy / two_var)
        rows_sum = stamps @ np.stack([ex, ex * dx], axis=2)  # (n, 2r+1, 2): sum over x
        s = np.einsum("ny,ny->n", ey, rows_sum[:, :, 0])
        good = s > 0
        safe = np.where(good, s, 1)
        sx = np.where(good, 2 * np.einsum("ny,ny->n", ey, rows_sum[:, :, 1]) / safe, 0)
        sy = np.where(good, 2 * np.einsum("ny,ny->n", ey * dy, rows_sum[:, :, 0]) / safe, 0)
        x += np.clip(sx, -step, step)
        y += np.clip(sy, -step, step)
    moved = np.hypot(x - xy[:, 0], y - xy[:, 1])
    bad = ~np.isfinite(moved) | (moved > np.maximum(1.0, fwhm))
    x[bad], y[bad] = xy[bad, 0], xy[bad, 1]
    return np.column_stack([x, y])


@dataclass
class RefinedModel:
    """Result of :func:`refine_model`.

    Attributes
    ----------
    transform : WideTransform
        The narrow -> wide model.
    narrow_index, wide_index : ndarray of int
        The star pairs kept (indices into the lists given).
    narrow_xy, wide_xy : ndarray, (n, 2)
        Their (refined) positions.
    residual_wide : ndarray, (n, 2)
        ``transform(narrow_xy) - wide_xy`` in wide pixels.
    homography_rms : float
        RMS residual (wide px) of the projective model alone.
    distortion_cv_rms, homography_cv_rms : float or None
        Held-out RMS (wide px) with and without the spline.
    """

    transform: WideTransform
    narrow_index: np.ndarray
    wide_index: np.ndarray
    narrow_xy: np.ndarray
    wide_xy: np.ndarray
    residual_wide: np.ndarray
    homography_rms: float
    distortion_cv_rms: float | None = None
    homography_cv_rms: float | None = None


class _Homography:
    def __init__(self, h):
        self.h = h

    def __call__(self, xy):
        return apply_homography(self.h, xy)


def _per_star(fwhm, index: np.ndarray) -> np.ndarray:
    f = np.asarray(fwhm, float)
    return np.full(len(index), float(f)) if f.ndim == 0 else f[index]


def _mad_sigma(r: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(r - np.median(r)))) if len(r) else 0.0


def _spread_subset(xy: np.ndarray, max_nodes: int, extent: tuple[float, float]) -> np.ndarray:
    """At most ``max_nodes`` indices spread over the field (first come per grid cell)."""
    n = len(xy)
    if n <= max_nodes:
        return np.arange(n)
    cells = int(np.ceil(np.sqrt(max_nodes)))
    cx = np.clip((xy[:, 0] / extent[0] * cells).astype(int), 0, cells - 1)
    cy = np.clip((xy[:, 1] / extent[1] * cells).astype(int), 0, cells - 1)
    _, first = np.unique(cy * cells + cx, return_index=True)
    rest = np.setdiff1d(np.arange(n), first)
    return np.sort(np.r_[first, rest[: max(0, max_nodes - len(first))]])


def _fit_spline(nxy, resid, smoothing, origin, norm):
    return DistortionSpline(centres=nxy, displacement=resid, smoothing=smoothing, origin=origin,
                            norm=norm)


def _choose_spline(nxy, wxy, h, origin, norm, rng, smoothings, folds=5):
    """Cross-validated smoothing; returns (smoothing or None, cv rms spline, cv rms homography)."""
    n = len(nxy)
    fold = rng.permutation(n) % folds
    err_h = []
    err_s = {s: [] for s in smoothings}
    for f in range(folds):
        tr, te = fold != f, fold == f
        hf = fit_projective(nxy[tr], wxy[tr])
        res_tr = wxy[tr] - apply_homography(hf, nxy[tr])
        base = apply_homography(hf, nxy[te])
        err_h.append(np.sum((wxy[te] - base) ** 2))
        for s in smoothings:
            sp = _fit_spline(nxy[tr], res_tr, s, origin, norm)
            err_s[s].append(np.sum((wxy[te] - base - sp(nxy[te])) ** 2))
    cv_h = float(np.sqrt(np.sum(err_h) / n))
    cv = {s: float(np.sqrt(np.sum(v) / n)) for s, v in err_s.items()}
    best = min(cv, key=cv.get)
    if cv[best] < 0.95 * cv_h:
        return best, cv[best], cv_h
    return None, cv[best], cv_h


def refine_model(
    narrow_xy: np.ndarray,
    wide_xy: np.ndarray,
    initial,
    *,
    narrow_image: np.ndarray | None = None,
    wide_image: np.ndarray | None = None,
    narrow_fwhm: float | None = None,
    wide_fwhm: float | None = None,
    narrow_shape: tuple[int, int] | None = None,
    exclude: np.ndarray | None = None,
    tol: float = 3.0,
    distortion: bool = True,
    max_spline_nodes: int = 400,
    min_pairs: int = 6,
    seed: int = 0,
    narrow_refined: np.ndarray | None = None,
) -> RefinedModel:
    """Pair all stars under ``initial`` (narrow -> wide callable) and fit the final model.

    Parameters
    ----------
    narrow_xy, wide_xy : ndarray, (n, 2)
        All detected star positions.
    initial : callable
        Rough narrow -> wide map (the matcher's similarity).
    narrow_image, wide_image : ndarray, optional
        Detection images, for windowed centroids of the pairs (skipped if None).
    narrow_fwhm, wide_fwhm : float or ndarray, optional
        Star FWHM in each image (px; one value, or one per star of the list),
        for the centroid windows.
    narrow_shape : (int, int)
        ``(height, width)`` of the narrow image (coordinate normalisation).
    exclude : ndarray of bool, optional
        Per narrow star: pair it but keep it out of the final fits (e.g. saturated
        in either image), as long as enough other pairs remain for a homography.
    tol : float
        First pairing tolerance in wide pixels.
    distortion : bool
        Fit the thin-plate spline on top of the homography.
    max_spline_nodes : int
        At most this many pairs (spread over the field) carry the spline.
    min_pairs : int
        Fewest pairs accepted.
    seed : int
        Seed of the cross-validation folds.
    narrow_refined : ndarray, (n, 2), optional
        The narrow stars' windowed centroids already measured (one per star of
        ``narrow_xy``, e.g. kept for a reference used again): the pairs take theirs
        instead of measuring them in ``narrow_image``.

    Raises
    ------
    ValueError
        Fewer than ``min_pairs`` pairs.
    """
    narrow_xy = np.asarray(narrow_xy, float)
    wide_xy = np.asarray(wide_xy, float)
    if narrow_shape is None:
        narrow_shape = (narrow_xy[:, 1].max() + 1, narrow_xy[:, 0].max() + 1)
    hh, ww = narrow_shape
    origin = np.array([(ww - 1) / 2.0, (hh - 1) / 2.0])
    norm = float(np.hypot(hh, ww) / 2.0)
    model = initial
    flip = getattr(initial, "flip", None)
    ni = wj = np.zeros(0, int)
    # Pair, fit, re-pair: each round's model (homography, plus a stiff spline when
    # there are enough pairs) predicts the outer stars better, so they join.
    n_prev = -1
    for _ in range(8):
        ni, wj = pair_stars(model(narrow_xy), wide_xy, tol)
        if len(ni) < max(4, min_pairs):
            raise ValueError(f"only {len(ni)} star pairs survive the refinement")
        h = fit_projective(narrow_xy[ni], wide_xy[wj], flip)
        model = _Homography(h)
        if distortion and len(ni) >= 20:
            res = wide_xy[wj] - apply_homography(h, narrow_xy[ni])
            nodes = _spread_subset(narrow_xy[ni], max_spline_nodes, (ww, hh))
            spline = _fit_spline(narrow_xy[ni][nodes], res[nodes], 0.1, origin, norm)
            model = WideTransform(homography=h, distortion=spline)
        r = np.hypot(*(model(narrow_xy[ni]) - wide_xy[wj]).T)
        tol = max(1.0, min(tol, 5 * _mad_sigma(r) + 3 * np.median(r)))
        if len(ni) == n_prev:
            break
        n_prev = len(ni)

    if exclude is not None:
        clean = ~np.asarray(exclude, bool)[ni]
        if clean.sum() >= max(HOMOGRAPHY_MIN_PAIRS, min_pairs):
            ni, wj = ni[clean], wj[clean]
    nxy, wxy = narrow_xy[ni], wide_xy[wj]
    if narrow_refined is not None:
        nxy = np.asarray(narrow_refined, float)[ni]
    elif narrow_image is not None and narrow_fwhm is not None:
        nxy = windowed_centroids(narrow_image, nxy, _per_star(narrow_fwhm, ni))
    if wide_image is not None and wide_fwhm is not None:
        wxy = windowed_centroids(wide_image, wxy, _per_star(wide_fwhm, wj))
    for _ in range(5):
        h = fit_projective(nxy, wxy, flip)
        d = apply_homography(h, nxy) - wxy
        # robust sigma per axis; a pair beyond 4 sigma (P = 3e-4 for Gaussian errors) goes
        sigma = max(0.01, _mad_sigma(np.r_[d[:, 0], d[:, 1]]))
        keep = np.hypot(*d.T) < 4 * sigma
        if keep.all() or keep.sum() < max(4, min_pairs):
            break
        nxy, wxy, ni, wj = nxy[keep], wxy[keep], ni[keep], wj[keep]
    h = fit_projective(nxy, wxy, flip)
    res_h = wxy - apply_homography(h, nxy)
    h_rms = float(np.sqrt(np.mean(np.sum(res_h**2, axis=1))))

    spline = None
    cv_s = cv_h = None
    if distortion and len(nxy) >= 20:
        nodes = _spread_subset(nxy, max_spline_nodes, (ww, hh))
        rng = np.random.default_rng(seed)
        smoothings = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
        best, cv_s, cv_h = _choose_spline(nxy[nodes], wxy[nodes], h, origin, norm, rng, smoothings)
        if best is not None:
            spline = _fit_spline(nxy[nodes], res_h[nodes], best, origin, norm)
    transform = WideTransform(homography=h, distortion=spline)
    resid = transform(nxy) - wxy
    return RefinedModel(transform=transform, narrow_index=ni, wide_index=wj, narrow_xy=nxy,
                        wide_xy=wxy, residual_wide=resid, homography_rms=h_rms,
                        distortion_cv_rms=cv_s, homography_cv_rms=cv_h)
