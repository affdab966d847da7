"""Honest run records: a run never replaces another's directory, a resume never claims settings it did not train
with, config.yaml says where the data was, evaluate.py's files name their checkpoint, smoke stores are flagged."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from config import ROOT, ConfigError, EvalConfig, GenConfig, TrainConfig, parse, parse_explicit
from pipeline.generate import run_import
from pipeline.run.table import FeatureTable
from pipeline.run.training import run_training
from pipeline.scoring.evaluate import run_evaluation
from tests.conftest import signal_features


def _setup(memento, tmp_path):
    ids, x = signal_features(memento)
    np.savez(tmp_path / "emb.npz", ids=np.array(ids), emb=x)
    run_import(parse(GenConfig, ["--dataset", "Memento10k", "--data_dir", str(memento), "--import",
                                 str(tmp_path / "emb.npz"), "--name", "emb"]))  # fmt: skip
    return ["--data_dir", str(memento), "--extra_features", "emb", "--runs_dir", str(tmp_path / "runs"),
            "--epochs", "2", "--hidden_channels", "8", "--seed", "0", "-s"]  # fmt: skip


def _train(argv):
    return run_training(*parse_explicit(TrainConfig, argv, check=False))


def test_a_second_run_of_the_same_name_gets_its_own_directory(memento, tmp_path, capsys):
    argv = _setup(memento, tmp_path)
    first = _train([*argv, "-n", "demo"])
    second = _train([*argv, "-n", "demo", "--lr", "0.01"])
    assert first["run_dir"].endswith("runs/demo") and second["run_dir"].endswith("runs/demo-2")
    assert "runs/demo holds another run; this one is" in capsys.readouterr().out
    saved = yaml.safe_load((tmp_path / "runs/demo/config.yaml").read_text())
    assert saved["lr"] == 0.001 and saved["data_dir"] == str(memento)  # the resolved roots, not ''
    assert saved["features_dir"] == str(memento / "features")
    assert json.loads((tmp_path / "runs/demo/summary.json").read_text())["smoke_stores"] == []


def test_resume_refuses_flags_that_cannot_apply(memento, tmp_path):
    argv = _setup(memento, tmp_path)
    _train([*argv, "-n", "r"])
    last = str(tmp_path / "runs/r/last.pt")
    with pytest.raises(ConfigError, match="--lr 0.1 differs from the checkpoint's 0.001.*training settings"):
        _train(["--checkpoint_local", last, "--lr", "0.1"])
    assert yaml.safe_load((tmp_path / "runs/r/config.yaml").read_text())["lr"] == 0.001  # not rewritten
    resumed = _train(["--checkpoint_local", last, "--epochs", "3"])  # extending a step schedule is fine
    assert resumed["last"]["epoch"] == 2 and resumed["run_dir"].endswith("runs/r")


def test_evaluate_files_name_their_checkpoint_and_unscored_splits_say_so(memento, tmp_path):
    argv = _setup(memento, tmp_path)
    _train([*argv, "-n", "e"])
    for ckpt in ("best", "last"):
        run_evaluation(parse(EvalConfig, ["--checkpoint", str(tmp_path / f"runs/e/{ckpt}.pt")]))
        assert (tmp_path / f"runs/e/predictions_Memento10k_val_{ckpt}.csv").is_file()
        assert (tmp_path / f"runs/e/metrics_Memento10k_val_{ckpt}.json").is_file()
    proc = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--checkpoint", str(tmp_path / "runs/e/best.pt"),
                           "--split", "test"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and "unscored: predictions only, no metrics" in proc.stdout


def test_smoke_stores_are_flagged_on_screen_and_in_the_summary(memento, tmp_path, monkeypatch, capsys):
    argv = _setup(memento, tmp_path)
    real = FeatureTable.build.__func__

    def smoke_build(cls, *args, **kwargs):
        table = real(cls, *args, **kwargs)
        table.sources["emb"]["smoke"] = True  # as a store extracted with --smoke_random_weights is
        return table

    monkeypatch.setattr(FeatureTable, "build", classmethod(smoke_build))
    _train([*argv, "-n", "s"])
    assert "warning: emb hold SMOKE features" in capsys.readouterr().out
    assert json.loads((tmp_path / "runs/s/summary.json").read_text())["smoke_stores"] == ["emb"]


def test_reimporting_under_a_taken_name_needs_overwrite(memento, tmp_path):
    _setup(memento, tmp_path)
    again = [
        "--dataset",
        "Memento10k",
        "--data_dir",
        str(memento),
        "--import",
        str(tmp_path / "emb.npz"),
        "--name",
        "emb",
    ]
    with pytest.raises(ConfigError, match=r"emb.h5 already holds features named 'emb' \(imported from emb.npz\); pass "
                       "--overwrite"):  # fmt: skip
        run_import(parse(GenConfig, again))
    run_import(parse(GenConfig, [*again, "--overwrite"]))


def test_dbscan_finding_no_cluster_is_a_warning(capsys):
    from features.similarity import METHODS, Space

    train = np.random.default_rng(0).normal(size=(40, 3))
    arrays = METHODS["dbscan"].fit(train, Space("hrnet", "hrnet_f1", "hrnet", 1e-6, "cmd"), seed=0)
    assert int(arrays["n_columns"][0]) == 1
    assert (
        "DBSCAN (eps 1e-06) found no cluster (every train video is noise) in the hrnet space" in capsys.readouterr().out
    )
