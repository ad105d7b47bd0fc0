"""Reading frames: FITS (also fpack .fz and gzip .fits.gz), TIFF and, with the optional
extra, XISF."""

from __future__ import annotations

import gzip
import mmap
import os
import stat
import sys
import tempfile
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from math import prod
from pathlib import Path

import numpy as np
from astropy.io import fits

from . import _rice_guard
from .buffers import FrameBuffers
from .debayer import METHODS as DEBAYER_METHODS
from .debayer import debayer as _debayer
from .errors import FrameError, FrameWarning, PlanesError
from .fits_scan import (
    MAX_FRAME_BYTES,
    HduInfo,
    check_frame_size,
    check_hcompress_tiles,
    find_image,
)
from .metadata import FrameMetadata, parse_metadata

_rice_guard.install()  # astropy's RICE_1 decoder kept inside each tile's bytes

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fz", ".fits.gz", ".fit.gz", ".fts.gz")
TIFF_SUFFIXES = (".tif", ".tiff")
XISF_SUFFIXES = (".xisf",)
FRAME_SUFFIXES = FITS_SUFFIXES + TIFF_SUFFIXES + XISF_SUFFIXES
#: Whole-file compressions whose suffix comes after the image's (``frame.fits.fz``,
#: ``frame.fits.gz``): left out of an output's name.
COMPRESSION_SUFFIXES = (".fz", ".gz")
_FITS_MAGIC = b"SIMPLE  ="
_GZIP_MAGIC = b"\x1f\x8b"
#: A gzip file may decompress to at most this many bytes: the largest frame plus a
#: margin for headers and other HDUs (a "gzip bomb" is refused there, not decompressed
#: without end; it uses the temporary folder's space up to that).
GZIP_LIMIT_BYTES = MAX_FRAME_BYTES + 2**24
_GZIP_CHUNK_BYTES = 2**20
UNSIGNED16_ZERO = 32768.0
"""The BZERO that makes 16-bit FITS data unsigned."""
IN_PLACE_BYTES = 256 * 2**20
"""Frames whose float32 pixels take this much or more are converted without a second full copy."""
_CHUNK_VALUES = 2**22
READ_CHUNK_BYTES = 2**20
"""Unscaled float32 frames of :data:`IN_PLACE_BYTES` or more are read in pieces of this size,
each byte-swapped while in the cache."""
MAP_WINDOW_BYTES = 16 * 2**20
"""Smaller ones are byte-swapped into their array from windows of this size of the mapped file."""


@dataclass
class Frame:
    """One image as read from disk.

    Attributes
    ----------
    path : pathlib.Path
        Where it came from.
    data : ndarray
        float32 pixels, ``(y, x)`` mono or ``(c, y, x)`` colour, in the file's own
        units (BZERO/BSCALE applied). 0, NaN and inf mean "no data".
    header : astropy.io.fits.Header
        The image header (an empty header for TIFF).
    meta : FrameMetadata
        Observation metadata parsed from the header.
    hdu_index : int or None
        Which FITS HDU held the image.
    debayered : str or None
        The debayering method applied, if any.
    """

    path: Path
    data: np.ndarray
    header: fits.Header
    meta: FrameMetadata = field(default_factory=FrameMetadata)
    hdu_index: int | None = None
    debayered: str | None = None

    @property
    def n_channels(self) -> int:
        """1 for mono, 3 for colour."""
        return 1 if self.data.ndim == 2 else self.data.shape[0]

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return tuple(self.data.shape[-2:])

    @property
    def channels(self) -> np.ndarray:
        """The pixels as ``(c, y, x)`` (a view; mono gets c = 1)."""
        return self.data[np.newaxis] if self.data.ndim == 2 else self.data


def frame_stem(path: str | os.PathLike) -> str:
    """The frame's name without its image suffix and a compression suffix after it
    (``m42_001.fits.gz`` -> ``m42_001``): what output names are made of."""
    name = Path(path).name
    for suffix in COMPRESSION_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return Path(name).stem


def _is_gzip(fh) -> bool:
    start = fh.read(len(_GZIP_MAGIC))
    fh.seek(0)
    return start == _GZIP_MAGIC


