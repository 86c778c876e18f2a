"""Self-supervised training of the descriptor and condition models (paper sections 2.2-2.3).

``SSLIteration`` is the ``iteration_update`` of a MONAI ``SupervisedTrainer``: both crops of each
pair go through the dense network in one batch, descriptors are gathered at the shared
positions, and the SSL loss (VICReg or InfoNCE) is computed on the head's embeddings.
"""

from __future__ import annotations

import torch
from torch import nn

from screener_plans.data.pairs import gather_descriptors
from screener_plans.device import amp_dtype, autocast, channels_last
from screener_plans.engines.steps import NonFiniteGuard, optimizer_step
from screener_plans.planning.planner import network_preset

STAGE_INPUTS = {"descriptor": 1, "condition": 2}


def stage_width(plans: dict, stage: str) -> int:
    """Output channels of a stage's network: d_desc for the descriptor, d_cond for the condition."""
    return plans["network"]["d_desc"] if stage == "descriptor" else plans["network"]["d_cond"]


def build_stage_network(plans: dict, stage: str) -> nn.Module:
    """The dense network of ``stage`` ('descriptor' or 'condition') sized by the plans."""
    from screener_plans.nets import build_network
    from screener_plans.nets.windows import WindowedNet, WindowStem

    if stage not in STAGE_INPUTS:
        raise ValueError(f"stage must be one of {sorted(STAGE_INPUTS)}, got {stage!r}")
    windows = plans["network"].get("windows_hu") or []
    stem = WindowStem(plans["intensity"]["window"], windows)
    net = build_network(
        network_preset(plans["network"]),
        in_channels=STAGE_INPUTS[stage] + stem.extra_channels,
        out_channels=stage_width(plans, stage),
    )
    return WindowedNet(stem, net) if windows else net


def build_ssl_head(plans: dict, stage: str) -> nn.Module:
    """Expander (VICReg) or projector (SimCLR) on top of the stage's descriptors."""
    from screener_plans.nets import build_head

    return build_head(network_preset(plans["network"]), plans["loss"]["kind"], in_dim=stage_width(plans, stage))


def build_ssl_loss(plans: dict) -> nn.Module:
    """VICReg (weights from the plans) or InfoNCE (temperature from the plans)."""
    from screener_plans.losses import InfoNCELoss, VICRegLoss

    cfg = plans["loss"]
    if cfg["kind"] == "vicreg":
        return VICRegLoss(cfg["inv_weight"], cfg["var_weight"], cfg["cov_weight"])
    return InfoNCELoss(cfg["temperature"])


class SSLModel(nn.Module):
    """Dense network + SSL head, trained together; only ``net`` is kept for later stages."""

    def __init__(self, net: nn.Module, head: nn.Module):
        super().__init__()
        self.net, self.head = channels_last(net), head

    def forward(self, crops: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """crops (B, 2, C, X, Y, Z), positions (B, 2, n, 3) -> embeddings of both views (B*n, D) x 2."""
        b = crops.shape[0]
        feats = self.net(channels_last(torch.cat([crops[:, 0], crops[:, 1]])))
        y1 = gather_descriptors(feats[:b], positions[:, 0])
        y2 = gather_descriptors(feats[b:], positions[:, 1])
        return self.head(y1), self.head(y2)


class SSLIteration:
    """``iteration_update(engine, batch)`` for SSL training; output holds every loss term."""

    def __init__(self, grad_clip: float = 1.0, amp: bool = True, patience: int = 10):
        self.grad_clip = float(grad_clip)
        self.amp = bool(amp)
        self.guard = NonFiniteGuard(patience=patience)
        self._scaler = None

    def scaler(self, device: torch.device):
        if self._scaler is None and amp_dtype(device, self.amp) == torch.float16:
            self._scaler = torch.amp.GradScaler("cuda")
        return self._scaler

    def __call__(self, engine, batch: dict) -> dict:
        from monai.engines.utils import IterationEvents

        model, optimizer, loss_fn = engine.network, engine.optimizer, engine.loss_function
        device = engine.state.device if hasattr(engine.state, "device") else engine.device
        device = torch.device(device)
        crops = batch["crops"].to(device, non_blocking=True)
        positions = batch["positions"].to(device, non_blocking=True)
        model.train()
        with autocast(device, amp_dtype(device, self.amp)):
            z1, z2 = model(crops, positions)
        terms = loss_fn(z1, z2)
        engine.state.output = {"loss": terms["loss"].detach()}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        ok = optimizer_step(
            terms["loss"],
            optimizer,
            model.parameters(),
            self.grad_clip,
            self.scaler(device),
            self.guard,
            engine.state.iteration,
        )
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        out = {k: float(v.detach()) for k, v in terms.items()}
        out["lr"] = optimizer.param_groups[0]["lr"]
        out["skipped"] = not ok
        engine.state.output = out
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return out
