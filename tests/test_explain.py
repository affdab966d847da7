"""``evaluate.py --explain``: per-module contributions. A model trained on the raw tier (which the scores depend on)
plus an imported module of pure noise must put raw on top and the noise near zero, by all three measures."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from config import ROOT, EvalConfig, GenConfig, TrainConfig, parse, parse_explicit
from features.store import FeatureStore
from model.mlp import ModularMLP
from pipeline.generate import run, run_import
from pipeline.run.training import run_training
from pipeline.scoring.explain import gradient_x_input, module_slices, run_explain
from tests.fixtures_video import memento_layout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explain")
    data, features = tmp / "data", tmp / "features"
    root = data / "Memento10k"
    memento_layout(root, 60, n_frames=6)
    run(GenConfig(data_dir=str(data), features_dir=str(features), dataset="Memento10k", workers=2))
    raw = FeatureStore.at(features, "Memento10k", "raw").read()
    col = {n: raw.features[n][:, 0] for n in ("brightness", "meanOF")}
    z = {n: (v - v.mean()) / v.std() for n, v in col.items()}
    signal = dict(zip(raw.ids, np.clip(0.6 + 0.12 * (z["brightness"] + z["meanOF"]), 0.05, 0.95), strict=True))
    for split in ("train", "val"):  # the scores depend on the raw features only
        path = root / f"memento_{split}_data.json"
        recs = json.loads(path.read_text())
        for r in recs:
            r["mem_score"] = float(signal[r["filename"][: -len(".mp4")]])
        path.write_text(json.dumps(recs))
    rng = np.random.default_rng(1)
    np.savez(tmp / "noise.npz", ids=np.array(raw.ids), noise=rng.normal(size=(len(raw.ids), 8)))
    common = ["--data_dir", str(data), "--features_dir", str(features)]
    noise = ["--dataset", "Memento10k", "--import", str(tmp / "noise.npz"), "--name", "noise"]
    run_import(parse(GenConfig, [*common, *noise]))
    argv = [*common, "--runs_dir", str(tmp / "runs"), "-n", "rn", "--use_raw", "--extra_features", "noise", "-s",
            "--epochs", "60", "--batch_size", "4", "--hidden_channels", "32", "--seed", "0", "--lr", "0.01",
            "--scheduler", "none", "--optimizer", "adamw", "--weight_decay", "0.3"]  # fmt: skip
    run_training(*parse_explicit(TrainConfig, argv, check=False))
    return tmp


@pytest.mark.slow
def test_raw_on_top_and_noise_near_zero(trained):
    result = run_explain(parse(EvalConfig, ["--checkpoint", str(trained / "runs/rn/last.pt"), "--explain"]))
    e = result["explanation"]
    assert e.modules == ["raw", "noise"] and e.rho > 0.5
    assert e.mean_drop["raw"] > 0.3 and e.perm_drop["raw"] > 0.3
    assert abs(e.mean_drop["noise"]) < 0.1 and abs(e.perm_drop["noise"]) < 0.1
    # Gradient x input credits what the network passes on, learnt or not: the noise inputs keep weights of about their
    # initial size (decoupled weight decay shrinks them slowly), so their share stays well above zero (24 % here)
    # even though the predictions' ranking owes them nothing (both drops ~0). Raw must still dominate it.
    assert e.grad_share["raw"] > 2 * e.grad_share["noise"]
    out = trained / "runs/rn/explain_Memento10k_val_last"
    assert result["out_dir"] == str(out) and result["thumbnails"]
    with open(out / "explain.csv", newline="") as f:
        assert [r["module"] for r in csv.DictReader(f)] == ["raw", "noise"]
    with open(out / "examples.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["kind"] for r in rows] == ["best"] * 5 + ["worst"] * 5 and "contribution_noise" in rows[0]
    assert "| raw |" in (out / "explain.md").read_text()
    for png in ("explain.png", "examples.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_explain_command_prints_the_modules(trained):
    cmd = [sys.executable, str(ROOT / "evaluate.py"), "--checkpoint", str(trained / "runs/rn/best.pt"), "--explain",
           "--split", "train", "--out_dir", str(trained / "elsewhere")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "  raw: +" in proc.stdout and (trained / "elsewhere/explain_Memento10k_train_best/explain.md").is_file()
    bad = subprocess.run([*cmd[:4], "--explain", "--split", "test"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--explain needs scored videos" in bad.stderr


def test_gradient_x_input_is_the_first_order_change_of_the_prediction():
    torch.manual_seed(0)
    model = ModularMLP({"a": 2, "b": 3}, [4])
    base = torch.randn(1, 5)
    x = base + 1e-3 * torch.randn(6, 5)  # close enough to the baseline for the first-order term to dominate
    gxi = gradient_x_input(model, x, base)
    with torch.no_grad():
        change = model(x) - model(base)
    torch.testing.assert_close(gxi.sum(dim=1), change, rtol=1e-2, atol=1e-7)
    assert module_slices({"a": 2, "b": 3}) == {"a": slice(0, 2), "b": slice(2, 5)}


def test_explain_numbers_on_a_model_that_ignores_one_module():
    """Fast, on a crafted model whose first layer gives module b no weight: b's drops and share are exactly 0; a set
    to its train mean leaves every prediction equal (no ranking: the drop is the whole rho); a's contributions are
    its finite-difference gradient times its distance to the train mean."""
    from pipeline.run.table import SplitData
    from pipeline.scoring.explain import explain

    torch.manual_seed(0)
    model = ModularMLP({"a": 2, "b": 3}, [8]).double()
    with torch.no_grad():
        model.net[0].weight[:, 2:] = 0
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 5, generator=g, dtype=torch.float64)
    with torch.no_grad():
        pred = model(x)
    y = pred + 0.02 * torch.randn(30, generator=g, dtype=torch.float64)  # truth close to the prediction: rho high
    train_mean = torch.randn(5, generator=g, dtype=torch.float64)
    e = explain(model, SplitData([f"v{i}" for i in range(30)], x, y), train_mean, repeats=3, seed=0)
    rp, ry = (np.argsort(np.argsort(v.numpy())).astype(float) for v in (pred, y))
    rp, ry = rp - rp.mean(), ry - ry.mean()
    assert e.rho == pytest.approx((rp * ry).sum() / np.sqrt((rp**2).sum() * (ry**2).sum()), rel=1e-9) and e.rho > 0.8
    assert e.mean_drop["b"] == e.perm_drop["b"] == e.perm_std["b"] == 0.0 and e.grad_share["b"] == 0.0
    assert e.mean_drop["a"] == pytest.approx(e.rho) and e.grad_share["a"] == 1.0 and e.perm_drop["a"] > 0.5 * e.rho
    h, want = 1e-5, np.zeros(30)
    for j in (0, 1):
        step = torch.zeros(5, dtype=torch.float64)
        step[j] = h
        with torch.no_grad():
            slope = (model(x + step) - model(x - step)) / (2 * h)
        want += (slope * (x[:, j] - train_mean[j])).numpy()
    np.testing.assert_allclose(e.contributions[:, 0], want, rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(e.contributions[:, 1], 0.0)
    np.testing.assert_allclose(e.pred, pred.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(e.true, y.numpy())
