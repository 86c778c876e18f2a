"""The presets, in one place: ``tiny`` (CPU) and ``base`` (GPU, the paper's sizes).

``NETWORK_PRESETS`` is each preset's network architecture (``screener_plans.nets.presets`` builds
it); ``PRESET_PLANS`` the knobs the planner does not derive from the data (crop and batch limits,
steps per stage, learning rate, input windows, the scorer's choices).
"""

from __future__ import annotations

from typing import Any

NETWORK_PRESETS: dict[str, dict[str, Any]] = {
    # Trains on 2 CPU cores in minutes on 32^3 crops (about 0.43 M parameters).
    "tiny": {
        "channels": (8, 16, 32, 64),
        "blocks_per_level": 1,
        "out_channels": 32,
        "norm": "batch",
        "expander_width": 512,
        "expander_layers": 3,
        "projector_hidden": 256,
        "projector_out": 128,
    },
    # About the size of the paper's vox2vec-style descriptor (about 12.8 M parameters), for GPUs.
    "base": {
        "channels": (16, 32, 64, 128, 256),
        "blocks_per_level": 2,
        "out_channels": 32,
        "norm": "batch",
        "expander_width": 8192,
        "expander_layers": 3,
        "projector_hidden": 512,
        "projector_out": 128,
    },
}

# Per-preset knobs that are not derived from the data.
PRESET_PLANS = {
    "tiny": {
        "max_crop": 48,
        "min_spacing": 1.5,
        "batch_size": 2,
        "pairs_per_crop": 256,
        "lr": 1e-3,
        "d_desc": 32,
        "d_cond": 24,
        "steps": {"descriptor": 900, "condition": 500, "density": 1500},
        # crops per density step; the contrastive density splits them among its members
        "density_batch": 8,
        # The flow trains on a random sample of each crop's voxels (``density.voxels_per_crop``):
        # its forward/backward over every voxel was most of a density step, and neighbouring voxels
        # carry nearly the same gradient, so many more steps fit in the same minutes (chosen on the
        # dev and real sets against every voxel, docs/benchmarks.md).
        "density_voxels": 8192,
        "checkpoint_every": 100,
        # Extra input windows of the networks (nets/windows.py): a soft-tissue window gives 20-40 HU
        # organ masses full contrast, a lung/gas window keeps gas apart from fat (with the soft
        # window alone a planted gas ball scored like normal tissue). Chosen on the dev and real
        # sets (docs/benchmarks.md, "Dev log").
        "windows_hu": [[-1000, -400], [-160, 240]],
        # Chosen on the quality benchmark's dev set (tools/bench_quality.py; docs/benchmarks.md):
        # two networks trained to find synthetic anomalies painted into the unlabeled scans
        # (density/contrastive.py). On dev it is ahead of the descriptor path (descriptor + masked
        # condition + flow, the GPU default) and of both baselines on every metric and organ-mass
        # kind; the descriptor path needs far more compute than 30 CPU minutes to learn.
        "density": {
            "kind": "contrastive",
            "condition": "none",
            "features": "intensity",
            "intensity_prior": False,
        },
    },
    "base": {
        "max_crop": 96,
        "min_spacing": 1.0,
        "batch_size": 8,
        "pairs_per_crop": 1024,
        "lr": 3e-4,
        "d_desc": 32,
        "d_cond": 36,
        "steps": {"descriptor": 50000, "condition": 50000, "density": 20000},
        "density_batch": 8,
        "checkpoint_every": 1000,
        # The paper's configuration (VICReg descriptor, masked condition, conditional flow).
        "density": {"kind": "flow", "condition": "masked", "features": "descriptor", "intensity_prior": False},
    },
}
