"""``normalize``: NormalizeScaleGradient over a batch of frames.

:func:`normalize_frames` reads the reference once, prepares the
:class:`~napari_nsg.core.nsg.ReferenceModel`, then normalizes every frame
against it (in one process, reading the next frame and writing the last one
while one is normalized: at most three frames in memory; or one frame at a
time per worker process):

    read -> stars -> photometry -> scale -> samples -> spline -> correct -> weight -> write

A frame that fails (missing, unreadable, wrong size or colour depth, no
data, no star pairs...) gets its error in the report and the others go on.

What is on disk is always accounted for:

- A frame's outputs (normalized, gradient and curvature images) are written as
  one unit: temporary names, then renamed together; if that is interrupted the
  ones already renamed are removed.
- No output replaces an input (links resolved): such a frame fails.
- Before any output is written, the JSON report is written with the frames
  whose outputs this run may write (``claimed``: those whose outputs did not
  exist, or all with ``overwrite``); it is rewritten after every frame.
- A folder holding the report of another run (other reference or parameters)
  is refused as a whole unless ``overwrite``: :class:`ForeignRunError`
  (:class:`ResumeMismatchError` with ``resume``), and that report is left as it is.
- A run with the same reference and parameters (``resume``, or a plain
  re-run) keeps the complete rows and redoes the other frames it had
  claimed, replacing what they left; another output in the way is refused
  ("output exists").

Relative weight and transmission, and rejection by
``min_weight``/``min_transmission``, are computed once all frames are measured:
rejected frames are still written, and flagged in the report.
"""

from __future__ import annotations

import contextlib
import functools
import os
import traceback
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..core.nsg import (
    NsgError,
    NsgParameters,
    PreparedTarget,
    ReferenceModel,
    exposure_hint,
    normalize_frame,
    prepare_reference,
    prepare_target,
    reference_result,
    rejection,
    relative_values,
    target_plan,
)
from ..core.nsg.engine import prepare_spline_system
from ..io import FrameError, OutputExistsError, read_frame, remove_partials
from ..io.atomic import (
    DiskFullError,
    InputCollisionError,
    make_output_folder,
    pause_for_test,
    refuse_inputs,
    same_file,
)
from ..io.buffers import FrameBuffers, reused_heap
from ..io.read import frame_stem
from ..io.write import frame_hdu, write_frames
from ._values import floats
from .executors import available_cores, map_frames, overlapped_frames, prestart_workers
from .progress import CancelToken, ProgressCallback, check_cancel, report
from .reading import ReadingProcess
from .reading import prestart as prestart_reading
from .reading import wanted as reading_wanted
from .report import JSON_NAME, FrameRow, NormalizeReport, read_report

__all__ = ["OUTPUT_SUFFIX", "ForeignRunError", "NormalizeJob", "ResumeMismatchError",
           "normalize_frames", "output_paths"]

OUTPUT_SUFFIX = "_nsg"


class ForeignRunError(FrameError):
    """The output folder holds the report of another run, whose files are not ours to replace.

    Attributes
    ----------
    differs : {"reference", "parameters", "unreadable"}
        What differs from this run (or that the report cannot be read).
    other_reference : str or None
        The reference of that run, as its report gives it.
    """

    def __init__(self, path, differs: str, other_reference: str | None):
        self.differs = differs
        self.other_reference = other_reference
        what = {"reference": f"with another reference ({other_reference})",
                "parameters": "with other parameters",
                "unreadable": "that cannot be read back"}[differs]
        super().__init__(path, f"is the report of an earlier run {what}; its outputs "
                               "are not replaced")


class ResumeMismatchError(ForeignRunError):
    """Resuming was asked, but the report in the folder is another run's."""


