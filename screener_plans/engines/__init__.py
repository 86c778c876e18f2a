"""Ignite training engines, handlers and the small functions bundle configs call."""

from screener_plans.engines import bundle, density, device, handlers, models, ssl, steps  # noqa: F401  (bundle configs import these)
