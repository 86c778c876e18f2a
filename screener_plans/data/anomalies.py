"""Synthetic local anomalies painted into a training crop, with the soft mask of where they are.

The noise distribution of the contrastive density (``density/contrastive.py``): a network that
tells these from the scans' own content learns what the content of each place looks like in its
context. Each anomaly is a lobulated ellipsoid (2-30 mm, soft edge) centred in the body, holding
one of:

- ``shift``: the content plus a constant (tissue darker or brighter by tens to hundreds of HU,
  its own structure kept: an oedema, an infiltrate, contrast uptake);
- ``replace``: a flat region at the blob's mean plus a constant (a mass of one density);
- ``value``: a flat region of any tissue value from gas to bone (a nodule in lung, gas in liver;
  off by default);
- ``foreign``: the same place of another crop (real tissue where it does not belong; MOOD-Top1's
  patch interpolation).

Flat regions keep the crop's own noise (its high-pass residual), so noise texture alone never
gives an anomaly away. An anomaly counts in the target only where it is visible: a Rose
criterion (contrast x sqrt(voxels) / noise >= ``rose``) over the blob, and a change of at least
``min_change_hu`` at the voxel; an invisible change stays in the crop with target 0, so the
network is not taught to flag what no reader could see.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

from screener_plans.errors import ScreenerError
from screener_plans.nets.blur import gaussian_smooth

KINDS = ("shift", "replace", "value", "foreign")
DEFAULTS = {
    "p_clean": 0.2,
    "max_anomalies": 4,
    "radius_mm": (2.0, 30.0),
    "edge_mm": (0.3, 2.0),
    "contrast_hu": (15.0, 300.0),
    "value_hu": (-1000.0, 1000.0),
    "texture_hu": 15.0,
    # chosen on the quality benchmark's dev set (docs/benchmarks.md): adding flat "value" fills
    # of any HU, contrasts to 1000 HU and a Rose criterion of 5 scored lower there
    "kinds": {"shift": 0.35, "replace": 0.45, "foreign": 0.2},
    "min_change_hu": 8.0,
    "rose": 0.0,
}


def _gaussian(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of an (X, Y, Z) volume."""
    return gaussian_smooth(x[None, None], sigma)[0, 0]


def _smooth_field(rng: np.random.Generator, shape, scale_vox: float) -> torch.Tensor:
    """A smooth random field of about unit standard deviation, correlated over about ``scale_vox`` voxels."""
    low = [max(2, int(math.ceil(n / max(scale_vox, 1.0))) + 1) for n in shape]
    z = torch.from_numpy(rng.standard_normal(low).astype(np.float32))
    # trilinear interpolation of unit-variance nodes keeps about 0.7 of the variance
    up = F.interpolate(z[None, None], size=tuple(int(n) for n in shape), mode="trilinear", align_corners=True)
    return up[0, 0] / 0.7


