"""The in-memory feature table that training and evaluation run on.

``FeatureTable.build`` joins dataset records with the feature stores of the chosen modules (which stores and which
features of them, each module's tier says: ``tiers``) and holds each split as one float32 matrix on the training
device, normalised with train-split statistics where the tier asks for it. An epoch then reads no file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from config import ModuleConfig
from core.io import ConfigError
from dataset import SPLITS, VideoRecord
from features.store import FeatureStore, StoredFeatures
from pipeline.run.fitted import Fitted, fitted_of
from tiers import Source, Tier, module_tiers, sources


@dataclass
class SplitData:
    ids: list[str]
    x: torch.Tensor  # (N, in_dim) float32, modules concatenated in input order
    y: torch.Tensor  # (N,) float32 memorability


Stats = dict[str, dict[str, torch.Tensor]]  # module -> {"mean": (D,), "std": (D,)}


@dataclass
class FeatureTable:
    """The chosen modules' features for each split, in memory on one device, normalised with train statistics."""

    modules: list[str]
    dims: dict[str, int]
    splits: dict[str, SplitData]
    stats: Stats
    sources: dict[str, dict]  # store name -> {"tier", "features", "settings", "smoke", "dims", "transforms"}
    fitted: Fitted = field(default_factory=dict)  # the stores' fitted transforms, carried by checkpoints

    @property
    def in_dim(self) -> int:
        return sum(self.dims.values())

    @classmethod
    def build(
        cls,
        cfg: ModuleConfig,
        records: list[VideoRecord],
        device: torch.device | str = "cpu",
        stats: Stats | None = None,
        splits: tuple[str, ...] = SPLITS,
        scored_only: bool = True,
    ) -> FeatureTable:
        """Join ``records`` in ``splits`` (only scored ones unless ``scored_only`` is False; y is NaN where unknown)
        with the stores. ``stats`` from a checkpoint are reused; otherwise they are fitted on the train split."""
        tiers = module_tiers(cfg)
        chosen = [r for r in records if r.split in splits and (r.score is not None or not scored_only)]
        if not chosen:  # before the stores: no store can help a split the dataset does not have
            raise ConfigError(no_videos(cfg.dataset, records, splits, scored_only))
        stores = read_stores(cfg, tiers)
        plan = sources(cfg, stores)  # module -> [(store, feature)], now complete
        chosen = drop_failed(chosen, stores)
        blocks = module_blocks(cfg, tiers, plan, stores, chosen)
        if stats is None:
            stats = fit_stats(cfg, tiers, blocks, chosen)
        for module, s in stats.items():
            blocks[module] = (blocks[module] - s["mean"].numpy()) / s["std"].numpy()
        split_data = to_splits(blocks, chosen, splits, device)
        dims = {m: blocks[m].shape[1] for m in plan}
        return cls(list(plan), dims, split_data, stats, provenance(tiers, plan, stores), fitted_of(stores))


def read_stores(cfg: ModuleConfig, tiers: dict[str, Tier]) -> dict[str, StoredFeatures]:
    """Every store the modules read, by name; a missing one is an error with the command that computes it."""
    stores: dict[str, StoredFeatures] = {}
    for module, pairs in sources(cfg).items():
        for name in dict.fromkeys(store for store, _ in pairs):
            store = FeatureStore.at(cfg.resolved_features_dir(), cfg.dataset, name)
            if not store.exists():
                raise FileNotFoundError(missing_store(cfg, tiers[module], module, store))
            stores[name] = store.read()
    return stores


def missing_store(cfg: ModuleConfig, tier: Tier, module: str, store: FeatureStore) -> str:
    """Why a module's store is missing and the ways out: the command that computes it, or leaving the module out;
    for an imported module (likely a misspelt --extra_features name), the stores that do exist."""
    name = store.path.stem
    text = f"no {module} features for {cfg.dataset}: {store.path} does not exist. "
    if not tier.has_switch:
        have = sorted(p.stem for p in store.path.parent.glob("*.h5")) if store.path.parent.is_dir() else []
        text += f"The stores of {cfg.dataset} are: {', '.join(have)}. " if have else ""
        return text + f"Import them with: {tier.gen_command(cfg, name)}"
    return text + f"Compute them with: {tier.gen_command(cfg, name)}, or leave the tier out: --no-{tier.switch}"


def no_videos(dataset: str, records: list[VideoRecord], splits: tuple[str, ...], scored_only: bool) -> str:
    """Which splits (scored or not) the dataset does have, and what to pass instead."""
    have = {s: sum(r.split == s for r in records) for s in SPLITS}
    scored = {s: sum(r.split == s and r.score is not None for r in records) for s in SPLITS}
    counts = ", ".join(f"{s} {have[s]} ({scored[s]} scored)" for s in SPLITS if have[s]) or "no videos at all"
    text = f"{dataset} has no {'scored ' if scored_only else ''}videos in {'/'.join(splits)}; it has {counts}"
    if scored_only and not any(scored.values()):
        return f"{text}. Its videos are unscored: train on a scored dataset, then score them with evaluate.py --videos"
    usable = [s for s in SPLITS if (scored if scored_only else have)[s]]
    return f"{text}. Pass --split {usable[0]}" if usable else text