@contextmanager
def _gunzipped(path: Path, fh):
    """The decompressed bytes of a gzip file in an anonymous temporary file (mappable, as
    the FITS reader needs); FrameError for corrupt data or more than GZIP_LIMIT_BYTES."""
    with tempfile.TemporaryFile() as plain:
        try:
            with gzip.GzipFile(fileobj=fh, mode="rb") as packed:
                while chunk := packed.read(_GZIP_CHUNK_BYTES):
                    plain.write(chunk)
                    if plain.tell() > GZIP_LIMIT_BYTES:
                        raise FrameError(path, f"decompresses to more than "
                                               f"{GZIP_LIMIT_BYTES / 2**30:.0f} GiB: refused "
                                               "(not a frame; see docs/reading-limits.md)")
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise FrameError(path, f"corrupt gzip data ({exc or 'it ends too early'})") from None
        plain.seek(0)
        with open(os.dup(plain.fileno()), "rb") as reader:  # astropy wants a read-only handle
            yield reader


@contextmanager
def _plain(path: Path, fh):
    """``fh``, or its decompressed bytes when it is a gzip file (:func:`_gunzipped`)."""
    if _is_gzip(fh):
        with _gunzipped(path, fh) as plain:
            yield plain
    else:
        yield fh


def frame_kind(path: str | os.PathLike) -> str | None:
    """``"fits"``, ``"tiff"``, ``"xisf"`` from the name, or None if unknown."""
    name = os.fspath(path).lower()
    if name.endswith(FITS_SUFFIXES):
        return "fits"
    if name.endswith(TIFF_SUFFIXES):
        return "tiff"
    if name.endswith(XISF_SUFFIXES):
        return "xisf"
    return None


def _as_float32(path, array: np.ndarray) -> np.ndarray:
    kind = array.dtype.kind
    if kind not in "uif" or array.dtype.itemsize > 8:
        raise FrameError(path, f"unsupported pixel type {array.dtype}")
    return np.asarray(array, dtype=np.float32)  # native byte order, a copy if needed


def _shape_checked(path, data: np.ndarray, channel_axis_last: bool = False) -> np.ndarray:
    if channel_axis_last and data.ndim == 3 and data.shape[-1] in (1, 3, 4) and data.shape[0] > 4:
        data = np.moveaxis(data, -1, 0)
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim == 3 and data.shape[0] == 4 and channel_axis_last:
        data = data[:3]  # drop alpha
    if data.ndim == 2:
        if min(data.shape) < 2:
            raise FrameError(path, f"image is too small ({data.shape[1]}x{data.shape[0]} px)")
        return data
    if data.ndim == 3:
        if data.shape[0] != 3:
            last = (" (colour planes last, NAXIS1 = 3: a FITS colour frame holds them in "
                    "NAXIS3)" if data.shape[-1] == 3 else "")
            raise PlanesError(
                path,
                f"3-D data with {data.shape[0]} planes is neither mono nor RGB "
                f"(shape {data.shape}){last}",
            )
        return data
    raise FrameError(
        path, f"image data is {data.ndim}-D (shape {data.shape}); expected 2-D mono or 3-D colour"
    )


#: A missing frame whose name holds one of these is most likely a shell pattern (``*.fit``)
#: that matched nothing: the shell passes it on unexpanded.
GLOB_CHARACTERS = "*?["


