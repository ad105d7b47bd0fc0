"""Running one task per frame: in this process, in local worker processes, or on Dask.

:func:`map_frames` calls ``func(context, item)`` for every item and yields
``(index, result)`` as results arrive. The ``context`` (for NSG: the reference
model) is sent to each worker once; each task reads and writes its own frame,
so only small results travel back. At most ``2 x workers`` tasks are in flight,
which keeps memory bounded however many frames there are. ``func`` must be a
module-level function and must not raise (it returns its error as a result).
Local workers die with the process that started them, even when it is killed
with SIGKILL (see :func:`_die_with_parent`).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from typing import Any

from ..io import FrameError
from .progress import Cancelled, CancelToken, check_cancel

_WORKER_CONTEXT: Any = None
SCHEDULER_TIMEOUT = "10s"  # to connect to a Dask scheduler
PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCHDOG_SECONDS = 0.5  # how often a worker checks that its parent lives
EXIT_ORPHANED = 3


def _die_with_parent(parent_pid: int) -> None:
    """End this worker process when its parent dies (even by SIGKILL).

    Linux: the kernel sends SIGKILL on the parent's death (``PR_SET_PDEATHSIG``).
    Everywhere: a daemon thread checks ``os.getppid()`` every
    :data:`WATCHDOG_SECONDS`. A worker killed mid-write leaves at most a hidden
    partial file, which the next run in that folder removes.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(WATCHDOG_SECONDS)
        os._exit(EXIT_ORPHANED)

    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(EXIT_ORPHANED)
    threading.Thread(target=watch, name="napari-nsg-parent-watchdog", daemon=True).start()


@contextlib.contextmanager
def _sigint_blocked():
    """Block SIGINT in this thread while workers may be started (they inherit the mask).

    A Ctrl-C meanwhile is delivered when the block ends. The workers ignore
    SIGINT from their start (see :func:`_init_worker`), so Ctrl-C interrupts
    only this process, which drops the pending frames and waits for the running
    ones to finish: their outputs are complete and no worker prints a traceback.
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _ignore_sigint() -> None:
    """In a worker: ignore Ctrl-C (the parent handles it), then lift the inherited block."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


#: Thread pools of the native libraries, one thread each in a worker process: N
#: workers already use N cores, and more threads per worker only compete for them
#: (OpenBLAS threads even spin while they wait). Set while the workers start,
#: unless the user set them.
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


@contextlib.contextmanager
def _one_thread_per_worker():
    """Start worker processes with one native thread each (see :data:`THREAD_ENV`)."""
    added = [name for name in THREAD_ENV if name not in os.environ]
    for name in added:
        os.environ[name] = "1"
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _init_worker(context, parent_pid: int | None = None) -> None:
    global _WORKER_CONTEXT
    if parent_pid is not None:
        _ignore_sigint()
        _die_with_parent(parent_pid)
    with contextlib.suppress(ImportError):
        import cv2

        cv2.setNumThreads(1)
    _WORKER_CONTEXT = context


def _ready() -> int:
    """A no-op task: the worker has started and holds the context."""
    return os.getpid()


def start_workers(pool: ProcessPoolExecutor, workers: int) -> list[Future]:
    """Start all ``workers`` processes of ``pool`` now, with one native thread each.

    Returns
    -------
    list of Future
        One no-op task per worker: all are done once every worker has started
        and holds the context.
    """
    with _one_thread_per_worker(), _sigint_blocked():
        return [pool.submit(_ready) for _ in range(workers)]


def _call_in_worker(func, item):
    return func(_WORKER_CONTEXT, item)


