"""A batch's targets read and prepared in a process of their own.

``normalize`` overlaps reading, normalizing and writing on three threads of one
process (:func:`~.executors.overlapped_frames`). On a 6000 x 4000 frame the reading
thread's work (the read, the no-data rule, the noise, the sample-grid pixels:
:func:`~napari_nsg.core.nsg.prepare_target`) is a third of the CPU, and much of it is
Python that holds the GIL which the normalizing thread needs. Here that work runs in
one worker process (started by the fork server like ``--workers``' processes, at a
slightly lower priority: :data:`READER_NICE`), and the pixels come back through
shared memory, not pickled: each frame is read into a *slot*, a block of shared
memory that holds its pixels, its no-data mask and its sample-grid pixels, which
this process then uses in place (the correction is written into it, and the writer
writes it from there). Three slots serve a batch (one read, one normalized, one
written), reused from frame to frame.

If the reading process cannot start or dies, the frames are read on the reading
thread as before (:class:`ReadingProcess` then says ``broken``); nothing is lost.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import secrets
import sys
import threading
import warnings
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import resource_tracker

import numpy as np

from ..core.nsg import NsgError, PreparedTarget, prepare_target
from ..core.nsg.engine import TargetPlan
from ..core.nsg.samples import TargetPixels
from ..io import FrameError, read_frame
from .executors import (
    SHM_DIR,
    _call_in_worker,
    _process_pool,
    _shm_room,
    _worker_context,
    available_cores,
    start_workers,
)

#: Frames from this many pixels are read in the reading process (smaller ones cost
#: too little for the hand-over to pay).
READ_PROCESS_MIN_PIXELS = 4_000_000
#: The reading process's niceness, added to this process's: the normalizing thread
#: gets a core first when both want one (the reader has time to spare: it works a
#: frame ahead). Measured on 2 cores: 0 / 10 / 19 gave 0.146 / 0.143 / 0.141 s per
#: 6000 x 4000 target against 0.156-0.165 s with a reading thread.
READER_NICE = 5
#: Slots a batch uses: one frame read, one normalized, one written.
SLOTS = 3
#: Slot sizes are rounded up to this (the page size at least).
SLOT_ALIGN = 1 << 16
#: A slot's name in /dev/shm: this prefix and SLOT_NAME_BYTES random bytes in hex.
SLOT_PREFIX = "napari_nsg_"
SLOT_NAME_BYTES = 8
#: A slot's permissions: this user only (as Python's SharedMemory makes them).
SLOT_MODE = 0o600


def _pays(data_shape: tuple[int, ...], n_frames: int) -> bool:
    """Frames of :data:`READ_PROCESS_MIN_PIXELS` or more, more than one core, more than
    two frames, and the fork server (Linux)."""
    return (int(np.prod(data_shape[-2:])) >= READ_PROCESS_MIN_PIXELS
            and available_cores() >= 2 and n_frames > 2 and sys.platform.startswith("linux"))


def wanted(plan: TargetPlan, n_frames: int) -> bool:
    """Whether a batch of ``n_frames`` targets for ``plan`` should use a reading
    process: where it pays (large frames, more than one core, more than two frames,
    Linux) and shared memory has room for the slots."""
    return (_pays(plan.data_shape, n_frames)
            and _shm_room(SLOTS * _Layout.of(plan.data_shape, plan).nbytes))


def prestart(data_shape: tuple[int, ...], n_frames: int) -> None:
    """Start the fork server of the reading process now (it imports the package in
    the background, e.g. while the reference is prepared) if a batch of ``n_frames``
    targets of ``data_shape`` may want one (see :func:`wanted`)."""
    if _pays(data_shape, n_frames):
        _worker_context(_read_in_worker)


@dataclass(frozen=True)
class _Layout:
    """Where a frame's arrays lie in a slot: pixels (float32), no-data mask (bool),
    sample-grid pixels (float32), each at an offset aligned to 64 bytes."""

    data_shape: tuple[int, ...]
    pixels_shape: tuple[int, ...]

    @staticmethod
    def of(data_shape: tuple[int, ...], plan: TargetPlan) -> _Layout:
        c = data_shape[0] if len(data_shape) == 3 else 1
        side = plan.grid.per_side
        return _Layout(tuple(data_shape), (c, plan.grid.n_bins, side * side))

    @property
    def mask_at(self) -> int:
        return _aligned(4 * int(np.prod(self.data_shape)))

    @property
    def pixels_at(self) -> int:
        return self.mask_at + _aligned(int(np.prod(self.data_shape)))

    @property
    def nbytes(self) -> int:
        size = self.pixels_at + 4 * int(np.prod(self.pixels_shape))
        return max(SLOT_ALIGN, -(-size // SLOT_ALIGN) * SLOT_ALIGN)

    def arrays(self, buf) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(pixels, mask, grid pixels)`` as views of the slot's memory ``buf``."""
        n = int(np.prod(self.data_shape))
        data = np.frombuffer(buf, np.float32, n, 0).reshape(self.data_shape)
        mask = np.frombuffer(buf, bool, n, self.mask_at).reshape(self.data_shape)
        grid = np.frombuffer(buf, np.float32, int(np.prod(self.pixels_shape)),
                             self.pixels_at).reshape(self.pixels_shape)
        return data, mask, grid


