"""Scoring a correction against the simulator's truth (tests, demo, benchmarks).

MSGR on a :class:`~napari_nsg.synthetic.SimulatedPair`:

* stars are masked where their noise-free light exceeds half a noise sigma,
  grown by 3 px;
* the image is fitted as ``alpha * nebula + beta`` (the true extended signal);
* what is left is smoothed (normalised Gaussian, sigma 16 px); its
  peak-to-peak over the frame divided by the peak-to-peak of the true narrow
  gradient is the **residual fraction** (about 0.9-1.0 before MSGR);
* the **nebula correlation** is that of the smoothed image with the smoothed
  true nebula; **nebula kept** compares how the image scales the large-scale
  (sigma 64 px) and the small-scale parts of the true nebula (a collapsing
  fit slope removes large-scale nebula and lowers it).
"""

from __future__ import annotations

import cv2
import numpy as np


def _smooth_masked(a: np.ndarray, w: np.ndarray, sigma: float = 16.0) -> np.ndarray:
    num = cv2.GaussianBlur(np.where(w, a, 0).astype(np.float32), (0, 0), sigma)
    den = cv2.GaussianBlur(w.astype(np.float32), (0, 0), sigma)
    return np.where(den > 0.2, num / np.maximum(den, 1e-6), np.nan)


def _channel(a: np.ndarray, c: int) -> np.ndarray:
    return a if a.ndim == 2 else a[c]


def pair_truth(pair, c: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The true nebula of the narrow image (channel ``c``) and the star-free mask."""
    h, w = pair.narrow.shape[-2:]
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    nebula = pair.nebula.evaluate(xx, yy)[c].astype(np.float32)
    stars = _channel(pair.narrow_signal, c) - nebula
    mask = stars > 0.5 * float(pair.narrow_noise_sigma[c])
    mask = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    return nebula, ~mask


def residual_fraction(pair, image: np.ndarray, c: int = 0) -> float:
    """Peak-to-peak of the smoothed residual gradient over that of the true gradient."""
    nebula, ok = pair_truth(pair, c)
    img = _channel(image, c)
    ok &= np.isfinite(img) & (img != 0)
    design = np.column_stack([nebula[ok], np.ones(ok.sum())])
    coef, *_ = np.linalg.lstsq(design, img[ok], rcond=None)
    res = _smooth_masked(img - coef[0] * nebula - coef[1], ok)
    return float((np.nanmax(res) - np.nanmin(res)) / np.ptp(_channel(pair.narrow_gradient, c)))


def nebula_correlation(pair, image: np.ndarray, c: int = 0) -> float:
    """Correlation of the smoothed, star-masked image with the smoothed true nebula."""
    nebula, ok = pair_truth(pair, c)
    a, b = _smooth_masked(_channel(image, c), ok), _smooth_masked(nebula, ok)
    v = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[v], b[v])[0, 1])


def nebula_kept(pair, image: np.ndarray, c: int = 0) -> float:
    """Scale of the large-scale nebula relative to its small-scale part in ``image`` (1 = kept)."""
    nebula, ok = pair_truth(pair, c)
    img = _channel(image, c)
    large = cv2.GaussianBlur(nebula, (0, 0), 64)
    design = np.column_stack([large[ok], (nebula - large)[ok], np.ones(ok.sum())])
    coef, *_ = np.linalg.lstsq(design, img[ok], rcond=None)
    return float(coef[0] / coef[1])


#: Spacing (narrow px) of the grid on which :func:`true_registration` samples the true map.
TRUE_MAP_STEP = 16
#: Matched stars :func:`true_registration` lists (the brightest unsaturated ones in both).
TRUE_STARS = 100


def _common_stars(pair) -> tuple[np.ndarray, np.ndarray]:
    """True positions of the brightest unsaturated stars in both images (narrow, wide px)."""
    n, w = pair.narrow_stars, pair.wide_stars
    _, i_n, i_w = np.intersect1d(n.id, w.id, return_indices=True)
    keep = ~n.saturated[i_n] & ~w.saturated[i_w]
    i_n, i_w = i_n[keep], i_w[keep]
    order = np.argsort(-n.flux[i_n].sum(axis=1))[:TRUE_STARS]
    i_n, i_w = i_n[order], i_w[order]
    return (np.column_stack([n.x[i_n], n.y[i_n]]), np.column_stack([w.x[i_w], w.y[i_w]]))


def true_registration(pair):
    """A :class:`~napari_nsg.core.registration.Registration` from the simulator's exact geometry.

    The wide image resampled onto the narrow grid with a homography fitted to
    the true map (exact without distortion), so that MSGR's later steps can be
    measured apart from the registration (``msgr(..., registration=...)``).
    ``narrow_xy`` / ``wide_xy`` hold the true positions of up to
    :data:`TRUE_STARS` stars seen in both images, as a star registration would.
    """
    from ..core.registration import Registration, apply_registration
    from ..core.registration.transforms import WideTransform, fit_homography

    h, w = pair.narrow.shape[-2:]
    yy, xx = np.mgrid[0:h:TRUE_MAP_STEP, 0:w:TRUE_MAP_STEP].astype(float)
    wx, wy = pair.transform.narrow_to_wide(xx.ravel(), yy.ravel())
    tf = WideTransform(fit_homography(np.column_stack([xx.ravel(), yy.ravel()]),
                                      np.column_stack([wx, wy])))
    registered, coverage = apply_registration(pair.wide, tf, (h, w))
    narrow_xy, wide_xy = _common_stars(pair)
    return Registration(
        transform=tf, scale_ratio=pair.scale_ratio, rotation_deg=pair.rotation_deg,
        flip=pair.flip, residual_px=0.0, residual_homography_px=0.0, n_pairs=len(narrow_xy),
        narrow_xy=narrow_xy, wide_xy=wide_xy, n_stars_narrow=len(pair.narrow_stars),
        n_stars_wide=len(pair.wide_stars), distortion=False,
        scale_hint=None, scale_range=(1.5, 6.0), registered=registered, coverage=coverage,
        coverage_fraction=float(coverage.mean()))
