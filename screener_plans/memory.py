"""Peak memory of this process, for benchmarks and the planner's worker report."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """Peak resident set size of this process's own address space, in MiB.

    Linux's ``getrusage`` ``ru_maxrss`` keeps the peak of whatever ran before an ``execve``
    (e.g. a parent that generated a large scan before starting a benchmark worker), so the
    kernel's per-address-space high-water mark ``VmHWM`` is read where it exists.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
