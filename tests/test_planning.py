import json
import re

import numpy as np
import pytest
from conftest import ras_affine, simple_ct, write_nifti

from screener_plans.errors import ScreenerError
from screener_plans.planning.fingerprint import HIST_LO, build_fingerprint, fingerprint_image, hist_percentile
from screener_plans.planning.planner import fit_crop_and_batch, plan, target_spacing
from screener_plans.planning.plans import load_plans, parse_overrides, validate_plans


def test_fingerprint_statistics_match_numpy():
    hu = simple_ct((40, 36, 20), seed=3)
    fp = fingerprint_image("x", hu, ras_affine((1.0, 1.0, 2.0)))
    body = hu > -500  # simple_ct's body has no holes connected to air except lungs, filled per slice
    from screener_plans.data.body import body_mask

    mask = body_mask(hu)
    vals = hu[mask]
    assert fp["body_voxels"] == int(mask.sum()) and mask.sum() > body.sum()  # lungs were filled in
    assert fp["hu"]["mean"] == pytest.approx(vals.mean(), abs=1e-3)
    assert fp["hu"]["std"] == pytest.approx(vals.std(), abs=1e-3)
    assert fp["hu"]["p00_5"] == pytest.approx(np.percentile(vals, 0.5), abs=1e-3)
    assert fp["hu"]["p99_5"] == pytest.approx(np.percentile(vals, 99.5), abs=1e-3)
    assert fp["shape"] == [40, 36, 20] and fp["spacing"] == [1.0, 1.0, 2.0]
    assert fp["orientation"] == "RAS" and not fp["oblique"]


def test_histogram_percentile_matches_numpy_on_integers():
    rng = np.random.default_rng(0)
    sample = rng.integers(-1000, 1500, size=5001)
    hist = np.bincount(sample - HIST_LO, minlength=6000)
    for q in (0.5, 10, 50, 99.5):
        assert hist_percentile(hist, q) == pytest.approx(np.percentile(sample, q), abs=1e-9)


def test_pooled_statistics_and_cache(ct_folder, tmp_path):
    run = tmp_path / "run"
    fp = build_fingerprint(ct_folder, run, workers=1, progress=False)
    assert fp["n_cases"] == 4
    pooled = fp["pooled_hu"]
    assert -900 < pooled["p00_5"] < -700 and 400 < pooled["p99_5"] < 700
    cached = sorted((run / ".cache" / "fingerprint").glob("*.json"))
    assert len(cached) == 4
    # a re-run reads nothing new: cache files are not rewritten
    mtimes = [p.stat().st_mtime_ns for p in cached]
    write_nifti(ct_folder / "case_new.nii.gz", simple_ct((40, 40, 20), seed=9), ras_affine())
    fp2 = build_fingerprint(ct_folder, run, workers=1, progress=False)
    assert fp2["n_cases"] == 5
    assert [p.stat().st_mtime_ns for p in cached] == mtimes


def test_anisotropy_rule():
    # isotropic-ish: the median
    sp = np.array([[1.0, 1.0, 1.5], [0.8, 0.8, 1.0], [0.9, 0.9, 1.2]])
    sh = np.array([[300, 300, 200]] * 3)
    np.testing.assert_allclose(target_spacing(sp, sh), [0.9, 0.9, 1.2])
    # thick slices and few of them: 10th percentile of the coarse axis
    sp = np.array([[0.7, 0.7, 5.0]] * 8 + [[0.7, 0.7, 2.5], [0.7, 0.7, 3.0]])
    sh = np.array([[512, 512, 60]] * 10)
    t = target_spacing(sp, sh)
    assert t[0] == pytest.approx(0.7)
    assert t[2] == pytest.approx(np.percentile(sp[:, 2], 10)) and t[2] < 5.0
    # coarse but many slices: keep the median
    sh = np.array([[512, 512, 400]] * 10)
    assert target_spacing(sp, sh)[2] == pytest.approx(5.0)


def test_crop_fits_memory_and_stride():
    def estimate(crop, n):
        return np.prod(crop) * n * 1000.0  # bytes

    crop, batch = fit_crop_and_batch(96, (200, 180, 150), 8, 4, memory_gb=100.0, estimate=estimate)
    assert crop == [96, 96, 96] and batch == 4
    crop, batch = fit_crop_and_batch(96, (200, 180, 150), 8, 4, memory_gb=2.0, estimate=estimate)
    assert all(c % 8 == 0 for c in crop) and estimate(crop, 2 * batch) <= 2 * 2**30
    assert max(crop) < 96
    # never larger than the median image
    crop, _ = fit_crop_and_batch(96, (60, 50, 41), 16, 2, memory_gb=100.0, estimate=estimate)
    assert crop == [48, 48, 32]
    with pytest.raises(ScreenerError, match="memory-gb"):
        fit_crop_and_batch(96, (200, 200, 200), 8, 1, memory_gb=1e-6, estimate=estimate)


def test_plan_writes_valid_plans_with_overrides(ct_folder, tmp_path):
    run = tmp_path / "run"
    plans = plan(
        ct_folder,
        run,
        device="cpu",
        memory_gb=4,
        overrides=["steps.descriptor=7", "crop_scale=[0.8, 1.2]"],
        workers=1,
        progress=False,
    )
    on_disk = load_plans(run / "plans.json")
    assert on_disk == json.loads(json.dumps(plans))
    assert plans["steps"]["descriptor"] == 7 and plans["derived"]["steps"]["descriptor"] != 7
    assert plans["overrides"] == {"device": "cpu", "memory_gb": 4.0, "steps.descriptor": 7, "crop_scale": [0.8, 1.2]}
    stride = 2 ** (len(plans["network"]["channels"]) - 1)
    assert all(c % stride == 0 for c in plans["crop_size"])
    assert plans["dataset"]["n_cases"] == 4
    assert (run / "fingerprint.json").exists()


