"""A bounded scan of a FITS file's structure, done before astropy touches it.

astropy trusts the header: a negative ``NAXIS2`` makes it loop over the same
HDU forever, an absurd ``TFIELDS`` makes header parsing hang, and a huge
``ZNAXIS2`` makes it allocate terabytes. :func:`find_image` reads only the
header blocks (2880 bytes, a bounded number of them) up to the image, checks
that every size the headers claim is possible for this file and below the
documented limits (``docs/reading-limits.md``), and says which HDU holds the
image. The cost is O(headers): the data is never read.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from math import ceil, prod
from typing import BinaryIO

from .errors import FrameError

BLOCK = 2880
"""Bytes in a FITS block; headers and data are padded to a multiple of it."""
CARD = 80
"""Bytes in a header card."""
MAX_HEADER_BLOCKS = 1000
"""Most blocks one header may span (36,000 cards)."""
MAX_HDUS = 1000
"""Most HDUs a file may hold."""
MAX_AXES = 999
"""The FITS standard's limit on NAXIS, ZNAXIS and TFIELDS."""
MAX_FRAME_PIXELS = 2**30
"""Most values (pixels times channels) a frame may hold: 1 Gi, 4 GiB as float32."""
MAX_FRAME_BYTES = 8 * 2**30
"""Most bytes the image data may take on disk or decompressed (8 GiB)."""
BITPIX_VALUES = (8, 16, 32, 64, -32, -64)
COMPRESSION_TYPES = (
    "NOCOMPRESS", "RICE_1", "RICE_ONE", "GZIP_1", "GZIP_2", "PLIO_1", "HCOMPRESS_1",
)
_TABLE_KEYS = ("TFIELDS", "ZIMAGE", "ZCMPTYPE", "TFORM1", "TTYPE1")
RICE_TYPES = ("RICE_1", "RICE_ONE")
#: The Rice parameters the tiled-image convention allows (the block size in pixels, the
#: bytes per pixel), checked before astropy decodes a tile (:func:`_check_rice`).
RICE_PARAMETERS = {"BLOCKSIZE": (16, 32), "BYTEPIX": (1, 2, 4, 8)}
#: ZNAMEn / ZVALn pairs looked at (the convention numbers them from 1).
MAX_ZVALS = 9
_PAD_BYTES = frozenset(b"\0 ")
_STRUCTURAL = re.compile(r"SIMPLE|XTENSION|BITPIX|NAXIS\d*|PCOUNT|GCOUNT|GROUPS|TFIELDS|TFORM\d+|"
                         r"THEAP|BZERO|BSCALE|BLANK|Z[A-Z]+\d*")


@dataclass
class HduInfo:
    """What one HDU's header claims.

    Attributes
    ----------
    index : int
        Position in the file (0 = primary).
    kind : str
        ``"image"``, ``"compressed"`` (a tile-compressed image) or ``"other"``.
    data_start : int
        Byte offset of the data.
    data_bytes : int
        Size of the data without padding.
    shape : tuple of int
        The image shape in numpy order (``()`` when not an image).
    keys : dict
        The raw value text of every keyword with a value, first card wins.
    """

    index: int
    kind: str
    data_start: int
    data_bytes: int
    shape: tuple[int, ...] = ()
    keys: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def has_pixels(self) -> bool:
        """True for an image HDU with at least one pixel."""
        return self.kind in ("image", "compressed") and bool(self.shape) and prod(self.shape) > 0


