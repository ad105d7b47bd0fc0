"""Frames & reference: add frames, compare them in a sortable table, choose the
reference, blink through the frames with one shared stretch."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from ..core.nsg import NsgError
from ..pipeline.session import NsgSession
from ._base import WorkbenchWidget, session_lock
from ._layers import (
    box_corners,
    default_row0_bottom,
    is_row0_bottom,
    set_row0_bottom,
    upsert_image,
    upsert_shapes,
)
from ._table import RowTable

if TYPE_CHECKING:  # pragma: no cover
    import napari

FRAME_FILTER = "Frames (*.fits *.fit *.fts *.fz *.xisf *.FITS *.FIT *.FTS *.XISF);;All files (*)"
BLINK_LAYER = "NSG blink"
BOXES_LAYER = "NSG corner boxes"
BLINK_INTERVAL_MS = 500
BLINK_CACHE_BYTES = 512 * 2**20  # blink images kept in memory (at least the last one)
COLUMNS = (
    ("name", "Frame", "file or layer name"),
    ("rank", "Rank", "reference candidates, best first"),
    ("gradient_span", "Span", "range of the background map (ADU): the gradient's size"),
    ("lumpy", "Lumpy", ("background left after removing a plane (ADU): the gradient's "
                        "complexity; a lumpy reference gives lumpy corrections")),
    ("gradient_diag1", "Grad TL-BR", ("background difference between the top-left and "
                                      "bottom-right corner boxes (ADU)")),
    ("gradient_diag2", "Grad TR-BL", ("background difference between the top-right and "
                                      "bottom-left corner boxes (ADU)")),
    ("rating", "Rating", "weight per exposure time relative to the best frame"),
    ("transmission", "Transm.", "transmission relative to the recommended frame"),
    ("background", "Background", "sky background (ADU)"),
    ("noise", "Noise", "background noise (ADU)"),
    ("n_stars", "Stars", "stars detected"),
    ("fwhm", "FWHM", "median star FWHM (px)"),
    ("exposure", "Exp (s)", "exposure time"),
    ("altitude", "Alt (°)", "altitude of the target"),
    ("airmass", "Airmass", "airmass"),
    ("date_obs", "Date", "DATE-OBS (UT)"),
    ("error", "Error", "why the frame could not be measured"),
)


def find_widget(viewer, cls):
    """A docked widget of class ``cls`` in this viewer, or None."""
    try:
        docks = viewer.window.dock_widgets
    except AttributeError:
        return None
    for widget in list(docks.values()):
        if isinstance(widget, cls):
            return widget
    return None


def layer_frames(layer) -> list[tuple[str, np.ndarray, object, object]]:
    """``(name, data, header, path)`` of the frames in an image layer: a frame, or
    each plane of a stack of frames (the sample data's ``headers``)."""
    meta = layer.metadata or {}
    data = np.asarray(layer.data)
    headers = meta.get("headers")
    if data.ndim == 3 and data.shape[0] != 3 and headers is not None:
        return [(f"{layer.name} #{i}", data[i], headers[i] if i < len(headers) else None, None)
                for i in range(data.shape[0])]
    return [(layer.name, data, meta.get("header"), meta.get("path"))]


class FramesWidget(WorkbenchWidget):
    """Frames & reference.

    Attributes
    ----------
    session : NsgSession
        Shared with the Normalize widget of the same viewer.
    table : RowTable
        The frames' reference metrics (sortable).
    recommendation : QLabel
        The recommended reference and why.
    """

    frames_changed = Signal()
    reference_changed = Signal(str)

    def __init__(self, napari_viewer: napari.viewer.Viewer, session: NsgSession | None = None,
                 parent=None):
        super().__init__(napari_viewer, parent)
        self.session = session or NsgSession()
        self.lock = session_lock(self.session)
        self.bookmark: str | None = None
        self.current: str | None = None
        self._blink_cache: dict[str, np.ndarray] = {}
        self._restretch = True  # the next blink image sets the shared stretch
        self._build()
        self.add_status_row()
        set_row0_bottom(self.viewer, self.row0_bottom.isChecked())

    # -- layout ------------------------------------------------------------------------------
    def _build(self) -> None:
        lay = self.layout()
        buttons = QHBoxLayout()
        self.add_files_button = QPushButton("Add files…")
        self.add_files_button.setToolTip("Add FITS/XISF frames from disk")
        self.add_files_button.clicked.connect(self._choose_files)
        self.add_layers_button = QPushButton("Add open layers")
        self.add_layers_button.setToolTip("Add the image layers open in the viewer")
        self.add_layers_button.clicked.connect(self.add_open_layers)
        self.remove_button = QPushButton("Remove")
        self.remove_button.clicked.connect(self.remove_selected)
        for b in (self.add_files_button, self.add_layers_button, self.remove_button):
            buttons.addWidget(b)
        lay.addLayout(buttons)
        self.row0_bottom = QCheckBox("Row 0 at the bottom (FITS / DS9)")
        self.row0_bottom.setToolTip("Show frames as astronomers expect; unticked: napari's "
                                    "row 0 on top. The default is a plugin preference.")
        self.row0_bottom.setChecked(default_row0_bottom())
        self.row0_bottom.toggled.connect(lambda on: set_row0_bottom(self.viewer, on))
        lay.addWidget(self.row0_bottom)
        self.table = RowTable(COLUMNS)
        self.table.itemSelectionChanged.connect(self._on_select)
        lay.addWidget(self.table, 1)
        self.recommendation = QLabel("Add frames to compare them.")
        self.recommendation.setWordWrap(True)
        lay.addWidget(self.recommendation)
        ref_row = QHBoxLayout()
        self.set_reference_button = QPushButton("Set reference")
        self.set_reference_button.setToolTip("Use the selected frame (else the recommended "
                                             "one) as the reference")
        self.set_reference_button.clicked.connect(lambda: self.set_reference())
        self.reference_label = QLabel("Reference: none")
        ref_row.addWidget(self.set_reference_button)
        ref_row.addWidget(self.reference_label, 1)
        lay.addLayout(ref_row)
        lay.addWidget(self._blink_box())

    def _blink_box(self) -> QGroupBox:
        box = QGroupBox("Blink (one shared stretch)")
        box.setLayout(QVBoxLayout())
        row = QHBoxLayout()
        self.prev_button = QPushButton("◀")
        self.prev_button.setToolTip("Previous frame")
        self.prev_button.clicked.connect(lambda: self.step(-1))
        self.next_button = QPushButton("▶")
        self.next_button.setToolTip("Next frame")
        self.next_button.clicked.connect(lambda: self.step(1))
        self.play_button = QPushButton("Play")
        self.play_button.setCheckable(True)
        self.play_button.toggled.connect(self._play)
        self.interval = QSpinBox()
        self.interval.setRange(100, 5000)
        self.interval.setSingleStep(100)
        self.interval.setValue(BLINK_INTERVAL_MS)
        self.interval.setSuffix(" ms")
        for w in (self.prev_button, self.next_button, self.play_button, self.interval):
            row.addWidget(w)
        box.layout().addLayout(row)
        row2 = QHBoxLayout()
        self.bookmark_button = QPushButton("Bookmark")
        self.bookmark_button.setToolTip("Remember the frame shown, to blink against it")
        self.bookmark_button.clicked.connect(self.set_bookmark)
        self.blink_bookmark = QCheckBox("Blink with bookmark")
        self.blink_bookmark.setToolTip("Play alternates the bookmarked and the current frame")
        self.blink_label = QLabel("")
        row2.addWidget(self.bookmark_button)
        row2.addWidget(self.blink_bookmark)
        row2.addWidget(self.blink_label, 1)
        box.layout().addLayout(row2)
        self.timer = QTimer(self)
        self.timer.timeout.connect(self._tick)
        self._tick_phase = False
        return box

    def set_busy(self, busy: bool) -> None:
        for b in (self.add_files_button, self.add_layers_button, self.remove_button,
                  self.set_reference_button):
            b.setEnabled(not busy)

    # -- frames ------------------------------------------------------------------------------
    def _choose_files(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Add frames", "", FRAME_FILTER)
        if paths:
            self.add_files(paths)

    def add_files(self, paths) -> None:
        """Add frame files and measure them (in a worker)."""
        def job(*, progress=None, cancel=None):
            errors = self.session.add_files(paths, progress=progress, cancel=cancel)
            self.session.measure(progress=progress, cancel=cancel)
            return errors

        self.start(job, label="Adding frames", on_done=self._added,
                   on_error=lambda exc: self.refresh(), lock=self.lock)

    def add_open_layers(self) -> None:
        """Add the image layers of the viewer (frames read from files are added by file)."""
        from napari.layers import Image

        paths, arrays, seen = [], [], {f.path for f in self.session.frames}
        names = {f.name for f in self.session.frames}
        for layer in self.viewer.layers:
            if (not isinstance(layer, Image) or layer.name.startswith("NSG ")
                    or "nsg_output" in (layer.metadata or {})):
                continue  # the workbench's own layers are not frames
            for name, data, header, path in layer_frames(layer):
                if path is not None:
                    if path not in seen and str(path) not in {str(p) for p in seen}:
                        seen.add(path)
                        paths.append(path)
                elif name not in names:
                    arrays.append((name, data, header))
        if not paths and not arrays:
            self.notify_info("no new image layers to add")
            return

        def job(*, progress=None, cancel=None):
            errors = []
            if paths:
                errors = self.session.add_files(paths, progress=progress, cancel=cancel)
            for name, data, header in arrays:
                self.session.add_array(name, data, header)
            self.session.measure(progress=progress, cancel=cancel)
            return errors

        self.start(job, label="Adding layers", on_done=self._added,
                   on_error=lambda exc: self.refresh(), lock=self.lock)

    def _added(self, errors) -> None:
        for exc in errors:
            self.notify_error(exc)
        self.refresh()
        first = self._reference_or_recommended()
        if self.current is None and first is not None:
            self.show_frame(first)
        n = len(self.session.frames)
        self.status.setText(f"{n} frame(s) measured" + (f", {len(errors)} not added"
                                                         if errors else ""))

    def remove_selected(self) -> None:
        """Remove the selected frame from the session."""
        name = self.table.selected_name()
        if name is None or not self.lock.acquire(blocking=False):
            return  # nothing selected, or a job is using the session
        try:
            self.session.remove(name)
        finally:
            self.lock.release()
        self._blink_cache.pop(name, None)
        self.current = None if self.current == name else self.current
        if self.session.frames:  # the transmissions are relative to the frames there are
            self.start(self.session.measure, label="Measuring frames", on_done=self._added_none,
                       lock=self.lock)
        else:
            self.refresh()

    def _added_none(self, _) -> None:
        self._added([])

    # -- table and reference -------------------------------------------------------------------
    def refresh(self) -> None:
        """Fill the table and the recommendation from the session."""
        from ..core.nsg import NsgError

        try:
            rows = self.session.metrics_table()
        except NsgError:
            rows = []
        try:
            ref, why = self.session.recommended()
        except NsgError as exc:  # e.g. no frame pairs with another: the rows say why
            ref, why = None, str(exc)
        self.table.fill([dict(r, date_obs=_short_date(r.get("date_obs"))) for r in rows])
        if ref:
            self.recommendation.setText(f"Recommended reference: <b>{ref}</b><br>{why}")
        elif rows:
            self.recommendation.setText(f"No reference can be recommended: {why} "
                                        "(the table's error column says why for each frame)")
        else:
            self.recommendation.setText("No frame measured yet.")
        self.recommended_name = ref
        self.reference_label.setText(f"Reference: {self.session.reference or 'none'}")
        self.frames_changed.emit()

    def _reference_or_recommended(self) -> str | None:
        return self.session.reference or getattr(self, "recommended_name", None)

    def set_reference(self, name: str | None = None) -> None:
        """Make ``name`` (default: selected, else recommended) the reference (in a worker)."""
        name = name or self.table.selected_name() or self._reference_or_recommended()
        if name is None:
            self.notify_error("add and measure frames first")
            return

        def done(_):
            self.reference_label.setText(f"Reference: {name}")
            self._blink_cache.clear()
            self._restretch = True
            self.reference_changed.emit(name)
            self.show_frame(self.current or name)

        self.start(self.session.set_reference, name, label=f"Preparing reference {name}",
                   on_done=done, lock=self.lock)

    def _on_select(self) -> None:
        name = self.table.selected_name()
        if name is not None and name != self.current:
            self.show_frame(name)

    # -- blink -------------------------------------------------------------------------------
    def _names(self) -> list[str]:
        measured = {r["name"] for r in self._rows() if r.get("error") is None}
        return [f.name for f in self.session.frames if f.name in measured]

    def _rows(self) -> list[dict]:
        from ..core.nsg import NsgError

        try:
            return self.session.metrics_table()
        except NsgError:
            return []

    def _keep(self, name: str, image: np.ndarray) -> np.ndarray:
        """Cache a blink image (the oldest go first beyond ``BLINK_CACHE_BYTES``)."""
        while self._blink_cache and (sum(a.nbytes for a in self._blink_cache.values())
                                     + image.nbytes > BLINK_CACHE_BYTES):
            self._blink_cache.pop(next(iter(self._blink_cache)))
        self._blink_cache[name] = image
        return image

    def show_frame(self, name: str | None) -> bool:
        """Show ``name`` in the blink layer (normalized to the reference's background,
        one stretch for all frames) with its corner boxes.

        A frame already shown once is shown at once; another is read and normalized in
        a worker first. Returns False when that cannot start (another job runs).
        """
        if name is None:
            return False
        if name in self._blink_cache:
            self._display(name, self._blink_cache[name])
            return True
        if self.busy:
            return False
        session = self.session

        def job(*, progress=None, cancel=None):
            return session.blink_image(name)

        self.start(job, label=f"Blink: {name}", lock=self.lock,
                   on_done=lambda image: self._display(name, self._keep(name, image)))
        return True

    def _display(self, name: str, image: np.ndarray) -> None:
        try:
            boxes = self.session.corner_boxes(name)
        except NsgError:  # removed meanwhile
            return
        upsert_image(self.viewer, BLINK_LAYER, image, kind="sky", restretch=self._restretch,
                     metadata={"frame": name})
        self._restretch = False
        upsert_shapes(self.viewer, BOXES_LAYER, [box_corners(b) for b in boxes],
                      edge_color="yellow", features={"corner": ["TL", "TR", "BL", "BR"]})
        self.current = name
        marks = " (bookmark)" if name == self.bookmark else ""
        self.blink_label.setText(f"showing {name}{marks}")

    def step(self, delta: int) -> None:
        """Show the next (``delta=1``) or previous (``-1``) frame."""
        names = self._names()
        if not names:
            return
        i = names.index(self.current) if self.current in names else -delta
        self.show_frame(names[(i + delta) % len(names)])

    def set_bookmark(self) -> None:
        """Bookmark the frame shown."""
        self.bookmark = self.current
        self.blink_label.setText(f"bookmark: {self.bookmark}")

    def _play(self, on: bool) -> None:
        self.play_button.setText("Stop" if on else "Play")
        if on:
            self._partner = self.current
            names = self._names()
            if self._partner is not None and self._partner == self.bookmark and len(names) > 1:
                # the bookmark is shown: blink it against the next frame
                self._partner = names[(names.index(self._partner) + 1) % len(names)]
            self.timer.start(self.interval.value())
        else:
            self.timer.stop()

    def _tick(self) -> None:
        self.timer.setInterval(self.interval.value())
        if self.blink_bookmark.isChecked() and self.bookmark is not None:
            self._tick_phase = not self._tick_phase
            self.show_frame(self.bookmark if self._tick_phase else self._partner)
        else:
            self.step(1)
            self._partner = self.current

    @property
    def row0_at_bottom(self) -> bool:
        """Whether the viewer shows row 0 at the bottom."""
        return is_row0_bottom(self.viewer)

    def closeEvent(self, event) -> None:
        self.timer.stop()
        super().closeEvent(event)


def _short_date(value) -> str | None:
    """``2024-03-15T21:01:05.000`` -> ``2024-03-15 21:01:05`` (table width)."""
    return value.replace("T", " ").split(".")[0] if isinstance(value, str) else value