def drop_failed(records: list[VideoRecord], stores: dict[str, StoredFeatures]) -> list[VideoRecord]:
    """The records whose extraction did not fail in any store (with a warning naming one that did)."""
    failed = {i: s.failures[i] for s in stores.values() for i in s.failures}
    skipped = [r for r in records if r.id in failed]
    if skipped:
        print(
            f"warning: {len(skipped)} videos failed extraction and are left out, e.g. "
            f"{skipped[0].id}: {failed[skipped[0].id]}"
        )
    return [r for r in records if r.id not in failed]


def module_blocks(
    cfg: ModuleConfig,
    tiers: dict[str, Tier],
    plan: dict[str, list[Source]],
    stores: dict[str, StoredFeatures],
    records: list[VideoRecord],
) -> dict[str, np.ndarray]:
    """``{module: (N, D_module) float32}`` over ``records``, columns in ``plan`` order, every value finite."""
    rows: dict[str, np.ndarray] = {}  # store -> the row of each record, looked up once per store
    blocks: dict[str, np.ndarray] = {}
    for module, pairs in plan.items():
        columns = []
        for name, feature in pairs:
            if name not in rows:
                rows[name] = _rows(cfg, tiers[module], module, name, stores[name], records)
            data = stores[name]
            if feature not in data.features:
                raise ConfigError(
                    f"{module}: store {name} has no feature {feature!r}; it has {sorted(data.features)}. "
                    f"Compute it with: {tiers[module].gen_command(cfg, name)}"
                )
            columns.append(data.features[feature][rows[name]].reshape(len(records), -1))
        block = np.concatenate(columns, axis=1).astype(np.float32)
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            ids = [records[i].id for i in np.flatnonzero(bad)[:5]]
            raise ConfigError(f"{int(bad.sum())} videos have NaN or inf {module} features (first: {ids})")
        blocks[module] = block
    return blocks


def _rows(
    cfg: ModuleConfig, tier: Tier, module: str, name: str, data: StoredFeatures, records: list[VideoRecord]
) -> np.ndarray:
    row = {vid: i for i, vid in enumerate(data.ids)}
    missing = [r.id for r in records if r.id not in row]
    if missing:
        path = FeatureStore.at(cfg.resolved_features_dir(), cfg.dataset, name).path
        raise ConfigError(
            f"{len(missing)} of {len(records)} videos have no {module} features in {path} "
            f"(first: {', '.join(missing[:5])}). Compute them with: {tier.gen_command(cfg, name)}"
        )
    return np.array([row[r.id] for r in records], dtype=np.int64)


def fit_stats(
    cfg: ModuleConfig, tiers: dict[str, Tier], blocks: dict[str, np.ndarray], records: list[VideoRecord]
) -> Stats:
    """Mean and std over the scored train videos of every module whose tier normalises it under ``cfg``."""
    fit_rows = np.array([r.split == "train" and r.score is not None for r in records], dtype=bool)
    stats: Stats = {}
    for module, block in blocks.items():
        if not tiers[module].normalized(cfg):
            continue
        if not fit_rows.any():
            raise ConfigError(f"cannot fit {module} normalisation: no scored train videos")
        train = block[fit_rows].astype(np.float64)
        std = train.std(axis=0)
        std[std < 1e-12] = 1.0  # a constant dimension stays constant instead of dividing by zero
        stats[module] = {
            "mean": torch.tensor(train.mean(axis=0), dtype=torch.float32),
            "std": torch.tensor(std, dtype=torch.float32),
        }
    return stats


def to_splits(
    blocks: dict[str, np.ndarray], records: list[VideoRecord], splits: tuple[str, ...], device: torch.device | str
) -> dict[str, SplitData]:
    x_all = torch.from_numpy(np.concatenate(list(blocks.values()), axis=1))  # (N, in_dim)
    y_all = torch.tensor([math.nan if r.score is None else r.score for r in records], dtype=torch.float32)
    out = {}
    for split in splits:
        sel = np.flatnonzero([r.split == split for r in records])
        if len(sel):
            out[split] = SplitData([records[i].id for i in sel], x_all[sel].to(device), y_all[sel].to(device))
    return out


def provenance(tiers: dict[str, Tier], plan: dict[str, list[Source]], stores: dict[str, StoredFeatures]) -> dict:
    """What the features were, per store: tier, features and dims, extraction settings, smoke flag, and the digests
    of the fitted transforms (HOG PCA, similarity state: features from another fit are in another basis)."""
    out: dict[str, dict] = {}
    for module, pairs in plan.items():
        for name, feature in pairs:
            data = stores[name]
            entry = out.setdefault(
                name,
                {
                    "tier": tiers[module].name,
                    "features": [],
                    "settings": data.meta.get("settings", {}),
                    "smoke": bool(data.meta.get("smoke")),
                    "dims": {},
                    "transforms": {t: tr.digest() for t, tr in sorted(data.transforms.items())},
                },
            )
            entry["features"].append(feature)
            entry["dims"][feature] = data.dims[feature]
    return out
