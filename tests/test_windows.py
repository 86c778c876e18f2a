"""Extra CT windows computed inside the networks (nets/windows.py; `network.windows_hu`)."""

import torch

from screener_plans.nets.windows import WindowStem


def test_window_stem_rewindows_the_one_cached_channel():
    stem = WindowStem([-1000.0, 1000.0], [[-160.0, 240.0]])
    hu = torch.tensor([-1000.0, -160.0, 40.0, 240.0, 1000.0])
    x = ((hu + 1000.0) / 2000.0).view(1, 1, 5, 1, 1)  # the cache's [0, 1] scale
    out = stem(torch.cat([x, torch.full_like(x, 7.0)], dim=1))  # a second channel (the mask) passes through
    assert out.shape == (1, 3, 5, 1, 1)
    torch.testing.assert_close(out[0, 0].flatten(), x.flatten())
    torch.testing.assert_close(out[0, 1].flatten(), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    assert torch.all(out[0, 2] == 7.0)
    # a 40 HU difference in soft tissue: 0.02 in the cache's scale, 0.1 in the window
    assert stem.extra_channels == 1


def test_a_presets_window_reaches_both_networks():
    from screener_plans.engines.ssl import build_stage_network
    from screener_plans.nets.windows import WindowedNet
    from screener_plans.planning.planner import PRESET_PLANS, network_plan

    network = network_plan("tiny", {**PRESET_PLANS["tiny"], "windows_hu": [[-160, 240]]})
    assert network["windows_hu"] == [[-160.0, 240.0]]
    plans = {"network": network, "intensity": {"window": [-1000.0, 1000.0]}}
    for stage, channels in (("descriptor", 1), ("condition", 2)):
        net = build_stage_network(plans, stage).eval()
        assert isinstance(net, WindowedNet)
        with torch.no_grad():
            y = net(torch.rand(1, channels, 16, 16, 16))
        assert y.shape[:2] == (1, network["d_desc"] if stage == "descriptor" else network["d_cond"])
    assert network_plan("base", PRESET_PLANS["base"])["windows_hu"] == []  # the paper's input
    # the CPU default: a lung/gas and a soft-tissue window beside the wide one
    assert network_plan("tiny", PRESET_PLANS["tiny"])["windows_hu"] == [[-1000.0, -400.0], [-160.0, 240.0]]
