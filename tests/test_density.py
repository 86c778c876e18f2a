"""Density models: exact NLLs, invertibility, log-determinants, fitting, init, tracing."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from screener_plans.density import (
    ActNorm,
    ConditionalGaussian,
    DiagonalGaussian,
    GlowFlow,
    build_density,
)
from screener_plans.errors import ScreenerError

D, DC = 4, 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: extra threads only add contention on shared 2-core machines."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _perturb(model, scale=0.3):
    """Move all parameters off their (often identity) init so tests exercise every path."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


def _flow(cond_dim, kernel_size=3):
    torch.manual_seed(0)
    model = GlowFlow(D, cond_dim, n_blocks=3, hidden=8, kernel_size=kernel_size).double()
    model.initialize(
        2.0 + 3.0 * torch.randn(2, D, 3, 3, 3, dtype=torch.float64),
        torch.randn(2, cond_dim, 3, 3, 3, dtype=torch.float64) if cond_dim else None,
    )
    return _perturb(model)


@pytest.mark.parametrize("cond_dim", [0, DC])
def test_flow_inverse(cond_dim):
    model = _flow(cond_dim)
    y = 2.0 * torch.randn(2, D, 4, 3, 2, dtype=torch.float64)
    c = torch.randn(2, cond_dim, 4, 3, 2, dtype=torch.float64) if cond_dim else None
    z, _ = model.forward_with_logdet(y, c)
    assert (z - y).abs().max() > 0.1  # not the identity
    assert (model.inverse(z, c) - y).abs().max() < 1e-4


@pytest.mark.parametrize("cond_dim", [0, DC])
def test_flow_logdet_matches_autograd_jacobian(cond_dim):
    model = _flow(cond_dim)
    shape = (1, D, 2, 2, 1)
    y = torch.randn(shape, dtype=torch.float64)
    # a varying condition map, so the 3x3x3 condition path mixes neighbouring voxels
    c = torch.randn(1, cond_dim, 2, 2, 1, dtype=torch.float64) if cond_dim else None
    _, logdet = model.forward_with_logdet(y, c)
    jac = torch.autograd.functional.jacobian(lambda v: model.forward_with_logdet(v, c)[0], y)
    jac = jac.reshape(D, 4, D, 4)  # (out channel, out voxel, in channel, in voxel)
    for v in range(4):
        for u in range(4):
            block = jac[:, v, :, u]
            if u != v:  # voxel-wise: descriptors never influence other voxels
                assert block.abs().max() < 1e-12
        sign, logabs = torch.linalg.slogdet(jac[:, v, :, v])
        assert sign != 0
        assert abs(logabs.item() - logdet.flatten()[v].item()) < 1e-8
    # and the NLL is the change of variables formula
    z, _ = model.forward_with_logdet(y, c)
    expected = 0.5 * (z**2).sum(1) + 0.5 * D * math.log(2 * math.pi) - logdet
    assert torch.allclose(model.eval()(y, c), expected)


def _scipy_nll(y, mean, log_var):
    """Per-voxel NLL from scipy with a diagonal covariance; mean/log_var broadcast to y."""
    y, mean, log_var = (
        t.expand_as(y).permute(0, 2, 3, 4, 1).reshape(-1, y.shape[1]).numpy()
        for t in torch.broadcast_tensors(y, mean, log_var)
    )
    return np.array([-multivariate_normal(m, np.diag(np.exp(lv))).logpdf(v) for v, m, lv in zip(y, mean, log_var)])


def test_diagonal_gaussian_matches_scipy():
    torch.manual_seed(0)
    model = DiagonalGaussian(D).double()
    model.initialize(1.0 + 2.0 * torch.randn(2, D, 3, 3, 3, dtype=torch.float64))
    _perturb(model)
    y = torch.randn(2, D, 3, 2, 2, dtype=torch.float64)
    mean, log_var = model.mean_and_log_var()
    expected = _scipy_nll(y, mean.detach(), log_var.detach())
    np.testing.assert_allclose(model(y).detach().flatten().numpy(), expected, rtol=1e-10)


def test_conditional_gaussian_matches_scipy():
    torch.manual_seed(0)
    model = ConditionalGaussian(D, DC, hidden=8).double()
    model.initialize(
        1.0 + 2.0 * torch.randn(2, D, 3, 3, 3, dtype=torch.float64), torch.randn(2, DC, 3, 3, 3, dtype=torch.float64)
    )
    _perturb(model)
    y = torch.randn(2, D, 3, 2, 2, dtype=torch.float64)
    c = torch.randn(2, DC, 3, 2, 2, dtype=torch.float64)
    mean, log_var = model.mean_and_log_var(c)
    assert log_var.std() > 0.01 and mean.std() > 0.01  # really condition-dependent
    expected = _scipy_nll(y, mean.detach(), log_var.detach())
    np.testing.assert_allclose(model(y, c).detach().flatten().numpy(), expected, rtol=1e-10)