class SyntheticAnomalies:
    """``anomalies(crop, body, spacing, rng, donor=None) -> (crop', target)`` for (X, Y, Z) crops.

    ``crop`` is window-scaled to [0, 1] (``window`` in HU maps to it), ``body`` a bool mask of
    where anomalies may be centred, ``spacing`` the voxel size in mm, ``donor`` another crop of
    the same size (for ``foreign``). ``target`` is the soft mask in [0, 1] of the visible
    anomalies. Deterministic given ``rng``. Settings: ``DEFAULTS``.
    """

    def __init__(self, window, **settings):
        unknown = set(settings) - set(DEFAULTS)
        if unknown:
            raise ScreenerError(f"synthetic anomalies: unknown setting(s) {', '.join(sorted(unknown))}")
        cfg = {**DEFAULTS, **settings}
        lo, hi = (float(v) for v in window)
        if not hi > lo:
            raise ScreenerError(f"synthetic anomalies: window {window} is empty")
        kinds = dict(cfg["kinds"])
        if not kinds or set(kinds) - set(KINDS) or min(kinds.values()) < 0 or sum(kinds.values()) <= 0:
            raise ScreenerError(f"synthetic anomalies: kinds must weigh some of {', '.join(KINDS)}, got {kinds}")
        self.lo, self.per_hu = lo, 1.0 / (hi - lo)
        self.cfg = cfg
        self.kinds = list(kinds)
        weights = np.array([kinds[k] for k in self.kinds], dtype=np.float64)
        self.p_kinds = weights / weights.sum()

    def _blob(self, rng, shape, spacing, centre) -> tuple[torch.Tensor, tuple]:
        """Soft occupancy of one lobulated ellipsoid in its bounding box, and the box (slices)."""
        rlo, rhi = self.cfg["radius_mm"]
        r = math.exp(rng.uniform(math.log(rlo), math.log(rhi)))
        radii = r * rng.uniform(0.7, 1.3, 3)
        lobulation = rng.uniform(0.0, 0.35)
        edge = rng.uniform(*self.cfg["edge_mm"])
        # the lobulation field stays within 2.5 sd: beyond that reach, and four edge widths, the
        # occupancy is nil
        stretch = 1.0 / (1.0 - 1.25 * lobulation) + 4 * edge / r
        reach = [int(math.ceil(ri * stretch / s)) for ri, s in zip(radii, spacing)]
        box = tuple(slice(max(0, int(c) - h), min(int(n), int(c) + h + 1)) for c, h, n in zip(centre, reach, shape))
        d2 = 0.0
        for a in range(3):
            idx = torch.arange(box[a].start, box[a].stop, dtype=torch.float32)
            v = (idx - float(centre[a])) * float(spacing[a]) / float(radii[a])
            view = [1, 1, 1]
            view[a] = -1
            d2 = d2 + v.view(view) ** 2
        d = torch.sqrt(d2)
        size = tuple(b.stop - b.start for b in box)
        d = d * (1 + 0.5 * lobulation * _smooth_field(rng, size, max(2.0, r / float(np.mean(spacing)))))
        return torch.sigmoid((1 - d) * r / edge), box

    def __call__(self, crop: torch.Tensor, body, spacing, rng: np.random.Generator, donor: torch.Tensor | None = None):
        cfg = self.cfg
        x = crop.float().clone()
        target = torch.zeros_like(x)
        if rng.uniform() < cfg["p_clean"]:
            return x, target
        inside = np.flatnonzero(np.asarray(body).ravel())
        if inside.size == 0:
            return x, target
        shape = x.shape
        smooth = _gaussian(x, 1.0)
        residual = x - smooth
        sample = residual.reshape(-1)[torch.from_numpy(inside)]
        noise = float(1.4826 * (sample - sample.median()).abs().median()) + 1e-6
        for _ in range(int(rng.integers(1, cfg["max_anomalies"] + 1))):
            centre = np.unravel_index(int(rng.choice(inside)), shape)
            f, box = self._blob(rng, shape, spacing, centre)
            kind = self.kinds[int(rng.choice(len(self.kinds), p=self.p_kinds))]
            clo, chi = cfg["contrast_hu"]
            delta = rng.choice([-1.0, 1.0]) * math.exp(rng.uniform(math.log(clo), math.log(chi))) * self.per_hu
            texture = _smooth_field(rng, f.shape, rng.uniform(1.5, 5.0)) * (
                rng.uniform(0, cfg["texture_hu"]) * self.per_hu
            )
            here = x[box]
            if kind == "shift":
                new = here + delta + texture
            elif kind == "replace":
                mean = (smooth[box] * f).sum() / f.sum().clamp_min(1e-6)
                new = mean + delta + texture + residual[box]
            elif kind == "value":
                value = (rng.uniform(*cfg["value_hu"]) - self.lo) * self.per_hu
                new = value + texture + residual[box]
            else:
                new = donor[box].float() if donor is not None else here + delta + texture
            diff = f * (new.clamp(0.0, 1.0) - here)
            core = f > 0.5
            n = float(core.sum())
            if n > 0 and float(diff[core].abs().mean()) * math.sqrt(n) >= cfg["rose"] * noise:
                visible = f * (_gaussian(diff.abs(), 1.0) >= cfg["min_change_hu"] * self.per_hu).float()
                target[box] = torch.maximum(target[box], visible)
            x[box] = here + diff
        return x, target
