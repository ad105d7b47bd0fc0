"""``register``: align sub-frames onto the pixel grid of a reference frame.

:func:`register_frames` reads the reference once (stars detected once), then
for every frame, one frame in memory at a time per worker:

    read (debayer) -> detect stars -> match (rotation, flip) -> fit model -> resample -> write

Each frame is written as ``<stem>_reg.fits``: float32, 0 where the frame does
not cover the reference, the frame's header kept (its own WCS replaced by the
reference's, or dropped), plus ``REG*`` keywords for the transform and the
residual. The reference itself is written unchanged (identity), so the output
folder holds the whole registered set. ``register_results.json`` and ``.csv``
give one row per frame (stars, pairs, residual, rotation, shift, coverage,
error). A frame that cannot be registered is reported and skipped; the batch
goes on. The guarantees of ``normalize`` hold: atomic outputs, no output
replaces an input, ``resume`` keeps the complete frames of the same run, and
a folder holding another run's report is refused unless ``overwrite``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..core.registration import RegistrationError
from ..core.registration.frames import (
    FRAME_MODELS,
    RESAMPLERS,
    FrameRegistration,
    detect_reference_stars,
    prepare_scratch,
    register_frame,
    release_scratch,
    resample,
)
from ..core.stars import intensity
from ..io import FrameError, MosaicError, OutputExistsError, read_frame, remove_partials
from ..io.atomic import (
    DiskFullError,
    InputCollisionError,
    atomic_write_text,
    make_output_folder,
    refuse_inputs,
    same_file,
)
from ..io.read import frame_stem
from ..io.write import write_frame
from .executors import map_frames, overlapped_frames
from .normalize import ForeignRunError, ResumeMismatchError
from .progress import CancelToken, ProgressCallback, check_cancel, report

__all__ = ["JSON_NAME", "OUTPUT_SUFFIX", "RegisterResult", "RegisterRow", "register_frames",
           "registered_path"]

OUTPUT_SUFFIX = "_reg"
JSON_NAME = "register_results.json"
CSV_NAME = "register_results.csv"
#: A frame covering less of the reference than this is reported as failed.
MIN_COVERAGE = 0.05
_WCS_PREFIXES = ("CTYPE", "CRPIX", "CRVAL", "CDELT", "CUNIT", "CROTA", "CD1_", "CD2_", "PC1_",
                 "PC2_", "A_", "B_", "AP_", "BP_", "PV1_", "PV2_")
_WCS_KEYS = ("WCSAXES", "LONPOLE", "LATPOLE", "RADESYS", "EQUINOX", "CTYPE1", "CTYPE2")


def registered_path(frame: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Where a frame's registered image goes: ``<out_dir>/<stem>_reg.fits``."""
    return Path(out_dir) / f"{frame_stem(frame)}{OUTPUT_SUFFIX}.fits"


@dataclass
class RegisterRow:
    """One frame's line of the register report."""

    file: str
    output: str | None = None
    is_reference: bool = False
    n_stars: int | None = None
    n_pairs: int | None = None
    residual_px: float | None = None
    rotation_deg: float | None = None
    shift_x: float | None = None
    shift_y: float | None = None
    scale: float | None = None
    coverage: float | None = None
    seconds: float | None = None
    warnings: list = field(default_factory=list)
    error: str | None = None
    error_kind: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


CSV_COLUMNS = ("file", "output", "is_reference", "n_stars", "n_pairs", "residual_px",
               "rotation_deg", "shift_x", "shift_y", "scale", "coverage", "seconds",
               "warnings", "error")


@dataclass
class RegisterJob:
    """What every frame's task needs (sent once to each worker)."""

    reference: str
    reference_lum: np.ndarray
    reference_stars: object
    channels: int
    out_dir: str
    model: str = "projective"
    distortion: bool = False
    resampling: str = "lanczos-clamped"
    debayer: str | None = None
    wcs: dict = field(default_factory=dict)


