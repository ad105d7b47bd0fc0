"""Progress reporting and cancellation shared by the CLI (tqdm) and the GUI (napari).

A long job takes ``progress`` (a callable ``(done, total, message)``) and
``cancel`` (a :class:`threading.Event`, or anything with ``is_set()``). It
calls :func:`check_cancel` between steps, which raises :class:`Cancelled`, so
that nothing half-written is left behind (outputs are written atomically).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

ProgressCallback = Callable[[int, int, str], None]


class CancelToken(Protocol):
    """Anything with ``is_set()``, e.g. :class:`threading.Event`."""

    def is_set(self) -> bool: ...


class Cancelled(Exception):
    """The user cancelled the job."""


def check_cancel(cancel: CancelToken | None) -> None:
    """Raise :class:`Cancelled` if ``cancel`` is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled")


def report(progress: ProgressCallback | None, done: int, total: int, message: str = "") -> None:
    """Call ``progress`` if there is one."""
    if progress is not None:
        progress(done, total, message)


class TqdmProgress:
    """A progress callback that drives a tqdm bar on stderr (the CLI's).

    Parameters
    ----------
    desc : str
        The bar's label.
    disable : bool or None
        tqdm's ``disable``: None hides the bar when stderr is not a terminal.
    """

    def __init__(self, desc: str, disable: bool | None = None):
        self.desc = desc
        self.disable = disable
        self._bar = None

    def __call__(self, done: int, total: int, message: str = "") -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=total, desc=self.desc, unit="frame", disable=self.disable,
                             leave=False)
        self._bar.total = total
        self._bar.n = done
        if message:
            self._bar.set_postfix_str(message, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        """Close the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "TqdmProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