# --- fitting: two clusters whose centre is given by the condition ---------------------------

MU = torch.tensor([2.0, -2.0, 1.5, 1.0]).view(1, D, 1, 1, 1)


def _cluster_data(n, generator, size=4):
    """c is +-1 per crop (constant map); y = c * MU + small noise."""
    sign = torch.randint(0, 2, (n, 1, 1, 1, 1), generator=generator).float() * 2 - 1
    c = sign.expand(n, 1, size, size, size).clone()
    y = sign * MU + 0.3 * torch.randn(n, D, size, size, size, generator=generator)
    return y, c


def _fit(kind, cond_dim, steps=100):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = build_density(kind, D, cond_dim, preset="tiny")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        y, c = _cluster_data(8, gen)
        loss = model(y, c if cond_dim else None).mean()  # first call runs the data init
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def fitted():
    return {(kind, cond): _fit(kind, cond) for kind in ("gaussian", "flow") for cond in (0, 1)}


@pytest.fixture(scope="module")
def test_data():
    return _cluster_data(16, torch.Generator().manual_seed(2))


def _score(model, y, c):
    with torch.no_grad():
        return model(y, c if model.conditional else None)


def test_fitting_lowers_nll_and_condition_helps(fitted, test_data):
    y, c = test_data
    final = {}
    for (kind, cond), model in fitted.items():
        torch.manual_seed(0)
        fresh = build_density(kind, D, cond, preset="tiny").eval()
        raw = _score(fresh, y, c).mean().item()
        fresh.initialize(y, c if cond else None)  # the data init training starts from
        start = _score(fresh, y, c).mean().item()
        final[kind, cond] = nll = _score(model, y, c).mean().item()
        assert nll < raw - 0.2 and nll < start + 0.2, (kind, cond, raw, start, nll)
        if (kind, cond) != ("gaussian", 0):  # the data init is already the marginal Gaussian's MLE
            assert nll < start - 0.2, (kind, cond, start, nll)
    for kind in ("gaussian", "flow"):
        # conditional optimum ~0.9 nats, marginal Gaussian ~7.5; demand a clear gap
        assert final[kind, 1] < final[kind, 0] - 1.0, final
        assert final[kind, 1] < 2.0, final


def test_outliers_score_higher(fitted, test_data):
    y, c = test_data
    far = torch.full_like(y, 6.0)  # far from both clusters
    swapped = -y  # the other cluster: normal globally, anomalous given c
    for (kind, cond), model in fitted.items():
        inlier = _score(model, y, c)
        threshold = torch.quantile(inlier.flatten(), 0.99)
        assert _score(model, far, c).min() > threshold, (kind, cond)
        if cond:
            assert _score(model, swapped, c).min() > threshold, (kind, cond)


# --- act-norm init, robustness, tracing, checkpoints, factory ------------------------------


@pytest.mark.parametrize("cond_dim", [0, DC])
def test_actnorm_init_whitens_every_layer_input(cond_dim):
    torch.manual_seed(0)
    model = GlowFlow(D, cond_dim, n_blocks=3, hidden=8, kernel_size=3)
    y = torch.tensor([5.0, -3.0, 0.0, 100.0]).view(1, D, 1, 1, 1) + torch.tensor([0.1, 2.0, 7.0, 30.0]).view(
        1, D, 1, 1, 1
    ) * torch.randn(3, D, 5, 5, 5)
    c = torch.randn(3, cond_dim, 5, 5, 5) if cond_dim else None
    outputs = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: outputs.append(o[0])) for m in model.modules() if isinstance(m, ActNorm)
    ]
    model.train()
    model(y, c)  # first training forward initialises
    for h in hooks:
        h.remove()
    assert bool(model.initialized) and len(outputs) >= 3
    for out in outputs[:3]:  # the init forward
        flat = out.detach().transpose(0, 1).reshape(D, -1)
        assert flat.mean(1).abs().max() < 1e-4
        assert (flat.var(1, unbiased=False) - 1).abs().max() < 1e-3
    # a second training step must not re-initialise
    loc = model.steps[0][0].loc.detach().clone()
    model(y + 10.0, c)
    assert torch.equal(model.steps[0][0].loc, loc)