@dataclass
class RegisterResult:
    """The rows of a run and where its report is."""

    out_dir: Path
    reference: str
    parameters: dict
    rows: list = field(default_factory=list)
    cwd: str = ""

    @property
    def json_path(self) -> Path:
        return Path(self.out_dir) / JSON_NAME

    @property
    def failed(self) -> list:
        return [r for r in self.rows if not r.ok]

    def to_dict(self) -> dict:
        return {"napari_nsg": __version__, "command": "register", "reference": self.reference,
                "parameters": self.parameters, "cwd": self.cwd,
                "frames": [asdict(r) for r in self.rows]}

    def write(self) -> None:
        """The JSON and CSV reports, each written atomically."""
        text = json.dumps(self.to_dict(), indent=2, default=float)
        atomic_write_text(self.json_path, text, overwrite=True)
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(CSV_COLUMNS)
        for r in self.rows:
            d = asdict(r)
            d["warnings"] = "; ".join(r.warnings)
            writer.writerow(["" if d[c] is None else d[c] for c in CSV_COLUMNS])
        atomic_write_text(Path(self.out_dir) / CSV_NAME, buf.getvalue(), overwrite=True)


def _wcs_cards(header) -> dict:
    return {k: header[k] for k in header
            if k in _WCS_KEYS or k.startswith(_WCS_PREFIXES)}


def _keywords(job: RegisterJob, reg: FrameRegistration | None, coverage: float) -> dict:
    kw = {"REGREF": (Path(job.reference).name, "registration reference frame"),
          "REGCOVER": (round(coverage, 5), "fraction of the reference covered")}
    if reg is None:
        kw["REGMODEL"] = ("identity", "this frame is the reference")
        return kw
    kw.update({
        "REGMODEL": (reg.model + ("+distortion" if reg.transform.distortion is not None else ""),
                     "geometric model reference -> frame"),
        "REGRMS": (round(reg.residual_px, 4), "matched-star residual RMS (px)"),
        "REGNPAIR": (reg.n_pairs, "matched star pairs"),
        "REGROT": (round(reg.rotation_deg, 4), "rotation reference -> frame (deg)"),
        "REGDX": (round(reg.shift[0], 3), "shift of the centre in x (px)"),
        "REGDY": (round(reg.shift[1], 3), "shift of the centre in y (px)"),
        "REGSCALE": (round(reg.scale, 6), "frame px per reference px"),
    })
    h = reg.transform.homography
    for i in range(3):
        for j in range(3):
            kw[f"REGH{i + 1}{j + 1}"] = (float(f"{h[i, j]:.10g}"), "homography reference -> frame")
    return kw


def _header_for_output(header, job: RegisterJob):
    out = header.copy()
    for key in [k for k in out if k in _WCS_KEYS or k.startswith(_WCS_PREFIXES)]:
        out.remove(key, ignore_missing=True, remove_all=True)
    for key, value in job.wcs.items():
        out[key] = value
    return out


@dataclass
class _Loaded:
    """A frame read for registration (the first stage of its task)."""

    path: str
    is_reference: bool
    overwrite: bool
    out: Path
    row: RegisterRow
    data: np.ndarray
    header: object
    t0: float
    reg: FrameRegistration | None = None  # set by _analyse (None for the reference)


def _new_row(item: tuple[str, bool, bool]) -> RegisterRow:
    return RegisterRow(file=str(item[0]), is_reference=item[1])


def _load(job: RegisterJob, item: tuple[str, bool, bool], row: RegisterRow) -> _Loaded:
    """Read one frame and check it can be registered onto the reference (raises on failure)."""
    t0 = time.perf_counter()
    path, is_reference, overwrite = item
    out = registered_path(path, job.out_dir)
    if out.exists() and not overwrite:
        raise OutputExistsError(out, "output exists")
    frame = read_frame(path, debayer=job.debayer)
    if frame.meta.bayer_pattern and frame.data.ndim == 2:
        raise MosaicError(path, f"is a raw colour mosaic (BAYERPAT {frame.meta.bayer_pattern}): "
                                "it must be debayered before it is registered")
    if frame.n_channels != job.channels:
        raise FrameError(path, f"has {frame.n_channels} channel(s), the reference "
                               f"{job.channels}")
    return _Loaded(path=path, is_reference=is_reference, overwrite=overwrite, out=out, row=row,
                   data=frame.data, header=_header_for_output(frame.header, job), t0=t0)


