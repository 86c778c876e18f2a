"""Metrics: agreement with exact sort-based references, pooling, 26-connectivity, evaluate()."""

import json

import nibabel as nib
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from screener_plans.errors import ScreenerError
from screener_plans.metrics import VoxelMetricAccumulator, accumulate, aupro, auroc, evaluate, partial_auroc
from screener_plans.metrics import accumulator as accumulator_module

TOL = 1e-3


def _area_to(x, y, max_x):
    """Exact normalised area of the piecewise-linear curve up to max_x (independent of the package)."""
    k = np.searchsorted(x, max_x, side="right")
    xs = np.append(x[:k], max_x)
    ys = np.append(y[:k], np.interp(max_x, x, y))
    return np.trapezoid(ys, xs) / max_x


def exact_partial_auroc(labels, scores, max_fpr=0.3):
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return _area_to(fpr, tpr, max_fpr)


def exact_aupro(negative_scores, region_scores, max_fpr=0.3):
    """Direct per-threshold PRO curve: every distinct score is a threshold."""
    negatives = np.sort(negative_scores)
    regions = [np.sort(r) for r in region_scores]
    thresholds = np.unique(np.concatenate([negatives] + regions))[::-1]

    def fraction_at_least(sorted_values, t):
        return (sorted_values.size - np.searchsorted(sorted_values, t, side="left")) / sorted_values.size

    fpr = np.array([0.0] + [fraction_at_least(negatives, t) for t in thresholds])
    pro = np.array([0.0] + [np.mean([fraction_at_least(r, t) for r in regions]) for t in thresholds])
    return _area_to(fpr, pro, max_fpr)


def _region_volume(rng, shift=1.5, round_to=None):
    """10^3 volume with five explicitly placed regions; returns scores, labels, region index lists."""
    regions = [
        [(x, y, z) for x in (1, 2) for y in (1, 2) for z in (1, 2)],  # cube
        [(5, 5, 5), (6, 6, 6), (7, 7, 7)],  # corner-diagonal chain: one region only with 26-conn
        [(1, 8, 8)],
        [(8, 1, 1), (8, 2, 2)],  # edge-diagonal pair
        [(4, 7, z) for z in range(5)],  # a line, with instance id 2
    ]
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    for i, region in enumerate(regions):
        for voxel in region:
            labels[voxel] = 2 if i == 4 else 1
    scores = rng.normal(size=labels.shape)
    for i, region in enumerate(regions):
        for voxel in region:
            scores[voxel] += shift * (i + 1) / 3 + rng.normal()
    if round_to is not None:
        scores = np.round(scores / round_to) * round_to
    return scores, labels, regions


def test_auroc_matches_sklearn_continuous_and_ties():
    rng = np.random.default_rng(0)
    labels = rng.random(20000) < 0.1
    continuous = rng.normal(size=labels.size) + labels
    tied = np.round(continuous * 2)  # ~20 distinct values, heavy ties
    for scores in (continuous, tied, tied.astype(np.float32), (tied * 3).astype(np.int16)):
        assert abs(auroc(scores, labels) - roc_auc_score(labels, scores)) < TOL
        acc = accumulate(scores, labels)
        exact = roc_auc_score(labels, scores)
        assert abs(acc.compute()["auroc"] - exact) <= acc.error_bounds()["auroc"] + 1e-12


def test_partial_auroc_matches_exact_roc_curve():
    rng = np.random.default_rng(1)
    labels = rng.random(20000) < 0.05
    continuous = rng.normal(size=labels.size) + 0.8 * labels
    tied = np.round(continuous * 4)
    for scores in (continuous, tied):
        exact = exact_partial_auroc(labels, scores)
        assert abs(partial_auroc(scores, labels) - exact) < TOL
        assert abs(partial_auroc(scores, labels, max_fpr=0.1) - exact_partial_auroc(labels, scores, 0.1)) < TOL
    # McClish-free: a random predictor's normalised partial area is max_fpr / 2.
    assert abs(partial_auroc(rng.random(200000), rng.random(200000) < 0.2) - 0.15) < 0.01


