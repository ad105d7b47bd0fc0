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
