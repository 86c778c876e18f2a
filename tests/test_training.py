"""Descriptor / condition / density training on tiny synthetic CT: it runs, learns, resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from screener_plans.bundle_runner import train_stage
from screener_plans.data.preprocess import preprocess
from screener_plans.planning.planner import plan
from screener_plans.planning.plans import load_plans
from screener_plans.synthetic.phantoms import make_phantom, make_synthetic_dataset

pytestmark = pytest.mark.slow  # trains stages or kills subprocesses

SMALL = [
    "crop_size=[32, 32, 32]",
    "pairs_per_crop=128",
    "checkpoint_every=10",
    "spacing=[3.0, 3.0, 3.0]",
    "density.batch_size=2",
    "inference.sw_batch_size=4",
]


def _log(run, stage):
    return [json.loads(line) for line in (run / stage / "logs" / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Six small phantoms, planned and preprocessed, descriptor and condition trained briefly."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("train")
    make_synthetic_dataset(
        root / "data", cases=8, seed=1, test_cases=2, progress=False, shape=(96, 96, 48), spacing=(3.0, 3.0, 4.0)
    )
    run = root / "run"
    plan(root / "data" / "train", run, device="cpu", overrides=SMALL, workers=1, progress=False)
    preprocess(run, load_plans(run / "plans.json"), workers=1, progress=False)
    train_stage(run, "descriptor", max_steps=60)
    train_stage(run, "condition", max_steps=60)
    return run


def test_ssl_training_lowers_the_loss(tiny_run):
    for stage in ("descriptor", "condition"):
        log = _log(tiny_run, stage)
        assert log[-1]["step"] == 60
        first, last = log[0]["loss"], np.mean([r["loss"] for r in log[-2:]])
        assert last < first, (stage, first, last)
        assert set(log[0]) >= {"invariance", "variance", "covariance", "lr", "steps_per_s", "data_wait", "eta_s"}
        assert (tiny_run / stage / "models" / "model.pt").exists()


def _cache_tissue(plans, seed):
    """A phantom preprocessed like training data, with its tissue classes on the cache grid."""
    from screener_plans.data.geometry import CaseGeometry
    from screener_plans.data.preprocess import preprocess_image
    from screener_plans.data.readers import CaseImage

    ph = make_phantom(seed, lesions=False, shape=(96, 96, 48), spacing=(3.0, 3.0, 4.0))
    img = CaseImage("p", "p", ph.hu.astype(np.float32), ph.affine)
    image, mask, meta = preprocess_image(img, plans)
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in image.shape], indexing="ij"), -1).reshape(-1, 3)
    orig = np.rint(CaseGeometry(meta).to_original(idx)).astype(int)
    orig = np.clip(orig, 0, np.array(ph.tissue.shape) - 1)
    tissue = ph.tissue[orig[:, 0], orig[:, 1], orig[:, 2]].reshape(image.shape)
    return image.astype(np.float32), mask.astype(bool), tissue


def _dense(net, image):
    stride = 8
    pad = [(0, (-s) % stride) for s in image.shape]
    x = torch.from_numpy(np.pad(image, pad))[None, None]
    with torch.no_grad():
        f = net(x)[0]
    return f[:, : image.shape[0], : image.shape[1], : image.shape[2]].numpy()


def _knn_accuracy(train_x, train_y, test_x, test_y, k=5):
    from sklearn.neighbors import KNeighborsClassifier

    clf = KNeighborsClassifier(k).fit(train_x, train_y)
    return float((clf.predict(test_x) == test_y).mean())


def test_descriptors_carry_anatomy(tiny_run):
    from screener_plans.engines.models import load_stage_network

    plans = load_plans(tiny_run / "plans.json")
    net = load_stage_network(tiny_run, plans, "descriptor")
    rng = np.random.default_rng(0)
    sets = []
    for seed in (101, 202):
        image, mask, tissue = _cache_tissue(plans, seed)
        feats = _dense(net, image)
        keep = mask & (tissue > 0)
        # balance classes: at most 150 voxels per tissue
        xs, ys, ints = [], [], []
        for t in np.unique(tissue[keep]):
            where = np.argwhere(keep & (tissue == t))
            pick = where[rng.permutation(len(where))[:150]]
            xs.append(feats[:, pick[:, 0], pick[:, 1], pick[:, 2]].T)
            ints.append(image[pick[:, 0], pick[:, 1], pick[:, 2]][:, None])
            ys.append(np.full(len(pick), t))
        sets.append((np.concatenate(xs), np.concatenate(ints), np.concatenate(ys)))
    (fa, ia, ya), (fb, ib, yb) = sets
    acc_desc = _knn_accuracy(fa, ya, fb, yb)
    acc_int = _knn_accuracy(ia, ya, ib, yb)
    assert acc_desc > acc_int + 0.05, (acc_desc, acc_int)


def test_condition_is_less_sensitive_to_masking_than_descriptor(tiny_run):
    from screener_plans.engines.models import load_stage_network
    from screener_plans.planning.plans import load_plans

    plans = load_plans(tiny_run / "plans.json")
    desc = load_stage_network(tiny_run, plans, "descriptor")
    cond = load_stage_network(tiny_run, plans, "condition")
    image, mask, _ = _cache_tissue(plans, 303)
    zeros = np.zeros_like(image)
    d0 = _dense(desc, image)

    def cond_feats(img, m):
        stride = 8
        pad = [(0, (-s) % stride) for s in img.shape]
        x = torch.from_numpy(np.stack([np.pad(img, pad), np.pad(m, pad)]))[None]
        with torch.no_grad():
            f = cond(x)[0]
        return f[:, : img.shape[0], : img.shape[1], : img.shape[2]].numpy()

    c0 = cond_feats(image, zeros)
    rng = np.random.default_rng(1)
    body = np.argwhere(mask)
    ratios_d, ratios_c = [], []
    b = plans["masking"]["block_size"]
    for p in body[rng.permutation(len(body))[:12]]:
        lo = np.maximum(p - b // 2, 0)
        hi = lo + b
        block = np.zeros_like(image)
        block[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1
        d1 = _dense(desc, image * (1 - block))
        c1 = cond_feats(image * (1 - block), block)
        ratios_d.append(np.linalg.norm(d1[:, p[0], p[1], p[2]] - d0[:, p[0], p[1], p[2]]) / d0[:, mask].std(1).sum())
        ratios_c.append(np.linalg.norm(c1[:, p[0], p[1], p[2]] - c0[:, p[0], p[1], p[2]]) / c0[:, mask].std(1).sum())
    assert np.mean(ratios_c) < np.mean(ratios_d), (np.mean(ratios_c), np.mean(ratios_d))


def _density_run(tiny_run, run, stages):
    """A run of its own for one density model: plans copied, cache and trained ``stages`` linked."""
    import shutil

    run.mkdir()
    shutil.copyfile(tiny_run / "plans.json", run / "plans.json")
    for name in ["preprocessed", *stages]:
        (run / name).symlink_to(tiny_run / name)
    return run


def _liver_ball(radius_mm: float = 12.0):
    """A clean test phantom, its HU, each voxel's distance (mm) from a liver voxel, and the liver
    voxels within ``radius_mm`` of it (where the tests plant a mass)."""
    ph = make_phantom(404, lesions=False, shape=(96, 96, 48), spacing=(3.0, 3.0, 4.0))
    clean = ph.hu.astype(np.float32)
    liver = np.argwhere(ph.tissue == 6)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in clean.shape], indexing="ij"), -1)
    dist = np.linalg.norm((grid - liver[len(liver) // 2]) * np.array(ph.spacing), axis=-1)
    return ph, clean, dist, (dist < radius_mm) & (ph.tissue == 6)


def _set_smoothing(run, sigma_mm: float) -> None:
    from screener_plans.planning.plans import load_plans, save_plans

    plans = load_plans(run / "plans.json")
    save_plans({**plans, "inference": {**plans["inference"], "smooth_mm": sigma_mm}}, run / "plans.json")


@pytest.mark.parametrize(
    "features,density",
    [("intensity", "gaussian"), ("descriptor", "flow"), ("descriptor+structure", "flow")],
    ids=["masked-intensity-prior", "paper-descriptor-flow", "tiny-default"],
)
def test_density_scores_planted_anomaly_above_normal_tissue(tiny_run, tmp_path, features, density):
    """CT intensity given the masked condition with the intensity prior (no descriptor in the run
    at all), the paper's descriptor + flow and the tiny default (descriptor + smoothed intensity
    given its derivatives, flow) all learn. The model's own map is checked unsmoothed (smoothing
    spreads a 12 mm ball's score into its rim, lowering its mean by design); the default smoothed
    map must still rank the ball above the body's normal tissue."""
    from screener_plans.inference.predict import calibrate, predict

    with_descriptor = features != "intensity"
    run = _density_run(tiny_run, tmp_path / "run", ["condition"] + (["descriptor"] if with_descriptor else []))
    default_smoothing = json.loads((run / "plans.json").read_text())["inference"]["smooth_mm"]
    assert default_smoothing > 0
    _set_smoothing(run, 0.0)
    train_stage(
        run,
        "density",
        max_steps=40,
        features=features,
        density=density,
        condition="masked",
        intensity_prior=features == "intensity",
    )
    cfg = json.loads((run / "density" / "models" / "density_config.json").read_text())
    assert (cfg["features"], cfg["density"], cfg["intensity_prior"]) == (features, density, features == "intensity")
    if features == "intensity":  # the prior's histogram was fitted on the cache and saved with the weights
        table = torch.load(run / "density" / "models" / "model.pt")["neg_log_prob"]
        assert table.numel() > 100 and float(table.min()) > 0 and float(table.std()) > 0.5
    log = _log(run, "density")
    assert log[-1]["loss"] < log[0]["loss"]
    calibrate(run, device="cpu", max_cases=2)
    ph, clean, dist, ball = _liver_ball()
    planted = clean.copy()  # plant a gas-filled ball (an abscess-like finding) inside the liver
    planted[ball] = -900.0
    import nibabel as nib

    inp = tmp_path / "in"
    inp.mkdir()
    for name, hu in (("clean", clean), ("planted", planted)):
        nib.save(nib.Nifti1Image(hu.astype(np.int16), ph.affine), str(inp / f"{name}.nii.gz"))
    summary = predict(run, inp, tmp_path / "out", device="cpu", progress=False)
    assert sorted(d["case"] for d in summary["done"]) == ["clean", "planted"]
    maps = {n: np.asarray(nib.load(str(tmp_path / "out" / f"{n}.nii.gz")).dataobj) for n in ("clean", "planted")}
    assert maps["planted"].shape == clean.shape
    body = (ph.tissue > 0) & ~ball
    # the anomaly raises the score where it is, well above typical tissue, and only there
    assert maps["planted"][ball].mean() > 1.3 * maps["clean"][ball].mean()
    assert np.median(maps["planted"][ball]) > np.quantile(maps["clean"][body], 0.75)
    far = body & (dist > 60)
    assert abs(np.median(maps["planted"][far]) - np.median(maps["clean"][far])) < 0.05 * np.median(maps["clean"][far])
    regions = json.loads((tmp_path / "out" / "planted_regions.json").read_text())
    assert regions["case"] == "planted" and regions["threshold"] > 0
    assert all(r["max_score"] >= regions["threshold"] for r in regions["regions"])
    assert (tmp_path / "out" / "planted.png").stat().st_size > 1000
    _set_smoothing(run, default_smoothing)  # the product's default maps
    calibrate(run, device="cpu", max_cases=2)
    predict(run, inp, tmp_path / "smoothed", device="cpu", progress=False)
    smoothed = {
        n: np.asarray(nib.load(str(tmp_path / "smoothed" / f"{n}.nii.gz")).dataobj) for n in ("clean", "planted")
    }
    assert not np.allclose(smoothed["clean"][body], maps["clean"][body])
    assert np.median(smoothed["planted"][ball]) > np.quantile(smoothed["clean"][body], 0.75)
    assert smoothed["planted"][ball].mean() > 1.15 * smoothed["clean"][ball].mean()
    from screener_plans.zoo import fetch, publish

    publish(run, tmp_path / "zoo", "planted", "1.0.0")  # its card states the training it had
    card = (fetch("planted", tmp_path / "fetched", tmp_path / "zoo") / "docs" / "README.md").read_text()
    trained = ("descriptor 60, " if with_descriptor else "") + "condition 60, density 40"
    assert f"steps trained: {trained}" in card
    _assert_stale_models_are_refused(tiny_run, run)


