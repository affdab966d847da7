"""Many trainings at once: every (seed, fold, module combination) of a grid is one slice of a batched MLP.

Each run is exactly the ``ModularMLP`` that ``train.py`` would train with the same seed and modules:

- **initialisation**: each run's network is built by ``ModularMLP`` itself after ``seed_everything(seed)``, as the
  ordinary ``Trainer`` does, and its weights are copied into the stacked tensors;
- **input modules**: the first layer is kept per module, ``W1[m]`` of shape (D_m, R_m, H1) over the R_m runs that
  use module m. A run's first layer is the sum of its own modules' blocks, so a run without module m has no weights
  for it at all: exactly a smaller first layer, not a zero-masked input;
- **shuffling**: each run draws its batches from its own generator seeded like the ``Trainer``'s; runs with the same
  seed and fold share that order, so their batch is gathered once and multiplied by all their weights in one GEMM;
- **optimiser and schedule**: every run of a grid shares the config's hyper-parameters and steps on every batch, and
  Adam, AdamW and SGD update each element from its own gradient and state only, so torch's fused optimiser over the
  stacked tensors *is* the per-run update (own moments, own momentum buffers), with the config's own schedule.

Runs train together when their folds have the same number of training videos (the same number of steps an epoch);
a grid whose folds differ by one video trains as two such groups. Results equal sequential runs up to float
summation order (``tests/test_experiments.py`` measures the difference).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from config import TrainConfig
from model.losses import LossContext
from model.metrics import compute_metrics
from model.mlp import ModularMLP
from pipeline.training import make_optimizer, make_scheduler, seed_everything


@dataclass(frozen=True)
class RunSpec:
    """One training of a grid."""

    seed: int
    fold: int
    modules: tuple[str, ...]

    @property
    def combination(self) -> str:
        return "+".join(self.modules)

    @property
    def dir_name(self) -> str:
        """Its sub-run directory inside the grid's run directory."""
        return f"{self.combination}/seed{self.seed}-fold{self.fold}"


@dataclass
class FoldData:
    """One train/val partition, every module normalised with the statistics of this fold's train videos."""

    train_ids: list[str]
    val_ids: list[str]
    x_train: dict[str, torch.Tensor]  # module -> (N_train, D_m), on the training device
    y_train: torch.Tensor  # (N_train,)
    x_val: dict[str, torch.Tensor]  # module -> (N_val, D_m)
    y_val: torch.Tensor  # (N_val,)
    stats: dict[str, dict[str, torch.Tensor]]


@dataclass
class RunResult:
    spec: RunSpec
    history: list[dict]
    best: dict
    best_pred: np.ndarray
    last_pred: np.ndarray
    weights: dict[str, torch.Tensor] = field(default_factory=dict)  # last epoch, as a ModularMLP state dict


# --------------------------------------------------------------------------- losses over runs: (R, B) -> (R,)


def _pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)


def _mse(pred: torch.Tensor, target: torch.Tensor, ctx: LossContext, mean: torch.Tensor) -> torch.Tensor:
    return ((pred - target) ** 2).mean(-1)


def _l1(pred: torch.Tensor, target: torch.Tensor, ctx: LossContext, mean: torch.Tensor) -> torch.Tensor:
    return (pred - target).abs().mean(-1)


def _mse_tails(pred: torch.Tensor, target: torch.Tensor, ctx: LossContext, mean: torch.Tensor) -> torch.Tensor:
    w = 1 + ctx.tails_mult * (target - mean).abs() ** ctx.tails_pow  # mean: (R, 1), each run's train mean
    w = w / w.mean(-1, keepdim=True)
    return (w * (pred - target) ** 2).mean(-1)


def _spearman(pred: torch.Tensor, target: torch.Tensor, ctx: LossContext, mean: torch.Tensor) -> torch.Tensor:
    import torchsort

    # soft_rank ranks each row of a 2-D tensor: one row per run, as model.losses ranks its (1, B) batch
    rp = torchsort.soft_rank(pred, regularization="l2", regularization_strength=1.0)
    rt = torchsort.soft_rank(target.contiguous(), regularization="l2", regularization_strength=1.0)
    return -_pearson_rows(rp, rt) / 100


def _mse_to_spearman(pred: torch.Tensor, target: torch.Tensor, ctx: LossContext, mean: torch.Tensor) -> torch.Tensor:
    a = ctx.epoch / (ctx.epochs - 1) if ctx.epochs > 1 else 0.0
    return (1 - a) * _mse(pred, target, ctx, mean) + a * _spearman(pred, target, ctx, mean)


#: ``model.losses.LOSSES`` over a batch of runs: ``fn(pred (R, B), target (R, B), ctx, train_mean (R, 1)) -> (R,)``
BATCHED_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "mse": _mse,
    "l1": _l1,
    "mse_tails": _mse_tails,
    "spearman": _spearman,
    "mse_to_spearman": _mse_to_spearman,
}


