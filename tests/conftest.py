"""Shared fixtures: small datasets written in the official formats, and wandb kept offline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REALDATA = ROOT.parent / "shared" / "realdata"

ACTIONS = ["adult+female+singing", "aiming", "shooting", "running", "cooking"]


def write_videomem(root: Path, names: list[str], scores: list[float] | None = None) -> None:
    """VideoMem's official ``ground-truth_dev-set.csv``: a byte-order mark, CRLF line ends, its five columns."""
    root.mkdir(parents=True, exist_ok=True)
    scores = scores or [0.9] * len(names)
    lines = ["video,short-term_memorability,nb_short-term_annotations,long-term_memorability,nb_long-term_annotations"]
    lines += [f"{n},{s},30,0.8,10" for n, s in zip(names, scores, strict=True)]
    (root / "ground-truth_dev-set.csv").write_text("\r\n".join(lines) + "\r\n", encoding="utf-8-sig")


def write_memento(root: Path, n: dict[str, int] | None = None, seed: int = 0) -> dict[str, list[dict]]:
    """Memento10k's official JSON files (keys in the official order; test split without mem_score)."""
    n = n or {"train": 60, "val": 20, "test": 10}
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, count in n.items():
        recs = []
        for i in range(count):
            action = ACTIONS[i % len(ACTIONS)]
            rest = f"{split}-clip_{i:04d}"
            rec = {
                "filename": f"{action.replace('+', '-')}_{rest}.mp4",
                "url": f"https://data.csail.mit.edu/soundnet/actions3/{action}/{rest}.mp4",
                "mem_score": float(np.clip(rng.normal(0.8, 0.1), 0.38, 1.0)),
                "alpha": float(rng.normal(-0.0016, 0.001)),
                "audio_description": "this is a video of something",
                "captions": [f"caption {k}" for k in range(5)],
                "action_labels": [action.split("+")[-1]],
            }
            if split == "test":
                del rec["mem_score"]
            recs.append(rec)
        recs.sort(key=lambda r: r["filename"])
        (root / f"memento_{split}_data.json").write_text(json.dumps(recs))
        out[split] = recs
    return out


@pytest.fixture
def memento(tmp_path: Path) -> Path:
    """A data_dir holding a small Memento10k (annotations only: training never needs the videos)."""
    write_memento(tmp_path / "data" / "Memento10k")
    return tmp_path / "data"


def signal_features(data_dir: Path, dim: int = 6, noise: float = 0.05, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Ids and a (N, dim) matrix whose first column tracks the memorability score (test videos: random)."""
    from config import Paths
    from dataset import load_records

    rng = np.random.default_rng(seed)
    records = load_records("Memento10k", Paths(data_dir=str(data_dir)))
    ids = [r.id for r in records]
    x = rng.normal(size=(len(ids), dim)).astype(np.float32)
    scores = np.array([r.score if r.score is not None else 0.8 for r in records])
    x[:, 0] = (scores - 0.8) * 10 + rng.normal(scale=noise * 10, size=len(ids))
    return ids, x


@pytest.fixture(autouse=True)
def _wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb"))
    monkeypatch.delenv("M3S_DATA_DIR", raising=False)
    monkeypatch.delenv("M3S_TRUST_WEIGHTS", raising=False)  # the tests decide whether an unpinned digest is trusted


@pytest.fixture
def pin_weights(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """``pin(rel, path)``: pin ``path``'s sha256 for ``rel`` in a SHA256SUMS of the test's own, which the loaders
    (``model.backbones.verify_weights``) read instead of ``weights/SHA256SUMS``. Returns that file."""
    from model import backbones

    sums = tmp_path_factory.mktemp("pins") / "SHA256SUMS"
    sums.write_text("")
    monkeypatch.setattr(backbones, "SHA256SUMS", sums)

    def pin(rel: str, path: Path) -> Path:
        with sums.open("a") as f:
            f.write(f"{backbones.file_sha256(path)}  {rel}\n")
        return sums

    return pin
