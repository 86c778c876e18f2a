"""Where the per-scan work of a folder prediction runs: background threads, or in line."""

from __future__ import annotations

import torch


def overlap_io(device: torch.device) -> bool:
    """Whether reading and writing scans in background threads speeds up scoring on ``device``:
    on a GPU, or where PyTorch's threads leave a CPU core free (on 2 cores they only compete)."""
    from screener_plans.parallel import usable_cpus

    return device.type != "cpu" or usable_cpus() > torch.get_num_threads()


class InlineExecutor:
    """``ThreadPoolExecutor``'s ``submit`` running each task in this thread: at once, or
    (``deferred``) when its ``result()`` is first asked for."""

    def __init__(self, deferred: bool = False):
        self.deferred = bool(deferred)

    def submit(self, fn, *args):
        future = _InlineFuture(fn, args)
        if not self.deferred:
            future.result_or_error()
        return future

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _InlineFuture:
    """The ``result()`` of a task run in the caller's thread; an error is kept for ``result()``,
    as a pool would keep it (Ctrl-C goes through at once)."""

    def __init__(self, fn, args):
        self._task, self._value, self._error = (fn, args), None, None

    def result_or_error(self) -> None:
        if self._task is not None:
            fn, args = self._task
            self._task = None
            try:
                self._value = fn(*args)
            except Exception as e:
                self._error = e

    def result(self):
        self.result_or_error()
        if self._error is not None:
            raise self._error
        return self._value