def output_paths(frame: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Where a frame's outputs go: ``output``, ``gradient``, ``curvature``."""
    stem = frame_stem(frame)
    out = Path(out_dir)
    return {
        "output": out / f"{stem}{OUTPUT_SUFFIX}.fits",
        "gradient": out / f"{stem}_gradient.fits",
        "curvature": out / f"{stem}_curvature.fits",
    }


@dataclass
class NormalizeJob:
    """What every frame's task needs (sent once to each worker).

    Attributes
    ----------
    model : ReferenceModel
    reference : str
        The reference file (for keywords and the report).
    out_dir : str
    gradient_images, overwrite : bool
    debayer : str or None
    reference_filter : str or None
    reference_header : astropy.io.fits.Header or None
        Kept in the reference's own output.
    """

    model: ReferenceModel
    reference: str
    out_dir: str
    gradient_images: bool = False
    overwrite: bool = False
    debayer: str | None = None
    reference_filter: str | None = None
    reference_header: object = None


def _keywords(job: NormalizeJob, res) -> dict:
    kw = {"NSGREF": (Path(job.reference).name, "NSG reference frame")}
    for c in range(len(res.scale)):
        kw[f"NSGS{c}"] = (float(f"{res.transmission[c]:.5g}"), f"NSG transmission (1/scale) ch {c}")
        kw[f"NSGSNR{c}"] = (float(f"{res.snr[c]:.5g}"), f"NSG SNR relative to reference ch {c}")
    kw["NWEIGHT"] = (float(f"{res.weight:.5g}"), f"NSG weight (SNR^2), noise {res.noise_source}")
    return kw


def _history(job: NormalizeJob, res) -> list[str]:
    lines = [f"NSG: normalized by napari-nsg {__version__}",
             f"NSG.reference = {Path(job.reference).name}"]
    if res.is_reference:
        lines.append("NSG.reference: this frame is the reference")
    lines += [f"NSG.scale{c} = {res.scale[c]:.6g} +- {res.scale_error[c]:.2g}"
              for c in range(len(res.scale))]
    lines += [f"NSG.noise{c} = {res.noise[c]:.6g} ({res.noise_source})"
              for c in range(len(res.noise))]
    lines += job.model.params.history()
    return lines


def _row_from(path: str, res, meta, paths: dict, job: NormalizeJob) -> FrameRow:
    row = _base_row(path, meta)
    row.output = str(paths["output"])
    row.is_reference = bool(res.is_reference)
    row.scale = floats(res.scale)
    row.scale_error = floats(res.scale_error)
    row.transmission = floats(res.transmission)
    row.snr = floats(res.snr)
    row.weight = float(res.weight)
    row.noise = floats(res.noise)
    row.noise_source = res.noise_source
    row.n_star_pairs = [int(v) for v in np.atleast_1d(res.n_star_pairs)]
    row.n_samples = int(res.n_samples)
    row.offset = floats(res.offset)
    row.warnings = list(res.warnings)
    if job.gradient_images:
        row.gradient_output = str(paths["gradient"])
        row.curvature_output = str(paths["curvature"])
    return row


def _base_row(path: str, meta=None) -> FrameRow:
    row = FrameRow(file=str(path))
    if meta is not None:
        row.altitude, row.airmass = meta.altitude, meta.airmass
        row.exposure, row.date_obs, row.filter = meta.exposure, meta.date_obs, meta.filter
    return row


def _outputs_wanted(paths: dict, gradient_images: bool) -> list[Path]:
    return [paths["output"]] + ([paths["gradient"], paths["curvature"]]
                                if gradient_images else [])


@dataclass
class _Loaded:
    """A frame read for its task (or the reference, which is not read again)."""

    path: str
    is_reference: bool
    overwrite: bool
    paths: dict
    data: PreparedTarget | NsgError | None = None  # see _load
    meta: object = None
    header: object = None
    buffer: np.ndarray | None = None  # the pixels' buffer, given back once written
    give_back: Callable[[], None] | None = None  # gives the pixels' memory back instead


def _load(job: NormalizeJob, item: tuple[str, bool, bool],
          buffers: FrameBuffers | None = None, reading: ReadingProcess | None = None
          ) -> _Loaded:
    """Refuse outputs in the way, read the frame (raises FrameError) and prepare it:
    its no-data and noise (:func:`~napari_nsg.core.nsg.prepare_target`), here on the
    reading thread or in the ``reading`` process, off the path of the thread that
    normalizes (an NsgError is raised by :func:`_measure`). Its pixels go to a
    buffer of ``buffers`` or a slot of ``reading`` (see :func:`_release`)."""
    path, is_reference, overwrite = item
    loaded = _Loaded(path, is_reference, overwrite, output_paths(path, job.out_dir))
    if not overwrite:
        for p in _outputs_wanted(loaded.paths, job.gradient_images):
            if p.exists():
                raise OutputExistsError(p, "output exists")
    if is_reference:
        return loaded
    if reading is not None and not reading.broken:
        with contextlib.suppress(BrokenProcessPool):  # else read here, as without it
            got = reading.read(path)
            loaded.meta, loaded.header, loaded.data = got.meta, got.header, got.prepared
            loaded.buffer = got.data
            loaded.give_back = functools.partial(reading.give, got.slot)
            return loaded
    frame = read_frame(path, debayer=job.debayer, buffers=buffers)
    loaded.meta, loaded.header, loaded.buffer = frame.meta, frame.header, frame.data
    try:
        loaded.data = prepare_target(job.model, frame.data, frame.meta,
                                     overwrite_input=True, with_noise=True)
    except NsgError as exc:  # raised by _measure, with the frame's metadata at hand
        loaded.data = exc
    return loaded


def _release(loaded: _Loaded | None, buffers: FrameBuffers | None) -> None:
    """Give a finished frame's pixel buffer back (its corrected image, written or
    failed, is no longer used: the next frame read may overwrite it)."""
    if loaded is not None and loaded.give_back is not None:
        loaded.give_back()
        loaded.buffer = loaded.data = loaded.give_back = None
    elif loaded is not None and buffers is not None:
        buffers.give(loaded.buffer)
        loaded.buffer = loaded.data = None


def _measure(job: NormalizeJob, loaded: _Loaded):
    """(result, metadata, header) of one loaded frame, its keywords' warnings included."""
    if loaded.is_reference:
        meta, frame_header = job.model.meta, job.reference_header
        res = reference_result(job.model, gradient_images=job.gradient_images)
    else:
        meta, frame_header = loaded.meta, loaded.header
        if isinstance(loaded.data, NsgError):
            raise loaded.data
        res = normalize_frame(job.model, loaded.data, meta, gradient_images=job.gradient_images)
    warn = []
    if (not loaded.is_reference and job.reference_filter and meta.filter
            and meta.filter != job.reference_filter):
        warn.append(f"FILTER '{meta.filter}' differs from the reference's "
                    f"'{job.reference_filter}'")
    res.warnings = warn + res.warnings
    return res, meta, frame_header


def _write_unit(job: NormalizeJob, paths: dict, res, frame_header, overwrite: bool) -> None:
    """The frame's normalized (+ gradient and curvature) images, written as one unit."""
    kw, hist = _keywords(job, res), _history(job, res)
    hdus = {paths["output"]: frame_hdu(res.corrected, frame_header, kw, hist,
                                       path=paths["output"])}
    if job.gradient_images:
        gkw = {"NSGREF": kw["NSGREF"], "IMAGETYP": "NSG gradient"}
        hdus[paths["gradient"]] = frame_hdu(
            res.gradient, frame_header, gkw,
            ["NSG: gradient model subtracted from the scaled frame"], path=paths["gradient"])
        gkw = {"NSGREF": kw["NSGREF"], "IMAGETYP": "NSG curvature"}
        hdus[paths["curvature"]] = frame_hdu(
            res.curvature, frame_header, gkw,
            ["NSG: gradient minus its best-fit plane"], path=paths["curvature"])
    write_frames(hdus, overwrite=overwrite)
    pause_for_test("after_rename")


def _error_row(path: str, meta, is_reference: bool, error: str, kind: str | None = None):
    row = _base_row(path, meta)
    row.is_reference = is_reference
    row.error = error
    row.error_kind = kind
    return row


def _failed_row(path: str, meta, is_reference: bool, exc: BaseException) -> FrameRow:
    """The report row of a frame whose task raised ``exc`` (expected or not)."""
    if isinstance(exc, FrameError):
        text = exc.reason if Path(exc.path or "") == Path(path) else str(exc)
        return _error_row(path, meta, is_reference, text, type(exc).__name__)
    if isinstance(exc, NsgError):
        return _error_row(path, meta, is_reference, str(exc))
    if isinstance(exc, MemoryError):
        return _error_row(path, meta, is_reference, "out of memory while normalizing this frame")
    # a bug must not stop the batch; the row says what happened
    last = traceback.extract_tb(exc.__traceback__)[-1]
    return _error_row(path, meta, is_reference,
                      f"unexpected {type(exc).__name__}: {exc} "
                      f"({Path(last.filename).name}:{last.lineno})")


def process_frame(job: NormalizeJob, item: tuple[str, bool, bool]) -> FrameRow:
    """Normalize one frame and write its outputs; never raises (errors go in the row).

    Parameters
    ----------
    job : NormalizeJob
    item : (path, is_reference, overwrite)
        ``overwrite`` replaces this frame's existing outputs (``job.overwrite``,
        or a frame this run had claimed before it was interrupted).
    """
    path, is_reference, _ = item
    meta = loaded = None
    try:
        loaded = _load(job, item, _WORKER_BUFFERS)
        res, meta, frame_header = _measure(job, loaded)
        return _store(job, loaded, (res, meta, frame_header))
    except Exception as exc:  # noqa: BLE001 - every failure (bugs too) becomes the frame's row
        return _failed_row(path, meta, is_reference, exc)
    finally:
        _release(loaded, _WORKER_BUFFERS)


#: One pixel buffer kept between the frames a worker process normalizes in turn.
_WORKER_BUFFERS = FrameBuffers(1)
#: Frames :func:`pipelined_frames` holds at once: one read, one normalized, one written.
PIPELINE_FRAMES = 3


def _store(job: NormalizeJob, loaded: _Loaded, measured) -> FrameRow:
    """Write a measured frame's outputs as one unit; its report row (raises on failure)."""
    res, meta, frame_header = measured
    _write_unit(job, loaded.paths, res, frame_header, loaded.overwrite)
    return _row_from(loaded.path, res, meta, loaded.paths, job)


def pipelined_frames(job: NormalizeJob, items, cancel: CancelToken | None = None,
                     reading: ReadingProcess | None = None):
    """Yield ``(index, row)`` like ``map_frames(process_frame, job, items)`` in one
    process, with reading, normalizing and writing overlapped
    (:func:`~.executors.overlapped_frames`). The frames' pixels go to
    :data:`PIPELINE_FRAMES` buffers reused from frame to frame, or, with ``reading``,
    are read and prepared in that process (:mod:`.reading`)."""
    buffers = FrameBuffers(PIPELINE_FRAMES)
    return overlapped_frames(
        items, lambda k, item: _load(job, item, buffers, reading),
        lambda loaded: _measure(job, loaded),
        lambda loaded, measured: _stored_row(job, loaded, measured, buffers),
        lambda k, item, loaded, exc: _failed_frame(item, loaded, exc, buffers),
        cancel=cancel, name="nsg")


def _stored_row(job: NormalizeJob, loaded: _Loaded, measured,
                buffers: FrameBuffers | None = None) -> FrameRow:
    """:func:`_store`, its failure made the frame's error row; the buffer given back."""
    try:
        return _store(job, loaded, measured)
    except Exception as exc:  # noqa: BLE001 - the frame's row says what happened
        return _failed_row(loaded.path, measured[1], loaded.is_reference, exc)
    finally:
        _release(loaded, buffers)


def _failed_frame(item, loaded: _Loaded | None, exc: BaseException,
                  buffers: FrameBuffers) -> FrameRow:
    """The row of a frame whose reading or normalizing failed; its buffer given back."""
    _release(loaded, buffers)
    return _failed_row(item[0], getattr(loaded, "meta", None), item[1], exc)


def _absolute(path: str | os.PathLike, base: str | os.PathLike | None = None) -> str:
    """``path`` made absolute against ``base`` (the current folder if None), links resolved."""
    return os.path.realpath(os.path.join(base or os.getcwd(), os.fspath(path)))


def _complete(row: dict, gradient_images: bool, base: str | None) -> bool:
    if row.get("error") is not None or not row.get("output"):
        return False
    keys = ["output"] + (["gradient_output", "curvature_output"] if gradient_images else [])
    return all(row.get(k) and Path(_absolute(row[k], base)).exists() for k in keys)


@dataclass
class _Earlier:
    """What the report already in the output folder says (a run of the same reference
    and parameters only)."""

    rows: dict  # absolute frame path -> row dict
    claimed: set  # absolute frame paths whose outputs that run may have written
    base: str | None  # the folder its relative paths are relative to


def _earlier_run(out_dir: Path, reference: Path, parameters: dict, *,
                 overwrite: bool, resume: bool) -> _Earlier:
    """Read the report in ``out_dir``; refuse another run's unless ``overwrite``."""
    json_path = out_dir / JSON_NAME
    old = read_report(out_dir)
    if old is None and not json_path.exists():
        return _Earlier({}, set(), None)
    base = old.get("cwd") if old else None
    if old is None:
        differs = "unreadable"
    elif not same_file(_absolute(old.get("reference", ""), base), reference):
        differs = "reference"
    elif old.get("parameters") != parameters:
        differs = "parameters"
    else:
        rows = {_absolute(r["file"], base): r for r in old.get("frames", [])}
        return _Earlier(rows, set(old.get("claimed", [])), base)
    if overwrite:
        return _Earlier({}, set(), None)
    cls = ResumeMismatchError if resume else ForeignRunError
    raise cls(json_path, differs, None if old is None else old.get("reference"))


def _plan(frames: list[Path], reference: Path, out_dir: Path, earlier: _Earlier,
          gradient_images: bool, overwrite: bool, resume: bool):
    """Rows kept from the earlier run, frames refused up front, and the work list."""
    inputs = [*frames, reference]
    rows: list[FrameRow | None] = [None] * len(frames)
    todo: list[tuple[int, bool]] = []  # (index, overwrite its outputs)
    claimed = set(earlier.claimed)
    for i, f in enumerate(frames):
        key = _absolute(f)
        paths = output_paths(f, out_dir)
        wanted = _outputs_wanted(paths, gradient_images)
        try:
            refuse_inputs(wanted, inputs)
        except InputCollisionError as exc:
            rows[i] = _error_row(str(f), None, same_file(f, reference), str(exc),
                                 type(exc).__name__)
            continue
        prev = earlier.rows.get(key)
        if prev is not None and not overwrite and _complete(prev, gradient_images, earlier.base):
            rows[i] = _kept_row(prev, f, paths, gradient_images, resume)
            continue
        mine = overwrite or key in claimed
        if mine or not any(p.exists() for p in wanted):
            claimed.add(key)
        todo.append((i, mine))
    return rows, todo, sorted(claimed)


def _kept_row(prev: dict, frame: Path, paths: dict, gradient_images: bool,
              resume: bool) -> FrameRow:
    row = FrameRow.from_dict(prev)
    row.file = str(frame)
    row.output = str(paths["output"])
    if gradient_images:
        row.gradient_output, row.curvature_output = str(paths["gradient"]), str(paths["curvature"])
    if not resume:
        row.warnings = [("kept the output of an earlier run with the same reference "
                         "and parameters")]
    return row


def normalize_frames(
    frames,
    reference: str | os.PathLike,
    out_dir: str | os.PathLike,
    params: NsgParameters | None = None,
    *,
    gradient_images: bool = False,
    overwrite: bool = False,
    resume: bool = False,
    debayer: str | None = None,
    workers: int = 1,
    scheduler: str | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> NormalizeReport:
    """Normalize frames to one reference and write outputs and report to ``out_dir``.

    Parameters
    ----------
    frames : sequence of path-like
        Registered frames (the reference may be one of them). A missing or
        unreadable one gets its error in the report; the others go on.
    reference : path-like
        The reference frame.
    out_dir : path-like
        Output folder (created if missing).
    params : NsgParameters, optional
    gradient_images : bool
        Also write ``<stem>_gradient.fits`` and ``<stem>_curvature.fits``.
    overwrite : bool
        Redo every frame, replacing existing outputs and the report of any
        earlier run in ``out_dir``.
    resume : bool
        Finish an earlier run with the same reference and parameters: its
        complete frames are kept, the others redone. Without ``resume`` a run
        of the same reference and parameters is finished the same way (its
        kept rows get a warning saying so).
    debayer : {None, "superpixel", "bilinear"}
        Debayer raw colour frames (the reference too).
    workers : int
        Local worker processes.
    scheduler : str, optional
        Dask distributed scheduler address.
    progress : callable ``(done, total, message)``, optional
    cancel : CancelToken, optional

    Returns
    -------
    NormalizeReport
        ``report.failed`` lists the frames that could not be normalized: among
        them a frame whose output exists and is not this run's
        (``error_kind`` "OutputExistsError") or would replace an input
        ("InputCollisionError").

    Raises
    ------
    FrameError
        The reference cannot be used, the output folder cannot be made, two
        frames would write the same output, or the report cannot be written
        (:class:`~napari_nsg.io.atomic.OutputWriteError`).
    ForeignRunError
        ``out_dir`` holds the report of a run with another reference or other
        parameters and ``overwrite`` was not asked (:class:`ResumeMismatchError`
        when ``resume`` was); nothing is written.
    Cancelled
        ``cancel`` was set; finished frames are written and in the JSON report.

    Notes
    -----
    Runs in :func:`~napari_nsg.io.buffers.reused_heap`: the engine's full-frame
    temporaries reuse freed memory instead of fresh, kernel-zeroed pages.
    """
    with reused_heap():
        return _normalize_frames(frames, reference, out_dir, params, gradient_images,
                                 overwrite, resume, debayer, workers, scheduler, progress,
                                 cancel)


def _normalize_frames(frames, reference, out_dir, params, gradient_images, overwrite,
                      resume, debayer, workers, scheduler, progress, cancel):
    """:func:`normalize_frames`' work (its arguments in order)."""
    params = params or NsgParameters()
    if not str(os.fspath(out_dir)).strip():
        raise FrameError(None, "the output folder name is empty")
    frames = [Path(f) for f in frames]
    reference = Path(reference)
    out_dir = Path(out_dir)
    _check_names(frames, out_dir)
    result = NormalizeReport(out_dir=out_dir, reference=str(reference), rows=[],
                             parameters=params.to_dict(), gradient_images=gradient_images,
                             cwd=os.getcwd())
    refuse_inputs([result.json_path, result.csv_path], [*frames, reference])
    make_output_folder(out_dir)
    remove_partials(out_dir, keep=[*frames, reference])
    earlier = _earlier_run(out_dir, reference, result.to_dict()["parameters"],
                           overwrite=overwrite, resume=resume)
    total = len(frames)
    report(progress, 0, total, f"reference {reference.name}")
    if not scheduler:  # the fork server imports while the reference is prepared
        prestart_workers(process_frame, workers, len(frames))
    ref_frame = read_frame(reference, debayer=debayer)
    if not scheduler:
        prestart_reading(ref_frame.data.shape, len(frames))
    try:
        model = prepare_reference(ref_frame.data, ref_frame.meta, params)
    except NsgError as exc:
        raise FrameError(reference, f"cannot serve as the reference: {exc}") from None
    ref_meta, ref_header = ref_frame.meta, ref_frame.header
    del ref_frame
    report(progress, 0, total, "reference ready")
    result.resolved = model.params.to_dict()
    rows, todo, result.claimed = _plan(frames, reference, out_dir, earlier, gradient_images,
                                       overwrite, resume)
    result.rows = [r for r in rows if r is not None]
    result.write(csv_too=False)  # the journal: which frames' outputs this run may write
    job = NormalizeJob(model=model, reference=str(reference), out_dir=str(out_dir),
                       gradient_images=gradient_images, overwrite=overwrite,
                       debayer=debayer, reference_filter=ref_meta.filter,
                       reference_header=ref_header)
    done = total - len(todo)
    if done:
        report(progress, done, total, f"{done} frame(s) already done")
    items = [(str(frames[i]), same_file(frames[i], reference), mine) for i, mine in todo]
    # a reading process is one of the ``workers`` processes (on 2 cores it is the second)
    reading = None if scheduler else _reading_process(job, len(items))
    workers = max(1, workers - (reading is not None))
    if min(workers, available_cores(), len(items)) <= 1 and not scheduler:
        tasks = pipelined_frames(job, items, cancel, reading)
    else:  # the spline system inverted once here and shipped with the model, not per worker
        prepare_spline_system(model)
        tasks = map_frames(process_frame, job, items, workers=workers, scheduler=scheduler,
                           cancel=cancel,
                           local=lambda mine: pipelined_frames(job, mine, cancel, reading))
    full = None  # the row of a frame whose outputs did not fit on the disk
    try:
        for k, row in tasks:
            rows[todo[k][0]] = row
            done += 1
            report(progress, done, total, Path(row.file).name)
            result.rows = [r for r in rows if r is not None]
            result.write(csv_too=False)
            pause_for_test("after_row")
            check_cancel(cancel)
            if row.error_kind == DiskFullError.__name__:
                full = row
                break  # the frames after it would be read and normalized for nothing
    finally:
        tasks.close()  # now, not when garbage-collected: pending work is dropped or finished
        if reading is not None:
            reading.close()
        result.rows = [r for r in rows if r is not None]
    if full is not None:
        _left_for_resume(rows, frames, reference, full)
        result.rows = [r for r in rows if r is not None]
    _relative(result, model, ref_meta, reference, frames)
    result.write()
    return result


def _left_for_resume(rows: list, frames: list[Path], reference: Path, full: FrameRow) -> None:
    """Rows for the frames a full disk stopped the run before (``--resume`` redoes them:
    they were claimed and failed)."""
    why = (f"not normalized: the output disk filled up at {Path(full.file).name}; free "
           "space, then run the same command with --resume")
    for i, f in enumerate(frames):
        if rows[i] is None:
            rows[i] = _error_row(str(f), None, same_file(f, reference), why,
                                 DiskFullError.__name__)


def _reading_process(job: NormalizeJob, n_frames: int) -> ReadingProcess | None:
    """A process that reads and prepares the targets (:mod:`.reading`), where it pays
    (large frames, more than one core); None where it does not or cannot start."""
    plan = target_plan(job.model)
    if not reading_wanted(plan, n_frames):
        return None
    try:
        return ReadingProcess(plan, job.debayer)
    except (OSError, RuntimeError, ValueError):  # no fork server, no shared memory: threads
        return None


def _check_names(frames: list[Path], out_dir: Path) -> None:
    if not frames:
        raise FrameError(None, "no frames to normalize")
    names: dict[Path, Path] = {}
    for f in frames:
        out = output_paths(f, out_dir)["output"]
        if out in names and not same_file(names[out], f):
            raise FrameError(f, f"would write the same output {out.name} as {names[out]}")
        names[out] = f


def _relative(result: NormalizeReport, model: ReferenceModel, ref_meta, reference, frames) -> None:
    """Relative weight/transmission and rejection over the finished rows."""
    rows = result.rows
    ref_in = any(same_file(f, reference) for f in frames)
    weight = np.array([r.weight if r.ok and r.weight is not None else np.nan for r in rows], float)
    trans = np.array([r.mean_transmission if r.ok else np.nan for r in rows], float)
    expo = np.array([r.exposure if r.exposure else np.nan for r in rows], float)
    ref_exp = None if ref_in else (ref_meta.exposure or float("nan"))
    rel_w, rel_t, per_exp = relative_values(weight, trans, expo, ref_exposure=ref_exp)
    p = model.params
    rejected, reasons = rejection(rel_w, rel_t, min_weight=p.min_weight,
                                  min_transmission=p.min_transmission,
                                  is_reference=np.array([r.is_reference for r in rows]))
    for r, w, t, rej, why in zip(rows, rel_w, rel_t, rejected, reasons):
        r.relative_weight = float(w) if np.isfinite(w) else None
        r.relative_transmission = float(t) if np.isfinite(t) else None
        r.rejected = bool(rej) and r.ok
        r.reject_reason = why + exposure_hint(r.exposure, ref_meta.exposure) if r.rejected else ""
    result.per_exposure = per_exp