def _perturb(path):
    state = torch.load(path, weights_only=False)
    key = next(k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point())
    state[key] = state[key] + 1e-3
    torch.save(state, path)


def test_structure_density_finds_a_flat_hyperdense_liver_mass(tiny_run, tmp_path):
    """The structure scorer (smoothed intensity given its local derivatives, Gaussian mixture, no
    trained condition stage; the phantoms' best) learns, and ranks a flat hyperdense liver mass (+100 HU, a value only
    edges and vessels reach) above the body's normal tissue, boundaries included; far from it the
    map is unchanged. (Hypodense masses whose HU a normal tissue has are not found this way: the
    benchmark's liver row shows it.)"""
    import nibabel as nib

    from screener_plans.inference.predict import calibrate, predict

    run = _density_run(tiny_run, tmp_path / "run", [])
    train_stage(run, "density", max_steps=200, features="structure", condition="none", density="mixture")
    cfg = json.loads((run / "density" / "models" / "density_config.json").read_text())
    assert (cfg["features"], cfg["density"], cfg["condition"]) == ("structure", "mixture", "none")
    log = _log(run, "density")
    assert np.mean([r["loss"] for r in log[-3:]]) < log[0]["loss"]
    calibrate(run, device="cpu", max_cases=2)
    ph, clean, dist, ball = _liver_ball()
    planted = clean.copy()
    planted[ball] += 100.0
    inp = tmp_path / "in"
    inp.mkdir()
    for name, hu in (("clean", clean), ("planted", planted)):
        nib.save(nib.Nifti1Image(hu.astype(np.int16), ph.affine), str(inp / f"{name}.nii.gz"))
    predict(run, inp, tmp_path / "out", device="cpu", progress=False)
    maps = {n: np.asarray(nib.load(str(tmp_path / "out" / f"{n}.nii.gz")).dataobj) for n in ("clean", "planted")}
    body = (ph.tissue > 0) & ~ball
    core = ball & (dist < 8)
    assert np.median(maps["planted"][core]) > np.quantile(maps["clean"][body], 0.9)
    assert np.median(maps["planted"][core]) > np.median(maps["clean"][core]) + 1.0
    far = body & (dist > 60)
    assert np.abs(maps["planted"][far] - maps["clean"][far]).max() < 1e-4


