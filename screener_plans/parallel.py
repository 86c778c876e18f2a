"""Worker pools for per-case jobs (fingerprinting, preprocessing).

Workers start from a fork server rather than by forking the caller: a caller that has already
run PyTorch/OpenMP code would hand its workers a thread pool they can deadlock on. The server
preloads MONAI's readers once, so workers start quickly.
"""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor

PRELOAD = ["monai.transforms", "screener_plans.data.preprocess", "screener_plans.planning.fingerprint"]


def case_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool for per-case work, one volume in memory per worker."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