# --------------------------------------------------------------------------- the stacked model


class BatchedMLP:
    """R ``ModularMLP`` runs as stacked tensors; runs are addressed by contiguous ranges ``[a, b)``."""

    def __init__(self, runs: list[RunSpec], dims: dict[str, int], hidden: list[int], device: torch.device) -> None:
        self.runs, self.dims, self.hidden = runs, dims, list(hidden)
        self.members = {m: [r for r, s in enumerate(runs) if m in s.modules] for m in dims}
        h1, widths = hidden[0], [*hidden, 1]
        self.w1 = {m: torch.zeros(d, len(self.members[m]), h1) for m, d in dims.items() if self.members[m]}
        self.b1 = torch.zeros(len(runs), h1)
        self.ws = [torch.zeros(len(runs), i, o) for i, o in zip(widths[:-1], widths[1:], strict=True)]
        self.bs = [torch.zeros(len(runs), o) for o in widths[1:]]
        for r, spec in enumerate(runs):
            seed_everything(spec.seed)  # then ModularMLP draws its initialisation, as the Trainer's does
            net = ModularMLP({m: dims[m] for m in spec.modules}, hidden)
            linears = [layer for layer in net.net if isinstance(layer, torch.nn.Linear)]
            first, col = linears[0].weight.detach(), 0  # (H1, D_run)
            for m in spec.modules:
                self.w1[m][:, self.members[m].index(r)] = first[:, col : col + dims[m]].T
                col += dims[m]
            self.b1[r] = linears[0].bias.detach()
            for layer, w, b in zip(linears[1:], self.ws, self.bs, strict=True):
                w[r], b[r] = layer.weight.detach().T, layer.bias.detach()
        for t in self.parameters():
            t.data = t.data.to(device)
            t.requires_grad_(True)

    def parameters(self) -> list[torch.Tensor]:
        return [*self.w1.values(), self.b1, *self.ws, *self.bs]

    def modules_of(self, a: int, b: int) -> list[str]:
        """Modules used by at least one run in ``[a, b)``."""
        return [m for m, rs in self.members.items() if rs and bisect_left(rs, b) > bisect_left(rs, a)]

    def forward(self, xs: dict[str, torch.Tensor], a: int, b: int) -> torch.Tensor:
        """Runs ``[a, b)`` on the same inputs ``xs`` (module -> (N, D_m)); returns (b - a, N) scores in [0, 1]."""
        n = next(iter(xs.values())).shape[0]
        h = torch.zeros(b - a, n, self.hidden[0], device=self.b1.device)
        for m in self.modules_of(a, b):
            rs = self.members[m]
            s, e = bisect_left(rs, a), bisect_left(rs, b)
            w = self.w1[m][:, s:e].reshape(self.dims[m], -1)  # a view: (D_m, k * H1), k runs side by side
            y = (xs[m] @ w).view(n, e - s, -1).transpose(0, 1)  # (k, N, H1)
            if e - s == b - a:
                h = h + y
            else:
                local = torch.tensor([r - a for r in rs[s:e]], device=h.device)
                h = h.index_add(0, local, y)
        h = F.mish(h + self.b1[a:b, None])
        for i, (w, bias) in enumerate(zip(self.ws, self.bs, strict=True)):
            h = torch.baddbmm(bias[a:b, None], h, w[a:b])  # (k, N, out)
            if i < len(self.ws) - 1:
                h = F.mish(h)
        return torch.sigmoid(h).squeeze(-1)

    def state_dict(self, r: int) -> dict[str, torch.Tensor]:
        """Run ``r`` as a ``ModularMLP`` state dict (its own modules' columns only)."""
        spec = self.runs[r]
        first = torch.cat([self.w1[m][:, self.members[m].index(r)] for m in spec.modules]).T  # (H1, D_run)
        out = {"net.0.weight": first, "net.0.bias": self.b1[r]}
        for i, (w, b) in enumerate(zip(self.ws, self.bs, strict=True)):
            out[f"net.{2 * i + 2}.weight"], out[f"net.{2 * i + 2}.bias"] = w[r].T, b[r]
        return {k: v.detach().cpu().clone().contiguous() for k, v in out.items()}


# --------------------------------------------------------------------------- training

EpochCallback = Callable[[int, list[dict]], bool]  # (epoch, one val row per run) -> stop now


def _ranges(keys: list) -> list[tuple[int, int]]:
    """Contiguous ``[a, b)`` ranges of equal keys."""
    out, a = [], 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[a]:
            out.append((a, i))
            a = i
    return out


