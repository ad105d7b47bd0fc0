"""Geometric models mapping narrow-image pixels to wide-image pixels.

Coordinates are 0-based ``(x, y)`` pixel positions with pixel centres on
integers. Every model maps *narrow -> wide* (the direction resampling needs:
for each narrow pixel, where to read the wide image).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import RBFInterpolator

__all__ = [
    "AFFINE_MIN_PAIRS",
    "HOMOGRAPHY_MIN_PAIRS",
    "DistortionSpline",
    "Similarity",
    "WideTransform",
    "apply_homography",
    "fit_affine",
    "fit_homography",
    "fit_projective",
    "fit_similarity",
]


@dataclass(frozen=True)
class Similarity:
    """``w = scale * R(angle) * M * n + (tx, ty)`` with ``M`` = identity, or ``diag(1, -1)`` if ``flip``.

    ``scale`` is wide pixels per narrow pixel (the inverse of the scale ratio).
    """

    scale: float
    angle: float
    flip: bool
    tx: float
    ty: float

    @property
    def complex_factor(self) -> complex:
        return self.scale * np.exp(1j * self.angle)

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, float)
        z = xy[:, 0] + 1j * xy[:, 1]
        if self.flip:
            z = np.conj(z)
        w = self.complex_factor * z + complex(self.tx, self.ty)
        return np.column_stack([w.real, w.imag])

    def matrix(self) -> np.ndarray:
        """The 3x3 homogeneous matrix."""
        c, s = self.scale * np.cos(self.angle), self.scale * np.sin(self.angle)
        f = -1.0 if self.flip else 1.0
        return np.array([[c, -s * f, self.tx], [s, c * f, self.ty], [0.0, 0.0, 1.0]])


def fit_similarity(src: np.ndarray, dst: np.ndarray, flip: bool) -> Similarity:
    """Least-squares similarity ``dst ~ S(src)`` with the given parity."""
    zs = src[:, 0] + 1j * src[:, 1]
    zd = dst[:, 0] + 1j * dst[:, 1]
    if flip:
        zs = np.conj(zs)
    ms, md = zs.mean(), zd.mean()
    a = np.sum((zd - md) * np.conj(zs - ms)) / max(np.sum(np.abs(zs - ms) ** 2), 1e-300)
    b = md - a * ms
    return Similarity(float(abs(a)), float(np.angle(a)), bool(flip), float(b.real), float(b.imag))


def _normaliser(xy: np.ndarray) -> np.ndarray:
    c = xy.mean(axis=0)
    d = np.sqrt(np.mean(np.sum((xy - c) ** 2, axis=1)))
    k = np.sqrt(2) / max(d, 1e-12)
    return np.array([[k, 0, -k * c[0]], [0, k, -k * c[1]], [0, 0, 1.0]])


def apply_homography(h: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Apply a 3x3 homography to ``(n, 2)`` points."""
    xy = np.asarray(xy, float)
    p = xy @ h[:, :2].T + h[:, 2]
    return p[:, :2] / p[:, 2:3]


