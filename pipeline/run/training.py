"""The training loop over an in-memory feature table, checkpoints, and scoring.

Every split is one tensor on the training device; a batch is an index into it, so an epoch reads no file.
Seeded runs are reproducible: the shuffling generator and every RNG state travel in the checkpoint, so a resumed
run continues exactly as if it had never stopped.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from config import ModuleConfig, TrainConfig, from_dict
from core.device import available_cores, resolve_device
from core.io import ConfigError, Interrupted
from core.rundir import free_run_name, owned
from dataset import load_records
from model.losses import LOSSES, LossContext
from model.metrics import compute_metrics
from model.mlp import ModularMLP
from pipeline.run import loop
from pipeline.run.checkpoint import (
    build_checkpoint,
    check_sources,
    load_checkpoint,
    load_weights,
    repair_best,
    stats_from_checkpoint,
)
from pipeline.run.logger import RunLogger, fetch_wandb_checkpoint
from pipeline.run.loop import Engine, Track
from pipeline.run.table import FeatureTable, SplitData


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # numpy seeds must fit in 32 bits (the reference overflowed here)
    torch.manual_seed(seed)


def set_threads(cfg: TrainConfig, runs: int = 1) -> int:
    """Set torch's CPU threads to ``--threads``, or choose them from the work of one step: one thread per 1024 rows
    of a step (``batch_size`` x runs trained together), at least 1, at most the cores this process may use. A
    batch-32 MLP step is too small to split: a second thread buys little when the machine is quiet and costs several
    times over when other jobs load it (over-subscription), so a single run gets 1 and a batched grid more."""
    n = cfg.threads or max(1, min(available_cores(), (cfg.batch_size * runs) // 1024))
    torch.set_num_threads(n)
    return n


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    # fused: one kernel updates every parameter (CPU and CUDA), instead of a Python loop over them; on the paper's
    # MLP it cuts an Adam step from 2 ms to 0.6 ms on a 2-core CPU, same update rule.
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=True)


def make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.scheduler_step_size, gamma=cfg.scheduler_gamma)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


@torch.inference_mode()
def predict(model: ModularMLP, x: torch.Tensor, batch: int = 8192) -> np.ndarray:
    model.eval()
    return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)]).float().cpu().numpy()


class Trainer(Engine):
    """Fits a ``ModularMLP`` on a ``FeatureTable`` (the step engine of one run, driven by ``pipeline.run.loop``);
    writes the run directory; logs to wandb with ``-l``."""

    def __init__(self, cfg: TrainConfig, table: FeatureTable, device: torch.device, resume: dict | None = None):
        if "train" not in table.splits or "val" not in table.splits:
            raise ConfigError(f"{cfg.dataset} needs scored train and val videos; found splits {sorted(table.splits)}")
        self.cfg, self.table, self.device = cfg, table, device
        if cfg.seed is None:
            cfg.seed = int.from_bytes(os.urandom(4), "little")  # recorded in config.yaml and the checkpoint
        seed_everything(cfg.seed)
        self.model = ModularMLP(table.dims, cfg.hidden_channels).to(device)
        self.opt = make_optimizer(cfg, self.model.parameters())
        self.sched = make_scheduler(cfg, self.opt)
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        self.loss_fn = LOSSES[cfg.loss]
        train_mean = float(table.splits["train"].y.double().mean())
        self.ctx = LossContext(0, cfg.epochs, train_mean, cfg.mse_tails_pow, cfg.mse_tails_mult_fact)
        self.track = Track()  # history, the best epoch's row, predictions and weights (best.pt, resume)
        self.start_epoch = 0
        if resume is not None:
            self._restore(resume)

    # ----------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        """The checkpoint of the epoch last recorded, with what resuming needs."""
        t, track = self.table, self.track
        return build_checkpoint(
            self.cfg, t.modules, t.dims, t.stats, t.sources, t.fitted, track.history, self.model, self.ctx.train_mean,
            track.best, best_model=track.best_weights, optimizer=self.opt.state_dict(),
            scheduler=self.sched.state_dict(),
            rng={"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state()},
        )  # fmt: skip

    def _restore(self, ckpt: dict) -> None:
        if ckpt["dims"] != self.table.dims:
            raise ConfigError(f"checkpoint dims {ckpt['dims']} differ from the feature table's {self.table.dims}")
        load_weights(self.model, ckpt["model"], f"checkpoint {self.cfg.checkpoint_local or 'to resume'}")
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        self.shuffle.set_state(ckpt["rng"]["shuffle"])
        self.track = Track(list(ckpt["history"]), ckpt["best"], best_weights=ckpt["best_model"])
        self.start_epoch = ckpt["epoch"] + 1

    # ----------------------------------------------------------------- loop
    def train_epoch(self, epoch: int) -> float:
        self.model.train()
        data = self.table.splits["train"]
        self.ctx.epoch = epoch
        order = torch.randperm(len(data.y), generator=self.shuffle).to(self.device)
        total, count = 0.0, 0
        for start in range(0, len(order), self.cfg.batch_size):
            idx = order[start : start + self.cfg.batch_size]
            loss = self.loss_fn(self.model(data.x[idx]), data.y[idx], self.ctx)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total += loss.detach() * len(idx)
            count += len(idx)
        self.sched.step()
        return float(total) / count

    def evaluate(self, split: SplitData) -> tuple[dict, np.ndarray]:
        pred = predict(self.model, split.x)
        metrics = compute_metrics(pred, split.y.cpu().numpy())
        with torch.no_grad():
            metrics["loss"] = float(self.loss_fn(torch.from_numpy(pred), split.y.cpu(), self.ctx))
        return metrics, pred

    # ----------------------------------------------------------------- the engine of pipeline.run.loop
    def step_epoch(self, epoch: int) -> list[float]:
        return [self.train_epoch(epoch)]

    def score_val(self) -> list[tuple[dict, np.ndarray]]:
        return [self.evaluate(self.table.splits["val"])]

    def weights(self, run: int) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def fit(self, logger: RunLogger) -> dict:
        """Train to ``cfg.epochs``; returns ``{"best": ..., "last": ...}`` (epoch and val metrics of each)."""
        cfg, val, track = self.cfg, self.table.splits["val"], self.track
        true = val.y.cpu().numpy()

        def epoch_done(epoch: int, rows: list[dict], improved: list[bool]) -> None:
            logger.epoch(rows[0], track.last_pred, true)
            if cfg.save or cfg.log:
                logger.checkpoint(self.state(), improved[0])

        loop.fit(self, [track], cfg.epochs, self.start_epoch, epoch_done, cfg.loss, keep_best_weights=True)
        last_pred = track.last_pred
        if last_pred is None:  # resumed at or past the last epoch: nothing left to train
            last_pred = self.evaluate(val)[1]
        best_pred = track.best_pred
        if best_pred is None:  # its best epoch was trained before the resume: predict with its kept weights
            best_net = ModularMLP(self.table.dims, cfg.hidden_channels).to(self.device)
            best_net.load_state_dict(track.best_weights)
            best_pred = predict(best_net, val.x)
        logger.finish(track.history, track.best, val, best_pred, last_pred)
        return {"best": track.best, "last": track.history[-1]}


# A resumed run keeps its model and its inputs: these options (every module option, and the network's widths)
# cannot change under it. Nor can how it is trained: the restored optimiser and schedule states carry their own
# learning rate (a new --lr would never apply), and config.yaml must describe the epochs already trained. The paths
# may change (the same stores can move), and so may --epochs, --save, --log...
_WIDTHS_AND_TRAINING = ("hidden_channels", "lr", "optimizer", "momentum", "weight_decay", "scheduler",
                        "scheduler_gamma", "scheduler_step_size", "loss", "mse_tails_pow", "mse_tails_mult_fact",
                        "batch_size", "seed")  # fmt: skip
_MODULE_OPTIONS = {f.name for f in dataclasses.fields(ModuleConfig)} - {"data_dir", "features_dir"}
_FIXED_ON_RESUME = _MODULE_OPTIONS | set(_WIDTHS_AND_TRAINING)


def resolve_resume(cfg: TrainConfig, explicit: dict) -> tuple[TrainConfig, dict | None]:
    """With ``--checkpoint_local`` / ``--checkpoint_run_id``, the checkpoint's config is the base and only the
    flags given explicitly now override it (typically ``--epochs``)."""
    if not (cfg.checkpoint_local or cfg.checkpoint_run_id):
        return cfg, None
    path = cfg.checkpoint_local or fetch_wandb_checkpoint(cfg.checkpoint_run_id, cfg.checkpoint_epoch, cfg.project)
    ckpt = load_checkpoint(path)
    if "optimizer" not in ckpt:
        raise ConfigError(f"{path} holds no optimiser state (a best.pt rebuilt after a kill); resume from last.pt")
    saved = ckpt["config"]
    changed = [k for k in sorted(_FIXED_ON_RESUME & set(explicit)) if k in saved and explicit[k] != saved[k]]
    if changed:
        diffs = "; ".join(f"--{k} {explicit[k]!r} differs from the checkpoint's {saved[k]!r}" for k in changed)
        raise ConfigError(
            f"{diffs}. A resumed run keeps the model, inputs and training settings of {path}; start a new run "
            "(another -n NAME) instead"
        )
    values = dict(saved) | explicit | {"checkpoint_local": str(path), "checkpoint_run_id": cfg.checkpoint_run_id}
    resumed = from_dict(TrainConfig, values, source=f"checkpoint {path}")
    if resumed.scheduler == "cosine" and resumed.epochs != saved["epochs"]:
        raise ConfigError(
            f"{path} follows a cosine schedule over {saved['epochs']} epochs; it cannot be stretched to "
            f"{resumed.epochs} after the fact (its learning rate would jump back up). Resume with the same --epochs, "
            "or start a new run (a step or constant schedule can be extended)"
        )
    if cfg.checkpoint_local and not explicit.get("name"):  # a local checkpoint's run goes on in its own directory
        resumed.name = Path(path).resolve().parent.name
        resumed.runs_dir = str(Path(path).resolve().parent.parent)
    elif cfg.checkpoint_run_id:  # a downloaded checkpoint never chooses where this machine writes
        resumed.runs_dir = cfg.runs_dir
    return resumed, ckpt


def run_training(cfg: TrainConfig, explicit: dict | None = None) -> dict:
    """Everything ``train.py`` does: resolve, claim the run directory, build the table, train, write the directory."""
    cfg, ckpt = resolve_resume(cfg, explicit or {})
    cfg.check()
    if not cfg.name:
        cfg.name = f"{cfg.dataset}_{'+'.join(cfg.modules())}_{time.strftime('%Y%m%d-%H%M%S')}"
    if not ckpt:
        cfg.name = free_run_name(Path(cfg.runs_dir), cfg.name)
    with owned(Path(cfg.runs_dir) / cfg.name):  # before the data loads: a second process stops at once
        device = resolve_device(cfg.device)
        set_threads(cfg)
        records = load_records(cfg.dataset, cfg)
        table = FeatureTable.build(cfg, records, device, stats=stats_from_checkpoint(ckpt) if ckpt else None)
        if ckpt:
            check_sources(ckpt["sources"], table.sources)
        trainer = Trainer(cfg, table, device, resume=ckpt)
        n = {s: len(d.y) for s, d in table.splits.items()}
        print(
            f"{cfg.dataset}: {n} videos; modules {table.dims} -> in_dim {table.in_dim}; device {device}; "
            f"seed {cfg.seed}"
        )
        notes = input_notes(cfg, table.sources, records)
        with RunLogger(cfg, resume_epoch=trainer.start_epoch) as logger:
            logger.notes |= notes
            if ckpt and cfg.save:
                repair_best(logger.run_dir, ckpt)
            try:
                result = trainer.fit(logger)
            except KeyboardInterrupt:
                raise Interrupted(interrupted_message(logger.run_dir)) from None
        return result | {"run_dir": str(logger.run_dir)}


def input_notes(cfg: TrainConfig, sources: dict, records: list) -> dict:
    """What a run's summary.json says of its inputs beside the metrics (stores of SMOKE features, where the train/val
    split came from), printed once as the run starts; every kind of run records them."""
    smoke = sorted(store for store, src in sources.items() if src.get("smoke"))
    if smoke:
        print(f"warning: {', '.join(smoke)} hold SMOKE features (random backbone weights): this run measures nothing")
    notes: dict = {"smoke_stores": smoke}
    split = next((r.extras["split_source"] for r in records if "split_source" in r.extras), None)
    if split:
        print(f"{cfg.dataset} train/val split: {split}")
        notes["split"] = split
    return notes


def interrupted_message(run_dir: Path) -> str:
    last = Path(run_dir) / "last.pt"
    if last.is_file():
        epoch = load_checkpoint(last)["epoch"] + 1
        resume = f".venv/bin/python train.py --checkpoint_local {last}"
        return f"interrupted; the last checkpoint is {last} (epoch {epoch}). Resume with: {resume}"
    return (
        f"interrupted before any checkpoint was written (train with -s to be able to resume); the epochs done are "
        f"in {Path(run_dir) / 'metrics.jsonl'}"
    )


def val_scores(row: dict) -> str:
    return ", ".join(f"{k} {row[f'val_{k}']:.4f}" for k in ("spearman", "kendall", "mse", "mae"))


def run_lines(result: dict) -> list[str]:
    best, last = result["best"], result["last"]
    lines = [
        f"best epoch {best['epoch'] + 1} (selected on val, so optimistic): {val_scores(best)}",
        f"last epoch {last['epoch'] + 1}: {val_scores(last)}",
        f"run directory: {result['run_dir']} (plots: scatter_val.png, histograms_val.png, learning_curves.png)",
    ]
    if math.isnan(best["val_spearman"]):
        lines.insert(0, "warning: val Spearman is NaN")
    return lines
