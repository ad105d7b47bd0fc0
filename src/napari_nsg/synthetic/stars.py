"""Star catalogues: positions, a realistic flux distribution and colours."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .psf import PSF

__all__ = ["StarCatalog", "StarList", "observed_stars", "random_catalog", "star_colours"]


@dataclass(frozen=True)
class StarCatalog:
    """Stars of a simulated sky, before any frame-specific factor.

    Attributes
    ----------
    x, y : ndarray, shape (n,)
        Positions in the sky frame's pixel coordinates (pixel centres at integers).
    flux : ndarray, shape (n, c)
        Flux per channel in the catalogue's unit (ADU per second at transmission 1
        for sequences; ADU in the narrow image for pairs).
    """

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class StarList:
    """The stars as they appear in one simulated image (the truth for photometry tests).

    Attributes
    ----------
    x, y : ndarray, shape (n,)
        Star centres in this image's pixel coordinates (pixel centres at integers).
    flux : ndarray, shape (n, c)
        Total flux per channel in ADU in this image (sum of the star's pixels,
        noise-free, before saturation; stars cut by the frame edge lose the part
        outside).
    peak : ndarray, shape (n, c)
        Noise-free value of the star's brightest pixel, star alone (no background).
    saturated : ndarray of bool, shape (n,)
        True when ``peak`` plus the noise-free background and extended signal at the
        star reaches the saturation level in any channel.
    id : ndarray of int, shape (n,)
        Index of the star in the sky catalogue: the same star has the same id in all
        frames of a sequence and in both images of a pair.
    """

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    peak: np.ndarray
    saturated: np.ndarray
    id: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


def star_colours(rng: np.random.Generator, n: int, channels: int) -> np.ndarray:
    """Per-channel flux multipliers, shape (n, channels), green = 1.

    A colour index ``ci`` ~ N(0.6, 0.35) (B-V like) makes red stars brighter in R
    and fainter in B: ``R = 10^(0.2 (ci - 0.6))``, ``B = 10^(-0.3 (ci - 0.6))``.
    """
    if channels == 1:
        return np.ones((n, 1))
    ci = rng.normal(0.6, 0.35, n) - 0.6
    return np.stack([10 ** (0.2 * ci), np.ones(n), 10 ** (-0.3 * ci)], axis=1)


def power_law_fluxes(
    rng: np.random.Generator, n: int, flux_range: tuple[float, float], slope: float
) -> np.ndarray:
    """Fluxes with a magnitude distribution ``dN/dm ~ 10^(slope m)`` between two fluxes.

    With ``slope`` 0.35 dex/mag (a typical star count slope) there are ~2.2 times as
    many stars per magnitude one magnitude fainter, i.e. ``N(>F) ~ F^(-2.5 slope)``.
    """
    fmin, fmax = float(flux_range[0]), float(flux_range[1])
    if not 0 < fmin < fmax:
        raise ValueError(f"star flux range must satisfy 0 < min < max, not {flux_range!r}")
    a = 2.5 * slope
    u = rng.random(n)
    # inverse CDF of the truncated Pareto distribution of the flux
    lo, hi = fmin**-a, fmax**-a
    return (lo - u * (lo - hi)) ** (-1.0 / a)


def random_catalog(
    rng: np.random.Generator,
    bounds: tuple[float, float, float, float],
    *,
    n_stars: int,
    flux_range: tuple[float, float],
    slope: float,
    n_bright: int,
    bright_range: tuple[float, float],
    channels: int,
) -> StarCatalog:
    """Uniformly placed stars with power-law fluxes plus a few very bright ones.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random stream (the catalogue is a pure function of it and the arguments).
    bounds : (xmin, xmax, ymin, ymax)
        Region where star centres are placed.
    n_stars : int
        Number of ordinary stars, fluxes from :func:`power_law_fluxes`.
    flux_range : (min, max)
        Flux range of the ordinary stars (green / mono channel).
    slope : float
        Magnitude-distribution slope (dex per magnitude).
    n_bright : int
        Extra bright stars, fluxes log-uniform in ``bright_range`` (these are the
        ones that saturate).
    channels : int
        1 or 3; colours from :func:`star_colours`.
    """
    xmin, xmax, ymin, ymax = bounds
    n = int(n_stars) + int(n_bright)
    x = rng.uniform(xmin, xmax, n)
    y = rng.uniform(ymin, ymax, n)
    flux = np.empty(n)
    if n_stars:
        flux[:n_stars] = power_law_fluxes(rng, int(n_stars), flux_range, slope)
    if n_bright:
        lo, hi = np.log(bright_range[0]), np.log(bright_range[1])
        flux[n_stars:] = np.exp(rng.uniform(lo, hi, int(n_bright)))
    colours = star_colours(rng, n, channels)
    return StarCatalog(x=x, y=y, flux=flux[:, None] * colours)


def observed_stars(
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    psf: PSF,
    level: np.ndarray,
    saturation: float,
    ids: np.ndarray,
) -> StarList:
    """The :class:`StarList` of stars rendered with ``psf``.

    ``level`` (n, c) is the noise-free background plus extended signal at each
    star; a star is saturated when its peak pixel plus ``level`` reaches
    ``saturation`` in any channel (neighbouring stars are ignored).
    """
    peak = flux * psf.peak_fraction(x, y)[:, None]
    saturated = np.any(peak + level >= saturation, axis=1)
    return StarList(x=x, y=y, flux=flux, peak=peak, saturated=saturated, id=np.asarray(ids))
