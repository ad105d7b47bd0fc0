"""Frame input and output.

``read_frame`` gives float32 pixels in the file's own units, the header and the
parsed metadata; ``write_frame`` writes float32 FITS atomically. Unusable
input raises :class:`FrameError`, whose message names the file and the reason.
"""

from .atomic import atomic_path, atomic_write_text, remove_partials
from .debayer import debayer
from .errors import FrameError, MosaicError, OutputExistsError, PlanesError
from .metadata import FrameMetadata, airmass_from_altitude, parse_metadata
from .read import FRAME_SUFFIXES, Frame, frame_kind, read_cube, read_frame
from .write import clean_header, write_frame

__all__ = [
    "FRAME_SUFFIXES",
    "Frame",
    "FrameError",
    "FrameMetadata",
    "MosaicError",
    "OutputExistsError",
    "PlanesError",
    "airmass_from_altitude",
    "atomic_path",
    "atomic_write_text",
    "clean_header",
    "debayer",
    "frame_kind",
    "parse_metadata",
    "read_cube",
    "read_frame",
    "remove_partials",
    "write_frame",
]
