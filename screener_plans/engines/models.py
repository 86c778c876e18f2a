"""Loading trained stages and assembling the full scorer (descriptor + condition + density)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch
from torch import nn

from screener_plans.choices import CONDITIONS, DENSITIES, FEATURES
from screener_plans.errors import ScreenerError
from screener_plans.io_utils import sha256_file, write_json
from screener_plans.layout import density_config_path, model_path, training_record_path
from screener_plans.nets.shell_histogram import HISTOGRAM_BINS_HU, ShellHistogram
from screener_plans.nets.structure import STRUCTURE_CHANNELS, LocalStructure
from screener_plans.nets.surround import DIRECTIONS, SurroundContext
from screener_plans.options import as_bool

INTENSITY_CHANNELS = 1
STRUCTURE_SIGMA = 1.0  # voxels of the planned grid
# the surround condition's box means: this far from the voxel (beyond masses of about that
# radius), boxes this wide (nets/surround.py)
SURROUND = {"radii_mm": [30.0], "box_mm": 8.0}
# the histogram condition's shell (nets/shell_histogram.py)
SHELL = {"inner_mm": 10.0, "outer_mm": 25.0}


def file_digest(path: Path) -> str | None:
    """A short content hash of a model file (None when it does not exist).

    Loading a run checks the upstream stages, names the weights and checks the calibration, each
    from these hashes: a file is hashed once while it stays the same file (models are written to a
    temporary name and renamed, so a retrained model is a new inode).
    """
    try:
        st = os.stat(path)
        return _digest(os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        return None


@functools.lru_cache(maxsize=64)
def _digest(path: str, inode: int, size: int, mtime_ns: int) -> str:
    return sha256_file(path)[:16]


def upstream_digests(run_dir, cfg: dict) -> dict:
    """Content hashes of the trained stages a density with config ``cfg`` is trained on."""
    return {stage: file_digest(model_path(run_dir, stage)) for stage in scorer_stages(cfg)[:-1]}


def scorer_stages(cfg: dict) -> list[str]:
    """The trained stages a scorer with config ``cfg`` loads, in training order."""
    return (
        (["descriptor"] if uses_descriptor(cfg["features"]) else [])
        + (["condition"] if cfg["condition"] == "masked" else [])
        + ["density"]
    )


def trained_steps(run_dir, cfg: dict) -> dict:
    """``{stage: steps trained}`` of the stages the scorer uses (None where a run predates the record)."""

    steps = {}
    for stage in scorer_stages(cfg):
        try:
            steps[stage] = int(json.loads(training_record_path(run_dir, stage).read_text())["steps"])
        except (OSError, ValueError, KeyError, TypeError):
            steps[stage] = None
    return steps


def run_weights_id(run_dir, cfg: dict) -> str:
    """One short hash of every weights file a run's scorer loads (descriptor, condition, density)."""
    import hashlib

    digests = {**upstream_digests(run_dir, cfg), "density": file_digest(model_path(run_dir, "density"))}
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:16]


def check_preprocessing(cfg: dict, plans: dict, where) -> None:
    """Models trained on one grid and HU window score another one wrong: refuse a plans.json
    edited after training (configs written before this was recorded are not checked)."""
    from screener_plans.data.preprocess import preprocessing_of

    trained = cfg.get("preprocessing")
    now = preprocessing_of(plans)
    for key in ("spacing", "window"):
        if trained and key in trained and [float(v) for v in trained[key]] != now[key]:
            raise ScreenerError(
                f"{where}: the models were trained with {key} {trained[key]}, but plans.json now has "
                f"{now[key]}; put plans.json back, or plan and train a new run for the new {key}"
            )