def _saturate_bounded_outputs(model, value):
    """Push every soft-bounded quantity (log-variances, coupling and act-norm log-scales) to its bound."""
    with torch.no_grad():
        if isinstance(model, DiagonalGaussian):
            model.log_var_raw.fill_(value)
        elif isinstance(model, ConditionalGaussian):
            model.log_var_net[-1].bias.fill_(value)
        else:
            for step in model.steps:
                step[2].body[-1].bias.fill_(value)
                if step[0].cond_net is not None:
                    step[0].cond_net[-1].bias.fill_(value)


@pytest.mark.parametrize("value", [-1e4, 1e4])
def test_nll_finite_for_extreme_inputs_and_saturated_bounds(value):
    torch.manual_seed(0)
    y = 1e4 * torch.randn(2, D, 3, 3, 3)
    c = 1e3 * torch.randn(2, DC, 3, 3, 3)
    for kind in ("gaussian", "flow"):
        for cond in (0, DC):
            model = build_density(kind, D, cond, preset="tiny")
            model.initialize(torch.zeros(2, D, 3, 3, 3), c if cond else None)  # constant channels
            _saturate_bounded_outputs(model, value)
            nll = model(y, c if cond else None)
            assert torch.isfinite(nll).all(), (kind, cond)
            loss = nll.mean()
            loss.backward()
            assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None), (kind, cond)


def test_autocast_computes_in_float32():
    torch.manual_seed(0)
    model = build_density("flow", D, DC, preset="tiny")
    y, c = 300.0 * torch.randn(2, D, 3, 3, 3), torch.randn(2, DC, 3, 3, 3)
    model.initialize(y / 300.0, c)
    ref = model.eval()(y, c)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(y.bfloat16(), c.bfloat16())
    assert out.dtype == torch.float32
    assert torch.allclose(out, model(y.bfloat16().float(), c.bfloat16().float()))
    assert torch.isfinite(ref).all()


@pytest.mark.parametrize("kind", ["flow", "gaussian"])
def test_jit_trace_conditional_matches_eager(kind):
    torch.manual_seed(0)
    model = build_density(kind, D, DC, preset="tiny", kernel_size=3)
    model.initialize(torch.randn(2, D, 4, 4, 4), torch.randn(2, DC, 4, 4, 4))
    _perturb(model, 0.1).eval()
    traced = torch.jit.trace(model, (torch.randn(2, D, 4, 4, 4), torch.randn(2, DC, 4, 4, 4)))
    y, c = torch.randn(1, D, 5, 3, 6), torch.randn(1, DC, 5, 3, 6)  # other shape than traced
    assert torch.allclose(traced(y, c), model(y, c), atol=1e-6)


def test_tracing_skips_data_init():
    model = build_density("flow", D, DC, preset="tiny").train()
    torch.jit.trace(model, (torch.randn(1, D, 2, 2, 2), torch.randn(1, DC, 2, 2, 2)), check_trace=False)
    assert not bool(model.initialized)


def test_checkpoint_restores_init_flag():
    torch.manual_seed(0)
    a = build_density("flow", D, DC, preset="tiny")
    y, c = 3 + torch.randn(2, D, 3, 3, 3), torch.randn(2, DC, 3, 3, 3)
    a.initialize(y, c)
    b = build_density("flow", D, DC, preset="tiny").train()
    b.load_state_dict(a.state_dict())
    assert bool(b.initialized)
    other = torch.randn_like(y)
    out = b(other, c)  # training mode, new batch: must not re-initialise
    assert torch.equal(b.steps[0][0].loc, a.steps[0][0].loc)
    assert torch.allclose(out, a.eval()(other, c))


def test_factory():
    assert isinstance(build_density("gaussian", D), DiagonalGaussian)
    assert isinstance(build_density("gaussian", D, preset="tiny", hidden=4), DiagonalGaussian)
    cg = build_density("gaussian", D, DC, hidden=5)
    assert isinstance(cg, ConditionalGaussian) and cg.conditional and cg.cond_dim == DC
    flow = build_density("flow", D, DC, preset="tiny", n_blocks=3)
    assert isinstance(flow, GlowFlow) and flow.conditional and len(flow.steps) == 3
    assert not build_density("flow", D).conditional
    for bad in [
        dict(kind="nope"),
        dict(preset="huge"),
        dict(n_blocks=2, kind="gaussian"),
        dict(hiden=3),
        dict(kind="flow", dim=0),
        dict(kernel_size=2),
    ]:
        args = {"kind": "flow", "dim": D, "cond_dim": DC, **bad}
        with pytest.raises(ScreenerError):
            build_density(**args)


