"""What a photutils user would write: Background2D maps, DAOStarFinder stars, aperture sums.

* :func:`background_map` - ``Background2D`` (sigma-clipped median per box, 3x3 median filter),
  no-data (0) masked;
* :func:`remove_gradient` - one image minus its background map (plus the map's median);
* :func:`normalize` - a target brought to a reference: both background-subtracted, the target
  scaled by the median flux ratio of the reference's brightest stars, the reference's background
  added back.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from astropy.stats import SigmaClip, sigma_clipped_stats
from photutils.aperture import CircularAperture, aperture_photometry
from photutils.background import Background2D, MedianBackground
from photutils.detection import DAOStarFinder

BOXES = (64, 128, 256)
FILTER_SIZE = 3
CLIP_SIGMA = 3.0
#: Stars: detection threshold (background sigmas), how many of the brightest, aperture radius (FWHM).
DETECT_SIGMA = 10.0
N_STARS = 30
APERTURE_FWHM = 2.5
#: Stars whose peak exceeds this fraction of the frame's maximum count as saturated.
SATURATED = 0.7


def background_map(image: np.ndarray, box: int) -> tuple[np.ndarray, float]:
    """Background2D map (``box`` px boxes) and the median background RMS."""
    box = int(min(box, *image.shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bkg = Background2D(image, box, filter_size=FILTER_SIZE, mask=image == 0,
                           sigma_clip=SigmaClip(sigma=CLIP_SIGMA), bkg_estimator=MedianBackground())
    return np.asarray(bkg.background, dtype=np.float32), float(bkg.background_rms_median)


def remove_gradient(image: np.ndarray, box: int) -> np.ndarray:
    """``image - background + median(background)`` (no-data stays 0)."""
    model, _ = background_map(image, box)
    return np.where(image != 0, image - model + np.median(model), 0).astype(np.float32)


def _stars(image: np.ndarray, rms: float, fwhm: float) -> np.ndarray:
    """Positions of the brightest unsaturated DAOStarFinder stars away from the edges."""
    found = DAOStarFinder(fwhm=fwhm, threshold=DETECT_SIGMA * rms)(image)
    if found is None:
        return np.zeros((0, 2))
    found.sort("flux", reverse=True)
    xy = np.column_stack([found["x_centroid"], found["y_centroid"]])
    margin = 3 * APERTURE_FWHM * fwhm
    h, w = image.shape
    ok = np.asarray(found["peak"]) < SATURATED * np.nanmax(image)
    ok &= (xy[:, 0] > margin) & (xy[:, 0] < w - margin) & (xy[:, 1] > margin) & (xy[:, 1] < h - margin)
    return xy[ok][:N_STARS]


@dataclass
class Normalized:
    """A target brought to the reference by :func:`normalize`."""

    corrected: np.ndarray
    scale: float
    n_stars: int


def normalize(reference: np.ndarray, target: np.ndarray, *, box: int = 64,
              fwhm: float = 3.0) -> Normalized:
    """Background-subtract both, scale the target by the median star-flux ratio, add the reference's map."""
    ref_map, ref_rms = background_map(reference, box)
    tgt_map, _ = background_map(target, box)
    ref_flat, tgt_flat = reference - ref_map, target - tgt_map
    xy = _stars(ref_flat, ref_rms, fwhm)
    aperture = CircularAperture(xy, APERTURE_FWHM * fwhm)
    ref_flux = np.asarray(aperture_photometry(ref_flat, aperture)["aperture_sum"])
    tgt_flux = np.asarray(aperture_photometry(tgt_flat, aperture)["aperture_sum"])
    good = (ref_flux > 0) & (tgt_flux > 0)
    scale = float(np.median(ref_flux[good] / tgt_flux[good])) if good.any() else float("nan")
    corrected = np.where(target != 0, scale * tgt_flat + ref_map, 0).astype(np.float32)
    return Normalized(corrected, scale, int(good.sum()))


def median_scale(reference: np.ndarray, target: np.ndarray) -> float:
    """The naive alternative: ratio of the sigma-clipped medians of the two frames."""
    ref_med = sigma_clipped_stats(reference[reference != 0])[1]
    tgt_med = sigma_clipped_stats(target[target != 0])[1]
    return float(ref_med / tgt_med)
