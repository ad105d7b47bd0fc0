"""What every subcommand shares: exit codes, error printing, frame lists."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from ..io import FrameError, MosaicError, OutputExistsError
from ..pipeline.progress import Cancelled

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 130


def error(message: str) -> None:
    """Print an error for the user on stderr (no traceback)."""
    print(f"napari-nsg: error: {message}", file=sys.stderr)


def warn(message: str) -> None:
    """Print a warning on stderr."""
    print(f"napari-nsg: warning: {message}", file=sys.stderr)


#: A warning that this many frames or more share is printed once, with their count.
GROUP_WARNINGS_FROM = 3
#: Frames named in a grouped warning (the report lists them all).
NAMED_IN_GROUP = 3


def warn_frames(pairs) -> None:
    """Print the frames' warnings (``(file, text)`` pairs) on stderr: a text that
    :data:`GROUP_WARNINGS_FROM` frames or more share once, with how many and the
    first few names, the others frame by frame."""
    _grouped(pairs, warn)


def error_frames(pairs) -> None:
    """:func:`warn_frames` for the frames' errors."""
    _grouped(pairs, error)


def _grouped(pairs, say: Callable[[str], None]) -> None:
    by_text: dict[str, list[str]] = {}
    for file, text in pairs:
        by_text.setdefault(text, []).append(str(file))
    for text, files in by_text.items():
        if len(files) < GROUP_WARNINGS_FROM:
            for file in files:
                say(f"{file}: {text}")
            continue
        names = ", ".join(Path(f).name for f in files[:NAMED_IN_GROUP])
        more = ", ..." if len(files) > NAMED_IN_GROUP else ""
        say(f"{len(files)} frames ({names}{more}): {text}")


#: What a raw colour mosaic (:class:`~napari_nsg.io.MosaicError`) is told, frame or reference.
DEBAYER_HINT = ": use --debayer superpixel (or bilinear)"


def with_flags(exc: FrameError) -> str:
    """The message of a pipeline error, with the command-line flags that get past it."""
    from ..pipeline.normalize import ForeignRunError, ResumeMismatchError

    text = str(exc)
    if isinstance(exc, ResumeMismatchError):
        return (f"{text}; --resume only finishes a run with the same reference and parameters: "
                "run with --overwrite (without --resume) to start again, or choose another --out")
    if isinstance(exc, ForeignRunError):
        return f"{text}; use --overwrite to replace that run's outputs, or choose another --out"
    if isinstance(exc, OutputExistsError):
        return f"{text}; use --overwrite to replace it"
    if isinstance(exc, MosaicError):
        return f"{text}{DEBAYER_HINT}"
    return text


def run_guarded(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand; expected failures become a message and exit status 2."""
    try:
        return int(func(args))
    except FrameError as exc:
        error(with_flags(exc))
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # the reader of the output stopped (``| head``): quietly
        _silence_stdout()
        return SIGNAL_EXIT_BASE + SIGPIPE
    except OSError as exc:  # not expected, but never a traceback for a file problem
        where = f"{exc.filename}: " if exc.filename else ""
        error(f"{where}{exc.strerror or exc}")
        return EXIT_BAD_INPUT
    except Cancelled:
        error("cancelled; no partial outputs were left")
        return EXIT_CANCELLED
    except Stopped as exc:
        error(f"stopped by {exc.name}; no partial outputs were left")
        return SIGNAL_EXIT_BASE + exc.signum
    except KeyboardInterrupt:
        error("interrupted; no partial outputs were left")
        return EXIT_CANCELLED


#: A run stopped by signal N exits with this + N (the shell's convention: 143 for SIGTERM).
SIGNAL_EXIT_BASE = 128
SIGPIPE = 13  # its number on every POSIX system (Windows has no SIGPIPE)


def _silence_stdout() -> None:
    """Point standard output at the null device, so that flushing it at exit (into the
    closed pipe) raises nothing more (Python's documented recipe)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
#: Signals that stop a run as Ctrl-C does (the frame being written is dropped, its partial
#: files removed; ``--resume`` finishes the run): ``kill PID``, a closed terminal.
STOP_SIGNALS = ("SIGTERM", "SIGHUP")


class Stopped(KeyboardInterrupt):
    """A stop signal was received (see :data:`STOP_SIGNALS`); handled as Ctrl-C is."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        self.name = signal.Signals(signum).name
        super().__init__(self.name)


def _raise_stopped(signum, frame):
    raise Stopped(signum)


@contextlib.contextmanager
def stop_signals_as_interrupts():
    """While in the block, :data:`STOP_SIGNALS` raise :class:`Stopped` in the main thread
    (where the default would end the process at once, leaving partial files and, for a
    whole process group, the fork server's folder); a signal that is ignored (``nohup``)
    or handled by the caller is left as it is."""
    installed = {}
    if threading.current_thread() is threading.main_thread():
        for name in STOP_SIGNALS:
            signum = getattr(signal, name, None)
            if signum is not None and signal.getsignal(signum) is signal.SIG_DFL:
                installed[signum] = signal.signal(signum, _raise_stopped)
    try:
        yield
    finally:
        for signum, previous in installed.items():
            signal.signal(signum, previous)


def not_built(name: str) -> int:
    """What a subcommand that does not exist yet answers."""
    error(f"'{name}' is not built yet in this version")
    return EXIT_BAD_INPUT


def output_name(value: str | None, flag: str) -> str | None:
    """``value`` of an output option; FrameError if it is given but empty."""
    if value is not None and not str(value).strip():
        raise FrameError(None, f"{flag} is empty; give a file or folder name "
                               "(use . for the current folder)")
    return value


def batch_status(n_rows: int, n_failed: int, verb: str) -> int:
    """The exit status of a batch of ``n_rows`` frames of which ``n_failed`` failed: 0 all
    done; 1 some failed (the others are written); 2 every one failed (nothing written,
    said here)."""
    if n_rows and n_failed == n_rows:
        error(f"no frame could be {verb}: nothing was written")
        return EXIT_BAD_INPUT
    return EXIT_SOME_FAILED if n_failed else EXIT_OK


def frame_list(paths: list[str]) -> list[Path]:
    """The frame paths as given, unchecked: a missing or unreadable frame becomes that
    frame's error in the batch, not the end of it (empty names are refused). A frame named
    more than once (the same file, by any path or link) is kept once, with a warning: stack
    counted it twice in the average, register failed its second copy as an output that
    exists."""
    from ..io.atomic import file_identity

    for p in paths:
        if not str(p).strip():
            raise FrameError(None, "an empty frame name was given")
    first: dict = {}
    times: dict[Path, int] = {}
    for p in paths:
        path = first.setdefault(file_identity(p), Path(p))
        times[path] = times.get(path, 0) + 1
    for path, n in times.items():
        if n > 1:
            warn(f"{path}: listed {n} times; used once")
    return list(times)


def existing_frames(paths: list[str]) -> list[Path]:
    """The frame paths as given, checking that each exists (FrameError if not)."""
    out = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise FrameError(path, "file not found")
        if path.is_dir():
            raise FrameError(path, "is a folder; give the frame files (a shell glob works)")
        out.append(path)
    return out


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    """``--quiet``: no progress bar."""
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