def _padded(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def _value_text(card: bytes) -> str:
    """The value field of a card, its comment removed (quotes kept)."""
    text = card[10:].decode("ascii", "replace").strip()
    if text.startswith("'"):
        end = text.find("'", 1)
        while end != -1 and text[end + 1 : end + 2] == "'":
            end = text.find("'", end + 2)
        return text if end == -1 else text[: end + 1]
    return text.split("/", 1)[0].strip()


def _read_header(fh: BinaryIO, path, start: int, index: int) -> tuple[dict[str, str], int]:
    """Keyword -> value text of the header at ``start``, and where its data begins."""
    keys: dict[str, str] = {}
    fh.seek(start)
    for n in range(MAX_HEADER_BLOCKS):
        block = fh.read(BLOCK)
        if len(block) < BLOCK:
            raise FrameError(path, f"file is truncated (the header of HDU {index} has no END card)")
        for i in range(0, BLOCK, CARD):
            card = block[i : i + CARD]
            name = card[:8].decode("ascii", "replace").strip()
            if name == "END":
                return keys, start + (n + 1) * BLOCK
            if card[8:10] != b"= ":
                continue
            value = _value_text(card)
            if name not in keys:
                keys[name] = value
            elif keys[name] != value and _STRUCTURAL.fullmatch(name):
                raise FrameError(path, f"HDU {index} has two {name} cards ({keys[name]} and "
                                       f"{value}): the header is corrupted")
    cards = MAX_HEADER_BLOCKS * BLOCK // CARD
    raise FrameError(path, f"the header of HDU {index} has no END card in its first "
                           f"{MAX_HEADER_BLOCKS} blocks ({cards} cards)")


def _int(keys: dict[str, str], key: str, path, index: int, default: int | None = None,
         low: int | None = None, high: int | None = None) -> int:
    """An integer keyword, checked against [low, high]; FrameError if missing or unreadable."""
    text = keys.get(key)
    if text is None:
        if default is None:
            raise FrameError(path, f"HDU {index} has no {key} keyword")
        return default
    try:
        value = int(text)
    except ValueError:
        raise FrameError(path, f"HDU {index}: {key} = {text!r} is not an integer") from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise FrameError(path, f"HDU {index}: {key} = {value} is impossible "
                               f"(allowed {low} to {high if high is not None else 'any'})")
    return value


def _bitpix(keys, key: str, path, index: int) -> int:
    value = _int(keys, key, path, index)
    if value not in BITPIX_VALUES:
        raise FrameError(path, f"unsupported pixel type (HDU {index}: {key} = {value})")
    return value


def _logical(keys, key: str) -> bool:
    return keys.get(key, "").strip() == "T"


def _string(keys, key: str) -> str:
    return keys.get(key, "").strip().strip("'").strip()


def _axes(keys, prefix: str, count: int, path, index: int, low: int) -> tuple[int, ...]:
    """(prefix1 .. prefixN) in FITS order."""
    return tuple(_int(keys, f"{prefix}{n}", path, index, low=low) for n in range(1, count + 1))


def _data_bytes(keys, index: int, bitpix: int, axes: tuple[int, ...], path) -> int:
    """Size of the data the header describes (FITS standard, section 4.4.1)."""
    if not axes:
        return 0
    groups = index == 0 and _logical(keys, "GROUPS") and axes[0] == 0
    if index == 0 and not groups:
        pcount, gcount = 0, 1
    else:
        pcount = _int(keys, "PCOUNT", path, index, default=0, low=0)
        gcount = _int(keys, "GCOUNT", path, index, default=1, low=0)
    count = prod(axes[1:]) if groups else prod(axes)
    return abs(bitpix) // 8 * gcount * (pcount + count)


def check_frame_size(path, what: str, values: int, nbytes: int) -> None:
    """FrameError if an image of ``values`` values in ``nbytes`` bytes is above the limits.

    ``what`` names the part of the file that claims it (e.g. ``"HDU 1"``).
    """
    if values > MAX_FRAME_PIXELS or nbytes > MAX_FRAME_BYTES:
        raise FrameError(
            path, f"{what} claims an image of {values:,} values ({nbytes:,} bytes); the limit "
                  f"is {MAX_FRAME_PIXELS:,} values and {MAX_FRAME_BYTES:,} bytes")


def _compressed_shape(keys, info_naxes, path, index: int) -> tuple[int, ...]:
    """Validate a tile-compressed image header; the image shape in numpy order."""
    if len(info_naxes) != 2:
        raise FrameError(path, f"HDU {index}: a compressed image table must have NAXIS = 2")
    _int(keys, "TFIELDS", path, index, low=1, high=MAX_AXES)
    zbitpix = _bitpix(keys, "ZBITPIX", path, index)
    zaxes = _axes(keys, "ZNAXIS", _int(keys, "ZNAXIS", path, index, low=1, high=MAX_AXES),
                  path, index, low=1)
    check_frame_size(path, f"HDU {index}", prod(zaxes), prod(zaxes) * abs(zbitpix) // 8)
    ctype = _string(keys, "ZCMPTYPE")
    if ctype not in COMPRESSION_TYPES:
        raise FrameError(path, f"HDU {index}: unknown compression ZCMPTYPE = {ctype!r}")
    if ctype in RICE_TYPES:
        _check_rice(keys, path, index)
    tiles = 1
    for n, size in enumerate(zaxes, start=1):
        tile = _int(keys, f"ZTILE{n}", path, index, default=size if n == 1 else 1, low=1, high=size)
        tiles *= ceil(size / tile)
    if tiles != info_naxes[1]:
        raise FrameError(path, f"HDU {index}: the compressed table has {info_naxes[1]} rows but "
                               f"the image is cut into {tiles} tiles")
    return zaxes[::-1]


def _check_rice(keys, path, index: int) -> None:
    """Refuse Rice parameters (ZNAMEn / ZVALn) outside what the tiled-image convention
    allows: astropy's decoder trusts them and writes past its buffer (a damaged file with
    BLOCKSIZE 2 killed the process with a segmentation fault, now and then)."""
    for n in range(1, MAX_ZVALS + 1):
        name = _string(keys, f"ZNAME{n}").upper()
        allowed = RICE_PARAMETERS.get(name)
        if allowed is None:
            continue
        value = _string(keys, f"ZVAL{n}")
        try:
            ok = float(value) in allowed
        except ValueError:
            ok = False
        if not ok:
            raise FrameError(path, f"HDU {index}: Rice {name} = {value or 'nothing'} is not one "
                                   f"of {', '.join(map(str, allowed))}: the file is damaged")


_TFORM = re.compile(r"(\d*)([LXBIJKAEDCMPQ])")
_TFORM_BYTES = {"L": 1, "B": 1, "I": 2, "J": 4, "K": 8, "A": 1, "E": 4, "D": 8, "C": 8, "M": 16,
                "P": 8, "Q": 16}


def _column_offset(keys, name: str, path, index: int) -> tuple[int, str] | None:
    """Byte offset in a row and descriptor type (P or Q) of the column ``name``."""
    offset = 0
    for n in range(1, _int(keys, "TFIELDS", path, index) + 1):
        m = _TFORM.match(_string(keys, f"TFORM{n}"))
        if m is None:
            raise FrameError(path, f"HDU {index}: TFORM{n} = {keys.get(f'TFORM{n}')} is unreadable")
        repeat, code = int(m.group(1) or 1), m.group(2)
        if _string(keys, f"TTYPE{n}") == name:
            return (offset, code) if code in "PQ" else None
        offset += -(-repeat // 8) if code == "X" else repeat * _TFORM_BYTES[code]
    return None


def check_hcompress_tiles(fh: BinaryIO, path, info: HduInfo) -> None:
    """Refuse HCOMPRESS tiles whose stream claims another size than the header's tile.

    astropy's decoder trusts the size written in each tile's stream and writes
    past its buffer when it is larger (the process aborts); the check reads 10
    bytes per tile.
    """
    keys, index = info.keys, info.index
    found = _column_offset(keys, "COMPRESSED_DATA", path, index)
    if found is None or len(info.shape) != 2:
        return
    column, code = found
    row_bytes, rows = int(keys["NAXIS1"]), int(keys["NAXIS2"])
    heap = info.data_start + _int(keys, "THEAP", path, index, default=row_bytes * rows, low=0)
    height, width = info.shape
    tile_w = _int(keys, "ZTILE1", path, index, default=width)
    tile_h = _int(keys, "ZTILE2", path, index, default=1)
    per_row = ceil(width / tile_w)
    fh.seek(info.data_start)
    table = fh.read(row_bytes * rows)
    fmt, size = (">ii", 8) if code == "P" else (">qq", 16)
    if column + size > row_bytes:
        raise FrameError(path, f"HDU {index}: the COMPRESSED_DATA column lies outside the row")
    for tile in range(rows):
        count, offset = struct.unpack_from(fmt, table, tile * row_bytes + column)
        if count == 0:
            continue
        if count < 0 or offset < 0:
            raise FrameError(path, f"HDU {index}: tile {tile} has a negative size or offset")
        fh.seek(heap + offset)
        head = fh.read(10)
        y, x = divmod(tile, per_row)
        expected = (min(tile_h, height - y * tile_h), min(tile_w, width - x * tile_w))
        if len(head) < 10 or struct.unpack(">ii", head[2:10]) != expected:
            raise FrameError(path, f"HDU {index}: HCOMPRESS tile {tile} does not hold a "
                                   f"{expected[0]}x{expected[1]} tile: the file is damaged")


def _scan_hdu(fh: BinaryIO, path, start: int, index: int) -> HduInfo:
    keys, data_start = _read_header(fh, path, start, index)
    first = "SIMPLE" if index == 0 else "XTENSION"
    if first not in keys:
        raise FrameError(path, f"HDU {index} does not start with {first}")
    axes = _axes(keys, "NAXIS", _int(keys, "NAXIS", path, index, low=0, high=MAX_AXES),
                 path, index, low=0)
    bitpix = _bitpix(keys, "BITPIX", path, index) if axes else 0  # no data: BITPIX unused
    data_bytes = _data_bytes(keys, index, bitpix, axes, path)
    info = HduInfo(index, "other", data_start, data_bytes, keys=keys)
    xtension = _string(keys, "XTENSION")
    if index == 0 or xtension == "IMAGE":
        if any(key in keys for key in _TABLE_KEYS):
            raise FrameError(path, f"HDU {index} is an image whose header also describes a "
                                   "table (TFIELDS/ZIMAGE): the header is corrupted")
        info.kind, info.shape = "image", axes[::-1]
    elif xtension == "BINTABLE" and _logical(keys, "ZIMAGE"):
        info.kind, info.shape = "compressed", _compressed_shape(keys, axes, path, index)
    return info


def _check_padding(fh: BinaryIO, path, info: HduInfo, end: int) -> None:
    """The bytes between the data and the next block must be padding (zeros or blanks)."""
    data_end = info.data_start + info.data_bytes
    fh.seek(data_end)
    if not set(fh.read(end - data_end)) <= _PAD_BYTES:
        raise FrameError(path, f"HDU {info.index}: the bytes after its data are not padding: the "
                               "data is longer than the header says (NAXISn too small?) or the "
                               "file is damaged")


def _check_tail(fh: BinaryIO, path, info: HduInfo, end: int, size: int) -> bool:
    """True if another HDU starts at ``end``; FrameError for garbage after ``info``'s data."""
    fh.seek(end)
    head = fh.read(BLOCK)
    if head.startswith(b"XTENSION="):
        return True
    if size - end <= BLOCK and set(head) <= _PAD_BYTES:
        return False  # blank padding: harmless
    raise FrameError(
        path, f"{size - end:,} bytes follow the data of HDU {info.index} that are not a FITS "
              "extension: the data is longer than the header says (NAXISn too small?) or the "
              "file was damaged")


def iter_hdus(fh: BinaryIO, path: str | os.PathLike) -> Iterator[HduInfo]:
    """Check a FITS file's HDUs one after the other, without reading their data.

    Each HDU is yielded once its own header, its size, its padding and what
    follows it (another extension, or the end of the file) have been checked,
    so a caller that stops at the HDU it wants never depends on later ones.

    Parameters
    ----------
    fh : binary file
        The file, open for reading and seekable.
    path : path-like
        Its name, for error messages.

    Yields
    ------
    HduInfo

    Raises
    ------
    FrameError
        A header is unreadable or claims a size that is impossible (negative,
        larger than the file), the file is truncated, or bytes that are
        neither padding nor a FITS extension follow an HDU's data.
    """
    size = os.fstat(fh.fileno()).st_size
    start = 0
    for index in range(MAX_HDUS):
        info = _scan_hdu(fh, path, start, index)
        end = info.data_start + info.data_bytes
        if end > size:
            raise FrameError(path, f"file is truncated (HDU {index} needs {end:,} bytes, "
                                   f"the file has {size:,})")
        start = info.data_start + _padded(info.data_bytes)
        _check_padding(fh, path, info, min(start, size))
        more = start < size and _check_tail(fh, path, info, start, size)
        yield info
        if not more:
            return
    raise FrameError(path, f"the file has more than {MAX_HDUS} HDUs")


def scan_fits(fh: BinaryIO, path: str | os.PathLike) -> list[HduInfo]:
    """Every HDU of the file, checked as :func:`iter_hdus` does."""
    return list(iter_hdus(fh, path))


def find_image(fh: BinaryIO, path: str | os.PathLike, hdu: int | None = None) -> HduInfo:
    """The HDU to read: ``hdu`` if given, else the first image with pixels.

    Only the HDUs up to it are scanned (a damaged table after the image does
    not matter); its size is checked against the frame limits.
    """
    return _choose(iter_hdus(fh, path), path, hdu)


def image_hdu(hdus: list[HduInfo], path, hdu: int | None = None) -> HduInfo:
    """As :func:`find_image`, among HDUs already scanned by :func:`scan_fits`."""
    return _choose(iter(hdus), path, hdu)


def _choose(hdus: Iterator[HduInfo], path, hdu: int | None) -> HduInfo:
    seen = []
    for info in hdus:
        seen.append(info)
        if info.index == hdu or (hdu is None and info.has_pixels):
            break
    else:
        if hdu is not None:
            raise FrameError(path, f"has no HDU {hdu} (it has {len(seen)})")
        hint = ""
        if any("ZCMPTYPE" in h.keys or "ZBITPIX" in h.keys for h in seen):
            hint = " (a table looks like a compressed image, but its ZIMAGE is not T)"
        raise FrameError(path, f"no HDU holds image data{hint}")
    chosen = seen[-1]
    if not chosen.has_pixels:
        raise FrameError(path, f"HDU {hdu} holds no image data")
    if chosen.kind == "image":
        check_frame_size(path, f"HDU {chosen.index}", prod(chosen.shape), chosen.data_bytes)
        _check_scaling(chosen, path)
    return chosen


def _check_scaling(info: HduInfo, path) -> None:
    """BZERO, BSCALE (numbers) and BLANK (an integer) decide the pixel values: they must parse."""
    for key in ("BZERO", "BSCALE", "BLANK"):
        text = info.keys.get(key)
        if text is None:
            continue
        try:
            int(text) if key == "BLANK" else float(text.replace("D", "E"))
        except ValueError:
            raise FrameError(path, f"HDU {info.index}: {key} = {text!r} cannot be read, and the "
                                   "pixel values depend on it") from None