def _assert_stale_models_are_refused(tiny_run, run):
    """Retraining the condition leaves the density stale, retraining the density the calibration:
    both are refused with what to run (not silently scored with mismatched parts)."""
    import shutil

    from screener_plans.errors import ScreenerError
    from screener_plans.inference.calibration import calibration_is_current, load_threshold
    from screener_plans.inference.loader import load_scorer

    plans = json.loads((run / "plans.json").read_text())
    assert calibration_is_current(run) and load_threshold(run) is not None
    assert json.loads((run / "calibration.json").read_text())["smooth_mm"] == plans["inference"]["smooth_mm"] > 0
    edited = {**plans, "inference": {**plans["inference"], "smooth_mm": 0.0}}  # maps no longer smoothed
    (run / "plans.json").write_text(json.dumps(edited))
    assert not calibration_is_current(run)
    with pytest.raises(
        ScreenerError, match="calibrated with maps smoothed by .* mm, the plans say inference.smooth_mm 0.0"
    ):
        load_threshold(run)
    (run / "plans.json").write_text(json.dumps(plans))
    (run / "condition").unlink()  # a copy of its own: the fixture's stays as it is
    shutil.copytree(tiny_run / "condition", run / "condition")
    load_scorer(run, plans)  # the same weights, copied: fine
    _perturb(run / "condition" / "models" / "model.pt")
    with pytest.raises(ScreenerError, match="trained on another condition model.*--stage density --resume false"):
        load_scorer(run, plans)
    _perturb(run / "density" / "models" / "model.pt")
    assert not calibration_is_current(run)
    with pytest.raises(ScreenerError, match="calibrated with another density model"):
        load_threshold(run)