def map_frames(
    func: Callable[[Any, Any], Any],
    context: Any,
    items: Sequence[Any],
    *,
    workers: int = 1,
    scheduler: str | None = None,
    cancel: CancelToken | None = None,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, func(context, items[index]))`` for every item.

    Parameters
    ----------
    func : callable
        ``func(context, item) -> result``; module-level (picklable), never raises.
    context : object
        Sent once to each worker.
    items : sequence
        One per task.
    workers : int
        1: run here, in order; more: that many local processes (at most one per
        available core and per item; each with one native thread). Items are
        run here, one at a time, until the workers have started.
    scheduler : str, optional
        Address of a Dask distributed scheduler: run there (needs the
        ``distributed`` extra; the workers must see the same file paths).
    cancel : CancelToken, optional
        Checked between tasks; pending tasks are dropped and :class:`Cancelled`
        is raised once running ones have finished (their outputs are complete,
        being written atomically).

    Raises
    ------
    FrameError
        ``scheduler`` given but dask.distributed is missing or unreachable.
    Cancelled
    """
    if scheduler:
        yield from _dask(func, context, items, scheduler, cancel)
        return
    workers = min(workers, len(items), available_cores())
    if workers <= 1:
        for i, item in enumerate(items):
            check_cancel(cancel)
            yield i, func(context, item)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(context, os.getpid())) as pool:
        ready = start_workers(pool, workers)
        it = iter(enumerate(items))
        # starting takes a while (spawn, imports, the context unpickled): work here meanwhile,
        # so that workers are never slower than running here alone
        while not all(f.done() for f in ready):
            nxt = next(it, None)
            if nxt is None:
                break
            check_cancel(cancel)
            yield nxt[0], func(context, nxt[1])
        pending: dict = {}
        try:
            while True:
                while len(pending) < 2 * workers:
                    nxt = next(it, None)
                    if nxt is None:
                        break
                    check_cancel(cancel)
                    i, item = nxt
                    with _sigint_blocked():
                        pending[pool.submit(_call_in_worker, func, item)] = i
                if not pending:
                    break
                done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield pending.pop(fut), fut.result()
                check_cancel(cancel)
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


def _dask(func, context, items, scheduler, cancel):
    try:
        from dask.distributed import Client, as_completed
    except ImportError:
        raise FrameError(None, "a Dask scheduler needs Dask distributed: "
                         "pip install 'napari-nsg[distributed]'") from None
    try:
        client = Client(scheduler, timeout=SCHEDULER_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - OSError, TimeoutError, ValueError from distributed
        raise FrameError(None, f"cannot reach the Dask scheduler at {scheduler} ({exc})") from None
    try:
        remote = client.scatter(context, broadcast=True)
        n_threads = max(1, sum(client.nthreads().values()))
        limit = 2 * n_threads
        it = iter(enumerate(items))
        index = {}
        ac = as_completed()
        for _ in range(limit):
            nxt = next(it, None)
            if nxt is None:
                break
            fut = client.submit(func, remote, nxt[1], pure=False)
            index[fut.key] = nxt[0]
            ac.add(fut)
        for fut in ac:
            i = index.pop(fut.key)
            yield i, fut.result()
            if cancel is not None and cancel.is_set():
                for f in list(ac.futures):
                    f.cancel()
                raise Cancelled("cancelled")
            nxt = next(it, None)
            if nxt is not None:
                new = client.submit(func, remote, nxt[1], pure=False)
                index[new.key] = nxt[0]
                ac.add(new)
    finally:
        client.close()


def _try(func, *args):
    """``(func(*args), None)``, or ``(None, exception)``: a task's stage never raises."""
    try:
        return func(*args), None
    except Exception as exc:  # noqa: BLE001 - reported as the frame's row by the caller
        return None, exc


def overlapped_frames(items, load, compute, store, fail, *, cancel: CancelToken | None = None,
                      name: str = "frames", finish_compute: Callable[[], Any] | None = None):
    """Yield ``(index, row)`` for ``items`` in one process, with reading, computing and
    writing overlapped.

    A reader thread runs ``load(k, item)`` for the next frame and a compute thread
    ``compute(loaded)`` for the current one while this thread runs
    ``store(loaded, computed)`` for the previous one (the write stays here, so that
    Ctrl-C interrupts it as it would without the threads and its partial files are
    removed). ``store`` returns the frame's row, its own failure included; a failed
    load or compute becomes ``fail(k, item, loaded, exc)`` (``loaded`` None when the
    load failed). At most three frames are in memory. Rows come in order, each once
    its outputs are in place; when the consumer stops (``cancel``, an exception) the
    frame being computed is dropped and nothing more is written. ``finish_compute``
    runs last on the compute thread (e.g. to free its work arrays).
    """
    items = list(items)
    reader = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-read")
    computer = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-compute")
    try:
        reading = reader.submit(_try, load, 0, items[0]) if items else None
        done = None  # (index, loaded, computed) not yet written
        for k, item in enumerate(items):
            loaded, exc = reading.result()
            if k + 1 < len(items):
                reading = reader.submit(_try, load, k + 1, items[k + 1])
            computing = None if exc is not None else computer.submit(_try, compute, loaded)
            if done is not None:  # written while the compute thread works on frame k
                yield done[0], store(*done[1:])
                done = None
            check_cancel(cancel)
            computed = None
            if computing is not None:
                computed, exc = computing.result()
            if exc is not None:
                yield k, fail(k, item, loaded, exc)
                continue
            done = (k, loaded, computed)
        if done is not None:
            yield done[0], store(*done[1:])
    finally:
        reader.shutdown(wait=False, cancel_futures=True)
        if finish_compute is not None:
            computer.submit(finish_compute)
        computer.shutdown(wait=False, cancel_futures=finish_compute is None)
