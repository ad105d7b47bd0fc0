"""Observation metadata parsed from a FITS header."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from astropy.io import fits

EXPOSURE_KEYS = ("EXPTIME", "EXPOSURE", "ELAPTIME")
ALTITUDE_KEYS = ("ALTITUDE", "OBJCTALT", "CENTALT", "ALT_OBJ", "TELALT")
ARCSEC_PER_RADIAN = 206264.80624709636


@dataclass
class FrameMetadata:
    """What a frame's header says about how it was taken.

    Every field is ``None`` when the header does not give it.

    Attributes
    ----------
    exposure : float or None
        Exposure time in seconds (EXPTIME, EXPOSURE or ELAPTIME).
    date_obs : str or None
        DATE-OBS as written.
    time : datetime or None
        DATE-OBS parsed (UTC), including the old ``dd/mm/yy`` form.
    filter : str or None
        FILTER, stripped.
    altitude : float or None
        Altitude of the target in degrees (ALTITUDE, OBJCTALT, CENTALT, ALT_OBJ, TELALT).
    airmass : float or None
        AIRMASS, else computed from the altitude (Kasten & Young 1989).
    airmass_source : str or None
        ``"header"`` or ``"altitude"``.
    pixel_size : float or None
        XPIXSZ in micrometres (including binning).
    focal_length : float or None
        FOCALLEN in millimetres.
    image_scale : float or None
        Arcseconds per pixel, from pixel size and focal length, else from a
        celestial WCS (CD/CDELT), PIXSCALE/SECPIX, or a scanned plate's
        PLTSCALE and XPIXELSZ.
    image_scale_source : str or None
        Which of those gave it.
    bayer_pattern : str or None
        BAYERPAT (e.g. ``"RGGB"``) as it applies to the array's row 0, i.e. after
        XBAYROFF/YBAYROFF and a BOTTOM-UP ROWORDER are taken into account.
    noise : dict
        NOISExx values by channel index (PixInsight's Gaussian noise estimates).
    noise_algorithm : dict
        NOISEAxx algorithm names by channel index.
    """

    exposure: float | None = None
    date_obs: str | None = None
    time: datetime | None = None
    filter: str | None = None
    altitude: float | None = None
    airmass: float | None = None
    airmass_source: str | None = None
    pixel_size: float | None = None
    focal_length: float | None = None
    image_scale: float | None = None
    image_scale_source: str | None = None
    bayer_pattern: str | None = None
    noise: dict[int, float] = field(default_factory=dict)
    noise_algorithm: dict[int, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain JSON-ready values (the time as ISO text)."""
        d = asdict(self)
        d["time"] = self.time.isoformat() if self.time else None
        return d


_COMMENTARY = ("", "COMMENT", "HISTORY")


class _Cards:
    """The readable cards of a header: value and comment of each keyword's first card.

    astropy parses a card's value only when asked, and raises for one it cannot
    parse (e.g. a bit flip in a number); such a card is left out here and its
    keyword listed in ``unreadable``, so it reads as missing.
    """

    def __init__(self, header: fits.Header, unreadable: list[str] | None = None):
        self.values: dict = {}
        self.comments: dict[str, str] = {}
        self.unreadable = [] if unreadable is None else unreadable
        for card in header.cards:
            key = card.keyword
            if key in _COMMENTARY or key in self.values:
                continue
            try:
                value, comment = card.value, card.comment
            except Exception:  # astropy raises several types for a corrupt card
                if key not in self.unreadable:
                    self.unreadable.append(key)
                continue
            self.values[key], self.comments[key] = value, comment

    def get(self, key: str, default=None):
        """The value of ``key``, or ``default`` when missing or unreadable."""
        return self.values.get(key, default)


def _number(header: _Cards, key: str) -> float | None:
    value = header.get(key)
    if isinstance(value, bool) or value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _first_number(header: _Cards, keys) -> float | None:
    for key in keys:
        value = _number(header, key)
        if value is not None:
            return value
    return None


def airmass_from_altitude(altitude_deg: float) -> float | None:
    """Relative airmass for an apparent altitude in degrees (Kasten & Young 1989).

    Returns None for altitudes at or below the horizon.
    """
    if altitude_deg is None or altitude_deg <= 0:
        return None
    return 1.0 / (
        math.sin(math.radians(altitude_deg)) + 0.50572 * (altitude_deg + 6.07995) ** -1.6364
    )


def parse_date_obs(text) -> datetime | None:
    """Parse DATE-OBS: ISO 8601 (with or without fraction/zone) or ``dd/mm/yy``."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    if not text:
        return None
    m = re.fullmatch(r"(\d{2})/(\d{2})/(\d{2})", text)
    if m:  # the pre-2000 FITS form: years 1900-1999
        day, month, year = (int(g) for g in m.groups())
        try:
            return datetime(1900 + year, month, day, tzinfo=timezone.utc)
        except ValueError:
            return None
    iso = text.rstrip("Z")
    m = re.fullmatch(r"(.*T\d{2}:\d{2}:\d{2})(\.\d+)?", iso)
    if m and m.group(2) and len(m.group(2)) > 7:  # Python takes at most 6 decimals
        iso = m.group(1) + m.group(2)[:7]
    try:
        value = datetime.fromisoformat(iso)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _wcs_scale(header: _Cards) -> float | None:
    """Arcsec/pixel from a celestial WCS (CD matrix or CDELT), if there is one."""
    ctype = str(header.get("CTYPE1", ""))
    if not ("RA" in ctype or "LON" in ctype or "GLON" in ctype):
        return None
    cd11, cd12 = _number(header, "CD1_1"), _number(header, "CD1_2")
    cd21, cd22 = _number(header, "CD2_1"), _number(header, "CD2_2")
    if None not in (cd11, cd22):
        det = abs(cd11 * cd22 - (cd12 or 0.0) * (cd21 or 0.0))
        return math.sqrt(det) * 3600.0 if det > 0 else None
    c1, c2 = _number(header, "CDELT1"), _number(header, "CDELT2")
    if c1 and c2:
        return math.sqrt(abs(c1 * c2)) * 3600.0
    return None


def _plate_scale(header: _Cards) -> float | None:
    """Arcsec/pixel of a scanned plate (DSS): PLTSCALE [\"/mm] x XPIXELSZ [um]."""
    plate, pixel = _number(header, "PLTSCALE"), _number(header, "XPIXELSZ")
    return plate * pixel * 1e-3 if plate and pixel else None


_BAYER = ("RGGB", "BGGR", "GRBG", "GBRG")


def shift_bayer_pattern(pattern: str, dx: int = 0, dy: int = 0) -> str:
    """The 2x2 pattern seen from a pixel offset by (dx, dy) (only parity matters)."""
    grid = [[pattern[0], pattern[1]], [pattern[2], pattern[3]]]
    return "".join(grid[(r + dy) % 2][(c + dx) % 2] for r in range(2) for c in range(2))


def _bayer_pattern(header: _Cards, height: int | None) -> str | None:
    pattern = str(header.get("BAYERPAT", "") or "").strip().upper()
    if pattern not in _BAYER:
        return None
    dx = int(_number(header, "XBAYROFF") or 0)
    dy = int(_number(header, "YBAYROFF") or 0)
    pattern = shift_bayer_pattern(pattern, dx, dy)
    roworder = str(header.get("ROWORDER", "") or "").strip().upper()
    if roworder == "BOTTOM-UP" and height is not None:
        # The pattern is given for the image drawn bottom-up: its first drawn
        # row is the array's last row, so row 0 of the array sits (height-1)
        # rows further down the drawn image.
        pattern = shift_bayer_pattern(pattern, 0, (height - 1) % 2)
    return pattern


def parse_metadata(
    header: fits.Header, height: int | None = None, unreadable: list[str] | None = None
) -> FrameMetadata:
    """Read the observation metadata the pipeline uses from a FITS header.

    Parameters
    ----------
    header : astropy.io.fits.Header
        The image header.
    height : int, optional
        Number of rows of the image; needed to interpret ``ROWORDER = BOTTOM-UP``
        for Bayer frames.
    unreadable : list of str, optional
        Receives the keywords of cards whose value cannot be parsed; they are
        treated as missing (none of the metadata is needed to read the pixels).

    Returns
    -------
    FrameMetadata
    """
    header = _Cards(header, unreadable)
    meta = FrameMetadata()
    for key in EXPOSURE_KEYS:
        meta.exposure = _number(header, key)
        if meta.exposure is not None:
            if "minute" in str(header.comments.get(key, "")).lower():  # e.g. DSS plate headers
                meta.exposure *= 60.0
            break
    date = header.get("DATE-OBS")
    meta.date_obs = str(date).strip() if date is not None else None
    meta.time = parse_date_obs(meta.date_obs)
    filt = header.get("FILTER")
    meta.filter = str(filt).strip() if filt is not None and str(filt).strip() else None
    meta.altitude = _first_number(header, ALTITUDE_KEYS)
    airmass = _number(header, "AIRMASS")
    if airmass is not None and airmass >= 1.0 - 1e-6:
        meta.airmass, meta.airmass_source = airmass, "header"
    elif meta.altitude is not None:
        meta.airmass = airmass_from_altitude(meta.altitude)
        meta.airmass_source = "altitude" if meta.airmass is not None else None
    meta.pixel_size = _number(header, "XPIXSZ")
    meta.focal_length = _number(header, "FOCALLEN")
    if meta.pixel_size and meta.focal_length and meta.pixel_size > 0 and meta.focal_length > 0:
        meta.image_scale = ARCSEC_PER_RADIAN * meta.pixel_size * 1e-3 / meta.focal_length
        meta.image_scale_source = "XPIXSZ/FOCALLEN"
    else:
        for source, value in (
            ("WCS", _wcs_scale(header)),
            ("PIXSCALE", _number(header, "PIXSCALE") or _number(header, "SECPIX")),
            ("PLTSCALE/XPIXELSZ", _plate_scale(header)),
        ):
            if value is not None and value > 0:
                meta.image_scale, meta.image_scale_source = value, source
                break
    meta.bayer_pattern = _bayer_pattern(header, height)
    for key, value in header.values.items():
        m = re.fullmatch(r"NOISE(A?)(\d\d)", key)
        if not m:
            continue
        index = int(m.group(2))
        if m.group(1):
            meta.noise_algorithm[index] = str(value).strip()
        else:
            number = _number(header, key)
            if number is not None and number > 0:
                meta.noise[index] = number
    return meta
