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
from screener_plans.zoo.layout import (
    BUNDLE_METADATA,
    BUNDLE_ONNX,
    BUNDLE_TORCHSCRIPT,
    BUNDLE_WEIGHTS,
    build_scorer,
    is_bundle,
    read_scorer_config,
)

EXPORT_CONFIG = Path("configs") / "export.yaml"


def patch_channels(cfg: dict) -> int:
    """Input channels of the exported scorer: image, plus x, y, z in mm for sin-cos conditions."""
    return 4 if cfg["condition"] == "sincos" else 1


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

    plans = load_plans(Path(root) / "plans.json")
    return PatchScorer.from_scorer(build_scorer(plans, read_scorer_config(root)))


class TorchScriptScorer(nn.Module):
    """A TorchScript/ONNX-style ``PatchScorer`` behind the eager ``Scorer`` interface.

    ``forward(image, origin_mm, spacing)`` as ``Scorer``: builds the coordinate channels when
    the export needs them and runs the module in float32 (traced graphs do not autocast).
    """

    def __init__(self, module, coordinates: bool):
        super().__init__()
        self.module, self.coordinates = module, bool(coordinates)

    def forward(self, image: torch.Tensor, origin_mm: torch.Tensor, spacing: torch.Tensor) -> torch.Tensor:
        from screener_plans.nets import coordinate_grid_mm

        x = image.float()
        if self.coordinates:
            grid = coordinate_grid_mm(origin_mm.to(torch.float64), spacing.to(torch.float64), x.shape[2:])
            x = torch.cat([x, grid.to(x.dtype)], dim=1)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.module(x).float()


def load_torchscript_scorer(
    path, plans: dict | None = None, expected_weights_id: str | None = None, source=None
) -> TorchScriptScorer:
    """Load ``models/model.ts`` (from ``export_torchscript``) as a scorer for ``Predictor``.

    With ``plans``, refuse an export made for other preprocessing (spacing or HU window); with
    ``expected_weights_id`` (the weights ``source``, a run or bundle, holds now), refuse an export
    of other weights, e.g. one made before a stage was retrained.
    """
    from monai.data import load_net_with_metadata

    path = Path(path)
    if not path.is_file():
        source = path.parent.parent if path.parent.name == "models" else "RUN_OR_MODEL_DIR"
        raise ScreenerError(f"{path}: TorchScript model not found; make it with `screener zoo export {source}`")
    try:
        module, meta, _ = load_net_with_metadata(str(path), map_location="cpu")
    except Exception as e:
        raise ScreenerError(
            f"{path}: cannot load TorchScript model ({type(e).__name__}); the file is corrupt "
            "or not a TorchScript export"
        ) from None
    info = meta.get("screener", {}) if isinstance(meta, dict) else {}
    if "input_channels" in info:
        channels = int(info["input_channels"])
    else:
        try:
            channels = int(meta["network_data_format"]["inputs"]["image"]["num_channels"])
        except (KeyError, TypeError, ValueError):
            raise ScreenerError(
                f"{path}: TorchScript model has no Screener metadata; export it with `screener zoo export`"
            ) from None
    if plans is not None and info:
        from screener_plans.data.preprocess import preprocessing_of

        exported = {"spacing": info.get("spacing"), "window": info.get("intensity_window")}
        for key, want in preprocessing_of(plans).items():
            if exported[key] is not None and [float(v) for v in exported[key]] != want:
                raise ScreenerError(
                    f"{path}: TorchScript model was exported for {key} {exported[key]}, but "
                    f"plans.json has {want}; export it from this run (`screener zoo export`)"
                )
    exported_id = info.get("weights_id")
    if expected_weights_id and exported_id and exported_id != expected_weights_id:
        raise ScreenerError(
            f"{path}: TorchScript model was exported from other weights than {source or 'the run'} "
            f"holds now (a stage was retrained since); export it again (`screener zoo export "
            f"{source or 'RUN'}`)"
        )
    module.eval()
    scorer = TorchScriptScorer(module, coordinates=channels == 4)
    scorer.weights_id = exported_id
    return scorer


def _export_source(path):
    """(bundle folder, temporary folder or None): a run is first packaged into a temporary bundle."""
    path = Path(path)
    if is_bundle(path):
        return path, None
    from screener_plans.zoo.package import build_bundle

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

    plans = load_plans(Path(bundle_dir) / "plans.json")
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
