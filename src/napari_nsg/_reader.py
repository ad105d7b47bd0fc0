"""napari reader for FITS (.fits .fit .fts .fz .fits.gz, any case) and XISF frames."""

from __future__ import annotations

import os
from collections.abc import Callable

from ._layers import image_layer

_SUFFIXES = (".fits", ".fit", ".fts", ".fz", ".fits.gz", ".fit.gz", ".fts.gz", ".xisf")


def napari_get_reader(path: str | list[str]) -> Callable | None:
    """Return a reader for ``path`` if every file looks like a frame we read.

    Cheap checks only (the name); never raises.
    """
    try:
        paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
        if paths and all(_our_suffix(p) for p in paths):
            return read_frames
    except TypeError:  # not a path nor a list of paths (None, a number): not ours
        pass
    return None


def _our_suffix(path) -> bool:
    name = os.fspath(path)
    return isinstance(name, str) and name.lower().endswith(_SUFFIXES)


def read_frames(path: str | list[str]) -> list[tuple]:
    """Read each frame into an image layer; the header and metadata go to ``layer.metadata``.
    A FITS cube whose plane count is neither mono nor colour (a saved stack layer) opens
    as one stack layer.

    Raises
    ------
    napari_nsg.io.FrameError
        For a file that cannot be read; napari shows the message.
    """
    from .io import PlanesError, read_cube, read_frame
    from .io.read import frame_stem

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers = []
    for p in paths:
        try:
            frame = read_frame(p)
        except PlanesError:  # a stack of frames (e.g. a saved stack layer): one stack layer
            data, header = read_cube(p)
            metadata = {"path": os.fspath(p), "header": header}
            layers.append(image_layer(data, frame_stem(p), metadata, colour=False))
            continue
        metadata = {
            "path": os.fspath(frame.path),
            "header": frame.header,
            "meta": frame.meta.to_dict(),
        }
        layers.append(image_layer(frame.data, frame_stem(frame.path), metadata))
    _orient_viewer()
    return layers


def _orient_viewer() -> None:
    """Show FITS row 0 at the bottom (like DS9) in the viewer the frames open in,
    when the plugin's display setting asks for it (the default) and the viewer is
    still empty: a viewer the user already arranged is left as it is."""
    try:
        from napari import current_viewer

        from ._widgets._layers import default_row0_bottom, set_row0_bottom
    except ImportError:  # napari face without napari (a library user): nothing to orient
        return
    viewer = current_viewer()
    if viewer is not None and len(viewer.layers) == 0 and default_row0_bottom():
        set_row0_bottom(viewer, True)
