"""MSGR step by step (Qt-free): each step's product kept, only later steps redone.

:class:`MsgrSession` holds a narrow and a wide image and runs the MSGR chain of
:mod:`napari_nsg.core.msgr` one step at a time::

    register -> flatten -> stars -> large -> fit -> model -> smooth -> apply

(register the wide onto the narrow grid, flatten the wide image (optional),
remove stars (optional), large scales (N layers), linear fit, create the
model, smooth it (N + 1 layers), remove it). Each step calls the same core
functions as :func:`napari_nsg.core.msgr.msgr` (and so ``napari-nsg msgr``) in
the same order, so :meth:`MsgrSession.run_all` gives the same numbers.
Changing a parameter (:meth:`MsgrSession.update_params`) drops the products of
its step and of every step after it; :meth:`MsgrSession.run_step` recomputes
only what is missing. ``computed`` counts the computations per step.

Every method that computes takes ``progress(done, total, message)`` and
``cancel`` (a :class:`threading.Event`); cancel is checked between steps and
inside the registration's star-pattern search (:class:`~.progress.Cancelled`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..core import msgr as core
from ..core.flatten import FLATTEN_MODES, FLATTEN_SURFACES
from ..core.linear_fit import DEFAULT_FIT_METHOD, FIT_METHODS
from ..core.mmt import MMTDecomposition, mmt_decompose
from ..core.registration import DEFAULT_SCALE_RANGE, register_wide_to_narrow
from ..core.stars import no_data_mask
from .progress import CancelToken, ProgressCallback, check_cancel, report

__all__ = ["STEPS", "MsgrParams", "MsgrSession"]

STEPS = ("register", "flatten", "stars", "large", "fit", "model", "smooth", "apply")
#: Points in the scatter plot of the linear fit.
SCATTER_POINTS = 20_000


@dataclass
class MsgrParams:
    """Parameters of the MSGR steps (defaults = ``napari-nsg msgr``'s).

    Attributes
    ----------
    scale_range, scale_hint, interpolation, min_coverage
        Registration (step ``register``).
    flatten_wide : {None, "plane", "quadratic"}; flatten_mode : {"subtract", "divide"}
        Step ``flatten``.
    remove_stars : bool
        Step ``stars``.
    n_layers : int or "auto"; border : {"linear", "mirror"}
        Step ``large``.
    fit_method : {"robust", "pixinsight"}
        Step ``fit``.
    mode : {"multiplicative", "additive"}
        Step ``model``.
    """

    scale_range: tuple = DEFAULT_SCALE_RANGE
    scale_hint: float | None = None
    interpolation: str = "cubic"
    min_coverage: float = 0.5
    flatten_wide: str | None = None
    flatten_mode: str = "subtract"
    remove_stars: bool = False
    n_layers: int | str = "auto"
    border: str = "linear"
    fit_method: str = DEFAULT_FIT_METHOD
    mode: str = "multiplicative"
    spline_smoothness: float | None = core.SPLINE_SMOOTHNESS


#: The step each parameter belongs to (changing it invalidates that step and all later ones).
PARAM_STEP = {
    "scale_range": "register", "scale_hint": "register", "interpolation": "register",
    "min_coverage": "register", "flatten_wide": "flatten", "flatten_mode": "flatten",
    "remove_stars": "stars", "n_layers": "large", "border": "large", "fit_method": "fit",
    "mode": "model", "spline_smoothness": "apply",
}


def _check(params: MsgrParams) -> None:
    if params.mode not in core.MODES:
        raise core.MsgrError(f"unknown mode {params.mode!r}; use one of {core.MODES}")
    if params.fit_method not in FIT_METHODS:
        raise core.MsgrError(f"unknown fit method {params.fit_method!r}; use one of {FIT_METHODS}")
    if params.flatten_wide not in (None, *FLATTEN_SURFACES):
        raise core.MsgrError(f"unknown flatten surface {params.flatten_wide!r}; use one of "
                             f"{tuple(FLATTEN_SURFACES)}")
    if params.flatten_mode not in FLATTEN_MODES:
        raise core.MsgrError(f"unknown flatten mode {params.flatten_mode!r}")
    if params.n_layers != "auto" and int(params.n_layers) < 1:
        raise core.MsgrError(f"the number of layers must be at least 1, got {params.n_layers}")


class MsgrSession:
    """A narrow/wide pair going through MSGR one step at a time.

    Parameters
    ----------
    narrow, wide : ndarray, (y, x) or (c, y, x)
        The narrow-field image to correct and the wide-field image.
    narrow_header, wide_header : astropy.io.fits.Header, optional
        Kept for saving products (the narrow's) and the registered wide (the wide's).
    narrow_name, wide_name : str
        Names used in messages and in the MSGRWIDE keyword.
    params : MsgrParams, optional
    **changes
        Parameter overrides.

    Attributes
    ----------
    params : MsgrParams
    computed : collections.Counter
        How many times each step was computed.
    products : dict
        Step name -> its product (see the properties).
    """

    def __init__(self, narrow: np.ndarray, wide: np.ndarray, *,
                 narrow_header: fits.Header | None = None, wide_header: fits.Header | None = None,
                 narrow_name: str = "narrow", wide_name: str = "wide",
                 params: MsgrParams | None = None, **changes):
        self.narrow = np.asarray(narrow, dtype=np.float32)
        if self.narrow.ndim not in (2, 3):
            raise core.MsgrError(f"{narrow_name}: expected a (y, x) or (c, y, x) image, got "
                                 f"shape {self.narrow.shape}")
        self.wide_input = np.asarray(wide, dtype=np.float32)
        self.wide = core.match_channels(self.narrow, self.wide_input)
        self.narrow_header = narrow_header
        self.wide_header = wide_header
        self.narrow_name, self.wide_name = narrow_name, wide_name
        self.params = dataclasses.replace(params or MsgrParams(), **changes)
        _check(self.params)
        self.computed: Counter = Counter()
        self.products: dict = {}
        self._layers: dict = {}
        self.warnings: list[str] = []

    @classmethod
    def from_files(cls, narrow, wide, **changes) -> MsgrSession:
        """Read both files (:func:`napari_nsg.io.read_frame`); the scale hint from their headers."""
        from ..io import read_frame
        from .msgr import _scale_hint

        nf, wf = read_frame(Path(narrow)), read_frame(Path(wide))
        changes.setdefault("scale_hint", _scale_hint(nf, wf))
        return cls(nf.data, wf.data, narrow_header=nf.header, wide_header=wf.header,
                   narrow_name=Path(narrow).name, wide_name=Path(wide).name, **changes)

    # -- parameters ----------------------------------------------------------------------------
    def update_params(self, **changes) -> set[str]:
        """Change parameters; returns the steps whose products were dropped."""
        unknown = set(changes) - set(PARAM_STEP)
        if unknown:
            raise TypeError(f"unknown MSGR parameter(s): {', '.join(sorted(unknown))}")
        new = dataclasses.replace(self.params, **changes)
        _check(new)
        changed = [k for k in changes if getattr(self.params, k) != getattr(new, k)]
        self.params = new
        if not changed:
            return set()
        first = min(STEPS.index(PARAM_STEP[k]) for k in changed)
        return self.invalidate(STEPS[first])

    def invalidate(self, step: str) -> set[str]:
        """Drop the products of ``step`` and of every later step; returns those dropped."""
        dropped = {s for s in STEPS[STEPS.index(step):] if s in self.products}
        for s in dropped:
            del self.products[s]
        if "large" in dropped or "stars" in dropped or "register" in dropped:
            self._layers.clear()
        return dropped

    # -- running -------------------------------------------------------------------------------
    def run_step(self, step: str, *, progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None):
        """Compute ``step`` (and the missing steps before it); returns its product."""
        if step not in STEPS:
            raise ValueError(f"unknown step {step!r}; use one of {STEPS}")
        todo = [s for s in STEPS[: STEPS.index(step) + 1] if s not in self.products]
        for k, s in enumerate(todo):
            check_cancel(cancel)
            report(progress, 100 * k, 100 * len(todo), f"MSGR: {s}")
            sub = _sub_progress(progress, cancel, k, len(todo))
            self.products[s] = getattr(self, f"_do_{s}")(sub)
            self.computed[s] += 1
        check_cancel(cancel)
        report(progress, 100 * len(todo), 100 * max(1, len(todo)), f"MSGR: {step} done")
        return self.products[step]

    def run_all(self, *, progress: ProgressCallback | None = None,
                cancel: CancelToken | None = None) -> core.MsgrResult:
        """Run every missing step; returns the :class:`~napari_nsg.core.msgr.MsgrResult`."""
        self.run_step("apply", progress=progress, cancel=cancel)
        return self.result()

    def _do_register(self, progress):
        p = self.params
        reg = register_wide_to_narrow(
            self.narrow, self.wide, scale_hint=p.scale_hint, scale_range=tuple(p.scale_range),
            interpolation=p.interpolation, min_coverage=p.min_coverage,
            narrow_wcs=self.narrow_header, wide_wcs=self.wide_header, progress=progress)
        return reg

    def _do_flatten(self, progress):
        p, reg = self.params, self.products["register"]
        if not p.flatten_wide:
            return reg.registered, None
        return core.flatten_wide_image(self.wide, reg, self.narrow.shape[-2:],
                                       surface=p.flatten_wide, mode=p.flatten_mode,
                                       interpolation=p.interpolation)

    def _do_stars(self, progress):
        w_reg = self.products["flatten"][0]
        if not self.params.remove_stars:
            return self.narrow, w_reg, None
        ratio = self.products["register"].scale_ratio
        mask = core.both_star_mask(self.narrow, w_reg, ratio)
        n0, w0 = core.remove_stars_both(self.narrow, w_reg, ratio, mask=mask)
        return n0, w0, mask

    def _do_large(self, progress):
        n0, w0, _ = self.products["stars"]
        ratio = self.products["register"].scale_ratio
        n, reason = core.resolve_layers(self.params.n_layers, self.narrow.shape, ratio)
        border = self.params.border
        report(progress, 0, 2, "large scales (narrow)")
        n_large = core.large_scales(n0, n, border=border)
        report(progress, 1, 2, "large scales (wide)")
        w_large = core.large_scales(w0, n, border=border)
        return {"n_layers": n, "reason": reason, "narrow": n_large, "wide": w_large}

    def _ranges(self):
        return core.data_ranges(self.narrow, self.products["flatten"][0])

    def _do_fit(self, progress):
        large = self.products["large"]
        try:
            fits_, warnings = core.checked_fit(large["narrow"], large["wide"],
                                               fit_method=self.params.fit_method,
                                               ranges=self._ranges(),
                                               expected_slopes=self._expected_slopes())
        except core.MsgrError as exc:
            if self.params.n_layers != "auto":
                raise
            return self._fit_fallback(large, exc)
        return {"fits": fits_, "warnings": warnings}

    def _fit_fallback(self, large: dict, first: core.MsgrError) -> dict:
        """The automatic N's fallback of :func:`~napari_nsg.core.msgr.fit_with_fallback`."""
        n0, w0, _ = self.products["stars"]
        n = large["n_layers"]
        try:
            m, n_large, w_large, fits_, warnings = core.fit_with_fallback(
                n0, w0, n + 1, True, fit_method=self.params.fit_method,
                border=self.params.border, ranges=self._ranges(),
                expected_slopes=self._expected_slopes())
        except core.MsgrError:
            raise first from None
        self.products["large"] = {
            "n_layers": m, "narrow": n_large, "wide": w_large,
            "reason": f"{large['reason']}; raised to {m} (fit refused with {n})"}
        self._layers.clear()
        note = f"the fit with {n} layers was refused ({first}); used {m} layers"
        return {"fits": fits_, "warnings": [note, *warnings]}

    def _do_model(self, progress):
        large = self.products["large"]
        return core.create_model(large["narrow"], large["wide"], self.products["fit"]["fits"],
                                 self.params.mode)

    def _do_smooth(self, progress):
        return core.smooth_model(self.products["model"], self.products["large"]["n_layers"],
                                 self.params.mode, border=self.params.border, like=self.narrow)

    def _expected_slopes(self) -> list:
        """The stars' flux ratio per channel (:func:`~napari_nsg.core.msgr.photometric_slopes`)."""
        reg = self.products["register"]
        return core.photometric_slopes(self.narrow, self.products["flatten"][0], reg.narrow_xy,
                                       reg.scale_ratio)

    def _do_apply(self, progress):
        corrected = core.apply_gradient_model(self.narrow, self.products["smooth"])
        self.spline = None
        if self.params.spline_smoothness is None:
            return corrected
        large = self.products["large"]
        self.spline = core.spline_step(corrected, self.narrow, self.products["flatten"][0],
                                       large["narrow"], large["wide"],
                                       self.products["fit"]["fits"], self.params.spline_smoothness)
        return self.spline.corrected

    # -- products ------------------------------------------------------------------------------
    def _get(self, step: str):
        if step not in self.products:
            raise core.MsgrError(f"the step '{step}' has not been run")
        return self.products[step]

    @property
    def registration(self):
        """The :class:`~napari_nsg.core.registration.Registration` (step ``register``)."""
        return self._get("register")

    @property
    def registered(self) -> np.ndarray:
        """The wide image on the narrow grid (NaN where uncovered)."""
        return self.registration.registered

    @property
    def coverage(self) -> np.ndarray:
        """True where the registered wide image has data."""
        return self.registration.coverage

    def matched_stars(self) -> dict:
        """The registration's star pairs: narrow ``x, y``, wide ``x, y`` and ``residual`` (narrow px)."""
        reg = self.registration
        pred = reg.transform(reg.narrow_xy)
        resid = np.hypot(*(np.asarray(pred) - reg.wide_xy).T) * reg.scale_ratio
        return {"x": reg.narrow_xy[:, 0], "y": reg.narrow_xy[:, 1], "wide_x": reg.wide_xy[:, 0],
                "wide_y": reg.wide_xy[:, 1], "residual": resid.astype(np.float32)}

    def registration_text(self) -> str:
        """Ratio, rotation, flip and residual in words."""
        reg = self.registration
        return (f"scale ratio {reg.scale_ratio:.4f}, rotation {reg.rotation_deg:.2f} deg, "
                f"{'mirrored, ' if reg.flip else ''}residual {reg.residual_px:.3f} px over "
                f"{reg.n_pairs} stars, coverage {100 * (reg.coverage_fraction or 0):.1f}%"
                + ("" if reg.method == "stars" else f"; registered by {reg.method_text()}"))

    @property
    def flattened_wide(self) -> np.ndarray:
        """The registered wide image after the flatten step (itself without flattening)."""
        return self._get("flatten")[0]

    @property
    def flat_surface(self):
        """The :class:`~napari_nsg.core.flatten.FlatSurface` removed, or None."""
        return self._get("flatten")[1]

    @property
    def star_mask(self) -> np.ndarray | None:
        """The star mask of step ``stars`` (None without star removal)."""
        return self._get("stars")[2]

    @property
    def starless(self) -> tuple[np.ndarray, np.ndarray]:
        """The narrow and wide images that enter the MMT (star-removed if asked)."""
        return self._get("stars")[:2]

    @property
    def n_layers(self) -> int:
        """The layer count used (resolved from "auto")."""
        return self._get("large")["n_layers"]

    @property
    def layers_reason(self) -> str:
        """Why this layer count."""
        return self._get("large")["reason"]

    @property
    def large(self) -> tuple[np.ndarray, np.ndarray]:
        """The narrow and wide large scales (step ``large``)."""
        large = self._get("large")
        return large["narrow"], large["wide"]

    def layers(self, which: str = "narrow", channel: int = 0) -> MMTDecomposition:
        """The multiscale layers of one image and channel, with MSGR's border handling (cached)."""
        key = (which, channel)
        if key not in self._layers:
            n0, w0 = self.starless
            image = {"narrow": n0, "wide": w0}[which]
            plane = image if image.ndim == 2 else image[channel]
            self._layers[key] = mmt_decompose(plane, self.n_layers, border=self.params.border)
        return self._layers[key]

    @property
    def fits(self) -> list:
        """Per channel :class:`~napari_nsg.core.linear_fit.LinearFitResult`."""
        return self._get("fit")["fits"]

    @property
    def fitted_wide(self) -> np.ndarray:
        """``a + b * wide large scales`` per channel."""
        _, w = self.large
        planes = [f.apply(w if w.ndim == 2 else w[min(c, len(w) - 1)])
                  for c, f in enumerate(self.fits)]
        return planes[0] if self.narrow.ndim == 2 else np.stack(planes)

    def fit_scatter(self, channel: int = 0, max_points: int = SCATTER_POINTS) -> dict:
        """Subsampled narrow vs wide large-scale pixels and the fitted relation.

        Returns
        -------
        dict
            ``wide``, ``narrow`` (the pixels, a regular subsample of the valid
            ones), ``line_x``, ``line_y`` (``a + b x`` over the wide range),
            ``a``, ``b``.
        """
        n, w = self.large
        nc = n if n.ndim == 2 else n[channel]
        wc = w if w.ndim == 2 else w[min(channel, len(w) - 1)]
        ok = ~no_data_mask(nc) & ~no_data_mask(wc)
        step = max(1, int(np.ceil(np.sqrt(ok.sum() / max_points))))
        sub = np.zeros_like(ok)
        sub[step // 2 :: step, step // 2 :: step] = True
        sel = ok & sub
        fit = self.fits[channel]
        x = wc[sel]
        lx = np.array([x.min(), x.max()]) if x.size else np.zeros(2)
        return {"wide": x, "narrow": nc[sel], "line_x": lx, "line_y": fit.a + fit.b * lx,
                "a": fit.a, "b": fit.b}

    @property
    def raw_model(self) -> np.ndarray:
        """The model before smoothing (step ``model``)."""
        return self._get("model")

    @property
    def model(self) -> core.GradientModel:
        """The smoothed model (step ``smooth``)."""
        return self._get("smooth")

    @property
    def corrected(self) -> np.ndarray:
        """The corrected narrow image (step ``apply``)."""
        return self._get("apply")

    def correction_map(self) -> np.ndarray:
        """Multiplicative: the factor ``med(M)/M``; additive: the offset subtracted ``M - med(M)``."""
        model = self.model
        planes = core._planes(model.model)
        out = []
        for p, ref in zip(planes, model.reference):
            with np.errstate(divide="ignore", invalid="ignore"):
                out.append(ref / p if model.mode == "multiplicative" else p - ref)
        arr = np.stack(out).astype(np.float32)
        return arr[0] if np.ndim(model.model) == 2 else arr

    def result(self) -> core.MsgrResult:
        """The whole run as :func:`napari_nsg.core.msgr.msgr` returns it."""
        reg, p = self.registration, self.params
        large = self._get("large")
        fit = self._get("fit")
        self._get("apply")
        flat = self.flat_surface
        return core.MsgrResult(
            corrected=self.corrected, model=self.model, registration=reg, fits=fit["fits"],
            narrow_large=large["narrow"], wide_large=large["wide"], n_layers=large["n_layers"],
            mode=p.mode, fit_method=p.fit_method, stars_removed=p.remove_stars,
            warnings=[*reg.warnings, *fit["warnings"]], layers_reason=large["reason"],
            flat_surface=flat, flatten=p.flatten_wide or None,
            spline=getattr(self, "spline", None))

    def header(self, kind: str = "corrected") -> fits.Header:
        """A FITS header for saving a product: the narrow's (the wide's for ``registered``)
        with the MSGR keywords known so far and ``MSGRKIND = kind``."""
        from .msgr import msgr_keywords

        base = self.wide_header if kind == "registered" else self.narrow_header
        header = fits.Header() if base is None else base.copy()
        if "apply" in self.products:
            kw, history = msgr_keywords(self.result(), self.wide_name)
        else:
            kw, history = {"MSGRWIDE": (self.wide_name[:60], "MSGR wide-field reference image")}, []
            if "register" in self.products:
                reg = self.registration
                kw["MSGRSCL"] = (round(reg.scale_ratio, 5), "MSGR scale ratio, narrow px per wide px")
                kw["MSGRRES"] = (round(reg.residual_px, 4), "[px] MSGR registration residual")
        kw["MSGRKIND"] = (kind[:60], "MSGR product in this file")
        for key, value in kw.items():
            header[key] = value
        for line in history:
            header.add_history(line)
        return header


def _sub_progress(progress, cancel, k: int, n: int):
    """A progress callback for inside one step: checks cancel, reports a fraction of step k."""

    def sub(done: int, total: int, message: str = "") -> None:
        check_cancel(cancel)
        frac = min(1.0, done / total) if total else 0.0
        report(progress, k * 100 + int(100 * frac), n * 100, message)

    return sub
