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


def reset_peak_rss() -> bool:
    """Restart ``peak_rss_mb`` from the present RSS (Linux ``clear_refs``), so that one phase of a
    benchmark is measured on its own; returns False where the kernel does not offer it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
_kept = False


def keep_freed_memory(mmap_threshold_mb: int = 256) -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    PyTorch's CPU tensors come from ``malloc``. With glibc's defaults, every network call's
    activations above its (adaptive) mmap threshold, and every freed top of the heap, go back
    to the kernel and come back as fresh zeroed pages: about 1.5 million page faults per
    sliding-window pass over a 512x512x300 scan at the tiny preset. Raising the thresholds
    removes them; peak memory stays about the same because the process reuses what it holds.
    Blocks larger than ``mmap_threshold_mb`` (whole scans) are still mapped and returned.
    Returns whether the setting took effect (glibc only; a no-op elsewhere).
    """
    global _kept
    if _kept:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        # older glibc refuses mmap thresholds above 32 MiB; that still covers a window's activations
        ok = (
            any(libc.mallopt(_M_MMAP_THRESHOLD, mb << 20) == 1 for mb in (int(mmap_threshold_mb), 32))
            and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
        )
    except (OSError, AttributeError):
        return False
    _kept = ok
    return ok
