"""Atomic file writing: a temporary name in the same folder, then a rename.

An interrupted run therefore never leaves a half-written output under the
final name; at worst a hidden ``.<name>.partial-*`` file, which
:func:`remove_partials` cleans up.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import FrameError, OutputExistsError

PARTIAL_TAG = ".partial-"


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
        temporary file is removed and ``path`` is left as it was.
    """
    final = Path(path)
    if final.exists() and not overwrite:
        raise OutputExistsError(final, "output exists (use overwrite to replace it)")
    folder = final.parent if str(final.parent) else Path(".")
    if not folder.is_dir():
        raise FrameError(final, f"output folder {folder} does not exist")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}{PARTIAL_TAG}", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if final.exists() and not overwrite:  # appeared while we were writing
            raise OutputExistsError(final, "output appeared while writing; not replaced")
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def remove_partials(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files left by an interrupted atomic write in ``folder``."""
    removed = []
    for p in Path(folder).glob(f".*{PARTIAL_TAG}*"):
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed
