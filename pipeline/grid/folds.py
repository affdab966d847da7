"""Folds and the per-fold feature matrices of an experiment grid.

``--folds K`` partitions the scored videos of the train and val splits (never test) into K folds, written once to
``<dataset root>/m3s_folds_k<K>_seed<fold_seed>.json`` and reused by every later run, so runs made on other days or
machines are scored on the same partitions. Without ``--folds`` the grid has one "fold": the dataset's own
train / val split, exactly the one ``train.py`` trains on.

The stores are read once (``FeatureTable.build`` without normalisation); each fold then gets the tiers'
normalisation fitted on its own train videos, as ``FeatureTable.build`` fits it on the train split.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from config import TrainConfig
from core.io import ConfigError, write_text
from dataset import VideoRecord, dataset_root
from pipeline.grid.specs import FoldData
from pipeline.run.table import FeatureTable, fit_stats
from tiers import module_tiers, owner


def scored_pool(records: list[VideoRecord]) -> list[VideoRecord]:
    """The videos folds are drawn from: every scored video of the train and val splits."""
    return [r for r in records if r.split in ("train", "val") and r.score is not None]


def fold_path(cfg: TrainConfig) -> Path:
    return dataset_root(cfg.dataset, cfg) / f"m3s_folds_k{cfg.folds}_seed{cfg.fold_seed}.json"


def make_folds(ids: list[str], k: int, seed: int) -> list[list[str]]:
    """``k`` disjoint folds covering ``ids`` (sizes differ by at most one), by a seeded permutation of sorted ids."""
    ordered = sorted(ids)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    return [sorted(ordered[i] for i in perm[f::k]) for f in range(k)]


def load_or_make_folds(cfg: TrainConfig, records: list[VideoRecord]) -> list[list[str]]:
    """The folds of ``cfg`` for this dataset: read from their file, or drawn once and written there."""
    ids = [r.id for r in scored_pool(records)]
    if len(ids) < cfg.folds:
        raise ConfigError(f"--folds {cfg.folds}: {cfg.dataset} has only {len(ids)} scored train/val videos")
    path = fold_path(cfg)
    if path.is_file():
        saved = json.loads(path.read_text())
        folds = saved["folds"]
        if sorted(i for f in folds for i in f) != sorted(ids):
            raise ConfigError(
                f"{path} was written for another set of videos than {cfg.dataset}'s {len(ids)} scored train/val "
                "videos (the annotations changed); delete it to draw new folds"
            )
        return folds
    folds = make_folds(ids, cfg.folds, cfg.fold_seed)
    doc = {"k": cfg.folds, "seed": cfg.fold_seed, "covers": "scored videos of the train and val splits", "folds": folds}
    write_text(path, json.dumps(doc, indent=0))
    return folds


def refuse_fits_that_saw_the_folds(cfg: TrainConfig, fitted: dict) -> None:
    """``--folds`` draws validation folds from the official train split too. A transform fitted on that split when the
    stores were extracted (the raw tier's HOG PCA, the similarity tier's DBSCAN / KDE / PCA) has seen every
    validation fold's videos, so cross-validated scores over it would be optimistic; refitting it per fold means
    extracting again per fold, which m3s does not do. Refused, with what can be cross-validated instead."""
    used = {}
    for store, entry in fitted.items():
        tier = owner(store)
        names = tier.fitted_in_use(cfg, sorted(entry["transforms"])) if tier else sorted(entry["transforms"])
        if names:
            used[store] = names
    if used:
        listed = "; ".join(f"{store} ({', '.join(names)})" for store, names in sorted(used.items()))
        raise ConfigError(
            f"--folds {cfg.folds}: the validation folds are drawn from the train split too, and these stores hold "
            f"transforms fitted on that split at extraction: {listed}. Every validation fold's videos were inside "
            "those fits, so the cross-validated scores would be optimistic. Cross-validate the modules without them "
            "(e.g. raw without hog: --raw_features brightness contrast blurriness size_orig meanOF; no similarity), "
            "or train on the dataset's own split (no --folds)"
        )


def fold_data(
    cfg: TrainConfig, records: list[VideoRecord], folds: list[list[str]] | None, device: torch.device
) -> tuple[list[FoldData], dict[str, int], dict, dict]:
    """``(one FoldData per fold, module dims, feature provenance, the stores' fitted transforms)`` for the modules
    ``cfg`` selects (the transforms travel in the sub-runs' checkpoints, for ``evaluate.py --videos``)."""
    pool = scored_pool(records)
    # one read of the stores, every pooled video as one block, nothing normalised yet
    table = FeatureTable.build(cfg, [replace(r, split="train") for r in pool], "cpu", stats={}, splits=("train",))
    if folds is not None:
        refuse_fits_that_saw_the_folds(cfg, table.fitted)
    data = table.splits["train"]
    row = {vid: i for i, vid in enumerate(data.ids)}  # videos that failed extraction are not in the table
    kept = [r for r in pool if r.id in row]
    x, y = data.x.numpy(), data.y
    cols = np.cumsum([0, *table.dims.values()])
    blocks = {m: x[:, cols[i] : cols[i + 1]] for i, m in enumerate(table.dims)}
    if folds is None:  # the dataset's own split
        vals = [{r.id for r in kept if r.split == "val"}]
        if not vals[0] or len(vals[0]) == len(kept):
            raise ConfigError(f"{cfg.dataset} needs scored train and val videos (or pass --folds K)")
    else:
        vals = [set(f) for f in folds]
    tiers = module_tiers(cfg)
    out = []
    for val in vals:
        relabelled = [replace(r, split="val" if r.id in val else "train") for r in kept]
        is_val = np.array([r.split == "val" for r in relabelled])
        stats = fit_stats(cfg, tiers, blocks, relabelled)
        normed = {
            m: (b - stats[m]["mean"].numpy()) / stats[m]["std"].numpy() if m in stats else b for m, b in blocks.items()
        }
        tr, va = np.flatnonzero(~is_val), np.flatnonzero(is_val)

        def part(rows: np.ndarray, normed: dict = normed) -> dict[str, torch.Tensor]:
            return {m: torch.from_numpy(np.ascontiguousarray(b[rows])).to(device) for m, b in normed.items()}

        out.append(
            FoldData(
                [kept[i].id for i in tr],
                [kept[i].id for i in va],
                part(tr),
                y[tr].to(device),
                part(va),
                y[va].to(device),
                stats,
            )
        )
    return out, dict(table.dims), table.sources, table.fitted
