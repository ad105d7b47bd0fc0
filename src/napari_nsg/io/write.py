"""Writing float32 FITS frames atomically, keeping the input header."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

from .atomic import atomic_group, write_error
from .errors import FrameError

# Keywords that describe the old file's layout, not the observation: astropy
# writes the new ones from the data.
_STRUCTURAL = {
    "SIMPLE", "BITPIX", "EXTEND", "PCOUNT", "GCOUNT", "XTENSION", "BZERO", "BSCALE",
    "BLANK", "CHECKSUM", "DATASUM", "ZIMAGE", "ZBITPIX", "ZCMPTYPE", "ZQUANTIZ",
    "ZDITHER0", "ZSIMPLE", "ZEXTEND", "ZTENSION", "ZPCOUNT", "ZGCOUNT", "ZHECKSUM",
    "ZDATASUM", "ZBLANK", "ZSCALE", "ZZERO", "EXTNAME",
}
_STRUCTURAL_PREFIXES = ("NAXIS", "ZNAXIS", "ZTILE", "ZNAME", "ZVAL")


def clean_header(header: fits.Header | None) -> fits.Header:
    """A copy of ``header`` without layout keywords and with unparsable cards dropped."""
    out = fits.Header()
    if header is None:
        return out
    for card in header.cards:
        key = card.keyword
        if key in _STRUCTURAL or key.startswith(_STRUCTURAL_PREFIXES):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", VerifyWarning)
                card.verify("silentfix")
                str(card)  # forces formatting: raises for cards that cannot be written
        except Exception:
            continue
        out.append(card, end=True)
    return out


def _set_keyword(header: fits.Header, key: str, value) -> None:
    comment = None
    if isinstance(value, tuple):
        value, comment = value
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        value = str(value)
    if comment is None:
        header[key] = value
    else:
        header[key] = (value, comment)


def frame_hdu(
    data: np.ndarray,
    header: fits.Header | None = None,
    keywords: Mapping[str, object] | None = None,
    history: Iterable[str] = (),
    *,
    path: str | os.PathLike | None = None,
) -> fits.PrimaryHDU:
    """The float32 primary HDU that :func:`write_frame` writes (``path`` only names errors)."""
    data = np.asarray(data)
    if data.ndim not in (2, 3):
        raise FrameError(path, f"cannot write {data.ndim}-D data (shape {data.shape})")
    out_header = clean_header(header)
    if data.ndim == 3:
        for key in ("BAYERPAT", "XBAYROFF", "YBAYROFF"):
            out_header.remove(key, ignore_missing=True, remove_all=True)
    for key, value in (keywords or {}).items():
        _set_keyword(out_header, key, value)
    for line in history:
        out_header.add_history(str(line))
    return fits.PrimaryHDU(data=np.ascontiguousarray(data, dtype=np.float32), header=out_header)


def _write_hdu(hdu: fits.PrimaryHDU, tmp: Path, final: Path) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VerifyWarning)
            hdu.writeto(tmp, overwrite=True, output_verify="silentfix")
    except OSError as exc:
        raise write_error(final, exc) from None


def write_frames(hdus: Mapping[str | os.PathLike, fits.PrimaryHDU], *,
                 overwrite: bool = False) -> list[Path]:
    """Write several HDUs (from :func:`frame_hdu`) as one unit: all or none.

    Each is written under a temporary name; once all are complete they are
    renamed, and if that is interrupted the ones already renamed are removed
    (see :func:`~napari_nsg.io.atomic.atomic_group`).

    Raises
    ------
    OutputExistsError
        One exists and not ``overwrite`` (nothing written).
    OutputWriteError
        A write failed (full disk, permissions): names the file and the reason.
    """
    finals = [Path(p) for p in hdus]
    with atomic_group(finals, overwrite=overwrite) as temps:
        for hdu, tmp, final in zip(hdus.values(), temps, finals):
            _write_hdu(hdu, tmp, final)
    return finals


def write_frame(
    path: str | os.PathLike,
    data: np.ndarray,
    header: fits.Header | None = None,
    keywords: Mapping[str, object] | None = None,
    *,
    history: Iterable[str] = (),
    overwrite: bool = False,
) -> Path:
    """Write ``data`` as a float32 FITS file, atomically.

    Parameters
    ----------
    path : path-like
        Output file. Written under a temporary name in the same folder and
        renamed when complete, so an interrupted write leaves no half file.
    data : ndarray
        ``(y, x)`` or ``(c, y, x)``; stored as float32 (negative values kept).
    header : astropy.io.fits.Header, optional
        The input header to keep; layout keywords (BITPIX, NAXISn, BZERO, ...)
        are replaced by the ones of the new data.
    keywords : mapping, optional
        Keywords to add or replace: ``{"NSGREF": "ref.fits", "NWEIGHT": (0.9, "weight")}``.
    history : iterable of str
        HISTORY lines to append.
    overwrite : bool
        Replace an existing file; otherwise :class:`OutputExistsError` is raised.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    OutputWriteError
        The file could not be written (full disk...): names it and the reason.
    """
    hdu = frame_hdu(data, header, keywords, history, path=path)
    return write_frames({path: hdu}, overwrite=overwrite)[0]
