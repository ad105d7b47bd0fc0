"""Turning frames into napari layer-data tuples (no Qt, no napari import)."""

from __future__ import annotations

import numpy as np

CHANNEL_COLORMAPS = ("red", "green", "blue")


def display_limits(data: np.ndarray) -> tuple[float, float]:
    """Display limits that show the sky, faint stars and nebulosity of linear data.

    IRAF's zscale (astropy's ``ZScaleInterval``) on a subsample of the valid
    (non-zero, finite) pixels, with the upper limit raised to at least 10 noise
    sigmas above the sky so a very flat frame is not stretched into noise.
    """
    from astropy.stats import mad_std
    from astropy.visualization import ZScaleInterval

    flat = np.asarray(data).ravel()
    step = max(1, flat.size // 500_000)
    sample = flat[::step]
    sample = sample[np.isfinite(sample) & (sample != 0)]
    if sample.size == 0:
        return 0.0, 1.0
    lo, hi = ZScaleInterval().get_limits(sample)
    sky = float(np.median(sample))
    hi = max(float(hi), sky + 10.0 * float(mad_std(sample)))
    if not hi > lo:
        hi = lo + 1.0
    return float(lo), float(hi)


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
