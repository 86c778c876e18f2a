"""Dense descriptor / condition features of one CT scan (the stage bundles' ``inference.yaml``).

The scan is preprocessed exactly as in training and the stage's network runs with a sliding
window over it. Features are written as a 4D NIfTI (X, Y, Z, channels) on the preprocessed
grid, with an affine that places that grid in the scan's world coordinates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from screener_plans.errors import ScreenerError


def cache_affine(meta: dict) -> np.ndarray:
    """World affine of the preprocessed (resampled, body-cropped) grid of a case."""
    ras_affine = np.asarray(meta["ras_affine"], dtype=np.float64)
    ratio = np.asarray(meta["ras_shape"], dtype=np.float64) / np.asarray(meta["resampled_shape"], dtype=np.float64)
    to_ras = np.eye(4)
    to_ras[:3, :3] = np.diag(ratio)
    to_ras[:3, 3] = (np.asarray(meta["crop_start"], dtype=np.float64) + 0.5) * ratio - 0.5
    return ras_affine @ to_ras


def dense_features(plans_file, stage: str, image, output, model_file=None, device="auto", sw_batch_size=2) -> Path:
    """Write ``stage``'s dense features of the scan ``image`` to ``output`` (.nii.gz)."""
    import nibabel as nib
    from monai.inferers import sliding_window_inference

    from screener_plans.data.checks import validate_ct
    from screener_plans.data.preprocess import preprocess_image
    from screener_plans.data.readers import find_cases, read_case
    from screener_plans.device import resolve_device
    from screener_plans.engines.models import load_stage_network
    from screener_plans.io_utils import atomic_path
    from screener_plans.planning.plans import load_plans

    if not image or not output:
        raise ScreenerError("--image and --output are required")
    plans = load_plans(plans_file)
    run_dir = Path(plans_file).resolve().parent
    device = resolve_device(device)
    net = load_stage_network(run_dir, plans, stage, path=model_file).to(device)
    cases = find_cases(image)
    if len(cases) != 1:
        raise ScreenerError(f"{image}: expected one scan (a file or a DICOM series folder), found {len(cases)}")
    img = validate_ct(read_case(cases[0]))
    cache, _, meta = preprocess_image(img, plans)
    x = torch.from_numpy(cache.astype(np.float32))[None, None].to(device)
    if stage == "condition":
        x = torch.cat([x, torch.zeros_like(x)], dim=1)
    with torch.no_grad():
        feats = sliding_window_inference(
            x,
            plans["crop_size"],
            sw_batch_size,
            net,
            overlap=plans["inference"]["overlap"],
            mode=plans["inference"]["blend"],
        )
    arr = np.moveaxis(feats[0].float().cpu().numpy(), 0, -1).astype(np.float32)
    output = Path(output)
    with atomic_path(output, suffix=".nii.gz") as tmp:
        nifti = nib.Nifti1Image(arr, cache_affine(meta))
        nifti.header.set_xyzt_units("mm")
        nib.save(nifti, tmp)
    return output
