"""Experiments: seeds x folds x module combinations trained as one batched model, equal to sequential train.py runs;
folds that partition the videos and are reused; the ablation's files; the baselines."""

import csv
import json

import numpy as np
import pytest
import torch

from config import ConfigError, TrainConfig, parse, parse_explicit
from core.io import Interrupted
from model.losses import LOSSES, LossContext
from pipeline.generate import run_import
from pipeline.grid.folds import fold_path, scored_pool
from pipeline.grid.runner import combinations, run_experiment
from pipeline.run.training import run_training
from tests.conftest import signal_features


def _import(data_dir, tmp_path, name, dim, seed):
    from config import GenConfig

    ids, x = signal_features(data_dir, dim=dim, noise=0.3, seed=seed)
    np.savez(tmp_path / f"{name}.npz", ids=np.array(ids), emb=x)
    argv = ["--dataset", "Memento10k", "--data_dir", str(data_dir), "--import", str(tmp_path / f"{name}.npz")]
    run_import(parse(GenConfig, [*argv, "--name", name]))


@pytest.fixture
def two_modules(memento, tmp_path):
    _import(memento, tmp_path, "a", 6, 1)
    _import(memento, tmp_path, "b", 4, 2)
    return memento


def _argv(data_dir, tmp_path, *extra):
    return ["--data_dir", str(data_dir), "--runs_dir", str(tmp_path / "runs"), "--extra_features", "a", "b",
            "--normalize_extra", "--epochs", "3", "--hidden_channels", "16", "8", "--batch_size", "8", "--lr", "0.01",
            "--device", "cpu", *extra]  # fmt: skip


def _grid(data_dir, tmp_path, *extra):
    return run_experiment(parse(TrainConfig, _argv(data_dir, tmp_path, *extra)))


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _preds(path):
    with path.open() as f:
        return np.array([[float(r["pred_best"]), float(r["pred_last"])] for r in csv.DictReader(f)])


@pytest.mark.parametrize(
    "opt",
    [
        ["--optimizer", "adam", "--scheduler", "step", "--scheduler_step_size", "1", "--loss", "mse"],
        ["--optimizer", "adamw", "--scheduler", "cosine", "--loss", "mse_tails"],
        ["--optimizer", "sgd", "--scheduler", "none", "--loss", "mse_to_spearman", "--weight_decay", "0.01"],
    ],
)
def test_batched_grid_equals_sequential_train_py_runs(two_modules, tmp_path, opt):
    """Every (combination, seed) of a batched ablation ends like the ordinary train.py run with those modules and
    that seed: same metrics every epoch and same predictions, up to float summation order."""
    summary = _grid(two_modules, tmp_path, "-n", "grid", "--ablate", "--seeds", "3", "4", *opt)
    assert summary["runs"] == 6 and {r["combination"] for r in summary["rows"]} == {"a", "b", "a+b"}
    worst = 0.0
    for combo in (["a"], ["b"], ["a", "b"]):
        for seed in (3, 4):
            argv = [*_argv(two_modules, tmp_path, *opt), "--seed", str(seed), "-n", f"seq{seed}{''.join(combo)}"]
            argv[argv.index("a") : argv.index("b") + 1] = combo
            ref = run_training(*parse_explicit(TrainConfig, argv, check=False))
            sub = tmp_path / "runs/grid" / f"{'+'.join(combo)}/seed{seed}-fold0"
            got, want = _rows(sub / "metrics.jsonl"), _rows(tmp_path / "runs" / argv[-1] / "metrics.jsonl")
            assert [r["epoch"] for r in got] == [0, 1, 2] and [r["lr"] for r in got] == [r["lr"] for r in want]
            for key in ("train_loss", "val_spearman", "val_mse", "val_loss"):
                diff = max(abs(g[key] - w[key]) for g, w in zip(got, want, strict=True))
                worst = max(worst, diff)
                assert diff < 1e-4, (combo, seed, key, diff)
            pred_diff = np.abs(
                _preds(sub / "predictions_val.csv") - _preds(tmp_path / "runs" / argv[-1] / "predictions_val.csv")
            ).max()
            assert pred_diff < 1e-5, pred_diff
            assert ref["best"]["epoch"] == json.loads((sub / "summary.json").read_text())["best"]["epoch"]
    print(f"largest batched-vs-sequential difference: {worst:.2e}")


