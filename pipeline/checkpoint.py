"""Checkpoints: self-describing (weights, config, modules, their tiers and dims, normalisation statistics, provenance
of the features, metrics, code version), made of tensors and plain values only, so they load with
``torch.load(weights_only=True)``."""

from __future__ import annotations

from pathlib import Path

import torch

from core.io import ConfigError, atomic_write
from model.mlp import ModularMLP

CHECKPOINT_FORMAT = 1


def save_checkpoint(state: dict, path: Path) -> None:
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (train.py --save writes best.pt and last.pt)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path} is not an m3s checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> ModularMLP:
    model = ModularMLP(ckpt["dims"], ckpt["config"]["hidden_channels"])
    model.load_state_dict(ckpt["model"])
    return model


def stats_from_checkpoint(ckpt: dict) -> dict[str, dict[str, torch.Tensor]]:
    return {m: {k: v.float() for k, v in s.items()} for m, s in ckpt["stats"].items()}


def check_sources(want: dict, have: dict) -> None:
    """Refuse features whose dims or extraction settings differ from those a checkpoint was trained on."""
    diffs = []
    for store, w in want.items():
        h = have.get(store)
        if h is None:
            diffs.append(f"{store}: the checkpoint needs it, it is not selected")
            continue
        for key in ("features", "dims", "settings", "smoke"):
            if w.get(key) != h.get(key):
                diffs.append(f"{store} {key}: checkpoint {w.get(key)!r}, feature store {h.get(key)!r}")
        if w.get("transforms", {}) != h.get("transforms", {}):
            diffs.append(
                f"{store}: its fitted transforms ({', '.join(h.get('transforms', {})) or 'none'}) are not the ones "
                "the checkpoint was trained with, so its features are in another basis; extract them with "
                "gen_features.py --fit_on <the training dataset>"
            )
    if diffs:
        raise ConfigError("the feature stores differ from the checkpoint's:\n  " + "\n  ".join(diffs))
