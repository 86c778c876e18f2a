"""``install()`` (bundle configs call it through ``bundle_checks.start``) makes a Screener error end
the process with one line.

``python -m monai.bundle run`` wraps an error raised while evaluating a config expression in
MONAI's "Failed to evaluate ConfigExpression" and prints both tracebacks, 60 lines in which the
user's actual problem (a missing plans file, an untrained stage) is easy to miss. The hook
prints ``screener: error: <problem>`` instead; ``SCREENER_TRACEBACK=1`` restores the traceback.
Any other error keeps Python's usual report.
"""

from __future__ import annotations

import os
import sys

from screener_plans.bundle_runner import find_screener_error


def _one_line_for_screener_errors(kind, value, tb):
    found = find_screener_error(value) if not os.environ.get("SCREENER_TRACEBACK") else None
    if found is None:
        _one_line_for_screener_errors.previous(kind, value, tb)
        return
    sys.stderr.write(f"screener: error: {found}\n")
    sys.stderr.flush()


def install() -> None:
    """Report a Screener error that ends the process in one line (once; other errors unchanged)."""
    if sys.excepthook is not _one_line_for_screener_errors:
        _one_line_for_screener_errors.previous = sys.excepthook
        sys.excepthook = _one_line_for_screener_errors
