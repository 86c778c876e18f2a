"""A small progress reporter: count, rate and ETA on one line of stderr."""

from __future__ import annotations

import sys
import time


def _fmt(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Prints ``label  n/total [pct] rate ETA`` at most every ``interval`` seconds.

    On a terminal it redraws one line; in logs (CI, nohup) it prints a line per update.
    Items found already done (``skip``) count toward the total but not toward the rate.
    """

    def __init__(
        self, total: int, label: str, unit: str = "cases", stream=None, interval: float = 1.0, enabled: bool = True
    ):
        self.total, self.label, self.unit = total, label, unit
        self.stream = stream or sys.stderr
        self.interval, self.enabled = interval, enabled and total > 0
        self.n, self.skipped, self.start, self._last = 0, 0, time.monotonic(), 0.0
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def skip(self, k: int = 1) -> None:
        """``k`` items need no work (finished by an earlier run)."""
        self.skipped += k
        self.update(k)

    def update(self, k: int = 1, extra: str = "") -> None:
        self.n += k
        now = time.monotonic()
        if self.enabled and (now - self._last >= self.interval or self.n >= self.total):
            self._last = now
            self._draw(now, extra)

    def _draw(self, now: float, extra: str) -> None:
        elapsed = now - self.start
        worked = self.n - self.skipped
        rate = worked / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.n) / rate if rate > 0 else 0.0
        # with nothing worked on yet (all done by an earlier run, so far) a rate would read 0.00
        speed = f"{rate:.2f} {self.unit}/s" if worked else f"{self.skipped} already done"
        line = (
            f"{self.label} {self.n}/{self.total} [{100 * self.n / self.total:3.0f}%] "
            f"{speed} elapsed {_fmt(elapsed)} ETA {_fmt(eta)}{(' ' + extra) if extra else ''}"
        )
        if self._tty:
            self.stream.write("\r" + line + ("\n" if self.n >= self.total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
