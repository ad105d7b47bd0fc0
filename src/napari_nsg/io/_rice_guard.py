"""astropy's RICE_1 decoder kept inside its input on damaged tiles.

The decoder (cfitsio's ``fits_rdecomp``, compiled into astropy) checks that it has not run
past the end of a tile's compressed bytes only after each block of pixels; within a block
it reads on, and its count of leading zero bits reads byte after byte while they are 0.
On a damaged tile it reads the memory after the tile's bytes, and when that runs into an
unmapped page the process dies (SIGSEGV: one of 4000 fuzzed ``.fz`` mutants, now and then).
Here every tile is handed to it as a view of its bytes followed by PAD_BYTES of 0xFF: the
end it checks against is the tile's own, so a damaged tile is still refused ("hit end of
compressed byte stream"), but what it reads past that end within the block is the padding,
which stops the zero-bit count at once. A block of at most 32 pixels of at most 32 bits
reads under 200 bytes past the end. Valid tiles decode to the same bytes.

Installed when :mod:`napari_nsg.io.read` is imported; nothing happens if astropy's private
codec module is not where it is in astropy 6-8 (the fuzz tests would then show it).
"""

from __future__ import annotations

import numpy as np

#: Bytes of 0xFF after each tile's compressed bytes (a block reads < 200 past its end).
PAD_BYTES = 1024
_PAD = b"\xff" * PAD_BYTES


def _padded(decode):
    def decompress_rice_1_c(cbytes, blocksize, bytepix, tilesize):
        data = bytes(cbytes)
        view = np.frombuffer(data + _PAD, np.uint8)[: len(data)]  # read-only, padded after
        return decode(view, blocksize, bytepix, tilesize)

    decompress_rice_1_c.napari_nsg_guard = True
    return decompress_rice_1_c


def install() -> bool:
    """Wrap astropy's RICE_1 decoder (once); True when it is wrapped."""
    try:
        from astropy.io.fits.hdu.compressed import _codecs
    except ImportError:
        return False
    decode = getattr(_codecs, "decompress_rice_1_c", None)
    if decode is None:
        return False
    if not getattr(decode, "napari_nsg_guard", False):
        _codecs.decompress_rice_1_c = _padded(decode)
    return True