def check_upstream(run_dir, cfg: dict) -> None:
    """A density trained on other descriptor/condition models than the run's present ones scores
    wrong features: refuse, saying how to retrain it."""
    recorded = cfg.get("trained_on") or {}
    for stage, digest in recorded.items():
        now = file_digest(model_path(run_dir, stage))
        if digest is not None and now is not None and now != digest:
            raise ScreenerError(
                f"{density_config_path(run_dir)}: the density model was trained on another {stage} "
                f"model than {model_path(run_dir, stage)}; retrain it (`screener train {run_dir} "
                f"--stage density --resume false`), then `screener calibrate {run_dir}`"
            )


def load_state(path: Path, what: str) -> dict:
    if not path.exists():
        raise ScreenerError(
            f"{path}: {what} model not found; train it first "
            f"(`screener train {path.parent.parent.parent} --stage {path.parent.parent.name}`)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ScreenerError(
            f"{path}: cannot load {what} model ({type(e).__name__}); the file is corrupt or not a Screener model"
        ) from None


def load_into(module: nn.Module, state: dict, path: Path, what: str) -> nn.Module:
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise ScreenerError(
            f"{path}: {what} model does not match plans.json (incompatible bundle: {str(e).splitlines()[0][:150]})"
        ) from None
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


def intensity_channels(image: torch.Tensor) -> torch.Tensor:
    """(B, 1, X, Y, Z) window-scaled crop -> its intensity feature, float32 (B, 1, X, Y, Z).

    The voxel's own value. A 3x3x3 local mean as a second channel was tried on the quality
    benchmark's data (masked condition, Gaussian): AUROC equal within noise, lower with the prior.
    """
    return image.float()


def uses_descriptor(features: str) -> bool:
    return features in ("descriptor", "descriptor+intensity", "descriptor+structure")


def structure_dim(features: str) -> int:
    """Condition channels the scored features add (the local derivatives of ``structure``)."""
    return STRUCTURE_CHANNELS if uses_structure(features) else 0


def uses_structure(features: str) -> bool:
    return features in ("structure", "descriptor+structure")


