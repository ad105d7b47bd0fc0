"""Plain values for reports: per-channel lists of floats, JSON without NaN, table cells."""

from __future__ import annotations

import math

import numpy as np


def floats(values) -> list[float]:
    """A scalar or array as a list of Python floats (one per channel)."""
    return [float(v) for v in np.atleast_1d(values)]


def json_clean(value):
    """``value`` with numpy scalars made Python numbers and NaN/inf made None (JSON null).

    Recurses into dicts, lists and tuples.
    """
    if isinstance(value, dict):
        return {k: json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_clean(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    return value


def fmt_value(value, spec: str) -> str:
    """``format(value, spec)`` for a table cell; ``"-"`` for None, NaN or inf."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)
