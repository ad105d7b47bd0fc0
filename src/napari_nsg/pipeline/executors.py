"""Running one task per frame: in this process, in local worker processes, or on Dask.

:func:`map_frames` calls ``func(context, item)`` for every item and yields
``(index, result)`` as results arrive. The ``context`` (for NSG: the reference
model) is sent to each worker once, its large arrays through shared memory (one copy
for all workers, mapped copy-on-write); each task reads and writes its own frame, so
only small results travel back. Local workers are forks of a fork server that
has imported the package once; they start in the background while this process
works on the items itself, and each item goes to whoever is free first (one task
per worker in flight, which keeps memory bounded however many frames there are).
``func`` must be a module-level function and must not raise (it returns its
error as a result). Local workers die with the process that started them, even
when it is killed with SIGKILL (see :func:`_die_with_parent`).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import mmap
import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
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

import numpy as np

from ..core.threads import available_cores
from ..io import FrameError
from .progress import Cancelled, CancelToken, check_cancel

_WORKER_CONTEXT: Any = None
SCHEDULER_TIMEOUT = "10s"  # to connect to a Dask scheduler
PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCHDOG_SECONDS = 0.5  # how often a worker checks that its parent lives
_FORK_SERVER_GUARD = "napari_nsg.pipeline._fork_server"
EXIT_ORPHANED = 3


def die_with_parent_thread() -> None:
    """Linux: have the kernel SIGKILL this process when the thread that started it ends
    (``PR_SET_PDEATHSIG``; its process's death included, by SIGKILL too)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _die_with_parent() -> None:
    """End this worker process when the process that asked for it dies (even by SIGKILL).

    Linux: the kernel kills it when its own parent dies (:func:`die_with_parent_thread`):
    the process that started it (spawn), or the fork server, which dies with that process.
    Everywhere: a daemon thread waits for the end of the pipe that process holds for it
    (``multiprocessing.parent_process().sentinel``; where there is none, it checks
    ``os.getppid()`` every :data:`WATCHDOG_SECONDS`). A worker killed mid-write leaves at
    most a hidden partial file, which the next run in that folder removes.
    """
    die_with_parent_thread()
    parent = multiprocessing.parent_process()
    sentinel = getattr(parent, "sentinel", None)
    ppid = os.getppid()

    def watch() -> None:
        if sentinel is not None:
            multiprocessing.connection.wait([sentinel])
        else:
            while os.getppid() == ppid:
                time.sleep(WATCHDOG_SECONDS)
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
    with _blocked({signal.SIGINT}):
        yield


@contextlib.contextmanager
def _blocked(signals: set):
    """Block ``signals`` in this thread meanwhile (processes started then inherit the
    mask; a signal that arrives is delivered here when the block ends)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


#: Signals the resource tracker is started with blocked, on top of those it ignores itself
#: (SIGINT, SIGTERM): a hang-up of the terminal (SIGHUP to the whole process group) then
#: leaves it alive to unlink the shared memory of the processes it killed (the reading
#: process's slots, the workers' model), instead of leaving it in /dev/shm.
TRACKER_BLOCKED = {signal.SIGHUP} if hasattr(signal, "SIGHUP") else set()  # none on Windows


def _ignore_sigint() -> None:
    """In a worker: ignore Ctrl-C (the parent handles it), then lift the inherited block."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


#: Thread pools of the native libraries in a worker process: ``cores // workers``
#: threads each (at least one; see :func:`threads_per_worker`): N workers already use
#: N cores, and more threads per worker only compete for them (OpenBLAS threads even
#: spin while they wait). Set in each worker, unless the user set them; OpenBLAS's own
#: pool keeps the one thread it starts with (the workers import numpy with these at 1).
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
WAIT_SECONDS = 0.5  # how often waiting threads look at the cancel token and stop flag


@contextlib.contextmanager
def _one_thread_per_worker():
    """Start worker processes (and the fork server) with one native thread each."""
    added = [name for name in THREAD_ENV if name not in os.environ]
    for name in added:
        os.environ[name] = "1"
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def threads_per_worker(workers: int) -> int:
    """Native threads for each of ``workers`` worker processes: the cores shared out."""
    return max(1, available_cores() // max(1, workers))


def _init_worker(context, thread_env: dict | None = None, shared: bool = False) -> None:
    """In a new worker: ignore Ctrl-C, die with the parent, size the native thread
    pools, keep ``context`` (``shared``: the blob of a :class:`_SharedContext`)."""
    global _WORKER_CONTEXT
    _ignore_sigint()
    _die_with_parent()
    if shared:
        context = _unshare(context)
    os.environ.update(thread_env or {})
    with contextlib.suppress(ImportError):
        import cv2

        cv2.setNumThreads(int((thread_env or {}).get("OMP_NUM_THREADS", 1)))
    _WORKER_CONTEXT = context


#: Arrays of the context at least this big go to shared memory, once, instead of being
#: pickled into every worker (the NSG reference model: 160-220 MiB for 6000 x 4000).
SHARE_BYTES = 1 << 20
SHM_DIR = "/dev/shm"  # where POSIX shared memory lives on Linux (its free space is checked)
SHM_MARGIN = 2.0  # shared memory is used only with this times the arrays' size free
_ATTACHED: list = []  # shared-memory mappings of this worker (kept while it lives)


class _SharedContext:
    """A context pickled once, its large arrays in shared memory: ``blob`` goes to each
    worker (small), which maps the arrays copy-on-write (:func:`_unshare`). :meth:`close` frees the memory (also freed by the resource tracker
    if this process is killed)."""

    def __init__(self, context):
        from multiprocessing import shared_memory

        self._shared_memory = shared_memory
        self.blocks: list = []
        buf = io.BytesIO()
        pickler = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
        pickler.persistent_id = self._share
        try:
            pickler.dump(context)
        except BaseException:
            self.close()
            raise
        self.blob = buf.getvalue()

    def _share(self, obj):
        if type(obj) is not np.ndarray or obj.nbytes < SHARE_BYTES or obj.dtype.hasobject:
            return None
        if not _shm_room(obj.nbytes):
            return None  # pickled with the rest
        block = self._shared_memory.SharedMemory(create=True, size=obj.nbytes)
        self.blocks.append(block)
        np.ndarray(obj.shape, obj.dtype, buffer=block.buf)[...] = obj
        return ("shm", block.name, obj.dtype.str, obj.shape)

    def close(self) -> None:
        for block in self.blocks:
            with contextlib.suppress(OSError):
                block.close()
                block.unlink()
        self.blocks = []


def _shm_room(nbytes: int) -> bool:
    """Whether shared memory has room for ``nbytes`` more (a small ``/dev/shm``, such as
    Docker's 64 MiB default, would kill the process with SIGBUS when it is written)."""
    try:
        st = os.statvfs(SHM_DIR)
    except (AttributeError, OSError):
        return False
    return st.f_bavail * st.f_frsize > SHM_MARGIN * nbytes


def _unshare(blob: bytes):
    """In a worker: the context of a :class:`_SharedContext`, its arrays mapped from shared
    memory copy-on-write (``MAP_PRIVATE``): nothing is copied until written, and what a
    worker writes stays its own, as with a pickled copy (writable, as e.g. ``sep`` needs)."""
    def load(pid):
        _, name, dtype, shape = pid
        fd = os.open(os.path.join(SHM_DIR, name.lstrip("/")), os.O_RDONLY)
        try:
            size = int(np.prod(shape)) * np.dtype(dtype).itemsize
            mapped = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE,
                               prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        _ATTACHED.append(mapped)
        return np.frombuffer(mapped, np.dtype(dtype)).reshape(shape)

    unpickler = pickle.Unpickler(io.BytesIO(blob))
    unpickler.persistent_load = load
    return unpickler.load()


def _ready() -> int:
    """A no-op task: the worker has started and holds the context."""
    return os.getpid()


def start_workers(pool: ProcessPoolExecutor, workers: int, *, script: bool = True
                  ) -> list[Future]:
    """Start all ``workers`` processes of ``pool`` now, with one native thread each
    while they import (the fork server too, when this starts it). ``script``: they may
    need the caller's main script (its functions); else it is not imported there
    (see :func:`_main_not_imported`).

    Returns
    -------
    list of Future
        One no-op task per worker: all are done once every worker has started
        and holds the context.
    """
    without_script = contextlib.nullcontext() if script else _main_not_imported()
    with _one_thread_per_worker(), _sigint_blocked(), without_script:
        return [pool.submit(_ready) for _ in range(workers)]


@contextlib.contextmanager
def _main_not_imported():
    """Start processes that do not run the caller's main script again.

    A ``spawn`` or ``forkserver`` child imports the parent's ``__main__`` from its path
    (as ``__mp_main__``), so a script that calls napari-nsg without an ``if __name__ ==
    "__main__":`` guard would run again in every worker, with its side effects. The
    workers run only this package's functions: while they start, ``__main__`` shows
    no path (``multiprocessing.spawn.get_preparation_data`` then leaves it out)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    path = getattr(main, "__file__", None)
    if main is None or spec is not None or path is None:  # run by name (-m), or no file
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def _call_in_worker(func, item):
    return func(_WORKER_CONTEXT, item)


def _start_method() -> str:
    """``forkserver`` on Linux (where the server can die with this process: see
    :mod:`._fork_server`), else ``spawn``; never plain ``fork``: this process may run
    threads, e.g. a GUI's, whose locks a forked child would inherit."""
    linux = sys.platform.startswith("linux")
    return "forkserver" if linux and "forkserver" in multiprocessing.get_all_start_methods() \
        else "spawn"


def _process_pool(func, context, workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes holding ``context`` (a :class:`_SharedContext`:
    its blob is what each worker is sent).

    With ``forkserver`` the server process imports this package's modules of ``func``
    once (in the background of this process's own work) and each worker is a fork of
    it: it starts in milliseconds and imports nothing more; the server lives as long
    as the thread that started it, so that thread's later pools start at once. With ``spawn`` each worker starts a
    new interpreter and imports everything itself (seconds).
    """
    ctx = _worker_context(func)
    thread_env = {name: str(threads_per_worker(workers + 1))  # this process works too
                  for name in THREAD_ENV if name not in os.environ}
    shared = isinstance(context, _SharedContext)
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(context.blob if shared else context, thread_env, shared))


def worker_processes(workers: int, n_items: int, overlapped: bool = True) -> int:
    """The worker processes :func:`map_frames` starts for ``workers`` processes in all
    (this one included, at most one per available core) and ``n_items`` items: none for
    the items this process holds anyway (two when it runs them ``overlapped``)."""
    held_here = 2 if overlapped else 1  # an overlapped runner takes one item ahead
    return max(0, min(min(workers, available_cores()) - 1, n_items - held_here))


def prestart_workers(func, workers: int, n_items: int | None = None) -> None:
    """Start the fork server for workers running ``func`` now, if it is not running and
    :func:`worker_processes` would start any: it imports the package in the background
    (e.g. while the reference is prepared), so that the workers start at once when they
    are asked for."""
    if worker_processes(workers, n_items if n_items is not None else workers + 2) > 0:
        _worker_context(func)


def _worker_context(func):
    """The multiprocessing context of the workers, its fork server started."""
    from multiprocessing import resource_tracker

    method = _start_method()
    ctx = multiprocessing.get_context(method)
    with _one_thread_per_worker(), _blocked(TRACKER_BLOCKED):
        resource_tracker.ensure_running()  # first: it unblocks SIGINT once it has started
    if method == "forkserver":
        from multiprocessing import forkserver

        modules = sorted({__name__, func.__module__} & _package_modules())
        ctx.set_forkserver_preload([_FORK_SERVER_GUARD, *modules])
        with _one_thread_per_worker(), _sigint_blocked():
            forkserver.ensure_running()  # by this thread, which outlives the pool
    return ctx


def _package_modules() -> set[str]:
    """Modules of this package already imported here (the fork server may preload them)."""
    top = __name__.split(".")[0]
    return {name for name in sys.modules if name == top or name.startswith(top + ".")}


class _Source:
    """Items handed out one at a time, to whichever thread asks first."""

    def __init__(self, items: Sequence[Any]):
        self._it = iter(enumerate(items))
        self._lock = threading.Lock()
        self.exhausted = False

    def take(self) -> tuple[int, Any] | None:
        """The next ``(index, item)``, or None when all have been taken."""
        with self._lock:
            nxt = next(self._it, None)
            self.exhausted = nxt is None
            return nxt

    def here(self, taken: list[int]) -> Iterator[Any]:
        """Items for this process's own runner; their indices are appended to ``taken``."""
        while (nxt := self.take()) is not None:
            taken.append(nxt[0])
            yield nxt[1]


class _Feeder:
    """A thread that starts the worker processes and hands each free worker the next
    item of the shared source; finished tasks go to :attr:`results` as
    ``(index, future)``, a failure as ``(None, exception)``, and None at the end.
    SIGINT stays blocked in this thread, so the processes it starts inherit the block
    (see :func:`_sigint_blocked`)."""

    def __init__(self, pool: ProcessPoolExecutor, func, source: _Source, workers: int):
        self.pool, self.func, self.source, self.workers = pool, func, source, workers
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self.pending: dict[Future, int] = {}
        self.stop = threading.Event()
        self.ended = False  # the end of the results has been seen
        self.thread = threading.Thread(target=self._run, name="napari-nsg-feeder", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with _sigint_blocked():
                ours = self.func.__module__.startswith(f"{__name__.split('.')[0]}.")
                self._feed(set(start_workers(self.pool, self.workers, script=not ours)))
        except BaseException as exc:  # noqa: BLE001 - raised by the consumer's thread
            self.results.put((None, exc))
        finally:
            self.results.put(None)

    def _feed(self, starting: set[Future]) -> None:
        while not self.stop.is_set():
            for _ in range(self.workers - len(starting) - len(self.pending)):
                nxt = self.source.take()
                if nxt is None:
                    break
                self.pending[self.pool.submit(_call_in_worker, self.func, nxt[1])] = nxt[0]
            if not self.pending and self.source.exhausted:
                return  # workers still starting have nothing left to do
            done, _ = wait([*starting, *self.pending], timeout=WAIT_SECONDS,
                           return_when=FIRST_COMPLETED)
            for fut in done:
                if fut in starting:
                    starting.discard(fut)
                    fut.result()  # a worker that could not start breaks the pool: raise
                else:
                    self.results.put((self.pending.pop(fut), fut))

    def finished(self, block: bool, cancel: CancelToken | None) -> Iterator[tuple[int, Any]]:
        """Yield the finished tasks' ``(index, result)``: those there now, or (``block``)
        all until the feeder ends."""
        while not self.ended:
            try:
                msg = self.results.get(timeout=WAIT_SECONDS) if block else self.results.get_nowait()
            except queue.Empty:
                if not block:
                    return
                check_cancel(cancel)
                continue
            if msg is None:
                self.ended = True
                return
            index, outcome = msg
            if index is None:
                raise outcome
            yield index, outcome.result()

    def close(self, pool_processes: list) -> None:
        """Stop feeding, drop the tasks not started; with no task left running the
        worker processes (idle or still starting) are ended now rather than waited for."""
        self.stop.set()
        self.thread.join()
        running = [fut for fut in self.pending if not fut.cancel() and not fut.done()]
        if not running:
            for proc in pool_processes:
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    proc.kill()


def _one_at_a_time(func, context, cancel):
    """The default runner for this process's share: ``func`` on each item, in turn."""
    def run(items):
        for k, item in enumerate(items):
            check_cancel(cancel)
            yield k, func(context, item)
    return run


def map_frames(
    func: Callable[[Any, Any], Any],
    context: Any,
    items: Sequence[Any],
    *,
    workers: int = 1,
    scheduler: str | None = None,
    cancel: CancelToken | None = None,
    local: Callable[[Iterator[Any]], Iterator[tuple[int, Any]]] | None = None,
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
        Processes working at once, this one included (at most one per available
        core): 1 runs here; N also starts N - 1 local worker processes (only as
        many as there are items this process will not already hold). This process
        and the workers take the items one at a time, each item going to whichever
        is free first. This process starts at once while the workers start in the
        background, so a run with workers is never much slower than one without,
        even when the workers start too late to help.
    scheduler : str, optional
        Address of a Dask distributed scheduler: run there (needs the
        ``distributed`` extra; the workers must see the same file paths).
    cancel : CancelToken, optional
        Checked between tasks; pending tasks are dropped and :class:`Cancelled`
        is raised once running ones have finished (their outputs are complete,
        being written atomically).
    local : callable, optional
        How this process runs its share: ``local(items)`` takes items from the
        iterator as it goes and yields ``(k, result)`` for its k-th item (e.g.
        :func:`overlapped_frames`). Default: ``func`` on one item at a time.

    Raises
    ------
    FrameError
        ``scheduler`` given but dask.distributed is missing or unreachable.
    Cancelled
    """
    if scheduler:
        yield from _dask(func, context, items, scheduler, cancel)
        return
    workers = worker_processes(workers, len(items), overlapped=local is not None)
    local = local or _one_at_a_time(func, context, cancel)
    if workers < 1:
        yield from local(iter(items))
        return
    source = _Source(items)
    shared = _SharedContext(context)
    try:
        with _process_pool(func, shared, workers) as pool:
            feeder = _Feeder(pool, func, source, workers)
            taken: list[int] = []
            mine = local(source.here(taken))
            try:
                for k, result in mine:
                    yield taken[k], result
                    yield from feeder.finished(False, cancel)
                    check_cancel(cancel)
                yield from feeder.finished(True, cancel)
            finally:
                mine.close()
                feeder.close(list((pool._processes or {}).values()))
    finally:
        shared.close()


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


_END = object()  # no more items


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

    ``items`` may be any iterable: an item is taken when the one before it has been
    read (so a source shared with worker processes hands this process only what it
    is about to read). ``index`` counts the items taken, from 0.

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
    it = iter(items)  # taken one at a time: the source may be shared with workers
    reader = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-read")
    computer = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-compute")
    try:
        item = next(it, _END)
        reading = None if item is _END else reader.submit(_try, load, 0, item)
        done = None  # (index, loaded, computed) not yet written
        k = 0
        while reading is not None:
            loaded, exc = reading.result()
            following = next(it, _END)
            reading = None if following is _END else reader.submit(_try, load, k + 1, following)
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
            else:
                done = (k, loaded, computed)
            k, item = k + 1, following
        if done is not None:
            yield done[0], store(*done[1:])
    finally:
        reader.shutdown(wait=False, cancel_futures=True)
        if finish_compute is not None:
            computer.submit(finish_compute)
        computer.shutdown(wait=False, cancel_futures=finish_compute is None)
