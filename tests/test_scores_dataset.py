"""``--dataset scores``: a user's own human scores (``scores.csv``: video_id,score[,split]) with imported features or
videos, trained and evaluated without writing an adapter; a split column, or a seeded split written once and reused."""

import json

import numpy as np
import pytest

from config import ConfigError, GenConfig, Paths, TrainConfig, parse, parse_explicit
from dataset import load_records
from pipeline.generate import run_import
from pipeline.run.heads import run_fitted
from pipeline.run.training import run_training


def _write(root, n=40, split=True, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    ids = [f"clip{i:03d}" for i in range(n)]
    scores = rng.uniform(0.4, 1.0, n)
    lines = ["video_id,score" + (",split" if split else "")]
    for i, (vid, s) in enumerate(zip(ids, scores, strict=True)):
        part = "train" if i % 4 < 2 else ("val" if i % 4 == 2 else "test")
        text = "" if split and part == "test" else f"{s:.4f}"
        lines.append(f"{vid}.mp4,{text}" + (f",{part}" if split else ""))
    (root / "scores.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    x = rng.normal(size=(n, 5)).astype(np.float32)
    x[:, 0] = scores * 5 + rng.normal(scale=0.2, size=n)  # a feature that tracks the score
    np.savez(root / "emb.npz", ids=np.array(ids), emb=x)
    return ids, scores


def test_scores_csv_with_a_split_column_imports_and_trains(tmp_path):
    root = tmp_path / "mine"
    ids, _ = _write(root)
    records = load_records("scores", Paths(data_dir=str(root)))
    assert [r.id for r in records] == ids  # the suffix of video_id is dropped: ids match the import's
    assert [r.split for r in records[:4]] == ["train", "train", "val", "test"] and records[3].score is None
    assert records[0].path is None  # no videos beside it: features are imported
    run_import(parse(GenConfig, ["--dataset", "scores", "--data_dir", str(root), "--import", str(root / "emb.npz"),
                                 "--name", "emb"]))  # fmt: skip
    assert (root / "features/scores/emb.h5").is_file()
    argv = ["--dataset", "scores", "--data_dir", str(root), "--extra_features", "emb", "--normalize_extra",
            "--epochs", "20", "--lr", "0.01", "--scheduler", "none", "--hidden_channels", "8", "--batch_size", "4",
            "--runs_dir", str(tmp_path / "runs"), "-n", "s", "--seed", "1"]  # fmt: skip
    result = run_training(*parse_explicit(TrainConfig, argv, check=False))
    assert result["last"]["val_spearman"] > 0.5  # the imported feature carries the score
    result = run_fitted(parse(TrainConfig, [*argv[:-4], "-n", "r", "--head", "ridge"]))
    assert result["last"]["val_spearman"] > 0.8


def test_without_a_split_column_a_seeded_split_is_written_once_and_reused(tmp_path):
    root = tmp_path / "mine"
    ids, _ = _write(root, n=50, split=False)
    first = {r.id: r.split for r in load_records("scores", Paths(data_dir=str(root)))}
    saved = json.loads((root / "m3s_split_scores.json").read_text())
    assert len(saved["val"]) == 10 and sorted(saved["train"] + saved["val"]) == ids
    assert {v for v, s in first.items() if s == "val"} == set(saved["val"])
    saved["val"], saved["train"] = saved["val"][1:], [saved["val"][0], *saved["train"]]  # edited: reused as written
    (root / "m3s_split_scores.json").write_text(json.dumps(saved))
    again = {r.id: r.split for r in load_records("scores", Paths(data_dir=str(root)))}
    assert sum(s == "val" for s in again.values()) == 9


@pytest.mark.parametrize(
    ("text", "match"),
    [("id,score\na,0.5\n", "expected the columns video_id,score"),
     ("video_id,score,split\na,0.5,dev\n", "split not in"), ("video_id,score\na,0.5\na,0.6\n", "listed twice")],
)  # fmt: skip
def test_bad_scores_csv_says_what_is_wrong(tmp_path, text, match):
    (tmp_path / "scores.csv").write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_records("scores", Paths(data_dir=str(tmp_path)))


def test_missing_scores_csv_names_the_file_and_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="scores.csv.*video_id,score"):
        load_records("scores", Paths(data_dir=str(tmp_path)))
