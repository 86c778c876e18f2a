"""Screener: unsupervised pathology screening in 3D CT (descriptor, condition and density models)."""

__version__ = "0.1.0"
