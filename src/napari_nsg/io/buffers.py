"""Reused pixel buffers for frames read one after another.

A batch reads, processes and writes frames of the same size over and over. A
fresh 96 MB array per frame costs more than its bytes: the kernel hands out and
zeroes new pages on first touch (page faults: about 0.05 CPU-s per 96 MB on the
2-core test machine), and frees them again when the frame is dropped.
:class:`FrameBuffers` keeps a few buffers (one per frame a pipeline holds at
once) and hands them out again, already faulted in.
"""

from __future__ import annotations

import threading
import weakref
from math import prod

import numpy as np

__all__ = ["FrameBuffers"]


class FrameBuffers:
    """A pool of reusable pixel buffers, one per pipeline slot.

    Parameters
    ----------
    slots : int
        How many buffers to keep for reuse (the frames a pipeline holds at once:
        e.g. 3 for reading one frame, computing the next and writing the last).

    Notes
    -----
    :meth:`take` hands out a buffer (a kept one if one is big enough, else a new
    one); :meth:`give` takes it back once nothing uses it any more. Giving back
    an array that is still in use lets the next frame overwrite it: the caller
    must be done with every view of it. Buffers never given back are simply
    freed when dropped. Thread-safe.
    """

    def __init__(self, slots: int):
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self.slots = slots
        self._free: list[np.ndarray] = []
        self._mine: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self.created = 0
        """How many buffers were allocated (a reused one is not counted again)."""

    def take(self, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
        """An uninitialised C-ordered array of ``shape`` and ``dtype`` (a kept buffer
        if one is big enough)."""
        nbytes = prod(shape) * np.dtype(dtype).itemsize
        with self._lock:
            fitting = [b for b in self._free if b.nbytes >= nbytes]
            raw = min(fitting, key=lambda b: b.nbytes) if fitting else None
            if raw is not None:
                self._free = [b for b in self._free if b is not raw]
        if raw is None:
            raw = np.empty(max(nbytes, 1), np.uint8)
            with self._lock:
                self._mine[id(raw)] = raw
                self.created += 1
        return raw[:nbytes].view(dtype).reshape(shape)

    def give(self, array: np.ndarray | None) -> bool:
        """Take back a buffer from :meth:`take` (any view of it); True if kept.

        Arrays that did not come from this pool, and buffers beyond ``slots``,
        are left to the garbage collector."""
        raw = _owner(array)
        with self._lock:
            if raw is None or self._mine.get(id(raw)) is not raw:
                return False
            if any(b is raw for b in self._free) or len(self._free) >= self.slots:
                return False
            self._free.append(raw)
            return True

    def clear(self) -> None:
        """Drop the kept buffers (their memory goes back once nothing uses them)."""
        with self._lock:
            self._free = []


def _owner(array) -> np.ndarray | None:
    """The array that owns the memory of ``array`` (itself when it owns it)."""
    while isinstance(array, np.ndarray) and array.base is not None:
        array = array.base
    return array if isinstance(array, np.ndarray) else None
