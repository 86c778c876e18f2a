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