class FeatureExtractor(nn.Module):
    """Frozen features (what the density scores) and condition for a batch of preprocessed crops.

    ``forward(image (B,1,X,Y,Z), origin_mm (B,3), spacing (B,3)) -> (y, c)``. ``y`` is the
    descriptor, the intensity channels, or both (``features``); ``c`` is an empty tensor when
    there is no condition. The masked condition model sees the whole crop at inference (mask
    channel all zeros); sin-cos encodes absolute positions in the scan. With ``structure``
    features, ``y`` is the smoothed intensity and its local derivatives follow the condition's
    ``cond_dim`` channels in ``c``.
    """

    def __init__(
        self,
        descriptor: nn.Module | None,
        condition_kind: str = "none",
        condition: nn.Module | None = None,
        cond_dim: int = 0,
        features: str = "descriptor",
        structure_scale: float = 1.0,
        surround: dict | None = None,
        histogram: dict | None = None,
        condition_masking: dict | None = None,
    ):
        super().__init__()
        from screener_plans.nets import SinCosCondition

        check_choice(features, FEATURES, "features")
        if uses_descriptor(features) and descriptor is None:
            raise ScreenerError(f"features {features!r} need a descriptor model")
        self.features = features
        self.descriptor = descriptor if uses_descriptor(features) else None
        self.intensity = features != "descriptor"
        self.condition_kind = condition_kind
        self.condition = condition if condition_kind == "masked" else None
        self.sincos = SinCosCondition(cond_dim) if condition_kind == "sincos" else None
        self.surround = SurroundContext(**surround) if condition_kind == "surround" else None
        self.histogram = ShellHistogram(**histogram) if condition_kind == "histogram" else None
        self.cond_dim = cond_dim if condition_kind != "none" else 0
        self.structure = LocalStructure(STRUCTURE_SIGMA, structure_scale) if uses_structure(features) else None
        self.condition_masking = dict(condition_masking) if condition_masking and self.condition is not None else None

    def describe(self, image: torch.Tensor) -> torch.Tensor:
        """The scored features ``y`` (B, dim, X, Y, Z) of a crop."""
        return self._scored(image)[0]

    def _scored(self, image: torch.Tensor):
        """(y, derivatives or None): the scored features and, with structure, the local derivatives."""
        if self.structure is not None:
            value, derivatives = self.structure(image)
            if self.descriptor is None:
                return value, derivatives
            return torch.cat([self.descriptor(image).float(), value], dim=1), derivatives
        parts = []
        if self.descriptor is not None:
            parts.append(self.descriptor(image))
        if self.intensity:
            # float32 even under autocast: the intensity prior bins these values per HU
            parts = [p.float() for p in parts] + [intensity_channels(image)]
        return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)), None

    def forward(self, image: torch.Tensor, origin_mm: torch.Tensor, spacing: torch.Tensor):
        y, derivatives = self._scored(image)
        if self.condition is not None:
            c = self._masked_condition(image)
        elif self.sincos is not None:
            c = self.sincos(origin_mm, spacing, image.shape[2:]).to(y.dtype)
        elif self.surround is not None:
            c = self.surround(image)
        elif self.histogram is not None:
            c = self.histogram(image)
        else:
            c = y.new_zeros((y.shape[0], 0) + tuple(y.shape[2:]))
        if derivatives is not None:
            c = torch.cat([c.float(), derivatives], dim=1)
        return y, c

    def _masked_condition(self, image: torch.Tensor) -> torch.Tensor:
        """The masked condition model's features: of the whole crop (the paper), or, with
        ``condition_masking`` ({"passes", "block", "ratio"}), each voxel's features averaged over
        the passes of :func:`pass_masks` that hid the voxel itself. A condition model trained
        briefly is only partly invariant to masking: shown a lesion it describes it, and the
        density then finds the lesion expected; hidden, the lesion cannot explain itself."""
        if self.condition_masking is None:
            return self.condition(torch.cat([image, torch.zeros_like(image)], dim=1))
        k = int(self.condition_masking["passes"])
        masks = pass_masks(image, k, int(self.condition_masking["block"]), float(self.condition_masking["ratio"]))
        images = image[None].masked_fill(masks, 0.0)  # (k, B, 1, X, Y, Z); masks are (k, 1, 1, X, Y, Z)
        net_in = torch.cat([images, masks.to(image.dtype).expand_as(images)], dim=2).flatten(0, 1)
        c = self.condition(net_in).float().unflatten(0, (k, -1))
        w = masks.float()
        return (c * w).sum(0) / w.sum(0)


def pass_masks(image: torch.Tensor, passes: int, block: int, ratio: float) -> torch.Tensor:
    """Bool (passes, 1, 1, X, Y, Z) block masks (True = masked) for the crops of ``image``.

    Each pass is a grid of ``block``-voxel blocks at its own offset, each block masked with
    probability ``ratio`` by a fixed hash of its grid index (so the same crop always gets the
    same masks, and tracing keeps the crop size symbolic for the exports); the last pass also
    masks whatever no earlier pass did, so every voxel is hidden in at least one pass.
    """
    axes = [torch.arange(image.shape[2 + a], device=image.device, dtype=torch.float32) for a in range(3)]
    grids = torch.meshgrid(*axes, indexing="ij")
    masks = []
    for k in range(passes):
        offset = [(k * 7 + 3 * a) % block for a in range(3)]
        index = [torch.floor((g + o) / block) for g, o in zip(grids, offset)]
        seed = index[0] * 12.9898 + index[1] * 78.233 + index[2] * 37.719 + k * 4.581
        u = torch.frac(torch.sin(seed).abs() * 43758.5453)
        masks.append(u < ratio)
    m = torch.stack(masks)
    m = torch.cat([m[:-1], m[-1:] | ~m[:-1].any(0, keepdim=True)])
    return m[:, None, None]


