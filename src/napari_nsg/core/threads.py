"""How many threads a stage of the core may use for one frame.

The core splits some passes over threads (the NSG correction by bands of rows,
a target's noise next to its scale, the no-data scan and the sample statistics by
halves: :func:`in_two_threads`). NumPy,
BLAS and OpenCV release the GIL in those passes, so the threads run on
separate cores. They are used only where cores exist: one per available core
(the process's CPU affinity), capped by ``OMP_NUM_THREADS`` as the native
libraries' threads are (worker processes set it to 1: one thread each).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

__all__ = ["available_cores", "available_threads", "in_two_threads"]


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


def in_two_threads(first, second, name: str = "half"):
    """``(first(), second())``, ``second`` on a thread of its own while ``first`` runs
    on the calling one (for two halves of a pass whose NumPy work releases the GIL)."""
    with ThreadPoolExecutor(1, thread_name_prefix=name) as pool:
        job = pool.submit(second)
        return first(), job.result()