def _aligned(nbytes: int) -> int:
    return -(-nbytes // 64) * 64


class _Slot:
    """One block of shared memory, created here and mapped on its own, so that the
    arrays on it may outlive :meth:`close` (the mapping goes when the last of them
    does); the reading process maps it by name.

    The resource tracker unlinks the block if this process dies first. Its name is
    given to the tracker *before* the block exists (Python's ``SharedMemory`` does it
    after creating, sizing and mapping it, so a kill in between left the block in
    ``/dev/shm`` until reboot); an exception while it is made (a stop signal in this
    thread) unlinks it at once."""

    def __init__(self, nbytes: int):
        self.name = f"/{SLOT_PREFIX}{secrets.token_hex(SLOT_NAME_BYTES)}"
        self.nbytes = nbytes
        try:
            resource_tracker.register(self.name, "shared_memory")
            self.map = _create(self.name, nbytes)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Unlink the block (mappings still open keep their memory until unmapped)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_shm_path(self.name))
        with contextlib.suppress(Exception):  # the tracker gone: nothing more to tell it
            resource_tracker.unregister(self.name, "shared_memory")


def _shm_path(name: str) -> str:
    return os.path.join(SHM_DIR, name.lstrip("/"))


def _create(name: str, nbytes: int) -> mmap.mmap:
    """A new shared-memory block ``name`` of ``nbytes``, mapped shared, read and write."""
    fd = os.open(_shm_path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL, SLOT_MODE)
    try:
        os.ftruncate(fd, nbytes)
        return mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


def _map(name: str, nbytes: int) -> mmap.mmap:
    """The shared-memory block ``name`` mapped shared, read and write."""
    fd = os.open(_shm_path(name), os.O_RDWR)
    try:
        return mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


@dataclass
class ReadFrame:
    """What the reading process gives back for one target.

    ``prepared`` is the :class:`~napari_nsg.core.nsg.PreparedTarget` (its arrays in
    ``slot``) or the :class:`~napari_nsg.core.nsg.NsgError` that refused the frame;
    ``data`` the frame's pixels (in the slot when ``slot`` is not None)."""

    meta: object
    header: object
    data: np.ndarray
    prepared: PreparedTarget | NsgError
    slot: _Slot | None


