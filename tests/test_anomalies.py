"""Synthetic anomalies (the contrastive density's training data) and the contrastive density's
config and mechanics, without training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from screener_plans.data.anomalies import SyntheticAnomalies
from screener_plans.density import ContrastiveDensity, build_density
from screener_plans.engines.models import density_config
from screener_plans.errors import ScreenerError

WINDOW = (-1000.0, 1000.0)


def _crop(seed=0, shape=(32, 32, 32), noise_hu=10.0):
    rng = np.random.default_rng(seed)
    hu = 40.0 + noise_hu * rng.standard_normal(shape)  # soft tissue with CT-like noise
    return torch.from_numpy(((hu - WINDOW[0]) / (WINDOW[1] - WINDOW[0])).astype(np.float32))


def test_anomalies_are_deterministic_and_marked_where_they_change_the_crop():
    crop, body = _crop(), np.ones((32, 32, 32), bool)
    paint = SyntheticAnomalies(WINDOW, p_clean=0.0, contrast_hu=(100.0, 300.0), kinds={"shift": 1.0})
    a, ta = paint(crop, body, (1.5, 1.5, 1.5), np.random.default_rng(3))
    b, tb = paint(crop, body, (1.5, 1.5, 1.5), np.random.default_rng(3))
    assert torch.equal(a, b) and torch.equal(ta, tb)
    assert ta.min() >= 0 and ta.max() <= 1 and ta.sum() > 10
    changed = (a - crop).abs() * 2000.0  # HU
    assert changed[ta > 0.5].mean() > 80.0  # marked voxels changed by about the contrast
    assert float(changed[ta == 0].median()) < 1.0  # most unmarked voxels are untouched
    clean, target = SyntheticAnomalies(WINDOW, p_clean=1.0)(crop, body, (1.5,) * 3, np.random.default_rng(0))
    assert torch.equal(clean, crop) and target.sum() == 0


def test_invisible_anomalies_stay_unmarked_and_flat_fills_keep_the_noise():
    crop, body = _crop(noise_hu=30.0), np.ones((32, 32, 32), bool)
    faint = SyntheticAnomalies(WINDOW, p_clean=0.0, contrast_hu=(2.0, 3.0), texture_hu=0.0, kinds={"shift": 1.0})
    x, target = faint(crop, body, (1.5,) * 3, np.random.default_rng(1))
    assert not torch.equal(x, crop) and target.sum() == 0  # painted, but below the change a reader sees
    small = SyntheticAnomalies(WINDOW, p_clean=0.0, contrast_hu=(20.0, 21.0), radius_mm=(2.0, 2.5), rose=5.0)
    x, target = small(crop, body, (1.5,) * 3, np.random.default_rng(1))
    assert not torch.equal(x, crop) and target.sum() == 0  # 20 HU over a few voxels in 30 HU noise: Rose says no
    flat = SyntheticAnomalies(
        WINDOW, p_clean=0.0, max_anomalies=1, radius_mm=(12.0, 14.0), contrast_hu=(200.0, 201.0), kinds={"replace": 1.0}
    )
    x, target = flat(crop, body, (1.5,) * 3, np.random.default_rng(2))
    inside = target > 0.95
    assert inside.sum() > 100
    # the filled mass has the crop's own noise, not a flat value that would give it away
    assert 0.5 < float(x[inside].std() / crop.std()) < 1.5
    with pytest.raises(ScreenerError, match="unknown setting"):
        SyntheticAnomalies(WINDOW, colour=1)
    with pytest.raises(ScreenerError, match="kinds"):
        SyntheticAnomalies(WINDOW, kinds={"glow": 1.0})


def test_contrastive_config_and_network():
    plans = {
        "preset": "tiny",
        "network": {"d_desc": 32, "d_cond": 24, "windows_hu": [[-160, 240]]},
        "intensity": {"window": list(WINDOW)},
        "spacing": [1.5, 1.5, 3.0],
        "density": {"kind": "flow", "condition": "masked", "features": "descriptor+structure"},
    }
    cfg = density_config(plans, None, "contrastive")
    assert (cfg["condition"], cfg["features"], cfg["dim"], cfg["cond_dim"]) == ("none", "intensity", 1, 0)
    assert cfg["windows_hu"] == [[-160.0, 240.0]] and not cfg["intensity_prior"]
    with pytest.raises(ScreenerError, match="--condition masked does not apply"):
        density_config(plans, "masked", "contrastive")
    planned = {**plans, "density": {**plans["density"], "kind": "contrastive"}}
    with pytest.raises(ScreenerError, match=r"the plans' density, contrastive, .*choose a likelihood density"):
        density_config(planned, "masked", None)
    with pytest.raises(ScreenerError, match="no intensity prior"):
        density_config(plans, None, "contrastive", None, True)
    odd = {**plans, "density": {**plans["density"], "batch_size": 3}}
    with pytest.raises(ScreenerError, match="density.batch_size 3 must be a multiple"):
        density_config(odd, None, "contrastive")
    model = build_density("contrastive", 1, 0, preset="tiny", window=WINDOW, windows_hu=[[-160, 240]], members=2)
    assert isinstance(model, ContrastiveDensity) and len(model.members) == 2
    x = torch.rand(4, 1, 24, 24, 24)
    model.eval()
    score = model(x)
    assert score.shape == (4, 24, 24, 24)
    expected = torch.stack([m(x)[:, 0] for m in model.members]).mean(0)
    inner = (slice(None),) + (slice(6, -6),) * 3  # the faces the loss leaves out (margin 6)...
    assert torch.allclose(score[inner], expected[inner], atol=1e-5)
    assert torch.equal(score[:, 0], score[:, 6]) and torch.equal(score[:, :, -1], score[:, :, -7])  # ...copy it
    model.train()
    loss = model.loss(x, (x > 0.9).float())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="does not split"):
        model.loss(x[:3], x[:3])


def _tissue_crop(rng, shape=(24, 24, 24), noise_hu=10.0):
    """Three flat tissues (fat, muscle, liver-like) in smooth random regions, with CT-like noise."""
    from screener_plans.data.anomalies import _smooth_field

    field = _smooth_field(rng, shape, 8.0).numpy()
    hu = np.where(field < -0.4, -100.0, np.where(field < 0.4, 40.0, 60.0))
    hu = hu + noise_hu * rng.standard_normal(shape)
    return torch.from_numpy(((hu - WINDOW[0]) / (WINDOW[1] - WINDOW[0])).astype(np.float32))


@pytest.mark.slow
def test_contrastive_density_learns_to_rank_a_planted_mass_above_normal_tissue():
    """Trained on painted tissue crops, the contrastive density's loss falls and a flat ball of a
    value no tissue has (210 HU) scores above 95% of normal voxels; so does a hypodense one whose
    value (0 HU) lies between the tissues' and appears at every fat/muscle boundary."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = ContrastiveDensity(window=WINDOW, windows_hu=[[-160, 240]], channels=(8, 16, 32), members=1)
    paint = SyntheticAnomalies(WINDOW, radius_mm=(3.0, 12.0))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    body = np.ones((24, 24, 24), bool)
    held = [paint(_tissue_crop(rng), body, (1.5,) * 3, rng, donor=_tissue_crop(rng)) for _ in range(8)]
    held_x, held_t = torch.stack([p[0] for p in held])[:, None], torch.stack([p[1] for p in held])[:, None]

    def held_loss():
        model.eval()
        with torch.no_grad():
            return float(model.loss(held_x, held_t))

    before = held_loss()
    model.train()
    for _ in range(250):
        pairs = [paint(_tissue_crop(rng), body, (1.5,) * 3, rng, donor=_tissue_crop(rng)) for _ in range(4)]
        x = torch.stack([p[0] for p in pairs])[:, None]
        t = torch.stack([p[1] for p in pairs])[:, None]
        loss = model.loss(x, t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert held_loss() < 0.6 * before  # on painted crops it never trained on
    model.eval()
    grid = np.stack(np.meshgrid(*[np.arange(24)] * 3, indexing="ij"), -1)
    ball = torch.from_numpy(np.linalg.norm(grid - 12, axis=-1) < 4)
    for delta_hu, host_hu in ((150.0, 60.0), (-60.0, 60.0)):
        crop = _tissue_crop(np.random.default_rng(7))
        planted = crop.clone()
        noise = torch.from_numpy(np.random.default_rng(8).standard_normal((24, 24, 24)).astype(np.float32))
        flat_hu = host_hu + delta_hu + 10.0 * noise[ball]  # a flat value with the crops' noise
        planted[ball] = (flat_hu - WINDOW[0]) / (WINDOW[1] - WINDOW[0])
        with torch.no_grad():
            score = model(planted[None, None])[0]
        normal = score[~ball]
        assert float(score[ball].median()) > float(normal.quantile(0.95)), (delta_hu, host_hu)
