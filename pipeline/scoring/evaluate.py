"""Scoring a checkpoint on a dataset split: metrics where scores are known, predictions always."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from config import EvalConfig
from core.device import resolve_device
from core.io import write_json
from dataset import SPLITS, load_records
from model.metrics import compute_metrics
from pipeline.run.logger import write_predictions
from pipeline.scoring.loader import Scorer


def run_evaluation(cfg: EvalConfig) -> dict:
    """Score a checkpoint on a split: metrics (where scores are known) and predictions, written next to it."""
    scorer = Scorer.load(cfg.checkpoint, data_dir=cfg.data_dir, features_dir=cfg.features_dir, dataset=cfg.dataset)
    train_cfg, ckpt = scorer.cfg, scorer.ckpt
    splits = SPLITS if cfg.split == "all" else (cfg.split,)
    scored = scorer.predict(load_records(train_cfg.dataset, train_cfg), splits, resolve_device(cfg.device))
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
