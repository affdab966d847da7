"""Training losses, one registry. Every loss is ``fn(pred, target, ctx)`` over the last dimension: ``pred`` and
``target`` of shape (..., B) give (...,), a scalar for one run's batch (B,), one loss per run for a grid's (R, B).
``ctx.train_mean`` is a float or a tensor that broadcasts against ``target`` (a grid's (R, 1): each run's own)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class LossContext:
    """What some losses need besides the batch: the epoch schedule and the train-split mean score."""

    epoch: int = 0
    epochs: int = 1
    train_mean: float | torch.Tensor = 0.0  # a float, or (R, 1) for R runs at once
    tails_pow: float = 4.0
    tails_mult: float = 2.0


def mse(pred: torch.Tensor, target: torch.Tensor, ctx: LossContext) -> torch.Tensor:
    return ((pred - target) ** 2).mean(-1)


def l1(pred: torch.Tensor, target: torch.Tensor, ctx: LossContext) -> torch.Tensor:
    return (pred - target).abs().mean(-1)


def mse_tails(pred: torch.Tensor, target: torch.Tensor, ctx: LossContext) -> torch.Tensor:
    """MSE weighted towards rare scores: w = 1 + c |m - mean|^p, normalised to batch mean 1.

    ``mean`` is the train-split mean of the dataset being trained on (the reference always used Memento10k's).
    """
    w = 1 + ctx.tails_mult * (target - ctx.train_mean).abs() ** ctx.tails_pow
    w = w / w.mean(-1, keepdim=True)
    return (w * (pred - target) ** 2).mean(-1)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)


def spearman(pred: torch.Tensor, target: torch.Tensor, ctx: LossContext) -> torch.Tensor:
    """Minus the Pearson correlation of soft ranks over the batch (torchsort, l2, strength 1), divided by 100."""
    import torchsort  # compiled extension: imported only by the losses that need it

    # soft_rank ranks along the last dim of a 2-D tensor: every batch is one row, (N, B)
    shape, b = pred.shape[:-1], pred.shape[-1]
    rp = torchsort.soft_rank(pred.reshape(-1, b), regularization="l2", regularization_strength=1.0)
    rt = torchsort.soft_rank(target.reshape(-1, b).contiguous(), regularization="l2", regularization_strength=1.0)
    return (-_pearson(rp, rt) / 100).reshape(shape)


def mse_to_spearman(pred: torch.Tensor, target: torch.Tensor, ctx: LossContext) -> torch.Tensor:
    """(1 - a) MSE + a spearman, with a = epoch / (epochs - 1) going from 0 to 1 over training (epoch from 0)."""
    a = ctx.epoch / (ctx.epochs - 1) if ctx.epochs > 1 else 0.0
    return (1 - a) * mse(pred, target, ctx) + a * spearman(pred, target, ctx)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor, LossContext], torch.Tensor]] = {
    "mse": mse,
    "l1": l1,
    "mse_tails": mse_tails,
    "spearman": spearman,
    "mse_to_spearman": mse_to_spearman,
}
