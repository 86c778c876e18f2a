"""Model zoo: publish trained runs as MONAI bundle zips, list and fetch them, export TorchScript/ONNX."""

from screener_plans.inference.loader import load_run_scorer, load_torchscript_scorer
from screener_plans.layout import is_bundle

from .export import PatchScorer, export_onnx, export_torchscript
from .fetch import fetch
from .publish import format_models, list_models, publish

__all__ = [
    "PatchScorer",
    "export_onnx",
    "export_torchscript",
    "fetch",
    "format_models",
    "is_bundle",
    "list_models",
    "load_run_scorer",
    "load_torchscript_scorer",
    "publish",
]
