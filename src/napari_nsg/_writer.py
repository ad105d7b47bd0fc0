"""napari writer: an image layer as float32 FITS, keeping the header it was read with."""

from __future__ import annotations

from pathlib import Path

from astropy.io import fits


def write_fits(path: str, data, meta: dict) -> list[str]:
    """Write one image layer to ``path`` as float32 FITS (atomically).

    The FITS header the layer was read with (``meta["metadata"]["header"]``) is
    kept. napari's save dialog has already asked before replacing a file.
    """
    from .io import write_frame

    header = (meta.get("metadata") or {}).get("header")
    if header is not None and not isinstance(header, fits.Header):
        header = fits.Header(header)
    name = meta.get("name") or Path(path).stem
    out = write_frame(path, data, header, history=[f"napari-nsg: saved from layer '{name}'"],
                      overwrite=True)
    return [str(out)]
