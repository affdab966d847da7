"""Scoring a checkpoint on a dataset split: metrics where scores are known, predictions always."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from config import EvalConfig, TrainConfig, from_dict
from core.device import resolve_device
from core.io import ConfigError, write_json
from dataset import SPLITS, load_records
from model.metrics import compute_metrics
from pipeline.e2e.training import evaluate_end_to_end
from pipeline.run.checkpoint import check_sources, load_checkpoint, model_from_checkpoint, stats_from_checkpoint
from pipeline.run.logger import write_predictions
from pipeline.run.table import FeatureTable
from pipeline.run.training import predict


def _score_table(cfg: EvalConfig, ckpt: dict, train_cfg: TrainConfig, splits: tuple[str, ...]) -> dict:
    """``{split: (ids, true scores, predictions)}`` of the MLP over the pre-computed feature table."""
    device = resolve_device(cfg.device)
    records = load_records(train_cfg.dataset, train_cfg)
    table = FeatureTable.build(
        train_cfg, records, device, stats=stats_from_checkpoint(ckpt), splits=splits, scored_only=False
    )
    check_sources(ckpt["sources"], table.sources)
    if not table.splits:
        raise ConfigError(f"{train_cfg.dataset} has no videos in split {cfg.split!r}")
    model = model_from_checkpoint(ckpt).to(device)
    return {s: (d.ids, d.y.cpu().numpy(), predict(model, d.x)) for s, d in table.splits.items()}


def run_evaluation(cfg: EvalConfig) -> dict:
    """Score a checkpoint on a split: metrics (where scores are known) and predictions, written next to it."""
    ckpt = load_checkpoint(cfg.checkpoint)
    values = dict(ckpt["config"])
    for key in ("data_dir", "features_dir", "dataset"):
        if getattr(cfg, key):
            values[key] = getattr(cfg, key)
    train_cfg = from_dict(TrainConfig, values, source=f"checkpoint {cfg.checkpoint}")
    splits = SPLITS if cfg.split == "all" else (cfg.split,)
    if train_cfg.fixed_features:
        scored = _score_table(cfg, ckpt, train_cfg, splits)
    else:  # end to end: the checkpoint's (fine-tuned) backbones run over the decoded clips
        scored = evaluate_end_to_end(ckpt, train_cfg, splits, cfg.device)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else Path(cfg.checkpoint).resolve().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {"checkpoint": str(cfg.checkpoint), "epoch": ckpt["epoch"], "dataset": train_cfg.dataset}
    for split, (ids, true, pred) in scored.items():
        known = ~np.isnan(true)
        tag = f"{train_cfg.dataset}_{split}_{Path(cfg.checkpoint).stem}"  # scoring last.pt keeps best.pt's files
        write_predictions(out_dir / f"predictions_{tag}.csv", ids, None if not known.any() else true, {"pred": pred})
        metrics = compute_metrics(pred[known], true[known]) if known.sum() > 1 else {}
        result[split] = {"n": len(pred), "n_scored": int(known.sum()), **metrics}
    write_json(out_dir / f"metrics_{train_cfg.dataset}_{cfg.split}_{Path(cfg.checkpoint).stem}.json", result)
    result["out_dir"] = str(out_dir)
    return result
