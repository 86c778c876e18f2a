"""Intensity scored given its local structure: the Gaussian 2-jet filter bank, the Gaussian
mixture densities, and the property the pair exists for (a flat in-between value is rare, the
same value on a boundary is not)."""

from __future__ import annotations

import math

import pytest
import torch

from screener_plans.density import ConditionalGaussianMixture, GaussianMixture, build_density
from screener_plans.engines.models import FeatureExtractor, density_config
from screener_plans.errors import ScreenerError
from screener_plans.nets.structure import STRUCTURE_CHANNELS, LocalStructure


def _plans(**density):
    return {
        "preset": "tiny",
        "network": {"d_desc": 32, "d_cond": 24},
        "intensity": {"window": [-900.0, 600.0]},
        "spacing": [1.5, 1.5, 3.0],
        "density": {"kind": "mixture", "condition": "none", "features": "structure", **density},
    }


def test_jet_is_exact_on_polynomials():
    x, y, z = torch.meshgrid(*[torch.arange(20.0)] * 3, indexing="ij")
    image = (0.5 * x**2 + 2 * y - 3 * z + x * z + 0.25 * y * z)[None, None]
    value, d = LocalStructure(1.0, scale=2.0)(image)
    at = (0, slice(None), 10, 10, 10)
    # gradient (x + z, 2 + z/4, -3 + x + y/4), Hessian (1, 0, 0, 0, 1, 1/4), times scale 2
    expected = 2 * torch.tensor([20.0, 4.5, 9.5, 1.0, 0.0, 0.0, 0.0, 1.0, 0.25])
    assert d.shape == (1, STRUCTURE_CHANNELS, 20, 20, 20)
    assert torch.allclose(d[at], expected, atol=1e-3)
    # smoothing adds sigma^2 / 2 to x^2 / 2 and leaves the linear terms
    assert torch.allclose(value[0, 0, 10, 10, 10], image[0, 0, 10, 10, 10] + 0.5, atol=1e-3)
    flat = LocalStructure(1.0)(torch.full((1, 1, 9, 9, 9), 0.4))
    assert torch.allclose(flat[0], torch.full_like(flat[0], 0.4)) and flat[1].abs().max() < 1e-6


def test_structure_config_and_features():
    cfg = density_config(_plans(), None, None)
    assert (cfg["dim"], cfg["cond_dim"], cfg["structure_scale"]) == (1, STRUCTURE_CHANNELS, 15.0)
    cfg = density_config(_plans(), "masked", None, None, True)
    assert (cfg["cond_dim"], cfg["prior_channel"]) == (24 + STRUCTURE_CHANNELS, 0)
    image = torch.rand(2, 1, 12, 10, 8)
    y, c = FeatureExtractor(None, "none", features="structure", structure_scale=15.0)(image, None, None)
    value, d = LocalStructure(1.0, 15.0)(image)
    assert torch.equal(y, value) and torch.equal(c, d)
    cond = torch.nn.Conv3d(2, 5, 1)
    y, c = FeatureExtractor(None, "masked", cond, 5, features="structure")(image, None, None)
    assert c.shape == (2, 5 + STRUCTURE_CHANNELS, 12, 10, 8)
    # descriptor + structure: the descriptor's channels, then the smoothed value; the derivatives
    # follow the condition
    cfg = density_config({**_plans(), "network": {"d_desc": 3, "d_cond": 5}}, "masked", "flow", "descriptor+structure")
    assert (cfg["dim"], cfg["cond_dim"], cfg["structure_scale"]) == (4, 5 + STRUCTURE_CHANNELS, 15.0)
    desc = torch.nn.Conv3d(1, 3, 1)
    y, c = FeatureExtractor(desc, "masked", cond, 5, features="descriptor+structure", structure_scale=15.0)(
        image, None, None
    )
    assert y.shape == (2, 4, 12, 10, 8) and torch.equal(y[:, 3:], value)
    assert torch.allclose(y[:, :3], desc(image)) and torch.equal(c[:, 5:], d)
    with pytest.raises(ScreenerError, match="density kind 'mix' unknown"):
        build_density("mix", 1, 0, preset="tiny")


def test_mixture_nll_is_the_mixture_likelihood():
    torch.manual_seed(0)
    model = ConditionalGaussianMixture(2, 3, n_components=4, hidden=8).double()
    y, c = torch.randn(1, 2, 3, 2, 2, dtype=torch.float64), torch.randn(1, 3, 3, 2, 2, dtype=torch.float64)
    model.initialize(y, c)
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    log_w, mean, log_var = model.components(y, c)
    v = (0, slice(None), 1, 0, 1)
    density = sum(
        math.exp(log_w[0, k, 1, 0, 1])
        * math.prod(
            math.exp(-0.5 * (y[v][d] - mean[0, k, d, 1, 0, 1]) ** 2 / math.exp(log_var[0, k, d, 1, 0, 1]))
            / math.sqrt(2 * math.pi * math.exp(log_var[0, k, d, 1, 0, 1]))
            for d in range(2)
        )
        for k in range(4)
    )
    assert torch.isclose(model(y, c)[0, 1, 0, 1], torch.tensor(-math.log(density), dtype=torch.float64))
    assert isinstance(build_density("mixture", 1, 0, preset="tiny"), GaussianMixture)


def _fit(model, make, steps=150, lr=0.02):
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(*make()).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


