"""The base of every dock widget: work in a thread, napari's progress bar, Cancel,
errors as notifications.

``WorkbenchWidget.start(func, ...)`` runs ``func(*args, progress=cb, cancel=event,
**kwargs)`` in a napari worker thread. ``cb`` may be called from that thread: it
is relayed through a Qt signal to the main thread, which moves napari's progress
bar (activity dock) and the widget's own bar. The Cancel button sets ``event``;
the pipeline checks it between steps and raises ``Cancelled``, which is reported
as a quiet "cancelled" message. Expected errors (``FrameError``, ``NsgError``)
become napari error notifications with their message; nothing shows a traceback.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ..core.nsg import NsgError
from ..io import FrameError
from ..pipeline.progress import Cancelled, check_cancel

if TYPE_CHECKING:  # pragma: no cover
    import napari

log = logging.getLogger(__name__)
EXPECTED_ERRORS = (FrameError, NsgError, ValueError, OSError)
PROGRESS_STEPS = 1000  # resolution of the widget's own progress bar


def error_text(exc: BaseException | str) -> str:
    """The message a user reads for an error (no type names for expected errors)."""
    if isinstance(exc, str):
        return exc
    if isinstance(exc, EXPECTED_ERRORS):
        return str(exc)
    return f"unexpected error ({type(exc).__name__}): {exc}"


_LOCKS: weakref.WeakKeyDictionary[object, threading.Lock] = weakref.WeakKeyDictionary()


def session_lock(session) -> threading.Lock:
    """The lock that serializes jobs on one session (sessions are not thread-safe)."""
    lock = _LOCKS.get(session)
    if lock is None:
        lock = _LOCKS[session] = threading.Lock()
    return lock


def _locked(func: Callable, lock: threading.Lock | None) -> Callable:
    """``func`` run while holding ``lock`` (unless cancelled while waiting for it)."""
    if lock is None:
        return func

    def run(*args, cancel=None, **kwargs):
        with lock:
            check_cancel(cancel)
            return func(*args, cancel=cancel, **kwargs)

    run.__name__ = getattr(func, "__name__", "job")
    return run


class WorkbenchWidget(QWidget):
    """A dock widget that runs its work in worker threads.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
    parent : QWidget, optional

    Attributes
    ----------
    viewer : napari.viewer.Viewer
    status : QLabel
        The last progress or result message.
    progress_bar : QProgressBar
    cancel_button : QPushButton
        Enabled while a job runs; sets the job's cancel event.
    worker
        The running worker, or None.
    """

    _progressed = Signal(int, int, int, str)  # job generation, done, total, message

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker = None
        self._cancel_event: threading.Event | None = None
        self._pbar = None
        self._generation = 0
        self.setLayout(QVBoxLayout())
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, PROGRESS_STEPS)
        self.progress_bar.setVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running job after the current step; "
                                      "no half-written file is left")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self._progressed.connect(self._on_progress)

    def add_status_row(self) -> None:
        """Put the progress bar, Cancel and the status line at the bottom of the layout."""
        row = QHBoxLayout()
        row.addWidget(self.progress_bar, 1)
        row.addWidget(self.cancel_button)
        self.layout().addLayout(row)
        self.layout().addWidget(self.status)

    # -- jobs --------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """True while a job runs."""
        return self.worker is not None

    def start(self, func: Callable, *args, on_done: Callable | None = None, label: str = "...",
              total: int | None = None, on_error: Callable | None = None,
              lock: threading.Lock | None = None, **kwargs):
        """Run ``func(*args, progress=cb, cancel=event, **kwargs)`` in a worker thread.

        Parameters
        ----------
        func : callable
            Takes ``progress`` and ``cancel`` keywords (the pipeline's convention).
        on_done : callable, optional
            Called in the main thread with ``func``'s return value.
        label : str
            The progress bar's description.
        total : int, optional
            Steps, if known before the first progress call.
        on_error : callable, optional
            Called in the main thread with the exception (after the notification).
        lock : threading.Lock, optional
            Held while ``func`` runs (see :func:`session_lock`): a session is used
            by one job at a time; a job cancelled while waiting does not run.

        Returns
        -------
        napari.qt.threading.FunctionWorker
            Already started (on the next event-loop tick).
        """
        from napari.qt.threading import create_worker
        from superqt.utils import FunctionWorker  # without napari's traceback relay

        self.cancel()
        self._generation += 1
        generation = self._generation
        event = threading.Event()
        self._cancel_event = event

        def emit(done: int, total_: int, message: str = "") -> None:
            if generation == self._generation:
                self._progressed.emit(generation, int(done), int(total_), str(message))

        worker = create_worker(_locked(func, lock), *args, progress=emit, cancel=event,
                               _ignore_errors=True, _worker_class=FunctionWorker, **kwargs)
        worker.returned.connect(lambda result: self._returned(generation, result, on_done))
        worker.errored.connect(lambda exc: self._errored(generation, exc, on_error))
        worker.finished.connect(lambda: self._finished(generation))
        self._begin(label, total)
        self.worker = worker
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the running job to stop (at its next step)."""
        if self._cancel_event is not None:
            self._cancel_event.set()

    def _begin(self, label: str, total: int | None) -> None:
        from napari.utils import progress

        self._close_pbar()
        self._pbar = progress(total=total or 0, desc=label)
        self.progress_bar.setValue(0)
        self.progress_bar.setVisible(True)
        self.cancel_button.setEnabled(True)
        self.status.setText(label)
        self.set_busy(True)

    def _on_progress(self, generation: int, done: int, total: int, message: str) -> None:
        if generation != self._generation or self.worker is None:
            return  # delivered after its job ended (the result says more) or was replaced
        if total > 0:
            self.progress_bar.setValue(int(PROGRESS_STEPS * min(done, total) / total))
        if message:
            self.status.setText(message)
        # napari's bar last: refreshing it may deliver queued events, the job's end among
        # them, whose summary must not be overwritten by this older message
        pbar = self._pbar
        if pbar is not None and total > 0:
            pbar.total = total
            pbar.n = min(done, total)
            if message:
                pbar.set_description(message)
            pbar.refresh()

    def _returned(self, generation: int, result, on_done: Callable | None) -> None:
        if generation != self._generation:
            return
        self._finished(generation)  # not busy any more: on_done may start the next job
        if on_done is None:
            return
        try:
            on_done(result)
        except EXPECTED_ERRORS as exc:
            self.notify_error(exc)

    def _errored(self, generation: int, exc: BaseException, on_error: Callable | None) -> None:
        if generation != self._generation:
            return
        self._finished(generation)
        if isinstance(exc, Cancelled):
            self.notify_info("cancelled")
        else:
            if not isinstance(exc, EXPECTED_ERRORS):
                log.error("napari-nsg job failed", exc_info=exc)
            self.notify_error(exc)
        if on_error is not None:
            on_error(exc)

    def _finished(self, generation: int) -> None:
        if generation != self._generation or self.worker is None:
            return
        self.worker = None
        self._cancel_event = None
        self._close_pbar()
        self.progress_bar.setVisible(False)
        self.cancel_button.setEnabled(False)
        self.set_busy(False)

    def _close_pbar(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None

    def set_busy(self, busy: bool) -> None:
        """Enable or disable the widget's controls while a job runs (override)."""

    # -- messages ----------------------------------------------------------------------------
    def notify_error(self, exc_or_text: BaseException | str) -> None:
        """Show an error as a napari notification (and in the status line)."""
        from napari.utils.notifications import show_error

        text = error_text(exc_or_text)
        self.status.setText(text)
        show_error(text)

    def notify_info(self, text: str) -> None:
        """Show a message as a napari notification (and in the status line)."""
        from napari.utils.notifications import show_info

        self.status.setText(text)
        show_info(text)

    def closeEvent(self, event) -> None:
        """Stop the running job when the dock closes."""
        self.cancel()
        super().closeEvent(event)
