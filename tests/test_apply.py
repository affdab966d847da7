"""``evaluate.py --videos``: new videos scored from the checkpoint alone (its fitted transforms travel in it), with
the training dataset's stores deleted, give the predictions the model gave the same videos inside the dataset."""

import csv
import os
import shutil
import subprocess
import sys

import pytest
import torch

from config import ROOT, ConfigError, EvalConfig, GenConfig, TrainConfig, parse, parse_explicit
from core.io import read_csv
from pipeline.generate import run
from pipeline.run.training import run_training
from pipeline.scoring.evaluate import run_evaluation
from pipeline.scoring.videos import read_scores, score_videos, video_records
from tests.fixtures_video import memento_layout


def _predictions(path):
    with open(path, newline="") as f:
        return {row["id"]: float(row["pred"]) for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A raw-tier model of a tiny Memento10k, its in-dataset val predictions, and the val videos."""
    tmp = tmp_path_factory.mktemp("apply")
    data, features = tmp / "data", tmp / "features"
    names = memento_layout(data / "Memento10k", 20, n_frames=8)
    run(GenConfig(data_dir=str(data), features_dir=str(features), dataset="Memento10k", workers=1))
    argv = ["--data_dir", str(data), "--features_dir", str(features), "--runs_dir", str(tmp / "runs"), "-n", "m",
            "--use_raw", "--epochs", "2", "--hidden_channels", "16", "--seed", "0", "-s"]  # fmt: skip
    run_training(*parse_explicit(TrainConfig, argv, check=False))
    ckpt = tmp / "runs/m/best.pt"
    run_evaluation(parse(EvalConfig, ["--checkpoint", str(ckpt), "--split", "val"]))
    in_dataset = _predictions(tmp / "runs/m/predictions_Memento10k_val_best.csv")
    videos = [data / "Memento10k/videos" / n for n in names if n[: -len(".mp4")] in in_dataset]
    shutil.rmtree(features)  # the training dataset's stores are gone: the checkpoint must be enough
    return tmp, ckpt, in_dataset, videos


def test_checkpoint_carries_its_fitted_transforms_and_loads_weights_only(trained):
    _, ckpt, _, _ = trained
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    hog = state["fitted"]["raw"]["transforms"]["hog_pca"]
    assert hog["arrays"]["components"].shape[0] == 10 and '"family": "raw"' in state["fitted"]["raw"]["meta"]


def test_a_folder_of_new_videos_is_scored_like_the_dataset_in_one_command(trained):
    tmp, ckpt, in_dataset, videos = trained
    mine = tmp / "my_videos"
    (mine / "sub").mkdir(parents=True)
    for k, v in enumerate(videos):
        shutil.copy(v, mine / ("sub" if k == 0 else "") / v.name)  # ids are paths below the folder
    (mine / "broken.mp4").write_bytes(b"not a video at all")
    # a Latin-1 file name (not valid UTF-8) is scored too: store ids round-trip any file name
    os.link(videos[1], os.path.join(os.fsencode(mine), b"caf\xe9.mp4"))
    out = tmp / "scores.csv"
    cmd = [sys.executable, str(ROOT / "evaluate.py"), "--checkpoint", str(ckpt), "--videos", str(mine),
           "--out", str(out), "--workers", "1", "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="backslashreplace", cwd=tmp, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"scored {len(videos) + 1} of {len(videos) + 2} videos" in proc.stdout and "failed broken" in proc.stdout
    scores = read_scores(out)
    assert scores.pop("caf\\xe9") == pytest.approx(in_dataset[videos[1].stem], abs=1e-6)
    assert len(scores) == len(videos) == len(in_dataset) == 4
    for vid, pred in scores.items():
        assert pred == pytest.approx(in_dataset[vid.rsplit("/", 1)[-1]], abs=1e-6)
    with open(out, newline="", encoding="utf-8") as f:  # valid UTF-8: the bad byte of caf\xe9 is escaped
        rows = {r["id"]: r for r in csv.DictReader(f)}
    assert rows["broken"]["prediction"] == "" and "raw:" in rows["broken"]["error"]


def test_a_list_file_of_videos_and_the_default_output_name(trained):
    tmp, ckpt, in_dataset, videos = trained
    listing = tmp / "lists" / "to_score.txt"
    listing.parent.mkdir()
    listing.write_text("# my videos\n" + "\n".join(str(v) for v in videos[:2]) + "\nmissing/clip.mp4\n")
    result = score_videos(parse(EvalConfig, ["--checkpoint", str(ckpt), "--videos", str(listing), "--workers", "1"]))
    assert result["out"].endswith("scores_to_score_best.csv") and result["n_scored"] == 2
    assert "no such file" in result["failed"]["clip"]
    for vid, pred in read_scores(result["out"]).items():
        assert pred == pytest.approx(in_dataset[vid], abs=1e-6)


def test_video_records_refusals(tmp_path):
    with pytest.raises(ConfigError, match="no video files"):
        video_records(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such folder or list file"):
        video_records(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="one video; pass its folder"):
        (tmp_path / "a.mp4").write_bytes(b"")
        video_records(tmp_path / "a.mp4")
    with pytest.raises(ConfigError, match="--videos scores a folder"):
        parse(EvalConfig, ["--checkpoint", "x.pt", "--videos", "d", "--dataset", "demo"])


@pytest.mark.slow
def test_similarity_state_travels_in_the_checkpoint(tmp_path):
    """hrnet (seeded smoke weights) + similarity fitted on train (kde, cosine_threshold, fractional_mean; dbscan's
    t-SNE needs more than 30 train videos, which HRNet on a CPU makes too slow for a test): scored from the
    checkpoint alone, the new videos get the in-dataset predictions, similarity features included."""
    data, features = tmp_path / "data", tmp_path / "features"
    names = memento_layout(data / "Memento10k", 20, n_frames=6)
    sim = ["--similarity_features", "hrnet", "--similarity_methods", "kde", "cosine_threshold0.5", "fractional_mean"]
    common = ["--dataset", "Memento10k", "--data_dir", str(data), "--features_dir", str(features), "--workers", "1"]
    run(parse(GenConfig, [*common, "--features", "hrnet", "similarity", "--smoke_random_weights", *sim]))
    argv = ["--data_dir", str(data), "--features_dir", str(features), "--runs_dir", str(tmp_path / "runs"), "-n", "s",
            "--use_hrnet", "--use_similarity", *sim, "--epochs", "2", "--hidden_channels", "8", "--seed", "0",
            "-s"]  # fmt: skip
    run_training(*parse_explicit(TrainConfig, argv, check=False))
    ckpt = tmp_path / "runs/s/best.pt"
    assert set(torch.load(ckpt, weights_only=True)["fitted"]) == {"similarity_hrnet_f1"}
    run_evaluation(parse(EvalConfig, ["--checkpoint", str(ckpt), "--split", "val"]))
    in_dataset = _predictions(tmp_path / "runs/s/predictions_Memento10k_val_best.csv")
    shutil.rmtree(features)
    mine = tmp_path / "mine"
    mine.mkdir()
    for n in names:
        if n[: -len(".mp4")] in in_dataset:
            shutil.copy(data / "Memento10k/videos" / n, mine / n)
    result = score_videos(parse(EvalConfig, ["--checkpoint", str(ckpt), "--videos", str(mine), "--workers", "1"]))
    scores = read_scores(result["out"])
    assert result["n_scored"] == len(in_dataset) == 4
    for vid, pred in scores.items():
        assert pred == pytest.approx(in_dataset[vid], abs=1e-6)


def test_a_folder_where_nothing_could_be_scored_is_a_failure(trained, tmp_path, monkeypatch, capsys):
    import evaluate
    from core.cli import main_guard

    _, ckpt, _, _ = trained
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    out = tmp_path / "scores.csv"
    argv = ["evaluate.py", "--checkpoint", str(ckpt), "--videos", str(tmp_path), "--out", str(out), "--workers", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as err:
        main_guard(evaluate.main)
    assert err.value.code == 2
    captured = capsys.readouterr()
    assert "scored 0 of 1 videos" in captured.out and "failed broken" in captured.out
    assert f"error: none of the 1 files could be scored (reasons above and in {out})" in captured.err
    (row,) = read_csv(out)
    assert row["id"] == "broken" and row["prediction"] == "" and row["error"].startswith("raw:")  # the reason is kept


def test_folds_refuse_transforms_fitted_on_the_train_split(trained, tmp_path):
    """--folds draws validation folds from the train split, on which the raw store's HOG PCA was fitted: refused
    (cross-validated scores would be optimistic), and raw without hog cross-validates."""
    from pipeline.grid.runner import run_experiment

    tmp, _, _, _ = trained
    features = tmp_path / "features"
    shutil.copytree(tmp / "data", tmp_path / "data")
    run(GenConfig(data_dir=str(tmp_path / "data"), features_dir=str(features), dataset="Memento10k", workers=1))
    argv = ["--data_dir", str(tmp_path / "data"), "--features_dir", str(features), "--runs_dir", str(tmp_path / "r"),
            "-n", "cv", "--use_raw", "--folds", "2", "--epochs", "1", "--hidden_channels", "8",
            "--seeds", "1"]  # fmt: skip
    with pytest.raises(ConfigError, match=r"--folds 2: .* fitted on that split at extraction: raw \(hog_pca\)\. Every"):
        run_experiment(parse(TrainConfig, argv))
    assert not (tmp_path / "r" / "cv").exists()  # refused before any result: the name stays free
    no_hog = ["--raw_features", "brightness", "contrast", "blurriness", "size_orig", "meanOF"]
    summary = run_experiment(parse(TrainConfig, [*argv, *no_hog]))
    assert summary["runs"] == 2 and summary["run_dir"] == str(tmp_path / "r" / "cv")


def test_a_grid_sub_runs_checkpoint_scores_new_videos_and_is_explained(trained, tmp_path):
    """A grid's checkpoints carried no fitted transforms: evaluate.py --videos refused a fresh one ("written before
    checkpoints carried their fitted transforms"). Now a sub-run scores new videos as its in-dataset predictions."""
    from pipeline.grid.runner import run_experiment
    from pipeline.scoring.explain import run_explain

    tmp, _, _, videos = trained
    data, features = tmp_path / "data", tmp_path / "features"
    shutil.copytree(tmp / "data", data)
    run(GenConfig(data_dir=str(data), features_dir=str(features), dataset="Memento10k", workers=1))
    argv = ["--data_dir", str(data), "--features_dir", str(features), "--runs_dir", str(tmp_path / "r"), "-n", "g",
            "--use_raw", "--epochs", "2", "--hidden_channels", "16", "--seeds", "0", "1", "-s"]  # fmt: skip
    run_experiment(parse(TrainConfig, argv))
    sub = tmp_path / "r/g/raw/seed1-fold0"
    in_grid = {r["id"]: float(r["pred_last"]) for r in read_csv(sub / "predictions_val.csv")}
    mine = tmp_path / "mine"
    mine.mkdir()
    for v in videos:
        shutil.copy(v, mine / v.name)
    args = ["--checkpoint", str(sub / "last.pt"), "--videos", str(mine), "--workers", "0"]
    result = score_videos(parse(EvalConfig, args))
    scores = read_scores(result["out"])
    assert result["n_scored"] == len(videos) == 4
    for vid, pred in scores.items():
        assert pred == pytest.approx(in_grid[vid], abs=1e-6)
    explained = run_explain(parse(EvalConfig, ["--checkpoint", str(sub / "last.pt"), "--explain", "--split", "val"]))
    assert explained["explanation"].modules == ["raw"]
