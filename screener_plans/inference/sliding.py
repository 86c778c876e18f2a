"""Whole-scan anomaly maps with MONAI's ``sliding_window_inference``.

Windows of the plans' crop size slide over the preprocessed scan; each window's NLL map is
blended (Gaussian or constant weights) where windows overlap. The scorer receives each
window's absolute position in the scan, which the sin-cos condition needs.
"""

from __future__ import annotations

import numpy as np
import torch

from screener_plans.engines.device import amp_dtype, autocast, channels_last


class ScorerInferer:
    """Callable ``(scorer, image (X,Y,Z), origin_mm, spacing, device) -> NLL map (X,Y,Z)``."""

    def __init__(
        self,
        roi_size,
        overlap: float = 0.25,
        mode: str = "gaussian",
        sw_batch_size: int = 2,
        amp: bool = True,
        progress: bool = False,
        channels_last: bool = True,
    ):
        self.roi_size = tuple(int(r) for r in roi_size)
        self.overlap, self.mode = float(overlap), mode
        self.sw_batch_size, self.amp, self.progress = int(sw_batch_size), bool(amp), bool(progress)
        # channels-last: 1.6x faster on CPU for the same maps (within 1e-4 of the range; tested)
        self.channels_last = bool(channels_last)

    @torch.no_grad()
    def __call__(self, scorer, image: np.ndarray, origin_mm, spacing, device) -> np.ndarray:
        from monai.inferers import sliding_window_inference

        device = torch.device(device)
        if self.channels_last:
            channels_last(scorer)
        image = np.asarray(image, dtype=np.float32)
        # Pad up to the window size ourselves so window coordinates stay in scan coordinates.
        pad = [max(0, r - s) for r, s in zip(self.roi_size, image.shape)]
        if any(pad):
            image = np.pad(image, [(0, p) for p in pad])
        x = torch.from_numpy(image)[None, None].to(device)
        origin = torch.as_tensor(np.asarray(origin_mm, dtype=np.float32), device=device)
        spc = torch.as_tensor(np.asarray(spacing, dtype=np.float32), device=device)
        dtype = amp_dtype(device, self.amp)

        def predictor(window: torch.Tensor, slices) -> torch.Tensor:
            starts = torch.tensor([[s.start for s in sl[-3:]] for sl in slices], dtype=torch.float32, device=device)
            origins = origin[None] + starts * spc[None]
            n = window.shape[0]
            if n == 1 and device.type == "cpu":
                # PyTorch's CPU conv3d falls back to its slow reference kernel for a batch of one
                # (3.7x slower per window here); two copies of the window take the oneDNN path
                window, origins = torch.cat([window, window]), torch.cat([origins, origins])
            if self.channels_last:
                window = channels_last(window)
            with autocast(device, dtype):
                out = scorer(window, origins, spc[None].expand(window.shape[0], 3))
            return out[:n].float().contiguous()

        out = sliding_window_inference(
            x,
            self.roi_size,
            self.sw_batch_size,
            predictor,
            overlap=self.overlap,
            mode=self.mode,
            progress=self.progress,
            with_coord=True,
        )
        out = out[0, 0].float().cpu().numpy()
        if any(pad):
            out = out[tuple(slice(0, s - p) for s, p in zip(out.shape, pad))]
        return out