def open_regular(path: Path):
    """Open ``path`` for reading without blocking; FrameError unless it is a regular file.

    The check is made on the open descriptor (symlinks resolved), so a FIFO,
    socket or device is refused at once instead of blocking the read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        reason = "file not found"
        if path.is_symlink():
            reason += " (a link to a missing file)"
        elif any(c in path.name for c in GLOB_CHARACTERS):
            reason += " (a shell pattern that matched no file is passed on as it is)"
        raise FrameError(path, reason) from None
    except IsADirectoryError:
        raise FrameError(path, _FOLDER_REASON.format(path)) from None
    except OSError as exc:
        raise FrameError(path, f"cannot be read ({exc.strerror or exc})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise FrameError(path, _FOLDER_REASON.format(path))
        raise FrameError(path, "is not a regular file (a FIFO, socket or device): refused, "
                               "reading it could block forever")
    return os.fdopen(fd, "rb")


#: What a folder given as a frame is told (its frames are given with a wildcard).
_FOLDER_REASON = "is a folder, not an image file: give its frames, e.g. {}/*.fits"


def _fits_error(path: Path, exc: Exception) -> FrameError:
    """A FrameError for an exception astropy raised while decoding a checked file."""
    if isinstance(exc, MemoryError):
        return FrameError(path, "image too large for the memory available")
    text = str(exc)
    if "truncated" in text.lower() or "smaller than" in text.lower():
        return FrameError(path, f"file is truncated ({text})")
    if "BITPIX" in text:
        return FrameError(path, f"unsupported pixel type ({text})")
    return FrameError(path, f"not a readable FITS file ({type(exc).__name__}: {text})")


def _read_mode(chosen: HduInfo) -> str:
    """How to convert the chosen HDU to float32 with the least peak memory and CPU.

    ``"raw"``: unscaled float32 (BITPIX -32, the usual frame), any size: its bytes
    read straight into the destination (a reused buffer where the caller gives one)
    and byte-swapped there; ``"memmap"``: astropy's memmap, then one converting
    copy (small frames, and compressed ones, whose pixels are a fresh array
    anyway); ``"unsigned16"``: 16-bit pseudo-unsigned data converted in chunks from
    the raw memmap (1.5x the float32 size instead of 2x); ``"in_place"``: read into
    memory and byte-swapped in place (1x the float32 size instead of 2x).
    """
    if chosen.kind != "image":
        return "memmap"
    keys = chosen.keys
    scale = tuple(float(keys.get(key, default).replace("D", "E"))
                  for key, default in (("BZERO", "0"), ("BSCALE", "1")))
    if keys.get("BITPIX") == "-32" and scale == (0.0, 1.0):
        return "raw"
    if prod(chosen.shape) * 4 < IN_PLACE_BYTES:
        return "memmap"
    if keys.get("BITPIX") == "16" and scale == (UNSIGNED16_ZERO, 1.0):
        return "unsigned16"
    return "in_place"


def _unsigned16(raw: np.ndarray) -> np.ndarray:
    """float32 of raw big-endian int16 pixels with BZERO = 32768, converted in chunks."""
    out = np.empty(raw.shape, np.float32)
    flat_out, flat_raw = out.reshape(-1), raw.reshape(-1)
    for start in range(0, flat_out.size, _CHUNK_VALUES):
        chunk = flat_out[start : start + _CHUNK_VALUES]
        chunk[...] = flat_raw[start : start + _CHUNK_VALUES]
        chunk += UNSIGNED16_ZERO
    return out


def _decode_hdu(path: Path, fh, chosen: HduInfo, buffers=None):
    """Pixels and header of the HDU the scan chose, decoded by astropy (unscaled
    float32 pixels read directly, into a buffer of ``buffers`` if given)."""
    mode = _read_mode(chosen)
    options = {"unsigned16": {"memmap": True, "do_not_scale_image_data": True},
               "in_place": {"memmap": False}, "raw": {"memmap": True}}.get(mode, {})
    with fits.open(fh, lazy_load_hdus=True, **options) as hdul:
        h = hdul[chosen.index]
        images = (fits.PrimaryHDU, fits.ImageHDU)
        wanted = fits.CompImageHDU if chosen.kind == "compressed" else images
        if not isinstance(h, wanted):
            raise FrameError(path, f"HDU {chosen.index} could not be read as an image "
                                   f"(astropy sees a {type(h).__name__})")
        if mode == "raw" and h.shape == chosen.shape:
            return _read_raw(path, fh, chosen, buffers), h.header.copy()
        array = h.data
        if array is None or array.shape != chosen.shape:
            got = None if array is None else array.shape
            raise FrameError(path, f"HDU {chosen.index}: the data read has shape {got}, "
                                   f"the header says {chosen.shape}")
        if mode == "unsigned16":
            return _unsigned16(array), h.header.copy()
        if mode == "in_place":
            array = _native_in_place(array)
        return _as_float32(path, array), h.header.copy()


def _read_raw(path: Path, fh, chosen: HduInfo, buffers=None) -> np.ndarray:
    """The unscaled big-endian float32 pixels of ``chosen``, byte-swapped into the
    destination in one pass: from windows of :data:`MAP_WINDOW_BYTES` of the mapped
    file (no copy by the kernel: the fastest way from the page cache), or, for frames
    of :data:`IN_PLACE_BYTES` or more, read in pieces of :data:`READ_CHUNK_BYTES`
    and swapped there (nothing mapped: the process holds 1x the frame). The
    destination comes from ``buffers`` (:class:`~napari_nsg.io.buffers.FrameBuffers`)
    when given, else is a new array."""
    out = (buffers.take(chosen.shape, np.float32) if buffers is not None
           else np.empty(chosen.shape, np.float32))
    try:
        if out.nbytes >= IN_PLACE_BYTES:
            _read_swapped(path, fh, chosen.data_start, out.reshape(-1))
        else:
            _map_swapped(path, fh, chosen.data_start, out.reshape(-1))
    except BaseException:
        if buffers is not None:
            buffers.give(out)
        raise
    return out


def _map_swapped(path: Path, fh, data_start: int, flat: np.ndarray) -> None:
    """Fill ``flat`` from the big-endian float32 values at ``data_start``, one mapped
    window at a time (each unmapped before the next: at most one window of the file
    is in the process's memory)."""
    if os.fstat(fh.fileno()).st_size < data_start + flat.nbytes:
        raise FrameError(path, "file is truncated (it ended while its pixels were read)")
    big_endian = flat.dtype.newbyteorder(">")
    step = MAP_WINDOW_BYTES // flat.itemsize
    for start in range(0, flat.size, step):
        n = min(step, flat.size - start)
        first = data_start + start * flat.itemsize
        aligned = first - first % mmap.ALLOCATIONGRANULARITY
        with mmap.mmap(fh.fileno(), first - aligned + n * flat.itemsize,
                       access=mmap.ACCESS_READ, offset=aligned) as window:
            source = np.frombuffer(window, big_endian, count=n, offset=first - aligned)
            flat[start : start + n] = source  # copied and byte-swapped
            del source


def _read_swapped(path: Path, fh, data_start: int, flat: np.ndarray) -> None:
    """Fill ``flat`` by reading the big-endian float32 values at ``data_start`` into it
    in pieces, each byte-swapped while in the cache."""
    raw = memoryview(flat).cast("B")
    step = READ_CHUNK_BYTES // flat.itemsize
    fh.seek(data_start)
    for start in range(0, flat.size, step):
        _read_exactly(path, fh, raw[start * flat.itemsize : (start + step) * flat.itemsize])
        if sys.byteorder == "little":
            flat[start : start + step].byteswap(inplace=True)


def _read_exactly(path: Path, fh, target: memoryview) -> None:
    """Fill ``target`` from ``fh`` (FrameError if the file ends first)."""
    got = 0
    while got < len(target):
        n = fh.readinto(target[got:])
        if not n:
            raise FrameError(path, "file is truncated (it ended while its pixels were read)")
        got += n


def _native_in_place(array: np.ndarray) -> np.ndarray:
    """The array in native byte order, swapped in place when astropy's buffer allows.

    FITS is big-endian: converting a float32 image with a copy would hold two
    copies at once; read without memmap, the buffer is ours to swap.
    """
    if array.dtype.byteorder != ">" or not array.flags.writeable:
        return array
    array.byteswap(inplace=True)
    return array.view(array.dtype.newbyteorder("="))


def _read_fits(path: Path, fh, hdu: int | None, buffers=None):
    start = fh.read(len(_FITS_MAGIC))
    if not start.startswith(_FITS_MAGIC):
        reason = "file is empty" if not start else "not a FITS file (no SIMPLE card at the start)"
        raise FrameError(path, reason)
    chosen = find_image(fh, path, hdu)
    if chosen.kind == "compressed" and "HCOMPRESS" in chosen.keys.get("ZCMPTYPE", ""):
        check_hcompress_tiles(fh, path, chosen)
    fh.seek(0)
    # The scan has checked that the data is complete: astropy's warnings (e.g.
    # "may have been truncated" for a file without its final padding) are noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            data, header = _decode_hdu(path, fh, chosen, buffers)
        except FrameError:
            raise
        except Exception as exc:  # astropy and its codecs raise many types for corrupt data
            raise _fits_error(path, exc) from None
    return data, header, chosen.index


def _read_tiff(path: Path):
    try:
        import tifffile
    except ImportError:  # pragma: no cover - a base dependency
        raise FrameError(path, "TIFF support needs the tifffile package") from None
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            values = int(np.prod(series.shape))
            check_frame_size(path, "the TIFF", values, values * series.dtype.itemsize)
            array = series.asarray()
    except FrameError:
        raise
    except FileNotFoundError:
        raise FrameError(path, "file not found") from None
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise FrameError(path, f"not a readable TIFF file ({exc})") from None
    return _as_float32(path, array), fits.Header()


def _read_xisf(path: Path):
    try:
        from xisf import XISF
    except ImportError:
        raise FrameError(
            path, "XISF needs the optional extra: pip install 'napari-nsg[xisf]'"
        ) from None
    try:
        x = XISF(str(path))
        meta = x.get_images_metadata()[0]
        values = int(np.prod(meta["geometry"]))
        check_frame_size(path, "the XISF", values, values * np.dtype(meta["dtype"]).itemsize)
        array = np.array(x.read_image(0, data_format="channels_first"))
    except FrameError:
        raise
    except Exception as exc:
        raise FrameError(path, f"not a readable XISF file ({exc})") from None
    header = fits.Header()
    for key, entries in (meta.get("FITSKeywords") or {}).items():
        for entry in entries:
            try:
                header.append((key, _xisf_value(entry.get("value")), entry.get("comment", "")))
            except (ValueError, TypeError):
                continue
    return _as_float32(path, array), header


def _xisf_value(text):
    """An XISF FITSKeyword value (always text) as the FITS card value it stands for."""
    if not isinstance(text, str):
        return text
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] == "'":
        return t[1:-1].replace("''", "'").rstrip()
    if t in ("T", "F"):
        return t == "T"
    for kind in (int, float):
        try:
            return kind(t)
        except ValueError:
            pass
    return t


