"""napari writer: an image layer as float32 FITS, keeping the header it was read with."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits

#: Colour channels kept from a napari RGB(A) layer (the alpha plane is dropped).
RGB_CHANNELS = 3
#: Last-axis lengths of a napari ``rgb=True`` layer: RGB or RGBA.
RGB_LAST_AXIS = (3, 4)
#: Characters of a FITS header card (a header's text from a file has no line breaks).
CARD_LENGTH = 80


def write_fits(path: str, data, meta: dict) -> list[str]:
    """Write one image layer to ``path`` as float32 FITS (atomically).

    The FITS header the layer was read with (``meta["metadata"]["header"]``) is
    kept. napari's save dialog has already asked before replacing a file, but the
    file the layer was read from (``meta["metadata"]["path"]``) is never replaced:
    saving headless (``layer.save``) would otherwise overwrite the raw frame without a
    question. An RGB(A) layer (colour on the last axis) is written as FITS colour
    planes (3, y, x), which the reader opens again; a stack of frames as a cube, which
    the reader opens as a stack layer; a multiscale layer as its full-resolution level.

    Raises
    ------
    napari_nsg.io.FrameError
        ``path`` is the layer's own input file, a folder, or in a missing folder.
    """
    from .io import write_frame
    from .io.atomic import refuse_inputs

    metadata = meta.get("metadata") or {}
    source = metadata.get("path")
    if source:
        refuse_inputs([path], [source])
    name = meta.get("name") or Path(path).stem
    history = [f"napari-nsg: saved from layer '{name}'"]
    if _multiscale(data, meta):
        history.append("napari-nsg: the full-resolution level of a multiscale layer")
    out = write_frame(path, _planes(data, meta), _header(metadata.get("header"), path),
                      history=history, overwrite=True)
    return [str(out)]


def _planes(data, meta: dict) -> np.ndarray:
    """The layer's data as (y, x) or (c, y, x): an RGB(A) layer's last axis moved first; of
    a multiscale layer, its full-resolution level."""
    if _multiscale(data, meta):
        data = data[0]
    array = np.asarray(data)
    if meta.get("rgb") and array.ndim == 3 and array.shape[-1] in RGB_LAST_AXIS:
        array = np.moveaxis(array[..., :RGB_CHANNELS], -1, 0)
    return array


def _multiscale(data, meta: dict) -> bool:
    """A multiscale layer's data: a sequence of arrays, the first the full resolution."""
    if meta.get("multiscale"):
        return True
    return isinstance(data, (list, tuple)) and len(data) > 1 and hasattr(data[0], "shape")


def _header(header, path: str) -> fits.Header | None:
    """The layer's header as a FITS header: a Header, a mapping or list of cards, or a
    header's text; anything else is dropped with a warning (the image is still saved)."""
    from .io.errors import FrameWarning

    if header is None or isinstance(header, fits.Header):
        return header
    try:
        if isinstance(header, str):
            blocks = "\n" not in header and len(header) % CARD_LENGTH == 0  # as in a file
            return fits.Header.fromstring(header, sep="" if blocks else "\n")
        return fits.Header(header)
    except (TypeError, ValueError, KeyError) as exc:
        warnings.warn(f"{path}: the layer's metadata['header'] is not a FITS header ({exc}); "
                      "saved without it", FrameWarning, stacklevel=3)
        return None