def test_error_bound_holds_with_coarse_bins():
    rng = np.random.default_rng(2)
    scores, labels, regions = _region_volume(rng)
    acc = VoxelMetricAccumulator(scores.min(), scores.max(), bins=16)
    acc.update(scores, labels)
    negative = scores[labels == 0]
    exact = {
        "auroc": roc_auc_score(labels.ravel() > 0, scores.ravel()),
        "auroc_fpr03": exact_partial_auroc(labels.ravel() > 0, scores.ravel()),
        "aupro_fpr03": exact_aupro(negative, [[scores[v] for v in r] for r in regions]),
    }
    got, bound = acc.compute(), acc.error_bounds()
    for key in exact:
        assert abs(got[key] - exact[key]) <= bound[key] + 1e-12
    assert abs(got["auroc"] - exact["auroc"]) > 1e-4  # the coarse bins do cost accuracy here


def test_aupro_matches_direct_loop_with_26_connectivity():
    rng = np.random.default_rng(3)
    for round_to in (None, 0.5):  # continuous and tied scores
        scores, labels, regions = _region_volume(rng, round_to=round_to)
        acc = accumulate(scores, labels)
        assert acc.n_regions == 5  # the diagonal chains are single regions
        expected = exact_aupro(scores[labels == 0], [[scores[v] for v in r] for r in regions])
        assert abs(acc.compute()["aupro_fpr03"] - expected) < TOL
        assert abs(aupro(scores, labels) - expected) < TOL
        assert (
            abs(
                aupro(scores, labels, max_fpr=0.05)
                - exact_aupro(scores[labels == 0], [[scores[v] for v in r] for r in regions], 0.05)
            )
            < TOL
        )
    # Under 6-connectivity the chain would be three regions and the answer would differ.
    split = [r for i, r in enumerate(regions) if i != 1] + [[v] for v in regions[1]]
    assert abs(exact_aupro(scores[labels == 0], [[scores[v] for v in r] for r in split]) - expected) > 5 * TOL


def test_pooled_over_volumes():
    rng = np.random.default_rng(4)
    (s1, y1, r1), (s2, y2, r2) = _region_volume(rng, shift=1.0), _region_volume(rng, shift=3.0)
    s2 = s2 + 0.5  # different score levels per volume: pooled differs from the per-volume mean
    acc = accumulate([s1, s2], [y1, y2])
    assert acc.n_regions == 10  # same positions in two volumes are different regions
    flat_scores = np.concatenate([s1.ravel(), s2.ravel()])
    flat_labels = np.concatenate([y1.ravel(), y2.ravel()]) > 0
    got = acc.compute()
    assert abs(got["auroc"] - roc_auc_score(flat_labels, flat_scores)) < TOL
    assert abs(got["auroc_fpr03"] - exact_partial_auroc(flat_labels, flat_scores)) < TOL
    region_scores = [[s1[v] for v in r] for r in r1] + [[s2[v] for v in r] for r in r2]
    expected = exact_aupro(flat_scores[~flat_labels], region_scores)
    assert abs(got["aupro_fpr03"] - expected) < TOL
    # merging per-volume accumulators gives the same as accumulating together
    a, b = acc.empty_like(), acc.empty_like()
    a.update(s1, y1)
    b.update(s2, y2)
    a.merge(b)
    assert a.compute() == got


def test_mask_and_slabs_and_memory_order(monkeypatch):
    rng = np.random.default_rng(5)
    scores, labels, _ = _region_volume(rng)
    mask = rng.random(scores.shape) < 0.7
    mask[5:8, 5:8, 5:8] = True  # keep the diagonal chain whole
    reference = accumulate(scores, labels, mask)
    expected = roc_auc_score(labels[mask] > 0, scores[mask])
    assert abs(reference.compute()["auroc"] - expected) < TOL
    unmasked = reference.empty_like()
    unmasked.update(scores, labels)
    monkeypatch.setattr(accumulator_module, "_CHUNK_VOXELS", 150)  # many slabs per volume
    for m, expected_acc in ((mask, reference), (None, unmasked)):
        for order in ("C", "F"):
            acc = reference.empty_like()
            acc.update(
                np.asarray(scores, order=order),
                np.asarray(labels, order=order),
                None if m is None else np.asarray(m, order="C"),
            )
            assert np.array_equal(acc.counts, expected_acc.counts)
            assert np.allclose(acc.overlap, expected_acc.overlap)
            assert acc.n_regions == expected_acc.n_regions


