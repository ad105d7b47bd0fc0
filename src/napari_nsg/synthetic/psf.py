"""Point-spread functions and fast rendering of many stars.

Pixel convention (the whole simulator): pixel ``(x, y)`` is the array element
``[y, x]`` and its centre lies at the integer coordinates ``(x, y)``; it covers
``[x - 0.5, x + 0.5) x [y - 0.5, y + 0.5)``.

Each star is rendered on a small square stamp centred on its nearest pixel. The
stamp is normalised so that its pixels sum *exactly* to the star's flux (the PSF
wings beyond the stamp radius, chosen so that they are below a threshold in ADU,
are dropped and the rest renormalised). Stars whose stamp reaches past the frame
edge lose the part outside the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import erf

__all__ = ["PSF", "render_stars", "stamp_radius"]

#: Stamp radii in px: a star's radius is rounded up to one of these, so that
#: stars can be rendered in a few vectorised groups.
_RADIUS_LADDER = np.array([3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64])


@dataclass(frozen=True)
class PSF:
    """A circular point-spread function.

    Parameters
    ----------
    fwhm : float
        Full width at half maximum in pixels.
    kind : {"moffat", "gaussian"}
        Profile. The Gaussian is integrated exactly over each pixel (error
        functions); the Moffat profile ``(1 + r^2/alpha^2)^-beta`` is sampled at
        pixel centres.
    beta : float
        Moffat exponent (ignored for the Gaussian).
    """

    fwhm: float
    kind: str = "moffat"
    beta: float = 4.0

    def __post_init__(self) -> None:
        if self.kind not in ("moffat", "gaussian"):
            raise ValueError(f"PSF kind must be 'moffat' or 'gaussian', not {self.kind!r}")
        if not self.fwhm > 0:
            raise ValueError(f"PSF fwhm must be positive, not {self.fwhm!r}")
        if self.kind == "moffat" and not self.beta > 1:
            raise ValueError(f"Moffat beta must be > 1, not {self.beta!r}")

    @property
    def sigma(self) -> float:
        """Gaussian sigma with the same FWHM (px)."""
        return self.fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))

    @property
    def alpha(self) -> float:
        """Moffat core width alpha (px)."""
        return self.fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / self.beta) - 1.0))

    def density(self, r2: np.ndarray) -> np.ndarray:
        """Flux per px^2 at squared radius ``r2`` for a unit-flux star (continuous profile)."""
        r2 = np.asarray(r2, dtype=np.float64)
        if self.kind == "gaussian":
            s2 = self.sigma**2
            return np.exp(-0.5 * r2 / s2) / (2.0 * np.pi * s2)
        a2 = self.alpha**2
        return (self.beta - 1.0) / (np.pi * a2) * (1.0 + r2 / a2) ** (-self.beta)

    def radius(self, flux: np.ndarray, threshold: float) -> np.ndarray:
        """Radius (px) beyond which a star of ``flux`` contributes less than ``threshold`` ADU/px."""
        flux = np.maximum(np.asarray(flux, dtype=np.float64), 1e-30)
        if self.kind == "gaussian":
            s2 = self.sigma**2
            ratio = flux / (2.0 * np.pi * s2 * threshold)
            return np.sqrt(2.0 * s2 * np.log(np.maximum(ratio, 1.0)))
        a2 = self.alpha**2
        ratio = flux * (self.beta - 1.0) / (np.pi * a2 * threshold)
        return np.sqrt(a2 * (np.maximum(ratio, 1.0) ** (1.0 / self.beta) - 1.0))

    def stamps(self, fx: np.ndarray, fy: np.ndarray, radius: int) -> np.ndarray:
        """Unit-sum stamps for stars at sub-pixel offsets.

        Parameters
        ----------
        fx, fy : ndarray, shape (n,)
            Star position minus the stamp's central pixel, in [-0.5, 0.5].
        radius : int
            Stamp half-size; stamps are ``(2 radius + 1)`` px square.

        Returns
        -------
        ndarray, shape (n, 2 radius + 1, 2 radius + 1), float32
            ``stamp[i, j, k]`` is the fraction of star ``i``'s flux in the pixel at
            offset ``(k - radius, j - radius)`` from the central pixel.
        """
        offsets = np.arange(-radius, radius + 1, dtype=np.float64)
        if self.kind == "gaussian":
            px = self._gauss_1d(offsets, fx)
            py = self._gauss_1d(offsets, fy)
            return (py[:, :, None] * px[:, None, :]).astype(np.float32)
        a2 = self.alpha**2
        dx2 = ((offsets[None, :] - fx[:, None]) ** 2 / a2).astype(np.float32)
        dy2 = ((offsets[None, :] - fy[:, None]) ** 2 / a2).astype(np.float32)
        u = dy2[:, :, None] + dx2[:, None, :]
        u += np.float32(1.0)
        np.reciprocal(u, out=u)
        beta = float(self.beta)
        if beta == round(beta) and beta <= 16:
            out = _int_power(u, round(beta))
        else:
            out = np.power(u, np.float32(beta))
        out /= out.sum(axis=(1, 2), dtype=np.float64)[:, None, None].astype(np.float32)
        return out

    def _gauss_1d(self, offsets: np.ndarray, frac: np.ndarray) -> np.ndarray:
        edges = np.concatenate([offsets - 0.5, offsets[-1:] + 0.5])
        z = (edges[None, :] - frac[:, None]) / (self.sigma * np.sqrt(2.0))
        p = np.diff(0.5 * erf(z), axis=1)
        return p / p.sum(axis=1, keepdims=True)

    def peak_fraction(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Fraction of a star's flux in the pixel containing its centre (its brightest).

        Computed from the continuous profile (the rendered stamps agree to ~0.5 %:
        they are renormalised after truncation).
        """
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        fx = x - np.floor(x + 0.5)
        fy = y - np.floor(y + 0.5)
        if self.kind == "gaussian":
            s = self.sigma * np.sqrt(2.0)

            def frac(f):
                return 0.5 * (erf((0.5 - f) / s) + erf((0.5 + f) / s))

            return frac(fx) * frac(fy)
        return self.density(fx * fx + fy * fy)


