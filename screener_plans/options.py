"""Options given as text (``--flag false`` from a shell, a bundle override) read strictly."""

from __future__ import annotations

from screener_plans.errors import ScreenerError


def as_bool(value, flag: str) -> bool:
    """A yes/no option: ``True``/``"true"``/``"yes"``/``1`` or ``False``/``"false"``/``"no"``/``0``.

    Python's ``bool("false")`` is True, and fire passes ``--resume false`` as the text
    ``"false"``: every yes/no option goes through here, and anything else is refused.
    """
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", "none", ""):
        return False
    raise ScreenerError(f"--{flag} must be true or false, got {value!r}")


def as_number(value, flag: str, kind=int, minimum=None, above=None):
    """A numeric option (``kind`` int or float), checked before any work: ``--cases abc`` or
    ``--budget-minutes -1`` is one line naming the flag, not a traceback after planning."""
    if value is None:
        return None
    what = "an integer" if kind is int else "a number"
    try:
        if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
            raise ValueError
        number = kind(value)
    except (TypeError, ValueError):
        raise ScreenerError(f"--{flag} must be {what}, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ScreenerError(f"--{flag} must be {what} >= {minimum}, got {value!r}")
    if above is not None and not number > above:
        raise ScreenerError(f"--{flag} must be {what} > {above}, got {value!r}")
    return number


def check_device(device) -> str:
    """``--device`` is auto, cpu, cuda, cuda:N (or mps); checked before any work."""
    import re

    text = "auto" if device in (None, "") else str(device)
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", text):
        raise ScreenerError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return text
