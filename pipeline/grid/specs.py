"""What a grid is made of: a run's specification, a fold's data, and a run's result (shared by the batched engine,
the fitted heads, the folds and the summary)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class RunSpec:
    """One training of a grid."""

    seed: int
    fold: int
    modules: tuple[str, ...]
    head: str = "mlp"  # model.heads.HEADS

    @property
    def combination(self) -> str:
        return "+".join(self.modules)

    @property
    def run_name(self) -> str:
        return f"{'' if self.head == 'mlp' else self.head + '-'}seed{self.seed}-fold{self.fold}"

    @property
    def dir_name(self) -> str:
        """Its sub-run directory inside the grid's run directory."""
        return f"{self.combination}/{self.run_name}"


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
    best_weights: dict[str, torch.Tensor] = field(default_factory=dict)  # best epoch (kept with -s, for best.pt)
