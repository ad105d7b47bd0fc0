"""Turning frames into napari layer-data tuples (no Qt, no napari import)."""

from __future__ import annotations

import numpy as np

CHANNEL_COLORMAPS = ("red", "green", "blue")
CURVATURE_COLORMAP = "RdBu_r"  # diverging: blue below zero, white at zero, red above
GRADIENT_COLORMAP = "viridis"
CURVATURE_PERCENTILE = 99.5  # symmetric limits: this percentile of |curvature|
GRADIENT_PERCENTILES = (0.1, 99.9)  # the gradient's own range, a few outlier pixels aside
LIMIT_SAMPLE = 500_000  # pixels sampled for display statistics
KINDS = ("sky", "gradient", "curvature", "mask")


def _valid_sample(data: np.ndarray) -> np.ndarray:
    """A subsample of the finite, non-zero (not no-data) pixels."""
    flat = np.asarray(data).ravel()
    step = max(1, flat.size // LIMIT_SAMPLE)
    sample = flat[::step]
    return sample[np.isfinite(sample) & (sample != 0)]


def display_limits(data: np.ndarray) -> tuple[float, float]:
    """Display limits that show the sky, faint stars and nebulosity of linear data.

    IRAF's zscale (astropy's ``ZScaleInterval``) on a subsample of the valid
    (non-zero, finite) pixels, with the upper limit raised to at least 10 noise
    sigmas above the sky so a very flat frame is not stretched into noise.
    """
    from astropy.stats import mad_std
    from astropy.visualization import ZScaleInterval

    sample = _valid_sample(data)
    if sample.size == 0:
        return 0.0, 1.0
    lo, hi = ZScaleInterval().get_limits(sample)
    sky = float(np.median(sample))
    hi = max(float(hi), sky + 10.0 * float(mad_std(sample)))
    return _inside(lo, hi, sample)


def _inside(lo: float, hi: float, sample: np.ndarray) -> tuple[float, float]:
    """``(lo, hi)`` clipped to the sample's range, never empty."""
    dmin, dmax = float(sample.min()), float(sample.max())
    lo, hi = max(float(lo), dmin), min(float(hi), dmax)
    if not hi > lo:
        lo, hi = dmin, dmax
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def gradient_limits(data: np.ndarray) -> tuple[float, float]:
    """Limits that stretch a gradient model over its own range (a smooth surface:
    its 0.1-99.9 percentiles, so a few edge pixels do not flatten it)."""
    sample = _valid_sample(data)
    if sample.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(sample, GRADIENT_PERCENTILES)
    return _inside(lo, hi, sample)


def curvature_limits(data: np.ndarray) -> tuple[float, float]:
    """Symmetric limits ``(-a, a)`` around zero, ``a`` the 99.5th percentile of
    ``|curvature|``, so small curvature is visible on the diverging colormap."""
    sample = _valid_sample(data)
    if sample.size == 0:
        return -1.0, 1.0
    a = float(np.percentile(np.abs(sample), CURVATURE_PERCENTILE))
    if not a > 0:
        a = float(np.abs(sample).max()) or 1.0
    return -a, a


def display_kwargs(data: np.ndarray, kind: str = "sky") -> dict:
    """Colormap and contrast limits of one channel by the project's conventions.

    Parameters
    ----------
    data : ndarray
        One channel ``(y, x)`` (or a stack displayed with one stretch).
    kind : {"sky", "gradient", "curvature", "mask"}
        "sky": zscale in gray; "gradient": its own range in viridis; "curvature":
        diverging colormap centred on zero, symmetric limits; "mask": 0..1.
    """
    if kind == "sky":
        return {"colormap": "gray", "contrast_limits": display_limits(data)}
    if kind == "gradient":
        return {"colormap": GRADIENT_COLORMAP, "contrast_limits": gradient_limits(data)}
    if kind == "curvature":
        return {"colormap": CURVATURE_COLORMAP, "contrast_limits": curvature_limits(data)}
    if kind == "mask":
        return {"colormap": "gray", "contrast_limits": (0.0, 1.0)}
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def image_layer(data: np.ndarray, name: str, metadata: dict | None = None, **kwargs) -> tuple:
    """A layer-data tuple for a mono ``(y, x)`` / stack or a colour ``(c, y, x)`` frame.

    Colour frames become one layer per channel (``channel_axis=0``), coloured
    red/green/blue and blended additively, each with its own stretch. Pass
    ``colour=False`` for a stack of three mono frames.
    """
    meta = dict(metadata or {})
    add = {"name": name, "metadata": meta}
    colour = kwargs.pop("colour", True)
    if colour and data.ndim == 3 and data.shape[0] == 3:
        add.update(
            channel_axis=0,
            name=[f"{name} [{c}]" for c in "RGB"],
            colormap=list(CHANNEL_COLORMAPS),
            blending="additive",
            contrast_limits=[display_limits(ch) for ch in data],
        )
    else:
        add.update(colormap="gray", contrast_limits=display_limits(data))
    add.update(kwargs)
    return (data, add, "image")