def _analyse(job: RegisterJob, loaded: _Loaded) -> _Loaded:
    """The frame's map onto the reference: stars, matching, model (raises on failure)."""
    if not loaded.is_reference:
        try:
            loaded.reg = register_frame(job.reference_lum, loaded.data, model=job.model,
                                        distortion=job.distortion,
                                        reference_stars=job.reference_stars)
        except RegistrationError as exc:
            raise FrameError(loaded.path, f"cannot be registered: {exc}") from None
    return loaded


def _load_and_analyse(job: RegisterJob, item: tuple[str, bool, bool], row: RegisterRow):
    return _analyse(job, _load(job, item, row))


def _compute(job: RegisterJob, loaded: _Loaded):
    """``(data, keywords, history)`` of the analysed frame, resampled; fills its row (raises
    on failure)."""
    row, path, reg = loaded.row, loaded.path, loaded.reg
    if loaded.is_reference:
        # the compute thread is idle while the next frame is read: its work arrays now
        prepare_scratch(job.reference_lum.shape, job.resampling, planes=job.channels)
        row.coverage, row.residual_px, row.n_pairs = 1.0, 0.0, None
        row.rotation_deg, row.shift_x, row.shift_y, row.scale = 0.0, 0.0, 0.0, 1.0
        return loaded.data, _keywords(job, None, 1.0), ["REG: this frame is the reference"]
    data, coverage = resample(loaded.data, reg.transform, job.reference_lum.shape,
                              method=job.resampling)
    row.n_stars, row.n_pairs, row.residual_px = reg.n_stars, reg.n_pairs, reg.residual_px
    row.rotation_deg, row.scale = reg.rotation_deg, reg.scale
    row.shift_x, row.shift_y = reg.shift
    row.coverage = coverage
    row.warnings = list(reg.warnings)
    if coverage < MIN_COVERAGE:
        raise FrameError(path, f"covers only {100 * coverage:.1f}% of the reference")
    history = [f"REG: registered by napari-nsg {__version__} onto {Path(job.reference).name}",
               (f"REG: model {reg.model}, resampling {job.resampling}, "
                f"residual {reg.residual_px:.3f} px from {reg.n_pairs} stars")]
    return data, _keywords(job, reg, coverage), history


def _store(loaded: _Loaded, computed) -> RegisterRow:
    """Write the registered frame (atomically); its completed row (raises on failure)."""
    data, kw, history = computed
    write_frame(loaded.out, data, loaded.header, kw, history=history, overwrite=loaded.overwrite)
    loaded.row.output = str(loaded.out)
    loaded.row.seconds = time.perf_counter() - loaded.t0
    return loaded.row


def _failed(row: RegisterRow, exc: BaseException, t0: float | None = None) -> RegisterRow:
    """``row`` with the error of its frame's task (expected failures, and bugs)."""
    if isinstance(exc, FrameError):
        row.error = exc.reason if Path(exc.path or "") == Path(row.file) else str(exc)
        row.error_kind = type(exc).__name__
    elif isinstance(exc, MemoryError):
        row.error = "out of memory while registering this frame"
    else:  # a bug must not stop the batch; the row says why
        last = traceback.extract_tb(exc.__traceback__)[-1]
        row.error = (f"unexpected {type(exc).__name__}: {exc} "
                     f"({Path(last.filename).name}:{last.lineno})")
    if t0 is not None:
        row.seconds = time.perf_counter() - t0
    return row


def process_frame(job: RegisterJob, item: tuple[str, bool, bool]) -> RegisterRow:
    """Register one frame and write it; never raises (errors go in the row)."""
    row = _new_row(item)
    t0 = time.perf_counter()
    try:
        loaded = _load_and_analyse(job, item, row)
        return _store(loaded, _compute(job, loaded))
    except Exception as exc:  # noqa: BLE001 - every failure (bugs too) becomes the frame's row
        return _failed(row, exc, t0)


