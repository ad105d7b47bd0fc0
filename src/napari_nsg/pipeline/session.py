"""The state of an interactive NSG run, without Qt: what the napari widgets call.

An :class:`NsgSession` holds the frames (files, read when needed, or arrays of
open layers), their reference-selection metrics, the prepared reference model
and, per frame, the intermediates of each stage of the engine::

    reference -> scale (stars, photometry) -> samples -> spline -> correction

Changing a parameter (:meth:`NsgSession.update_params`) drops only the stages
it invalidates (see ``STAGE_OF``): a new smoothness re-fits the spline and
re-evaluates the gradient, nothing else. Every stage is computed by the same
engine functions that :func:`~napari_nsg.core.nsg.normalize_frame` chains, and
:meth:`NsgSession.run_all` goes through :mod:`napari_nsg.pipeline.normalize`,
so the numbers are those of ``napari-nsg normalize``.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.nodata import no_data_mask
from ..core.nsg import NsgError, NsgParameters, exposure_hint, rejection
from ..core.nsg.correction import apply_correction
from ..core.nsg.engine import (
    NormalizationResult,
    ReferenceModel,
    assemble_result,
    fit_gradient,
    measure_scale,
    normalize_frame,
    prepare_reference,
    reference_result,
    target_samples,
    target_weight,
)
from ..core.nsg.intermediates import sample_bins, spline_nodes, star_pairs
from ..core.reference import corner_boxes
from ..io import Frame, FrameError, FrameMetadata, parse_metadata, read_frame
from . import normalize as _normalize
from .progress import CancelToken, ProgressCallback, check_cancel, report
from .rank import RankResult, blink_frame, rank_loaded
from .report import NormalizeReport

__all__ = ["STAGES", "STAGE_OF", "FrameInfo", "FramePreview", "NsgSession"]

# the stages of one frame's normalization, in order; a stage invalidates the later ones
STAGES = ("reference", "scale", "samples", "spline", "correction")

# which stage each parameter invalidates ("rejection": only the cut-offs, nothing recomputed)
STAGE_OF: dict[str, str] = {
    "sample_size": "reference", "detection_threshold": "reference", "linear_range": "reference",
    "aperture_add": "reference", "limit_sample_stars": "reference",
    "sample_star_growth": "reference", "max_star_pairs": "reference",
    "no_reference": "reference", "pixel_size": "reference", "focal_length": "reference",
    "image_scale": "reference",
    "star_search_radius": "scale", "max_offset": "scale", "star_flux_tolerance": "scale",
    "aperture_growth": "scale", "aperture_gap": "scale", "aperture_bg_delta": "scale",
    "aperture_fwhm": "scale", "outlier_removal": "scale", "target_detection": "scale",
    "min_star_pairs": "scale", "photometry": "scale", "small_aperture_fwhm": "scale",
    "smoothness": "spline", "max_samples": "spline",
    "min_weight": "rejection", "min_transmission": "rejection",
}

# parameters resolved by prepare_reference: setting them back to auto (None) needs it again
_AUTO = {"sample_size", "aperture_growth", "aperture_gap", "aperture_bg_delta",
         "limit_sample_stars", "sample_star_growth"}
FRAME_CACHE = 2  # frames read from files kept in memory (the preview target and one more)
FIT_MEMO = 8  # spline fits (coarse grid, a few 10 kB each) remembered per frame


def _check_stage_map() -> None:
    names = {f.name for f in dataclasses.fields(NsgParameters)}
    missing = names - set(STAGE_OF)
    assert not missing, f"parameters without a stage: {sorted(missing)}"


_check_stage_map()


@dataclass
class FrameInfo:
    """One frame of the session.

    Attributes
    ----------
    name : str
        Unique in the session (the file name, or the layer's name).
    path : pathlib.Path or None
        Its file (None for an array from an open layer without one).
    meta : FrameMetadata
    shape : tuple
        ``(y, x)`` or ``(c, y, x)``.
    header : astropy.io.fits.Header or None
    """

    name: str
    path: Path | None
    meta: FrameMetadata
    shape: tuple
    header: object = None
    data: np.ndarray | None = field(default=None, repr=False)


class _FullGradient:
    """A gradient field whose full-size channels are computed once (for
    :func:`~napari_nsg.core.nsg.correction.apply_correction`)."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def full(self, channel: int = 0) -> np.ndarray:
        return self.images[channel]


def _from_result(name: str, doc: str, cast=None) -> property:
    """A read-only property of ``FramePreview`` that reads ``result.<name>``."""

    def get(self):
        value = getattr(self.result, name)
        return cast(value) if cast is not None else value

    return property(get, doc=doc)


@dataclass
class FramePreview:
    """One target against the reference, with what a viewer draws.

    Images are ``(y, x)`` or ``(c, y, x)`` like the input; ``corrected``,
    ``uncorrected_scaled``, :meth:`gradient` and :meth:`curvature` are computed
    on first use and kept. Point sets are dicts of arrays; per-channel values
    are ``(c, n)``.
    """

    name: str
    target: np.ndarray = field(repr=False)
    reference: np.ndarray = field(repr=False)
    result: NormalizationResult = field(repr=False)
    stars: dict
    samples: dict
    nodes: dict
    rejection_circles: dict
    sample_size: int
    _cache: dict = field(default_factory=dict, repr=False)

    # -- numbers (from the engine's result) -------------------------------------------
    scale = _from_result("scale", "scale per channel (multiplies the target)")
    scale_error = _from_result("scale_error", "standard error of the scale")
    transmission = _from_result("transmission", "1 / scale per channel")
    snr = _from_result("snr", "SNR relative to the reference per channel")
    weight = _from_result("weight", "NWEIGHT, mean of snr**2", float)
    n_star_pairs = _from_result("n_star_pairs", "star pairs used per channel")
    n_samples = _from_result("n_samples", "gradient samples", int)
    n_nodes = _from_result("n_nodes", "spline nodes (samples binned)", int)

    # -- images ----------------------------------------------------------------
    @property
    def _mono(self) -> bool:
        return self.target.ndim == 2

    def _chans(self) -> np.ndarray:
        return self.target[np.newaxis] if self._mono else self.target

    def _shaped(self, a: np.ndarray) -> np.ndarray:
        return a[0] if self._mono else a

    def _no_data(self) -> np.ndarray:
        """The target's no-data pixels ``(c, y, x)`` (kept by the session per frame)."""
        if "no_data" not in self._cache:
            self._cache["no_data"] = np.stack([no_data_mask(c) for c in self._chans()])
        return self._cache["no_data"]

    def _gradient_all(self) -> np.ndarray:
        if "gradient" not in self._cache:
            self._cache["gradient"] = self.result.gradient_field.full_all()
        return self._cache["gradient"]

    def gradient(self) -> np.ndarray:
        """The gradient model subtracted from the scaled target (float32)."""
        return self._shaped(self._gradient_all())

    def curvature(self) -> np.ndarray:
        """The gradient minus its best-fit plane (float32)."""
        if "curvature" not in self._cache:
            field_ = self.result.gradient_field  # the gradient minus its plane, full size
            self._cache["curvature"] = field_.curvature_from(self._gradient_all())
        return self._shaped(self._cache["curvature"])

    @property
    def corrected(self) -> np.ndarray:
        """``target*scale - gradient``, no-data 0 (as ``normalize`` writes it)."""
        if "corrected" not in self._cache:
            self._cache["corrected"] = apply_correction(
                self.target, self.scale, _FullGradient(self._gradient_all()),
                mask=self._cache.get("mask"), no_data=self._no_data())
        return self._cache["corrected"]

    @property
    def uncorrected_scaled(self) -> np.ndarray:
        """``target*scale`` (no-data 0): what the correction starts from."""
        if "scaled" not in self._cache:
            chans = self._chans()
            out = np.where(self._no_data(), 0, chans * self.scale.astype(np.float32)[:, None, None])
            self._cache["scaled"] = self._shaped(out.astype(np.float32))
        return self._cache["scaled"]

    def profile(self, axis: str, index: int, channel: int = 0) -> dict:
        """A row (``axis="row"``, ``index`` = y) or column (``index`` = x) of the
        gradient model and the kept samples whose bins cross it.

        Returns
        -------
        dict
            ``coord`` (pixel positions along the line), ``model`` (the gradient
            there), ``samples_coord`` and ``samples_value`` (kept bins crossing the line).
        """
        if axis not in ("row", "column"):
            raise ValueError(f"axis must be 'row' or 'column', got {axis!r}")
        grad = self._gradient_all()[channel]
        h, w = grad.shape
        limit = h if axis == "row" else w
        if not 0 <= int(index) < limit:
            raise ValueError(f"{axis} {index} is outside the image (0..{limit - 1})")
        s = self.samples
        across, along = (s["y"], s["x"]) if axis == "row" else (s["x"], s["y"])
        on_line = s["kept"] & (np.abs(across - index) <= self.sample_size / 2.0)
        model = grad[int(index), :] if axis == "row" else grad[:, int(index)]
        return {"coord": np.arange(len(model), dtype=float), "model": np.asarray(model, float),
                "samples_coord": along[on_line], "samples_value": s["value"][channel][on_line]}


def _points(table, per_channel: tuple[str, ...]) -> dict:
    """A core intermediates table as the dict of arrays the viewer uses ((c, n) per channel)."""
    out = {}
    for f in dataclasses.fields(table):
        v = np.asarray(getattr(table, f.name))
        out[f.name] = v.T if f.name in per_channel and v.ndim == 2 else v
    return out


class NsgSession:
    """Frames, reference, parameters and cached per-frame results of one NSG run.

    Not thread-safe: one call at a time (a GUI runs them in one worker).

    Parameters
    ----------
    params : NsgParameters, optional
        NSG's defaults when omitted.

    Attributes
    ----------
    computed : collections.Counter
        How many times each stage was computed (for tests and benchmarks).
    """

    def __init__(self, params: NsgParameters | None = None):
        self._given = params or NsgParameters()
        self._frames: OrderedDict[str, FrameInfo] = OrderedDict()
        self._loaded: OrderedDict[str, np.ndarray] = OrderedDict()
        self._measured: dict = {}
        self._ranking: RankResult | None = None
        self._reference: str | None = None
        self._model: ReferenceModel | None = None
        self._stages: dict[str, dict] = {}
        self._run_rows: list[dict] | None = None
        self._run_results: dict[str, NormalizationResult] = {}
        self._run_reference_model: ReferenceModel | None = None
        self.computed: Counter = Counter()

    # -- frames ------------------------------------------------------------------
    @property
    def frames(self) -> list[FrameInfo]:
        """The frames in the order they were added."""
        return list(self._frames.values())

    def _unique(self, name: str) -> str:
        base, k = name, 2
        while name in self._frames:
            name = f"{base} ({k})"
            k += 1
        return name

    def add_files(self, paths, *, progress: ProgressCallback | None = None,
                  cancel: CancelToken | None = None) -> list[FrameError]:
        """Add frame files; a file that cannot be read is returned as its error.

        Returns
        -------
        list of FrameError
            One per file not added (the others are).
        """
        paths = [Path(p) for p in paths]
        errors: list[FrameError] = []
        for i, path in enumerate(paths):
            check_cancel(cancel)
            report(progress, i, len(paths), f"reading {path.name}")
            try:
                frame = read_frame(path)
            except FrameError as exc:
                errors.append(exc)
                continue
            name = self._unique(path.name)
            self._frames[name] = FrameInfo(name, path, frame.meta, tuple(frame.data.shape),
                                           frame.header)
            self._remember(name, frame.data)
        report(progress, len(paths), len(paths), "frames added")
        self._frames_changed()
        return errors

    def add_array(self, name: str, data: np.ndarray, header=None, path=None) -> str:
        """Add an image held in memory (an open napari layer).

        Returns
        -------
        str
            The name it got (``name``, made unique).
        """
        data = np.asarray(data)
        if data.ndim not in (2, 3) or (data.ndim == 3 and data.shape[0] not in (1, 3)):
            raise FrameError(path or name, f"image of shape {data.shape} is not (y, x) or "
                             "(3, y, x)")
        data = np.ascontiguousarray(data, dtype=np.float32)
        if data.ndim == 3 and data.shape[0] == 1:
            data = data[0]
        meta = parse_metadata(header, data.shape[-2]) if header is not None else FrameMetadata()
        name = self._unique(str(name))
        self._frames[name] = FrameInfo(name, Path(path) if path else None, meta,
                                       tuple(data.shape), header, data)
        self._frames_changed()
        return name

    def remove(self, name: str) -> None:
        """Remove a frame (the reference too: then there is none)."""
        self._info(name)
        del self._frames[name]
        self._loaded.pop(name, None)
        self._measured.pop(name, None)
        self._stages.pop(name, None)
        if name == self._reference:
            self._reference, self._model = None, None
            self._stages.clear()
        self._frames_changed()

    def _frames_changed(self) -> None:
        self._ranking = None

    def _info(self, name: str) -> FrameInfo:
        try:
            return self._frames[name]
        except KeyError:
            raise NsgError(f"no frame named {name!r} in the session") from None

    def _remember(self, name: str, data: np.ndarray) -> None:
        self._loaded[name] = data
        self._loaded.move_to_end(name)
        while len(self._loaded) > FRAME_CACHE:
            self._loaded.popitem(last=False)

    def _data(self, name: str) -> np.ndarray:
        info = self._info(name)
        if info.data is not None:
            return info.data
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return self._loaded[name]
        data = read_frame(info.path).data
        self._remember(name, data)
        return data

    def _frame(self, i: int) -> Frame:
        info = self.frames[i]
        data = self._data(info.name)
        return Frame(path=info.path, data=data, header=info.header, meta=info.meta)

    # -- reference selection -------------------------------------------------------
    def measure(self, *, progress: ProgressCallback | None = None,
                cancel: CancelToken | None = None) -> RankResult:
        """Measure every frame for reference selection (``rank``'s measurements).

        Each frame's own measurements are cached; the scales and weights against
        the yardstick are redone when frames were added or removed.
        """
        names = [f.name for f in self.frames]
        if not names:
            raise NsgError("no frames in the session")
        self._ranking = rank_loaded(names, self._frame, params=self._given, progress=progress,
                                    cancel=cancel, measured=self._measured)
        return self._ranking

    def _ranked(self) -> RankResult:
        if self._ranking is None:
            raise NsgError("the frames have not been measured yet")
        return self._ranking

    def metrics_table(self) -> list[dict]:
        """One dict per frame, in the order added (per-channel values averaged)."""
        by_name = {r.file: r for r in self._ranked().frames}
        recommended = self._ranking.reference
        rows = []
        for info in self.frames:
            r = by_name.get(info.name)
            if r is None:
                continue
            rows.append({
                "name": info.name, "date_obs": r.date_obs, "exposure": r.exposure,
                "altitude": r.altitude, "airmass": r.airmass,
                "background": _mean(r.background), "gradient_diag1": _mean(r.gradient_1),
                "gradient_diag2": _mean(r.gradient_2),
                "gradient_span": _mean(r.background_span), "lumpy": _mean(r.complexity),
                "noise": _mean(r.noise), "n_stars": r.n_stars, "fwhm": r.fwhm,
                "weight": r.weight, "rating": r.rating, "transmission": _mean(r.transmission),
                "rank": r.rank, "recommended": info.name == recommended, "error": r.error,
            })
        return rows

    def recommended(self) -> tuple[str, str]:
        """The recommended reference and why (see :func:`.rank.recommend_reference`)."""
        result = self._ranked()
        if result.reference is None:
            raise NsgError("no frame could be ranked, so none can be recommended")
        return result.reference, result.reference_reason

    def corner_boxes(self, name: str) -> list[tuple[int, int, int, int]]:
        """``(y0, x0, y1, x1)`` of the four corner boxes of the gradient estimates
        (row 0 on top; top-left, top-right, bottom-left, bottom-right)."""
        return corner_boxes(self._info(name).shape[-2:])

    def blink_image(self, name: str) -> np.ndarray:
        """The frame scaled and offset to the reference's background (one stretch
        fits all frames): the session's reference, else the recommended one."""
        result = self._ranked()
        row = result.row(name)
        ref_name = self._reference or result.reference
        if row.error is not None:
            raise NsgError(f"{name} could not be measured: {row.error}")
        return blink_frame(self._data(name), row, result.row(ref_name))

    # -- reference and parameters ------------------------------------------------------
    @property
    def reference(self) -> str | None:
        return self._reference

    @property
    def params(self) -> NsgParameters:
        """The parameters, resolved for the reference once it is set."""
        return self._model.params if self._model is not None else self._given

    def set_reference(self, name: str, *, progress: ProgressCallback | None = None,
                      cancel: CancelToken | None = None) -> None:
        """Make ``name`` the reference and prepare its model (kept until a
        reference parameter changes)."""
        self._info(name)  # NsgError for an unknown name
        if name == self._reference and self._model is not None:
            return
        report(progress, 0, 1, f"preparing reference {name}")
        check_cancel(cancel)
        self._reference, self._model = name, None
        self._stages.clear()
        try:
            self._ensure_model()
        except NsgError:
            self._reference = None  # no half-set reference
            raise
        report(progress, 1, 1, "reference ready")

    def _ensure_model(self) -> ReferenceModel:
        if self._reference is None:
            raise NsgError("no reference frame set")
        if self._model is None:
            info = self._info(self._reference)
            try:
                self._model = prepare_reference(self._data(info.name), info.meta, self._given)
            except NsgError as exc:
                raise NsgError(f"{info.name} cannot serve as the reference: {exc}") from None
            self.computed["reference"] += 1
        return self._model

    def update_params(self, **changes) -> set[str]:
        """Change parameters; returns the stages this invalidates (and the later ones).

        Raises
        ------
        NsgParameterError
            A value out of its range (nothing is changed then).
        """
        unknown = set(changes) - set(STAGE_OF)
        if unknown:
            raise NsgError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        new = self._given.with_values(**changes)
        changed = {k for k in changes if getattr(self._given, k) != getattr(new, k)}
        self._given = new
        if not changed:
            return set()
        first = min((STAGES.index(STAGE_OF[k]) for k in changed if STAGE_OF[k] in STAGES),
                    default=None)
        if any(k in _AUTO and changes[k] is None for k in changed):
            first = 0
        if first is None:
            return {"rejection"}
        stages = set(STAGES[first:])
        if first == 0:
            # the reference-selection metrics stay those of measure(): call it again to
            # redo the yardstick scales with the new star settings
            self._model = None
            self._stages.clear()
            return stages
        if self._model is not None:
            resolved = {k: getattr(new, k) for k in changed}
            self._model = dataclasses.replace(
                self._model, params=self._model.params.with_values(**resolved))
        for state in self._stages.values():
            for stage in stages:
                state.pop(stage, None)
            if "samples" in stages:
                state.pop("fits", None)  # fits of other samples
        return stages

    # -- one frame -------------------------------------------------------------------
    def preview(self, name: str, *, progress: ProgressCallback | None = None,
                cancel: CancelToken | None = None) -> FramePreview:
        """Normalize one frame against the reference, recomputing only the stages
        a parameter change invalidated."""
        info = self._info(name)
        model = self._ensure_model()
        data = self._data(name)
        state = self._stages.setdefault(name, {})
        steps = [s for s in STAGES[1:] if s not in state]
        for k, stage in enumerate(steps):
            check_cancel(cancel)
            report(progress, k, len(steps) + 1, f"{name}: {stage}")
            try:
                fresh = self._compute(stage, state, model, info, data)
            except NsgError as exc:
                raise NsgError(f"{name}: {exc}") from None
            self.computed[stage] += int(fresh)
        report(progress, len(steps), len(steps) + 1, f"{name}: preview")
        return self._preview_of(name, state, model, data)

    def _compute(self, stage: str, state: dict, model: ReferenceModel, info: FrameInfo,
                 data: np.ndarray) -> bool:
        """Compute one stage into ``state``; False when a kept fit was reused."""
        chans = data[np.newaxis] if data.ndim == 2 else data
        if info.name == self._reference:
            state[stage] = reference_result(model, keep_corrected=False)
            return True
        if stage == "spline":
            return self._fit(state, model)
        if stage == "scale":
            sr = measure_scale(model, data)
            state["scale"] = (sr, target_weight(model, chans, sr.scale, info.meta))
        elif stage == "samples":
            sr = state["scale"][0]
            samples = target_samples(model, chans, sr.scale)
            state["samples"] = (samples, sample_bins(model.grid, chans, sr.scale,
                                                     model.rejection_circles))
        elif stage == "correction":
            state["correction"] = self._result_of(state)
        return True

    @staticmethod
    def _fit(state: dict, model: ReferenceModel) -> bool:
        """The spline stage, remembering the last ``FIT_MEMO`` fits of these samples
        (a slider moved back to a value it had is instant)."""
        p = model.params
        key = (p.smoothness, p.max_samples)
        memo = state.setdefault("fits", OrderedDict())
        if key in memo:
            memo.move_to_end(key)
            state["spline"] = memo[key]
            return False
        # one target: a solve, not the inverse normalize_frame keeps for many
        state["spline"] = memo[key] = fit_gradient(model, state["samples"][0], reuse=False)
        while len(memo) > FIT_MEMO:
            memo.popitem(last=False)
        return True

    @staticmethod
    def _result_of(state: dict) -> NormalizationResult:
        """The engine's result assembled from the stages (as normalize_frame builds it)."""
        sr, wr = state["scale"]
        return assemble_result(sr, wr, state["samples"][0], state["spline"],
                               list(sr.warnings) + list(wr.warnings))

    def _preview_of(self, name: str, state: dict, model: ReferenceModel,
                    data: np.ndarray) -> FramePreview:
        circles = _points(model.rejection_circles, ())
        size = int(model.params.sample_size)
        ref = model.data[0] if data.ndim == 2 else model.data
        if name == self._reference:  # scale 1, no gradient, no pairs
            nc = model.n_channels
            bins = sample_bins(model.grid, model.data, np.ones(nc), model.rejection_circles)
            none, per_channel = np.zeros(0), np.zeros((nc, 0))
            stars = {k: none for k in ("x", "y", "tgt_x", "tgt_y", "radius")}
            stars.update({k: per_channel for k in ("ref_flux", "tgt_flux", "ref_err", "tgt_err")},
                         used=np.zeros(0, bool), used_per_channel=np.zeros((nc, 0), bool),
                         reason=np.zeros(0, str))
            return FramePreview(name, data, ref, state["correction"], stars=stars,
                                samples=_points(bins, ("value",)),
                                nodes={"x": none, "y": none, "value": per_channel, "weight": none},
                                rejection_circles=circles, sample_size=size)
        res = state["correction"]
        stars = _points(star_pairs(model.candidates, res.scale_result),
                        ("ref_flux", "tgt_flux", "ref_err", "tgt_err", "used"))
        stars["used_per_channel"] = stars["used"]
        stars["used"] = stars["used"].all(axis=0)
        preview = FramePreview(
            name, data, ref, res, stars=stars,
            samples=_points(state["samples"][1], ("value",)),
            nodes=_points(spline_nodes(res.nodes), ("value",)),
            rejection_circles=circles, sample_size=size)
        preview._cache["mask"] = model.no_data
        if "no_data" in state:  # the frame's no-data does not depend on any parameter
            preview._cache["no_data"] = state["no_data"]
        else:
            state["no_data"] = preview._no_data()
        return preview

    # -- all frames ------------------------------------------------------------------
    def run_all(self, *, out_dir=None, gradient_images: bool = False, overwrite: bool = False,
                progress: ProgressCallback | None = None,
                cancel: CancelToken | None = None) -> list[dict]:
        """Normalize every frame to the reference.

        With ``out_dir`` this is ``napari-nsg normalize`` itself
        (:func:`~napari_nsg.pipeline.normalize.normalize_frames`: the same files,
        report and atomic writes; every frame needs a file then). Without it the
        frames are normalized in memory with the same engine calls, and the
        results are kept (slim) for :meth:`result_images`.

        Returns
        -------
        list of dict
            Report rows (the keys of ``nsg_results.json``) plus ``name``.

        Raises
        ------
        Cancelled
            ``cancel`` was set; finished frames stay written, no partial file is left.
        """
        model = self._ensure_model()
        if out_dir is not None:
            rows = self._run_to_files(out_dir, gradient_images, overwrite, progress, cancel)
        else:
            rows = self._run_in_memory(model, progress, cancel)
        self._run_rows = rows
        return [dict(r) for r in rows]

    def _run_to_files(self, out_dir, gradient_images, overwrite, progress, cancel) -> list[dict]:
        no_file = [f.name for f in self.frames if f.path is None]
        if no_file:
            raise NsgError(f"{', '.join(no_file)} must be saved to a file before they can be "
                           "written to an output folder")
        frames = [f.path for f in self.frames]
        ref = self._info(self._reference).path
        result = _normalize.normalize_frames(
            frames, ref, out_dir, self._given, gradient_images=gradient_images,
            overwrite=overwrite, progress=progress, cancel=cancel)
        self._run_results.clear()
        self._run_reference_model = self._model
        return [dict(r.to_dict(), name=f.name) for f, r in zip(self.frames, result.rows)]

    def _run_in_memory(self, model, progress, cancel) -> list[dict]:
        frames = self.frames
        results: dict[str, NormalizationResult] = {}
        report_rows = []
        job = _normalize.NormalizeJob(model=model, reference=self._reference, out_dir="")
        for i, info in enumerate(frames):
            check_cancel(cancel)
            report(progress, i, len(frames), info.name)
            row = self._normalize_row(info, model, job, results)
            report_rows.append(row)
        report(progress, len(frames), len(frames), "done")
        result = NormalizeReport(out_dir=Path(os.devnull), reference=self._reference,
                                 rows=report_rows)
        _normalize._relative(result, model, self._info(self._reference).meta, self._reference,
                             [f.name for f in frames])
        self._run_results = results
        self._run_reference_model = model
        return [dict(r.to_dict(), name=f.name) for f, r in zip(frames, result.rows)]

    def _normalize_row(self, info: FrameInfo, model, job, results: dict):
        is_ref = info.name == self._reference
        try:
            if is_ref:
                res = reference_result(model, keep_corrected=False)
            else:
                res = normalize_frame(model, self._data(info.name), info.meta,
                                      keep_corrected=False)
        except (FrameError, NsgError) as exc:
            row = _normalize._base_row(info.name, info.meta)
            row.is_reference = is_ref
            row.error = exc.reason if isinstance(exc, FrameError) else str(exc)
            return row
        results[info.name] = res.slim()
        row = _normalize._row_from(info.name, res, info.meta, {"output": ""}, job)
        row.output = None
        return row

    def results_table(self, min_weight: float | None = None,
                      min_transmission: float | None = None) -> list[dict]:
        """The last run's rows with rejection redone for these cut-offs (the
        session's parameters when None); nothing is recomputed."""
        if self._run_rows is None:
            raise NsgError("no run yet")
        p = self._given
        min_weight = p.min_weight if min_weight is None else float(min_weight)
        if min_transmission is None:
            min_transmission = p.min_transmission
        min_transmission = float(min_transmission)
        rows = [dict(r) for r in self._run_rows]
        rel_w = np.array([_num(r.get("relative_weight")) for r in rows])
        rel_t = np.array([_num(r.get("relative_transmission")) for r in rows])
        is_ref = np.array([bool(r["is_reference"]) for r in rows])
        rejected, reasons = rejection(rel_w, rel_t, min_weight=min_weight,
                                      min_transmission=min_transmission, is_reference=is_ref)
        ref_exposure = next((r.get("exposure") for r in rows if r["is_reference"]), None)
        for r, rej, why in zip(rows, rejected, reasons):
            ok = r.get("error") is None
            r["rejected"] = bool(rej) and ok
            hint = exposure_hint(r.get("exposure"), ref_exposure)
            r["reject_reason"] = why + hint if r["rejected"] else ""
        return rows

    def result_images(self, name: str) -> dict:
        """``corrected``, ``gradient`` and ``curvature`` of one frame of the last
        run, from its kept result (cheap), or recomputed when the run wrote files."""
        if self._run_rows is None:
            raise NsgError("no run yet")
        model = self._run_reference_model
        res = self._run_results.get(name)
        data = self._data(name)
        info = self._info(name)
        if res is None:
            row = next((r for r in self._run_rows if r["name"] == name), None)
            if row is None or row.get("error"):
                raise NsgError(f"{name} has no result in the last run"
                               + (f": {row['error']}" if row else ""))
            if name == self._reference:
                res = reference_result(model, keep_corrected=False)
            else:
                res = normalize_frame(model, data, info.meta, keep_corrected=False)
            self._run_results[name] = res.slim()
        mono = data.ndim == 2
        gradient = res.gradient_field.full_all()
        curvature = res.gradient_field.minus_plane().full_all()
        chans = data[np.newaxis] if mono else data
        valid = ~np.stack([no_data_mask(c) for c in chans])
        gradient[~valid] = 0.0
        curvature[~valid] = 0.0
        if res.is_reference:
            corrected = np.where(valid, chans, 0).astype(np.float32)
        else:
            corrected = apply_correction(chans, res.scale, _FullGradient(gradient),
                                         mask=model.no_data, no_data=~valid)
        pick = (lambda a: a[0]) if mono else (lambda a: a)
        return {"corrected": pick(corrected), "gradient": pick(gradient),
                "curvature": pick(curvature)}


def _mean(values) -> float | None:
    vals = [v for v in (values or []) if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def _num(v) -> float:
    return float(v) if v is not None else float("nan")
