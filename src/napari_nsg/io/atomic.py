"""Atomic file writing: a temporary name in the same folder, then a rename.

An interrupted run therefore never leaves a half-written output under the
final name; at worst a hidden ``.<name>.partial-<pid>-*`` file, which
:func:`remove_partials` cleans up (every command calls it on the folders it
writes to; it leaves alone the partial files of processes still running).

Also here: :func:`refuse_inputs`, the one check that no output replaces an
input (symbolic links, hard links and ``..`` resolved), and the errors of
writing: :class:`OutputWriteError` names the output and the reason (e.g. "No
space left on device"). Outputs get the permissions the user's umask gives
(``0o666 & ~umask``), like any file the user creates.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from .errors import FrameError, OutputExistsError

PARTIAL_TAG = ".partial-"
PAUSE_ENV = "NAPARI_NSG_TEST_PAUSE_AT"  # test hook: "<point>[:<n>]"
PAUSE_FILE_ENV = "NAPARI_NSG_TEST_PAUSE_FILE"  # touched when the pause starts
PAUSE_SECONDS = 3600.0
FILE_MODE = 0o666  # before the umask, as open(..., "w") does
_PROC_STATUS = "/proc/self/status"

__all__ = ["DiskFullError", "InputCollisionError", "OutputWriteError", "atomic_group",
           "atomic_path", "atomic_write_text", "file_identity", "make_output_folder",
           "pause_for_test", "refuse_inputs", "remove_partials", "same_file"]


class OutputWriteError(FrameError):
    """An output could not be written (full disk, no permission...): names the file and why."""


class DiskFullError(OutputWriteError):
    """An output could not be written because its disk (or the user's quota) is full: the
    frames after it would fail the same way."""


#: The ``errno`` values of a full disk or quota.
DISK_FULL_ERRNOS = frozenset(e for e in (getattr(errno, "ENOSPC", None),
                                         getattr(errno, "EDQUOT", None)) if e is not None)


class InputCollisionError(FrameError):
    """An output would replace one of the inputs.

    Attributes
    ----------
    input : str
        The input file the output would replace.
    """

    def __init__(self, path, input_path):
        self.input = os.fspath(input_path)
        super().__init__(path, f"an output cannot replace an input file (it is the input "
                               f"{self.input}; choose another output name or folder)")


_pause_counts: dict[str, int] = {}


def pause_for_test(point: str) -> None:
    """Test hook: stop here (sleep) if ``$NAPARI_NSG_TEST_PAUSE_AT`` names this point.

    ``NAPARI_NSG_TEST_PAUSE_AT=after_rename:2`` pauses the second time this
    process passes ``after_rename``; the file named by
    ``$NAPARI_NSG_TEST_PAUSE_FILE`` is created (with the pid) when it does, so
    a test can kill the process at that moment. Points: ``before_rename``
    (outputs written under temporary names), ``after_rename`` (a frame's
    outputs in place, its report row not yet written), ``after_row``.
    """
    wanted = os.environ.get(PAUSE_ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition(":")
    if name != point:
        return
    _pause_counts[point] = _pause_counts.get(point, 0) + 1
    if _pause_counts[point] != int(nth or 1):
        return
    flag = os.environ.get(PAUSE_FILE_ENV)
    if flag:
        Path(flag).write_text(str(os.getpid()), encoding="ascii")
    time.sleep(PAUSE_SECONDS)


def write_error(path: str | os.PathLike, exc: OSError) -> OutputWriteError:
    """The :class:`OutputWriteError` for an ``OSError`` met while writing ``path``."""
    reason = exc.strerror or (os.strerror(exc.errno) if exc.errno else None)
    if not reason:  # astropy's own OSError repeats itself: its first sentence is enough
        reason = str(exc).split(". ", 1)[0].rstrip(".") or type(exc).__name__
    kind = DiskFullError if exc.errno in DISK_FULL_ERRNOS else OutputWriteError
    return kind(path, f"cannot be written ({reason})")


def file_identity(path: str | os.PathLike) -> tuple | str:
    """(device, inode) of an existing file, else its resolved absolute path."""
    try:
        st = os.stat(path)
        return (st.st_dev, st.st_ino)
    except OSError:
        return os.path.realpath(os.path.abspath(path))


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name the same file (links and ``..`` resolved)."""
    if os.path.realpath(os.path.abspath(a)) == os.path.realpath(os.path.abspath(b)):
        return True
    ia, ib = file_identity(a), file_identity(b)
    return isinstance(ia, tuple) and ia == ib


def refuse_inputs(outputs: Iterable[str | os.PathLike],
                  inputs: Iterable[str | os.PathLike]) -> None:
    """Raise :class:`InputCollisionError` if any output is the same file as any input."""
    inputs = [Path(p) for p in inputs]
    for out in outputs:
        for src in inputs:
            if same_file(out, src):
                raise InputCollisionError(out, src)


def current_umask() -> int:
    """The process umask, read without changing it where the system allows."""
    with contextlib.suppress(OSError, ValueError):
        with open(_PROC_STATUS, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_temp(final: Path) -> Path:
    folder = final.parent if str(final.parent) else Path(".")
    if not folder.is_dir():
        raise FrameError(final, f"output folder {folder} does not exist")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}{PARTIAL_TAG}{os.getpid()}-",
                                        dir=folder)
    except OSError as exc:
        raise write_error(final, exc) from None
    os.close(fd)
    return Path(tmp_name)