def fit_homography(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Normalised DLT homography ``dst ~ H(src)`` (at least 4 points), H[2, 2] = 1."""
    src = np.asarray(src, float)
    dst = np.asarray(dst, float)
    if len(src) < 4:
        raise ValueError("a homography needs at least 4 point pairs")
    ts, td = _normaliser(src), _normaliser(dst)
    s = src @ ts[:2, :2].T + ts[:2, 2]
    d = dst @ td[:2, :2].T + td[:2, 2]
    n = len(s)
    a = np.zeros((2 * n, 9))
    a[0::2, 0:2] = s
    a[0::2, 2] = 1
    a[0::2, 6:8] = -d[:, :1] * s
    a[0::2, 8] = -d[:, 0]
    a[1::2, 3:5] = s
    a[1::2, 5] = 1
    a[1::2, 6:8] = -d[:, 1:2] * s
    a[1::2, 8] = -d[:, 1]
    if weights is not None:
        a *= np.repeat(np.sqrt(np.asarray(weights, float)), 2)[:, None]
    # the SVD of the 9x9 a.T a has a's right singular vectors (normalised coordinates keep it
    # well conditioned: within 1e-10 px of a's own SVD); a tall SVD or QR goes through threaded
    # LAPACK, 30-100 ms a call on a loaded machine, the 9x9 product and SVD well under 1 ms
    _, _, vt = np.linalg.svd(a.T @ a)
    hn = vt[-1].reshape(3, 3)
    h = np.linalg.inv(td) @ hn @ ts
    return h / h[2, 2]


def fit_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares affine ``dst ~ A(src)`` as a 3x3 matrix (at least 3 points)."""
    src = np.asarray(src, float)
    dst = np.asarray(dst, float)
    design = np.column_stack([src, np.ones(len(src))])
    coef, *_ = np.linalg.lstsq(design, dst, rcond=None)
    m = np.eye(3)
    m[:2, :] = coef.T
    return m


#: Fewest pairs for an affine model, and for a full homography; below, a similarity.
AFFINE_MIN_PAIRS = 12
HOMOGRAPHY_MIN_PAIRS = 30


def fit_projective(src: np.ndarray, dst: np.ndarray, flip: bool | None = None) -> np.ndarray:
    """The linear model the number of pairs supports, as a 3x3 matrix.

    A homography (8 parameters) from ``HOMOGRAPHY_MIN_PAIRS`` pairs, an affine
    map (6) from ``AFFINE_MIN_PAIRS``, else a similarity (4; its parity taken
    from ``flip``, or from the affine fit's determinant when None): with few
    pairs the extra freedom only fits the centroid noise.
    """
    n = len(src)
    if n >= HOMOGRAPHY_MIN_PAIRS:
        return fit_homography(src, dst)
    aff = fit_affine(src, dst)
    if n >= AFFINE_MIN_PAIRS:
        return aff
    if flip is None:
        flip = bool(np.linalg.det(aff[:2, :2]) < 0)
    return fit_similarity(src, dst, flip).matrix()


@dataclass
class DistortionSpline:
    """Smoothing thin-plate spline of the residual displacement (wide px) over narrow coordinates.

    Attributes
    ----------
    centres : ndarray, (n, 2)
        Narrow-pixel positions of the nodes.
    smoothing : float
        The spline's smoothing (in normalised coordinates, see :class:`scipy.interpolate.RBFInterpolator`).
    origin, norm : ndarray / float
        Coordinate normalisation: ``u = (xy - origin) / norm``.
    """

    centres: np.ndarray
    displacement: np.ndarray
    smoothing: float
    origin: np.ndarray
    norm: float

    def __post_init__(self) -> None:
        u = (self.centres - self.origin) / self.norm
        self._rbf = RBFInterpolator(u, self.displacement, kernel="thin_plate_spline",
                                    smoothing=self.smoothing, degree=1)

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        u = (np.asarray(xy, float) - self.origin) / self.norm
        return self._rbf(u)


@dataclass
class WideTransform:
    """The full narrow -> wide model: a homography plus an optional smooth distortion.

    Attributes
    ----------
    homography : ndarray, (3, 3)
    distortion : DistortionSpline or None
    """

    homography: np.ndarray
    distortion: DistortionSpline | None = None

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        """Wide-pixel positions of narrow-pixel positions ``(n, 2)``."""
        xy = np.asarray(xy, float).reshape(-1, 2)
        out = apply_homography(self.homography, xy)
        if self.distortion is not None:
            out = out + self.distortion(xy)
        return out

    def local_similarity(self, at: tuple[float, float]) -> tuple[float, float, bool]:
        """``(scale ratio, rotation in degrees, flip)`` of the model's Jacobian at ``at``.

        The scale ratio is narrow pixels per wide pixel; the rotation is the
        angle of the narrow -> wide map in pixel coordinates; a flip mirrors x
        before the rotation (``J = R(rotation) diag(-1, 1) / ratio``).
        """
        x0, y0 = at
        eps = 2.0
        pts = np.array([[x0 - eps, y0], [x0 + eps, y0], [x0, y0 - eps], [x0, y0 + eps]])
        w = self(pts)
        jx = (w[1] - w[0]) / (2 * eps)
        jy = (w[3] - w[2]) / (2 * eps)
        jac = np.column_stack([jx, jy])  # d(wide)/d(narrow)
        det = float(np.linalg.det(jac))
        flip = det < 0
        scale = np.sqrt(abs(det))
        # rotation of the proper part: for flip, jac = s R diag(-1, 1) (x mirrored first)
        m = jac @ np.diag([-1.0, 1.0]) if flip else jac
        angle = np.degrees(np.arctan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1]))
        return 1.0 / scale, float(angle), bool(flip)