def test_plans_validation_names_the_bad_key(ct_folder, tmp_path):
    plans = plan(ct_folder, tmp_path / "run", device="cpu", workers=1, progress=False)
    bad = json.loads(json.dumps(plans))
    bad["masking"]["ratio"] = 1.5
    with pytest.raises(ScreenerError, match="'masking.ratio'"):
        validate_plans(bad)
    bad = json.loads(json.dumps(plans))
    del bad["steps"]["density"]
    with pytest.raises(ScreenerError, match="missing key 'steps.density'"):
        validate_plans(bad)
    bad = json.loads(json.dumps(plans))
    bad["crop_size"] = [30, 32, 32]
    with pytest.raises(ScreenerError, match="divisible"):
        validate_plans(bad)
    bad = json.loads(json.dumps(plans))
    bad["schema_version"] = 99
    with pytest.raises(ScreenerError, match="schema version 99 is not supported"):
        validate_plans(bad)
    with pytest.raises(ScreenerError, match="unknown plans key"):
        plan(ct_folder, tmp_path / "run2", device="cpu", overrides=["not_a_key=3"], workers=1, progress=False)
    assert not (tmp_path / "run2").exists()  # refused before any case was read
    for item, message in (
        ("seed=abc", "--set seed='abc': must be a non-negative integer"),
        ("steps.condition=-5", "--set steps.condition=-5: must be a positive integer"),
    ):
        with pytest.raises(ScreenerError, match=re.escape(message)):
            plan(ct_folder, tmp_path / "run3", device="cpu", overrides=[item], workers=1, progress=False)
        assert not (tmp_path / "run3").exists()  # the value is named as given, before any work


def test_parse_overrides():
    assert parse_overrides(["a.b=3", "c=[1, 2]", "d=true", "e=abc"]) == {"a.b": 3, "c": [1, 2], "d": True, "e": "abc"}
    with pytest.raises(ScreenerError):
        parse_overrides(["novalue"])


def test_bad_cases_stop_or_are_skipped(ct_folder, tmp_path):
    (ct_folder / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08garbage")
    write_nifti(ct_folder / "flat.nii.gz", np.full((32, 32, 1), -1000), ras_affine())
    with pytest.raises(ScreenerError) as e:
        plan(ct_folder, tmp_path / "run", device="cpu", workers=1, progress=False)
    msg = str(e.value)
    assert "2 case(s) cannot be used" in msg and "broken.nii.gz" in msg and "flat.nii.gz" in msg
    assert "--skip-bad" in msg and "\n" not in msg
    assert not (tmp_path / "run" / "plans.json").exists()
    plans = plan(ct_folder, tmp_path / "run", device="cpu", skip_bad=True, workers=1, progress=False)
    assert plans["dataset"]["n_cases"] == 4 and len(plans["dataset"]["skipped"]) == 2


@pytest.mark.slow
def test_parallel_workers_give_same_fingerprint(ct_folder, tmp_path):
    a = build_fingerprint(ct_folder, tmp_path / "a", workers=1, progress=False)
    b = build_fingerprint(ct_folder, tmp_path / "b", workers=2, progress=False)
    assert a["pooled_hu"] == b["pooled_hu"] and a["cases"] == b["cases"]


@pytest.mark.slow
def test_case_pool_workers_share_the_cores(monkeypatch):
    """N preprocessing workers each get cores / N threads for their volume's work, not all cores."""
    from screener_plans import parallel

    monkeypatch.setattr(parallel, "usable_cpus", lambda: 8)
    with parallel.case_pool(2) as pool:
        assert pool.submit(parallel.worker_threads).result() == 4
    with parallel.case_pool(16) as pool:
        assert pool.submit(parallel.worker_threads).result() == 1
    assert parallel.worker_threads() == 8  # the calling process keeps its own


def test_trained_run_is_not_planned_again_and_its_plans_not_silently_kept(ct_folder, tmp_path):
    """New plans under trained stages would leave them stale; `plan-and-train --set` on an
    existing run would be silently dropped: both are refused before any work."""
    from screener_plans.pipeline import plan_and_train

    run = tmp_path / "run"
    plan(ct_folder, run, device="cpu", workers=1, progress=False, overrides=["steps.condition=40"])
    with pytest.raises(ScreenerError, match=r"planned with steps.condition=40; --set steps.condition=5"):
        plan_and_train(ct_folder, run, device="cpu", workers=1, overrides=["steps.condition=5"])
    assert not (run / "preprocessed").exists()
    (run / "condition" / "models").mkdir(parents=True)
    (run / "condition" / "models" / "model.pt").write_bytes(b"x")
    before = (run / "plans.json").read_text()
    with pytest.raises(ScreenerError, match=r"holds stages trained with its current plans \(condition\)"):
        plan(ct_folder, run, device="cpu", workers=1, progress=False, overrides=["spacing=[3.0, 3.0, 3.0]"])
    assert (run / "plans.json").read_text() == before