def _finish_temp(tmp: Path, final: Path, mode: int) -> None:
    """fsync and chmod ``tmp`` (OSError becomes OutputWriteError naming ``final``)."""
    try:
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
    except OSError as exc:
        raise write_error(final, exc) from None


def _check_free(final: Path, overwrite: bool, when: str = "") -> None:
    if final.exists() and not overwrite:
        raise OutputExistsError(final, f"output exists{when}")
    if final.is_dir():
        raise FrameError(final, "is a folder, not a file name")


@contextlib.contextmanager
def atomic_group(paths: Sequence[str | os.PathLike], *,
                 overwrite: bool = False) -> Iterator[list[Path]]:
    """Write several files as a unit: temporary names first, then all renamed.

    Parameters
    ----------
    paths : sequence of path-like
        The final file names.
    overwrite : bool
        Replace existing files. If False and one exists,
        :class:`~napari_nsg.io.OutputExistsError` is raised before anything is written.

    Yields
    ------
    list of pathlib.Path
        Where the caller writes, one per final name. If the block raises (or
        is interrupted), every temporary file is removed; if a rename fails or
        is interrupted, the files already renamed are removed too, so the unit
        is either all there or none of it (an old file replaced under
        ``overwrite`` is then gone as well).

    Raises
    ------
    OutputWriteError
        The disk is full, the folder is not writable...: names the file and the reason.
    """
    finals = [Path(p) for p in paths]
    for final in finals:
        _check_free(final, overwrite)
    temps: list[Path] = []
    renamed: list[Path] = []
    mode = FILE_MODE & ~current_umask()
    try:
        for final in finals:
            temps.append(_new_temp(final))
        try:
            yield list(temps)
        except OSError as exc:
            raise write_error(", ".join(map(str, finals)), exc) from None
        for tmp, final in zip(temps, finals):
            _finish_temp(tmp, final, mode)
        pause_for_test("before_rename")
        for tmp, final in zip(temps, finals):
            _check_free(final, overwrite, " (it appeared while writing; not replaced)")
            try:
                os.replace(tmp, final)
            except OSError as exc:
                raise write_error(final, exc) from None
            renamed.append(final)
    except BaseException:
        for p in [*temps, *renamed]:
            with contextlib.suppress(OSError):
                p.unlink()
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    Parameters
    ----------
    path : path-like
        The final file name.
    overwrite : bool
        Replace an existing file. If False and ``path`` exists,
        :class:`OutputExistsError` is raised before anything is written.

    Yields
    ------
    pathlib.Path
        Where the caller writes. If the block raises (or is interrupted), the
        temporary file is removed and ``path`` is left as it was. An
        ``OSError`` becomes :class:`OutputWriteError` naming ``path``.
    """
    with atomic_group([path], overwrite=overwrite) as temps:
        yield temps[0]


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _owner_alive(name: str) -> bool:
    """Whether the process that made partial file ``name`` still runs (pid in the name)."""
    tail = name.split(PARTIAL_TAG, 1)[-1]
    pid_text = tail.split("-", 1)[0]
    if not pid_text.isdigit() or "-" not in tail:
        return False  # an older name without a pid: nobody can still be writing it
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # exists, owned by someone else
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """Whether ``pid`` has exited but was not reaped yet (Linux ``/proc``; a killed
    run's worker, orphaned under an init that reaps late, writes nothing more)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]


def make_output_folder(folder: str | os.PathLike) -> Path:
    """Create the output folder ``folder`` (and its parents) if needed.

    Raises
    ------
    FrameError
        It is a file, or it cannot be created (the reason given).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FrameError(folder, "is a file, not a folder: give a folder for the outputs")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FrameError(folder, f"cannot create the output folder ({exc.strerror or exc})"
                         ) from None
    return folder


def remove_partials(folder: str | os.PathLike,
                    keep: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Delete temporary files left in ``folder`` by an interrupted atomic write.

    Parameters
    ----------
    folder : path-like
    keep : iterable of path-like
        Files never to delete (the inputs of the command, whatever their names).

    Returns
    -------
    list of pathlib.Path
        The files removed. Partial files of a process that is still running
        (its pid is in the name) are left alone.
    """
    keep = list(keep)
    removed = []
    try:
        candidates = list(Path(folder).glob(f".*{PARTIAL_TAG}*"))
    except OSError:
        return removed
    for p in candidates:
        if _owner_alive(p.name) or any(same_file(p, k) for k in keep):
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed
