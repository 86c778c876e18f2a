"""User-facing errors.

Anything a user can cause (bad path, unreadable scan, invalid plans) raises ``ScreenerError``
with a one-line message naming the file and the problem; the CLI prints it without a traceback.
"""


class ScreenerError(Exception):
    """An error caused by the user's input, reported as one line without a traceback."""


class BadCaseError(ScreenerError):
    """A single case (scan) cannot be used; ``path`` names it, ``reason`` says why."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
