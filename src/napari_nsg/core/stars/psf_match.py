"""PSF matching of star stamps: the sharper frame convolved to the broader one's PSF.

The flux ratio of a star in two frames is the transmission ratio only when both
apertures enclose the same fraction of its light and the same fraction of its
neighbours' light. With the same radius in both frames that needs apertures so
large (several FWHM) that sky noise and the neighbours crossing the edge
dominate the error; with radii scaled to each frame's FWHM, the pixel grid and
the profile's wings break the scaling by a few tenths of a percent. Matching the
PSFs first removes both: after the sharper frame is convolved with a kernel
``K`` (unit sum) that turns its PSF into the broader frame's, any aperture
encloses the same fraction in both, neighbours included, so small apertures of
about one FWHM (close to the best signal to noise) can be used.

``K`` is fitted the way Alard & Lupton (1998) fit difference-imaging kernels: a
linear combination of Gaussians times low-order polynomials, found by weighted
least squares so that ``K * sharp`` reproduces ``broad`` over the cores of the
brightest unsaturated stars, each stamp background-subtracted, with one
rejection pass for stamps that do not fit (cosmic rays, variables, blends that
differ). Only stamps around the measured stars are convolved, never the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["KernelFit", "convolve_stamps", "fit_kernel", "gather_stamps", "kernel_basis"]

#: Gaussian widths of the basis, in units of the broad frame's PSF sigma.
BASIS_WIDTHS = (0.3, 0.6, 1.0)
#: Kernel half-size in units of the broad frame's PSF sigma (at least MIN_KERNEL_HALF px).
KERNEL_HALF_SIGMA = 3.0
MIN_KERNEL_HALF = 3
#: Stars used to fit the kernel (brightest first), and fewest for a fit.
FIT_STARS = 80
MIN_FIT_STARS = 8
#: Radius of the fitted core, in FWHM of the broad frame.
FIT_RADIUS_FWHM = 2.0
#: A stamp whose chi-square per pixel exceeds this times the median is dropped.
REJECT_CHI2 = 4.0
SIGMA_PER_FWHM = 1.0 / 2.3548200450309493


def fftconvolve(*args, **kwargs):
    """``scipy.signal.fftconvolve``, imported on first use (scipy.signal takes ~0.5 s to
    import, which every process that imports the star modules would pay)."""
    from scipy.signal import fftconvolve as convolve

    return convolve(*args, **kwargs)


@dataclass
class KernelFit:
    """A fitted matching kernel.

    Attributes
    ----------
    kernel : ndarray (k, k)
        Unit-sum kernel that turns the sharp frame's PSF into the broad frame's.
    kernel_sum : float
        Sum of the fitted kernel before normalization: the flux ratio
        broad / sharp of the fitting stars (a kernel-fit scale).
    n_stars : int
        Stamps used in the final fit.
    """

    kernel: np.ndarray
    kernel_sum: float
    n_stars: int


def kernel_basis(sigma_broad: float, half: int) -> np.ndarray:
    """Alard-Lupton basis: a delta and Gaussians times ``1, x^2 + y^2`` (even) and
    ``x, y`` (odd, for sub-pixel shifts), each of unit norm.

    Returns
    -------
    ndarray (nb, 2 half + 1, 2 half + 1)
    """
    off = np.arange(-half, half + 1, dtype=float)
    yy, xx = np.meshgrid(off, off, indexing="ij")
    r2 = xx * xx + yy * yy
    out = [np.where(r2 == 0, 1.0, 0.0)]
    for w in BASIS_WIDTHS:
        s = max(w * sigma_broad, 0.4)
        g = np.exp(-0.5 * r2 / (s * s))
        out += [g, g * r2 / (s * s)]
        if w == BASIS_WIDTHS[0]:
            out += [g * xx / s, g * yy / s]
    basis = np.array(out)
    return basis / np.sqrt(np.sum(basis**2, axis=(1, 2)))[:, None, None]


def gather_stamps(plane: np.ndarray, cx: np.ndarray, cy: np.ndarray, half: int) -> np.ndarray:
    """Square stamps ``(n, 2 half + 1, 2 half + 1)`` centred on integer pixels,
    float64, NaN outside the image (``plane`` holds NaN for no data)."""
    st, inside = window(plane, cx, cy, np.arange(-half, half + 1))
    return np.where(inside, st.astype(np.float64), np.nan)


def window(plane: np.ndarray, cx: np.ndarray, cy: np.ndarray, offs: np.ndarray):
    """Pixels of ``plane`` at offsets ``offs`` (rows and columns) around integer
    centres: ``(values, inside)``, edge pixels repeated where ``inside`` is False."""
    h, w = plane.shape
    rows = cy[:, None] + offs[None, :]
    cols = cx[:, None] + offs[None, :]
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    return plane[np.clip(rows, 0, h - 1)[:, :, None], np.clip(cols, 0, w - 1)[:, None, :]], inside


def convolve_stamps(stamps: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve each stamp with ``kernel``; pixels whose kernel footprint meets
    a NaN become NaN."""
    bad = ~np.isfinite(stamps)
    filled = np.where(bad, 0.0, stamps)
    out = fftconvolve(filled, kernel[None], mode="same", axes=(1, 2))
    if bad.any():
        foot = (kernel != 0).astype(float)
        touched = fftconvolve(bad.astype(float), foot[None], mode="same", axes=(1, 2)) > 0.5
        out[touched] = np.nan
    return out