def test_folds_partition_are_reused_and_batched_equals_one_by_one(two_modules, tmp_path, monkeypatch):
    import pipeline.grid.batched

    spec = pipeline.grid.batched.RunSpec(seed=1, fold=0, modules=("a", "b"))
    assert pipeline.grid.batched.run_params(spec, {"a": 6, "b": 4}, [16, 8]) == 11 * 16 + 17 * 8 + 9 * 1 == 321
    monkeypatch.setattr(pipeline.grid.batched, "CPU_CHUNK_PARAMS", 700)  # two runs of 321 parameters a chunk, not three
    packed, chunks = [], pipeline.grid.batched.chunks
    monkeypatch.setattr(pipeline.grid.batched, "chunks", lambda *a: packed.append(chunks(*a)) or packed[-1])
    a = _grid(two_modules, tmp_path, "-n", "k3", "--folds", "3", "--seeds", "1", "2")
    assert [len(c) for call in packed for c in call] == [2, 2, 2]  # each chunk one fold's two seeds
    cfg = parse(TrainConfig, _argv(two_modules, tmp_path, "--folds", "3"))
    path = fold_path(cfg)
    assert path.parent == two_modules / "Memento10k" and path.name == "m3s_folds_k3_seed0.json"
    folds = json.loads(path.read_text())["folds"]
    from dataset import load_records

    pool = sorted(r.id for r in scored_pool(load_records("Memento10k", cfg)))
    assert sorted(i for f in folds for i in f) == pool  # every scored train+val video in exactly one fold
    assert sorted(len(f) for f in folds) == [26, 27, 27]
    path.write_text(json.dumps({"folds": [folds[1], folds[0], folds[2]]}))  # reused as written, not redrawn
    written = (path.stat().st_ino, path.read_bytes())
    b = _grid(two_modules, tmp_path, "-n", "k3b", "--folds", "3", "--seeds", "1", "2", "--no-batched")
    assert (path.stat().st_ino, path.read_bytes()) == written  # not even rewritten with the same folds
    sizes = [len(f) for f in folds]
    assert a["runs"] == b["runs"] == 6 and a["n_val"] == sizes and b["n_val"] == [sizes[1], sizes[0], sizes[2]]
    # the same fold (fold 0 of a = fold 1 of b) trained batched and one by one through the ordinary Trainer
    got = _rows(tmp_path / "runs/k3/a+b/seed2-fold0/metrics.jsonl")
    want = _rows(tmp_path / "runs/k3b/a+b/seed2-fold1/metrics.jsonl")
    assert max(abs(g["val_spearman"] - w["val_spearman"]) for g, w in zip(got, want, strict=True)) < 1e-4
    assert (tmp_path / "runs/k3b/a+b/seed2-fold1/learning_curves.png").is_file()  # the ordinary run directory
    row = a["rows"][0]
    assert row["last"]["n"] == 6 and row["ensemble"]["n"] == 3 and len(row["runs"]) == 6
    path.write_text(json.dumps({"folds": [folds[0]]}))
    with pytest.raises(ConfigError, match=f"^{path} was written for another set of videos than Memento10k's 80 "):
        _grid(two_modules, tmp_path, "--folds", "3")


def test_folds_are_a_seeded_shuffled_partition_of_the_sorted_ids():
    from pipeline.grid.folds import make_folds

    ids = [f"v{i:03d}" for i in range(23)]
    folds = make_folds(ids[::-1], 4, seed=5)
    assert folds == make_folds(ids, 4, seed=5)  # drawn from the sorted ids: the input order does not matter
    flat = [i for f in folds for i in f]
    assert sorted(flat) == ids and len(set(flat)) == 23  # disjoint and covering
    assert sorted(len(f) for f in folds) == [5, 6, 6, 6] and all(f == sorted(f) for f in folds)
    assert make_folds(ids, 4, seed=6) != folds  # the seed draws them
    gaps = [max(np.diff([ids.index(i) for i in f])) for f in folds]
    assert min(gaps) > 1  # shuffled: no fold is a block of neighbours in sorted order (Memento sorts by action)


