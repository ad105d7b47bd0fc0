"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder of real FITS frames (``../shared/data/real``); skips the test if missing."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data folder {REAL_DATA} is missing")
    return REAL_DATA


def pytest_sessionfinish(session, exitstatus):
    """A run in which no test passed is a failure (pytest's "no tests ran", 5).

    pytest already exits 5 when nothing is collected; this also catches a run
    where everything was skipped or deselected, which proves nothing.
    """
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    if exitstatus == 0 and not reporter.stats.get("passed"):
        session.exitstatus = 5