def test_shape_errors():
    model = build_density("gaussian", D, DC, preset="tiny")
    with pytest.raises(ValueError):
        model(torch.randn(1, D, 2, 2, 2))  # missing condition
    with pytest.raises(ValueError):
        model(torch.randn(1, D, 2, 2, 2), torch.randn(1, DC, 2, 2, 3))
    with pytest.raises(ValueError):
        build_density("gaussian", D)(torch.randn(1, D + 1, 2, 2, 2))


def test_voxel_sample_takes_whole_voxels_of_each_crop():
    """The density stage's voxel sample keeps each voxel's features and condition together."""
    from screener_plans.engines.density import sample_voxels

    y = torch.randn(3, 5, 6, 7, 8)
    c = torch.cat([y * 2, -y], dim=1)
    ys, cs = sample_voxels(y, c, 50)
    assert ys.shape == (3, 5, 50, 1, 1) and cs.shape == (3, 10, 50, 1, 1)
    torch.testing.assert_close(cs[:, :5], ys * 2)
    for b in range(3):
        voxels = {tuple(v) for v in y[b].reshape(5, -1).T.tolist()}
        sampled = [tuple(v) for v in ys[b, :, :, 0, 0].T.tolist()]
        assert set(sampled) <= voxels and len(set(sampled)) == 50  # real voxels, none twice
    assert sample_voxels(y, c, 0)[0] is y and sample_voxels(y, c, 6 * 7 * 8)[0] is y
    empty = torch.zeros(3, 0, 6, 7, 8)
    assert sample_voxels(y, empty, 10)[1] is empty


def test_self_masked_condition_does_not_see_the_voxel_it_describes():
    """With ``density.condition_passes``, each voxel's condition comes from passes that masked it:
    a condition network that merely copies its input cannot show a planted blob."""
    from screener_plans.engines.models import FeatureExtractor, pass_masks

    class Copy(torch.nn.Module):
        def forward(self, x):  # (image, mask) -> the (masked) image as a one-channel "condition"
            return x[:, :1]

    image = torch.full((2, 1, 24, 24, 24), 0.3)
    image[:, :, 8:16, 8:16, 8:16] = 0.9
    args = dict(origin_mm=torch.zeros(2, 3), spacing=torch.ones(2, 3))
    whole = FeatureExtractor(torch.nn.Identity(), "masked", Copy(), 1, "descriptor")
    masked = FeatureExtractor(
        torch.nn.Identity(),
        "masked",
        Copy(),
        1,
        "descriptor",
        condition_masking={"passes": 6, "block": 4, "ratio": 0.6},
    )
    assert whole(image, **args)[1][:, :, 12, 12, 12].min() == 0.9  # the paper's way: the crop as it is
    c = masked(image, **args)[1]
    seen = c[:, :, 8:16, 8:16, 8:16]
    assert float(seen.abs().max()) == 0.0
    torch.testing.assert_close(masked(image, **args)[1], c)  # the same masks on every call
    m = pass_masks(image, 4, 4, 0.6)
    assert m.shape == (4, 1, 1, 24, 24, 24) and 0.5 < float(m[:3].float().mean()) < 0.7
    assert bool(m.any(0).all())  # every voxel hidden in some pass
    # traced (as the exports are), other batch sizes and crop sizes still work
    traced = torch.jit.trace(masked, (image, args["origin_mm"], args["spacing"]), check_trace=False)
    other = torch.rand(1, 1, 20, 24, 28)
    one = dict(origin_mm=torch.zeros(1, 3), spacing=torch.ones(1, 3))
    torch.testing.assert_close(traced(other, **one)[1], masked(other, **one)[1])


def test_condition_passes_reach_the_feature_extractor(tmp_path):
    from screener_plans.engines.models import density_config, feature_extractor

    plans = {
        "density": {"condition": "masked", "kind": "gaussian", "features": "descriptor", "condition_passes": 3},
        "network": {"d_cond": 4, "d_desc": 5},
        "preset": "tiny",
        "intensity": {"window": [-1000.0, 1000.0]},
        "masking": {"block_size": 12, "ratio": 0.6},
    }
    cfg = density_config(plans, None, None)
    assert cfg["condition_masking"] == {"passes": 3, "block": 12, "ratio": 0.6}
    extractor = feature_extractor(cfg, lambda stage: torch.nn.Identity())
    assert extractor.condition_masking["passes"] == 3
    plans["density"]["condition_passes"] = 0
    assert "condition_masking" not in density_config(plans, None, None)
