"""Scoring your own videos: raw features of a folder of videos with the HOG PCA fitted on the training dataset,
then evaluate.py on the folder gives exactly the predictions the model gave those videos inside the dataset."""

import csv
import shutil

import pytest

from config import ConfigError, EvalConfig, GenConfig, TrainConfig, parse, parse_explicit
from features.store import FeatureStore, StoreError, Transform
from pipeline.generate import run
from pipeline.run.training import run_training
from pipeline.scoring.evaluate import run_evaluation
from tests.fixtures_video import memento_layout


def _predictions(path):
    with open(path, newline="") as f:
        return {row["id"]: float(row["pred"]) for row in csv.DictReader(f)}


@pytest.mark.slow
def test_folder_of_new_videos_is_scored_like_the_dataset(tmp_path):
    data, features = tmp_path / "data", tmp_path / "features"
    names = memento_layout(data / "Memento10k", 20, n_frames=8)
    run(GenConfig(data_dir=str(data), features_dir=str(features), dataset="Memento10k", workers=1))
    argv = ["--data_dir", str(data), "--features_dir", str(features), "--runs_dir", str(tmp_path / "runs"), "-n", "m",
            "--use_raw", "--epochs", "2", "--hidden_channels", "16", "--seed", "0", "-s"]  # fmt: skip
    run_training(*parse_explicit(TrainConfig, argv, check=False))
    ckpt = str(tmp_path / "runs/m/best.pt")
    run_evaluation(parse(EvalConfig, ["--checkpoint", ckpt, "--split", "val"]))
    in_dataset = _predictions(tmp_path / "runs/m/predictions_Memento10k_val_best.csv")

    mine = tmp_path / "my_videos"
    mine.mkdir()
    for name in names:
        if name[: -len(".mp4")] in in_dataset:
            shutil.copy(data / "Memento10k" / "videos" / name, mine / name)
    folder = ["--dataset", "folder", "--data_dir", str(mine), "--features_dir", str(features)]
    # without --fit_on the folder is its own corpus: 4 videos, too few first frames for 10 components, so the HOG PCA
    # is fitted on their every sampled frame; a later --fit_on into that store would mix two bases and is refused
    run(parse(GenConfig, [*folder, "--workers", "1"]))
    own = FeatureStore.at(features, "folder", "raw").read()
    assert sorted(own.ids) == sorted(in_dataset) and own.features["hog"].shape == (4, 10)
    info = own.transforms["hog_pca"].info
    assert info["n_used"] == 4
    assert info["fitted_on"].startswith("HOG of every sampled frame of the 4 videos it is fitted on")
    with pytest.raises(ConfigError, match="raw: its fitted transforms \\(hog_pca\\) are not the ones"):
        run_evaluation(parse(EvalConfig, ["--checkpoint", ckpt, *folder, "--split", "test"]))  # not the model's basis
    with pytest.raises(StoreError, match="holds videos extracted with another hog_pca .*HOG of every sampled frame"):
        run(parse(GenConfig, [*folder, "--workers", "1", "--fit_on", "Memento10k"]))
    assert (
        FeatureStore.at(features, "folder", "raw").read().transforms["hog_pca"].digest()
        == own.transforms["hog_pca"].digest()
    )
    shutil.rmtree(features / "folder")
    run(parse(GenConfig, [*folder, "--workers", "1", "--fit_on", "Memento10k"]))
    stored = FeatureStore.at(features, "folder", "raw").read()
    assert stored.transforms["hog_pca"].info["adopted_from"] == "Memento10k"
    run_evaluation(parse(EvalConfig, ["--checkpoint", ckpt, *folder, "--split", "test"]))
    new = _predictions(tmp_path / "runs/m/predictions_folder_test_best.csv")
    assert new.keys() == in_dataset.keys() and len(new) == 4
    for vid, pred in new.items():
        assert pred == pytest.approx(in_dataset[vid], abs=1e-6)

    # features computed with another HOG PCA (e.g. fitted on the folder's own videos) are in another basis: refused
    store = FeatureStore.at(features, "folder", "raw")
    pca = stored.transforms["hog_pca"]
    store.set_transform("hog_pca", Transform({k: v * 1.01 for k, v in pca.arrays.items()}, pca.info))
    with pytest.raises(ConfigError, match="raw: its fitted transforms \\(hog_pca\\) are not the ones"):
        run_evaluation(parse(EvalConfig, ["--checkpoint", ckpt, *folder, "--split", "test"]))