def _read_fits_named(path: Path, fh, kind: str | None, hdu: int | None, buffers=None):
    """Read FITS; a file with an unknown suffix gets that said in its error."""
    try:
        data, header, index = _read_fits(path, fh, hdu, buffers)
    except FrameError as exc:
        if kind is None:
            raise FrameError(
                path, f"not an image file (unknown type '{path.suffix}'; {exc.reason})"
            ) from None
        raise
    return _shape_checked(path, data), header, index


SUPERPIXEL_SIZE_KEYS = ("XPIXSZ", "YPIXSZ")  # micrometres: one superpixel is 2x2 photosites


def _double_pixel_size(header: fits.Header, meta: FrameMetadata) -> None:
    """After superpixel debayering a pixel is 2x2 photosites: double the pixel
    size in the header (so a re-read frame has the right image scale) and in
    the parsed metadata."""
    for key in SUPERPIXEL_SIZE_KEYS:
        value = header.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            header[key] = 2.0 * float(value)
    if meta.pixel_size:
        meta.pixel_size *= 2.0
        if meta.image_scale_source == "XPIXSZ/FOCALLEN":
            meta.image_scale *= 2.0


def _metadata(path: Path, header: fits.Header, height: int) -> FrameMetadata:
    """Parse the metadata; unparsable cards are treated as missing, with a warning."""
    unreadable: list[str] = []
    meta = parse_metadata(header, height=height, unreadable=unreadable)
    if unreadable:
        warnings.warn(f"{path}: unparsable header card(s) {', '.join(unreadable)} treated as "
                      "missing", FrameWarning, stacklevel=3)
    return meta