def test_perfect_and_random_predictors():
    rng = np.random.default_rng(6)
    labels = np.zeros((60, 60, 60), dtype=np.uint8)
    for cx, cy, cz in rng.integers(8, 52, size=(12, 3)):
        x, y, z = np.ogrid[:60, :60, :60]
        labels[(x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= rng.integers(2, 6) ** 2] = 1
    perfect = labels + 0.1 * rng.random(labels.shape)
    assert accumulate(perfect, labels).compute() == {"auroc": 1.0, "auroc_fpr03": 1.0, "aupro_fpr03": 1.0}
    got = accumulate(rng.random(labels.shape).astype(np.float32), labels).compute()
    assert abs(got["auroc"] - 0.5) < 0.02
    assert abs(got["auroc_fpr03"] - 0.15) < 0.02
    assert abs(got["aupro_fpr03"] - 0.15) < 0.03


def test_outlier_does_not_ruin_resolution():
    rng = np.random.default_rng(7)
    labels = rng.random(50000) < 0.02
    scores = (rng.normal(size=labels.size) + labels).astype(np.float32)
    scores[0], scores[1] = 1e30, -1e20  # e.g. a density blow-up
    scores[2] = np.inf
    assert abs(auroc(scores, labels) - roc_auc_score(labels, np.nan_to_num(scores, posinf=1e38))) < TOL


def test_edge_cases():
    labels = np.zeros((4, 4, 4), dtype=np.uint8)
    scores = np.random.default_rng(8).random(labels.shape)
    acc = accumulate(scores, labels)
    assert all(np.isnan(v) for v in acc.compute().values())
    assert "no positive" in acc.undefined_reason()
    assert np.isnan(auroc(scores, np.ones_like(labels)))
    labels[1, 1, 1] = 1
    bad = scores.copy()
    bad[2, 2, 2] = np.nan
    with pytest.raises(ScreenerError, match="NaN"):
        acc.update(bad, labels)
    assert acc.n_positive == 0 and acc.n_regions == 0  # nothing committed
    with pytest.raises(ScreenerError, match="shape"):
        acc.update(scores, labels[:3])
    assert accumulate(np.zeros(10), np.arange(10) < 3).compute()["auroc"] == 0.5  # constant scores


def _save(path, array, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine), str(path))


def _make_folders(tmp_path, rng):
    folders = {name: tmp_path / name for name in ("pred", "labels", "masks")}
    for folder in folders.values():
        folder.mkdir()
    data = {}
    for i, (case, ext) in enumerate([("a", ".nii.gz"), ("b", ".nii"), ("c", ".nii.gz")]):
        scores, labels, _ = _region_volume(rng, shift=1.0 + i)
        if case == "c":
            labels[:] = 0  # no positives in this case
        scores = scores.astype(np.float32)
        mask = np.ones(scores.shape, dtype=np.uint8)
        mask[0] = 0
        _save(folders["pred"] / f"{case}{ext}", scores)
        _save(folders["labels"] / f"{case}.nii.gz", labels)
        _save(folders["masks"] / f"{case}.nii.gz", mask)
        data[case] = (scores, labels, mask)
    (folders["pred"] / "a_regions.json").write_text("{}")
    (folders["pred"] / "a.png").write_bytes(b"\x89PNG")
    _save(folders["pred"] / "unlabelled.nii.gz", np.zeros((3, 3, 3), np.float32))
    return folders, data


