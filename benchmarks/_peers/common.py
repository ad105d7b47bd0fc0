"""Shared pieces: timing, the tests' scoring helpers, the rows the tables are built from."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"


def tests_module(name: str):
    """A module of ``tests/`` (the same scoring helpers as the accuracy tests and docs/nsg.md)."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    return __import__(name)


def timed(func, *args, **kwargs):
    """``(seconds, result)`` of one call."""
    t0 = time.perf_counter()
    out = func(*args, **kwargs)
    return time.perf_counter() - t0, out


@dataclass
class Score:
    """One tool's results on one job, gathered over cases."""

    tool: str
    values: dict[str, list[float]] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)
    error: str | None = None

    def add(self, **values: float) -> None:
        for key, value in values.items():
            self.values.setdefault(key, []).append(float(value))

    def median(self, key: str) -> float:
        vals = self.values.get(key, [])
        return float(np.median(vals)) if vals else float("nan")

    def worst(self, key: str) -> float:
        vals = self.values.get(key, [])
        return float(np.max(vals)) if vals else float("nan")


def scores(names: list[str]) -> dict[str, Score]:
    return {n: Score(n) for n in names}
