"""Heads other than the epoch-trained MLP, through the same commands: ``train.py --head ridge|svr|stack`` (one run, or
a grid with ``--seeds`` / ``--folds`` / ``--ablate``), and ``--baselines`` (also train ``BASELINES`` beside the grid's
head). A fitted head is a run like any other: its run directory, its checkpoint (``model.heads``: plain tensors), its
rows in the summary. It sees the train videos only; val is scored once, after the fit.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from config import TrainConfig
from core.device import resolve_device
from core.io import ConfigError
from core.rundir import free_run_name
from dataset import load_records
from model.heads import HEADS, FitContext
from model.metrics import compute_metrics
from pipeline.grid.batched import train_batched
from pipeline.grid.specs import FoldData, RunResult, RunSpec
from pipeline.run.checkpoint import build_checkpoint
from pipeline.run.logger import RunLogger
from pipeline.run.table import FeatureTable
from pipeline.run.training import predict, set_threads, val_scores

BASELINES = ("ridge", "svr")  # what --baselines adds beside the grid's head


def split_modules(x: np.ndarray, dims: dict[str, int], device: torch.device) -> dict[str, torch.Tensor]:
    """(N, in_dim) -> {module: (N, D_m)} in the order of ``dims``."""
    cols = np.cumsum([0, *dims.values()])
    return {
        m: torch.from_numpy(np.ascontiguousarray(x[:, cols[i] : cols[i + 1]])).to(device) for i, m in enumerate(dims)
    }


def mlp_trainer(cfg: TrainConfig, x: np.ndarray, y: np.ndarray, dims: dict[str, int], device: torch.device):
    """A ``model.heads.MLPTrainer`` over the rows of ``x``: every (part, seed) trained as one batched grid."""

    def train(parts: list[tuple[np.ndarray, np.ndarray]], seeds: list[int]) -> list[tuple[np.ndarray, list[dict]]]:
        folds = []
        for tr, ev in parts:
            ev = ev if len(ev) > 1 else tr[:64]  # a fit on every row: the per-epoch scores are not used
            t = torch.from_numpy(y)
            folds.append(FoldData([], [], split_modules(x[tr], dims, device), t[tr].to(device),
                                  split_modules(x[ev], dims, device), t[ev].to(device), {}))  # fmt: skip
        specs = [RunSpec(s, f, tuple(dims)) for f in range(len(parts)) for s in seeds]
        sub = replace(cfg, seeds=[], ablate=False, baselines=False)
        runs = train_batched(sub, specs, folds, dims, device)
        return [
            (np.stack([r.last_pred for r in runs if r.spec.fold == f]), [r.weights for r in runs if r.spec.fold == f])
            for f in range(len(parts))
        ]

    return train


def fit_head(
    cfg: TrainConfig, name: str, x: np.ndarray, y: np.ndarray, dims: dict, seed: int, device: torch.device
) -> tuple[torch.nn.Module, dict]:
    """Fit head ``name`` on the train videos ``(x, y)``; returns the module and what its fit chose."""
    ctx = FitContext(dict(dims), list(cfg.hidden_channels), seed, mlp_trainer(cfg, x, y, dims, device))
    model = HEADS[name].fit(np.asarray(x, np.float32), np.asarray(y, np.float32), ctx)
    return model.to(device).eval(), ctx.info


def _row(model: torch.nn.Module, x_tr, y_tr, x_val, y_val, seconds: float) -> tuple[dict, np.ndarray]:
    """The one 'epoch' of a fitted head: train loss (MSE) and val metrics, as an MLP epoch's metrics.jsonl line."""
    pred = predict(model, x_val)
    train_mse = float(np.mean((predict(model, x_tr) - y_tr.cpu().numpy()) ** 2))
    metrics = compute_metrics(pred, y_val.cpu().numpy())
    metrics["loss"] = metrics["mse"]
    row = {"epoch": 0, "lr": None, "train_loss": train_mse, "seconds": seconds}
    return row | {f"val_{k}": v for k, v in metrics.items()}, pred


def head_results(
    cfg: TrainConfig, name: str, specs: list[RunSpec], folds: list[FoldData], dims: dict, device: torch.device
) -> tuple[list[RunResult], dict[RunSpec, dict]]:
    """One fit of head ``name`` per run of ``specs`` (its fold, modules and seed); returns the results (one
    'epoch' each: best = last) and what each fit chose, by run."""
    results, infos = [], {}
    for spec in specs:
        spec = replace(spec, head=name)
        fold, mods = folds[spec.fold], spec.modules
        x_tr = torch.cat([fold.x_train[m] for m in mods], 1)
        x_val = torch.cat([fold.x_val[m] for m in mods], 1)
        t0 = time.perf_counter()
        sub_dims = {m: dims[m] for m in mods}
        model, info = fit_head(cfg, name, x_tr.cpu().numpy(), fold.y_train.cpu().numpy(), sub_dims, spec.seed, device)
        row, pred = _row(model, x_tr, fold.y_train, x_val, fold.y_val, time.perf_counter() - t0)
        weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        results.append(RunResult(spec, [row], dict(row), pred, pred, weights, weights))  # fitted once: best = last
        infos[spec] = info
    return results, infos


def run_fitted(cfg: TrainConfig) -> dict:
    """``train.py --head NAME`` for a head fitted once (not the MLP): fit on train, score val, write the run."""
    if cfg.checkpoint_local or cfg.checkpoint_run_id:
        raise ConfigError(f"--head {cfg.head} is fitted in one go; there is nothing to resume (train it again)")
    cfg.check()
    device = resolve_device(cfg.device)
    set_threads(cfg)
    if cfg.seed is None:
        cfg.seed = 0
    table = FeatureTable.build(cfg, load_records(cfg.dataset, cfg), device)
    if "train" not in table.splits or "val" not in table.splits:
        raise ConfigError(f"{cfg.dataset} needs scored train and val videos; found splits {sorted(table.splits)}")
    cfg.name = free_run_name(Path(cfg.runs_dir), cfg.name or f"{cfg.dataset}_{'+'.join(table.modules)}_{cfg.head}")
    tr, val = table.splits["train"], table.splits["val"]
    print(f"{cfg.dataset}: {len(tr.y)} train / {len(val.y)} val videos; modules {table.dims}; head {cfg.head}")
    t0 = time.perf_counter()
    model, info = fit_head(cfg, cfg.head, tr.x.cpu().numpy(), tr.y.cpu().numpy(), table.dims, cfg.seed, device)
    row, pred = _row(model, tr.x, tr.y, val.x, val.y, time.perf_counter() - t0)
    with RunLogger(cfg) as logger:
        logger.notes["head"] = info
        logger.epoch(row, pred, val.y.cpu().numpy())
        if cfg.save or cfg.log:
            t, mean = table, float(tr.y.double().mean())
            state = build_checkpoint(cfg, t.modules, t.dims, t.stats, t.sources, t.fitted, [row], model, mean)
            logger.checkpoint(state, True)
        logger.finish([row], row, val, pred, pred)
    return {"best": row, "last": row, "run_dir": str(logger.run_dir), "head": cfg.head, "fit": info}


def fitted_lines(result: dict) -> list[str]:
    """What train.py prints for a fitted head."""
    return [
        f"head {result['head']}, fitted on train ({result['fit'].get('params')}): val {val_scores(result['last'])}",
        f"run directory: {result['run_dir']}",
    ]
