"""Where a run's files live: the one module that names them (nnU-Net's trained-folder layout).

A *run* (``screener plan`` ... ``screener calibrate``)::

    RUN/fingerprint.json  plans.json  calibration.json
    RUN/preprocessed/<case>/
    RUN/<stage>/models/model.pt            a stage's trained weights (stage: descriptor, condition, density)
    RUN/<stage>/models/training.json       the steps they were trained
    RUN/<stage>/checkpoints/checkpoint_<step>.pt
    RUN/density/models/density_config.json the scorer's choices (features, condition, density)

A *published bundle* (``screener zoo publish``) is a MONAI bundle that is also a run for
inference: ``plans.json`` and ``calibration.json`` at its root, the whole scorer as one state
dict in ``models/model.pt`` with its choices in ``models/density_config.json``, and optional
exports ``models/model.ts`` / ``models/model.onnx``. ``screener_plans.inference.loader`` loads
a scorer from any of them.
"""

from __future__ import annotations

from pathlib import Path

STAGES = ("descriptor", "condition", "density")
TRAINING_RECORD = "training.json"

BUNDLE_WEIGHTS = Path("models") / "model.pt"
BUNDLE_SCORER_CONFIG = Path("models") / "density_config.json"
BUNDLE_TORCHSCRIPT = Path("models") / "model.ts"
BUNDLE_ONNX = Path("models") / "model.onnx"
BUNDLE_METADATA = Path("configs") / "metadata.json"


def plans_file(run_dir) -> Path:
    return Path(run_dir) / "plans.json"


def fingerprint_file(run_dir) -> Path:
    return Path(run_dir) / "fingerprint.json"


def calibration_path(run_dir) -> Path:
    """The region threshold and how it was made (``screener calibrate``)."""
    return Path(run_dir) / "calibration.json"


def preprocessed_dir(run_dir) -> Path:
    return Path(run_dir) / "preprocessed"


def case_dir(run_dir, name: str) -> Path:
    """One case's preprocessing cache."""
    return preprocessed_dir(run_dir) / name


def stage_dir(run_dir, stage: str) -> Path:
    """A training stage's output folder (the bundle's ``--output_dir``)."""
    return Path(run_dir) / stage


def model_path(run_dir, stage: str) -> Path:
    """A stage's trained weights."""
    return stage_dir(run_dir, stage) / "models" / "model.pt"


def training_record_path(run_dir, stage: str) -> Path:
    return model_path(run_dir, stage).parent / TRAINING_RECORD


def checkpoint_dir(run_dir, stage: str) -> Path:
    return stage_dir(run_dir, stage) / "checkpoints"


def density_config_path(run_dir) -> Path:
    """The choices the density stage was trained with (features, condition, density, sizes)."""
    return Path(run_dir) / "density" / "models" / "density_config.json"


def is_bundle(path) -> bool:
    """True when ``path`` is a published Screener bundle (combined weights, not a training run)."""
    path = Path(path)
    return (path / BUNDLE_METADATA).is_file() and (path / BUNDLE_SCORER_CONFIG).is_file()


def scorer_config_path(root) -> Path:
    """The scorer configuration of a bundle or a run."""
    root = Path(root)
    return root / BUNDLE_SCORER_CONFIG if is_bundle(root) else density_config_path(root)


def torchscript_path(run_dir, torchscript) -> Path | None:
    """``--torchscript``: None/False -> None; True (or 'true') -> RUN/models/model.ts; else the path given."""
    if torchscript in (None, False, "", 0) or str(torchscript).lower() in ("false", "0", "no"):
        return None
    if torchscript is True or str(torchscript).lower() in ("true", "1", "yes"):
        return Path(run_dir) / BUNDLE_TORCHSCRIPT
    return Path(torchscript)
