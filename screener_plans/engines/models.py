"""Loading trained stages and assembling the full scorer (descriptor + condition + density)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from screener_plans.errors import ScreenerError
from screener_plans.io_utils import write_json

CONDITIONS = ("masked", "sincos", "none")
DENSITIES = ("gaussian", "flow")


def model_path(run_dir, stage: str) -> Path:
    return Path(run_dir) / stage / "models" / "model.pt"


def load_state(path: Path, what: str) -> dict:
    if not path.exists():
        raise ScreenerError(f"{path}: {what} model not found; train it first "
                            f"(`screener train {path.parent.parent.parent} --stage {path.parent.parent.name}`)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ScreenerError(f"{path}: cannot load {what} model ({type(e).__name__}); the file is corrupt or not "
                            "a Screener model") from None


def load_into(module: nn.Module, state: dict, path: Path, what: str) -> nn.Module:
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise ScreenerError(f"{path}: {what} model does not match plans.json (incompatible bundle: "
                            f"{str(e).splitlines()[0][:150]})") from None
    return module


def load_stage_network(run_dir, plans: dict, stage: str, path=None) -> nn.Module:
    """A trained descriptor/condition network, frozen, in eval mode."""
    from screener_plans.engines.ssl import build_stage_network

    path = Path(path) if path else model_path(run_dir, stage)
    net = load_into(build_stage_network(plans, stage), load_state(path, stage), path, stage)
    return freeze(net)


def freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def check_choice(value, choices, key: str) -> str:
    if value not in choices:
        raise ScreenerError(f"--{key} must be one of {', '.join(choices)}, got {value!r}")
    return value


class FeatureExtractor(nn.Module):
    """Frozen descriptor and (optional) condition for a batch of preprocessed crops.

    ``forward(image (B,1,X,Y,Z), origin_mm (B,3), spacing (B,3)) -> (y, c)``; ``c`` is an empty
    tensor when there is no condition. The masked condition model sees the whole crop at
    inference (mask channel all zeros); sin-cos encodes absolute positions in the scan.
    """

    def __init__(self, descriptor: nn.Module, condition_kind: str = "none", condition: nn.Module | None = None,
                 cond_dim: int = 0):
        super().__init__()
        from screener_plans.nets import SinCosCondition

        self.descriptor = descriptor
        self.condition_kind = condition_kind
        self.condition = condition if condition_kind == "masked" else None
        self.sincos = SinCosCondition(cond_dim) if condition_kind == "sincos" else None
        self.cond_dim = cond_dim if condition_kind != "none" else 0

    def forward(self, image: torch.Tensor, origin_mm: torch.Tensor, spacing: torch.Tensor):
        y = self.descriptor(image)
        if self.condition is not None:
            c = self.condition(torch.cat([image, torch.zeros_like(image)], dim=1))
        elif self.sincos is not None:
            c = self.sincos(origin_mm, spacing, image.shape[2:]).to(y.dtype)
        else:
            c = y.new_zeros((y.shape[0], 0) + tuple(y.shape[2:]))
        return y, c


class Scorer(nn.Module):
    """Descriptor + condition + density: a preprocessed crop -> per-voxel NLL (B, 1, X, Y, Z)."""

    def __init__(self, features: FeatureExtractor, density: nn.Module):
        super().__init__()
        self.features, self.density = features, density

    def forward(self, image: torch.Tensor, origin_mm: torch.Tensor, spacing: torch.Tensor) -> torch.Tensor:
        y, c = self.features(image, origin_mm, spacing)
        nll = self.density(y.float(), c.float() if c.shape[1] else None)
        return nll[:, None]


def density_config(plans: dict, condition: str | None, density: str | None) -> dict:
    """The density stage's choices: condition kind, density kind and sizes."""
    condition = check_choice(condition or plans["density"]["condition"], CONDITIONS, "condition")
    density = check_choice(density or plans["density"]["kind"], DENSITIES, "density")
    cond_dim = 0 if condition == "none" else int(plans["network"]["d_cond"])
    return {"condition": condition, "density": density, "dim": int(plans["network"]["d_desc"]),
            "cond_dim": cond_dim, "preset": plans["preset"]}


def build_density_model(cfg: dict) -> nn.Module:
    from screener_plans.density import build_density

    return build_density(cfg["density"], cfg["dim"], cfg["cond_dim"], preset=cfg["preset"])


def build_features(run_dir, plans: dict, cfg: dict) -> FeatureExtractor:
    descriptor = load_stage_network(run_dir, plans, "descriptor")
    condition = load_stage_network(run_dir, plans, "condition") if cfg["condition"] == "masked" else None
    return freeze(FeatureExtractor(descriptor, cfg["condition"], condition, cfg["cond_dim"]))


def density_config_path(run_dir) -> Path:
    return Path(run_dir) / "density" / "models" / "density_config.json"


def save_density_config(run_dir, cfg: dict) -> None:
    write_json(density_config_path(run_dir), cfg)


def load_scorer(run_dir, plans: dict) -> Scorer:
    """The trained scorer of a run (all three stages), frozen, on CPU."""
    cfg_path = density_config_path(run_dir)
    if not cfg_path.exists():
        raise ScreenerError(f"{cfg_path}: density model not found; train it first "
                            f"(`screener train {run_dir} --stage density`)")
    cfg = json.loads(cfg_path.read_text())
    features = build_features(run_dir, plans, cfg)
    path = model_path(run_dir, "density")
    density = load_into(build_density_model(cfg), load_state(path, "density"), path, "density")
    return freeze(Scorer(features, density))
