"""The device: which one to plan and run on, mixed precision, and distributed (torchrun) helpers."""

from __future__ import annotations

import contextlib
import os

import torch

from screener_plans.errors import ScreenerError
from screener_plans.options import check_device


def device_kind(device: str) -> str:
    """The kind of device to plan for: 'auto' becomes 'cuda' when a GPU is visible, else 'cpu'."""
    if device not in ("auto", "cpu", "cuda"):
        raise ScreenerError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_device(device: str | None = "auto") -> torch.device:
    """'auto'/None -> this process's GPU when there is one (LOCAL_RANK under torchrun), else CPU."""
    device = "auto" if device in (None, "", "auto") else str(device)
    check_device(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ScreenerError(f"device {device!r} requested but no CUDA GPU is visible to PyTorch")
        if device == "cuda" and is_distributed():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ScreenerError(f"invalid device {device!r}: {e}") from None


def amp_dtype(device: torch.device, enabled: bool = True):
    """bfloat16 where the GPU supports it, else float16; None (no autocast) on CPU."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype):
    """Autocast context for ``dtype``, or a no-op when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def channels_last(x):
    """A module or 5D tensor in channels-last 3D layout (in place for modules).

    Convolutions then run as GEMMs over voxels: on CPU 1.5-1.7x faster training steps and 1.6x
    faster inference for the same numbers up to float reassociation; cuDNN prefers it with AMP.
    """
    if isinstance(x, torch.Tensor):
        return x.contiguous(memory_format=torch.channels_last_3d) if x.dim() == 5 else x
    if isinstance(x, torch.jit.ScriptModule):
        return x
    return x.to(memory_format=torch.channels_last_3d)


def launch_rank_world() -> tuple[int, int]:
    """(rank, world size) that torchrun gave this process; (0, 1) when not launched by it."""
    return int(os.environ.get("RANK", 0)), max(1, int(os.environ.get("WORLD_SIZE", 1)))


def is_distributed() -> bool:
    return launch_rank_world()[1] > 1


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the torchrun process group (NCCL on GPU, Gloo on CPU); returns (rank, world size)."""
    if not is_distributed():
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper."""
    return model.module if hasattr(model, "module") else model


def cleanup_distributed() -> None:
    """Leave the process group at the end of a torchrun job."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel (with synchronised batch norm on GPU) when running under torchrun."""
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    init_distributed(device)
    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device.index])
    return DistributedDataParallel(model)
