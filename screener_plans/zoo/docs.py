"""The model card (``docs/README.md``) of a published model bundle."""

from __future__ import annotations


def _fmt(v) -> str:
    return ", ".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)


def model_card(meta: dict, plans: dict, calibration: dict | None) -> str:
    """Markdown: what the model is, inputs/outputs, how to run it, training, data, limitations."""
    name, version = meta["name"], meta["version"]
    cfg = meta["screener"]["scorer"]
    ds = plans.get("dataset", {})
    trained = meta["screener"].get("trained_steps") or {}
    steps = ", ".join(f"{stage} {'unknown' if n is None else n}" for stage, n in trained.items()) or "not recorded"
    if "descriptor" not in trained and cfg.get("features", "descriptor") in ("intensity", "structure"):
        steps += " (no descriptor stage: the scored features are the CT intensity)"
    changelog = "\n".join(f"- {v}: {text}" for v, text in meta.get("changelog", {}).items())
    threshold = (
        f"{calibration['threshold']:.4g} (quantile {calibration.get('quantile')} of training body-voxel scores)"
        if calibration and "threshold" in calibration
        else "not calibrated: each scan's 99.9th body-voxel percentile is used"
    )
    coords_note = (
        " Channels 1-3: each voxel's x, y, z position in the preprocessed scan (mm), which the sin-cos "
        "condition encodes."
        if meta["screener"]["input_channels"] == 4
        else ""
    )
    stride = 2 ** (len(plans["network"]["channels"]) - 1)
    condition = {
        "masked": f"masking-invariant dense UNet ({cfg['cond_dim']} channels)",
        "sincos": f"sin-cos encoding of each voxel's absolute position ({cfg['cond_dim']} channels)",
        "none": "none (marginal density)",
        "surround": "mean intensities of boxes 30 mm away in 14 directions (fixed filters)",
        "histogram": "soft histogram of the intensities 10-25 mm around each voxel (fixed filters)",
    }.get(cfg["condition"], cfg["condition"])
    features = cfg.get("features", "descriptor")
    descriptor = (
        f"dense 3D UNet ({plans['preset']} preset, {plans['network']['d_desc']} channels), trained with "
        f"{plans['loss']['kind']} on positive voxel pairs from overlapping crops"
    )
    scored = {
        "descriptor": f"- descriptor: {descriptor}",
        "intensity": "- scored features: each voxel's CT intensity (window-scaled); no descriptor network",
        "descriptor+intensity": f"- scored features: descriptor ({descriptor}) and each voxel's CT intensity "
        "(window-scaled)",
        "structure": "- scored features: each voxel's CT intensity smoothed at one voxel, given its local "
        "Gaussian derivatives (gradient, Hessian; appended to the condition); no descriptor "
        "network",
        "descriptor+structure": f"- scored features: descriptor ({descriptor}) and each voxel's CT intensity "
        "smoothed at one voxel, given the condition and the local Gaussian derivatives",
    }[features]
    if cfg["density"] == "contrastive":
        scored = (
            "- scored features: the window-scaled CT crop itself, seen by dense 3D UNets trained to find "
            "synthetic anomalies painted into the training scans (noise-contrastive estimation: their mean "
            "logit estimates the voxel's negative log-likelihood up to the noise distribution's); no "
            "descriptor network"
        )
    if cfg.get("intensity_prior"):
        scored += (
            "\n- intensity prior: -log p(HU) of each voxel under the training scans' body-voxel intensity "
            "histogram is added to the density's NLL"
        )
    return f"""# {name} v{version}

A trained Screener model for unsupervised pathology screening in 3D CT,
packaged as a MONAI bundle. It scores how improbable each voxel's local image pattern is given
its context; no labels were used in training. **Research use only; not for clinical use.**

## Model

{scored}
- condition: {condition}
- density: {cfg["density"]}; its per-voxel negative log-likelihood (NLL) is the anomaly score
- weights: `models/model.pt` (the three stages as one state dict), configuration in
  `models/density_config.json` and `plans.json`

## Inputs and outputs

- whole-scan inference (`configs/inference.yaml`, `screener predict`): CT scans in Hounsfield units
  (NIfTI, NRRD, MHA/MHD or DICOM series), any spacing and orientation. Per case it writes
  `<case>.nii.gz` (anomaly map on the input grid), `<case>_regions.json` (suspicious regions above
  the threshold) and `<case>.png` (overlay).
- the network (`models/model.pt`, exports `models/model.ts` / `model.onnx`): a preprocessed patch
  (B, {meta["screener"]["input_channels"]}, X, Y, Z) -> its NLL map (B, 1, X, Y, Z); X, Y, Z multiples of {stride}.
  Channel 0: CT clipped to [{_fmt(plans["intensity"]["window"])}] HU and scaled to [0, 1], at spacing
  {_fmt(plans["spacing"])} mm.{coords_note}
- region threshold: {threshold}

## Run

```bash
screener predict {name} INPUT OUTPUT_DIR [--device cpu] [--torchscript]
python -m monai.bundle run --config_file {name}/configs/inference.yaml --input INPUT --output_dir OUTPUT_DIR
```

Export and checks with MONAI's tools (run from the folder that holds `{name}/`):

```bash
screener zoo export {name}              # models/model.ts via monai.bundle ckpt_export
screener zoo export {name} --onnx       # models/model.onnx (needs onnx)
python -m monai.bundle verify_metadata --meta_file {name}/configs/metadata.json \\
    --filepath {name}/configs/meta_schema.json
python -m monai.bundle verify_net_in_out network_def --meta_file {name}/configs/metadata.json \\
    --config_file {name}/configs/export.yaml --bundle_root {name}
```

## Training

Crop {_fmt(plans["crop_size"])} voxels, batch {plans["batch_size"]}, {plans["pairs_per_crop"]} pairs per crop,
steps trained: {steps};
AdamW lr {plans["optim"]["lr"]}, one-cycle schedule. Everything is in `plans.json`.

## Data

{ds.get("n_cases", "unknown")} unlabeled CT scans (median shape {_fmt(ds.get("median_shape", "?"))}, median spacing
{_fmt(ds.get("median_spacing", "?"))} mm). Case names and folders were removed from the published plans.

## Limitations

Scores are relative to the training scans: anatomy, scanners, contrast phases or fields of view
that the training data lacked score as anomalous. The threshold flags a fixed share of normal
tissue; it is not a diagnostic operating point. Quality depends on the training budget
(see the steps trained above).

## Changelog

{changelog}

## License

Apache-2.0 (see `LICENSE`). Copyright (c) Screener contributors.
"""
