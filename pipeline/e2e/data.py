"""What an end-to-end step reads besides the backbones' own features: the tiers that stay pre-computed (through
``FeatureTable``, normalised with train statistics), the raw tier computed on the fly when asked (the store's HOG
PCA and normalisation statistics), and one ``ClipDataset`` per split over the same rows.

The pre-computed tiers are every selected module but the deep ones (hrnet, csn). In particular the similarity tier
keeps the distinctiveness features fitted on the frozen pre-computed hrnet / csn features (its fitted transforms),
in both training modes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from config import TrainConfig
from core.io import StoreError
from dataset import DATASETS, VideoRecord
from features.hog import HogPCA
from features.raw import RawExtractor
from features.store import FeatureStore
from pipeline.e2e.clips import ClipDataset, ClipSpec
from pipeline.run.table import FeatureTable, Stats, to_splits
from tiers import TIERS

DEEP_MODULES = ("hrnet", "csn")  # computed inside the step by their backbones (pipeline/e2e/training.py)


@dataclass(kw_only=True)
class E2EData(FeatureTable):
    """The pre-computed modules' table (x: N rows of their concatenated features), and the clips of the same rows."""

    datasets: dict[str, ClipDataset]  # one per split, rows in the order of ``splits``
    raw_features: list[str]  # the raw tier's stored features in input order, when it is computed on the fly

    def inputs(
        self, split: str, idx: torch.Tensor, raw: dict[str, torch.Tensor] | None, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """``{module: (B, D)}`` of the pre-computed modules for rows ``idx``, the raw tier from ``raw`` when given."""
        x = self.splits[split].x
        x = x[idx.to(x.device)].to(device, non_blocking=True)
        out = dict(zip(self.dims, x.split(list(self.dims.values()), dim=1), strict=True))
        if raw is not None:
            v = torch.cat([raw[f].reshape(len(idx), -1) for f in self.raw_features], dim=1).to(device)
            if "raw" in self.stats:
                v = (v - self.stats["raw"]["mean"].to(device)) / self.stats["raw"]["std"].to(device)
            out["raw"] = v.float()
        return out


def hog_pca(cfg: TrainConfig) -> HogPCA:
    """The HOG PCA fitted in the raw store (the raw tier on the fly projects with it)."""
    tier = TIERS["raw"]
    store = FeatureStore.at(cfg.resolved_features_dir(), cfg.dataset, tier.store(cfg))
    command = tier.gen_command(cfg, store.path.stem)
    if not store.exists():
        raise FileNotFoundError(
            f"the raw tier on the fly needs the HOG PCA fitted in {store.path}; compute it with: {command}"
        )
    t = store.read_transforms().get(RawExtractor.transform_name)
    if t is None:
        raise StoreError(f"{store.path} holds no HOG PCA; compute it again with: {command}")
    return HogPCA.from_transform(t)


def build_data(
    cfg: TrainConfig,
    records: list[VideoRecord],
    device: torch.device,
    stats: Stats | None = None,
    splits: tuple[str, ...] = ("train", "val"),
    scored_only: bool = True,
) -> E2EData:
    """The pre-computed modules' table (``stats`` from a checkpoint, else fitted on train) and the clip datasets."""
    pre_cfg = dataclasses.replace(cfg, **{f"use_{m}": False for m in DEEP_MODULES})
    if pre_cfg.modules():
        table = FeatureTable.build(pre_cfg, records, device, stats=stats, splits=splits, scored_only=scored_only)
    else:  # deep modules only: the splits' ids and scores, x without columns
        rows = [r for r in records if r.split in splits and (r.score is not None or not scored_only)]
        no_columns = {"": np.zeros((len(rows), 0), np.float32)}
        table = FeatureTable([], {}, to_splits(no_columns, rows, splits, device), {}, {})
    # the raw tier is computed from the decoded clips with --compute_raw, and always under augmentation (augmented
    # frames have their own low-level features)
    on_the_fly = bool(cfg.use_raw and (cfg.compute_raw or cfg.data_augmentation))
    # the backbones' frames cfg.e2e_size square with the dataset's crop; the raw tier's squashed to its store's size
    # (256: its HOG PCA was fitted there)
    raw = dataclasses.replace(RawExtractor.frame_spec, n_frames=cfg.e2e_frames)
    deep = dataclasses.replace(raw, size=(cfg.e2e_size, cfg.e2e_size), crop=DATASETS[cfg.dataset].crop)
    has_deep = any(m in DEEP_MODULES for m in cfg.modules())
    spec = ClipSpec(deep if has_deep else None, raw if on_the_fly else None, int(cfg.seed))
    pca = hog_pca(cfg) if on_the_fly else None
    by_id = {r.id: r for r in records}
    datasets = {s: ClipDataset([by_id[i] for i in d.ids], spec, pca) for s, d in table.splits.items()}
    raw_features = list(table.sources["raw"]["features"]) if on_the_fly else []
    return E2EData(**vars(table), datasets=datasets, raw_features=raw_features)
