"""Imported by the fork server of the local workers only (as a preload, see
:func:`napari_nsg.pipeline.executors._process_pool`): on Linux the kernel kills the
server when the thread that started it ends (``PR_SET_PDEATHSIG``), even by SIGKILL, and
the server's death kills its children, the workers (their own parent-death signal)."""

from __future__ import annotations

from .executors import die_with_parent_thread

die_with_parent_thread()
