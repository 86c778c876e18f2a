"""``plans.json``: schema, validation, loading, saving and ``--set key=value`` overrides.

Plans are human-editable. Every stage reads them through ``load_plans``, which checks the
schema version and each key's type and range, and names the bad key when something is off.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import yaml

from screener_plans.choices import CONDITIONS, DENSITIES, FEATURES, one_of
from screener_plans.errors import ScreenerError
from screener_plans.io_utils import write_json

PLANS_VERSION = 1
SUPPORTED_PLANS_VERSIONS = (1,)


def _int3(v):
    return (
        isinstance(v, list) and len(v) == 3 and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)
    )


def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _pos(v):
    return _num(v) and v > 0


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _pos_int(v):
    return _int(v) and v > 0


def _nonneg_int(v):
    return _int(v) and v >= 0


def _frac(v):
    return _num(v) and 0 <= v < 1


# key path -> (check, description of what is expected)
SCHEMA = {
    "schema_version": (lambda v: isinstance(v, int), "an integer"),
    "seed": (_nonneg_int, "a non-negative integer"),
    "preset": (lambda v: v in ("tiny", "base"), "'tiny' or 'base'"),
    "device": (lambda v: v in ("cpu", "cuda"), "'cpu' or 'cuda'"),
    "memory_gb": (_pos, "a positive number"),
    "amp": (lambda v: isinstance(v, bool), "true or false"),
    "spacing": (
        lambda v: isinstance(v, list) and len(v) == 3 and all(_pos(x) and x <= 20 for x in v),
        "3 positive spacings in mm (at most 20)",
    ),
    "intensity.window": (
        lambda v: isinstance(v, list) and len(v) == 2 and all(_num(x) for x in v) and v[0] < v[1],
        "[low, high] HU with low < high",
    ),
    "crop_size": (_int3, "3 positive integers"),
    "batch_size": (_pos_int, "a positive integer (images per step; each gives two crops)"),
    "pairs_per_crop": (_pos_int, "a positive integer"),
    "crop_scale": (
        lambda v: isinstance(v, list) and len(v) == 2 and all(_pos(x) for x in v) and v[0] <= v[1],
        "[min, max] positive scale factors with min <= max",
    ),
    "augment.brightness_hu": (lambda v: _num(v) and v >= 0, "a non-negative number (HU)"),
    "augment.noise_hu": (lambda v: _num(v) and v >= 0, "a non-negative number (HU)"),
    "augment.contrast": (lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1) (relative)"),
    "augment.blur_sigma": (lambda v: _num(v) and v >= 0, "a non-negative number (voxels)"),
    "masking.block_size": (_pos_int, "a positive integer (voxels)"),
    "masking.ratio": (_frac, "a number in [0, 1)"),
    "network.channels": (
        lambda v: isinstance(v, list) and len(v) >= 2 and all(_pos_int(x) for x in v),
        "a list of at least 2 positive integers",
    ),
    "network.blocks_per_level": (_pos_int, "a positive integer"),
    "network.d_desc": (_pos_int, "a positive integer"),
    "network.d_cond": (lambda v: _pos_int(v) and v % 6 == 0, "a positive integer divisible by 6"),
    "network.expander_width": (_pos_int, "a positive integer"),
    "network.windows_hu": (
        lambda v: (
            isinstance(v, list)
            and all(isinstance(w, list) and len(w) == 2 and all(_num(x) for x in w) and w[0] < w[1] for w in v)
        ),
        "a list of [low, high] HU windows",
    ),
    "loss.kind": (lambda v: v in ("vicreg", "simclr"), "'vicreg' or 'simclr'"),
    "loss.inv_weight": (lambda v: _num(v) and v >= 0, "a non-negative number"),
    "loss.var_weight": (lambda v: _num(v) and v >= 0, "a non-negative number"),
    "loss.cov_weight": (lambda v: _num(v) and v >= 0, "a non-negative number"),
    "loss.temperature": (_pos, "a positive number"),
    "optim.lr": (_pos, "a positive number"),
    "optim.weight_decay": (lambda v: _num(v) and v >= 0, "a non-negative number"),
    "optim.grad_clip": (_pos, "a positive number"),
    "optim.warmup_fraction": (_frac, "a number in [0, 1)"),
    "steps.descriptor": (_pos_int, "a positive integer"),
    "steps.condition": (_pos_int, "a positive integer"),
    "steps.density": (_pos_int, "a positive integer"),
    "checkpoint_every": (_pos_int, "a positive integer"),
    "density.kind": (lambda v: v in DENSITIES, one_of(DENSITIES)),
    "density.condition": (lambda v: v in CONDITIONS, one_of(CONDITIONS)),
    "density.features": (lambda v: v in FEATURES, one_of(FEATURES)),
    "density.intensity_prior": (lambda v: isinstance(v, bool), "true or false"),
    "density.trim": (lambda v: _num(v) and 0 <= v < 0.5, "a number in [0, 0.5)"),
    "density.batch_size": (_pos_int, "a positive integer"),
    "density.voxels_per_crop": (_nonneg_int, "an integer >= 0 (0: every voxel)"),
    "density.condition_passes": (
        lambda v: _int(v) and (v == 0 or v >= 2),
        "0 (the masked condition sees the whole crop) or an integer >= 2",
    ),
    "inference.overlap": (lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
    "inference.blend": (lambda v: v in ("gaussian", "constant"), "'gaussian' or 'constant'"),
    "inference.sw_batch_size": (_pos_int, "a positive integer"),
    "inference.region_threshold_quantile": (lambda v: _num(v) and 0 < v < 1, "a number in (0, 1)"),
    "inference.smooth_mm": (lambda v: _num(v) and v >= 0, "a number >= 0 (mm; 0: no smoothing)"),
}


def get_key(plans: dict, key: str):
    """Value at a dotted ``key``; KeyError if any part is missing."""
    node = plans
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def set_key(plans: dict, key: str, value) -> None:
    """Set a dotted ``key``, creating intermediate sections."""
    parts = key.split(".")
    node = plans
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ScreenerError(f"plans key '{key}': '{part}' is not a section")
    node[parts[-1]] = value


# Keys added within schema version 1: plans written before them get these values.
DEFAULTS = {
    "augment.brightness_hu": 15.0,
    "augment.noise_hu": 15.0,
    "augment.contrast": 0.05,
    "augment.blur_sigma": 0.7,
    "network.windows_hu": [],
    "density.features": "descriptor",
    "density.intensity_prior": False,
    "density.trim": 0.0,
    "density.voxels_per_crop": 0,
    "density.condition_passes": 0,
    "inference.smooth_mm": 0.0,
}


def validate_plans(plans: dict, source: str = "plans") -> dict:
    """Check the schema version and every key; raise ``ScreenerError`` naming the first bad key."""
    if not isinstance(plans, dict):
        raise ScreenerError(f"{source}: expected a JSON object")
    for key, value in DEFAULTS.items():
        try:
            get_key(plans, key)
        except KeyError:
            set_key(plans, key, value)
    version = plans.get("schema_version")
    if version not in SUPPORTED_PLANS_VERSIONS:
        raise ScreenerError(
            f"{source}: plans schema version {version!r} is not supported; this Screener "
            f"reads version(s) {', '.join(map(str, SUPPORTED_PLANS_VERSIONS))}. Re-run "
            "`screener plan` to make new plans"
        )
    for key, (check, expected) in SCHEMA.items():
        try:
            value = get_key(plans, key)
        except KeyError:
            raise ScreenerError(f"{source}: missing key '{key}' (expected {expected})") from None
        if not check(value):
            raise ScreenerError(f"{source}: key '{key}' must be {expected}, got {value!r}")
    stride = 2 ** (len(plans["network"]["channels"]) - 1)
    bad = [c for c in plans["crop_size"] if c % stride]
    if bad:
        raise ScreenerError(
            f"{source}: key 'crop_size' {plans['crop_size']} must be divisible by the network's total stride {stride}"
        )
    return plans


def warmup_fraction(plans: dict, steps: int) -> float:
    """One-cycle warm-up share: the plans' value, but at least two steps (OneCycleLR needs one)."""
    return min(0.5, max(float(plans["optim"]["warmup_fraction"]), 2.0 / max(1, int(steps))))


