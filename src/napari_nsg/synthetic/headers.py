"""FITS headers of simulated frames (the keywords capture software writes)."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
from astropy.io import fits

from napari_nsg.io import airmass_from_altitude

__all__ = ["airmass", "frame_header", "iso_time", "pixel_scale_arcsec"]

CHANNEL_NAMES = {1: ("L",), 3: ("R", "G", "B")}


def airmass(altitude_deg: float) -> float:
    """The AIRMASS written for an altitude: Kasten & Young (1989), as
    :func:`napari_nsg.io.airmass_from_altitude` computes it."""
    value = airmass_from_altitude(float(altitude_deg))
    if value is None:
        raise ValueError(f"altitude must be above the horizon, not {altitude_deg!r} deg")
    return value


def pixel_scale_arcsec(pixel_size_um: float, focal_length_mm: float) -> float:
    """Pixel scale in arcsec/px: ``206.265 * XPIXSZ[um] / FOCALLEN[mm]``."""
    return 206.264806 * pixel_size_um / focal_length_mm


def iso_time(start: str, seconds: float) -> str:
    """``start`` (ISO 8601) plus ``seconds``, formatted like DATE-OBS (ms precision)."""
    t = datetime.fromisoformat(start) + timedelta(seconds=float(seconds))
    return t.isoformat(timespec="milliseconds")


def frame_header(
    *,
    exposure: float,
    date_obs: str,
    altitude: float | None,
    filter_name: str | None,
    pixel_size: float,
    focal_length: float,
    gain: float,
    bayer: str | None = None,
    noise: np.ndarray | None = None,
    extra: dict | None = None,
) -> fits.Header:
    """A header with the keywords NSG and capture programs use.

    Writes EXPTIME, DATE-OBS, OBJCTALT / ALTITUDE and AIRMASS (:func:`airmass`),
    FILTER, XPIXSZ / YPIXSZ (um), FOCALLEN (mm), EGAIN (e-/ADU), IMAGETYP,
    BAYERPAT (+ XBAYROFF / YBAYROFF) for a CFA frame, NOISE0c / NOISEA0c (the
    true background noise sigma per channel, in ADU) when ``noise`` is given,
    then ``extra``.
    """
    h = fits.Header()
    h["IMAGETYP"] = ("Light Frame", "type of image")
    h["OBJECT"] = ("SIMULATED FIELD", "napari-nsg sky simulator")
    h["INSTRUME"] = ("napari-nsg simulator", "simulated camera")
    h["EXPTIME"] = (float(exposure), "[s] exposure time")
    h["DATE-OBS"] = (date_obs, "UTC start of the exposure")
    if altitude is not None:
        h["OBJCTALT"] = (round(float(altitude), 6), "[deg] altitude of the target")
        h["ALTITUDE"] = (round(float(altitude), 6), "[deg] altitude of the target")
        h["AIRMASS"] = (round(airmass(altitude), 6), "Kasten & Young (1989)")
    if filter_name:
        h["FILTER"] = (filter_name, "filter name")
    h["XPIXSZ"] = (float(pixel_size), "[um] pixel width")
    h["YPIXSZ"] = (float(pixel_size), "[um] pixel height")
    h["FOCALLEN"] = (float(focal_length), "[mm] focal length")
    h["EGAIN"] = (float(gain), "[e-/ADU] electrons per ADU")
    if bayer:
        h["BAYERPAT"] = (bayer.upper(), "colour filter array pattern")
        h["XBAYROFF"] = (0, "x offset of the Bayer pattern")
        h["YBAYROFF"] = (0, "y offset of the Bayer pattern")
    if noise is not None:
        for c, sigma in enumerate(np.atleast_1d(noise)):
            h[f"NOISE{c:02d}"] = (float(sigma), f"true noise sigma of channel {c} [ADU]")
            h[f"NOISEA{c:02d}"] = ("SIMULATED", "noise from the simulator's truth")
    for key, value in (extra or {}).items():
        h[key] = value
    return h
