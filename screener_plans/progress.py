"""Progress of a loop over cases: a tqdm bar on a terminal, one line per update in logs."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress:
    """Count, rate and time left of ``total`` items, at most every ``interval`` seconds.

    On a terminal it is a tqdm bar; in logs (CI, nohup) it prints a line per update. Items found
    already done (``skip``) count toward the total but not toward the rate.
    """

    def __init__(
        self, total: int, label: str, unit: str = "cases", stream=None, interval: float = 1.0, enabled: bool = True
    ):
        self.total, self.label, self.unit = total, label, unit
        self.stream = stream or sys.stderr
        self.interval, self.enabled = interval, enabled and total > 0
        self.n, self.skipped, self.start, self._last = 0, 0, time.monotonic(), 0.0
        # a bar redrawn with "\r" is unreadable in a log file: there, plain lines
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._bar = None
        if self.enabled and tty:
            item = unit[:-1] if unit.endswith("s") else unit
            self._bar = tqdm(total=total, desc=label, unit=item, file=self.stream, mininterval=interval)

    def skip(self, k: int = 1) -> None:
        """``k`` items need no work (finished by an earlier run)."""
        self.skipped += k
        if self._bar is not None:
            # counted, but not as work done since the last refresh, so the rate stays the work's
            self._bar.n += k
            self._bar.last_print_n += k
            self._bar.set_postfix_str(f"{self.skipped} already done")
            if self._bar.n >= self.total:
                self._bar.close()
            self.n += k
            return
        self.update(k)

    def update(self, k: int = 1, extra: str = "") -> None:
        self.n += k
        if self._bar is not None:
            if extra:
                self._bar.set_postfix_str(extra, refresh=False)
            self._bar.update(k)
            if self.n >= self.total:
                self._bar.close()
            return
        now = time.monotonic()
        if self.enabled and (now - self._last >= self.interval or self.n >= self.total):
            self._last = now
            self.stream.write(self._line(now, extra) + "\n")
            self.stream.flush()

    def _line(self, now: float, extra: str) -> str:
        elapsed = now - self.start
        worked = self.n - self.skipped
        rate = worked / elapsed if worked and elapsed > 0 else 0.0
        # with nothing worked on yet (all done by an earlier run, so far) a rate would read 0.00
        speed = f"{rate:.2f} {self.unit}/s" if worked else f"{self.skipped} already done"
        eta = (self.total - self.n) / rate if rate > 0 else 0.0
        interval = tqdm.format_interval
        return (
            f"{self.label} {self.n}/{self.total} [{100 * self.n / self.total:3.0f}%] "
            f"{speed} elapsed {interval(elapsed)} ETA {interval(eta)}{(' ' + extra) if extra else ''}"
        )
