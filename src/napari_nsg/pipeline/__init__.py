"""Batch runners over files: progress, cancellation, resume, reports, executors;
and :class:`NsgSession`, the Qt-free state of an interactive NSG run."""

__all__ = ["FrameInfo", "FramePreview", "NsgSession"]


def __getattr__(name: str):
    # the session pulls in the whole NSG pipeline: import it on first use only
    if name in __all__:
        from . import session

        return getattr(session, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
