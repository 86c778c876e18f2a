"""Shared fixtures: small CT-like volumes written in the formats Screener reads."""

from __future__ import annotations

import os
from pathlib import Path

# MONAI's module loggers (monai.bundle.scripts, ...) bind the sys.stdout of their import: import
# them here, under pytest's session-wide stream, not inside a test whose capsys stream then closes.
import monai.bundle  # noqa: F401,E402
import nibabel as nib
import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


# `screener plan-and-train` options for a run that trains in seconds: CT intensity + prior given the
# masked condition (no descriptor), a Gaussian density, 40 steps per stage on 16^3 crops
QUICK_PLAN_AND_TRAIN = [
    *("--device", "cpu", "--workers", "1"),
    *("--set", "crop_size=[16,16,16]", "--set", "spacing=[3.0,3.0,3.0]"),
    *("--set", "steps.condition=40", "--set", "steps.density=40"),
    *("--set", "checkpoint_every=20", "--set", "pairs_per_crop=32"),
    *("--intensity-prior", "true", "--features", "intensity", "--condition", "masked", "--density", "gaussian"),
]


def simple_ct(shape=(48, 40, 24), seed=0, noise=10.0):
    """A cheap chest-like HU volume in RAS order: air, body, fat rim, two lungs, a spine."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    hu = np.full(shape, -1000.0, dtype=np.float32)
    body = (x / 0.85) ** 2 + (y / 0.7) ** 2 < 1
    hu[body] = -100.0  # fat
    muscle = (x / 0.75) ** 2 + (y / 0.6) ** 2 < 1
    hu[muscle] = 50.0
    for cx in (-0.35, 0.35):
        lung = ((x - cx) / 0.28) ** 2 + (y / 0.4) ** 2 + (z / 1.2) ** 2 < 1
        hu[lung] = -850.0
    spine = (x / 0.12) ** 2 + ((y + 0.45) / 0.12) ** 2 < 1
    hu[spine] = 600.0
    hu += rng.normal(0, noise, shape).astype(np.float32)
    return hu


def ras_affine(spacing=(1.5, 1.5, 2.5), origin=(0.0, 0.0, 0.0)):
    aff = np.diag(list(spacing) + [1.0])
    aff[:3, 3] = origin
    return aff


def write_nifti(path, data, affine, dtype=np.int16):
    data = np.asarray(data)
    if np.issubdtype(dtype, np.integer):
        data = np.round(data)
    img = nib.Nifti1Image(data.astype(dtype), affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return path


def oblique_affine(spacing, degrees=20.0):
    """File axes (i, j, k) run roughly along (-S, +R, -A), rotated ``degrees`` about S (not axis-aligned)."""
    base = np.zeros((3, 3))
    base[2, 0] = -1.0
    base[0, 1] = 1.0
    base[1, 2] = -1.0
    t = np.deg2rad(degrees)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ base @ np.diag(spacing)
    aff[:3, 3] = (12.0, -30.0, 7.0)
    return aff


def write_raw_pixdim(path, data, dims):
    """A .nii.gz with voxel sizes ``dims`` patched into the header (nibabel refuses to write bad ones)."""
    import gzip

    img = nib.Nifti1Image(np.round(data).astype(np.int16), np.eye(4))
    hdr = nib.Nifti1Header(bytes(img.header.binaryblock), check=False)
    hdr["pixdim"][1:4] = dims
    hdr.set_sform(None, code=0)
    hdr.set_qform(None, code=0)
    with gzip.open(path, "wb") as f:
        f.write(hdr.binaryblock + b"\0" * 4 + np.round(data).astype(np.int16).tobytes(order="F"))


def write_ct_folder(folder, n, shape, spacing, seed=0):
    """``folder/case_{i}.nii.gz`` for i < n: small CTs of one shape and spacing (seeds seed, seed+1, ...)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_nifti(folder / f"case_{i}.nii.gz", simple_ct(shape, seed=seed + i), ras_affine(spacing))
    return folder


@pytest.fixture
def ct_folder(tmp_path):
    """A folder of four small NIfTI CTs with varying spacing and shape."""
    d = tmp_path / "data"
    d.mkdir()
    specs = [
        ((48, 40, 24), (1.5, 1.5, 2.5)),
        ((52, 44, 20), (1.4, 1.4, 3.0)),
        ((44, 40, 28), (1.6, 1.6, 2.0)),
        ((48, 44, 24), (1.5, 1.5, 2.5)),
    ]
    for i, (shape, spacing) in enumerate(specs):
        write_nifti(d / f"case_{i}.nii.gz", simple_ct(shape, seed=i), ras_affine(spacing))
    return d