def _background(stamps: np.ndarray, r2: np.ndarray, inner: float) -> tuple[np.ndarray, np.ndarray]:
    """Median level and robust sigma of each stamp outside radius ``inner``."""
    ring = stamps[:, r2 > inner * inner]
    level = np.nanmedian(ring, axis=1)
    sigma = 1.4826 * np.nanmedian(np.abs(ring - level[:, None]), axis=1)
    return level, sigma


def _solve(design: np.ndarray, target: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Weighted least squares over all stamps: ``design`` (n, nb, p), ``target`` (n, p)."""
    ata = np.einsum("nbp,ncp,np->bc", design, design, weight)
    atb = np.einsum("nbp,np,np->b", design, target, weight)
    return np.linalg.lstsq(ata, atb, rcond=1e-12)[0]


def fit_kernel(sharp: np.ndarray, broad: np.ndarray, fwhm_broad: float) -> KernelFit | None:
    """Fit the kernel that turns ``sharp`` star stamps into ``broad`` ones.

    Parameters
    ----------
    sharp, broad : ndarray (n, s, s)
        Stamps of the same stars (brightest first, unsaturated, no NaN in the
        core), centred on the same integer pixels; ``s`` must exceed the fitted
        core by the kernel's half-size.
    fwhm_broad : float
        FWHM of the broad frame (px).

    Returns
    -------
    KernelFit or None
        None with fewer than ``MIN_FIT_STARS`` usable stamps or a kernel whose
        sum is not positive.
    """
    sigma = fwhm_broad * SIGMA_PER_FWHM
    half = max(MIN_KERNEL_HALF, int(np.ceil(KERNEL_HALF_SIGMA * sigma)))
    basis = kernel_basis(sigma, half)
    size = sharp.shape[1]
    off = np.arange(size) - size // 2
    r2 = off[None, :] ** 2 + off[:, None] ** 2
    core = r2 <= (FIT_RADIUS_FWHM * fwhm_broad) ** 2
    lv_s, _ = _background(sharp, r2, size // 2 - 2)
    lv_b, sig_b = _background(broad, r2, size // 2 - 2)
    s0 = sharp - lv_s[:, None, None]
    b0 = broad - lv_b[:, None, None]
    ok = np.isfinite(lv_s) & np.isfinite(lv_b) & np.all(np.isfinite(s0[:, core]), axis=1) \
        & np.all(np.isfinite(b0[:, core]), axis=1) & (sig_b > 0)
    if ok.sum() < MIN_FIT_STARS:
        return None
    s0, b0, sig_b, lv_b = s0[ok], b0[ok], sig_b[ok], lv_b[ok]
    s0 = np.nan_to_num(s0)
    design = np.stack([fftconvolve(s0, bk[None], mode="same", axes=(1, 2))[:, core]
                       for bk in basis], axis=1)
    target = b0[:, core]
    # pixel variance: the sky's, plus the star's photon noise (ADU per electron
    # from the sky: sigma^2 / level, an upper bound)
    adu_per_e = np.clip(sig_b**2 / np.maximum(lv_b, 1e-30), 0.0, None)[:, None]
    adu_per_e = np.where(lv_b[:, None] > 5 * sig_b[:, None], adu_per_e, 0.0)
    weight = 1.0 / (sig_b[:, None] ** 2 + adu_per_e * np.clip(target, 0, None))
    use = np.ones(len(target), bool)
    for _ in range(2):
        coef = _solve(design[use], target[use], weight[use])
        resid = target - np.einsum("nbp,b->np", design, coef)
        chi2 = np.mean(resid**2 * weight, axis=1)
        use = chi2 <= REJECT_CHI2 * np.median(chi2[use])
        if use.sum() < MIN_FIT_STARS:
            return None
    coef = _solve(design[use], target[use], weight[use])
    kernel = np.tensordot(coef, basis, axes=1)
    total = float(kernel.sum())
    if not total > 0:
        return None
    return KernelFit(kernel / total, total, int(use.sum()))