class Scorer(nn.Module):
    """Descriptor + condition + density: a preprocessed crop -> per-voxel NLL (B, 1, X, Y, Z)."""

    def __init__(self, features: FeatureExtractor, density: nn.Module):
        super().__init__()
        self.features, self.density = features, density

    def forward(self, image: torch.Tensor, origin_mm: torch.Tensor, spacing: torch.Tensor) -> torch.Tensor:
        y, c = self.features(image, origin_mm, spacing)
        nll = self.density(y.float(), c.float() if c.shape[1] else None)
        return nll[:, None]


def density_config(
    plans: dict, condition: str | None, density: str | None, features: str | None = None, intensity_prior=None
) -> dict:
    """The density stage's choices: condition kind, density kind, features, intensity prior, sizes.

    Plans written before ``density.features`` / ``density.intensity_prior`` existed score the
    descriptor alone, as they did then. The plans' prior applies where the features hold the
    intensity it needs; asking for it explicitly with the descriptor alone is an error.
    """
    d = plans["density"]
    chosen = density is not None
    density = check_choice(density or d["kind"], DENSITIES, "density")
    if density == "contrastive":
        return contrastive_config(plans, condition, features, intensity_prior, chosen)
    condition = check_choice(condition or d["condition"], CONDITIONS, "condition")
    features = check_choice(features or d.get("features", "descriptor"), FEATURES, "features")
    if intensity_prior is None:
        prior = bool(d.get("intensity_prior", False)) and features != "descriptor"
    else:
        prior = as_bool(intensity_prior, "intensity_prior")
    if prior and features == "descriptor":
        raise ScreenerError(
            "--intensity_prior needs the CT intensity among the scored features "
            "(--features intensity or descriptor+intensity)"
        )
    base_dim = {"none": 0, "surround": len(DIRECTIONS) * len(SURROUND["radii_mm"]), "histogram": len(HISTOGRAM_BINS_HU)}
    cond_dim = base_dim.get(condition, int(plans["network"]["d_cond"])) + structure_dim(features)
    d_desc = int(plans["network"]["d_desc"]) if uses_descriptor(features) else 0
    dim = d_desc + (INTENSITY_CHANNELS if features != "descriptor" else 0)
    cfg = {
        "condition": condition,
        "density": density,
        "features": features,
        "dim": dim,
        "cond_dim": cond_dim,
        "preset": plans["preset"],
        "intensity_prior": prior,
    }
    lo, hi = plans["intensity"]["window"]
    if uses_structure(features):
        cfg["structure_scale"] = float(hi - lo) / 100.0  # derivatives in 100 HU per voxel
    if condition == "surround":
        cfg["surround"] = {
            **SURROUND,
            "spacing_mm": [float(v) for v in plans["spacing"]],
            "centre": 0.5,
            "scale": float(hi - lo) / 100.0,
        }
    if condition == "histogram":
        cfg["histogram"] = {
            **SHELL,
            "spacing_mm": [float(v) for v in plans["spacing"]],
            "centres": [(h - lo) / (hi - lo) for h in HISTOGRAM_BINS_HU],
        }
    passes = int(d.get("condition_passes", 0))
    if condition == "masked" and passes > 0:
        cfg["condition_masking"] = {
            "passes": passes,
            "block": plans["masking"]["block_size"],
            "ratio": float(plans["masking"]["ratio"]),
        }
    if prior:
        # the raw intensity is the first channel after the descriptor's; one bin per HU
        cfg.update(prior_channel=d_desc, prior_bins=max(1, int(round(hi - lo))))
    return cfg


