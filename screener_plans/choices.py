"""The density stage's choices, named once: the plans' schema, the CLI and the engines read them."""

from __future__ import annotations

CONDITIONS = ("masked", "sincos", "none", "surround", "histogram")
# "contrastive": segmentation networks that tell the scans from synthetic anomalies
# (density/contrastive.py); it scores the CT intensity with no condition.
DENSITIES = ("gaussian", "flow", "mixture", "contrastive")
# What the density model scores: the learned descriptor (the paper), the voxel's own CT
# intensity (window-scaled), both side by side, or "structure": the intensity smoothed at one
# voxel, scored given its local Gaussian derivatives (appended to the condition; see
# nets/structure.py), or the descriptor and that smoothed intensity in one density.
FEATURES = ("descriptor", "intensity", "descriptor+intensity", "structure", "descriptor+structure")


def one_of(choices) -> str:
    """``'a', 'b' or 'c'``: the choices as an error message names them."""
    quoted = [f"'{c}'" for c in choices]
    return ", ".join(quoted[:-1]) + f" or {quoted[-1]}" if len(quoted) > 1 else quoted[0]
