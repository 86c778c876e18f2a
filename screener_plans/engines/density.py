"""Density-model training on frozen descriptor (+ condition) features (paper section 2.4).

The loss is the mean per-voxel negative log-likelihood of descriptors (given conditions) over
random crops of the training scans.
"""

from __future__ import annotations

import torch

from screener_plans.device import amp_dtype, autocast, channels_last
from screener_plans.engines.models import Scorer, build_density_model, build_features, density_config, upstream_digests
from screener_plans.engines.steps import NonFiniteGuard, optimizer_step


def build_density_scorer(
    run_dir, plans: dict, condition=None, density=None, features=None, intensity_prior=None, resume_dir=None
) -> Scorer:
    """Frozen features of a run + a fresh density model, chosen by ``--condition``/``--density``/
    ``--features``/``--intensity_prior``; an intensity prior's histogram is fitted here, from the
    run's preprocessed training cases, unless a checkpoint in ``resume_dir`` (the stage's
    checkpoints when resuming) holds it already: the resume handler loads it with the weights,
    so a resumed run does not read every training case again."""
    from screener_plans.baselines import IntensityBaseline
    from screener_plans.data.preprocess import preprocessing_of
    from screener_plans.engines.handlers import latest_checkpoint

    cfg = density_config(plans, condition, density, features, intensity_prior)
    model = build_density_model(cfg)
    if cfg["intensity_prior"] and (resume_dir is None or latest_checkpoint(resume_dir) is None):
        model.set_table(IntensityBaseline.fit(run_dir, plans).neg_log_prob)
    scorer = channels_last(Scorer(build_features(run_dir, plans, cfg), model))
    # recorded with the model, so that retraining an upstream stage is noticed when it is loaded
    scorer.config = {**cfg, "trained_on": upstream_digests(run_dir, cfg), "preprocessing": preprocessing_of(plans)}
    return scorer


def sample_voxels(y: torch.Tensor, c: torch.Tensor, voxels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``voxels`` random voxels of each crop of features ``y`` and condition ``c`` (B, C, X, Y, Z),
    as (B, C, voxels, 1, 1); all of them when ``voxels`` is 0 or not fewer than a crop holds.

    Neighbouring voxels' features are nearly the same, so a sample of each crop carries almost
    all of its gradient while the flow's cost falls in proportion: the density stage can then
    afford many more steps (more crops) in the same time.
    """
    b, n = y.shape[0], y[0, 0].numel()
    if not voxels or voxels >= n:
        return y, c
    idx = torch.rand(b, n, device=y.device).argsort(dim=1)[:, :voxels]

    def take(t):
        flat = t.reshape(b, t.shape[1], n)
        return flat.gather(2, idx[:, None, :].expand(-1, t.shape[1], -1))[..., None, None]

    return take(y), (take(c) if c.shape[1] else c)


def anomaly_settings(cfg: dict) -> dict | None:
    """The synthetic anomalies the density stage's crops get: the contrastive density's training
    data (``data/anomalies.py`` defaults), none for the likelihood densities."""
    return {} if cfg["density"] == "contrastive" else None


def density_loss(scorer: Scorer, batch: dict, device, amp: bool, voxels: int = 0, trim: float = 0.0) -> torch.Tensor:
    """The density stage's loss on one batch: mean NLL of the frozen features of ``voxels``
    random voxels per crop (all when 0), leaving out the ``trim`` fraction of least likely ones;
    for the contrastive density (crops with a ``target``), its loss on the painted anomalies."""
    image = channels_last(batch["image"].to(device, non_blocking=True))
    origin = batch["origin_mm"].to(device, non_blocking=True)
    spacing = batch["spacing"].to(device, non_blocking=True)
    if "target" in batch:
        with torch.no_grad():
            y, _ = scorer.features(image, origin, spacing)
        with autocast(device, amp_dtype(device, amp)):
            return scorer.density.loss(y, batch["target"].to(device, non_blocking=True))
    with torch.no_grad(), autocast(device, amp_dtype(device, amp)):
        y, c = sample_voxels(*scorer.features(image, origin, spacing), voxels)
    # an intensity prior is a fixed term: only the density model under it is fitted
    nll = scorer.density.trainable(y.float(), c.float() if c.shape[1] else None)
    if trim > 0:
        flat = nll.reshape(-1)
        keep = max(1, int(flat.numel() * (1.0 - trim)))
        return flat.topk(keep, largest=False, sorted=False).values.mean()
    return nll.mean()


class DensityIteration:
    """``iteration_update(engine, batch)``: NLL of frozen features under the density model."""

    def __init__(
        self, grad_clip: float = 1.0, amp: bool = True, patience: int = 10, trim: float = 0.0, voxels: int = 0
    ):
        self.grad_clip, self.amp = float(grad_clip), bool(amp)
        self.guard = NonFiniteGuard(patience=patience)
        # the unlabeled training scans hold lesions of their own: leaving out each batch's
        # ``trim`` fraction of least likely voxels keeps the density from learning them as normal
        self.trim = float(trim)
        self.voxels = int(voxels)

    def __call__(self, engine, batch: dict) -> dict:
        from monai.engines.utils import IterationEvents

        scorer, optimizer = engine.network, engine.optimizer
        device = torch.device(engine.state.device)
        scorer.features.eval()
        scorer.density.train()
        loss = density_loss(scorer, batch, device, self.amp, self.voxels, self.trim)
        engine.state.output = {"loss": loss.detach()}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        ok = optimizer_step(
            loss, optimizer, scorer.density.parameters(), self.grad_clip, None, self.guard, engine.state.iteration
        )
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        out = {"loss": float(loss.detach()), "lr": optimizer.param_groups[0]["lr"], "skipped": not ok}
        engine.state.output = out
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return out
