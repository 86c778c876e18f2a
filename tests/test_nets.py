"""Dense UNet, SSL heads, sin-cos condition and presets (CPU, seconds)."""

import math
import warnings

import pytest
import torch

from screener_plans.nets import (
    NETWORK_PRESETS,
    DenseUNet,
    Expander,
    Projector,
    SinCosCondition,
    activation_bytes_per_voxel,
    build_head,
    build_network,
    coordinate_grid_mm,
    count_parameters,
    estimate_train_memory_bytes,
    head_train_bytes,
    sincos_encoding,
)
from screener_plans.nets.presets import _saved_bytes


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_network("tiny")


@pytest.mark.parametrize("shape", [(16, 16, 16), (32, 16, 24), (8, 40, 16)])
def test_full_resolution_output(tiny, shape):
    x = torch.randn(2, 1, *shape)
    y = tiny(x)
    assert y.shape == (2, NETWORK_PRESETS["tiny"]["out_channels"], *shape)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("norm", ["instance", "group", "batch"])
def test_norms_and_in_channels(norm):
    net = DenseUNet(in_channels=2, out_channels=6, channels=(4, 8, 12), norm=norm)
    assert net.total_stride == 4
    assert net(torch.randn(2, 2, 8, 12, 4)).shape == (2, 6, 8, 12, 4)


def test_bad_inputs_raise_value_error(tiny):
    with pytest.raises(ValueError, match="not divisible by its total stride 8"):
        tiny(torch.randn(1, 1, 20, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 1, X, Y, Z\)"):
        tiny(torch.randn(1, 2, 16, 16, 16))
    with pytest.raises(ValueError, match="norm"):
        DenseUNet(norm="layer")


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = DenseUNet(out_channels=4, channels=(4, 8, 16), blocks_per_level=2, norm="instance")
    out = net(torch.randn(2, 1, 16, 16, 16))
    (out * torch.randn_like(out)).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_trace_and_script_match_eager(tiny):
    net = tiny.eval()
    x = torch.randn(2, 1, 16, 24, 16)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # jit.trace is deprecated in torch>=2.9
        warnings.simplefilter("error", torch.jit.TracerWarning)  # no data-dependent Python control flow
        traced = torch.jit.trace(net, x)
    scripted = torch.jit.script(net)
    other = torch.randn(1, 1, 32, 16, 8)  # a different shape: the trace must not bake sizes in
    with torch.no_grad():
        for inp in (x, other):
            ref = net(inp)
            torch.testing.assert_close(traced(inp), ref)
            torch.testing.assert_close(scripted(inp), ref)
    net.train()


def test_channels_last_matches(tiny):
    net = tiny.eval()
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        ref = net(x)
        out = net.to(memory_format=torch.channels_last_3d)(x.to(memory_format=torch.channels_last_3d))
    net.to(memory_format=torch.contiguous_format).train()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_heads():
    z = torch.randn(10, 32)
    exp = Expander(32, width=64, num_layers=3)
    proj = Projector(32, hidden_dim=48, out_dim=16)
    assert exp(z).shape == (10, 64) and proj(z).shape == (10, 16)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in exp) == 2
    assert isinstance(exp[-1], torch.nn.Linear)
    with torch.device("meta"):
        assert build_head("base", "vicreg")[-1].out_features == 8192
    assert build_head("tiny", "simclr")(z).shape == (10, 128)
    with pytest.raises(ValueError):
        build_head("tiny", "byol")


def test_presets_build():
    base = build_network("base")
    assert base.channels == (16, 32, 64, 128, 256) and base.blocks_per_level == 2 and base.out_channels == 32
    assert 5e6 < count_parameters(base) < 3e7
    assert count_parameters(build_network("tiny")) < 1e6
    cond = build_network({"channels": (4, 8)}, in_channels=2, out_channels=5)
    assert cond(torch.randn(2, 2, 4, 4, 4)).shape == (2, 5, 4, 4, 4)
    with pytest.raises(ValueError, match="unknown network preset"):
        build_network("huge")
    with pytest.raises(ValueError, match="keys"):
        build_network({"chanels": (4, 8)})


