"""Colour (intensity) augmentation of one crop, applied independently to each crop of a pair.

Own small numpy/scipy functions rather than MONAI's Rand* intensity transforms: MONAI's
GaussianSmooth/GaussianSharpen are 4-15x slower on a 96^3 crop on one CPU thread (they
convolve in torch), and they draw from a legacy RandomState rather than the pair's Generator.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi
import torch

from screener_plans.errors import ScreenerError

__all__ = ["ColorAugment"]


def _range(value, name: str, lo_min: float = -np.inf) -> tuple[float, float] | None:
    if value is None:
        return None
    lo, hi = (float(v) for v in value)
    if not (lo_min <= lo <= hi):
        raise ScreenerError(f"{name}: expected a range lo <= hi (lo >= {lo_min}), got {value}")
    return lo, hi


class ColorAugment:
    """Random brightness/contrast/gamma, blur or sharpening, and Gaussian noise of one crop.

    Each op is applied with probability ``p`` (independently), in this order on intensities in
    [0, 1]: contrast ``x -> (x - mean) * c + mean`` with c ~ U(contrast); brightness shift
    b ~ U(-brightness, brightness); clip to ``clip``; gamma ``x -> x ** g`` with g log-uniform in
    ``gamma``; then either a Gaussian blur (sigma ~ U(blur_sigma), voxels) or, when ``sharpen``
    is given, with even odds an unsharp mask ``x + a * (x - blur(x))``, a ~ U(sharpen);
    Gaussian noise with std ~ U(noise_std); finally clip to ``clip``. Any op set to None is off.

    ``aug(crop, rng)`` takes a numpy array or torch tensor shaped (1, X, Y, Z) or (X, Y, Z)
    and returns the same kind and shape as float32; it is deterministic given ``rng``
    (a numpy Generator; defaults to one seeded with ``seed``).
    """

    def __init__(
        self,
        brightness: float | None = 0.1,
        contrast=(0.8, 1.2),
        gamma=(0.8, 1.25),
        noise_std=(0.0, 0.03),
        blur_sigma=(0.0, 1.0),
        sharpen=(0.0, 1.0),
        p: float = 0.8,
        clip=(0.0, 1.0),
        seed: int = 0,
    ):
        if brightness is not None and not brightness >= 0:
            raise ScreenerError(f"brightness: expected >= 0, got {brightness}")
        if not 0.0 <= p <= 1.0:
            raise ScreenerError(f"p: expected a probability in [0, 1], got {p}")
        self.brightness = None if brightness is None else float(brightness)
        self.contrast = _range(contrast, "contrast", 0.0)
        self.gamma = _range(gamma, "gamma", 1e-6)
        self.noise_std = _range(noise_std, "noise_std", 0.0)
        self.blur_sigma = _range(blur_sigma, "blur_sigma", 0.0)
        self.sharpen = _range(sharpen, "sharpen", 0.0)
        if self.sharpen is not None and self.blur_sigma is None:
            raise ScreenerError("sharpen: needs blur_sigma (the unsharp mask's sigma range)")
        self.p = float(p)
        self.clip = _range(clip, "clip") if clip is not None else None
        self.rng = np.random.default_rng(seed)

    def __call__(self, crop, rng: np.random.Generator | None = None):
        rng = self.rng if rng is None else rng
        is_torch = isinstance(crop, torch.Tensor)
        device = crop.device if is_torch else None
        x = crop.detach().cpu().numpy() if is_torch else np.asarray(crop)
        x = np.array(x, dtype=np.float32)  # always a private float32 copy
        vol = x.reshape(x.shape[-3:])  # view: ops below work on the 3D volume in place
        vol[...] = self._apply(vol, rng)
        return torch.from_numpy(x).to(device) if is_torch else x

    def _apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # One draw per op (whether applied or not) keeps the stream layout fixed.
        on = rng.random(5) < self.p
        u = rng.random(7)
        if self.contrast is not None and on[0]:
            c = self.contrast[0] + u[0] * (self.contrast[1] - self.contrast[0])
            mean = float(x.mean())
            x = (x - mean) * np.float32(c) + np.float32(mean)
        if self.brightness is not None and on[1]:
            x = x + np.float32((2 * u[1] - 1) * self.brightness)
        if self.clip is not None:
            x = np.clip(x, *self.clip, out=x)
        if self.gamma is not None and on[2]:
            lg = np.log(self.gamma)
            g = np.exp(lg[0] + u[2] * (lg[1] - lg[0]))
            # gamma is only defined for non-negative intensities
            x = np.power(np.maximum(x, 0, out=x), np.float32(g), out=x)
        if self.blur_sigma is not None and on[3]:
            sigma = self.blur_sigma[0] + u[3] * (self.blur_sigma[1] - self.blur_sigma[0])
            if sigma > 0.05:  # smaller sigmas are a no-op at voxel resolution
                blurred = ndi.gaussian_filter(x, sigma, mode="nearest", truncate=3.0)
                if self.sharpen is not None and u[4] < 0.5:
                    a = self.sharpen[0] + u[6] * (self.sharpen[1] - self.sharpen[0])
                    x = x + np.float32(a) * (x - blurred)
                else:
                    x = blurred
        if self.noise_std is not None and on[4]:
            std = self.noise_std[0] + u[5] * (self.noise_std[1] - self.noise_std[0])
            if std > 0:
                noise = rng.standard_normal(x.shape, dtype=np.float32)
                noise *= np.float32(std)
                x = x + noise
        if self.clip is not None:
            x = np.clip(x, *self.clip)
        return x
