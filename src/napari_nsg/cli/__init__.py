"""The ``napari-nsg`` command.

Each subcommand lives in its own module with ``add_parser(subparsers)`` and
``run(args) -> int``. Exit status: 0 all done; 1 some frames failed (the others
are written, the report says why); 2 bad arguments or unusable inputs; 130
interrupted (Ctrl-C), 143 / 129 stopped by SIGTERM / SIGHUP, no partial outputs
left either way.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from .. import __version__
from ..io.errors import FrameWarning
from ._common import EXIT_BAD_INPUT, run_guarded, stop_signals_as_interrupts, warn

SUBCOMMANDS = ("demo", "rank", "normalize", "register", "stack", "msgr")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="napari-nsg",
        description="Remove sky gradients from astrophotographs: NormalizeScaleGradient "
        "(normalize sub-frames to a reference) and Multiscale Gradient Removal "
        "(correct a narrow-field image with a wide-field one).",
    )
    parser.add_argument("--version", action="version", version=f"napari-nsg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def _frame_warning_printer(default):
    """A ``warnings.showwarning`` that prints a :class:`FrameWarning` as one line,
    once per message, without Python's file:line prefix (a frame read twice in one
    run warns once); other warnings go to ``default``."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, FrameWarning):
            return default(message, category, filename, lineno, file, line)
        text = str(message)
        if text not in seen:
            seen.add(text)
            warn(text)

    return show


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``napari-nsg`` command; returns the exit status."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 0 for --help/--version, 2 for bad arguments
        return int(exc.code or 0)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    previous = warnings.showwarning
    warnings.showwarning = _frame_warning_printer(previous)
    try:
        with stop_signals_as_interrupts():
            return run_guarded(args._run, args)
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
