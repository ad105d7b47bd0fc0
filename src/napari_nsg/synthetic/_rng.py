"""Named, independent random streams: every quantity of a simulation has its own.

A stream depends only on the seed and its keys, so (for example) frame 3 of a
sequence is the same whether 5 or 50 frames are simulated, and whether frames
are rendered in order or one at a time.
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["stream"]


def stream(seed: int, *keys: str | int) -> np.random.Generator:
    """A generator for ``seed`` and a path of keys (strings or non-negative ints)."""
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
    words = [int(seed)]
    for key in keys:
        words.append(zlib.crc32(key.encode()) if isinstance(key, str) else int(key))
    return np.random.default_rng(np.random.SeedSequence(words))
