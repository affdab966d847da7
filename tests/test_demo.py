"""The demo corpus: official Memento10k layout and keys, deterministic, skipped when complete, redone when not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from core.demo import demo_records, ensure_demo_corpus
from features.base import FrameSpec
from features.video import read_clip

KEYS = ["filename", "url", "mem_score", "alpha", "audio_description", "captions", "action_labels"]


def test_layout_keys_and_splits(tmp_path):
    ensure_demo_corpus(tmp_path, n_videos=20, seed=1)
    seen = []
    for split, n in (("train", 14), ("val", 3), ("test", 3)):
        records = json.loads((tmp_path / f"memento_{split}_data.json").read_text())
        assert len(records) == n
        assert [r["filename"] for r in records] == sorted(r["filename"] for r in records)
        for r in records:
            assert list(r) == [k for k in KEYS if split != "test" or k != "mem_score"]
            assert len(r["captions"]) == 5 and r["filename"].startswith(r["action_labels"][0] + "_")
            assert (tmp_path / "videos" / r["filename"]).is_file()
            if split != "test":
                assert 0.3 <= r["mem_score"] <= 1.0
        seen += [r["filename"] for r in records]
    assert len(set(seen)) == 20
    clip = read_clip(tmp_path / "videos" / seen[0], FrameSpec(45, (64, 64)))
    assert clip.shape == (45, 64, 64, 3)


def _files(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``root`` with its inode and bytes: an atomic rewrite, even of the same bytes, is a new inode."""
    return {str(p.relative_to(root)): (p.stat().st_ino, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_skip_and_redo(tmp_path, monkeypatch):
    import core.demo

    ensure_demo_corpus(tmp_path / "a", n_videos=12, seed=3)
    ensure_demo_corpus(tmp_path / "b", n_videos=12, seed=3)
    for name in ("memento_train_data.json", "memento_val_data.json", "memento_test_data.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    video = sorted((tmp_path / "a" / "videos").glob("*.mp4"))[0]
    before = _files(tmp_path / "a")
    writes = []
    with monkeypatch.context() as m:
        m.setattr(core.demo, "atomic_write", lambda path, **kw: writes.append(path) or pytest.fail(f"wrote {path}"))
        m.setattr(core.demo, "write_text", lambda path, text: writes.append(path) or pytest.fail(f"wrote {path}"))
        ensure_demo_corpus(tmp_path / "a", n_videos=12, seed=3)  # complete: nothing rewritten
    assert not writes and _files(tmp_path / "a") == before and len(before) == 12 + 3 + 1
    (tmp_path / "a" / ".complete").unlink()  # as if interrupted before the end
    video.unlink()
    ensure_demo_corpus(tmp_path / "a", n_videos=12, seed=3)
    assert video.is_file() and (tmp_path / "a" / ".complete").is_file()
    assert len(list((tmp_path / "a" / "videos").iterdir())) == 12  # no temporary file left behind


def test_scores_follow_low_level_properties_and_rarity():
    plan = demo_records(600, seed=0)
    score = np.array([p["record"]["mem_score"] for p in plan])
    assert abs(score.mean() - 0.8) < 0.02
    for key, sign in (("bright", 1), ("contrast", 1), ("blur", -1), ("speed", 1), ("scene", 1)):
        rho = spearmanr([p[key] for p in plan], score)[0]  # scene types are ordered from common to rare
        assert sign * rho > 0.15, (key, rho)
