"""Package a trained run as one self-contained MONAI bundle and zip it for the model zoo.

Bundle layout (``NAME/`` inside ``NAME_vX.Y.Z.zip``)::

    configs/metadata.json   version, changelog, network_data_format of the full scorer
    configs/inference.yaml  whole-scan inference: `python -m monai.bundle run --config_file
                            NAME/configs/inference.yaml --input PATH --output_dir OUT`
    configs/export.yaml     network_def for `monai.bundle ckpt_export / onnx_export / verify_net_in_out`
    configs/logging.conf, configs/meta_schema.json (the metadata schema, for offline verify_metadata)
    models/model.pt         descriptor + condition + density weights, one state dict
    models/density_config.json, [models/model.ts]
    plans.json, calibration.json   (identifying case names and local paths removed)
    docs/README.md, LICENSE

The folder doubles as a run folder for inference, so `screener predict NAME INPUT OUT` works.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import torch

from screener_plans.errors import ScreenerError
from screener_plans.io_utils import atomic_path, sha256_file, write_json, write_text
from screener_plans.layout import BUNDLE_METADATA, BUNDLE_SCORER_CONFIG, BUNDLE_WEIGHTS, calibration_path, plans_file

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")
VERSION_RE = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
SCHEMA_FILE = "meta_schema_20240725.json"
ZIP_DATE = (2020, 1, 1, 0, 0, 0)  # fixed, so the same bundle always zips to the same bytes


def patch_channels(cfg: dict) -> int:
    """Input channels of the exported scorer: image, plus x, y, z in mm for sin-cos conditions."""
    return 4 if cfg["condition"] == "sincos" else 1


def check_name(name) -> str:
    """A model name usable as a folder and a MONAI bundle name (no ``_v<digit>``, which MONAI splits on)."""
    name = str(name)
    if not NAME_RE.match(name) or re.search(r"_v\d", name):
        raise ScreenerError(
            f"--name {name!r}: use letters, digits, '_' and '-' (at most 100, not starting "
            "with '_' or '-', no '_v' followed by a digit)"
        )
    return name


def check_version(version) -> str:
    """A version ``X.Y.Z`` (non-negative integers without leading zeros)."""
    version = str(version)
    if not VERSION_RE.match(version):
        raise ScreenerError(f"--version {version!r}: expected X.Y.Z, e.g. 0.1.0")
    return version


def version_key(version: str) -> tuple[int, int, int]:
    return tuple(int(p) for p in check_version(version).split("."))


def schema_file() -> Path:
    """The shipped MONAI metadata schema (``bundles/schema/``), for offline ``verify_metadata``."""
    from screener_plans.bundle_runner import bundles_root

    return bundles_root() / "schema" / SCHEMA_FILE


def public_plans(plans: dict) -> dict:
    """Plans without what can identify training data: case names, folders and skipped files."""
    plans = copy.deepcopy(plans)
    dataset = plans.get("dataset", {})
    for key in ("data_dir", "cases", "skipped"):
        dataset.pop(key, None)
    return plans


def public_calibration(calibration: dict) -> dict:
    return {k: v for k, v in calibration.items() if k != "cases"}


def stage_versions() -> dict:
    """Versions of the shipped stage bundles the run was trained with."""
    from screener_plans.bundle_runner import bundle_dir

    out = {}
    for stage in ("descriptor", "condition", "density", "inference"):
        try:
            meta = json.loads((bundle_dir(f"screener_{stage}") / BUNDLE_METADATA).read_text())
            out[f"screener_{stage}"] = meta.get("version")
        except (ScreenerError, OSError, ValueError):
            out[f"screener_{stage}"] = None
    return out


def scorer_data_format(plans: dict, cfg: dict) -> dict:
    """``network_data_format`` of the exported PatchScorer (models/model.pt)."""

    stride = 2 ** (len(plans["network"]["channels"]) - 1)
    shape = [f"{stride}*n"] * 3
    coords = patch_channels(cfg) == 4
    channel_def = {"0": "image"}
    if coords:
        channel_def.update({"1": "x position in the scan (mm)", "2": "y position (mm)", "3": "z position (mm)"})
    return {
        "inputs": {
            "image": {
                "type": "image",
                "format": "magnitude",
                "modality": "CT",
                "num_channels": patch_channels(cfg),
                "spatial_shape": shape,
                "dtype": "float32",
                "value_range": [] if coords else [0, 1],
                "is_patch_data": True,
                "channel_def": channel_def,
            }
        },
        "outputs": {
            "pred": {
                "type": "image",
                "format": "magnitude",
                "num_channels": 1,
                "spatial_shape": shape,
                "dtype": "float32",
                "value_range": [],
                "is_patch_data": True,
                "channel_def": {"0": "anomaly score (NLL, nats)"},
            }
        },
    }


def bundle_metadata(
    plans: dict,
    cfg: dict,
    name: str,
    version: str,
    changelog: dict,
    weights_id: str | None = None,
    steps: dict | None = None,
) -> dict:
    """metadata.json of a published model: the inference bundle's, specialised to this scorer."""
    import monai
    import numpy

    import screener_plans
    from screener_plans.bundle_runner import bundle_dir

    meta = json.loads((bundle_dir("screener_inference") / BUNDLE_METADATA).read_text())
    ordered = dict(sorted(changelog.items(), key=lambda kv: version_key(kv[0]), reverse=True))
    meta.update(
        {
            "version": version,
            "changelog": ordered,
            "monai_version": monai.__version__,
            "pytorch_version": torch.__version__.split("+")[0],
            "numpy_version": numpy.__version__,
            "name": name,
            "task": "Unsupervised pathology screening in CT: per-voxel anomaly scores (trained Screener model)",
            "description": (
                f"Trained Screener scorer ({cfg['condition']} condition, {cfg['density']} density, "
                f"{plans['preset']} networks): maps a preprocessed CT patch to its per-voxel negative "
                "log-likelihood. configs/inference.yaml scores whole scans (any grid) and writes anomaly "
                "maps on the input grid, suspicious regions and overlay pictures."
            ),
            "image_classes": "one channel: CT clipped to the plans' HU window and scaled to [0, 1], at the plans' "
            "spacing"
            + ("; three more channels: each voxel's x, y, z position in mm" if patch_channels(cfg) == 4 else ""),
            "pred_classes": "one channel: per-voxel negative log-likelihood (nats); higher = more anomalous",
            "network_data_format": scorer_data_format(plans, cfg),
            # the shipped bundles' figures are the benchmark's model, not this one
            "eval_metrics": {},
            "screener": {
                "scorer": cfg,
                "input_channels": patch_channels(cfg),
                "spacing": plans["spacing"],
                "crop_size": plans["crop_size"],
                "intensity_window": plans["intensity"]["window"],
                "plans_schema_version": plans["schema_version"],
                "stage_bundles": stage_versions(),
                # the run's weights files this scorer was packaged from: exports carry it, so a
                # TorchScript file made before a stage was retrained is refused, and maps of the same
                # weights (eager, bundle or TorchScript) count as one model's
                **({"weights_id": weights_id} if weights_id else {}),
                **({"trained_steps": steps} if steps else {}),
            },
        }
    )
    meta["required_packages_version"] = {
        **meta.get("required_packages_version", {}),
        "screener": screener_plans.__version__,
    }
    meta.pop("optional_packages_version", None)  # MONAI 1.6 would overwrite required_packages_version with it
    return meta


