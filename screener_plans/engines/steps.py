"""One optimisation step with the safeguards every stage shares.

Mixed precision on CUDA, gradient clipping, and a guard against non-finite losses: the step is
skipped and the learning rate lowered; after too many in a row training stops with a clear
message, keeping the last good checkpoint.
"""

from __future__ import annotations

import logging

import torch

from screener_plans.errors import ScreenerError

logger = logging.getLogger("screener.train")


class NonFiniteGuard:
    """Counts non-finite losses; lowers the LR by ``factor`` each time, gives up after ``patience``."""

    def __init__(self, patience: int = 10, factor: float = 0.5):
        self.patience, self.factor = int(patience), float(factor)
        self.consecutive = 0
        self.total = 0
        self.lr_scale = 1.0

    def check(self, loss: torch.Tensor, optimizer, step: int) -> bool:
        """True when the loss is finite; otherwise records the failure and returns False."""
        if bool(torch.isfinite(loss.detach()).all()):
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.total += 1
        self.lr_scale *= self.factor
        for group in optimizer.param_groups:
            group["lr"] *= self.factor
            if "max_lr" in group:  # OneCycleLR recomputes lr from these each step
                group["max_lr"] *= self.factor
                group["initial_lr"] = group.get("initial_lr", group["lr"]) * self.factor
                group["min_lr"] = group.get("min_lr", 0.0) * self.factor
        logger.warning(
            "step %d: non-finite loss (%s); step skipped, learning rate x%g (now %.3g)",
            step,
            float(loss.detach()),
            self.factor,
            optimizer.param_groups[0]["lr"],
        )
        if self.consecutive >= self.patience:
            raise ScreenerError(
                f"training diverged: {self.consecutive} non-finite losses in a row at step {step} "
                "even after lowering the learning rate; the last good checkpoint is kept. "
                "Try a smaller optim.lr in plans.json"
            )
        return False

    def state_dict(self) -> dict:
        return {"total": self.total, "lr_scale": self.lr_scale}

    def load_state_dict(self, state: dict) -> None:
        self.total = int(state.get("total", 0))
        self.lr_scale = float(state.get("lr_scale", 1.0))


def optimizer_step(
    loss: torch.Tensor,
    optimizer,
    parameters,
    grad_clip: float,
    scaler=None,
    guard: NonFiniteGuard | None = None,
    step: int = 0,
) -> bool:
    """Backward, clip, step. Returns False when the step was skipped for a non-finite loss."""
    optimizer.zero_grad(set_to_none=True)
    if guard is not None and not guard.check(loss, optimizer, step):
        return False
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    if not torch.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:  # fp16 overflow: the scaler lowers its scale and skips
            scaler.step(optimizer)
            scaler.update()
            return False
        if guard is not None:
            guard.check(norm, optimizer, step)
        return False
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return True