def test_each_fold_is_normalised_with_its_own_train_videos(two_modules, tmp_path):
    """Against numpy on the stores: fold f's val videos are its own, its statistics are the mean and std of every
    other pooled video (train and val splits, never test), and both halves are scaled with them."""
    from dataset import load_records
    from features.store import FeatureStore
    from pipeline.grid.folds import fold_data, load_or_make_folds

    cfg = parse(TrainConfig, _argv(two_modules, tmp_path, "--folds", "3"))
    records = load_records("Memento10k", cfg)
    folds = load_or_make_folds(cfg, records)
    data, dims, _, _ = fold_data(cfg, records, folds, torch.device("cpu"))
    assert dims == {"a": 6, "b": 4} and len(data) == 3
    stored = {m: FeatureStore.at(two_modules / "features", "Memento10k", m).read() for m in ("a", "b")}
    pool = sorted(r.id for r in records if r.split in ("train", "val"))
    score = {r.id: r.score for r in records}
    for fold, d in zip(folds, data, strict=True):
        assert d.val_ids == [r.id for r in records if r.id in set(fold)]  # in the dataset's order
        assert sorted(d.train_ids) == sorted(set(pool) - set(fold)) and len(d.train_ids) == 80 - len(fold)
        np.testing.assert_allclose(d.y_val.numpy(), [score[i] for i in d.val_ids], rtol=1e-6)
        for m, st in stored.items():
            row = {v: k for k, v in enumerate(st.ids)}
            (x,) = (v.astype(np.float64) for v in st.features.values())
            train, val = x[[row[i] for i in d.train_ids]], x[[row[i] for i in d.val_ids]]
            mean, std = train.mean(0), train.std(0)
            np.testing.assert_allclose(d.stats[m]["mean"].numpy(), mean, rtol=1e-5)
            np.testing.assert_allclose(d.stats[m]["std"].numpy(), std, rtol=1e-5)
            np.testing.assert_allclose(d.x_train[m].numpy(), (train - mean) / std, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(d.x_val[m].numpy(), (val - mean) / std, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_ablation_and_baselines_write_their_files(two_modules, tmp_path, capsys):
    import subprocess
    import sys

    from config import ROOT

    argv = _argv(two_modules, tmp_path, "-n", "abl", "--ablate", "--seeds", "1", "2", "--baselines", "-s")
    out = subprocess.run([sys.executable, "train.py", *argv], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    run = tmp_path / "runs/abl"
    for name in ("summary.json", "ablation.csv", "ablation.md", "ablation.png", "config.yaml"):
        assert (run / name).is_file(), name
    with (run / "ablation.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["combination"], r["model"]) for r in rows) == sorted(
        (c, m) for c in ("a", "b", "a+b") for m in ("mlp", "ridge", "svr")
    )
    ensembles = [float(r["ensemble_mean"]) for r in rows]
    assert ensembles == sorted(ensembles, reverse=True)  # sorted by the seed ensemble (the headline number)
    summary = json.loads((run / "summary.json").read_text())
    mlp = next(r for r in summary["rows"] if r["model"] == "mlp" and r["combination"] == "a+b")
    assert [r["seed"] for r in mlp["runs"]] == [1, 2] and mlp["best"]["mean"] >= mlp["last"]["mean"] - 1e-12
    assert "| combination | model |" in out.stdout and "seed ensemble" in out.stdout
    svr = next(r for r in summary["rows"] if r["model"] == "svr" and r["combination"] == "a+b")
    paired = svr["head_minus_this"]  # the head's seed ensemble minus the baseline's, on the same val videos
    assert paired["diff"] == pytest.approx(mlp["ensemble"]["mean"] - svr["ensemble"]["mean"], abs=1e-9)
    assert paired["ci95"][0] <= paired["diff"] <= paired["ci95"][1] and "head_minus_this" not in mlp
    assert "mlp minus this, 95 % CI (paired bootstrap)" in out.stdout
    again = parse(TrainConfig, ["--config", str(run / "a+b/seed1-fold0/config.yaml")])  # reruns that one run
    assert (again.seed, again.extra_features, again.grid()) == (1, ["a", "b"], False)
    ckpt = torch.load(run / "a+b/seed1-fold0/last.pt", weights_only=True)
    assert ckpt["dims"] == {"a": 6, "b": 4} and ckpt["config"]["seed"] == 1 and not ckpt["config"]["ablate"]
    from config import EvalConfig
    from pipeline.scoring.evaluate import run_evaluation

    scored = run_evaluation(parse(EvalConfig, ["--checkpoint", str(run / "a+b/seed1-fold0/last.pt")]))
    assert scored["val"]["spearman"] == pytest.approx(mlp["runs"][0]["last_spearman"], abs=1e-5)


def test_combinations():
    assert combinations(["raw", "hrnet", "csn", "similarity"])[:5] == [
        ("raw",),
        ("hrnet",),
        ("csn",),
        ("similarity",),
        ("raw", "hrnet"),
    ]
    assert len(combinations(["raw", "hrnet", "csn", "similarity"])) == 15


def _numpy_loss(name: str, p: np.ndarray, t: np.ndarray, mean: float, epoch: int, epochs: int) -> float | None:
    """The closed-form losses written out in numpy, one run's batch at a time (None: no closed form here)."""
    if name == "mse":
        return float(((p - t) ** 2).mean())
    if name == "l1":
        return float(np.abs(p - t).mean())
    if name == "mse_tails":
        w = 1 + 2.0 * np.abs(t - mean) ** 4.0
        return float((w / w.mean() * (p - t) ** 2).mean())
    return None


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_one_loss_registry_serves_a_run_and_a_grid_of_runs(name):
    """model.losses over (R, B), with each run's train mean as an (R, 1) context, is R losses: each the loss of that
    run's batch alone (B,) with its mean as a float, and the closed-form ones equal numpy's (the batched grid and
    the single Trainer share this one registry: there is no second copy to drift)."""
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.rand(3, 16, generator=gen), torch.rand(3, 16, generator=gen)
    means = torch.tensor([[0.4], [0.5], [0.6]])
    got = LOSSES[name](pred, target, LossContext(2, 5, means, 4.0, 2.0))
    assert got.shape == (3,)
    for r in range(3):
        one = LOSSES[name](pred[r], target[r], LossContext(2, 5, float(means[r]), 4.0, 2.0))
        assert one.shape == () and float(got[r]) == pytest.approx(float(one), rel=1e-5, abs=1e-7)
        ref = _numpy_loss(name, pred[r].double().numpy(), target[r].double().numpy(), float(means[r]), 2, 5)
        if ref is not None:
            assert float(got[r]) == pytest.approx(ref, rel=1e-5)
    if name == "mse_to_spearman":  # a = epoch / (epochs - 1) = 0.5 of the way from MSE to the Spearman loss
        both = 0.5 * LOSSES["mse"](pred, target, LossContext()) + 0.5 * LOSSES["spearman"](pred, target, LossContext())
        torch.testing.assert_close(got, both)


def test_killed_search_resumes(two_modules, tmp_path, monkeypatch):
    """--search N: a search killed during its second trial, run again, keeps the finished trial and runs only the
    missing ones; the study is in SQLite in the run directory; the best values become a config."""
    import optuna

    from pipeline.grid.runner import Grid
    from pipeline.grid.search import run_search

    space = tmp_path / "space.yaml"
    space.write_text(
        "lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}\n"
        "hidden_channels: {type: categorical, choices: [[16, 8], [8]]}\n"
    )
    argv = _argv(two_modules, tmp_path, "-n", "s", "--search", "3", "--seeds", "1", "2", "--search_space", str(space))
    real_train, calls = Grid.train, []

    def killed_in_second_trial(self, cfg=None, on_epoch=None):
        calls.append(cfg.lr)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(self, cfg, on_epoch)

    monkeypatch.setattr(Grid, "train", killed_in_second_trial)
    with pytest.raises(Interrupted, match=r"interrupted: 1 of 3 trials are finished in sqlite:.*run the same command"):
        run_search(parse(TrainConfig, argv))
    trained = []  # each later trial's run results, as the grid returned them

    def recorded(self, cfg=None, on_epoch=None):
        trained.append(real_train(self, cfg, on_epoch))
        return trained[-1]

    monkeypatch.setattr(Grid, "train", recorded)
    db = tmp_path / "runs/s/search.db"
    assert db.is_file()
    first = optuna.load_study(study_name="s", storage=f"sqlite:///{db}").trials[0]
    summary = run_search(parse(TrainConfig, argv))
    states = [t["state"] for t in summary["trials"]]
    assert states.count("COMPLETE") + states.count("PRUNED") == 3 and states[1] == "FAIL"  # the killed trial
    assert len(trained) == 2 and [len(r) for r in trained] == [2, 2]
    for t, results in zip(summary["trials"][2:], trained, strict=True):  # its value: the seeds' mean last-epoch rho
        last = [r.history[-1]["val_spearman"] for r in results]
        best = [r.best["val_spearman"] for r in results]
        assert t["best_epoch_spearman"] == pytest.approx(np.mean(best))
        assert t["state"] == "PRUNED" or t["value"] == pytest.approx(np.mean(last))
    complete = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
    assert summary["best"]["number"] == max(complete, key=lambda t: t["value"])["number"]
    assert summary["best"]["value"] == max(t["value"] for t in complete)
    assert summary["trials"][0]["value"] == first.value and summary["trials"][0]["params"] == first.params
    assert summary["trials"][0]["runs"] == 2  # scored over both seeds
    best = parse(TrainConfig, ["--config", str(tmp_path / "runs/s/best_config.yaml")])
    assert best.search == 0 and best.lr == summary["best"]["values"]["lr"] and best.hidden_channels in ([16, 8], [8])
    again = run_search(parse(TrainConfig, argv))  # nothing missing: no new trial
    assert len(again["trials"]) == len(summary["trials"])
