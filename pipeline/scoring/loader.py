"""The one way a checkpoint is scored: loaded (``weights_only``), its training config rebuilt with the roots or dataset
the caller points it at, and its predictions made over the pre-computed feature table (checked against the
checkpoint's provenance) or, for an end-to-end checkpoint, by its own backbones over the decoded clips.
``evaluate.py`` on a split, ``--videos`` and ``--explain`` all go through :class:`Scorer`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from config import TrainConfig, from_dict
from core.io import ConfigError
from dataset import VideoRecord
from pipeline.e2e.training import evaluate_end_to_end
from pipeline.run.checkpoint import check_sources, load_checkpoint, model_from_checkpoint, stats_from_checkpoint
from pipeline.run.table import FeatureTable
from pipeline.run.training import predict


@dataclass
class Scorer:
    ckpt: dict
    cfg: TrainConfig  # the training config, pointed at the data to score

    @classmethod
    def load(cls, path: str, ckpt: dict | None = None, **where: str) -> Scorer:
        """``where``: ``data_dir`` / ``features_dir`` / ``dataset`` to score instead of the checkpoint's own (empty
        values keep the checkpoint's)."""
        ckpt = load_checkpoint(path) if ckpt is None else ckpt
        values = dict(ckpt["config"]) | {k: v for k, v in where.items() if v}
        return cls(ckpt, from_dict(TrainConfig, values, source=f"checkpoint {path}"))

    @property
    def end_to_end(self) -> bool:
        return "end_to_end" in self.ckpt or not self.cfg.fixed_features

    def table(
        self, records: list[VideoRecord], device: torch.device, splits: tuple[str, ...], scored_only: bool = True
    ) -> FeatureTable:
        """The feature table of ``records``, normalised with the checkpoint's statistics, its sources checked."""
        stats = stats_from_checkpoint(self.ckpt)
        table = FeatureTable.build(self.cfg, records, device, stats=stats, splits=splits, scored_only=scored_only)
        check_sources(self.ckpt["sources"], table.sources)
        return table

    def model(self, device: torch.device) -> torch.nn.Module:
        return model_from_checkpoint(self.ckpt).to(device)

    def predict(
        self, records: list[VideoRecord], splits: tuple[str, ...], device: torch.device
    ) -> dict[str, tuple[list[str], np.ndarray, np.ndarray]]:
        """``{split: (ids, true scores with NaN where unknown, predictions)}`` of every video of ``records``."""
        if self.end_to_end:  # the checkpoint's (fine-tuned) backbones over the decoded clips
            return evaluate_end_to_end(self.ckpt, self.cfg, splits, str(device), records)
        table = self.table(records, device, splits, scored_only=False)
        if not table.splits:
            raise ConfigError(f"{self.cfg.dataset} has no videos in split(s) {', '.join(splits)}")
        model = self.model(device)
        return {s: (d.ids, d.y.cpu().numpy(), predict(model, d.x)) for s, d in table.splits.items()}