def test_marginal_mixture_learns_two_modes_a_gaussian_cannot():
    torch.manual_seed(0)

    def sample():
        modes = torch.where(torch.rand(1, 1, 8, 8, 8) < 0.5, 0.3, 0.7)
        return (modes + 0.02 * torch.randn_like(modes),)

    mixture, gaussian = build_density("mixture", 1, 0, preset="tiny"), build_density("gaussian", 1, 0, preset="tiny")
    losses = _fit(mixture, sample)
    _fit(gaussian, sample)
    assert losses[-1] < losses[0]
    gap = torch.full((1, 1, 2, 2, 2), 0.5)  # between the modes
    mode = torch.full((1, 1, 2, 2, 2), 0.3)
    mixture.eval(), gaussian.eval()
    assert float(mixture(gap).mean()) > float(mixture(mode).mean()) + 5.0
    assert float(mixture(mode).mean()) < float(gaussian(mode).mean()) - 1.0


def _two_tissues(n=24, noise=0.01, mass=False):
    """Tissue 0.3 (x < boundary) and 0.6 with a smooth boundary at a random x; optionally a
    0.45 sphere (the boundary's in-between value) inside the flat 0.6 tissue."""
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1).expand(n, n, n)
    edge = float(torch.randint(6, 10, ()))
    image = 0.3 + 0.3 * torch.sigmoid((x - edge) / 0.8)
    if mass:
        g = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32)] * 3, indexing="ij"))
        inside = ((g - torch.tensor([17.0, 12.0, 12.0]).view(3, 1, 1, 1)) ** 2).sum(0) <= 16
        image = torch.where(inside, torch.tensor(0.45), image)
        return (image + noise * torch.randn_like(image))[None, None], inside, edge
    return (image + noise * torch.randn_like(image))[None, None]


def test_structure_scorer_ranks_a_flat_in_between_mass_above_the_boundary_it_matches():
    """The failure this option fixes: under a context-only condition every partial-volume
    boundary voxel is as unpredictable as a mass of the same value. Given its derivatives the
    boundary's in-between value is expected, the flat mass's is not."""
    torch.manual_seed(0)
    features = FeatureExtractor(None, "none", features="structure", structure_scale=15.0)
    density = build_density("mixture", 1, STRUCTURE_CHANNELS, preset="tiny")
    losses = _fit(density, lambda: features(_two_tissues(), None, None), steps=200, lr=0.01)
    assert sum(losses[-20:]) < sum(losses[:20])
    image, inside, edge = _two_tissues(mass=True)
    density.eval()
    with torch.no_grad():
        nll = density(*features(image, None, None))[0]
    boundary = torch.zeros_like(inside)
    boundary[int(edge) - 1 : int(edge) + 2, 2:22, 2:22] = True
    assert float(nll[inside].mean()) > float(nll[boundary].mean()) + 3.0


def test_surround_context_reads_box_means_at_a_distance():
    from screener_plans.nets.surround import DIRECTIONS, SurroundContext

    ctx = SurroundContext([2.0, 2.0, 2.0], radii_mm=(10.0,), box_mm=2.0, centre=0.0, scale=1.0)
    assert ctx.dim == len(DIRECTIONS) == 14 and ctx.box == (1, 1, 1)
    image = torch.zeros(1, 1, 21, 21, 21)
    image[0, 0, 15, 10, 10] = 1.0  # 10 mm (5 voxels) along +x from the centre
    out = ctx(image)
    k = DIRECTIONS.index((1, 0, 0))
    assert out[0, k, 10, 10, 10] == 1.0 and out[0, :, 10, 10, 10].sum() == 1.0
    assert out[0, k, 15, 10, 10] == 0.0  # the voxel itself is not part of its own context
    flat = SurroundContext([1.5, 1.5, 3.0], centre=0.5, scale=15.0)(torch.full((1, 1, 30, 30, 12), 0.7))
    assert torch.allclose(flat, torch.full_like(flat, 3.0))
    cfg = density_config(_plans(), "surround", None)
    assert cfg["cond_dim"] == 14 + STRUCTURE_CHANNELS and cfg["surround"]["radii_mm"] == [30.0]


def test_shell_histogram_sees_the_surroundings_not_the_lesion():
    from screener_plans.nets.shell_histogram import HISTOGRAM_BINS_HU, ShellHistogram, soft_bins

    centres = torch.tensor([0.0, 1.0, 3.0])
    weights = soft_bins(torch.tensor([-1.0, 0.5, 2.0, 4.0]).view(1, 1, 4), centres)[0].T
    assert torch.equal(weights, torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0, 0.5, 0.5], [0, 0, 1.0]]))
    shell = ShellHistogram([2.0, 2.0, 2.0], [0.2, 0.5, 0.8], inner_mm=8.0, outer_mm=20.0)
    image = torch.full((1, 1, 40, 40, 40), 0.5)
    image[:, :, 17:24, 17:24, 17:24] = 0.8  # a 14 mm "lesion" inside the 16 mm inner box
    out = shell(image)
    assert torch.allclose(out.sum(1), torch.ones(1, 40, 40, 40), atol=1e-5)
    assert out[0, 1, 20, 20, 20] > 0.99  # the lesion's centre sees only its host
    assert out[0, 2, 20, 20, 29] > 0.02  # 9 voxels away the lesion is part of the shell
    cfg = density_config(_plans(), "histogram", None)
    assert cfg["cond_dim"] == len(HISTOGRAM_BINS_HU) + STRUCTURE_CHANNELS
    assert cfg["histogram"]["centres"][0] == pytest.approx((-1000.0 + 900.0) / 1500.0)