def load_plans(path: str | Path) -> dict:
    """Read and validate ``plans.json``."""
    path = Path(path)
    if path.is_dir():
        path = path / "plans.json"
    if not path.exists():
        raise ScreenerError(f"{path}: plans file not found (run `screener plan DATA_DIR RUN_DIR` first)")
    try:
        plans = json.loads(path.read_text())
    except ValueError as e:
        raise ScreenerError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise ScreenerError(f"{path}: cannot be read ({e.strerror})") from None
    return validate_plans(plans, str(path))


def save_plans(plans: dict, path: str | Path) -> None:
    """Validate and write ``plans.json`` atomically."""
    validate_plans(plans, str(path))
    write_json(path, plans)


def parse_overrides(items) -> dict:
    """Parse ``key=value`` strings (value in YAML syntax: numbers, lists, true/false) into a dict."""
    if items is None:
        return {}
    if isinstance(items, dict):
        return dict(items)
    if isinstance(items, str):
        items = [items]
    out = {}
    for item in items:
        if isinstance(item, (list, tuple)) and len(item) == 2:
            out[str(item[0])] = item[1]
            continue
        if not isinstance(item, str) or "=" not in item:
            raise ScreenerError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def check_override_keys(overrides: dict) -> None:
    """Refuse ``--set`` keys that are not plans keys, and values a plans key cannot take (before
    any slow work is done, and naming ``--set``, not the plans file the value would go into)."""
    known = set(SCHEMA) | {k.split(".")[0] for k in SCHEMA}
    for key, value in overrides.items():
        if key not in known and not any(key.startswith(k + ".") for k in known):
            raise ScreenerError(f"--set {key}: unknown plans key (known keys: {', '.join(sorted(SCHEMA))})")
        if key in SCHEMA:
            check, expected = SCHEMA[key]
            if not check(value):
                raise ScreenerError(f"--set {key}={value!r}: must be {expected}")


def apply_overrides(plans: dict, overrides: dict) -> dict:
    """Apply user overrides to a copy of ``plans``, recording them under ``overrides``."""
    plans = copy.deepcopy(plans)
    check_override_keys(overrides)
    for key, value in overrides.items():
        set_key(plans, key, value)
        plans.setdefault("overrides", {})[key] = value
    return plans
