"""VICReg and InfoNCE losses against direct numpy implementations of the paper's formulas."""

import math

import numpy as np
import pytest
import torch
from monai.losses import ContrastiveLoss

from screener_plans.losses import SSL_LOSSES, InfoNCELoss, VICRegLoss


def vicreg_numpy(z1, z2, eps=1e-4):
    """Eq. 2 and the definitions after it, written out with loops over the sums."""
    n, d = z1.shape
    inv = sum(np.sum((z1[i] - z2[i]) ** 2) for i in range(n)) / (n * d)
    var = cov = 0.0
    for z in (z1, z2):
        mean = z.sum(0) / n
        c = sum(np.outer(z[i] - mean, z[i] - mean) for i in range(n)) / (n - 1)
        var += sum(max(0.0, 1 - math.sqrt(c[k, k] + eps)) for k in range(d)) / d
        cov += sum(c[a, b] ** 2 for a in range(d) for b in range(d) if a != b) / d
    return inv, var, cov


def infonce_numpy(z1, z2, tau):
    """Eq. 1 term by term, divided by 2N (the module returns the mean)."""
    z = [z1 / np.linalg.norm(z1, axis=1, keepdims=True), z2 / np.linalg.norm(z2, axis=1, keepdims=True)]
    n = z1.shape[0]
    total = 0.0
    for i in range(n):
        pos = math.exp(np.dot(z[0][i], z[1][i]) / tau)
        for k in (0, 1):
            neg = sum(math.exp(np.dot(z[k][i], z[m][j]) / tau) for j in range(n) if j != i for m in (0, 1))
            total += -math.log(pos / (pos + neg))
    return total / (2 * n)


def whitened(n, d, seed=0):
    """(n, d) float64 data with exactly zero mean and identity unbiased covariance."""
    x = np.random.default_rng(seed).normal(size=(n, d))
    q, _ = np.linalg.qr(x - x.mean(0))
    return q * math.sqrt(n - 1)


def test_vicreg_matches_numpy_reference():
    rng = np.random.default_rng(0)
    z1 = rng.normal(size=(20, 6)) * rng.uniform(0.2, 2.0, size=6)
    z2 = z1 + 0.3 * rng.normal(size=(20, 6))
    out = VICRegLoss(inv_weight=2.0, var_weight=3.0, cov_weight=0.5)(torch.tensor(z1), torch.tensor(z2))
    inv, var, cov = vicreg_numpy(z1, z2)
    assert out["invariance"].dtype == torch.float32
    assert out["invariance"].item() == pytest.approx(inv, rel=1e-5)
    assert out["variance"].item() == pytest.approx(var, rel=1e-5)
    assert out["covariance"].item() == pytest.approx(cov, rel=1e-5)
    assert out["loss"].item() == pytest.approx(2 * inv + 3 * var + 0.5 * cov, rel=1e-5)
    assert var > 0 and cov > 0  # the reference case exercises every term


def test_vicreg_invariance_zero_and_gradients():
    z = torch.randn(16, 8, requires_grad=True)
    out = VICRegLoss()(z, z)
    assert out["invariance"].item() == 0.0
    out["loss"].backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_vicreg_variance_zero_for_whitened_and_grows_when_collapsing():
    z = torch.tensor(whitened(64, 8), dtype=torch.float32)
    loss = VICRegLoss()
    out = loss(z, z)
    assert out["variance"].item() == 0.0
    assert out["covariance"].item() == pytest.approx(0.0, abs=1e-8)
    variances = [loss(z * s, z * s)["variance"].item() for s in (0.8, 0.4, 0.1, 0.0)]
    assert variances == sorted(variances) and variances[0] > 0
    # Fully collapsed: each branch gives 1 - sqrt(eps), summed over the two branches.
    assert variances[-1] == pytest.approx(2 * (1 - math.sqrt(1e-4)), rel=1e-6)


def test_vicreg_covariance_for_known_covariance():
    a = np.array([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [-0.3, 0.2, 0.7]])
    sigma = a @ a.T
    z = torch.tensor(whitened(50, 3) @ a.T)  # unbiased covariance is exactly sigma
    out = VICRegLoss()(z, z)
    expected = 2 * (np.sum(sigma**2) - np.sum(np.diag(sigma) ** 2)) / 3
    assert out["covariance"].item() == pytest.approx(expected, rel=1e-5)


def test_vicreg_rejects_bad_shapes():
    with pytest.raises(ValueError, match="equal shape"):
        VICRegLoss()(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="at least 2"):
        VICRegLoss()(torch.randn(1, 3), torch.randn(1, 3))


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_infonce_matches_numpy_and_monai(tau):
    rng = np.random.default_rng(1)
    z1 = rng.normal(size=(7, 5))
    z2 = z1 + 0.5 * rng.normal(size=(7, 5))
    out = InfoNCELoss(temperature=tau)(torch.tensor(z1), torch.tensor(z2))
    assert out["loss"].item() == pytest.approx(infonce_numpy(z1, z2, tau), rel=1e-5)
    monai_value = ContrastiveLoss(temperature=tau)(torch.tensor(z1), torch.tensor(z2)).item()
    assert out["loss"].item() == pytest.approx(monai_value, rel=1e-5)


def test_infonce_limits():
    n = 16
    z = torch.tensor(whitened(64, n).T[:n], dtype=torch.float32)  # n orthogonal rows
    # High temperature: all logits ~0, so each term is log of 2N-1 equal alternatives.
    high = InfoNCELoss(temperature=1e3)(z, torch.randn(n, 64))
    assert high["loss"].item() == pytest.approx(math.log(2 * n - 1), rel=1e-3)
    # Identical, mutually orthogonal pairs at low temperature: near-perfect classification.
    low = InfoNCELoss(temperature=0.05)(z, z)
    assert low["loss"].item() < 1e-6
    assert low["positive_similarity"].item() == pytest.approx(1.0)
    # Very low temperature stays finite (log-sum-exp), unlike exp-then-log implementations.
    tiny_tau = InfoNCELoss(temperature=1e-3)(torch.randn(n, 8), torch.randn(n, 8))
    assert torch.isfinite(tiny_tau["loss"])


def test_infonce_gradients_and_registry():
    z1 = torch.randn(8, 4, requires_grad=True)
    z2 = torch.randn(8, 4, requires_grad=True)
    InfoNCELoss()(z1, z2)["loss"].backward()
    assert torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0
    assert SSL_LOSSES["vicreg"] is VICRegLoss and SSL_LOSSES["simclr"] is InfoNCELoss
    with pytest.raises(ValueError):
        InfoNCELoss(temperature=0.0)
