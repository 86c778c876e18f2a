"""A bundle's own root on the ``monai.bundle`` command line (``default_bundle_root``).

The files of runs and bundles are named in :mod:`screener_plans.layout`; scorers load through
:mod:`screener_plans.inference.loader`. ``load_run_scorer`` stays importable from here: the
inference configs of bundles published with Screener 0.1.0 call it by this path.
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

from screener_plans.inference.loader import load_run_scorer  # noqa: F401
from screener_plans.layout import (  # noqa: F401  (the zoo modules' names for them)
    BUNDLE_METADATA,
    BUNDLE_ONNX,
    BUNDLE_SCORER_CONFIG,
    BUNDLE_TORCHSCRIPT,
    BUNDLE_WEIGHTS,
    is_bundle,
)


def default_bundle_root(argv=None) -> str:
    """The bundle folder of ``python -m monai.bundle run --config_file B/configs/X.yaml`` (else '.').

    MONAI gives configs no way to know their own path; the command line names it, so a
    fetched bundle runs without ``--bundle_root`` from any working folder.
    """
    argv = sys.argv if argv is None else argv
    value = None
    for i, a in enumerate(argv):
        if a == "--config_file" and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith("--config_file="):
            value = a.split("=", 1)[1]
    if not value:
        return "."
    if value.lstrip().startswith("["):
        try:
            value = list(ast.literal_eval(value))[0]
        except (ValueError, SyntaxError, IndexError, TypeError):
            return "."
    config_dir = Path(value).parent
    root = config_dir.parent if config_dir.name == "configs" else config_dir
    return os.fspath(root) or "."