class _Group:
    """Runs whose folds have the same number of training videos, trained as one batched model."""

    def __init__(self, cfg: TrainConfig, runs: list[RunSpec], folds: list[FoldData], dims: dict, device) -> None:
        self.cfg, self.runs, self.folds = cfg, runs, folds
        self.model = BatchedMLP(runs, dims, cfg.hidden_channels, device)
        self.opt = make_optimizer(cfg, self.model.parameters())
        self.sched = make_scheduler(cfg, self.opt)
        self.shuffles = _ranges([(s.fold, s.seed) for s in runs])  # runs sharing a batch order
        self.gens = [torch.Generator().manual_seed(runs[a].seed) for a, _ in self.shuffles]
        self.by_fold = _ranges([s.fold for s in runs])
        means = [float(folds[s.fold].y_train.double().mean()) for s in runs]
        self.train_mean = torch.tensor(means, device=device).unsqueeze(1)  # (R, 1)
        self.ctx = LossContext(0, cfg.epochs, 0.0, cfg.mse_tails_pow, cfg.mse_tails_mult_fact)
        self.loss = BATCHED_LOSSES[cfg.loss]
        self.n = len(folds[runs[0].fold].y_train)

    def train_epoch(self, epoch: int) -> torch.Tensor:
        self.ctx.epoch = epoch
        device = self.train_mean.device
        orders = [torch.randperm(self.n, generator=g).to(device) for g in self.gens]
        total = torch.zeros(len(self.runs), device=device)
        for start in range(0, self.n, self.cfg.batch_size):
            preds, targets = [], []
            for (a, b), order in zip(self.shuffles, orders, strict=True):
                fold = self.folds[self.runs[a].fold]
                idx = order[start : start + self.cfg.batch_size]
                xs = {m: fold.x_train[m][idx] for m in self.model.modules_of(a, b)}  # gathered once per order
                preds.append(self.model.forward(xs, a, b))
                targets.append(fold.y_train[idx].expand(b - a, -1))
            losses = self.loss(torch.cat(preds), torch.cat(targets), self.ctx, self.train_mean)  # (R,)
            self.opt.zero_grad(set_to_none=True)
            losses.sum().backward()  # runs share no weights: each run's gradient is its own loss's
            self.opt.step()
            total += losses.detach() * len(idx)
        self.sched.step()
        return total / self.n

    @torch.inference_mode()
    def evaluate(self) -> list[tuple[dict, np.ndarray]]:
        out = []
        for a, b in self.by_fold:
            fold = self.folds[self.runs[a].fold]
            xs = {m: fold.x_val[m] for m in self.model.modules_of(a, b)}
            pred = self.model.forward(xs, a, b)  # (k, N_val)
            losses = self.loss(pred, fold.y_val.expand(b - a, -1), self.ctx, self.train_mean[a:b])
            true = fold.y_val.cpu().numpy()
            for p, loss in zip(pred.float().cpu().numpy(), losses.tolist(), strict=True):
                out.append((compute_metrics(p, true) | {"loss": loss}, p))
        return out

    def fit(self, on_epoch: EpochCallback | None) -> list[RunResult]:
        results = [RunResult(s, [], {}, np.empty(0), np.empty(0)) for s in self.runs]
        for epoch in range(self.cfg.epochs):
            t0 = time.perf_counter()
            lr = self.opt.param_groups[0]["lr"]
            train_loss = self.train_epoch(epoch).tolist()
            scored = self.evaluate()
            seconds = time.perf_counter() - t0
            for res, loss, (metrics, pred) in zip(results, train_loss, scored, strict=True):
                row = {"epoch": epoch, "lr": lr, "train_loss": loss, "seconds": seconds}
                row |= {f"val_{k}": v for k, v in metrics.items()}
                res.history.append(row)
                if not res.best or metrics["spearman"] > res.best["val_spearman"]:
                    res.best, res.best_pred = dict(row), pred
                res.last_pred = pred
            if on_epoch is not None and on_epoch(epoch, [r.history[-1] for r in results]):
                break
        for r, res in enumerate(results):
            res.weights = self.model.state_dict(r)
        return results


def train_batched(
    cfg: TrainConfig,
    runs: list[RunSpec],
    folds: list[FoldData],
    dims: dict[str, int],
    device: torch.device,
    on_epoch: EpochCallback | None = None,
) -> list[RunResult]:
    """Train every run of ``runs`` (ordered by fold, then seed) together; results in the order of ``runs``."""
    sizes = sorted({len(folds[s.fold].y_train) for s in runs})
    out: dict[int, RunResult] = {}
    for size in sizes:
        members = [i for i, s in enumerate(runs) if len(folds[s.fold].y_train) == size]
        group = _Group(cfg, [runs[i] for i in members], folds, dims, device)
        out |= dict(zip(members, group.fit(on_epoch), strict=True))
    return [out[i] for i in range(len(runs))]
