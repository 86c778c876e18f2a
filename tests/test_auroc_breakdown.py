"""tools/auroc_breakdown.py: the split of 1 - AUROC by lesion kind and normal tissue."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "auroc_breakdown.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("auroc_breakdown", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_breakdown_adds_up_to_sklearns_auroc(tool):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    n = 4000
    lesion = rng.uniform(size=n) < 0.2
    group = rng.integers(1, 4, n)
    scores = np.round(rng.normal(size=n) + lesion * (group == 1) * 2.0 + lesion * (group == 2) * 0.5, 1)  # ties
    out = tool.auroc_breakdown(scores, lesion, group, group)
    assert out["auroc"] == pytest.approx(roc_auc_score(lesion, scores), abs=1e-12)
    assert sum(out["loss_by_lesion"].values()) == pytest.approx(1 - out["auroc"], abs=1e-12)
    assert sum(out["loss_by_normal"].values()) == pytest.approx(1 - out["auroc"], abs=1e-12)
    # group 3 lesions carry no signal, group 1 a strong one: most of the loss is group 3's
    assert out["loss_by_lesion"][3] > out["loss_by_lesion"][2] > out["loss_by_lesion"][1]
    keep = ~(lesion & (group == 3))
    assert out["auroc_without"][3] == pytest.approx(roc_auc_score(lesion[keep], scores[keep]), abs=1e-12)


def test_synthetic_cases_are_regenerated_from_their_seeds(tool, tmp_path):
    """Every test scan's kind and tissue maps come back from its phantom seed and match its label."""
    import nibabel as nib

    from screener_plans.synthetic.phantoms import make_synthetic_dataset

    make_synthetic_dataset(
        tmp_path, cases=4, seed=3, test_cases=2, progress=False, shape=(72, 72, 40), spacing=(4.5, 4.5, 5.0)
    )
    groups = tool.load_groups(tmp_path, None)
    assert len(groups["cases"]) == 2
    for case, g in groups["cases"].items():
        label = np.asarray(nib.load(tmp_path / "test" / "labels" / f"{case}.nii.gz").dataobj) > 0
        np.testing.assert_array_equal(g["kind"] > 0, g["label"])
        assert g["label"].sum() == label.sum() > 0
        assert set(np.unique(g["tissue"][g["label"]])) <= {9}  # lesion tissue under every label voxel
    # a label that no longer matches its phantom is refused, not silently mis-grouped
    entry = {"case": "x", "phantom_seed": 1, "shape": [72, 72, 40], "spacing": [4.5, 4.5, 5.0]}
    with pytest.raises(ValueError, match="cannot be regenerated"):
        tool.voxel_groups(tmp_path, entry, np.zeros((72, 72, 40), bool))