def test_evaluate_nifti_folders(tmp_path, caplog):
    rng = np.random.default_rng(9)
    folders, data = _make_folders(tmp_path, rng)
    with caplog.at_level("WARNING"):
        result = evaluate(folders["pred"], folders["labels"], folders["masks"])
    json.dumps(result)  # JSON-ready: no NaN, no numpy scalars
    assert result["unlabelled_predictions"] == ["unlabelled"]  # said, not silently left out
    assert "1 of 4 predictions" in caplog.text and "unlabelled" in caplog.text
    assert result["n_cases"] == 3 and set(result["cases"]) == {"a", "b", "c"}
    assert result["n_regions"] == result["n_lesions"] == 10
    scores = np.concatenate([s[m > 0] for s, _, m in data.values()])
    labels = np.concatenate([y[m > 0] for _, y, m in data.values()]) > 0
    assert abs(result["metrics"]["auroc"] - roc_auc_score(labels, scores)) < TOL
    assert abs(result["metrics"]["auroc_fpr03"] - exact_partial_auroc(labels, scores)) < TOL
    s_a, y_a, m_a = data["a"]
    case_a = result["cases"]["a"]
    assert abs(case_a["auroc"] - roc_auc_score(y_a[m_a > 0] > 0, s_a[m_a > 0])) < TOL
    assert case_a["n_regions"] == case_a["n_lesions"] == 5
    assert result["cases"]["c"]["auroc"] is None and "no positive" in result["cases"]["c"]["note"]
    assert result["cases"]["c"]["aupro_fpr03"] is None
    # without masks every voxel counts
    unmasked = evaluate(folders["pred"], folders["labels"])
    assert unmasked["n_voxels"] == 3 * 1000


def test_evaluate_errors(tmp_path):
    rng = np.random.default_rng(10)
    folders, _ = _make_folders(tmp_path, rng)
    with pytest.raises(ScreenerError, match="does not exist"):
        evaluate(tmp_path / "nope", folders["labels"])
    with pytest.raises(ScreenerError, match="a.nii.gz: is a file; give the folder of label files"):
        evaluate(folders["pred"], folders["labels"] / "a.nii.gz")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ScreenerError, match="no label files"):
        evaluate(folders["pred"], empty)

    (folders["pred"] / "b.nii").unlink()
    with pytest.raises(ScreenerError, match="no prediction.*--only-predicted true") as info:
        evaluate(folders["pred"], folders["labels"])
    assert "b.nii.gz" in str(info.value)
    subset = evaluate(folders["pred"], folders["labels"], only_predicted=True)  # the cases that have a map
    assert subset["unpredicted_labels"] == ["b"] and set(subset["cases"]) == {"a", "c"}

    _save(folders["pred"] / "b.nii.gz", np.zeros((10, 10, 9), np.float32))
    with pytest.raises(ScreenerError, match="shape mismatch") as info:
        evaluate(folders["pred"], folders["labels"])
    assert str(folders["pred"] / "b.nii.gz") in str(info.value)
    assert str(folders["labels"] / "b.nii.gz") in str(info.value)

    bad = np.zeros((10, 10, 10), np.float32)
    bad[3, 3, 3] = np.nan
    _save(folders["pred"] / "b.nii.gz", bad)
    with pytest.raises(ScreenerError, match="NaN") as info:
        evaluate(folders["pred"], folders["labels"])
    assert "b.nii.gz" in str(info.value)

    for case in ("a", "b", "c"):
        _save(folders["labels"] / f"{case}.nii.gz", np.zeros((10, 10, 10), np.uint8))
    _save(folders["pred"] / "b.nii.gz", np.zeros((10, 10, 10), np.float32))
    with pytest.raises(ScreenerError, match="no positive"):
        evaluate(folders["pred"], folders["labels"])


def test_evaluate_refuses_ct_scans_passed_as_maps(tmp_path):
    rng = np.random.default_rng(11)
    folders, data = _make_folders(tmp_path, rng)
    ct = rng.integers(-1024, 1500, size=(10, 10, 10)).astype(np.int16)  # HU, as a CT scan holds
    _save(folders["pred"] / "b.nii", ct)
    with pytest.raises(ScreenerError, match="looks like a CT scan") as info:
        evaluate(folders["pred"], folders["labels"])
    assert str(folders["pred"] / "b.nii") in str(info.value)
    (folders["pred"] / "b_regions.json").write_text("{}")  # written by `screener predict`: trusted
    assert evaluate(folders["pred"], folders["labels"])["n_cases"] == 3
