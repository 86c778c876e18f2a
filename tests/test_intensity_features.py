"""Density features beyond the descriptor: the voxel's CT intensity, the intensity prior, and
the choices and stage lists they imply."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import write_ct_folder
from run_utils import make_random_run

from screener_plans.density import GlowFlow, IntensityPrior, build_density
from screener_plans.engines.models import (
    FeatureExtractor,
    build_density_model,
    density_config,
)
from screener_plans.errors import ScreenerError
from screener_plans.inference.loader import load_scorer
from screener_plans.layout import model_path
from screener_plans.pipeline import stages_for


def _plans(**density):
    return {
        "preset": "tiny",
        "network": {"d_desc": 32, "d_cond": 24},
        "intensity": {"window": [-900.0, 600.0]},
        "density": {"kind": "gaussian", "condition": "masked", **density},
    }


def test_density_config_dims_and_choices():
    cfg = density_config(_plans(), None, None)  # plans from before the options: the descriptor alone
    assert (cfg["features"], cfg["dim"], cfg["intensity_prior"]) == ("descriptor", 32, False)
    cfg = density_config(_plans(features="intensity", intensity_prior=True), None, None)
    assert (cfg["dim"], cfg["prior_channel"], cfg["prior_bins"]) == (1, 0, 1500)
    cfg = density_config(_plans(), None, "flow", "descriptor+intensity", "true")
    assert (cfg["dim"], cfg["prior_channel"], cfg["density"]) == (33, 32, "flow")
    with pytest.raises(ScreenerError, match="--features must be one of"):
        density_config(_plans(), None, None, "texture")
    with pytest.raises(ScreenerError, match="needs the CT intensity"):
        density_config(_plans(), None, None, "descriptor", True)
    # the plans' prior (tiny default) steps aside when the descriptor alone is asked for
    cfg = density_config(_plans(features="intensity", intensity_prior=True), None, None, "descriptor")
    assert (cfg["dim"], cfg["intensity_prior"]) == (32, False)
    with pytest.raises(ScreenerError, match="--intensity_prior must be true or false"):
        density_config(_plans(features="intensity"), None, None, None, "maybe")


def test_stages_follow_condition_and_features():
    assert stages_for("masked") == ["descriptor", "condition", "density"]
    assert stages_for("sincos", "descriptor+intensity") == ["descriptor", "density"]
    assert stages_for("masked", "intensity") == ["condition", "density"]
    assert stages_for("none", "intensity") == ["density"]


def test_intensity_features_are_the_crop_itself():
    image = torch.rand(2, 1, 5, 4, 3)
    fe = FeatureExtractor(None, "none", features="intensity")
    y, c = fe(image, torch.zeros(2, 3), torch.ones(2, 3))
    assert torch.equal(y, image) and c.shape == (2, 0, 5, 4, 3)
    desc = torch.nn.Conv3d(1, 3, 1)
    y, _ = FeatureExtractor(desc, "none", features="descriptor+intensity")(image, None, None)
    assert y.shape == (2, 4, 5, 4, 3) and torch.equal(y[:, 3:], image)
    with pytest.raises(ScreenerError, match="need a descriptor"):
        FeatureExtractor(None, "none", features="descriptor")


@pytest.mark.parametrize("cond_dim", [0, 3])
def test_one_channel_flow_inverts_and_its_logdet_is_the_derivative(cond_dim):
    torch.manual_seed(0)
    flow = GlowFlow(1, cond_dim, n_blocks=3, hidden=8, kernel_size=1).double()
    c = torch.randn(1, cond_dim, 3, 2, 1, dtype=torch.float64) if cond_dim else None
    flow.initialize(2.0 + 3.0 * torch.randn(1, 1, 3, 2, 1, dtype=torch.float64), c)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    y = torch.randn(1, 1, 3, 2, 1, dtype=torch.float64)
    z, logdet = flow.forward_with_logdet(y, c)
    assert (z - y).abs().max() > 0.1
    assert (flow.inverse(z, c) - y).abs().max() < 1e-6
    jac = torch.autograd.functional.jacobian(lambda v: flow.forward_with_logdet(v, c)[0], y).reshape(6, 6)
    assert torch.allclose(torch.log(torch.diagonal(jac).abs()), logdet.flatten(), atol=1e-8)
    expected = 0.5 * z.pow(2).sum(1) + 0.5 * math.log(2 * math.pi) - logdet
    assert torch.allclose(flow.eval()(y, c), expected)


def test_intensity_prior_adds_the_histogram_nll_of_its_channel():
    torch.manual_seed(0)
    inner = build_density("gaussian", 3, 2, preset="tiny")
    prior = IntensityPrior(inner, n_bins=10, channel=2)
    table = torch.arange(10, dtype=torch.float32)
    prior.set_table(table)
    y = torch.rand(2, 3, 4, 4, 4)
    c = torch.randn(2, 2, 4, 4, 4)
    prior.train()
    prior(y, c)  # data-dependent init of the inner model
    prior.eval()
    bins = torch.clamp(torch.floor(y[:, 2] * 10), 0, 9)
    assert torch.allclose(prior(y, c), inner(y, c) + bins)
    assert prior.trainable is inner and set(dict(prior.named_parameters())) == {
        f"density.{k}" for k, _ in inner.named_parameters()
    }
    with pytest.raises(ValueError, match="finite"):
        prior.set_table(torch.full((10,), float("inf")))
    with pytest.raises(ValueError, match="channel"):
        IntensityPrior(inner, 10, channel=3)


def test_intensity_run_needs_no_descriptor_and_keeps_its_prior(tmp_path):
    """A trained-run layout with features=intensity + prior: loads without a descriptor model,
    and the prior's histogram comes back from the density weights."""
    from screener_plans.planning.planner import plan

    data = write_ct_folder(tmp_path / "data", 2, (40, 36, 20), (3.0, 3.0, 4.0))
    plans = plan(
        data,
        tmp_path / "planned",
        device="cpu",
        workers=1,
        progress=False,
        overrides={"crop_size": [16, 16, 16], "spacing": [4.0, 4.0, 4.0]},
    )
    run = make_random_run(
        tmp_path, plans, condition="masked", density="gaussian", features="intensity", intensity_prior=True
    )
    model_path(run, "descriptor").unlink()
    cfg = json.loads((run / "density" / "models" / "density_config.json").read_text())
    assert cfg["features"] == "intensity" and cfg["intensity_prior"]
    table = np.linspace(1.0, 9.0, cfg["prior_bins"]).astype(np.float32)
    dens = build_density_model(cfg)
    dens.load_state_dict(torch.load(model_path(run, "density")))
    dens.set_table(table)
    torch.save(dens.state_dict(), model_path(run, "density"))
    from screener_plans.planning.plans import load_plans

    scorer = load_scorer(run, load_plans(run / "plans.json"))
    assert scorer.features.descriptor is None
    np.testing.assert_array_equal(scorer.density.neg_log_prob.numpy(), table)
    image = torch.rand(1, 1, 16, 16, 16)
    nll = scorer(image, torch.zeros(1, 3), torch.ones(1, 3))
    assert nll.shape == (1, 1, 16, 16, 16) and torch.isfinite(nll).all()


def test_quality_benchmark_variant_names_round_trip():
    """tools/bench_quality.py names every table row; the names must map back to the choices."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "tools" / "bench_quality.py"
    spec = importlib.util.spec_from_file_location("bench_quality", path)
    bq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bq)
    for variant in bq.SCREENER:
        assert bq.variant_name(*bq.parse_variant(variant)) == variant
    assert bq.parse_variant("masked_flow") == ("masked", "flow", "descriptor", False)
    assert bq.parse_variant("sincos_gaussian_intensity_prior") == ("sincos", "gaussian", "intensity", True)
    assert bq.shared_stages("masked_gaussian_intensity_prior") == ["condition"]
    assert bq.shared_stages("none_flow_both") == ["descriptor"]
    assert set(bq.STANDARD) <= set(bq.VARIANTS)
    tiny = _plans(features="intensity", intensity_prior=True)
    assert bq.default_variant(tiny) == "masked_gaussian_intensity_prior"
    assert bq.default_variant(_plans(kind="flow")) == "masked_flow"
