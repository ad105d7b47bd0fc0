"""MSGR step by step: pick the narrow and wide images, one button per step with its own
parameters, a named layer per product, the linear-fit scatter plot, Run all, save any product.

The work is done by :class:`napari_nsg.pipeline.msgr_session.MsgrSession` (Qt-free): each
button runs its step (and any missing step before it) in a worker thread; a changed
parameter drops only the products of its step and the later ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui import widgets as mg
from qtpy.QtWidgets import QFileDialog, QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from .._plots.msgr import MsgrFitPlot
from .._sample_data import MSGR_ROLE
from ..core.flatten import FLATTEN_MODES, FLATTEN_SURFACES
from ..core.linear_fit import DEFAULT_FIT_METHOD, FIT_METHODS
from ..core.msgr import MODES, MsgrError
from ..core.msgr_spline import SPLINE_SMOOTHNESS
from ..core.registration import DEFAULT_SCALE_RANGE
from ..pipeline.msgr_session import STEPS, MsgrSession
from ._base import WorkbenchWidget, session_lock
from ._layers import CHANNEL_NAMES, upsert_image, upsert_points

if TYPE_CHECKING:  # pragma: no cover
    import napari

PREFIX = "MSGR "
LAYER = {
    "registered": "MSGR registered wide", "coverage": "MSGR coverage",
    "stars": "MSGR matched stars", "flattened": "MSGR flattened wide",
    "star_mask": "MSGR star mask", "starless_narrow": "MSGR starless narrow",
    "starless_wide": "MSGR starless wide", "narrow_large": "MSGR narrow large scales",
    "wide_large": "MSGR wide large scales", "layers": "MSGR multiscale layers",
    "fitted_wide": "MSGR fitted wide", "raw_model": "MSGR model (raw)",
    "model": "MSGR model (smoothed)", "corrected": "MSGR corrected",
    "correction": "MSGR correction",
}
STEP_LABELS = {
    "register": "1. Register", "flatten": "2. Flatten wide",
    "stars": "3. Remove stars", "large": "4. Large scales", "fit": "5. Linear fit",
    "model": "6. Create model", "smooth": "7. Smooth model", "apply": "8. Remove model",
}
STEP_TIPS = {
    "register": "register the wide image onto the narrow grid (stars; scale, rotation, flip)",
    "flatten": "remove the wide image's own gradient first (optional)",
    "stars": "replace the stars of both images by a smooth fill (optional)",
    "large": "keep the scales above 2^N px of both images (multiscale median transform)",
    "fit": "fit the wide large scales to the narrow ones: narrow = a + b wide",
    "model": "narrow / fitted wide (multiplicative) or their difference (additive)",
    "smooth": "smooth the model: its first N+1 multiscale layers removed",
    "apply": "remove the model from the narrow image",
}
MAX_WIDTH = 520  # px: the dock leaves room for the image
BUTTON_WIDTH = 150
PLOT_MIN_HEIGHT = 240
RGB_SUFFIX = " (RGB)"
AUTO = "auto"
#: The spline step's choices: off, or its smoothness (NSG's log10 scale).
SPLINE_OFF = "off"
SPLINE_CHOICES = (SPLINE_OFF, "-3", "-2", "-1", "0", "1", "2")
MAX_LAYERS = 8


def _choices_of(viewer) -> list[str]:
    """Image layers, plus "<name> (RGB)" for each complete ``[R] [G] [B]`` trio."""
    names = [ly.name for ly in viewer.layers if ly.__class__.__name__ == "Image"]
    out = [n for n in names if not n.startswith(PREFIX)]
    for n in names:
        if n.endswith(" [R]"):
            base = n[:-4]
            if all(f"{base} [{c}]" in names for c in CHANNEL_NAMES):
                out.append(base + RGB_SUFFIX)
    return out


def _role_layer(viewer, role: str) -> str | None:
    """The first layer whose metadata marks it as the ``role`` ("narrow"/"wide") image."""
    return next((ly.name for ly in viewer.layers if ly.metadata.get(MSGR_ROLE) == role), None)


def _data_ids(viewer, choice: str) -> tuple:
    """Identity of the data behind a layer choice (a new array means new data)."""
    if choice.endswith(RGB_SUFFIX):
        base = choice[: -len(RGB_SUFFIX)]
        return tuple(id(viewer.layers[f"{base} [{c}]"].data) for c in CHANNEL_NAMES)
    return (id(viewer.layers[choice].data),)


def layer_image(viewer, choice: str) -> tuple[np.ndarray, object]:
    """The data (mono or stacked RGB) and FITS header of a layer choice."""
    if choice.endswith(RGB_SUFFIX):
        base = choice[: -len(RGB_SUFFIX)]
        layers = [viewer.layers[f"{base} [{c}]"] for c in CHANNEL_NAMES]
        return np.stack([np.asarray(ly.data, np.float32) for ly in layers]), \
            layers[0].metadata.get("header")
    layer = viewer.layers[choice]
    return np.asarray(layer.data, np.float32), layer.metadata.get("header")


class MsgrWidget(WorkbenchWidget):
    """Multiscale Gradient Removal, one step at a time.

    Attributes
    ----------
    narrow_choice, wide_choice : magicgui ComboBox
        The images (open layers).
    session : MsgrSession or None
        Made from the chosen layers when a step first runs (again when they change).
    params : dict of str to magicgui Container
        Each step's parameters.
    buttons : dict of str to QPushButton
    fit_plot : MsgrFitPlot
    info : QLabel
        Registration numbers, the layer count and its reason, the fit.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.session: MsgrSession | None = None
        self._source: tuple | None = None
        self.fit_plot = MsgrFitPlot(napari_viewer)
        self.fit_plot.setMinimumHeight(PLOT_MIN_HEIGHT)
        self.setMaximumWidth(MAX_WIDTH)
        self.buttons: dict[str, QPushButton] = {}
        self._build()
        self.add_status_row()
        self.refresh_choices()
        self.viewer.layers.events.inserted.connect(lambda e: self.refresh_choices())
        self.viewer.layers.events.removed.connect(lambda e: self.refresh_choices())

    # -- layout ------------------------------------------------------------------------------
    def _build(self) -> None:
        lay = self.layout()
        self.narrow_choice = mg.ComboBox(label="narrow", choices=[], nullable=True,
                                         tooltip="the narrow-field image to correct")
        self.wide_choice = mg.ComboBox(label="wide", choices=[], nullable=True,
                                       tooltip="the wide-field image of the same sky")
        inputs = mg.Container(widgets=[self.narrow_choice, self.wide_choice])
        open_button = QPushButton("Open files...")
        open_button.setToolTip("Open a narrow and a wide image from disk as layers")
        open_button.clicked.connect(self._open_files)
        box = QGroupBox("Images")
        box.setLayout(QVBoxLayout())
        box.layout().addWidget(inputs.native)
        box.layout().addWidget(open_button)
        lay.addWidget(box)
        self.params = self._param_forms()
        steps = QGroupBox("Steps (each re-runnable; later steps follow)")
        steps.setLayout(QVBoxLayout())
        for step in STEPS:
            row = QHBoxLayout()
            button = QPushButton(STEP_LABELS[step])
            button.setToolTip(STEP_TIPS[step])
            button.setFixedWidth(BUTTON_WIDTH)
            button.clicked.connect(lambda _=False, s=step: self.run_step(s))
            self.buttons[step] = button
            row.addWidget(button)
            if step in self.params:
                row.addWidget(self.params[step].native, 1)
            else:
                row.addStretch(1)
            steps.layout().addLayout(row)
        extra = QHBoxLayout()
        for text, slot, tip in (
                ("Show layers", self.show_layers, "the multiscale layers as a stack (narrow)"),
                ("Blink", self.blink, "show the registered wide and the narrow in turn"),
                ("Blend", self.blend, "registered wide at half opacity over the narrow")):
            b = QPushButton(text)
            b.setToolTip(tip)
            b.clicked.connect(lambda _=False, f=slot: f())
            extra.addWidget(b)
        steps.layout().addLayout(extra)
        lay.addWidget(steps)
        run_row = QHBoxLayout()
        self.run_all_button = QPushButton("Run all")
        self.run_all_button.clicked.connect(self.run_all)
        run_row.addWidget(self.run_all_button)
        self.save_choice = mg.ComboBox(choices=list(LAYER), value="corrected")
        run_row.addWidget(self.save_choice.native)
        save_button = QPushButton("Save...")
        save_button.setToolTip("Write that product as float32 FITS with the narrow header and "
                               "the MSGR keywords")
        save_button.clicked.connect(self._save_dialog)
        run_row.addWidget(save_button)
        lay.addLayout(run_row)
        self.info = QLabel("")
        self.info.setWordWrap(True)
        lay.addWidget(self.info)
        lay.addWidget(self.fit_plot, 1)

    def _param_forms(self) -> dict:
        lo, hi = DEFAULT_SCALE_RANGE
        return {
            "register": mg.Container(layout="horizontal", labels=True, widgets=[
                mg.FloatSpinBox(name="ratio_min", label="ratio", value=lo, min=1.0, max=20.0,
                                step=0.1, tooltip="smallest scale ratio (narrow px per wide px)"),
                mg.FloatSpinBox(name="ratio_max", label="to", value=hi, min=1.0, max=20.0,
                                step=0.1, tooltip="largest scale ratio searched"),
                mg.ComboBox(name="interpolation", label=" ",
                            choices=["cubic", "lanczos", "linear"], value="cubic")]),
            "flatten": mg.Container(layout="horizontal", labels=True, widgets=[
                mg.ComboBox(name="surface", choices=["none", *FLATTEN_SURFACES], value="none",
                            tooltip="remove the wide's own gradient: a plane or quadratic "
                            "surface over its whole field (stars, nebulae clipped)"),
                mg.ComboBox(name="flatten_mode", label=" ", choices=list(FLATTEN_MODES))]),
            "stars": mg.Container(layout="horizontal", labels=False, widgets=[
                mg.CheckBox(name="remove_stars", text="before the transform")]),
            "large": mg.Container(layout="horizontal", labels=True, widgets=[
                mg.ComboBox(name="n_layers", label="N",
                            choices=[AUTO, *map(str, range(1, MAX_LAYERS + 1))], value=AUTO,
                            tooltip="multiscale median layers removed; auto: from the image "
                            "size and the scale ratio")]),
            "fit": mg.Container(layout="horizontal", labels=True, widgets=[
                mg.ComboBox(name="fit_method", label="method", choices=list(FIT_METHODS),
                            value=DEFAULT_FIT_METHOD)]),
            "model": mg.Container(layout="horizontal", labels=True, widgets=[
                mg.ComboBox(name="mode", choices=list(MODES), value=MODES[0]),
                mg.ComboBox(name="spline", choices=list(SPLINE_CHOICES),
                            value=f"{SPLINE_SMOOTHNESS:g}",
                            tooltip="after the removal, a smooth spline of narrow minus the "
                            "fitted wide on star-free boxes takes out what the N layers "
                            "leave; smoothness (log10, higher = stiffer) or off")]),
        }

    def refresh_choices(self) -> None:
        """Offer the viewer's image layers (and RGB trios) as narrow and wide; an empty
        choice takes the layer whose metadata names its role (the sample pair's)."""
        choices = _choices_of(self.viewer)
        for box, role in ((self.narrow_choice, "narrow"), (self.wide_choice, "wide")):
            value = box.value
            box.choices = choices
            if value in choices:
                box.value = value
            elif (named := _role_layer(self.viewer, role)) in choices:
                box.value = named

    def set_busy(self, busy: bool) -> None:
        """Disable the step buttons while a job runs."""
        for b in [*self.buttons.values(), self.run_all_button]:
            b.setEnabled(not busy)

    # -- parameters and session --------------------------------------------------------------
    def param_values(self) -> dict:
        """The session parameters the forms give."""
        p = {k: w.value for form in self.params.values() for k, w in
             ((w.name, w) for w in form)}
        layers = p["n_layers"]
        return {
            "scale_range": (min(p["ratio_min"], p["ratio_max"]), max(p["ratio_min"], p["ratio_max"])),
            "interpolation": p["interpolation"],
            "flatten_wide": None if p["surface"] == "none" else p["surface"],
            "flatten_mode": p["flatten_mode"], "remove_stars": bool(p["remove_stars"]),
            "n_layers": layers if layers == AUTO else int(layers),
            "fit_method": p["fit_method"], "mode": p["mode"],
            "spline_smoothness": None if p["spline"] == SPLINE_OFF else float(p["spline"]),
        }

    def ensure_session(self) -> MsgrSession:
        """The session of the chosen layers (new when they or their data changed)."""
        narrow, wide = self.narrow_choice.value, self.wide_choice.value
        if not narrow or not wide:
            raise MsgrError("choose a narrow and a wide image (open layers or files)")
        if narrow == wide:
            raise MsgrError("the narrow and the wide image are the same layer")
        source = (narrow, wide, _data_ids(self.viewer, narrow), _data_ids(self.viewer, wide))
        params = self.param_values()
        if self.session is None or source != self._source:
            n_data, n_header = layer_image(self.viewer, narrow)
            w_data, w_header = layer_image(self.viewer, wide)
            self.session = MsgrSession(n_data, w_data, narrow_header=n_header,
                                       wide_header=w_header, narrow_name=narrow, wide_name=wide,
                                       scale_hint=_header_hint(n_header, w_header), **params)
            self._source = source
        else:
            self.session.update_params(**params)
        return self.session

    # -- running -----------------------------------------------------------------------------
    def run_step(self, step: str):
        """Run ``step`` (and the missing ones before it) in a worker; show the products."""
        try:
            session = self.ensure_session()
        except (MsgrError, ValueError) as exc:
            self.notify_error(exc)
            return None
        return self.start(session.run_step, step, on_done=lambda _: self.show(step),
                          label=f"MSGR: {STEP_LABELS[step]}", lock=session_lock(session))

    def run_all(self):
        """Every missing step, registration included, with progress and Cancel."""
        return self.run_step("apply")

    # -- products as layers ------------------------------------------------------------------
    def show(self, step: str) -> None:
        """Add or update the layers of ``step`` and of the steps before it."""
        s = self.session
        for done in STEPS[: STEPS.index(step) + 1]:
            getattr(self, f"_show_{done}")(s)
        self.notify_info(f"MSGR: {STEP_LABELS[step]} done")

    def _meta(self, kind: str) -> dict:
        return {"header": self.session.header(kind), "msgr_product": kind}

    def _image(self, key: str, data, kind: str = "sky", **kw) -> None:
        upsert_image(self.viewer, LAYER[key], data, kind=kind, metadata=self._meta(key), **kw)

    def _show_register(self, s: MsgrSession) -> None:
        self._image("registered", s.registered)
        self._image("coverage", s.coverage.astype(np.float32), kind="mask", visible=False)
        stars = s.matched_stars()
        upsert_points(self.viewer, LAYER["stars"], np.column_stack([stars["y"], stars["x"]]),
                      features={"residual_px": stars["residual"]}, face_color="transparent",
                      border_color="yellow", symbol="ring", size=12)
        self.info.setText(f"Registration: {s.registration_text()}")

    def _show_flatten(self, s: MsgrSession) -> None:
        if s.flat_surface is not None:
            self._image("flattened", s.flattened_wide)

    def _show_stars(self, s: MsgrSession) -> None:
        if s.star_mask is not None:
            self._image("star_mask", s.star_mask.astype(np.float32), kind="mask", opacity=0.5)
            self._image("starless_narrow", s.starless[0], visible=False)
            self._image("starless_wide", s.starless[1], visible=False)

    def _show_large(self, s: MsgrSession) -> None:
        self._image("narrow_large", s.large[0], kind="gradient")
        self._image("wide_large", s.large[1], kind="gradient", visible=False)
        self.info.setText(f"Registration: {s.registration_text()}\n"
                          f"Layers: {s.n_layers} ({s.layers_reason})")

    def _show_fit(self, s: MsgrSession) -> None:
        self._image("fitted_wide", s.fitted_wide, kind="gradient", visible=False)
        self.fit_plot.plot(s.fit_scatter(), label=f"{s.n_layers} layers")
        fits = "; ".join(f"narrow = {f.a:.5g} + {f.b:.5g} x wide" for f in s.fits)
        self.info.setText(f"Registration: {s.registration_text()}\n"
                          f"Layers: {s.n_layers} ({s.layers_reason})\nFit: {fits}"
                          + "".join(f"\n{w}" for w in s.products["fit"]["warnings"]))

    def _show_model(self, s: MsgrSession) -> None:
        self._image("raw_model", s.raw_model, kind="gradient", visible=False)

    def _show_smooth(self, s: MsgrSession) -> None:
        self._image("model", s.model.model, kind="gradient")

    def _show_apply(self, s: MsgrSession) -> None:
        self._image("correction", s.correction_map(), kind="gradient", visible=False)
        self._image("corrected", s.corrected)

    def show_layers(self):
        """The multiscale layers of the narrow (first channel) and the residual, as one stack."""
        s = self.session
        if s is None or "large" not in s.products:
            self.notify_error("run the large-scales step first")
            return None

        def job(progress=None, cancel=None):
            dec = s.layers("narrow")
            return np.stack([*dec.layers, dec.residual])

        def done(stack):
            upsert_image(self.viewer, LAYER["layers"], stack, kind="gradient",
                         metadata={"windows": list(s.layers("narrow").windows)})
            self.notify_info(f"{len(stack) - 1} layers and the residual: scroll the slider")

        return self.start(job, on_done=done, label="MSGR: multiscale layers",
                          lock=session_lock(s))

    # -- overlay check -----------------------------------------------------------------------
    def _overlay_layers(self):
        if LAYER["registered"] not in self.viewer.layers or not self.narrow_choice.value:
            self.notify_error("register first")
            return None
        return self.viewer.layers[LAYER["registered"]]

    def blink(self) -> None:
        """Toggle the registered wide image on and off over the narrow one."""
        layer = self._overlay_layers()
        if layer is not None:
            layer.opacity = 1.0
            layer.visible = not layer.visible

    def blend(self) -> None:
        """Show the registered wide image at half opacity over the narrow one."""
        layer = self._overlay_layers()
        if layer is not None:
            layer.visible = True
            layer.opacity = 0.5

    # -- files -------------------------------------------------------------------------------
    def load_files(self, narrow: str | Path, wide: str | Path) -> None:
        """Open two image files as layers and choose them as narrow and wide."""
        from ..io import FrameError, read_frame

        try:
            frames = [read_frame(Path(narrow)), read_frame(Path(wide))]
        except FrameError as exc:
            self.notify_error(exc)
            return
        names = []
        for frame, path in zip(frames, (narrow, wide)):
            name = Path(path).stem
            upsert_image(self.viewer, name, frame.data, metadata={"header": frame.header})
            names.append(name + RGB_SUFFIX if frame.data.ndim == 3 else name)
        self.refresh_choices()
        self.narrow_choice.value, self.wide_choice.value = names

    def _open_files(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Narrow image, then wide image", "",
                                                "Images (*.fits *.fit *.fts *.xisf)")
        if len(paths) != 2:
            if paths:
                self.notify_error("choose exactly two files: the narrow and the wide image")
            return
        self.load_files(*paths)

    def save_product(self, key: str, path: str | Path) -> list[str]:
        """Write one product (a key of ``LAYER``) with the plugin's writer (FITS + MSGR keywords)."""
        from .._writer import write_fits

        name = LAYER[key]
        if name not in self.viewer.layers:
            raise MsgrError(f"no layer '{name}': run its step first")
        layer = self.viewer.layers[name]
        return write_fits(str(path), np.asarray(layer.data), {"name": name,
                                                              "metadata": layer.metadata})

    def _save_dialog(self) -> None:
        key = self.save_choice.value
        path, _ = QFileDialog.getSaveFileName(self, f"Save {LAYER[key]}", f"{key}.fits",
                                              "FITS (*.fits *.fit *.fts)")
        if path:
            try:
                self.save_product(key, path)
                self.notify_info(f"wrote {path}")
            except (MsgrError, ValueError, OSError) as exc:
                self.notify_error(exc)


def _header_hint(narrow_header, wide_header) -> float | None:
    """Scale ratio from the two headers' pixel scales, if both have one."""
    if narrow_header is None or wide_header is None:
        return None
    from ..io.metadata import parse_metadata

    try:
        ns = parse_metadata(narrow_header).image_scale
        ws = parse_metadata(wide_header).image_scale
    except Exception:  # noqa: BLE001 - a header we cannot read gives no hint
        return None
    return float(ws / ns) if ns and ws and ns > 0 and ws > 0 else None
