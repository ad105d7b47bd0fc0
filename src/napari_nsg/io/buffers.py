"""Reused pixel buffers for frames read one after another.

A batch reads, processes and writes frames of the same size over and over. A
fresh 96 MB array per frame costs more than its bytes: the kernel hands out and
zeroes new pages on first touch (page faults: about 0.05 CPU-s per 96 MB on the
2-core test machine), and frees them again when the frame is dropped.
:class:`FrameBuffers` keeps a few buffers (one per frame a pipeline holds at
once) and hands them out again, already faulted in. :func:`reused_heap` does the
same for every large array of a batch, the engine's temporaries too: glibc's heap
keeps the freed ones for the next.
"""

from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from math import prod

import numpy as np

__all__ = ["FrameBuffers", "reused_heap"]


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


# glibc's mallopt() parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
#: glibc's defaults, restored when :func:`reused_heap` ends.
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536
#: Free memory kept at the top of the heap while :func:`reused_heap` is active
#: (mallopt's largest value, 2 GiB: more than a batch's temporaries).
_KEEP_FREED = 2**31 - 1
#: The mmap threshold set when :func:`reused_heap` ends: the largest value glibc's own
#: dynamic threshold grows to on 64-bit (32 MiB), which ``M_MMAP_MAX`` turned off, so that
#: blocks under it keep coming from the heap afterwards (a GUI process goes on as before).
_MMAP_THRESHOLD_AFTER = 32 * 2**20
#: Arenas after :func:`reused_heap`: glibc's own limit on 64-bit (8 per core).
_ARENAS_PER_CORE = 8


def _glibc():
    """The C library when it is glibc (it has ``mallopt`` and ``malloc_trim``), else None."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except (OSError, AttributeError):
        return None


_HEAP_LOCK = threading.Lock()
_heap_users = [0]  # nested reused_heap() scopes now open


@contextmanager
def reused_heap():
    """Within it, freed large arrays stay in the process's heap for the next ones.

    glibc hands every block over 32 MiB out as fresh ``mmap`` pages and unmaps
    it on ``free``: each full-frame temporary of the engine (a mask, a float
    copy, a weight image) is faulted in and zeroed by the kernel again. Here
    large blocks come from the heap (``M_MMAP_MAX`` 0), freed ones stay there
    (``M_TRIM_THRESHOLD`` 2 GiB) and are reused as they are, and new threads
    share the main heap (``M_ARENA_MAX`` 1: a thread's own arena cannot hold a
    block over 64 MiB). Measured on the 12-frame ``normalize`` of
    ``bench_nsg.py``: 2/3 fewer page faults, the kernel's page zeroing during
    the frames halved (what is left is the heap's one growth to its peak in the
    first target), 0.04 CPU-s less per target, peak RSS 50-80 MiB lower.

    On leaving, glibc's defaults come back (its dynamic mmap threshold stays
    off, so the threshold is set to the 32 MiB the dynamic one grows to) and the
    free memory is returned to the system (``malloc_trim``). Nested uses are fine (only the outermost acts); a
    no-op where the C library is not glibc. Threads that already had an arena
    of their own (in a GUI process) may keep it: their blocks over 64 MiB are
    then fresh pages as before, nothing lost. glibc keeps the arena limit of one
    once a new thread has asked for an arena under it.
    """
    with _HEAP_LOCK:
        _heap_users[0] += 1
        if _heap_users[0] == 1:
            _set_heap(keep=True)
    try:
        yield
    finally:
        with _HEAP_LOCK:
            _heap_users[0] -= 1
            if _heap_users[0] == 0:
                _set_heap(keep=False)


def _set_heap(keep: bool) -> None:
    """glibc's heap set to keep and reuse large blocks (``keep``) or back to its defaults."""
    libc = _glibc()
    if libc is None:
        return
    if keep:
        libc.mallopt(_M_ARENA_MAX, 1)
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED)
    else:
        from ..core.threads import available_cores

        libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_AFTER)
        libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
        libc.mallopt(_M_ARENA_MAX, _ARENAS_PER_CORE * available_cores())
        libc.malloc_trim(0)
