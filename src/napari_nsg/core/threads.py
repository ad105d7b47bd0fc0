"""How many threads a stage of the core may use for one frame.

The core splits some passes over threads (the NSG correction by bands of rows,
the photometry of two frames, a target's noise next to its scale). NumPy,
BLAS and OpenCV release the GIL in those passes, so the threads run on
separate cores. They are used only where cores exist: one per available core
(the process's CPU affinity), capped by ``OMP_NUM_THREADS`` as the native
libraries' threads are (worker processes set it to 1: one thread each).
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager

__all__ = ["available_cores", "available_threads", "opencv_threads"]


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def available_threads(limit: int) -> int:
    """Threads for one pass: at most ``limit``, one per available core, at most
    ``OMP_NUM_THREADS`` when that is set; 1 at least."""
    cores = available_cores()
    env = os.environ.get("OMP_NUM_THREADS", "")
    cap = int(env) if env.isdigit() and int(env) > 0 else limit
    return max(1, min(limit, cores, cap))


_OPENCV_LOCK = threading.Lock()
_opencv_holders: list[int] = []  # the thread counts asked for, innermost last
_opencv_before: list[int] = []  # OpenCV's own setting before the outermost hold


@contextmanager
def opencv_threads(threads: int):
    """Within it, OpenCV runs its calls on at most ``threads`` threads (process-wide).

    OpenCV's pool threads wait for the next call by spinning: after each parallel
    call they burn CPU time a pipeline whose own threads already fill the cores
    needs (measured: ~0.02 CPU-s per 24 Mpx target in ``normalize``). Its results do
    not depend on the thread count. The setting before the outermost use comes
    back when that ends; a no-op without OpenCV.
    """
    try:
        import cv2
    except ImportError:  # pragma: no cover - OpenCV is a dependency
        yield
        return
    with _OPENCV_LOCK:
        if not _opencv_holders:
            _opencv_before.append(cv2.getNumThreads())
        _opencv_holders.append(threads)
        cv2.setNumThreads(max(1, threads))
    try:
        yield
    finally:
        with _OPENCV_LOCK:
            _opencv_holders.remove(threads)
            cv2.setNumThreads(_opencv_holders[-1] if _opencv_holders else _opencv_before.pop())