def pipelined_frames(job: RegisterJob, items, cancel: CancelToken | None = None):
    """Yield ``(index, row)`` like ``map_frames(process_frame, job, items)`` in one process,
    with reading, registering and writing overlapped (:func:`~.executors.overlapped_frames`).

    The reader thread also finds the next frame's map (star detection and matching:
    mostly one core) while the compute thread resamples the current one (OpenCV:
    both cores).
    """
    items = list(items)
    rows = [_new_row(item) for item in items]
    return overlapped_frames(
        items, lambda k, item: _load_and_analyse(job, item, rows[k]),
        lambda loaded: _compute(job, loaded), _stored_row,
        lambda k, item, loaded, exc: _failed(rows[k], exc, getattr(loaded, "t0", None)),
        cancel=cancel, name="register",
        finish_compute=release_scratch)  # the compute thread's resampling work arrays


def _stored_row(loaded: _Loaded, computed) -> RegisterRow:
    """:func:`_store`, its failure made the frame's error row."""
    try:
        return _store(loaded, computed)
    except Exception as exc:  # noqa: BLE001 - the frame's row says what happened
        return _failed(loaded.row, exc, loaded.t0)


def _absolute(path, base=None) -> str:
    return os.path.realpath(os.path.join(base or os.getcwd(), os.fspath(path)))


def _earlier(out_dir: Path, reference: Path, parameters: dict, overwrite: bool,
             resume: bool) -> tuple[dict, str | None]:
    """Rows of an earlier run of the same reference and parameters in ``out_dir``."""
    path = out_dir / JSON_NAME
    if not path.exists():
        return {}, None
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        base = old.get("cwd")
        same_ref = same_file(_absolute(old.get("reference", ""), base), reference)
        differs = None if same_ref else "reference"
        if differs is None and old.get("parameters") != parameters:
            differs = "parameters"
    except (OSError, ValueError, AttributeError):
        old, base, differs = None, None, "unreadable"
    if differs is None:
        return {_absolute(r["file"], base): r for r in old.get("frames", [])}, base
    if overwrite:
        return {}, None
    cls = ResumeMismatchError if resume else ForeignRunError
    raise cls(path, differs, None if old is None else old.get("reference"))


def _plan(frames, reference, out_dir, earlier, base, overwrite, resume):
    rows: list = [None] * len(frames)
    todo = []
    for i, f in enumerate(frames):
        out = registered_path(f, out_dir)
        try:
            refuse_inputs([out], [*frames, reference])
        except InputCollisionError as exc:
            rows[i] = RegisterRow(file=str(f), error=str(exc), error_kind=type(exc).__name__)
            continue
        prev = earlier.get(_absolute(f))
        complete = (prev is not None and not prev.get("error") and prev.get("output")
                    and Path(_absolute(prev["output"], base)).exists())
        if complete and resume and not overwrite:
            rows[i] = RegisterRow(**{k: prev.get(k) for k in RegisterRow.__dataclass_fields__
                                     if k in prev})
            rows[i].file = str(f)
            continue
        todo.append((i, overwrite or prev is not None))
    return rows, todo


def _check_names(frames: list[Path], out_dir: Path) -> None:
    if not frames:
        raise FrameError(None, "no frames to register")
    seen: dict = {}
    for f in frames:
        out = registered_path(f, out_dir)
        if out in seen and not same_file(seen[out], f):
            raise FrameError(f, f"would write the same output {out.name} as {seen[out]}")
        seen[out] = f


def _prepare(reference: Path, out_dir: Path, debayer, model, distortion, resampling) -> RegisterJob:
    ref = read_frame(reference, debayer=debayer)
    if ref.meta.bayer_pattern and ref.data.ndim == 2:
        raise MosaicError(reference, f"is a raw colour mosaic (BAYERPAT "
                                     f"{ref.meta.bayer_pattern}): it must be debayered")
    lum = np.ascontiguousarray(intensity(ref.data), dtype=np.float32)
    stars = detect_reference_stars(lum)
    if len(stars) < 6:
        raise FrameError(reference, f"cannot serve as the reference: only {len(stars)} "
                                    "star(s) detected")
    return RegisterJob(reference=str(reference), reference_lum=lum, reference_stars=stars,
                       channels=ref.n_channels, out_dir=str(out_dir), model=model,
                       distortion=distortion, resampling=resampling, debayer=debayer,
                       wcs=_wcs_cards(ref.header))