@pytest.fixture(scope="module")
def descriptor_reference(tiny_run, tmp_path_factory):
    """A copy of the run before its descriptor stage, and that stage trained 30 steps uninterrupted."""
    import shutil

    root = tmp_path_factory.mktemp("resume")
    base = root / "base"
    shutil.copytree(tiny_run, base, ignore=shutil.ignore_patterns("descriptor", "condition", "density"))
    ref = root / "ref"
    shutil.copytree(base, ref)
    p = subprocess.run(_train_cmd(ref), env=_ENV, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    return base, ref


_ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _train_cmd(run: Path) -> list[str]:
    return [sys.executable, "-m", "screener_plans.cli", "train", str(run), "--stage", "descriptor", "--max-steps", "30"]


def _assert_resumes_to_reference(run: Path, ref: Path) -> str:
    """Re-run the interrupted stage; it must end where the uninterrupted one did. Returns its log."""
    p = subprocess.run(_train_cmd(run), env=_ENV, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resumed from" in p.stderr + p.stdout
    assert not list((run / "descriptor" / "checkpoints").glob(".*"))  # no temp files left behind
    final = _log(run, "descriptor")[-1]
    expected = _log(ref, "descriptor")[-1]
    assert final["step"] == expected["step"] == 30
    assert final["loss"] == pytest.approx(expected["loss"], rel=0.03)
    a = torch.load(run / "descriptor" / "models" / "model.pt")
    b = torch.load(ref / "descriptor" / "models" / "model.pt")
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert diff < 1e-2
    return p.stderr + p.stdout


def test_killed_training_resumes_to_the_same_result(descriptor_reference, tmp_path):
    """SIGKILL mid-run, re-run the same command: it finishes, matching an uninterrupted run."""
    import shutil

    base, ref = descriptor_reference
    run = tmp_path / "run"
    shutil.copytree(base, run)
    proc = subprocess.Popen(_train_cmd(run), env=_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run / "descriptor" / "checkpoints" / "checkpoint_00000010.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(float(np.random.default_rng().uniform(0, 1.0)))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists()
    assert not (run / "descriptor" / "models" / "model.pt").exists()
    _assert_resumes_to_reference(run, ref)


def test_ctrl_c_saves_a_checkpoint_and_the_rerun_resumes_from_it(descriptor_reference, tmp_path):
    """Ctrl-C between periodic checkpoints (here: none planned before the end) still loses no
    finished step: the run saves where it stopped, and the re-run continues from there."""
    import shutil

    base, ref = descriptor_reference
    run = tmp_path / "run"
    shutil.copytree(base, run)
    plans = json.loads((run / "plans.json").read_text())
    plans["checkpoint_every"] = 1000
    (run / "plans.json").write_text(json.dumps(plans))
    log = run / "descriptor" / "logs" / "train_log.jsonl"
    proc = subprocess.Popen(
        _train_cmd(run), env=_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    deadline = time.time() + 120
    while not (log.exists() and log.read_text().strip()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(float(np.random.default_rng().uniform(0, 0.5)))
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: data-loader workers get it too
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode in (130, -signal.SIGINT), out[-2000:]  # exit 130, or ended by the signal itself
    assert "screener: interrupted" in out
    saved = sorted((run / "descriptor" / "checkpoints").glob("checkpoint_*.pt"))
    assert len(saved) == 1, out[-2000:]
    step = int(saved[0].stem.split("_")[1])
    assert 10 <= step < 30, step
    assert f"screener: interrupted: stopped at step {step}; checkpoint" in out  # the last line says where
    assert not (run / "descriptor" / "models" / "model.pt").exists()
    assert f"(step {step})" in _assert_resumes_to_reference(run, ref)  # it went on from there


def test_stage_bundle_inference_writes_dense_features(tiny_run, tmp_path):
    """bundles/screener_descriptor/configs/inference.yaml: features of one scan, placed in world space."""
    import nibabel as nib

    from screener_plans.bundle_runner import run_bundle
    from screener_plans.data.geometry import CaseGeometry
    from screener_plans.data.preprocess import preprocess_image
    from screener_plans.data.readers import find_cases, read_case
    from screener_plans.inference.features import cache_affine
    from screener_plans.planning.plans import load_plans

    scan = sorted((tiny_run.parent / "data" / "test" / "images").glob("*.nii.gz"))[0]
    out = tmp_path / "features.nii.gz"
    import logging

    handlers = logging.getLogger().handlers[:]
    run_bundle(
        "screener_descriptor",
        "inference.yaml",
        plans_file=str(tiny_run / "plans.json"),
        image=str(scan),
        output=str(out),
        device="cpu",
    )
    # the bundle's logging.conf (a handler bound to this moment's stdout) does not outlive the run
    assert logging.getLogger().handlers == handlers
    feats = nib.load(str(out))
    plans = load_plans(tiny_run / "plans.json")
    img = read_case(find_cases(scan)[0])
    cache, _, meta = preprocess_image(img, plans)
    assert feats.shape == tuple(cache.shape) + (plans["network"]["d_desc"],)
    assert np.isfinite(np.asarray(feats.dataobj)).all()
    # a voxel of the scan and its cache position are the same point in the world
    p = np.array([20.0, 30.0, 10.0])
    q = CaseGeometry(meta).to_cache(p)
    np.testing.assert_allclose(
        (cache_affine(meta) @ np.append(q, 1))[:3], (img.affine @ np.append(p, 1))[:3], atol=1e-6
    )
    np.testing.assert_allclose(feats.affine, cache_affine(meta), atol=1e-5)


def test_resumed_density_stage_takes_its_histogram_from_the_checkpoint(tiny_run, tmp_path, monkeypatch):
    """A density stage with the intensity prior, resumed after its step-10 checkpoint, does not
    read the training cases again for the histogram: the checkpoint restores it."""
    import shutil

    from screener_plans.baselines import IntensityBaseline

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("density"))
    train_stage(
        run, "density", max_steps=20, condition="masked", density="flow", features="intensity", intensity_prior=True
    )
    model = run / "density" / "models" / "model.pt"
    table = torch.load(model)["neg_log_prob"]
    assert torch.isfinite(table).all() and float(table.max() - table.min()) > 1.0  # a real histogram
    # as if killed after the step-10 checkpoint
    (run / "density" / "checkpoints" / "checkpoint_00000020.pt").unlink()
    model.unlink()

    def refit(*args, **kwargs):
        raise AssertionError("the histogram was refitted on resume")

    monkeypatch.setattr(IntensityBaseline, "fit", refit)
    train_stage(
        run, "density", max_steps=20, condition="masked", density="flow", features="intensity", intensity_prior=True
    )
    log = _log(run, "density")
    assert log[-1]["step"] == 20
    assert log[-1]["loss"] < log[0]["loss"]  # the resumed run kept learning
    torch.testing.assert_close(torch.load(model)["neg_log_prob"], table)


def test_contrastive_density_trains_through_its_bundle_and_predicts(tiny_run, tmp_path):
    """The contrastive density's stage (no descriptor or condition stage) trains through the
    density bundle on painted crops: on a fixed held-out set of painted crops its loss ends well
    below an untrained model's, and the run calibrates and predicts like any other. (Finding a
    planted mass needs more training than a test affords at these sizes: test_anomalies.py
    checks that on small crops, the quality benchmark on phantoms and real scans.)"""
    import nibabel as nib

    from screener_plans.data.dataset import CropDataset
    from screener_plans.engines.models import build_density_model
    from screener_plans.inference.loader import load_scorer
    from screener_plans.inference.predict import calibrate, predict

    run = _density_run(tiny_run, tmp_path / "run", [])
    train_stage(run, "density", max_steps=120, density="contrastive")
    cfg = json.loads((run / "density" / "models" / "density_config.json").read_text())
    assert (cfg["features"], cfg["density"], cfg["condition"]) == ("intensity", "contrastive", "none")
    plans = load_plans(run / "plans.json")
    crops = CropDataset(run, plans, length=16, seed=999, anomalies={})
    image = torch.stack([crops[i]["image"] for i in range(16)])
    target = torch.stack([crops[i]["target"] for i in range(16)])
    assert target.sum() > 100  # the held-out crops hold visible anomalies
    with torch.no_grad():
        after = float(load_scorer(run, plans).density.loss(image, target))
        before = float(build_density_model(cfg).eval().loss(image, target))
    assert after < 0.7 * before
    calibrate(run, device="cpu", max_cases=2)
    ph, clean, _, _ = _liver_ball()
    inp = tmp_path / "in"
    inp.mkdir()
    nib.save(nib.Nifti1Image(clean.astype(np.int16), ph.affine), str(inp / "clean.nii.gz"))
    summary = predict(run, inp, tmp_path / "out", device="cpu", progress=False)
    assert [d["case"] for d in summary["done"]] == ["clean"]
    score = np.asarray(nib.load(str(tmp_path / "out" / "clean.nii.gz")).dataobj)
    assert score.shape == clean.shape and np.isfinite(score).all()
