"""``normalize``: NormalizeScaleGradient over a batch of frames.

:func:`normalize_frames` reads the reference once, prepares the
:class:`~napari_nsg.core.nsg.ReferenceModel`, then normalizes every frame
against it, one frame in memory at a time per worker:

    read -> stars -> photometry -> scale -> samples -> spline -> correct -> weight -> write

A frame that fails (unreadable, wrong size or colour depth, no data, no star
pairs...) gets its error in the report and the others go on. Outputs are
written atomically. An existing output is never replaced without
``overwrite``: if the report in the folder comes from a run with the same
reference and parameters and the frame's row and outputs are complete, the row
is kept (with a warning that says so); otherwise the frame fails with "output
exists". ``resume`` skips frames whose outputs and report rows are complete
and redoes the others of that run, replacing their partial outputs. The JSON report is rewritten after every frame, so an
interrupted run can be resumed. Relative weight and transmission, and
rejection by ``min_weight``/``min_transmission``, are computed once all frames
are measured: rejected frames are still written, and flagged in the report.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..core.nsg import (
    NsgError,
    NsgParameters,
    ReferenceModel,
    normalize_frame,
    prepare_reference,
    reference_result,
    rejection,
    relative_values,
)
from ..io import FrameError, read_frame, remove_partials, write_frame
from ._values import floats
from .executors import map_frames
from .progress import CancelToken, ProgressCallback, check_cancel, report
from .report import FrameRow, NormalizeReport, read_report

__all__ = ["OUTPUT_SUFFIX", "NormalizeJob", "normalize_frames", "output_paths"]

OUTPUT_SUFFIX = "_nsg"


def output_paths(frame: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Where a frame's outputs go: ``output``, ``gradient``, ``curvature``."""
    stem = Path(frame).name
    for suffix in (".fz",):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    stem = Path(stem).stem
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


def process_frame(job: NormalizeJob, item: tuple[str, bool, bool]) -> FrameRow:
    """Normalize one frame and write its outputs; never raises (errors go in the row).

    Parameters
    ----------
    job : NormalizeJob
    item : (path, is_reference, overwrite)
        ``overwrite`` replaces this frame's existing outputs (``job.overwrite``,
        or a resumed frame of the same run).
    """
    path, is_reference, overwrite = item
    paths = output_paths(path, job.out_dir)
    meta = None
    try:
        wanted = [paths["output"]] + ([paths["gradient"], paths["curvature"]]
                                      if job.gradient_images else [])
        if not overwrite:
            for p in wanted:
                if p.exists():
                    raise FrameError(p, "output exists (use --overwrite to replace it, "
                                        "or --resume to skip finished frames)")
        if is_reference:
            meta, frame_header = job.model.meta, job.reference_header
            res = reference_result(job.model, gradient_images=job.gradient_images)
        else:
            frame = read_frame(path, debayer=job.debayer)
            meta, frame_header = frame.meta, frame.header
            data = frame.data
            del frame
            res = normalize_frame(job.model, data, meta, gradient_images=job.gradient_images)
            del data
        warn = []
        if (not is_reference and job.reference_filter and meta.filter
                and meta.filter != job.reference_filter):
            warn.append(f"FILTER '{meta.filter}' differs from the reference's "
                        f"'{job.reference_filter}'")
        res.warnings = warn + res.warnings
        kw, hist = _keywords(job, res), _history(job, res)
        write_frame(paths["output"], res.corrected, frame_header, kw, history=hist,
                    overwrite=overwrite)
        if job.gradient_images:
            gkw = {"NSGREF": kw["NSGREF"], "IMAGETYP": "NSG gradient"}
            write_frame(paths["gradient"], res.gradient, frame_header, gkw,
                        history=["NSG: gradient model subtracted from the scaled frame"],
                        overwrite=overwrite)
            gkw["IMAGETYP"] = "NSG curvature"
            write_frame(paths["curvature"], res.curvature, frame_header, gkw,
                        history=["NSG: gradient minus its best-fit plane"],
                        overwrite=overwrite)
        return _row_from(path, res, meta, paths, job)
    except FrameError as exc:
        row = _base_row(path, meta)
        row.is_reference = is_reference
        row.error = exc.reason if Path(exc.path or "") == Path(path) else str(exc)
        return row
    except NsgError as exc:
        row = _base_row(path, meta)
        row.is_reference = is_reference
        row.error = str(exc)
        return row
    except MemoryError:
        row = _base_row(path, meta)
        row.error = "out of memory while normalizing this frame"
        return row
    except Exception as exc:  # a bug must not stop the batch; the row says what happened
        row = _base_row(path, meta)
        last = traceback.extract_tb(exc.__traceback__)[-1]
        row.error = (f"unexpected {type(exc).__name__}: {exc} "
                     f"({Path(last.filename).name}:{last.lineno})")
        return row


