"""``stack``: integrate many registered, normalized frames into one image.

Memory is bounded by a chunk of rows of all frames, not by the number of
frames: every frame is opened once (its header and where its pixels start),
then for each chunk of rows the same rows of every frame are read straight
from the file (a seek and a read per frame and channel), integrated by
:func:`napari_nsg.core.stack.integrate`, and written into the output arrays.
Only compressed FITS, TIFF and XISF frames are read whole (kept in memory).

Chunks are independent (rejection is per pixel), so the result does not
depend on the chunk size, and chunks can run in local worker processes or on
a Dask scheduler (:func:`~napari_nsg.pipeline.executors.map_frames`) with
results identical to the serial run.

The output is one float32 FITS file: the primary HDU holds the stack, with the
first frame's header and HISTORY lines; extensions ``LOWREJ``, ``HIGHREJ``
(values rejected low/high per pixel) and ``NFRAMES`` (frames contributing per
pixel), int16.

Frames that ``napari-nsg normalize`` rejected (relative weight or transmission
under its cutoffs, as its report ``nsg_results.json`` beside them says) are left
out, as NSG leaves them out of the integration, unless ``include_rejected``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from .. import __version__
from ..core.stack import Rejection, integrate
from ..io import FrameError, read_frame
from ..io.atomic import atomic_path, refuse_inputs, write_error
from ..io.fits_scan import image_hdu, scan_fits
from ..io.read import open_regular
from ..io.write import frame_hdu
from .executors import map_frames
from .progress import CancelToken, ProgressCallback, check_cancel, report
from .report import read_report

__all__ = ["EXTENSIONS", "StackResult", "frame_weight", "normalize_rejections", "stack_arrays",
           "stack_frames", "write_stack"]

#: Extension names of the rejection maps, in file order.
EXTENSIONS = ("LOWREJ", "HIGHREJ", "NFRAMES")
#: Working memory aimed at for one chunk (the frames' rows and the rejection arrays).
CHUNK_BUDGET_BYTES = 256 * 2**20
#: Bytes of working memory per value in a chunk (float64 values, masks, sort copies).
BYTES_PER_VALUE = 48
_BITPIX_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


@dataclass
class _Source:
    """Where one frame's pixels are and how to read a range of rows."""

    path: str
    shape: tuple  # (y, x) or (c, y, x)
    data_start: int = 0
    bitpix: int = -32
    bzero: float = 0.0
    bscale: float = 1.0
    whole: np.ndarray | None = None  # frames that cannot be read by rows

    def rows(self, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` as float32, ``(c, rows, x)`` (c = 1 for mono)."""
        if self.whole is not None:
            data = self.whole
            return (data[None] if data.ndim == 2 else data)[:, y0:y1]
        planes = self.shape if len(self.shape) == 3 else (1, *self.shape)
        c, h, w = planes
        dtype = np.dtype(_BITPIX_DTYPES[self.bitpix])
        out = np.empty((c, y1 - y0, w), np.float32)
        with open(self.path, "rb") as fh:
            for k in range(c):
                fh.seek(self.data_start + ((k * h + y0) * w) * dtype.itemsize)
                raw = np.frombuffer(fh.read((y1 - y0) * w * dtype.itemsize), dtype=dtype)
                if raw.size != (y1 - y0) * w:
                    raise FrameError(self.path, "file is truncated")
                out[k] = raw.reshape(y1 - y0, w)
        if self.bscale != 1.0:
            out *= np.float32(self.bscale)
        if self.bzero != 0.0:
            out += np.float32(self.bzero)
        return out


#: Planes of a colour frame (``(c, y, x)``).
COLOUR_PLANES = 3


#: The row error of a frame without a single pixel of data (all NaN).
NO_DATA_ERROR = "has no data (every pixel is NaN or no-data): it adds nothing to the stack"


def _number(keys: dict, key: str, default: float) -> float:
    text = keys.get(key)
    try:
        return float(text) if text not in (None, "") else default
    except ValueError:
        return default


def _streamable(shape: tuple) -> bool:
    """Mono ``(y, x)`` or colour ``(3, y, x)``: read by rows. Any other shape is read whole,
    where a single plane becomes mono and the rest is refused with the reason (a colour
    frame with its planes last, ``(y, x, 3)``, was stacked as y planes of 3 columns)."""
    return len(shape) == 2 or (len(shape) == 3 and shape[0] == COLOUR_PLANES)


def _open_source(path: Path) -> tuple[_Source, fits.Header]:
    """The frame's pixel source and header; FrameError if it cannot be read."""
    if path.suffix.lower() in (".fits", ".fit", ".fts"):
        try:
            with open_regular(path) as fh:  # a FIFO or device is refused, never blocks
                info = image_hdu(scan_fits(fh, path), path)
        except OSError as exc:
            raise FrameError(path, f"cannot be read ({exc.strerror or exc})") from None
        if info.kind == "image" and _streamable(tuple(info.shape)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                header = fits.getheader(path, info.index)
            src = _Source(str(path), tuple(info.shape), info.data_start,
                          int(_number(info.keys, "BITPIX", -32)),
                          _number(info.keys, "BZERO", 0.0), _number(info.keys, "BSCALE", 1.0))
            return src, header
    frame = read_frame(path)  # compressed, TIFF, XISF: whole
    return _Source(str(path), frame.data.shape, whole=frame.data), frame.header


def frame_weight(header: fits.Header, keyword: str | None, path) -> float:
    """The frame's weight from ``keyword`` (1 when None); FrameError if missing or bad."""
    if keyword is None:
        return 1.0
    try:
        value = header.get(keyword)
    except fits.VerifyError:  # an unparsable card: the weight is unusable
        value = "(unparsable card)"
    try:
        weight = float(value)
    except (TypeError, ValueError):
        what = "has no" if value is None else f"has an unusable ({value!r})"
        raise FrameError(path, f"{what} {keyword} keyword for its weight (normalize writes "
                               "NWEIGHT; or stack with equal weights)") from None
    if not np.isfinite(weight) or weight < 0:
        raise FrameError(path, f"{keyword} = {value} is not a usable weight")
    if weight == 0:  # the integration drops it: it would be counted as stacked, add nothing
        raise FrameError(path, f"{keyword} = {value}: a frame of weight 0 adds nothing to "
                               "the stack")
    return weight


@dataclass
class _StackJob:
    sources: list
    weights: np.ndarray
    rejection: Rejection


def _stack_chunk(job: _StackJob, rows: tuple[int, int]):
    """Integrate rows ``y0:y1`` of every frame (runs in a worker; errors travel back)."""
    y0, y1 = rows
    try:
        block = np.stack([s.rows(y0, y1) for s in job.sources])
        return integrate(block, job.weights, job.rejection)
    except FrameError as exc:
        return exc


@dataclass
class StackResult:
    """What :func:`stack_frames` did.

    Attributes
    ----------
    output : pathlib.Path or None
    stack : ndarray
        ``(y, x)`` or ``(c, y, x)`` float32.
    n_low, n_high, n_used : ndarray, int16
        Rejection counts and contributing frames per pixel, shaped like ``stack``.
    rejection : Rejection
        The method used (``auto`` resolved).
    rows : list of dict
        One per input frame: ``file``, ``weight``, ``rejected_low``,
        ``rejected_high`` (fractions of its pixels), ``error`` (it could not be
        used), ``skipped`` (left out on purpose: why).
    chunk_rows : int
    """

    output: Path | None
    stack: np.ndarray
    n_low: np.ndarray
    n_high: np.ndarray
    n_used: np.ndarray
    rejection: Rejection
    rows: list = field(default_factory=list)
    chunk_rows: int = 0

    @property
    def failed(self) -> list:
        """Rows of the frames that could not be used."""
        return [r for r in self.rows if r["error"]]

    @property
    def skipped(self) -> list:
        """Rows of the frames left out on purpose (rejected by normalize)."""
        return [r for r in self.rows if r.get("skipped")]

    @property
    def stacked(self) -> list:
        """Rows of the frames integrated."""
        return [r for r in self.rows if _stacked(r)]


def _stacked(row: dict) -> bool:
    return not row["error"] and not row.get("skipped")


def normalize_rejections(frames) -> dict[str, str]:
    """The frames among ``frames`` that ``napari-nsg normalize`` rejected, by the report
    (``nsg_results.json``) in each frame's folder: resolved path -> why (e.g.
    "relative weight 0.155 <= 0.25 (light pollution or noise)")."""
    rejected: dict[str, str] = {}
    for folder in {Path(f).resolve().parent for f in frames}:
        doc = read_report(folder)
        if doc is None:
            continue
        base = doc.get("cwd") or str(folder)
        for row in doc["frames"]:
            if row.get("rejected") and isinstance(row.get("output"), str):
                out = Path(os.path.join(base, row["output"])).resolve()
                rejected[str(out)] = row.get("reject_reason") or "rejected"
    return rejected


def _chunk_rows(n: int, shape: tuple, chunk_rows: int | None) -> int:
    c = shape[0] if len(shape) == 3 else 1
    if chunk_rows is None:
        chunk_rows = CHUNK_BUDGET_BYTES // max(1, n * c * shape[-1] * BYTES_PER_VALUE)
    return int(max(1, min(shape[-2], chunk_rows)))


def _open_all(frames: list[Path], keyword: str | None, rejected: dict[str, str]):
    """Sources, weights, header of the first good frame, and one row per frame (those
    in ``rejected``, resolved path -> why, left out)."""
    sources, weights, rows, first = [], [], [], None
    for path in frames:
        row = {"file": str(path), "weight": None, "rejected_low": None,
               "rejected_high": None, "error": None, "skipped": None}
        rows.append(row)
        why = rejected.get(str(path.resolve()))
        if why is not None:
            row["skipped"] = f"rejected by normalize: {why}"
            continue
        try:
            src, header = _open_source(path)
            if first is not None and src.shape != sources[0].shape:
                raise FrameError(path, f"has shape {src.shape}, the first frame "
                                       f"{sources[0].path} has {sources[0].shape}")
            weight = frame_weight(header, keyword, path)
        except FrameError as exc:
            row["error"] = exc.reason if Path(exc.path or "") == path else str(exc)
            continue
        row["weight"] = weight
        first = header if first is None else first
        sources.append(src)
        weights.append(weight)
    return sources, np.array(weights, float), first, rows


#: The first frame's per-frame keywords that the stack's header does not keep: its weight
#: (another stack of stacks would weigh this one by the first frame's) and its NSG scale.
PER_FRAME_KEYWORDS = ("NWEIGHT", "NSGS*", "NSGSNR*")


def _stack_header(header) -> fits.Header:
    """The first frame's header less :data:`PER_FRAME_KEYWORDS`."""
    out = header.copy() if header is not None else fits.Header()
    for pattern in PER_FRAME_KEYWORDS:
        for key in list(out[pattern].keys()) if "*" in pattern else [pattern]:
            out.remove(key, ignore_missing=True, remove_all=True)
    return out


def _output_hdus(result: StackResult, header, history: list[str], path) -> fits.HDUList:
    header = _stack_header(header)
    kw = {"NSTACK": (len(result.stacked), "frames integrated"),
          "STKREJ": (result.rejection.method, "pixel rejection"),
          "STKRLOW": (result.rejection.low, "rejection low threshold"),
          "STKRHIGH": (result.rejection.high, "rejection high threshold")}
    hdus = [frame_hdu(result.stack, header, kw, history, path=path)]
    for name, arr in zip(EXTENSIONS, (result.n_low, result.n_high, result.n_used)):
        hdus.append(fits.ImageHDU(data=arr, name=name))
    return fits.HDUList(hdus)


def _write(result: StackResult, header, history, out: Path, overwrite: bool) -> None:
    hdul = _output_hdus(result, header, history, out)
    with atomic_path(out, overwrite=overwrite) as tmp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                hdul.writeto(tmp, overwrite=True, output_verify="silentfix")
        except OSError as exc:
            raise write_error(out, exc) from None


def stack_frames(
    frames,
    out: str | os.PathLike | None,
    *,
    weights: str | None = "NWEIGHT",
    rejection: str = "auto",
    chunk_rows: int | None = None,
    overwrite: bool = False,
    include_rejected: bool = False,
    workers: int = 1,
    scheduler: str | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> StackResult:
    """Integrate ``frames`` into one image, chunk of rows by chunk of rows.

    Parameters
    ----------
    frames : sequence of path-like
        Registered (normalized) frames of one shape.
    out : path-like or None
        Output FITS file (None: only return the arrays).
    weights : str or None
        Header keyword holding each frame's weight (``NWEIGHT``), or None for equal weights.
    rejection : str
        One of :data:`napari_nsg.core.stack.REJECTIONS`.
    chunk_rows : int, optional
        Rows per chunk (default: from a working-memory budget of
        :data:`CHUNK_BUDGET_BYTES`). The result does not depend on it.
    overwrite : bool
        Replace an existing output.
    include_rejected : bool
        Also stack the frames that normalize rejected (see
        :func:`normalize_rejections`); by default they are skipped.
    workers, scheduler
        Chunks in local processes or on a Dask scheduler (same result).
    progress, cancel
        ``progress(done, total, message)`` per chunk; cancel leaves no output.

    Returns
    -------
    StackResult
        Frames that cannot be used (unreadable, another shape, no weight) are
        skipped, their rows carry the error; frames that normalize rejected
        are skipped, their rows say so (``skipped``).

    Raises
    ------
    FrameError
        No usable frame, or the output cannot be written or would replace an input.
    Cancelled
    """
    frames = [Path(f) for f in frames]
    if not frames:
        raise FrameError(None, "no frames to stack")
    if out is not None:
        refuse_inputs([out], frames)
        if Path(out).exists() and not overwrite:
            from ..io import OutputExistsError

            raise OutputExistsError(out, "output exists")
    rejected = {} if include_rejected else normalize_rejections(frames)
    sources, w, header, rows = _open_all(frames, weights, rejected)
    if not sources:
        first_bad = rows[0]
        hint = "; --include-rejected stacks them" if all(r["skipped"] for r in rows) else ""
        raise FrameError(first_bad["file"], f"{first_bad['error'] or first_bad['skipped']} "
                                            f"(none of the {len(rows)} frame(s) can be "
                                            f"stacked{hint})")
    method = Rejection.resolve(rejection, len(sources))
    shape = sources[0].shape
    step = _chunk_rows(len(sources), shape, chunk_rows)
    height = shape[-2]
    spans = [(y, min(height, y + step)) for y in range(0, height, step)]
    planes = (shape[0] if len(shape) == 3 else 1, height, shape[-1])
    arrays = {"stack": np.zeros(planes, np.float32),
              **{k: np.zeros(planes, np.int16) for k in ("n_low", "n_high", "n_used")}}
    frame_low = np.zeros(len(sources), np.int64)
    frame_high = np.zeros(len(sources), np.int64)
    frame_valid = np.zeros(len(sources), np.int64)
    job = _StackJob(sources, w, method)
    report(progress, 0, len(spans), f"stacking {len(sources)} frames ({method.method})")
    for k, res in map_frames(_stack_chunk, job, spans, workers=workers, scheduler=scheduler,
                             cancel=cancel):
        if isinstance(res, FrameError):
            raise res
        y0, y1 = spans[k]
        for name in arrays:
            arrays[name][:, y0:y1] = getattr(res, name)
        frame_low += res.frame_low
        frame_high += res.frame_high
        frame_valid += res.frame_valid
        report(progress, k + 1, len(spans), f"rows {y0}-{y1}")
        check_cancel(cancel)
    mono = len(shape) == 2
    result = StackResult(output=Path(out) if out is not None else None,
                         rejection=method, chunk_rows=step,
                         **{k: (v[0] if mono else v) for k, v in arrays.items()})
    npix = float(np.prod(shape))
    for row, lo, hi, n_valid in zip([r for r in rows if _stacked(r)], frame_low, frame_high,
                                    frame_valid, strict=True):
        row["rejected_low"], row["rejected_high"] = float(lo / npix), float(hi / npix)
        if n_valid == 0:  # NaN (no data) everywhere: it added nothing
            row["error"] = NO_DATA_ERROR
    result.rows = rows
    if not result.stacked:
        raise FrameError(None, f"none of the {len(rows)} frame(s) can be stacked: each has no "
                               "data or could not be used (the frames' errors say which)")
    if out is not None:
        _write(result, header, _history(result, weights), Path(out), overwrite)
    return result


def write_stack(result: StackResult, out: str | os.PathLike, *, header=None,
                weights: str | None = None, overwrite: bool = False) -> Path:
    """Write a :class:`StackResult` as :func:`stack_frames` does (atomically).

    ``weights`` names where the weights came from, for the HISTORY lines.
    """
    out = Path(out)
    _write(result, header, _history(result, weights), out, overwrite)
    result.output = out
    return out


def _history(result: StackResult, weights: str | None) -> list[str]:
    r = result.rejection
    lines = [f"STACK: napari-nsg {__version__}, weighted mean of "
             f"{len(result.stacked)} frames",
             f"STACK.weights = {weights or 'none'}",
             f"STACK.rejection = {r.method} (low {r.low:g}, high {r.high:g})"]
    lines += [f"STACK.frame = {Path(row['file']).name} weight {row['weight']:.5g}"
              for row in result.stacked]
    return lines


def stack_arrays(
    frames,
    weights=None,
    *,
    names=None,
    rejection: str = "auto",
    chunk_rows: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> StackResult:
    """Integrate frames held in memory (e.g. the NSG session's normalized frames).

    The same integration as :func:`stack_frames`, chunk of rows by chunk of
    rows, on arrays instead of files (the frames themselves are in memory).

    Parameters
    ----------
    frames : sequence of ndarray
        ``(y, x)`` or ``(c, y, x)``, one shape.
    weights : sequence of float, optional
        One per frame (default equal).
    names : sequence of str, optional
        For the rows and messages (default ``frame 0``, ``frame 1``...).
    rejection, chunk_rows, progress, cancel
        As :func:`stack_frames`.

    Raises
    ------
    FrameError
        No frames, or frames of different shapes.
    Cancelled
    """
    frames = [np.asarray(f) for f in frames]
    names = list(names) if names is not None else [f"frame {k}" for k in range(len(frames))]
    if not frames:
        raise FrameError(None, "no frames to stack")
    shape = frames[0].shape
    for name, f in zip(names, frames):
        if f.shape != shape:
            raise FrameError(name, f"has shape {f.shape}, {names[0]} has {shape}")
    w = np.ones(len(frames)) if weights is None else np.asarray(weights, float)
    method = Rejection.resolve(rejection, len(frames))
    step = _chunk_rows(len(frames), shape, chunk_rows)
    height = shape[-2]
    parts = []
    for y0 in range(0, height, step):
        check_cancel(cancel)
        y1 = min(height, y0 + step)
        block = np.stack([(f[None] if f.ndim == 2 else f)[:, y0:y1] for f in frames])
        parts.append(integrate(block, w, method))
        report(progress, y1, height, f"rows {y0}-{y1}")
    mono = len(shape) == 2

    def joined(name):
        arr = np.concatenate([getattr(p, name) for p in parts], axis=-2)
        return arr[0] if mono else arr

    result = StackResult(output=None, stack=joined("stack"), n_low=joined("n_low"),
                         n_high=joined("n_high"), n_used=joined("n_used"), rejection=method,
                         chunk_rows=step)
    npix = float(np.prod(shape))
    low = sum(p.frame_low for p in parts)
    high = sum(p.frame_high for p in parts)
    valid = sum(p.frame_valid for p in parts)
    result.rows = [{"file": n, "weight": float(wk), "rejected_low": float(lo / npix),
                    "rejected_high": float(hi / npix),
                    "error": NO_DATA_ERROR if nv == 0 and wk > 0 else None, "skipped": None}
                   for n, wk, lo, hi, nv in zip(names, w, low, high, valid)]
    return result
