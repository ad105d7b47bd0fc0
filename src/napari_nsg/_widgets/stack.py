"""Stack: integrate the normalized frames into one image, with pixel rejection.

The frames come from the Normalize (NSG) widget's last run (its output files
when it wrote some, else the normalized frames in memory, weighted by their
NSG weight, rejected frames left out) or from normalized FITS files. The work
is :func:`napari_nsg.pipeline.stack.stack_frames` / :func:`stack_arrays` in a
worker thread; the stack and its rejection maps become layers.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import TYPE_CHECKING

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QWidget,
)

from ..core.stack import REJECTIONS
from ..pipeline.stack import stack_arrays, stack_frames
from ._base import WorkbenchWidget
from ._layers import upsert_image
from .frames import find_widget

if TYPE_CHECKING:  # pragma: no cover
    import napari

SOURCE_NSG = "NSG run (Normalize widget)"
SOURCE_FILES = "normalized files"
WEIGHTS = ("NWEIGHT", "none")
LAYERS = {"stack": "stack", "n_low": "stack low rejections", "n_high": "stack high rejections",
          "n_used": "stack frames per pixel"}


def _paths(text: str) -> list[Path]:
    """Files from a ``;``-separated list of names or glob patterns."""
    out: list[Path] = []
    for part in (p.strip() for p in text.split(";")):
        if part:
            matches = sorted(glob.glob(part))
            out += [Path(m) for m in matches] if matches else [Path(part)]
    return out


class StackWidget(WorkbenchWidget):
    """Stack.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
    normalize_widget : NormalizeWidget, optional
        Whose run to stack (default: the one docked in the viewer).

    Attributes
    ----------
    source, weights, rejection : QComboBox
    files, out_file : QLineEdit
    stack_button : QPushButton
    result : StackResult or None
        The last stack.
    """

    def __init__(self, napari_viewer: "napari.viewer.Viewer", normalize_widget=None,
                 parent=None):
        super().__init__(napari_viewer, parent)
        self._normalize = normalize_widget
        self.result = None
        self._build()
        self.add_status_row()

    def _build(self) -> None:
        form = QFormLayout()
        self.source = QComboBox()
        self.source.addItems([SOURCE_NSG, SOURCE_FILES])
        self.source.setToolTip("Stack the Normalize widget's last run, or FITS files")
        form.addRow("frames", self.source)
        files_row = QWidget()
        files_row.setLayout(QHBoxLayout())
        files_row.layout().setContentsMargins(0, 0, 0, 0)
        self.files = QLineEdit()
        self.files.setPlaceholderText("nsg/*_nsg.fits (names or patterns, ; between)")
        browse = QPushButton("Browse...")
        browse.clicked.connect(self._browse)
        files_row.layout().addWidget(self.files, 1)
        files_row.layout().addWidget(browse)
        form.addRow("files", files_row)
        self.weights = QComboBox()
        self.weights.addItems(WEIGHTS)
        self.weights.setToolTip("NWEIGHT: each frame's NSG weight (SNR^2); none: equal weights")
        form.addRow("weights", self.weights)
        self.rejection = QComboBox()
        self.rejection.addItems(REJECTIONS)
        self.rejection.setToolTip("auto: none for 2 frames, percentile below 8, sigma up to 10, "
                                  "winsorized below 20, linear-fit from 20")
        form.addRow("rejection", self.rejection)
        self.out_file = QLineEdit()
        self.out_file.setPlaceholderText("optional: write the stack to this FITS file")
        form.addRow("output", self.out_file)
        self.overwrite = QCheckBox("replace an existing output file")
        form.addRow("", self.overwrite)
        self.layout().addLayout(form)
        self.stack_button = QPushButton("Stack")
        self.stack_button.clicked.connect(self.stack)
        self.layout().addWidget(self.stack_button)

    def _browse(self) -> None:
        names, _ = QFileDialog.getOpenFileNames(self, "Normalized frames", "",
                                                "FITS (*.fits *.fit *.fts *.fz)")
        if names:
            self.files.setText("; ".join(names))

    def set_busy(self, busy: bool) -> None:
        super().set_busy(busy)
        self.stack_button.setEnabled(not busy)

    def normalize_widget(self):
        """The Normalize widget whose run is stacked (None if there is none)."""
        if self._normalize is None:
            from .normalize import NormalizeWidget

            self._normalize = find_widget(self.viewer, NormalizeWidget)
        return self._normalize

    # -- the job -----------------------------------------------------------------------------
    def stack(self) -> None:
        """Stack in a worker thread, then show the stack and its rejection maps."""
        out = self.out_file.text().strip() or None
        weights = None if self.weights.currentText() == "none" else "NWEIGHT"
        rejection = self.rejection.currentText()
        overwrite = self.overwrite.isChecked()
        if self.source.currentText() == SOURCE_FILES:
            paths = _paths(self.files.text())
            if not paths:
                self.notify_error("give the normalized frames' files")
                return
            self.start(stack_frames, paths, out, weights=weights, rejection=rejection,
                       overwrite=overwrite, on_done=self.show, label="Stacking")
            return
        nw = self.normalize_widget()
        if nw is None or nw.run_rows is None:
            self.notify_error("no normalized frames yet: run the Normalize (NSG) widget first "
                              "(Run all)")
            return
        cutoffs = {k: v for k, v in nw.form.values().items()
                   if k in ("min_weight", "min_transmission")}
        self.start(_stack_session, nw.session, cutoffs, weights, rejection, out, overwrite,
                   on_done=self.show, label="Stacking", lock=nw.lock)

    def show(self, result) -> None:
        """The stack and its maps as layers; the status line sums up."""
        self.result = result
        upsert_image(self.viewer, LAYERS["stack"], result.stack, kind="sky")
        for key in ("n_low", "n_high", "n_used"):
            upsert_image(self.viewer, LAYERS[key], getattr(result, key), kind="gradient",
                         visible=False)
        used = result.stacked
        rejected = sum(r["rejected_low"] + r["rejected_high"] for r in used) / max(1, len(used))
        where = f"; wrote {result.output}" if result.output else ""
        skipped = (f", {len(result.skipped)} rejected by normalize left out"
                   if result.skipped else "")
        self.status.setText(f"{len(used)} frames stacked ({result.rejection.method}){skipped}, "
                            f"{100 * rejected:.2f} % of the values rejected{where}")
        for r in result.rows:
            if r["error"]:
                self.notify_error(f"{r['file']}: {r['error']}")


def _stack_session(session, cutoffs: dict, weights, rejection: str, out, overwrite: bool, *,
                   progress=None, cancel=None):
    """Stack the session's last run: its files if it wrote them, else its frames in memory."""
    from ..io import FrameError

    rows = [r for r in session.results_table(**cutoffs)
            if not r.get("error") and not r["rejected"]]
    if not rows:
        raise FrameError(None, "no normalized frame to stack (all failed or were rejected)")
    if all(r.get("output") for r in rows):
        # the frames chosen here by the form's cutoffs, not by the report's
        return stack_frames([r["output"] for r in rows], out, weights=weights,
                            rejection=rejection, overwrite=overwrite, include_rejected=True,
                            progress=progress, cancel=cancel)
    frames = [session.result_images(r["name"])["corrected"] for r in rows]
    w = [r["weight"] for r in rows] if weights else None
    if out is not None and Path(out).exists() and not overwrite:
        from ..io import OutputExistsError

        raise OutputExistsError(out, "output exists (tick 'replace an existing output file')")
    result = stack_arrays(frames, w, names=[r["name"] for r in rows], rejection=rejection,
                          progress=progress, cancel=cancel)
    if out is not None:
        from ..pipeline.stack import write_stack

        write_stack(result, out, weights="NSG weight" if weights else None,
                    overwrite=overwrite)
    return result
