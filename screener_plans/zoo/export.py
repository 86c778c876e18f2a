"""TorchScript and ONNX exports of the full scorer (descriptor + condition + density).

The exported module is :class:`PatchScorer`: one input tensor, a preprocessed patch, and one
output, its per-voxel NLL map ``(B, 1, X, Y, Z)``. One input is what MONAI's ``ckpt_export``
and ``onnx_export`` can trace. Channel 0 is the image (CT window-scaled to [0, 1]); a sin-cos
conditioned scorer also needs each voxel's absolute position in the scan, so its patches
carry three more channels, the x, y, z position in mm (``coordinate_grid_mm``).

Both exports go through MONAI's bundle tools with the bundle's ``configs/export.yaml``
(``network_def`` = ``build_patch_scorer(bundle_root)``) and ``models/model.pt``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from screener_plans.errors import ScreenerError
from screener_plans.inference.loader import build_scorer, read_scorer_config
from screener_plans.layout import (
    BUNDLE_METADATA,
    BUNDLE_ONNX,
    BUNDLE_TORCHSCRIPT,
    BUNDLE_WEIGHTS,
    is_bundle,
    plans_file,
)
from screener_plans.zoo.package import build_bundle, patch_channels

EXPORT_CONFIG = Path("configs") / "export.yaml"


class PatchScorer(nn.Module):
    """``Scorer`` with a single input: ``patch (B, C, X, Y, Z) -> NLL (B, 1, X, Y, Z)``.

    Same state dict as ``Scorer`` (``features.*``, ``density.*``), so a bundle's
    ``models/model.pt`` loads into either.
    """

    def __init__(self, features: nn.Module, density: nn.Module):
        super().__init__()
        self.features, self.density = features, density

    @classmethod
    def from_scorer(cls, scorer) -> PatchScorer:
        return cls(scorer.features, scorer.density)

    def sincos_from_coords(self, coords_mm: torch.Tensor) -> torch.Tensor:
        # SinCosCondition's layout [sin x, cos x, sin y, cos y, sin z, cos z]; float64 phases
        # as there, and omega is a buffer so the export follows .to(device).
        omega = self.features.sincos.omega.to(torch.float64)[None, :, None, None, None]
        parts = []
        for axis in range(3):
            phase = coords_mm[:, axis : axis + 1].to(torch.float64) * omega
            parts += [phase.sin(), phase.cos()]
        return torch.cat(parts, dim=1).float()

    def forward(self, patch: torch.Tensor) -> torch.Tensor:
        image = patch[:, :1]
        if self.features.sincos is None:
            unused = patch.new_zeros((patch.shape[0], 3))  # positions matter only to sin-cos
            y, c = self.features(image, unused, unused)
        else:
            y = self.features.describe(image)
            c = self.sincos_from_coords(patch[:, 1:4])
        nll = self.density(y.float(), c.float() if self.features.cond_dim > 0 else None)
        return nll[:, None]


def build_patch_scorer(root) -> PatchScorer:
    """``network_def`` of ``configs/export.yaml``: an untrained PatchScorer shaped like ``root``'s scorer."""
    from screener_plans.planning.plans import load_plans

    plans = load_plans(plans_file(root))
    return PatchScorer.from_scorer(build_scorer(plans, read_scorer_config(root)))


def _export_source(path):
    """(bundle folder, temporary folder or None): a run is first packaged into a temporary bundle."""
    path = Path(path)
    if is_bundle(path):
        return path, None

    tmp = Path(tempfile.mkdtemp(prefix=".screener-export-", dir=path if path.is_dir() else None))
    try:
        build_bundle(path, tmp / "bundle", name="export", version="0.0.0", changelog={"0.0.0": "export"})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp / "bundle", tmp


def example_input_shape(bundle_dir) -> list[int]:
    """``[1, C, *crop_size]``: the patch shape sliding-window inference feeds the scorer."""
    from screener_plans.planning.plans import load_plans

    plans = load_plans(plans_file(bundle_dir))
    return [1, patch_channels(read_scorer_config(bundle_dir)), *plans["crop_size"]]


def _monai_args(bundle: Path) -> dict:
    return {
        "net_id": "network_def",
        "ckpt_file": str(bundle / BUNDLE_WEIGHTS),
        "meta_file": str(bundle / BUNDLE_METADATA),
        "config_file": str(bundle / EXPORT_CONFIG),
        "bundle_root": str(bundle),
    }


def _run_monai(fn, what: str, path, **kwargs) -> None:
    from screener_plans.bundle_runner import find_screener_error

    # MONAI logs its input summary and the temporary file's name; the caller reports the result
    monai_logger = logging.getLogger("monai.bundle.scripts")
    level = monai_logger.level
    monai_logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shape-derived constants are expected
            fn(**kwargs)
    except ScreenerError:
        raise
    except Exception as e:
        found = find_screener_error(e)
        if found is not None:
            raise found from None
        raise ScreenerError(f"{path}: {what} export failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    finally:
        monai_logger.setLevel(level)


def export_torchscript(path, out=None) -> Path:
    """Trace the full scorer of a bundle or run with ``monai.bundle ckpt_export``; returns the ``.ts`` path.

    Default output: ``<path>/models/model.ts``. Written atomically.
    """
    from monai.bundle import ckpt_export

    out = Path(out) if out else Path(path) / BUNDLE_TORCHSCRIPT
    return _export_with(ckpt_export, "TorchScript", path, out, ".ts")


def export_onnx(path, out=None, opset: int = 18) -> Path:
    """Export the full scorer to ONNX with ``monai.bundle onnx_export`` (needs the ``onnx`` package).

    Batch and spatial axes are dynamic. Default output: ``<path>/models/model.onnx``.
    """
    from monai.bundle import onnx_export

    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ScreenerError("ONNX export needs the onnx package (pip install onnx onnxruntime)") from None
    out = Path(out) if out else Path(path) / BUNDLE_ONNX
    axes = {0: "batch", 2: "x", 3: "y", 4: "z"}
    converter = {
        "input_names": ["patch"],
        "output_names": ["nll"],
        "opset_version": int(opset),
        "dynamic_axes": {"patch": axes, "nll": axes},
        "dynamo": False,
    }
    return _export_with(onnx_export, "ONNX", path, out, ".onnx", converter_kwargs=converter)


def _export_with(monai_export, label: str, path, out: Path, suffix: str, **kwargs) -> Path:
    """Trace the scorer of ``path`` with one of MONAI's bundle exporters into ``out`` atomically."""
    from screener_plans.io_utils import atomic_path

    bundle, tmp = _export_source(path)
    try:
        with atomic_path(out, suffix=suffix) as tmp_out:
            _run_monai(
                monai_export,
                label,
                path,
                filepath=tmp_out,
                use_trace=True,
                input_shape=example_input_shape(bundle),
                **kwargs,
                **_monai_args(bundle),
            )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return out
