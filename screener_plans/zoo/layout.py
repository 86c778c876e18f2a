"""Where a trained scorer lives: a training run folder or a published model bundle.

A *run* (``screener plan-and-train``) keeps each stage's weights in ``RUN/<stage>/models/``.
A *published bundle* (``screener zoo publish``) is a MONAI bundle that is also usable as a
run folder for inference: ``plans.json`` and ``calibration.json`` at its root, and the whole
scorer (descriptor + condition + density) as one state dict in ``models/model.pt`` with its
configuration in ``models/density_config.json``. ``load_run_scorer`` loads either, or a
TorchScript export of either.
"""

from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

from screener_plans.errors import ScreenerError

BUNDLE_WEIGHTS = Path("models") / "model.pt"
BUNDLE_SCORER_CONFIG = Path("models") / "density_config.json"
BUNDLE_TORCHSCRIPT = Path("models") / "model.ts"
BUNDLE_ONNX = Path("models") / "model.onnx"
BUNDLE_METADATA = Path("configs") / "metadata.json"


def is_bundle(path) -> bool:
    """True when ``path`` is a published Screener bundle (combined weights, not a training run)."""
    path = Path(path)
    return (path / BUNDLE_METADATA).is_file() and (path / BUNDLE_SCORER_CONFIG).is_file()


def scorer_config_path(root) -> Path:
    """The scorer configuration (condition, density, sizes) of a bundle or a run."""
    from screener_plans.engines.models import density_config_path

    root = Path(root)
    return root / BUNDLE_SCORER_CONFIG if is_bundle(root) else density_config_path(root)


def read_scorer_config(root) -> dict:
    path = scorer_config_path(root)
    if not path.exists():
        raise ScreenerError(
            f"{path}: density model not found; train it first (`screener train {root} --stage density`)"
        )
    try:
        cfg = json.loads(path.read_text())
        for key in ("condition", "density", "dim", "cond_dim", "preset"):
            cfg[key]
    except (ValueError, KeyError, TypeError) as e:
        raise ScreenerError(f"{path}: unreadable scorer configuration ({type(e).__name__}: {e})") from None
    return cfg


def build_scorer(plans: dict, cfg: dict):
    """An untrained ``Scorer`` with the architecture of ``plans`` and the scorer config ``cfg``."""
    from screener_plans.engines.models import Scorer, build_density_model, build_untrained_features

    return Scorer(build_untrained_features(plans, cfg), build_density_model(cfg))


def load_bundle_scorer(bundle_dir, plans: dict):
    """The scorer of a published bundle (``models/model.pt``), frozen, on CPU."""
    from screener_plans.engines.models import check_preprocessing, freeze, load_into, load_state

    bundle_dir = Path(bundle_dir)
    cfg = read_scorer_config(bundle_dir)
    check_preprocessing(cfg, plans, scorer_config_path(bundle_dir))
    path = bundle_dir / BUNDLE_WEIGHTS
    scorer = freeze(load_into(build_scorer(plans, cfg), load_state(path, "scorer"), path, "scorer"))
    scorer.weights_id = bundle_weights_id(bundle_dir)
    return scorer


def bundle_weights_id(bundle_dir) -> str | None:
    """The ``weights_id`` a published bundle's metadata records (None for bundles made before it)."""
    try:
        meta = json.loads((Path(bundle_dir) / BUNDLE_METADATA).read_text())
        return meta.get("screener", {}).get("weights_id")
    except (OSError, ValueError, AttributeError):
        return None


def present_weights_id(root) -> str | None:
    """The weights id of what ``root`` (a run or a published bundle) holds now (None: no trained scorer)."""
    if is_bundle(root):
        return bundle_weights_id(root)
    from screener_plans.engines.models import run_weights_id

    try:
        return run_weights_id(root, read_scorer_config(root))
    except ScreenerError:
        return None  # plans only, scored by a TorchScript file: nothing to compare it with


def torchscript_path(run_dir, torchscript) -> Path | None:
    """``--torchscript``: None/False -> None; True (or 'true') -> RUN/models/model.ts; else the path given."""
    if torchscript in (None, False, "", 0) or str(torchscript).lower() in ("false", "0", "no"):
        return None
    if torchscript is True or str(torchscript).lower() in ("true", "1", "yes"):
        return Path(run_dir) / BUNDLE_TORCHSCRIPT
    return Path(torchscript)


def load_run_scorer(run_dir, plans: dict, torchscript=None):
    """The scorer of a run or a published bundle; from its TorchScript export when ``torchscript`` asks."""
    ts = torchscript_path(run_dir, torchscript)
    if ts is not None:
        from screener_plans.zoo.export import load_torchscript_scorer

        return load_torchscript_scorer(ts, plans, expected_weights_id=present_weights_id(run_dir), source=run_dir)
    if is_bundle(run_dir):
        return load_bundle_scorer(run_dir, plans)
    from screener_plans.engines.models import load_scorer

    return load_scorer(run_dir, plans)


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
