"""Run a per-case job (fingerprinting, preprocessing) over many cases in worker processes.

Workers start from a fork server rather than by forking the caller: a caller that has already
run PyTorch/OpenMP code would hand its workers a thread pool they can deadlock on. The server
preloads MONAI's readers once, so workers start quickly. Pools are replaced every few cases
per worker, so allocator growth in long-lived workers cannot accumulate over a large archive.
Ctrl-C is the caller's alone: workers never see it (a worker interrupted while holding the
pool's queue lock can hang the pool's shutdown), and the caller stops them at once.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from multiprocessing import forkserver

PRELOAD = ["monai.transforms", "screener_plans.data.preprocess", "screener_plans.planning.fingerprint"]
CASES_PER_WORKER = 8


_THREADS_SHARE: int | None = None  # set in case-pool workers: their share of the cores


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask: a container's or taskset's limit)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers() -> int:
    """Worker processes: one per CPU, capped by memory (about 3 GB per worker for big scans)."""
    try:
        avail_gb = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (ValueError, OSError, AttributeError):
        avail_gb = 8.0
    return max(1, min(usable_cpus(), int(avail_gb // 3)))


def worker_threads() -> int:
    """Threads for one volume's GIL-releasing work (scipy filters, gzip): the cores, at most 8;
    in a case-pool worker, its share of the cores, so N workers never run N x cores threads."""
    if _THREADS_SHARE is not None:
        return _THREADS_SHARE
    return max(1, min(8, usable_cpus()))


def _init_worker(threads: int) -> None:
    global _THREADS_SHARE
    _THREADS_SHARE = threads
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the whole group


@contextmanager
def _sigint_ignored():
    """Ignore SIGINT while a child process is started: an ignored signal stays ignored across
    fork and exec (a blocked one does not survive multiprocessing's spawn)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop_now(pool: ProcessPoolExecutor) -> None:
    """Drop the queued cases and end the running ones (their temporaries are swept on re-run),
    and the fork server, which could still be preloading with worker starts queued."""
    pool.shutdown(wait=False, cancel_futures=True)
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for p in procs:
        p.terminate()
    server = getattr(forkserver, "_forkserver", None)
    pid = getattr(server, "_forkserver_pid", None)
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)  # the next pool starts a fresh one
        except OSError:
            pass
    for p in procs:
        p.join(timeout=5)


def case_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool for per-case work, one volume in memory per worker."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    with _sigint_ignored():  # the server, and every worker it forks, never sees Ctrl-C
        forkserver.ensure_running()
    share = min(8, max(1, usable_cpus() // max(1, workers)))
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(share,))


def map_cases(fn: Callable, items: Iterable, workers: int, on_result: Callable, on_error: Callable) -> None:
    """Call ``on_result(item, fn(item))`` for every item, in ``workers`` processes.

    ``fn`` takes one item; a worker that dies (killed for memory, say) gives
    ``on_result(item, on_error(item, exc))`` instead, so one bad case never stops the rest.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        for item in items:
            on_result(item, fn(item))
        return
    chunk = workers * CASES_PER_WORKER
    for start in range(0, len(items), chunk):
        pool = case_pool(workers)
        try:
            futures = {pool.submit(fn, item): item for item in items[start : start + chunk]}
            for fut in as_completed(futures):
                item = futures[fut]
                try:
                    result = fut.result()
                except Exception as e:
                    result = on_error(item, e)
                on_result(item, result)
        except BaseException:  # Ctrl-C, or an error in on_result: do not wait for the queue
            _stop_now(pool)
            raise
        pool.shutdown(wait=True)
