"""Peak memory of the current process, for the benchmarks' child processes."""

from __future__ import annotations

import resource


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB.

    Reads ``VmHWM`` from ``/proc/self/status``, which starts afresh when a
    process execs. ``getrusage().ru_maxrss`` is not used on Linux because it is
    kept across ``execve``: a child started from a big parent would report the
    parent's peak.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # not Linux