def read_cube(path: str | os.PathLike, *, hdu: int | None = None) -> tuple[np.ndarray, fits.Header]:
    """A FITS image of any number of planes as float32 ``(n, y, x)`` (or ``(y, x)``) and its
    header: a stack of frames, as napari's stack layers are saved. The same checks as
    :func:`read_frame` (size limits, damaged files, gzip), but no frame rules: no
    metadata parsing, no debayering, any plane count.

    Raises
    ------
    FrameError
        As :func:`read_frame`; also for 1-D or 4-D data.
    """
    path = Path(path)
    with open_regular(path) as fh, _plain(path, fh) as source:
        data, header, _ = _read_fits(path, source, hdu)
    if data.ndim not in (2, 3) or min(data.shape[-2:]) < 2:
        raise FrameError(path, f"image data has shape {data.shape}: not a stack of 2-D frames")
    return data, header


def read_frame(
    path: str | os.PathLike,
    *,
    debayer: str | None = None,
    hdu: int | None = None,
    buffers: FrameBuffers | None = None,
) -> Frame:
    """Read one frame as float32 in its own units.

    Parameters
    ----------
    path : path-like
        A FITS (.fits .fit .fts, any case, fpack .fz, and gzip-compressed
        .fits.gz), TIFF (.tif .tiff) or XISF file (with the ``xisf`` extra).
        Unknown suffixes are read as FITS when the file starts like one (or as
        a gzip file that holds one).
    debayer : {None, "superpixel", "bilinear"}
        Debayer a raw colour frame that has a BAYERPAT keyword. Without it a
        raw frame stays a 2-D mosaic: it is never debayered silently.
    hdu : int, optional
        Read this FITS HDU instead of the first one that holds an image.
    buffers : FrameBuffers, optional
        Where to put unscaled float32 FITS pixels (the usual frame): a buffer taken
        from this pool (reused: no fresh 96 MB array to fault in per frame), which
        the caller gives back with ``buffers.give(frame.data)`` once done with it.
        Other frames get new arrays, which ``give`` ignores.

    Returns
    -------
    Frame

    Raises
    ------
    FrameError
        The file is missing, not a regular file (FIFO, socket, device), not an
        image file, has no image HDU, holds 1-D or 4-D data, is truncated or
        longer than its headers say, has a header that claims an impossible
        size or one above the frame limit (:data:`~napari_nsg.io.fits_scan.MAX_FRAME_PIXELS`
        values, :data:`~napari_nsg.io.fits_scan.MAX_FRAME_BYTES` bytes), an
        unreadable card that decides the pixel values, corrupt compressed tiles,
        or an unsupported pixel type. The message names the file and the reason.
        See ``docs/reading-limits.md``.

    Warns
    -----
    FrameWarning
        A header card whose value cannot be parsed and that only carries
        metadata (e.g. OBJCTALT): it is treated as missing.
    """
    path = Path(path)
    if debayer is not None and debayer not in DEBAYER_METHODS:
        raise ValueError(f"debayer must be None or one of {DEBAYER_METHODS}, got {debayer!r}")
    kind = frame_kind(path)
    index = None
    with open_regular(path) as fh:
        if kind == "tiff":
            data, header = _read_tiff(path)
            data = _shape_checked(path, data, channel_axis_last=True)
        elif kind == "xisf":
            data, header = _read_xisf(path)
            data = _shape_checked(path, data)
        else:
            with _plain(path, fh) as source:
                data, header, index = _read_fits_named(path, source, kind, hdu, buffers)
    meta = _metadata(path, header, data.shape[-2])
    done = None
    if debayer is not None:
        if data.ndim != 2 or meta.bayer_pattern is None:
            raise FrameError(path, "debayering asked for, but the frame is not a raw CFA mosaic "
                             "(no BAYERPAT keyword or already colour)")
        mosaic, data = data, _debayer(data, meta.bayer_pattern, debayer)
        if buffers is not None and not np.may_share_memory(mosaic, data):
            buffers.give(mosaic)
        del mosaic
        done = debayer
        for key in ("BAYERPAT", "XBAYROFF", "YBAYROFF"):
            header.remove(key, ignore_missing=True, remove_all=True)
        header.add_history(f"napari-nsg: debayered ({debayer}, pattern {meta.bayer_pattern})")
        meta.bayer_pattern = None
        if debayer == "superpixel":
            _double_pixel_size(header, meta)
    return Frame(path=path, data=data, header=header, meta=meta, hdu_index=index, debayered=done)
