"""Old home of :mod:`screener_plans.device`: bundles published with Screener 0.1.0 import it from here."""

from screener_plans.device import *  # noqa: F401,F403