def _complete(row: dict, gradient_images: bool) -> bool:
    if row.get("error") is not None or not row.get("output"):
        return False
    if not Path(row["output"]).exists():
        return False
    if gradient_images:
        for key in ("gradient_output", "curvature_output"):
            if not row.get(key) or not Path(row[key]).exists():
                return False
    return True


def _same_file(a, b) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return str(a) == str(b)


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
        Registered frames (the reference may be one of them).
    reference : path-like
        The reference frame.
    out_dir : path-like
        Output folder (created if missing).
    params : NsgParameters, optional
    gradient_images : bool
        Also write ``<stem>_gradient.fits`` and ``<stem>_curvature.fits``.
    overwrite : bool
        Redo every frame, replacing existing outputs. Without it an existing
        output is kept: a complete frame of an earlier run with the same
        reference and parameters keeps its report row, any other frame whose
        output exists fails with "output exists".
    resume : bool
        Skip frames whose outputs and report rows from an earlier run with the
        same reference and parameters are complete.
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
        ``report.failed`` lists the frames that could not be normalized.

    Raises
    ------
    FrameError
        The reference cannot be used, the output folder cannot be made, two
        frames would write the same output, or ``resume`` finds a report of a
        different run.
    Cancelled
        ``cancel`` was set; finished frames are written and in the JSON report.
    """
    params = params or NsgParameters()
    frames = [Path(f) for f in frames]
    reference = Path(reference)
    out_dir = Path(out_dir)
    if not frames:
        raise FrameError(None, "no frames to normalize")
    names: dict[Path, Path] = {}
    for f in frames:
        out = output_paths(f, out_dir)["output"]
        if out in names and not _same_file(names[out], f):
            raise FrameError(f, f"would write the same output {out.name} as {names[out]}")
        names[out] = f
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FrameError(out_dir, f"cannot create the output folder ({exc.strerror or exc})")
    remove_partials(out_dir)
    total = len(frames)
    report(progress, 0, total, f"reference {reference.name}")
    ref_frame = read_frame(reference, debayer=debayer)
    try:
        model = prepare_reference(ref_frame.data, ref_frame.meta, params)
    except NsgError as exc:
        raise FrameError(reference, f"cannot serve as the reference: {exc}") from None
    ref_meta, ref_header = ref_frame.meta, ref_frame.header
    del ref_frame
    report(progress, 0, total, "reference ready")
    result = NormalizeReport(out_dir=out_dir, reference=str(reference), rows=[],
                             parameters=params.to_dict(), resolved=model.params.to_dict(),
                             gradient_images=gradient_images)
    rows: list[FrameRow | None] = [None] * total
    old = read_report(out_dir)
    compatible = old is not None and _same_file(old.get("reference", ""), reference) and \
        old.get("parameters") == result.to_dict()["parameters"]
    if resume and old is not None and not compatible:
        raise FrameError(result.json_path, "was made with another reference or other parameters; "
                         "run without --resume (with --overwrite) to start again")
    old_rows = {str(Path(r["file"]).resolve()): r for r in old.get("frames", [])} \
        if compatible else {}
    todo = []
    for i, f in enumerate(frames):
        prev = old_rows.get(str(f.resolve()))
        if prev is not None and _complete(prev, gradient_images) and not overwrite:
            rows[i] = FrameRow.from_dict(prev)
            rows[i].file = str(f)
            if not resume:
                rows[i].warnings = ["kept the output of an earlier run with the same reference "
                                    "and parameters (use --overwrite to redo it)"]
            continue
        todo.append(i)
    job = NormalizeJob(model=model, reference=str(reference), out_dir=str(out_dir),
                       gradient_images=gradient_images, overwrite=overwrite,
                       debayer=debayer, reference_filter=ref_meta.filter,
                       reference_header=ref_header)
    done = total - len(todo)
    if done:
        report(progress, done, total, f"{done} frame(s) already done")
    items = [(str(frames[i]), _same_file(frames[i], reference),
              overwrite or (resume and str(frames[i].resolve()) in old_rows)) for i in todo]
    try:
        for k, row in map_frames(process_frame, job, items, workers=workers,
                                 scheduler=scheduler, cancel=cancel):
            rows[todo[k]] = row
            done += 1
            report(progress, done, total, Path(row.file).name)
            result.rows = [r for r in rows if r is not None]
            result.write(csv_too=False)
            check_cancel(cancel)
    finally:
        result.rows = [r for r in rows if r is not None]
    _relative(result, model, ref_meta, reference, frames)
    result.write()
    return result


def _relative(result: NormalizeReport, model: ReferenceModel, ref_meta, reference, frames) -> None:
    """Relative weight/transmission and rejection over the finished rows."""
    rows = result.rows
    ref_in = any(_same_file(f, reference) for f in frames)
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
        r.reject_reason = why if r.rejected else ""
    result.per_exposure = per_exp