def inference_config() -> dict:
    """The shipped inference config, made to default ``run_dir`` to the bundle itself."""
    import yaml

    from screener_plans.bundle_runner import bundle_dir

    cfg = yaml.safe_load((bundle_dir("screener_inference") / "configs" / "inference.yaml").read_text())
    imports = cfg.setdefault("imports", [])
    if not any(i.endswith(" as sp_zoo") for i in imports):
        imports.append("$import screener_plans.zoo.layout as sp_zoo")
    out = {"imports": imports, "bundle_root": "$sp_zoo.default_bundle_root()"}
    for key, value in cfg.items():
        if key != "imports":
            out[key] = value
    out["run_dir"] = "@bundle_root"
    return out


INFERENCE_HEADER = """\
# Screener anomaly inference with the model in this bundle (run_dir defaults to the bundle root).
#   python -m monai.bundle run --config_file NAME/configs/inference.yaml --input PATH --output_dir OUT
#       [--device cpu] [--torchscript true]   (true: use models/model.ts)
# or: screener predict NAME PATH OUT
"""


def _copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def build_bundle(run_dir, bundle_dir, name: str, version: str, changelog: dict) -> Path:
    """Write the bundle folder for the trained run ``run_dir`` (which must be complete) to ``bundle_dir``."""
    import yaml

    from screener_plans.bundle_runner import bundle_dir as shipped
    from screener_plans.engines.models import trained_steps
    from screener_plans.inference.calibration import load_threshold
    from screener_plans.inference.loader import load_scorer, read_scorer_config
    from screener_plans.planning.plans import load_plans
    from screener_plans.zoo.docs import model_card

    run_dir, out = Path(run_dir), Path(bundle_dir)
    plans = load_plans(plans_file(run_dir))
    cfg = read_scorer_config(run_dir)
    scorer = load_scorer(run_dir, plans)  # also checks every stage matches the plans
    calibrated = load_threshold(run_dir) is not None  # a calibration of another density model is refused
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / BUNDLE_WEIGHTS, suffix=".pt") as tmp, open(tmp, "wb") as f:
        torch.save(scorer.state_dict(), f)  # a stream, so the archive's inner name is not the temp name
    write_json(out / BUNDLE_SCORER_CONFIG, cfg)
    write_json(plans_file(out), public_plans(plans))
    calibration = None
    if calibrated:
        try:
            calibration = json.loads(calibration_path(run_dir).read_text())
        except ValueError:
            raise ScreenerError(f"{calibration_path(run_dir)}: not valid JSON; re-run `screener calibrate`") from None
        write_json(calibration_path(out), public_calibration(calibration))
    meta = bundle_metadata(
        plans, cfg, name, version, changelog, getattr(scorer, "weights_id", None), trained_steps(run_dir, cfg)
    )
    write_json(out / BUNDLE_METADATA, meta)
    write_text(
        out / "configs" / "inference.yaml",
        INFERENCE_HEADER + yaml.safe_dump(inference_config(), sort_keys=False, width=200),
    )
    inference_src = shipped("screener_inference")
    _copy_file(inference_src / "configs" / "export.yaml", out / "configs" / "export.yaml")
    _copy_file(inference_src / "configs" / "logging.conf", out / "configs" / "logging.conf")
    _copy_file(schema_file(), out / "configs" / "meta_schema.json")
    _copy_file(inference_src / "LICENSE", out / "LICENSE")
    write_text(out / "docs" / "README.md", model_card(meta, plans, calibration))
    return out


def zip_bundle(bundle_dir, zip_path, top: str) -> tuple[str, int]:
    """Zip ``bundle_dir`` as ``top/...`` (deterministic bytes), atomically; returns (sha256, size)."""
    bundle_dir, zip_path = Path(bundle_dir), Path(zip_path)
    files = sorted(p for p in bundle_dir.rglob("*") if p.is_file())
    with atomic_path(zip_path, suffix=".zip") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for p in files:
                info = zipfile.ZipInfo(f"{top}/{p.relative_to(bundle_dir).as_posix()}", date_time=ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                with open(p, "rb") as src, zf.open(info, "w") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        digest = sha256_file(tmp)
        size = os.path.getsize(tmp)
    return digest, size
