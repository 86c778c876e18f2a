"""Peak-memory figures of benchmark workers are their own, not their parent's."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from screener_plans.memory import peak_rss_mb


def test_peak_rss_grows_with_use_and_is_not_inherited_across_exec():
    before = peak_rss_mb()
    block = np.ones(400 * 2**20 // 8)  # 400 MiB, every page touched
    after = peak_rss_mb()
    assert after - before > 300, (before, after)
    child = subprocess.run([sys.executable, "-c", "from screener_plans.memory import peak_rss_mb; "
                            "print(peak_rss_mb())"], capture_output=True, text=True, check=True)
    del block
    # getrusage's ru_maxrss would report at least the parent's peak here
    assert float(child.stdout) < after - 300, (float(child.stdout), after)
