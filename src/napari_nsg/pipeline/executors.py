"""Running one task per frame: in this process, in local worker processes, or on Dask.

:func:`map_frames` calls ``func(context, item)`` for every item and yields
``(index, result)`` as results arrive. The ``context`` (for NSG: the reference
model) is sent to each worker once; each task reads and writes its own frame,
so only small results travel back. At most ``2 x workers`` tasks are in flight,
which keeps memory bounded however many frames there are. ``func`` must be a
module-level function and must not raise (it returns its error as a result).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

from ..io import FrameError
from .progress import Cancelled, CancelToken, check_cancel

_WORKER_CONTEXT: Any = None
SCHEDULER_TIMEOUT = "10s"  # to connect to a Dask scheduler


def _init_worker(context) -> None:
    global _WORKER_CONTEXT
    _WORKER_CONTEXT = context


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
        1: run here, in order; more: that many local processes.
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
    if workers <= 1 or len(items) <= 1:
        for i, item in enumerate(items):
            check_cancel(cancel)
            yield i, func(context, item)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(context,)) as pool:
        pending: dict = {}
        it = iter(enumerate(items))
        try:
            while True:
                while len(pending) < 2 * workers:
                    nxt = next(it, None)
                    if nxt is None:
                        break
                    check_cancel(cancel)
                    i, item = nxt
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
        raise FrameError(None, "--scheduler needs Dask distributed: "
                         "pip install 'napari-nsg[distributed]'") from None
    try:
        client = Client(scheduler, timeout=SCHEDULER_TIMEOUT)
    except Exception as exc:  # OSError, TimeoutError, ValueError from distributed
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