def contrastive_config(
    plans: dict, condition: str | None, features: str | None, intensity_prior=None, chosen: bool = True
) -> dict:
    """The contrastive density's config: it scores the window-scaled CT crop itself, with no
    condition and no prior (its networks see the context); other explicit choices are refused
    (when the density came from the plans, the message says to choose another one)."""
    which = "--density contrastive" if chosen else "the plans' density, contrastive,"
    hint = "" if chosen else "; choose a likelihood density for it (--density gaussian, flow or mixture)"
    for key, value, only in (("condition", condition, "none"), ("features", features, "intensity")):
        if value not in (None, only):
            raise ScreenerError(
                f"{which} scores the CT intensity with no condition: --{key} {value} does not apply{hint}"
            )
    if intensity_prior is not None and as_bool(intensity_prior, "intensity_prior"):
        raise ScreenerError(f"{which} has no intensity prior: --intensity_prior does not apply{hint}")
    from screener_plans.density import DENSITY_PRESETS

    members = int(DENSITY_PRESETS.get(plans["preset"], {}).get("contrastive", {}).get("members", 1))
    batch = int(plans["density"].get("batch_size", members))
    if batch % members:
        raise ScreenerError(
            f"density.batch_size {batch} must be a multiple of the contrastive density's {members} networks "
            "(each trains on its share of every batch)"
        )
    return {
        "condition": "none",
        "density": "contrastive",
        "features": "intensity",
        "dim": INTENSITY_CHANNELS,
        "cond_dim": 0,
        "preset": plans["preset"],
        "intensity_prior": False,
        "window": [float(v) for v in plans["intensity"]["window"]],
        "windows_hu": [[float(v) for v in w] for w in plans["network"].get("windows_hu", [])],
    }


def with_density_choices(plans: dict, cfg: dict) -> dict:
    """A copy of ``plans`` whose ``density`` section holds the choices of ``cfg``."""
    return {
        **plans,
        "density": {
            **plans["density"],
            "condition": cfg["condition"],
            "kind": cfg["density"],
            "features": cfg["features"],
            "intensity_prior": cfg["intensity_prior"],
        },
    }


def scorer_features(cfg: dict) -> str:
    """``features`` of a saved density config; configs from before the option scored the descriptor."""
    return cfg.get("features", "descriptor")


def feature_extractor(cfg: dict, network) -> FeatureExtractor:
    """The ``FeatureExtractor`` a density config ``cfg`` describes; ``network(stage)`` gives the
    descriptor / condition network, asked only for the stages ``cfg`` uses."""
    descriptor = network("descriptor") if uses_descriptor(scorer_features(cfg)) else None
    condition = network("condition") if cfg["condition"] == "masked" else None
    features = scorer_features(cfg)
    return FeatureExtractor(
        descriptor,
        cfg["condition"],
        condition,
        cfg["cond_dim"] - structure_dim(features),
        features,
        cfg.get("structure_scale", 1.0),
        cfg.get("surround"),
        cfg.get("histogram"),
        cfg.get("condition_masking"),
    )


def build_density_model(cfg: dict) -> nn.Module:
    """The density model ``cfg`` describes; with ``intensity_prior`` wrapped in ``IntensityPrior``
    (its histogram still empty: fitted by the density stage, or loaded with the weights)."""
    from screener_plans.density import IntensityPrior, build_density

    extra = {k: cfg[k] for k in ("window", "windows_hu") if cfg["density"] == "contrastive"}
    model = build_density(cfg["density"], cfg["dim"], cfg["cond_dim"], preset=cfg["preset"], **extra)
    if cfg.get("intensity_prior"):
        model = IntensityPrior(model, cfg["prior_bins"], cfg["prior_channel"])
    return model


def build_features(run_dir, plans: dict, cfg: dict) -> FeatureExtractor:
    """Frozen trained features of a run: only the stages ``cfg`` uses are loaded."""
    return freeze(feature_extractor(cfg, lambda stage: load_stage_network(run_dir, plans, stage)))


def build_untrained_features(plans: dict, cfg: dict) -> FeatureExtractor:
    """Features with freshly initialised networks (architecture of ``plans``), for timing and loading."""
    from screener_plans.engines.ssl import build_stage_network

    return feature_extractor(cfg, lambda stage: build_stage_network(plans, stage))


def save_density_config(run_dir, cfg: dict) -> None:
    write_json(density_config_path(run_dir), cfg)
