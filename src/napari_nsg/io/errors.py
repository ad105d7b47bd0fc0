"""The one error type for unusable inputs and refused outputs."""

from __future__ import annotations

import os


class FrameError(Exception):
    """A frame (or an output path) cannot be used.

    The message always names the file and the reason, so the command line can
    print it as it is, without a traceback.

    Parameters
    ----------
    path : str or os.PathLike or None
        The file concerned.
    reason : str
        Why it cannot be used, in words a user understands.
    """

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = None if path is None else os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path else reason)

    def __reduce__(self):
        """Pickled as its path and reason (e.g. from a batch's reading process)."""
        return type(self), (self.path, self.reason)


class PlanesError(FrameError):
    """A FITS image with a number of planes that is neither mono nor colour: a stack of
    frames, not one frame (:func:`napari_nsg.io.read.read_cube` reads it as a stack)."""


class OutputExistsError(FrameError):
    """An output file exists and overwriting was not asked for."""


class MosaicError(FrameError):
    """A raw colour (Bayer) mosaic where colour pixels are needed: it must be debayered."""


class FrameWarning(UserWarning):
    """A frame was read, but part of it was unusable (e.g. an unparsable metadata card).

    The message names the file and what was ignored; front ends may show it
    without the source line Python adds by default.
    """