def _int_power(u: np.ndarray, n: int) -> np.ndarray:
    """``u ** n`` for a small positive integer ``n`` by repeated squaring (fast, float32)."""
    result = None
    base = u
    while n:
        if n & 1:
            result = base.copy() if result is None else result * base
        n >>= 1
        if n:
            base = base * base
    return result


def stamp_radius(psf: PSF, flux: np.ndarray, threshold: float) -> np.ndarray:
    """Stamp half-size (px) per star: the PSF radius at ``threshold`` rounded up on a ladder.

    At least ``1.5 fwhm`` (and 3 px), at most 64 px.
    """
    r = psf.radius(flux, threshold)
    r = np.maximum(r, max(3.0, 1.5 * psf.fwhm))
    idx = np.searchsorted(_RADIUS_LADDER, np.ceil(r), side="left")
    return _RADIUS_LADDER[np.minimum(idx, len(_RADIUS_LADDER) - 1)]


def render_stars(
    shape: tuple[int, int],
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    psf: PSF,
    *,
    threshold: float = 0.05,
) -> np.ndarray:
    """Render stars into new float32 images.

    Parameters
    ----------
    shape : (ny, nx)
        Image shape.
    x, y : ndarray, shape (n,)
        Star centres in pixel coordinates (pixel centres at integers).
    flux : ndarray, shape (n,) or (n, c)
        Total flux per star (per channel) in ADU.
    psf : PSF
        Profile, the same for all stars and channels.
    threshold : float
        Stamps extend until the PSF falls below this many ADU/px (for the
        brightest channel of each star).

    Returns
    -------
    ndarray, shape (ny, nx) or (c, ny, nx), float32
        The sum of all stars; each fully visible star sums exactly to its flux.
    """
    ny, nx = shape
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    flux = np.asarray(flux, dtype=np.float64)
    mono = flux.ndim == 1
    flux2 = flux.reshape(len(x), 1 if mono else flux.shape[-1])
    nchan = flux2.shape[1]
    if len(x):
        ix = np.floor(x + 0.5).astype(np.int64)
        iy = np.floor(y + 0.5).astype(np.int64)
        radii = stamp_radius(psf, flux2.max(axis=1), threshold)
        # keep stars with flux whose stamp overlaps the frame
        keep = (flux2.max(axis=1) > 0) & (ix + radii >= 0) & (ix - radii <= nx - 1)
        keep &= (iy + radii >= 0) & (iy - radii <= ny - 1)
        ix, iy, radii, flux2 = ix[keep], iy[keep], radii[keep], flux2[keep]
        x, y = x[keep], y[keep]
    canvas = np.zeros((nchan, ny * nx), dtype=np.float32)
    if len(x):
        inner = (ix - radii >= 0) & (ix + radii <= nx - 1) & (iy - radii >= 0)
        inner &= iy + radii <= ny - 1
        for radius in np.unique(radii):
            r = int(radius)
            group = radii == radius
            sel = np.nonzero(group & inner)[0]
            if len(sel):
                stamps = psf.stamps(x[sel] - ix[sel], y[sel] - iy[sel], r)
                _accumulate(canvas, iy[sel] * nx + ix[sel], stamps, flux2[sel], r, nx)
            sel = np.nonzero(group & ~inner)[0]
            if len(sel):  # stamps crossing the frame edge: clip them
                stamps = psf.stamps(x[sel] - ix[sel], y[sel] - iy[sel], r)
                off = np.arange(-r, r + 1)
                px = (ix[sel, None] + off)[:, None, :]
                py = (iy[sel, None] + off)[:, :, None]
                ok = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
                flat = (py * nx + px)[ok]
                for c in range(nchan):
                    np.add.at(canvas[c], flat, (stamps * flux2[sel, c, None, None])[ok])
    canvas = canvas.reshape(nchan, ny, nx)
    return canvas[0] if mono else canvas


def _accumulate(
    canvas: np.ndarray,
    base: np.ndarray,
    stamps: np.ndarray,
    flux: np.ndarray,
    radius: int,
    width: int,
) -> None:
    """Add ``flux * stamps`` at flat positions ``base`` into ``canvas`` (nchan, npix).

    Stars sharing a central pixel are split into layers so that each fancy-index
    addition has unique targets.
    """
    order = np.argsort(base, kind="stable")
    sorted_base = base[order]
    starts = np.r_[True, sorted_base[1:] != sorted_base[:-1]]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
    layer = np.empty(len(order), dtype=np.int64)
    layer[order] = np.arange(len(order)) - group_start
    size = 2 * radius + 1
    for lay in range(int(layer.max()) + 1):
        idx = np.nonzero(layer == lay)[0]
        st = np.ascontiguousarray(stamps[idx].transpose(1, 2, 0))  # (size, size, n)
        b = base[idx]
        for c in range(canvas.shape[0]):
            weighted = st * flux[idx, c].astype(np.float32)
            target = canvas[c]
            for j in range(size):
                row = b + (j - radius) * width
                for k in range(size):
                    target[row + (k - radius)] += weighted[j, k]
