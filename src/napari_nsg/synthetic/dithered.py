"""Dithered, unregistered sub-frames of one star field, with the exact geometric truth.

Frame ``k`` sees the sky through a rigid transform: a rotation by ``angle_k``
about the frame centre, then a shift ``(dx_k, dy_k)``; one frame can be turned
by 180 degrees (a meridian flip). Frame 0 is the reference (identity). The
truth is :meth:`DitheredFrames.reference_to_frame`: where a reference pixel
lands in frame ``k`` (the map ``register`` must recover). Each frame has a
flat sky, a linear gradient, a Moffat PSF and Poisson + read noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits

from .psf import PSF, render_stars

__all__ = ["DitheredFrames", "simulate_dithered"]

#: Margin of the star field around the frame (px): covers shifts and rotations.
FIELD_MARGIN = 0.35


@dataclass
class DitheredFrames:
    """Simulated frames and their truth.

    Attributes
    ----------
    frames : list of ndarray, float32 (y, x)
    shape : (int, int)
    angle_deg, dx, dy : ndarray, (n,)
        Rotation (about the frame centre) and shift of each frame's view of
        the sky, relative to frame 0.
    star_xy : ndarray, (m, 2)
        Star positions in the reference (frame 0) pixel coordinates.
    star_flux : ndarray, (m,)
    sky, noise : float
        Sky level and per-pixel noise sigma at the sky level (ADU).
    headers : list of fits.Header
    """

    frames: list
    shape: tuple
    angle_deg: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    star_xy: np.ndarray
    star_flux: np.ndarray
    sky: float
    noise: float
    headers: list = field(default_factory=list)

    def reference_to_frame(self, k: int, xy: np.ndarray) -> np.ndarray:
        """Positions in frame ``k`` of reference pixel positions ``xy`` (n, 2)."""
        h, w = self.shape
        c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
        a = np.radians(self.angle_deg[k])
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        return (np.asarray(xy, float) - c) @ rot.T + c + np.array([self.dx[k], self.dy[k]])

    def write(self, out_dir, prefix: str = "dither") -> list:
        """Write the frames as float32 FITS; returns the paths (frame 0 first)."""
        from pathlib import Path

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for k, (data, header) in enumerate(zip(self.frames, self.headers)):
            p = out / f"{prefix}_{k:03d}.fits"
            fits.PrimaryHDU(data=data.astype(np.float32), header=header).writeto(p, overwrite=True)
            paths.append(p)
        return paths


def simulate_dithered(
    n_frames: int = 5,
    shape: tuple[int, int] = (400, 500),
    *,
    seed: int = 0,
    max_shift: float = 30.0,
    max_angle: float = 3.0,
    flip_frame: int | None = None,
    n_stars: int = 300,
    fwhm: float = 3.0,
    sky: float = 800.0,
    gradient: float = 40.0,
    read_noise: float = 5.0,
    flux_range: tuple[float, float] = (300.0, 60000.0),
) -> DitheredFrames:
    """Simulate ``n_frames`` dithered frames of one field (frame 0 is the reference).

    Parameters
    ----------
    n_frames : int
    shape : (ny, nx)
    seed : int
    max_shift : float
        Shifts drawn uniformly in +- this (px).
    max_angle : float
        Rotations drawn uniformly in +- this (degrees).
    flip_frame : int, optional
        This frame is turned by 180 degrees more (a meridian flip).
    n_stars : int
        Stars in the field around the reference frame.
    fwhm : float
        PSF FWHM (px), Moffat beta 4.
    sky, gradient, read_noise : float
        Sky level, linear gradient amplitude across the frame, read noise (ADU).
    flux_range : (float, float)
        Star fluxes, log-uniform.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    angle = rng.uniform(-max_angle, max_angle, n_frames)
    dx = rng.uniform(-max_shift, max_shift, n_frames)
    dy = rng.uniform(-max_shift, max_shift, n_frames)
    angle[0] = dx[0] = dy[0] = 0.0
    if flip_frame is not None:
        angle[flip_frame] += 180.0
    m = FIELD_MARGIN
    xy = np.column_stack([rng.uniform(-m * w, (1 + m) * w, n_stars),
                          rng.uniform(-m * h, (1 + m) * h, n_stars)])
    flux = np.exp(rng.uniform(*np.log(flux_range), n_stars))
    truth = DitheredFrames([], shape, angle, dx, dy, xy, flux, sky,
                           float(np.sqrt(sky + read_noise**2)))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    psf = PSF(fwhm)
    for k in range(n_frames):
        fxy = truth.reference_to_frame(k, xy)
        stars = render_stars(shape, fxy[:, 0], fxy[:, 1], flux, psf)
        tilt = rng.uniform(0, 2 * np.pi)
        grad = gradient * ((xx / w - 0.5) * np.cos(tilt) + (yy / h - 0.5) * np.sin(tilt))
        clean = stars + sky + grad
        noisy = rng.poisson(np.clip(clean, 0, None)).astype(np.float32)
        noisy += rng.normal(0, read_noise, shape).astype(np.float32)
        truth.frames.append(noisy)
        header = fits.Header()
        header["EXPTIME"] = 60.0
        header["DATE-OBS"] = f"2024-03-15T21:{k:02d}:00"
        header["FILTER"] = "L"
        truth.headers.append(header)
    return truth