def test_activation_bytes_per_voxel_is_exact_for_other_shapes():
    bpv = activation_bytes_per_voxel("tiny")
    net = build_network("tiny")
    shape = (2, 1, 24, 16, 32)
    counted = _saved_bytes(net, shape)
    assert counted == pytest.approx(bpv * math.prod(shape), rel=0.01)
    assert activation_bytes_per_voxel("tiny", amp=True) == pytest.approx(bpv / 2)
    assert activation_bytes_per_voxel("tiny", in_channels=2) > bpv


def test_memory_estimate_is_monotone_and_plausible():
    small = estimate_train_memory_bytes("tiny", (32, 32, 32), 2, head=None)
    assert estimate_train_memory_bytes("tiny", (64, 64, 64), 2, head=None) > 4 * small
    assert estimate_train_memory_bytes("tiny", (32, 32, 32), 4, head=None) > small
    assert estimate_train_memory_bytes("tiny", (32, 32, 32), 2, amp=True, head=None) < small
    # Measured on CPU: tiny 32^3 x 2 crops peaked ~104 MiB above the parameter state.
    assert 60 * 2**20 < small < 200 * 2**20
    assert head_train_bytes("base", "vicreg", 2048) > 3 * 4 * 8192**2
    assert head_train_bytes("tiny", None, 2048) == 0
    big = estimate_train_memory_bytes("base", (96, 96, 96), 8, n_pairs=8192, amp=True)
    assert 8 * 2**30 < big < 60 * 2**30


def test_sincos_depends_on_absolute_position():
    spacing = torch.tensor([[1.5, 0.8, 2.0]])
    shape = (8, 6, 5)
    cond = SinCosCondition(dim=24)
    start_a, start_b = torch.tensor([[10, 4, 7]]), torch.tensor([[13, 6, 9]])
    enc_a = cond(start_a * spacing, spacing, shape)
    enc_b = cond(start_b * spacing, spacing, shape)
    assert enc_a.shape == (1, 24, *shape) and enc_a.dtype == torch.float32
    # Voxel (3, 2, 2) of crop A is voxel (0, 0, 0) of crop B: same physical point.
    torch.testing.assert_close(enc_a[:, :, 3:, 2:, 2:], enc_b[:, :, :5, :4, :3])
    assert not torch.allclose(enc_a, enc_b)
    # The grid-based function gives the same values, and also matches across the two crops.
    grid_a = coordinate_grid_mm(start_a * spacing, spacing, shape)
    grid_b = coordinate_grid_mm(start_b * spacing, spacing, shape)
    torch.testing.assert_close(grid_a[:, :, 3:, 2:, 2:], grid_b[:, :, :5, :4, :3])
    torch.testing.assert_close(sincos_encoding(grid_a, 24), enc_a, atol=1e-5, rtol=0)
    # Each (sin, cos) pair lies on the unit circle; x-channels vary only along x.
    n = 24 // 6
    torch.testing.assert_close(enc_a[:, :n] ** 2 + enc_a[:, n : 2 * n] ** 2, torch.ones(1, n, *shape))
    assert torch.equal(enc_a[:, : 2 * n, :, :1, :1].expand_as(enc_a[:, : 2 * n]), enc_a[:, : 2 * n])


def test_sincos_batch_large_offsets_and_errors():
    cond = SinCosCondition(dim=12, min_period_mm=5.0, max_period_mm=500.0)
    origin = torch.tensor([[0.0, 0.0, 0.0], [1000.0, 500.0, 1500.0]])
    spacing = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    enc = cond(origin, spacing, (4, 4, 4))
    # Periods 5 mm and 500 mm; the offsets are multiples of both, so both samples coincide.
    torch.testing.assert_close(enc[0], enc[1], atol=1e-5, rtol=0)
    assert len(list(cond.parameters())) == 0 and cond.state_dict() == {}
    with pytest.raises(ValueError, match="multiple of 6"):
        SinCosCondition(dim=16)
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        cond(torch.zeros(3), torch.ones(3), (4, 4, 4))
