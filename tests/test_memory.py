"""Peak-memory figures of benchmark workers are their own, not their parent's; freed memory is
kept for reuse instead of being faulted in again."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from screener_plans.memory import peak_rss_mb


def test_peak_rss_grows_with_use_and_is_not_inherited_across_exec():
    before = peak_rss_mb()
    block = np.ones(400 * 2**20 // 8)  # 400 MiB, every page touched
    after = peak_rss_mb()
    assert after - before > 300, (before, after)
    child = subprocess.run(
        [sys.executable, "-c", "from screener_plans.memory import peak_rss_mb; print(peak_rss_mb())"],
        capture_output=True,
        text=True,
        check=True,
    )
    del block
    # getrusage's ru_maxrss would report at least the parent's peak here
    assert float(child.stdout) < after - 300, (float(child.stdout), after)


FAULTS = r"""
import resource, sys, torch
from screener_plans.memory import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # 48 MiB: above glibc's largest adaptive mmap threshold
    torch.empty(12 * 2**20).fill_(1.0)
before = faults()
for _ in range(10):
    torch.empty(12 * 2**20).fill_(1.0)
print(kept, faults() - before)
"""


def _faults(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
    kept, n = out.stdout.split()
    return kept == "True", int(n)


@pytest.mark.slow
def test_freed_tensor_memory_is_reused_without_page_faults():
    kept, with_setting = _faults("keep")
    if not kept:
        pytest.skip("not glibc: malloc's thresholds cannot be set")
    _, default = _faults("default")
    pages = 10 * 48 * 2**20 // 4096
    assert default > 0.5 * pages, default  # each 48 MiB block mapped afresh and zero-filled
    assert with_setting < 0.02 * pages, with_setting
