"""Seeded fuzzing of read_frame: every mutant is read correctly or refused with FrameError.

Mutants of six valid files (uint16, float32 RGB, image + table, and RICE,
GZIP_2 and HCOMPRESS ``.fz``): header values (NAXISn, BITPIX, BZERO, TFIELDS,
ZNAXISn, ZBITPIX, ZCMPTYPE, ZTILEn, ...), inserted, removed and bit-flipped
cards, damaged data and compressed tiles, truncation and appended bytes. They
are read in child processes with a per-file watchdog and an address-space
limit, so a hang or a runaway allocation is a failure, not a stuck suite.
``benchmarks/fuzz_read.py`` runs thousands; the counts are in
``docs/reading-limits.md``.
"""

from __future__ import annotations

import pytest

from napari_nsg.io import _fuzz

TIMEOUT_S = 5.0
MEMORY_LIMIT = 2 * 2**30


def _check_run(tmp_path, count, seed):
    counts, failures, _ = _fuzz.run(count, tmp_path, seed=seed, timeout=TIMEOUT_S,
                                    memory_limit=MEMORY_LIMIT)
    shown = "\n".join(f"{p.name} [{what}] -> {result}" for p, what, result in failures[:20])
    assert not failures, f"{len(failures)} mutants broke the promise ({dict(counts)}):\n{shown}"
    assert sum(counts.values()) == count
    # Neither everything refused nor everything accepted: the mutants exercise both paths.
    assert counts["ok"] > 0.15 * count, counts
    assert counts["frame_error"] > 0.3 * count, counts
    return counts


def test_fuzz_read_frame(tmp_path):
    _check_run(tmp_path, 400, seed=20261130)


@pytest.mark.slow
def test_fuzz_read_frame_large(tmp_path):
    _check_run(tmp_path, 4000, seed=7)


_MISBEHAVING_CHILD = """
import json, os, resource, sys, time
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
print("READY", flush=True)
for line in sys.stdin:
    name = line.strip()
    if name == "sleep":
        time.sleep(60)
    if name == "abort":
        os.abort()
    try:
        if name == "alloc":
            bytearray(8 * 2**30)
        out = ["read", "float32", [2, 2]]
    except MemoryError as exc:
        out = ["memory", repr(exc)]
    print(json.dumps(out), flush=True)
"""


def test_watchdog_reports_hang_crash_and_memory_and_goes_on():
    """The harness itself: a hang is killed, a crash noted, and the rest of the batch still read."""
    names = ["a", "sleep", "b", "abort", "c", "alloc", "d"]
    results = _fuzz.read_in_children(names, timeout=1.0, memory_limit=MEMORY_LIMIT,
                                     child=_MISBEHAVING_CHILD)
    kinds = [r[0] for r in results]
    assert kinds == ["read", "hang", "read", "crash", "read", "memory", "read"]
    assert results[3][1] < 0  # killed by a signal (SIGABRT)