class ReadingProcess:
    """Targets read and prepared (:func:`~napari_nsg.core.nsg.prepare_target`) in one
    worker process, their arrays in shared-memory slots (see the module notes).

    Parameters
    ----------
    plan : TargetPlan
        What preparing a target needs of the reference (``model.target_plan()``).
    debayer : str or None
        As :func:`~napari_nsg.io.read_frame`'s.

    Notes
    -----
    :meth:`read` may be called from one thread at a time; :meth:`give` from any.
    :meth:`close` ends the process and frees the slots.
    """

    def __init__(self, plan: TargetPlan, debayer: str | None = None):
        self.plan = plan
        self.layout = _Layout.of(plan.data_shape, plan)
        self.broken = False
        self._free: list[_Slot] = []
        self._all: list[_Slot] = []
        self._closed = False
        self._lock = threading.Lock()
        self._pool = _process_pool(_read_in_worker, (plan, debayer, self.layout), 1)
        start_workers(self._pool, 1, script=False)  # it starts now, while the caller goes on

    def read(self, path: str) -> ReadFrame:
        """Read and prepare the target at ``path`` in the reading process.

        Raises what reading raises (:class:`~napari_nsg.io.FrameError`);
        ``BrokenProcessPool`` when the process died (``broken`` is then True)."""
        slot = self._take()
        try:
            meta, header, prepared, caught = self._pool.submit(
                _call_in_worker, _read_in_worker, (path, slot.name)).result()
        except BaseException as exc:
            self.broken |= isinstance(exc, BrokenProcessPool)
            self.give(slot)
            raise
        for message, category in caught:  # as if read here (the CLI prints them)
            warnings.warn(message, category, stacklevel=2)
        data, mask, grid = self.layout.arrays(slot.map)
        if isinstance(prepared, NsgError):
            self.give(slot)
            return ReadFrame(meta, header, None, prepared, None)
        has_mask, noises, ok = prepared
        chans = data if data.ndim == 3 else data[np.newaxis]
        no_data = (mask if mask.ndim == 3 else mask[np.newaxis]) if has_mask else None
        prep = PreparedTarget(chans, no_data, data, True, noises, TargetPixels(grid, ok))
        return ReadFrame(meta, header, data, prep, slot)

    def _take(self) -> _Slot:
        with self._lock:
            if self._free:
                return self._free.pop()
        slot = _Slot(self.layout.nbytes)
        with self._lock:
            if not self._closed:
                self._all.append(slot)
                return slot
        slot.close()  # made while close() ran: it would outlive the batch
        self.broken = True
        raise BrokenProcessPool("the reading process was closed")

    def give(self, slot: _Slot | None) -> None:
        """Take a slot back once nothing uses its arrays (the next frame may fill it)."""
        if slot is None:
            return
        with self._lock:
            if slot in self._all and slot not in self._free:
                self._free.append(slot)

    def close(self) -> None:
        """End the reading process and free the shared memory."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            slots, self._all, self._free = self._all, [], []
            self._closed = True
        for slot in slots:
            slot.close()


# ---- in the reading process ------------------------------------------------------

_MAPPED: dict[str, mmap.mmap] = {}  # slot name -> its mapping, kept while the process lives
_NICED = False


def _mapped(name: str, nbytes: int) -> mmap.mmap:
    """The slot ``name`` mapped shared (what is written here is seen by the batch)."""
    if name not in _MAPPED:
        _MAPPED[name] = _map(name, nbytes)
    return _MAPPED[name]


class _SlotBuffers:
    """A :class:`~napari_nsg.io.buffers.FrameBuffers` stand-in for :func:`read_frame`:
    the slot's pixel array when the frame fits it, else a new array."""

    def __init__(self, data: np.ndarray):
        self.data = data

    def take(self, shape, dtype=np.float32) -> np.ndarray:
        if tuple(shape) == self.data.shape and np.dtype(dtype) == self.data.dtype:
            return self.data
        return np.empty(shape, dtype)

    def give(self, array) -> bool:
        return False


def _read_in_worker(context, item):
    """In the reading process: read ``path`` into the slot, prepare it there.

    Returns ``(meta, header, prepared, warnings)``, ``prepared`` the NsgError that
    refused the frame or ``(has_mask, noises, bins_ok)`` with the arrays written into
    the slot, ``warnings`` those raised meanwhile as ``(message, category)`` (e.g. a
    :class:`~napari_nsg.io.FrameWarning` for an unreadable header card)."""
    global _NICED
    if not _NICED:
        with contextlib.suppress(OSError):
            os.nice(READER_NICE)
        _NICED = True
    with warnings.catch_warnings(record=True) as caught:  # one thread here: safe
        warnings.simplefilter("always")
        result = _read_prepared(context, item)
    return (*result, [(str(w.message), w.category) for w in caught])


def _read_prepared(context, item):
    """:func:`_read_in_worker`'s work: ``(meta, header, prepared)``."""
    plan, debayer, layout = context
    path, slot_name = item
    data, mask, grid = layout.arrays(_mapped(slot_name, layout.nbytes))
    try:
        frame = read_frame(path, debayer=debayer, buffers=_SlotBuffers(data))
    except FrameError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reading failure is this frame's error
        raise FrameError(path, f"cannot be read ({type(exc).__name__}: {exc})") from None
    mask3 = mask if mask.ndim == 3 else mask[np.newaxis]
    try:
        prep = prepare_target(plan, frame.data, frame.meta, overwrite_input=True,
                              with_noise=True, mask_out=mask3)
    except NsgError as exc:
        return frame.meta, frame.header, _picklable(exc)
    chans = prep.chans if len(layout.data_shape) == 3 else prep.chans[0]
    if not np.shares_memory(chans, data):
        np.copyto(data, chans)
    if prep.no_data is not None and not np.shares_memory(prep.no_data, mask):
        np.copyto(mask, prep.no_data.reshape(mask.shape))
    np.copyto(grid, prep.pixels.values)
    return frame.meta, frame.header, (prep.no_data is not None, prep.noises, prep.pixels.ok)


def _picklable(exc: NsgError) -> NsgError:
    """``exc`` if it survives pickling, else an NsgError with its message."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any pickling failure
        return NsgError(str(exc))
    return exc
