"""A corpus of bad (and awkward but valid) CT inputs, each in its own folder as case ``scan``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from conftest import oblique_affine, ras_affine, simple_ct, write_nifti, write_raw_pixdim
from dicom_utils import write_dicom_series

SHAPE = (40, 36, 20)
SPACING = (3.0, 3.0, 4.0)


@dataclass
class Entry:
    folder: Path  # holds exactly one case
    path: Path  # the file or DICOM folder of that case
    needle: str | None  # substring of the error; None: a valid input that must give the right result


def write_corpus(root: Path) -> dict[str, Entry]:
    """Write every kind of input into ``root/<kind>/``; returns ``{kind: Entry}``."""
    root = Path(root)
    ct = simple_ct(SHAPE, seed=5)
    out: dict[str, Entry] = {}

    def nifti(kind, data, affine=None, needle=None, dtype=np.int16, name="scan.nii.gz"):
        d = root / kind
        d.mkdir(parents=True)
        path = write_nifti(d / name, data, ras_affine(SPACING) if affine is None else affine, dtype=dtype)
        out[kind] = Entry(d, path, needle)
        return path

    def raw(kind, payload: bytes, needle, name="scan.nii.gz"):
        d = root / kind
        d.mkdir(parents=True)
        (d / name).write_bytes(payload)
        out[kind] = Entry(d, d / name, needle)

    good = nifti("good", ct)
    data = good.read_bytes()
    raw("empty", b"", "empty file")
    raw("truncated", data[: len(data) // 2], "corrupt or truncated")
    raw("garbage", np.random.default_rng(0).bytes(5000), "corrupt or truncated")
    raw("wrong_extension", data, "unsupported format", name="scan.img")
    raw("mislabeled", data, "scan.nrrd", name="scan.nrrd")  # NIfTI bytes behind an NRRD name
    raw("not_nifti", b"this is a text file, not an image\n" * 40, "not a valid NIfTI", name="scan.nii")
    d = root / "unreadable"
    d.mkdir()
    os.symlink(root / "nowhere" / "scan.nii.gz", d / "scan.nii.gz")  # a dangling link: nothing to read
    out["unreadable"] = Entry(d, d / "scan.nii.gz", "broken link")
    nifti("2d", ct[:, :, 0], needle="2D")
    nifti("4d", np.stack([ct] * 3, axis=-1), needle="4D")
    nifti("constant", np.full(SHAPE, -1000.0), needle="constant volume")
    nan = ct.copy()
    nan[3, 4, 5] = np.nan
    nifti("nan", nan, needle="NaN/inf", dtype=np.float32)
    inf = ct.copy()
    inf[5, 4, 3] = np.inf
    nifti("inf", inf, needle="NaN/inf", dtype=np.float32)
    nifti("mri_like", np.abs(ct) / 10.0, needle="do not look like CT")
    nifti("spacing_50mm", ct, affine=ras_affine((3.0, 3.0, 50.0)), needle="implausible voxel spacing")
    for kind, pixdim in (("spacing_zero", (3.0, 0.0, 4.0)), ("spacing_negative", (3.0, -3.0, 4.0))):
        d = root / kind
        d.mkdir()
        write_raw_pixdim(d / "scan.nii.gz", ct, pixdim)
        out[kind] = Entry(d, d / "scan.nii.gz", "spacing")
    d = root / "dicom_no_rescale"
    write_dicom_series(d / "scan", ct, spacing=SPACING, rescale=False)
    out["dicom_no_rescale"] = Entry(d, d / "scan", "not Hounsfield units")
    d = root / "dicom_mixed_series"
    write_dicom_series(d / "scan", ct, spacing=SPACING)  # the CT series: used
    write_dicom_series(d / "scan", np.abs(ct[:, :, :6]) / 10, spacing=SPACING, modality="MR")
    out["dicom_mixed_series"] = Entry(d, d / "scan", None)
    nifti("oblique", np.ascontiguousarray(np.transpose(ct, (2, 0, 1))[::-1, :, ::-1]), affine=oblique_affine(SPACING))
    return out


BAD = [
    "empty",
    "truncated",
    "garbage",
    "wrong_extension",
    "mislabeled",
    "not_nifti",
    "unreadable",
    "2d",
    "4d",
    "constant",
    "nan",
    "inf",
    "mri_like",
    "spacing_50mm",
    "spacing_zero",
    "spacing_negative",
    "dicom_no_rescale",
]
VALID = ["good", "dicom_mixed_series", "oblique"]
