"""``msgr``: Multiscale Gradient Removal of one narrow-field file with one wide-field file.

:func:`run_msgr` reads both frames, takes the scale ratio hint from their
headers' pixel scales when both have one, runs :func:`napari_nsg.core.msgr.msgr`
with progress and cancellation between steps, and writes the corrected image
(and, if asked, the gradient model and the registered wide image) as float32
FITS, atomically, with the MSGR parameters and results in keywords and HISTORY.
Every expected failure is a :class:`~napari_nsg.io.FrameError` naming the file at
fault. Nothing is written before the whole computation succeeded; an existing
output is refused before any work unless ``overwrite``, an output that is an
input (links resolved) always; the outputs are written as one unit (all or none).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..core.linear_fit import DEFAULT_FIT_METHOD, LinearFitError
from ..core.mmt import MMTSizeError
from ..core.msgr import MODES, MsgrError, MsgrResult, check_msgr_size, msgr
from ..core.msgr_spline import SPLINE_SMOOTHNESS
from ..core.registration import DEFAULT_SCALE_RANGE, RegistrationError
from ..io import Frame, FrameError, OutputExistsError, read_frame, remove_partials
from ..io.atomic import refuse_inputs
from ..io.write import frame_hdu, write_frames
from .progress import CancelToken, ProgressCallback, check_cancel, report

__all__ = ["MsgrRun", "msgr_keywords", "run_msgr"]

# WCS keywords of the wide frame do not describe its resampled copy
_WCS_PREFIXES = ("CTYPE", "CRPIX", "CRVAL", "CDELT", "CD1_", "CD2_", "PC1_", "PC2_", "CROTA",
                 "CUNIT", "A_", "B_", "AP_", "BP_", "PV1_", "PV2_", "LONPOLE", "LATPOLE",
                 "EQUINOX", "RADESYS", "WCSAXES", "PLTSCALE", "XPIXELSZ", "YPIXELSZ",
                 "PPO", "AMDX", "AMDY", "CNPIX")


@dataclass
class MsgrRun:
    """What :func:`run_msgr` did.

    Attributes
    ----------
    result : MsgrResult
        The computation (corrected image, model, registration, fits).
    outputs : dict of str to Path
        ``"corrected"`` and, when asked, ``"model"`` and ``"registered"``.
    narrow, wide : Path
        The inputs.
    scale_hint : float or None
        Scale ratio expected from the headers.
    warnings : list of str
    """

    result: MsgrResult
    outputs: dict
    narrow: Path
    wide: Path
    scale_hint: float | None
    warnings: list = field(default_factory=list)

    def summary(self) -> dict:
        """JSON-ready summary."""
        out = self.result.summary()
        out.update({
            "narrow": str(self.narrow),
            "wide": str(self.wide),
            "scale_hint": self.scale_hint,
            "outputs": {k: str(v) for k, v in self.outputs.items()},
            "warnings": list(self.warnings),
        })
        return out


def _check_outputs(outputs: dict, inputs: list[Path], overwrite: bool) -> None:
    seen: list[Path] = []
    refuse_inputs(outputs.values(), inputs)
    for path in outputs.values():
        for other in seen:
            if Path(os.path.abspath(path)) == Path(os.path.abspath(other)):
                raise FrameError(path, "given for two different outputs")
        seen.append(path)
        if path.is_dir():  # before "exists": --overwrite would not help
            raise FrameError(path, "is a folder, not a file name")
        if path.exists() and not overwrite:
            raise OutputExistsError(path, "exists")
        if not path.parent.exists():
            raise FrameError(path, f"its folder {path.parent} does not exist")


def _scale_hint(narrow: Frame, wide: Frame) -> float | None:
    ns, ws = narrow.meta.image_scale, wide.meta.image_scale
    if ns and ws and ns > 0 and ws > 0:
        return float(ws / ns)
    return None


def _spline_text(result: MsgrResult) -> str:
    return "off" if result.spline is None else f"{result.spline.smoothness:g}"


def msgr_keywords(result: MsgrResult, wide_name: str) -> tuple[dict, list[str]]:
    """FITS keywords and HISTORY lines describing an MSGR run."""
    reg = result.registration
    kw = {
        "MSGRWIDE": (wide_name[:60], "MSGR wide-field reference image"),
        "MSGRLAY": (int(result.n_layers), "MSGR multiscale median layers removed"),
        "MSGRLAYA": (result.layers_reason.startswith("automatic"), "MSGR layer count automatic"),
        "MSGRFLAT": (result.flatten or "none", "MSGR wide image flattened (surface)"),
        "MSGRMODE": (result.mode, "MSGR model removal"),
        "MSGRFIT": (result.fit_method, "MSGR LinearFit method"),
        "MSGRSTAR": (bool(result.stars_removed), "MSGR stars removed before the MMT"),
        "MSGRSPL": (_spline_text(result), "MSGR last-step spline smoothness (or off)"),
        "MSGRSCL": (round(reg.scale_ratio, 5), "MSGR scale ratio, narrow px per wide px"),
        "MSGRROT": (round(reg.rotation_deg, 4), "[deg] MSGR rotation narrow->wide"),
        "MSGRFLIP": (bool(reg.flip), "MSGR wide image mirrored"),
        "MSGRRES": (round(reg.residual_px, 4), "[px] MSGR registration residual (narrow px)"),
        "MSGRNPR": (int(reg.n_pairs), "MSGR registration star pairs"),
        "MSGRREGM": (reg.method, "MSGR registration method: stars, wcs, intensity"),
        "MSGRCOV": (round(float(reg.coverage_fraction or 0.0), 5), "MSGR wide coverage fraction"),
    }
    for c, fit in enumerate(result.fits):
        kw[f"MSGRA{c}"] = (float(f"{fit.a:.7g}"), f"MSGR fit intercept ch {c}")
        kw[f"MSGRB{c}"] = (float(f"{fit.b:.7g}"), f"MSGR fit slope ch {c}")
    history = [
        f"MSGR: Multiscale Gradient Removal by napari-nsg {__version__}",
        f"MSGR.wide = {wide_name}",
        f"MSGR.layers = {result.n_layers} (model: {result.model.n_layers})",
        f"MSGR.layers_reason = {result.layers_reason}",
        f"MSGR.flatten_wide = {result.flatten or 'none'}",
        f"MSGR.mode = {result.mode}",
        f"MSGR.fit = {result.fit_method}",
        f"MSGR.remove_stars = {result.stars_removed}",
        f"MSGR.spline = {_spline_text(result)}"
        + ("" if result.spline is None else
           f" ({result.spline.n_boxes[0]} boxes of {result.spline.box} px, rms "
           f"{result.spline.rms[0]:.4g})"),
        (f"MSGR.registration: ratio {reg.scale_ratio:.5f} rotation {reg.rotation_deg:.4f} deg "
         f"flip {reg.flip} residual {reg.residual_px:.4f} px ({reg.n_pairs} stars)"),
        f"MSGR.registration_method = {reg.method_text()}",
    ]
    for c, fit in enumerate(result.fits):
        history.append(f"MSGR.fit{c}: narrow = {fit.a:.6g} + {fit.b:.6g} * wide")
    for c, (lo, hi) in enumerate(result.model.correction_range()):
        unit = "x" if result.mode == "multiplicative" else "ADU"
        history.append(f"MSGR.model{c}: correction {lo:.6g} .. {hi:.6g} {unit}")
    return kw, history


def _no_data_as_zero(data: np.ndarray) -> np.ndarray:
    out = np.array(data, dtype=np.float32)
    out[~np.isfinite(out)] = 0
    return out


#: A mono wide image for a colour narrow one (or the reverse): measured on a simulated RGB
#: pair whose nebula changes colour across the field, 0.35-0.59 of the gradient left
#: against 0.022 with an RGB wide (docs/msgr.md, "Limits").
MIXED_CHANNELS_WARNING = ("one image is mono and the other colour: nebulae whose colour "
                          "changes across the field leak into the model (take the wide image "
                          "through the same filters)")


def run_msgr(
    narrow: str | os.PathLike,
    wide: str | os.PathLike,
    out: str | os.PathLike,
    *,
    layers: int | str = "auto",
    mode: str = "multiplicative",
    remove_stars: bool = False,
    flatten_wide: str | None = None,
    fit_method: str = DEFAULT_FIT_METHOD,
    spline: float | None = SPLINE_SMOOTHNESS,
    save_model: str | os.PathLike | None = None,
    save_registered: str | os.PathLike | None = None,
    overwrite: bool = False,
    scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> MsgrRun:
    """Correct the narrow-field file with the wide-field file and write the result(s).

    Parameters
    ----------
    narrow, wide : path-like
        The narrow-field image to correct and the wide-field image of the same sky.
    out : path-like
        The corrected image (FITS).
    layers : int or "auto"
        Multiscale median layers removed (the model loses one more); "auto"
        (default) chooses from the size and the scale ratio
        (:func:`napari_nsg.core.msgr.auto_layers`).
    mode : {"multiplicative", "additive"}
    remove_stars : bool
        Replace stars by a smooth fill before the transform.
    flatten_wide : {None, "plane", "quadratic"}
        Remove the wide image's own gradient (that surface) first.
    fit_method : {"robust", "pixinsight"}
    spline : float or None
        Smoothness of the last step's spline (None: no spline step).
    save_model, save_registered : path-like, optional
        Also write the gradient model / the wide image on the narrow grid
        (no-data written as 0).
    overwrite : bool
        Replace existing outputs.
    scale_range : (float, float)
        Scale ratios accepted (narrow px per wide px).
    progress : callable, optional
        ``progress(done, total, message)``.
    cancel : threading.Event, optional
        Checked between steps; raises :class:`~napari_nsg.pipeline.progress.Cancelled`.

    Returns
    -------
    MsgrRun

    Raises
    ------
    FrameError
        Unreadable input, existing output, images that cannot be registered or
        corrected (the message names the file and the reason).
    """
    narrow_path, wide_path = Path(narrow), Path(wide)
    if mode not in MODES:
        raise FrameError(None, f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if layers != "auto" and int(layers) < 1:
        raise FrameError(None, f"layers must be at least 1, got {layers}")
    outputs = {"corrected": Path(out)}
    if save_model is not None:
        outputs["model"] = Path(save_model)
    if save_registered is not None:
        outputs["registered"] = Path(save_registered)
    _check_outputs(outputs, [narrow_path, wide_path], overwrite)
    for folder in {p.parent for p in outputs.values()}:
        remove_partials(folder, keep=[narrow_path, wide_path])

    total = 10

    def step(done: int, t: int, message: str) -> None:
        check_cancel(cancel)
        report(progress, 1 + done, total, message)

    report(progress, 0, total, "reading")
    with ThreadPoolExecutor(max_workers=1) as pool:  # both files at once (I/O frees the GIL)
        wide_job = pool.submit(read_frame, wide_path)
        nf = read_frame(narrow_path)  # a narrow file's error first, as before
        check_cancel(cancel)
        wf = wide_job.result()
    check_cancel(cancel)
    try:
        if layers != "auto":
            check_msgr_size(nf.data.shape, int(layers))
    except (MsgrError, MMTSizeError) as exc:
        raise FrameError(narrow_path, str(exc)) from None
    if nf.data.ndim == 3 and wf.data.ndim == 3 and nf.data.shape[0] != wf.data.shape[0]:
        raise FrameError(wide_path, f"has {wf.data.shape[0]} channels, the narrow image "
                         f"{nf.data.shape[0]}")
    hint = _scale_hint(nf, wf)
    try:
        result = msgr(nf.data, wf.data, n_layers=layers, mode=mode, fit_method=fit_method,
                      remove_stars_first=remove_stars, flatten_wide=flatten_wide,
                      spline_smoothness=spline, scale_hint=hint, scale_range=scale_range,
                      wcs=(nf.header, wf.header), progress=step)
    except RegistrationError as exc:
        if exc.which == "narrow":
            raise FrameError(narrow_path, str(exc)) from None
        if exc.which == "wide":
            raise FrameError(wide_path, str(exc)) from None
        raise FrameError(wide_path, f"cannot be registered onto {narrow_path.name}: {exc}") from None
    except (MsgrError, MMTSizeError) as exc:
        raise FrameError(narrow_path, str(exc)) from None
    except LinearFitError as exc:
        raise FrameError(wide_path, f"cannot be fitted to {narrow_path.name}: {exc}") from None
    check_cancel(cancel)

    report(progress, total - 1, total, "writing")
    kw, history = msgr_keywords(result, wide_path.name)
    hdus = {"corrected": frame_hdu(result.corrected, nf.header, kw, history,
                                   path=outputs["corrected"])}
    if "model" in outputs:
        mkw = dict(kw)
        mkw["MSGRKIND"] = ("model", "MSGR output: the gradient model removed")
        what = ("M, the correction is med(M)/M" if result.mode == "multiplicative"
                else "D, the correction subtracts D - med(D)")
        model_history = [*history, f"MSGR.model image: {what}"]
        hdus["model"] = frame_hdu(_no_data_as_zero(result.model.model), nf.header, mkw,
                                  model_history, path=outputs["model"])
    if "registered" in outputs:
        header = wf.header.copy()
        for key in list(header.keys()):
            if key.startswith(_WCS_PREFIXES):
                header.remove(key, ignore_missing=True, remove_all=True)
        rkw = dict(kw)
        rkw["MSGRKIND"] = ("registered", "MSGR output: wide image on the narrow grid")
        hdus["registered"] = frame_hdu(
            _no_data_as_zero(result.registration.registered), header, rkw,
            history + [f"MSGR.registered onto {narrow_path.name}"], path=outputs["registered"])
    write_frames({outputs[k]: hdu for k, hdu in hdus.items()}, overwrite=overwrite)
    written = {k: outputs[k] for k in hdus}
    report(progress, total, total, "done")
    warnings = list(result.warnings)
    if nf.data.ndim != wf.data.ndim:
        warnings.append(MIXED_CHANNELS_WARNING)
    if hint is None:
        warnings.append("no pixel scale in the headers of both images: the scale ratio was "
                        f"searched from {scale_range[0]:g} to {scale_range[1]:g}")
    return MsgrRun(result=result, outputs=written, narrow=narrow_path, wide=wide_path,
                   scale_hint=hint, warnings=warnings)
