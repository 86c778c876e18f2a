"""What every bundle config does first, before it builds anything.

Configs reference ``checks: $sp_checks.start()`` from ``initialize`` (``monai.bundle run``) and
from ``network_def``'s ``_requires_`` (``verify_net_in_out`` and the exports, which build only the
network), so importing a config has no side effects of its own.
"""

from __future__ import annotations

from screener_plans import bundle_errors, bundle_overrides


def start() -> bool:
    """Refuse a misspelled override of this ``monai.bundle`` command and report Screener errors in
    one line from here on."""
    bundle_errors.install()
    bundle_overrides.refuse_unknown_overrides()
    return True
