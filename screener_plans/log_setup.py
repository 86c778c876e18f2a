"""Root-logger state for in-process runs: the CLI's stderr handler, and bundles that replace it."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager


@contextmanager
def root_logger_kept():
    """Put the root logger's handlers and level back when the block ends.

    A bundle's ``logging.conf`` replaces the root handlers with one bound to the ``sys.stdout`` of
    that moment; callers that go on (the CLI's next message, a notebook, a test) must not keep it.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield root
    finally:
        for h in root.handlers:
            if h not in handlers:
                root.removeHandler(h)
                h.close()
        for h in handlers:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(level)


def log_to_stderr(root: logging.Logger) -> None:
    """Screener's own messages: plain lines on the current ``sys.stderr``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for h in root.handlers[:]:
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
