"""NSG parameters: NormalizeScaleGradient's defaults and ranges, and the "auto" values.

Every parameter that NSG computes automatically from the image scale
(``research/nsg-algorithm.md`` section 3) is ``None`` here until
:meth:`NsgParameters.resolved` fills it in for one reference frame.

Fluxes that NSG uses in its formulas (aperture growth, rejection-circle growth)
are in PixInsight's normalized units, where 1 is the top of the data range.
This port keeps the input's own units (ADU), so it expresses those fluxes in
units of the reference frame's maximum pixel value (``flux_unit``): the same
thing when the brightest star saturates, and on the safe side (larger circles)
when nothing saturates.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

ARCSEC_PER_DEGREE = 3600.0
ARCSEC_PER_RADIAN = 206264.80624709636
DEFAULT_PIXEL_SIZE = 6.0  # um, NSG's fallback
DEFAULT_FOCAL_LENGTH = 1000.0  # mm, NSG's fallback
MAX_SMOOTHNESS = 4.0  # this smoothness means "fit a plane"
NO_REFERENCE_MODES = ("taper", "mask", "extrapolate")


class NsgParameterError(ValueError):
    """A parameter is out of its range; the message says which and why."""


# name: (low, high) inclusive; None = unbounded on that side
PHOTOMETRY_MODES = ("psf", "aperture", "corrected", "empirical")

RANGES: dict[str, tuple[float | None, float | None]] = {
    "smoothness": (-4.0, 4.0),
    "sample_size": (2, 150),
    "detection_threshold": (1.5, 1000.0),
    "star_search_radius": (0.1, 20.0),
    "max_offset": (0.0, 200.0),
    "star_flux_tolerance": (1.01, 2.0),
    "linear_range": (0.001, 1.0),
    "aperture_add": (0, 10),
    "aperture_growth": (0.0, 1.0),
    "aperture_gap": (0, 50),
    "aperture_bg_delta": (1, 50),
    "aperture_fwhm": (0.5, 10.0),
    "small_aperture_fwhm": (0.5, 10.0),
    "outlier_removal": (0.0, 20.0),
    "limit_sample_stars": (0.0, 100.0),
    "sample_star_growth": (0.0, 3.0),
    "max_samples": (100, 9000),
    "min_weight": (0.0, 0.9),
    "min_transmission": (0.0, 0.95),
    "pixel_size": (1e-3, None),
    "focal_length": (1e-3, None),
    "image_scale": (1e-4, None),
    "min_star_pairs": (1, None),
    "max_star_pairs": (3, None),
}

DESCRIPTIONS = {
    "smoothness": "log10 of the surface-spline smoothing (4 = a plane)",
    "sample_size": "side of the square gradient samples in px (None = auto)",
    "detection_threshold": "star detection threshold in noise sigmas",
    "star_search_radius": "how far (px) a target star may lie from its reference star",
    "max_offset": "largest whole-frame shift (px) looked for before matching (0 = none)",
    "star_flux_tolerance": "flux-ratio gate around the first scale estimate",
    "linear_range": "stars peaking above this fraction of the reference maximum are not measured",
    "aperture_add": "px added to every photometry aperture",
    "aperture_growth": "aperture growth per unit star flux (None = auto)",
    "aperture_gap": "px between aperture and background ring (None = auto)",
    "aperture_bg_delta": "width of the background ring in px (None = auto)",
    "aperture_fwhm": "smallest aperture radius in units of the frames' FWHM",
    "photometry": "'psf' (default): PSF-weighted fluxes with each frame's fitted profile "
                  "(less than half the apertures' scale error on simulated sequences; large "
                  "apertures where the two disagree); 'aperture': large apertures alone (about "
                  "half the time); 'corrected': small apertures plus a per-frame aperture "
                  "correction from a fitted Moffat profile; 'empirical': small apertures times "
                  "the mean large/small flux-ratio ratio of the pairs",
    "small_aperture_fwhm": "aperture radius (FWHM of the broader frame) with photometry="
                           "'corrected' or 'empirical'",
    "outlier_removal": "percent of star pairs removed as outliers",
    "limit_sample_stars": "percent of the reference stars (brightest) that reject samples (None = auto)",
    "sample_star_growth": "rejection-circle growth per unit star flux (None = auto)",
    "max_samples": "largest number of spline nodes at smoothness <= 0",
    "min_weight": "frames with relative weight at or below this are rejected",
    "min_transmission": "frames with relative transmission at or below this are rejected",
    "no_reference": "where the reference has no data: taper to a plane, mask, or extrapolate",
    "target_detection": "'guided': find target stars near reference stars; 'full': detect everywhere",
}


@dataclass(frozen=True)
class NsgParameters:
    """Parameters of NormalizeScaleGradient, with NSG 3.0.3's defaults.

    ``None`` means "auto": filled in from the image scale and the reference by
    :meth:`resolved`. Ranges are NSG's user-interface ranges (see ``RANGES``);
    :meth:`validate` raises :class:`NsgParameterError` for a value outside them.

    Attributes
    ----------
    smoothness : float
        log10 of the thin-plate spline smoothing; default -2.0, range -4..4;
        4 fits a least-squares plane instead of a spline.
    sample_size : int or None
        Side of the square gradient samples in pixels (2..150); None = auto:
        at least 100 um on the sensor and 27 arcsec, aiming at about 2000 samples.
    detection_threshold : float
        Star detection threshold in sigmas of the background noise.
    star_search_radius : float
        A target star is paired with a reference star only within this
        distance (px) after the whole-frame offset is removed (NSG: 2).
    max_offset : float
        Largest whole-frame shift between reference and target (px) that is
        looked for before matching. NSG expects registered frames (0 would
        disable the search); a found shift larger than the search radius gives
        a warning.
    star_flux_tolerance : float
        Pairs whose flux ratio is outside ``[m/tol, m*tol]`` around the first
        scale estimate ``m`` are dropped (1.5).
    linear_range : float
        Stars whose brightest pixel reaches ``linear_range * max(reference)``
        in either frame are not measured (NSG's "star peak value", 0.7).
    aperture_add, aperture_growth, aperture_gap, aperture_bg_delta :
        Photometry apertures: radius = star radius + add + growth * flux; the
        background ring starts ``gap`` px outside it and is ``bg_delta`` px wide.
    aperture_fwhm : float
        The star radius used for apertures is at least this many FWHM of the
        wider of the two frames (not in NSG, whose apertures follow the detector's
        star boxes): it keeps the enclosed flux fraction the same in both frames
        when the seeing differs.
    outlier_removal : float
        Percent of star pairs removed one by one, worst first (2 %).
    limit_sample_stars : float or None
        Percent of the reference stars, brightest first, whose rejection
        circles remove samples; None = auto (as many stars as 10 % of the bins).
    sample_star_growth : float or None
        Growth of the rejection circles with star flux; None = auto (the
        brightest star's circle grows by at most 135 arcsec).
    max_samples : int
        Most spline nodes (NSG: 2000, fewer as smoothness approaches 4); more
        samples are binned into weighted super-samples.
    min_weight, min_transmission : float
        Rejection limits on the relative weight and transmission (0.25, 0.75).
    pixel_size, focal_length, image_scale :
        Camera pixel size (um), focal length (mm), image scale (arcsec/px);
        None = from the reference header, else NSG's 6 um and 1000 mm.
    no_reference : {"taper", "mask", "extrapolate"}
        What the correction does where the reference has no data (so no samples):
        "taper" (default) blends the spline into its best-fit plane with the
        distance from the reference's data, "mask" makes those pixels no-data,
        "extrapolate" uses the spline as it is (NSG).
    target_detection : {"guided", "full"}
        "guided" (default) finds each target's stars in small windows around the
        reference stars, which is all the matching can use and much faster;
        "full" runs the detector on the whole target and matches the lists.
    min_star_pairs : int
        Fewer usable star pairs than this in a channel gives a warning (3).
    max_star_pairs : int or None
        Most star pairs measured, brightest first; None = NSG's
        ``max(250, n_stars / 20)``.
    photometry : {"psf", "aperture", "corrected", "empirical"}
        "psf" (the default): PSF weights with each frame's fitted profile, the large
        apertures as the check and the fall-back
        (:mod:`napari_nsg.core.stars.psf_photometry`; its settings:
        ``psf_photometry.SHIPPED_SETTINGS``);
        "aperture": every pair in apertures of ``aperture_fwhm`` alone (NSG's way, about
        half the time per target);
        "corrected": apertures of ``small_aperture_fwhm`` FWHM, each frame's
        fluxes divided by the fraction of the light they return, from a Moffat
        profile fitted to its brightest isolated stars
        (:mod:`napari_nsg.core.stars.aperture_correction`; not NSG's);
        "empirical": the same small apertures, their flux ratios times the mean
        ratio of the large- to the small-aperture flux ratios of the pairs, no
        PSF model (:mod:`napari_nsg.core.stars.empirical`; not NSG's).
    small_aperture_fwhm : float
        Aperture radius for ``photometry="corrected"`` or ``"empirical"``, in FWHM
        of the broader frame.
    """

    smoothness: float = -2.0
    sample_size: int | None = None
    detection_threshold: float = 5.0
    star_search_radius: float = 2.0
    max_offset: float = 10.0
    star_flux_tolerance: float = 1.5
    linear_range: float = 0.7
    aperture_add: int = 1
    aperture_growth: float | None = None
    aperture_gap: int | None = None
    aperture_bg_delta: int | None = None
    aperture_fwhm: float = 3.0
    outlier_removal: float = 2.0
    limit_sample_stars: float | None = None
    sample_star_growth: float | None = None
    max_samples: int = 2000
    min_weight: float = 0.25
    min_transmission: float = 0.75
    pixel_size: float | None = None
    focal_length: float | None = None
    image_scale: float | None = None
    no_reference: str = "taper"
    target_detection: str = "guided"
    min_star_pairs: int = 3
    max_star_pairs: int | None = None
    photometry: str = "psf"
    small_aperture_fwhm: float = 1.5

    def __post_init__(self) -> None:
        self.validate()

    # -- checks ---------------------------------------------------------------
    def validate(self) -> "NsgParameters":
        """Check every value against its range.

        Raises
        ------
        NsgParameterError
            Naming the parameter, its value and the allowed range.
        """
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("no_reference", "target_detection", "photometry"):
                continue
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise NsgParameterError(f"{f.name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise NsgParameterError(f"{f.name} must be finite, got {value!r}")
            low, high = RANGES.get(f.name, (None, None))
            if (low is not None and value < low) or (high is not None and value > high):
                span = f"{low if low is not None else '-inf'}..{high if high is not None else 'inf'}"
                raise NsgParameterError(f"{f.name} must be in {span}, got {value}")
        if self.no_reference not in NO_REFERENCE_MODES:
            raise NsgParameterError(
                f"no_reference must be one of {', '.join(NO_REFERENCE_MODES)}, got {self.no_reference!r}"
            )
        if self.target_detection not in ("guided", "full"):
            raise NsgParameterError(
                f"target_detection must be 'guided' or 'full', got {self.target_detection!r}"
            )
        if self.photometry not in PHOTOMETRY_MODES:
            raise NsgParameterError(
                f"photometry must be one of {', '.join(PHOTOMETRY_MODES)}, "
                f"got {self.photometry!r}"
            )
        return self

    @property
    def is_plane(self) -> bool:
        """True when the gradient model is a plane (smoothness 4)."""
        return self.smoothness >= MAX_SMOOTHNESS

    def with_values(self, **changes) -> "NsgParameters":
        """A copy with some values changed (validated)."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """The parameters as plain values (for reports)."""
        return asdict(self)

    def history(self) -> list[str]:
        """HISTORY lines that record the parameters in an output header."""
        return [f"NSG.{k} = {v}" for k, v in self.to_dict().items()]

    # -- auto values ----------------------------------------------------------
    def pixel_angle_arcsec(self, meta=None) -> float:
        """Image scale in arcsec/px: explicit, else from pixel size and focal length
        (parameters, then header), else the header's own image scale, else NSG's
        6 um / 1000 mm."""
        if self.image_scale:
            return float(self.image_scale)
        pixel = self.pixel_size or getattr(meta, "pixel_size", None)
        focal = self.focal_length or getattr(meta, "focal_length", None)
        if pixel and focal and pixel > 0 and focal > 0:
            return ARCSEC_PER_RADIAN * pixel * 1e-3 / focal
        scale = getattr(meta, "image_scale", None)
        if scale:
            return float(scale)
        pixel = pixel or DEFAULT_PIXEL_SIZE
        focal = focal or DEFAULT_FOCAL_LENGTH
        return ARCSEC_PER_RADIAN * pixel * 1e-3 / focal

    def resolved(
        self,
        *,
        shape: tuple[int, int],
        meta=None,
        max_star_flux: float = 0.0,
        n_ref_stars: int = 0,
    ) -> NsgParameters:
        """Fill in every "auto" value for one reference frame (NSG section 3).

        Parameters
        ----------
        shape : (height, width)
            Frame size.
        meta : FrameMetadata, optional
            The reference's metadata (pixel size, focal length, image scale).
        max_star_flux : float
            The reference's brightest star flux in ``flux_unit`` (see module doc).
        n_ref_stars : int
            Number of stars detected in the reference.

        Returns
        -------
        NsgParameters
            With no ``None`` left except ``pixel_size``/``focal_length`` when the
            header lacks them; ``image_scale`` is always set.
        """
        scale = self.pixel_angle_arcsec(meta)
        pixel_size = self.pixel_size or getattr(meta, "pixel_size", None) or DEFAULT_PIXEL_SIZE
        h, w = shape
        changes: dict = {"image_scale": scale}

        def angular(arcsec: float) -> int:
            return int(round(arcsec / scale))

        if self.aperture_gap is None:
            changes["aperture_gap"] = int(min(50, max(1, angular(1.8))))
        if self.aperture_bg_delta is None:
            changes["aperture_bg_delta"] = int(min(50, max(5, angular(7.2))))
        if self.aperture_growth is None:
            changes["aperture_growth"] = _growth(max(2, angular(25.2)), max_star_flux)
        if self.sample_size is None:
            smallest = max(int(round(100.0 / pixel_size)), 2, angular(27.0))
            size = max(smallest, int(math.floor(math.sqrt(w * h / 2000.0))))
            size = min(size, 150, max(2, min(h, w) // 3))
            changes["sample_size"] = int(size)
        size = changes.get("sample_size", self.sample_size)
        if self.limit_sample_stars is None:
            bins = (w // size) * (h // size)
            pct = 100.0 if n_ref_stars <= 0 else 100.0 * (bins / 10.0) / n_ref_stars
            changes["limit_sample_stars"] = float(min(100.0, round(pct, 2)))
        if self.sample_star_growth is None:
            changes["sample_star_growth"] = min(
                3.0, _growth(max(2, angular(135.0)), max_star_flux)
            )
        return replace(self, **changes)


def _growth(limit_px: int, max_star_flux: float) -> float:
    """NSG's growth rate: 0.25 unless the brightest star would grow past ``limit_px``."""
    if max_star_flux > 0 and 0.25 * max_star_flux > limit_px:
        return min(1.0, limit_px / max_star_flux)
    return 0.25


def max_samples_for(smoothness: float, max_samples: int = 2000) -> int | None:
    """NSG's node limit: ``max_samples`` at smoothness <= 0, linearly down to 500
    at 4; None (no binning) for a plane."""
    if smoothness >= MAX_SMOOTHNESS:
        return None
    if smoothness <= 0:
        return int(max_samples)
    low = min(500, max_samples)
    return int(low + round((max_samples - low) * (1.0 - smoothness / MAX_SMOOTHNESS)))
