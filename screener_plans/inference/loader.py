"""Where a trained model loads: ``load_run_scorer`` takes a run folder, a published bundle or a
TorchScript export of either and returns the scorer that ``Predictor`` runs.

Where each of their files lives is :mod:`screener_plans.layout`; how a model is built is
:mod:`screener_plans.engines.models`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from screener_plans.engines.models import (
    Scorer,
    build_density_model,
    build_features,
    build_untrained_features,
    check_preprocessing,
    check_upstream,
    freeze,
    load_into,
    load_state,
    run_weights_id,
)
from screener_plans.errors import ScreenerError
from screener_plans.layout import (
    BUNDLE_METADATA,
    BUNDLE_WEIGHTS,
    density_config_path,
    is_bundle,
    model_path,
    scorer_config_path,
    torchscript_path,
)


def load_run_scorer(run_dir, plans: dict, torchscript=None):
    """The scorer of a run or a published bundle; from its TorchScript export when ``torchscript`` asks."""
    ts = torchscript_path(run_dir, torchscript)
    if ts is not None:
        return load_torchscript_scorer(ts, plans, expected_weights_id=present_weights_id(run_dir), source=run_dir)
    if is_bundle(run_dir):
        return load_bundle_scorer(run_dir, plans)
    return load_scorer(run_dir, plans)


def load_scorer(run_dir, plans: dict) -> Scorer:
    """The trained scorer of a run (all three stages), frozen, on CPU."""
    cfg_path = density_config_path(run_dir)
    if not cfg_path.exists():
        raise ScreenerError(
            f"{cfg_path}: density model not found; train it first (`screener train {run_dir} --stage density`)"
        )
    cfg = json.loads(cfg_path.read_text())
    check_preprocessing(cfg, plans, cfg_path)
    check_upstream(run_dir, cfg)
    features = build_features(run_dir, plans, cfg)
    path = model_path(run_dir, "density")
    density = load_into(build_density_model(cfg), load_state(path, "density"), path, "density")
    scorer = freeze(Scorer(features, density))
    scorer.weights_id = run_weights_id(run_dir, cfg)
    return scorer


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

    return Scorer(build_untrained_features(plans, cfg), build_density_model(cfg))


def load_bundle_scorer(bundle_dir, plans: dict):
    """The scorer of a published bundle (``models/model.pt``), frozen, on CPU."""

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

    try:
        return run_weights_id(root, read_scorer_config(root))
    except ScreenerError:
        return None  # plans only, scored by a TorchScript file: nothing to compare it with


class TorchScriptScorer(nn.Module):
    """A TorchScript/ONNX-style ``PatchScorer`` behind the eager ``Scorer`` interface.

    ``forward(image, origin_mm, spacing)`` as ``Scorer``: builds the coordinate channels when
    the export needs them and runs the module in float32 (traced graphs do not autocast).
    """

    def __init__(self, module, coordinates: bool):
        super().__init__()
        self.module, self.coordinates = module, bool(coordinates)

    def forward(self, image: torch.Tensor, origin_mm: torch.Tensor, spacing: torch.Tensor) -> torch.Tensor:
        from screener_plans.nets import coordinate_grid_mm

        x = image.float()
        if self.coordinates:
            grid = coordinate_grid_mm(origin_mm.to(torch.float64), spacing.to(torch.float64), x.shape[2:])
            x = torch.cat([x, grid.to(x.dtype)], dim=1)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.module(x).float()


def load_torchscript_scorer(
    path, plans: dict | None = None, expected_weights_id: str | None = None, source=None
) -> TorchScriptScorer:
    """Load ``models/model.ts`` (from ``export_torchscript``) as a scorer for ``Predictor``.

    With ``plans``, refuse an export made for other preprocessing (spacing or HU window); with
    ``expected_weights_id`` (the weights ``source``, a run or bundle, holds now), refuse an export
    of other weights, e.g. one made before a stage was retrained.
    """
    from monai.data import load_net_with_metadata

    path = Path(path)
    if not path.is_file():
        source = path.parent.parent if path.parent.name == "models" else "RUN_OR_MODEL_DIR"
        raise ScreenerError(f"{path}: TorchScript model not found; make it with `screener zoo export {source}`")
    try:
        module, meta, _ = load_net_with_metadata(str(path), map_location="cpu")
    except Exception as e:
        raise ScreenerError(
            f"{path}: cannot load TorchScript model ({type(e).__name__}); the file is corrupt "
            "or not a TorchScript export"
        ) from None
    info = meta.get("screener", {}) if isinstance(meta, dict) else {}
    if "input_channels" in info:
        channels = int(info["input_channels"])
    else:
        try:
            channels = int(meta["network_data_format"]["inputs"]["image"]["num_channels"])
        except (KeyError, TypeError, ValueError):
            raise ScreenerError(
                f"{path}: TorchScript model has no Screener metadata; export it with `screener zoo export`"
            ) from None
    if plans is not None and info:
        from screener_plans.data.preprocess import preprocessing_of

        exported = {"spacing": info.get("spacing"), "window": info.get("intensity_window")}
        for key, want in preprocessing_of(plans).items():
            if exported[key] is not None and [float(v) for v in exported[key]] != want:
                raise ScreenerError(
                    f"{path}: TorchScript model was exported for {key} {exported[key]}, but "
                    f"plans.json has {want}; export it from this run (`screener zoo export`)"
                )
    exported_id = info.get("weights_id")
    if expected_weights_id and exported_id and exported_id != expected_weights_id:
        raise ScreenerError(
            f"{path}: TorchScript model was exported from other weights than {source or 'the run'} "
            f"holds now (a stage was retrained since); export it again (`screener zoo export "
            f"{source or 'RUN'}`)"
        )
    module.eval()
    scorer = TorchScriptScorer(module, coordinates=channels == 4)
    scorer.weights_id = exported_id
    return scorer
