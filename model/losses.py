"""Training losses, one registry. Every loss is ``fn(pred, target, ctx) -> scalar`` with ``pred``/``target`` (B,)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossContext:
    """What some losses need besides the batch: the epoch schedule and the train-split mean score."""

    epoch: int = 0
    epochs: int = 1
    train_mean: float = 0.0
    tails_pow: float = 4.0
    tails_mult: float = 2.0


def mse(pred: torch.Tensor, target: torch.Tensor, ctx: LossContext) -> torch.Tensor:
    return F.mse_loss(pred, target)


def l1(pred: torch.Tensor, target: torch.Tensor, ctx: LossContext) -> torch.Tensor:
    return F.l1_loss(pred, target)


def mse_tails(pred: torch.Tensor, target: torch.Tensor, ctx: LossContext) -> torch.Tensor:
    """MSE weighted towards rare scores: w = 1 + c |m - mean|^p, normalised to batch mean 1.

    ``mean`` is the train-split mean of the dataset being trained on (the reference always used Memento10k's).
    """
    w = 1 + ctx.tails_mult * (target - ctx.train_mean).abs() ** ctx.tails_pow
    w = w / w.mean()
    return (w * (pred - target) ** 2).mean()


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-12)


def spearman(pred: torch.Tensor, target: torch.Tensor, ctx: LossContext) -> torch.Tensor:
    """Minus the Pearson correlation of soft ranks over the batch (torchsort, l2, strength 1), divided by 100."""
    import torchsort  # compiled extension: imported only by the losses that need it

    # soft_rank ranks along the last dim of a 2-D tensor: the batch is one row, (1, B).
    rp = torchsort.soft_rank(pred.reshape(1, -1), regularization="l2", regularization_strength=1.0)
    rt = torchsort.soft_rank(target.reshape(1, -1), regularization="l2", regularization_strength=1.0)
    return -_pearson(rp.flatten(), rt.flatten()) / 100


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
