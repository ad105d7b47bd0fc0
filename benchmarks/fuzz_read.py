"""Fuzz read_frame with thousands of mutated FITS files and print the outcome counts.

Usage::

    python benchmarks/fuzz_read.py [--count 10000] [--seed 0] [--timeout 5] [--memory-gib 3]
                                   [--src PATH] [--keep DIR]

Each mutant is read in a child process (many per child) under a per-file
watchdog and an address-space limit. Outcomes:

ok           read as float32 with the seed's shape
grown        a mutated NAXISn claims a larger image that still lies inside the file:
             read as the header says (not detectable from the header alone)
frame_error  refused with FrameError naming the file
wrong        read, but with another shape or type                      (failure)
unnamed      FrameError whose message does not name the file            (failure)
other        any other exception                                        (failure)
memory       MemoryError under the address-space limit                   (failure)
hang         no answer within the timeout                                (failure)
crash        the child died (e.g. SIGABRT inside a codec)                (failure)

``--src PATH`` makes the children import napari_nsg from another source tree
(e.g. a ``git worktree`` of an older commit), to compare readers on the same
mutants. The counts are quoted in docs/reading-limits.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import Counter

from napari_nsg.io import _fuzz

OUTCOMES = ("ok", "grown", "frame_error", "wrong", "unnamed", "other", "memory", "hang", "crash")
SHOWN_FAILURES = 25


def _failure_kinds(failures) -> Counter:
    kinds: Counter = Counter()
    for _, _, result in failures:
        detail = str(result[1]).split(":")[0] if result[0] == "other" else ""
        kinds[f"{result[0]} {detail}".strip()] += 1
    return kinds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per file")
    parser.add_argument("--memory-gib", type=float, default=3.0, help="address-space limit")
    parser.add_argument("--src", help="read with the napari_nsg under this source folder")
    parser.add_argument("--keep", help="write the mutants here (kept) instead of a temp folder")
    args = parser.parse_args(argv)
    if args.src:
        os.environ["PYTHONPATH"] = os.path.abspath(args.src)  # the children inherit it
    with tempfile.TemporaryDirectory() as tmp:
        counts, failures, seconds = _fuzz.run(args.count, args.keep or tmp, seed=args.seed,
                                              timeout=args.timeout,
                                              memory_limit=int(args.memory_gib * 2**30))
    reader = args.src or "this checkout"
    print(f"{args.count} mutants, seed {args.seed}, reader from {reader}: {seconds:.1f} s "
          f"({1000 * seconds / args.count:.1f} ms per mutant)")
    print(f"{'outcome':<12} {'count':>7} {'share':>7}")
    for outcome in OUTCOMES:
        print(f"{outcome:<12} {counts[outcome]:>7} {counts[outcome] / args.count:>7.1%}")
    if failures:
        print("\nfailures by kind:")
        for kind, n in _failure_kinds(failures).most_common():
            print(f"  {n:>5}  {kind}")
        print(f"\nfirst {min(SHOWN_FAILURES, len(failures))} failures:")
        for path, what, result in failures[:SHOWN_FAILURES]:
            print(f"  {path.name} [{what}] -> {str(result)[:160]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
