"""Normalize (NSG): the parameters, a live preview of one target, a run over all
frames with its results table, and the photometry / gradient / weights plots."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from .._plots.nsg import GradientPlot, PhotometryPlot, WeightsPlot
from ..core.nsg import NsgError
from ..pipeline.session import NsgSession
from ._base import WorkbenchWidget, session_lock
from ._layers import circle_boxes, styles_for, upsert_image, upsert_points, upsert_shapes
from ._table import RowTable
from .frames import FramesWidget, find_widget
from .params_form import ParameterForm

if TYPE_CHECKING:  # pragma: no cover
    import napari

DEBOUNCE_MS = 150
PREVIEW = {"corrected": "NSG preview: corrected", "uncorrected": "NSG preview: uncorrected",
           "reference": "NSG preview: reference"}
GRADIENT_LAYER = "NSG preview: gradient"
CURVATURE_LAYER = "NSG preview: curvature"
SAMPLES_KEPT = "NSG samples kept"
SAMPLES_REJECTED = "NSG samples rejected"
STARS_USED = "NSG stars used"
STARS_REJECTED = "NSG stars rejected"
CIRCLES_LAYER = "NSG rejection circles"
CUTOFF_KEYS = ("min_weight", "min_transmission")
OUTPUT_KEY = "nsg_output"  # layer metadata of result layers (not frames to add)
RESULT_COLUMNS = (
    ("name", "Frame", "frame"),
    ("rejected", "Rejected", "rejected by the cut-offs"),
    ("reject_reason", "Why", "why it is rejected"),
    ("relative_weight", "Weight", "NWEIGHT relative to the best frame"),
    ("relative_transmission", "Transm.", "transmission relative to the reference"),
    ("scale", "Scale", "factor the frame is multiplied by, per channel"),
    ("n_star_pairs", "Pairs", "star pairs used per channel"),
    ("n_samples", "Samples", "gradient samples"),
    ("is_reference", "Ref", "the reference"),
    ("error", "Error", "why the frame failed"),
)


class NormalizeWidget(WorkbenchWidget):
    """Normalize (NSG).

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
    session : NsgSession, optional
        Default: the session of the viewer's Frames & reference widget (opened
        if needed).

    Attributes
    ----------
    form : ParameterForm
    target : QComboBox
        The frame previewed.
    preview_result : FramePreview or None
        The last preview shown.
    results : RowTable
        The last run's rows.
    photometry_plot, gradient_plot, weights_plot : PlotWidget
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, session: NsgSession | None = None,
                 parent=None):
        super().__init__(napari_viewer, parent)
        self.frames_widget = None
        if session is None:
            self.frames_widget = self._frames_widget()
            session = self.frames_widget.session if self.frames_widget else NsgSession()
        self.session = session
        self.lock = session_lock(session)
        self.preview_result = None
        self.run_rows: list[dict] | None = None
        self.photometry_plot = PhotometryPlot(napari_viewer)
        self.gradient_plot = GradientPlot(napari_viewer)
        self.weights_plot = WeightsPlot(napari_viewer)
        self.weights_plot.on_cutoff = self.set_cutoffs
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self.preview)
        self._build()
        self.add_status_row()
        self.refresh_targets()
        if self.frames_widget is not None:
            self.frames_widget.frames_changed.connect(self.refresh_targets)
            self.frames_widget.reference_changed.connect(lambda _: self.refresh_targets())

    def _frames_widget(self):
        found = find_widget(self.viewer, FramesWidget)
        if found is None:
            try:
                _, found = self.viewer.window.add_plugin_dock_widget("napari-nsg",
                                                                     "Frames & reference")
            except Exception:  # noqa: BLE001 - no plugin manager (widget built by hand)
                found = None
        return found

    # -- layout ------------------------------------------------------------------------------
    def _build(self) -> None:
        lay = self.layout()
        self.form = ParameterForm()
        self._form_values = self.form.values()
        self.form.changed.connect(self._form_changed)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.form.native)
        params = QGroupBox("Parameters (NSG defaults; hover for help)")
        params.setLayout(QVBoxLayout())
        params.layout().addWidget(scroll)
        first = QWidget()
        first.setLayout(QVBoxLayout())
        first.layout().addWidget(params, 1)
        first.layout().addWidget(self._preview_box())
        self.tabs = QTabWidget()
        self.tabs.addTab(first, "Parameters && preview")
        self.tabs.addTab(self._run_box(), "Run all frames")
        lay.addWidget(self.tabs, 1)
        plots = QHBoxLayout()
        for label, plot, name in (("Photometry graph", self.photometry_plot, "NSG photometry"),
                                  ("Gradient graph", self.gradient_plot, "NSG gradient profile"),
                                  ("Transmission && weight", self.weights_plot, "NSG weights")):
            b = QPushButton(label)
            b.clicked.connect(lambda _=False, p=plot, n=name: self.dock_plot(p, n))
            plots.addWidget(b)
        lay.addLayout(plots)

    def _preview_box(self) -> QGroupBox:
        box = QGroupBox("Live preview of one target")
        box.setLayout(QVBoxLayout())
        row = QHBoxLayout()
        row.addWidget(QLabel("Target"))
        self.target = QComboBox()
        self.target.currentTextChanged.connect(lambda _: self._schedule())
        row.addWidget(self.target, 1)
        self.live = QCheckBox("Live")
        self.live.setToolTip("Re-compute the preview when a parameter changes "
                             "(a smoothness change re-fits only the spline)")
        self.live.setChecked(True)
        row.addWidget(self.live)
        self.preview_button = QPushButton("Preview")
        self.preview_button.clicked.connect(self.preview)
        row.addWidget(self.preview_button)
        box.layout().addLayout(row)
        row = QHBoxLayout()
        self.toggle_uncorrected = QPushButton("Corrected ⇄ uncorrected")
        self.toggle_uncorrected.clicked.connect(lambda: self.toggle("uncorrected"))
        self.toggle_reference = QPushButton("Reference ⇄ corrected")
        self.toggle_reference.clicked.connect(lambda: self.toggle("reference"))
        row.addWidget(self.toggle_uncorrected)
        row.addWidget(self.toggle_reference)
        box.layout().addLayout(row)
        row = QHBoxLayout()
        row.addWidget(QLabel("Profile"))
        self.profile_axis = QComboBox()
        self.profile_axis.addItems(["row", "column"])
        self.profile_axis.currentTextChanged.connect(lambda _: self.update_profile())
        self.profile_index = QSpinBox()
        self.profile_index.setRange(0, 0)
        self.profile_index.valueChanged.connect(lambda _: self.update_profile())
        self.pick_line = QCheckBox("pick by clicking the image")
        self.pick_line.setToolTip("Click the image to choose the row or column of the "
                                  "gradient graph")
        self.pick_line.toggled.connect(self._pick_mode)
        for w in (self.profile_axis, self.profile_index, self.pick_line):
            row.addWidget(w)
        box.layout().addLayout(row)
        self.preview_label = QLabel("")
        self.preview_label.setWordWrap(True)
        box.layout().addWidget(self.preview_label)
        return box

    def _run_box(self) -> QWidget:
        from magicgui.widgets import FileEdit

        box = QWidget()
        box.setLayout(QVBoxLayout())
        self.out_dir = FileEdit(mode="d", label="output folder")
        self.out_dir.tooltip = ("Write <stem>_nsg.fits and nsg_results.json/csv here "
                                "(like napari-nsg normalize); empty = in memory only")
        self.out_dir.line_edit.value = ""
        box.layout().addWidget(self.out_dir.native)
        row = QHBoxLayout()
        self.gradient_images = QCheckBox("gradient + curvature files")
        self.overwrite = QCheckBox("replace existing outputs")
        self.run_button = QPushButton("Run all")
        self.run_button.clicked.connect(self.run_all)
        row.addWidget(self.gradient_images)
        row.addWidget(self.overwrite)
        row.addWidget(self.run_button)
        box.layout().addLayout(row)
        self.results = RowTable(RESULT_COLUMNS)
        self.results.itemSelectionChanged.connect(self._result_selected)
        box.layout().addWidget(self.results, 1)
        return box

    def set_busy(self, busy: bool) -> None:
        self.run_button.setEnabled(not busy or self._job_kind == "preview")
        self.preview_button.setEnabled(not busy)

    _job_kind = ""

    def dock_plot(self, plot, name: str) -> None:
        """Show a plot as a dock widget of the viewer."""
        if not plot.isVisible():
            self.viewer.window.add_dock_widget(plot, name=name, area="right")

    # -- targets -----------------------------------------------------------------------------
    def refresh_targets(self) -> None:
        """List the session's frames other than the reference as preview targets."""
        current = self.target.currentText()
        names = [f.name for f in self.session.frames if f.name != self.session.reference]
        self.target.blockSignals(True)
        self.target.clear()
        self.target.addItems(names)
        if current in names:
            self.target.setCurrentText(current)
        self.target.blockSignals(False)

    # -- preview -----------------------------------------------------------------------------
    def _form_changed(self, *_) -> None:
        values = self.form.values()
        changed = {k for k, v in values.items() if self._form_values.get(k) != v}
        self._form_values = values
        if changed & set(CUTOFF_KEYS) and self.run_rows is not None:
            self.set_cutoffs(values["min_weight"], values["min_transmission"], sync_form=False)
        if changed - set(CUTOFF_KEYS):  # cut-offs change no preview
            self._schedule()

    def _schedule(self) -> None:
        if self.live.isChecked() and self.target.currentText():
            self._debounce.start()

    def preview(self) -> None:
        """Preview the target (in a worker): only the stages the changed parameters
        invalidated are recomputed; an older preview still running is dropped."""
        name = self.target.currentText()
        if not name:
            self.notify_error("add frames in Frames & reference first")
            return
        try:
            values = self.form.parameters().to_dict()
        except ValueError as exc:
            self.notify_error(exc)
            return
        session = self.session

        shown = self._shown  # what the viewer shows now (target, reference)

        def job(*, progress=None, cancel=None):
            before = dict(session.computed)
            measured = _apply(session, values, progress, cancel)
            result = session.preview(name, progress=progress, cancel=cancel)
            redone = {k for k, n in session.computed.items() if n != before.get(k)}
            # everything heavy here, not in the GUI thread: images and their stretch
            images = {"corrected": (result.corrected, "sky"),
                      "gradient": (result.gradient(), "gradient"),
                      "curvature": (result.curvature(), "curvature")}
            inputs = (shown != (name, session.reference)) or bool(redone & {"reference",
                                                                            "scale"})
            if inputs:
                images["reference"] = (result.reference, "sky")
                images["uncorrected"] = (result.uncorrected_scaled, "sky")
            styles = {k: styles_for(data, kind) for k, (data, kind) in images.items()}
            return {"result": result, "styles": styles, "inputs": inputs,
                    "points": inputs or bool(redone & {"samples"}), "measured": measured}

        self._job_kind = "preview"
        self._steps = []  # an older preview still being drawn is dropped
        self.start(job, label=f"Preview {name}", on_done=self._previewed, lock=self.lock)

    _shown: tuple = ()

    def _previewed(self, update: dict) -> None:
        if update["measured"]:
            self._frames_refresh()
        self.show_preview(update["result"], update["styles"], update["inputs"], update["points"])

    def show_preview(self, result, styles: dict | None = None, inputs: bool = True,
                     points: bool = True) -> None:
        """Put a preview's images, points and plots in the viewer.

        Parameters
        ----------
        result : FramePreview
        styles : dict, optional
            Display settings per image (``styles_for``), computed in the worker.
        inputs, points : bool
            Also replace the reference / uncorrected images, and the star, sample
            and circle layers (False when only the spline changed).
        """
        self.preview_result = result
        self._shown = (result.name, self.session.reference)
        styles = styles or {}
        steps = []
        if inputs or not self._layers(PREVIEW["reference"]):
            steps += [lambda: self._put(PREVIEW["reference"], result.reference, "sky",
                                        styles.get("reference"), visible=False),
                      lambda: self._put(PREVIEW["uncorrected"], result.uncorrected_scaled,
                                        "sky", styles.get("uncorrected"), visible=False)]
        steps += [lambda: self._put(PREVIEW["corrected"], result.corrected, "sky",
                                    styles.get("corrected")),
                  lambda: self._put(GRADIENT_LAYER, result.gradient(), "gradient",
                                    styles.get("gradient"), visible=False),
                  lambda: self._put(CURVATURE_LAYER, result.curvature(), "curvature",
                                    styles.get("curvature"), visible=False)]
        if points or SAMPLES_KEPT not in self.viewer.layers:
            steps += self._point_steps(result)
        steps.append(lambda: self._show_numbers(result))
        self._draw(steps)

    # drawing a preview: one layer per turn of the event loop, so that napari's layer
    # creation (a few hundred ms each) never freezes the GUI for the whole preview
    _steps: tuple | list = ()

    @property
    def busy(self) -> bool:
        """True while a job runs or its results are still being drawn."""
        return super().busy or bool(self._steps)

    def _draw(self, steps: list) -> None:
        self._steps = list(steps)
        self._next_step()

    def _next_step(self) -> None:
        if not self._steps:
            return
        step = self._steps.pop(0)
        step()
        if self._steps:
            QTimer.singleShot(0, self._next_step)

    def _put(self, name: str, data, kind: str, styles, **kwargs) -> None:
        layers = upsert_image(self.viewer, name, data, kind=kind, styles=styles, **kwargs)
        if kind == "sky" and name != PREVIEW["reference"]:
            _share_limits(layers, self._layers(PREVIEW["reference"]))  # one stretch

    def _show_numbers(self, result) -> None:
        """The plots and the preview's line of numbers."""
        self.photometry_plot.plot(result.stars, np.atleast_1d(result.scale), result.name)
        h, w = result.target.shape[-2:]
        size = h if self.profile_axis.currentText() == "row" else w
        self.profile_index.blockSignals(True)
        self.profile_index.setRange(0, size - 1)
        if self.profile_index.value() == 0:
            self.profile_index.setValue(size // 2)
        self.profile_index.blockSignals(False)
        self.update_profile()
        scale = ", ".join(f"{s:.4f}" for s in np.atleast_1d(result.scale))
        pairs = ", ".join(str(int(n)) for n in np.atleast_1d(result.n_star_pairs))
        self.status.setText(f"preview of {result.name} ready")
        self.preview_label.setText(
            f"{result.name}: scale {scale}, weight {result.weight:.3f}, "
            f"{pairs} star pairs, {result.n_samples} samples, {result.n_nodes} spline nodes")

    def _point_steps(self, result) -> list:
        """Steps that draw the sample bins, star pairs and rejection circles."""
        v, s = self.viewer, result.samples
        kept = np.asarray(s["kept"], bool)
        values = np.atleast_2d(s["value"])
        steps = []
        for name, sel, colour in ((SAMPLES_KEPT, kept, "lime"),
                                  (SAMPLES_REJECTED, ~kept, "orange")):
            feats = {f"value_{'RGB'[c] if len(values) > 1 else 'ADU'}": values[c][sel]
                     for c in range(len(values))}
            feats["reason"] = np.asarray(s["reason"])[sel]
            steps.append(lambda name=name, sel=sel, colour=colour, feats=feats: upsert_points(
                v, name, np.c_[s["y"][sel], s["x"][sel]], features=feats, symbol="square",
                size=result.sample_size, face_color="transparent", border_color=colour,
                visible=False))
        stars = result.stars or {}
        if stars:
            used = np.asarray(stars["used"], bool)
            for name, sel, colour in ((STARS_USED, used, "cyan"),
                                      (STARS_REJECTED, ~used, "red")):
                feats = {"ref_flux": np.atleast_2d(stars["ref_flux"])[0][sel],
                         "tgt_flux": np.atleast_2d(stars["tgt_flux"])[0][sel],
                         "reason": np.asarray(stars["reason"])[sel]}
                steps.append(lambda name=name, sel=sel, colour=colour, feats=feats: upsert_points(
                    v, name, np.c_[stars["y"][sel], stars["x"][sel]], features=feats,
                    symbol="ring", size=12, face_color=colour, border_color=colour))
        c = result.rejection_circles
        steps.append(lambda: upsert_shapes(
            v, CIRCLES_LAYER, circle_boxes(c["x"], c["y"], c["radius"]), shape_type="ellipse",
            edge_color="magenta", visible=False, features={"radius": np.asarray(c["radius"])}))
        return steps

    def toggle(self, other: str) -> None:
        """Swap the visible preview image between corrected and ``other``
        ("uncorrected" or "reference")."""
        corrected = self._layers(PREVIEW["corrected"])
        if not corrected:
            return
        show_corrected = not corrected[0].visible
        for key, name in PREVIEW.items():
            visible = (key == "corrected") if show_corrected else (key == other)
            for layer in self._layers(name):
                layer.visible = visible

    def _layers(self, name: str) -> list:
        names = [name] + [f"{name} [{c}]" for c in "RGB"]
        return [self.viewer.layers[n] for n in names if n in self.viewer.layers]

    # -- gradient profile ---------------------------------------------------------------------
    def update_profile(self) -> None:
        """Redraw the gradient graph for the chosen row or column."""
        result = self.preview_result
        if result is None:
            return
        axis = self.profile_axis.currentText()
        h, w = result.target.shape[-2:]
        limit = h if axis == "row" else w
        self.profile_index.setMaximum(limit - 1)
        index = min(self.profile_index.value(), limit - 1)
        channels = 1 if result.target.ndim == 2 else result.target.shape[0]
        profiles = [result.profile(axis, index, channel=c) for c in range(channels)]
        self.gradient_plot.plot(profiles, axis, index, result.name)
        _mark_line(self.viewer, axis, index, (h, w))

    def _pick_mode(self, on: bool) -> None:
        callbacks = self.viewer.mouse_drag_callbacks
        if on and self._on_click not in callbacks:
            callbacks.append(self._on_click)
        elif not on and self._on_click in callbacks:
            callbacks.remove(self._on_click)

    def _on_click(self, viewer, event) -> None:
        """Mouse callback: the clicked row (or column) becomes the profile's line."""
        y, x = event.position[-2:]
        self.pick(round(y), round(x))

    def pick(self, y: int, x: int) -> None:
        """Choose the profile line through pixel ``(y, x)``."""
        self.profile_index.setValue(y if self.profile_axis.currentText() == "row" else x)

    # -- run -----------------------------------------------------------------------------------
    def run_all(self) -> None:
        """Normalize every frame (in a worker), then show the results."""
        try:
            values = self.form.parameters().to_dict()
        except ValueError as exc:
            self.notify_error(exc)
            return
        text = self.out_dir.line_edit.value.strip()
        out = text or None
        session, gradient_images, overwrite = self.session, self.gradient_images.isChecked(), \
            self.overwrite.isChecked()

        def job(*, progress=None, cancel=None):
            _apply(session, values, progress, cancel)  # the table is refreshed after the run
            return session.run_all(out_dir=out, gradient_images=gradient_images,
                                   overwrite=overwrite, progress=progress, cancel=cancel)

        self._job_kind = "run"
        self.start(job, label="Normalizing all frames", on_done=self._ran, lock=self.lock)

    def _frames_refresh(self) -> None:
        """The Frames widget's table again (a reference parameter re-measured the frames)."""
        if self.frames_widget is not None and self.frames_widget.session is self.session:
            self.frames_widget.refresh()

    def _ran(self, rows) -> None:
        self._frames_refresh()
        self.run_rows = rows
        self.tabs.setCurrentIndex(1)
        values = self.form.values()
        self.set_cutoffs(values["min_weight"], values["min_transmission"], sync_form=False)
        failed = [r for r in rows if r.get("error")]
        for r in failed:
            self.notify_error(f"{r['name']}: {r['error']}")
        first = next((r["name"] for r in rows if not r["is_reference"] and not r.get("error")),
                     None)
        self.status.setText(f"{len(rows) - len(failed)} of {len(rows)} frames normalized")
        if first is not None:
            self.results.select_name(first)

    def set_cutoffs(self, min_weight: float, min_transmission: float,
                    sync_form: bool = True) -> None:
        """Apply rejection cut-offs to the last run (nothing is recomputed)."""
        if sync_form:
            self.form.fields["min_weight"].value = min(max(min_weight, 0.0), 0.9)
            self.form.fields["min_transmission"].value = min(max(min_transmission, 0.0), 0.95)
            return  # the form's change event comes back here with sync_form=False
        if self.run_rows is None:
            return
        try:
            rows = self.session.results_table(min_weight=min_weight,
                                              min_transmission=min_transmission)
        except (NsgError, ValueError) as exc:
            self.notify_error(exc)
            return
        self.results.fill(rows)
        self.weights_plot.plot(rows, min_weight, min_transmission)

    def _result_selected(self) -> None:
        name = self.results.selected_name()
        if name is not None:
            self.show_result(name)

    def show_result(self, name: str) -> None:
        """Add the normalized frame, its gradient and curvature as layers (computed in a worker)."""
        session = self.session

        def job(*, progress=None, cancel=None):
            return session.result_images(name)

        def done(images):
            self.status.setText(f"{name}: normalized, gradient and curvature layers")
            for key, suffix, kind in (("corrected", "normalized", "sky"),
                                      ("gradient", "gradient", "gradient"),
                                      ("curvature", "curvature", "curvature")):
                upsert_image(self.viewer, f"{name} {suffix}", images[key], kind=kind,
                             visible=kind == "sky", metadata={OUTPUT_KEY: suffix, "frame": name})

        self._job_kind = "result"
        self.start(job, label=f"Result images of {name}", on_done=done, lock=self.lock)

    def closeEvent(self, event) -> None:
        self._pick_mode(False)
        super().closeEvent(event)


def _apply(session: NsgSession, values: dict, progress, cancel) -> bool:
    """Give the session the form's parameters (in a worker): a changed reference
    parameter re-measures the frames (the rank table depends on it); without a
    reference, the recommended frame becomes one. True when the frames were re-measured."""
    invalidated = session.update_params(**values)
    remeasure = "reference" in invalidated or session.reference is None
    if remeasure:
        session.measure(progress=progress, cancel=cancel)
    if session.reference is None:
        session.set_reference(session.recommended()[0], progress=progress, cancel=cancel)
    return remeasure


def _share_limits(layers, reference_layers) -> None:
    """Give ``layers`` the contrast limits of ``reference_layers`` (channel by channel)."""
    layers = layers if isinstance(layers, list) else [layers]
    if not isinstance(reference_layers, list):
        reference_layers = [reference_layers]
    for layer, ref in zip(layers, reference_layers):
        lo, hi = ref.contrast_limits
        rlo, rhi = layer.contrast_limits_range
        layer.contrast_limits_range = (min(lo, rlo), max(hi, rhi))
        layer.contrast_limits = (lo, hi)


PROFILE_LINE = "NSG profile line"


def _mark_line(viewer, axis: str, index: int, shape: tuple[int, int]) -> None:
    """Draw the profile's row or column on the image."""
    h, w = shape
    line = [[index, 0], [index, w - 1]] if axis == "row" else [[0, index], [h - 1, index]]
    upsert_shapes(viewer, PROFILE_LINE, [np.array(line, float)], shape_type="line",
                  edge_color="cyan")
