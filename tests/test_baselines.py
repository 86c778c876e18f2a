"""Baselines of the quality benchmark: intensity-only density and the convolutional autoencoder."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from screener_plans.baselines import (
    IntensityBaseline,
    autoencoder_path,
    autoencoder_scorer,
    build_autoencoder,
    intensity_path,
    load_autoencoder,
    train_autoencoder,
)
from screener_plans.baselines.autoencoder import crop_batch, gaussian_smooth, reconstruction_loss
from screener_plans.baselines.intensity import bin_index
from screener_plans.data.dataset import CaseCache
from screener_plans.data.preprocess import cached_cases, load_case, preprocess
from screener_plans.inference.sliding import ScorerInferer
from screener_plans.planning.planner import plan
from screener_plans.synthetic.phantoms import make_synthetic_dataset


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("baselines")
    make_synthetic_dataset(d / "data", cases=3, test_cases=1, shape=(48, 48, 24), spacing=(4, 4, 6), progress=False)
    run = d / "run"
    plans = plan(d / "data" / "train", run, device="cpu", overrides=["crop_size=[16,16,16]"], workers=1, progress=False)
    preprocess(run, plans=plans, workers=1, progress=False)
    return run, plans, d / "data"


def body_values(run, plans):
    return np.concatenate(
        [
            np.asarray(img, dtype=np.float32)[np.asarray(mask) > 0]
            for img, mask, _ in (load_case(run, n) for n in cached_cases(run, plans))
        ]
    )


def test_intensity_histogram_is_the_body_voxel_density(tiny_run):
    run, plans, _ = tiny_run
    lo, hi = plans["intensity"]["window"]
    raw = IntensityBaseline.fit(run, plans, smooth_hu=0.0, floor=1e-12)
    values = body_values(run, plans)
    assert raw.n_bins == round(hi - lo)  # one bin per HU of the window
    assert raw.counts.sum() == values.size
    # Unsmoothed, the score of a training voxel is -log of its bin's share of the body voxels.
    expected = -np.log(raw.counts[bin_index(values, raw.n_bins)] / values.size)
    np.testing.assert_allclose(raw.score_cache(values), expected, rtol=1e-5)
    assert np.isclose(raw.prob.sum(), 1.0)

    smooth = IntensityBaseline.fit(run, plans)
    assert np.isclose(smooth.prob.sum(), 1.0) and np.isfinite(smooth.neg_log_prob).all()
    common = (np.argmax(smooth.counts) + 0.5) / smooth.n_bins
    interior = smooth.counts[1:-1]
    rare = (1 + np.flatnonzero(interior == interior[interior > 0].min())[0] + 0.5) / smooth.n_bins
    never = smooth.prob[1:-1].argmin() + 1
    s_common, s_rare, s_never = smooth.score_cache(np.array([common, rare, (never + 0.5) / smooth.n_bins]))
    assert s_common < s_rare <= s_never


def test_intensity_save_load_and_scorer_module(tiny_run):
    run, plans, _ = tiny_run
    base = IntensityBaseline.fit(run, plans, max_cases=1)
    path = base.save(intensity_path(run))
    assert path == run / "baselines" / "intensity.npz"
    back = IntensityBaseline.load(path)
    np.testing.assert_array_equal(back.counts, base.counts)
    np.testing.assert_array_equal(back.neg_log_prob, base.neg_log_prob)
    assert back.window == base.window

    image, _, meta = load_case(run, cached_cases(run, plans)[0])
    x = torch.from_numpy(np.asarray(image, dtype=np.float32))[None, None]
    out = back.scorer()(x, torch.zeros(1, 3), torch.ones(1, 3))
    assert out.shape == x.shape
    np.testing.assert_array_equal(out[0, 0].numpy(), base.score_cache(image))
    # Pointwise, so the blended sliding window reproduces the direct lookup.
    inferer = ScorerInferer(plans["crop_size"], 0.25, "gaussian", 2, amp=False)
    whole = inferer(back.scorer(), image, meta["crop_origin_mm"], meta["spacing"], "cpu")
    np.testing.assert_allclose(whole, base.score_cache(image), rtol=1e-5)


def test_intensity_baseline_plugs_into_predictor(tiny_run, tmp_path):
    from screener_plans.inference.predict import Predictor

    run, plans, data = tiny_run
    scorer = IntensityBaseline.fit(run, plans).scorer()
    summary = Predictor(run, plans, scorer, "cpu", threshold=None, skip_bad=False, progress=False).run(
        data / "test" / "images", tmp_path / "preds"
    )
    assert len(summary["done"]) == 1 and not summary["errors"]
    case = summary["done"][0]["case"]
    src = nib.load(str(data / "test" / "images" / f"{case}.nii.gz"))
    out = nib.load(str(tmp_path / "preds" / f"{case}.nii.gz"))
    assert out.shape == src.shape and np.allclose(out.affine, src.affine)


def test_autoencoder_training_lowers_reconstruction_loss(tiny_run):
    run, plans, _ = tiny_run
    cases = CaseCache(run, cached_cases(run, plans))
    held = crop_batch(cases, plans["crop_size"], 4, seed=99, step=0)  # crops the training never drew
    with torch.no_grad():
        before = float(reconstruction_loss(build_autoencoder(seed=0).eval(), held))
    model = train_autoencoder(run, plans, steps=15, batch_size=4, device="cpu", seed=0, log_every=0)
    with torch.no_grad():
        after = float(reconstruction_loss(model, held))
    assert len(model.losses) == 15 and np.isfinite(model.losses).all()
    assert after < 0.75 * before

    back = load_autoencoder(autoencoder_path(run))
    with torch.no_grad():
        torch.testing.assert_close(back(held), model(held))
    assert back.info["steps"] == 15


def test_autoencoder_scorer_shapes_and_sliding_window(tiny_run):
    _, plans, _ = tiny_run
    scorer = autoencoder_scorer(build_autoencoder(seed=1))
    x = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        out = scorer(x, torch.zeros(2, 3), torch.ones(2, 3))
    assert out.shape == x.shape and (out >= 0).all()
    odd = torch.rand(1, 1, 12, 20, 10)  # not a multiple of the network stride
    with torch.no_grad():
        assert scorer(odd, torch.zeros(1, 3), torch.ones(1, 3)).shape == odd.shape

    volume = np.random.default_rng(0).random((37, 23, 29), dtype=np.float32)
    inferer = ScorerInferer(plans["crop_size"], 0.25, "gaussian", 2, amp=False)
    score = inferer(scorer, volume, [0.0, 0.0, 0.0], [4.0, 4.0, 6.0], "cpu")
    assert score.shape == volume.shape and np.isfinite(score).all() and score.min() >= 0


def test_gaussian_smooth_keeps_constants_and_mass():
    x = torch.full((1, 2, 9, 8, 7), 3.0)
    torch.testing.assert_close(gaussian_smooth(x, 1.0), x)
    spike = torch.zeros(1, 1, 15, 15, 15)
    spike[0, 0, 7, 7, 7] = 1.0
    blurred = gaussian_smooth(spike, 1.0)
    assert torch.isclose(blurred.sum(), torch.tensor(1.0), atol=1e-5) and blurred.max() < 0.1