def register_frames(
    frames,
    reference: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    model: str = "projective",
    distortion: bool = False,
    resampling: str = "lanczos-clamped",
    debayer: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    workers: int = 1,
    scheduler: str | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> RegisterResult:
    """Register ``frames`` onto ``reference`` and write them to ``out_dir``.

    Parameters
    ----------
    frames : sequence of path-like
    reference : path-like
        Its pixel grid is the output grid (it need not be among ``frames``).
    out_dir : path-like
    model : {"similarity", "affine", "projective"}
    distortion : bool
        Add a smoothing distortion spline to the model.
    resampling : {"lanczos-clamped", "lanczos", "cubic", "linear"}
    debayer : {None, "superpixel", "bilinear"}
        Debayer raw colour frames first (the reference too); a raw frame without
        it is refused, never registered as a mosaic.
    overwrite, resume : bool
        As for ``normalize``.
    workers, scheduler
        Local processes or a Dask scheduler.
    progress, cancel

    Returns
    -------
    RegisterResult

    Raises
    ------
    FrameError
        The reference is unusable, an output would replace an input, or the
        folder holds another run's report (:class:`ForeignRunError`).
    Cancelled
    """
    if model not in FRAME_MODELS:
        raise FrameError(None, f"unknown model {model!r}; use one of {', '.join(FRAME_MODELS)}")
    if resampling not in RESAMPLERS:
        raise FrameError(None, f"unknown resampling {resampling!r}; use one of "
                               f"{', '.join(RESAMPLERS)}")
    frames = [Path(f) for f in frames]
    reference, out_dir = Path(reference), Path(out_dir)
    _check_names(frames, out_dir)
    params = {"model": model, "distortion": distortion, "resampling": resampling,
              "debayer": debayer}
    result = RegisterResult(out_dir=out_dir, reference=str(reference), parameters=params,
                            cwd=os.getcwd())
    refuse_inputs([result.json_path, out_dir / CSV_NAME], [*frames, reference])
    make_output_folder(out_dir)
    remove_partials(out_dir, keep=[*frames, reference])
    earlier, base = _earlier(out_dir, reference, params, overwrite, resume)
    rows, todo = _plan(frames, reference, out_dir, earlier, base, overwrite, resume)
    total = len(frames)
    report(progress, 0, total, f"reference {reference.name}")
    job = _prepare(reference, out_dir, debayer, model, distortion, resampling)
    items = [(str(frames[i]), same_file(frames[i], reference), mine) for i, mine in todo]
    done = total - len(todo)
    if workers <= 1 and not scheduler and len(items) > 1:
        tasks = pipelined_frames(job, items, cancel)
    else:
        tasks = map_frames(process_frame, job, items, workers=workers, scheduler=scheduler,
                           cancel=cancel)
    full = None  # the row of a frame whose output did not fit on the disk
    try:
        for k, row in tasks:
            rows[todo[k][0]] = row
            done += 1
            report(progress, done, total, Path(row.file).name)
            result.rows = [r for r in rows if r is not None]
            result.write()
            check_cancel(cancel)
            if row.error_kind == DiskFullError.__name__:
                full = row
                break  # the frames after it would be registered only to fail the same way
    finally:
        tasks.close()  # now: pending work is dropped
        result.rows = [r for r in rows if r is not None]
        release_scratch()  # the resampling's work arrays, kept from frame to frame
    if full is not None:
        why = (f"not registered: the output disk filled up at {Path(full.file).name}; free "
               "space, then run the same command with --resume")
        rows = [r if r is not None else RegisterRow(file=str(f), error=why,
                                                    is_reference=same_file(f, reference),
                                                    error_kind=DiskFullError.__name__)
                for r, f in zip(rows, frames)]
        result.rows = rows
    result.write()
    return result
