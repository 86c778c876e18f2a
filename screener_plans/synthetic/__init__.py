"""Synthetic chest/abdomen CT phantoms with lesions: the demo's and the benchmarks' data."""

from screener_plans.synthetic.phantoms import LESION_KINDS, make_phantom, make_synthetic_dataset

__all__ = ["LESION_KINDS", "make_phantom", "make_synthetic_dataset"]
