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

__all__ = ["available_cores", "available_threads"]


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
