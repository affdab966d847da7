"""End to end over an imported feature table of an official-format dataset: import, train, resume, evaluate."""

import csv
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from config import ROOT, ConfigError, EvalConfig, GenConfig, TrainConfig, parse, parse_explicit
from features.store import FeatureStore
from pipeline.generate import run_import as import_features
from pipeline.run.training import Interrupted, run_training
from pipeline.scoring.evaluate import run_evaluation
from tests.conftest import signal_features


def _import(data_dir, tmp_path, fmt="npz", name="emb"):
    ids, x = signal_features(data_dir)
    path = tmp_path / f"{name}.{fmt}"
    extra = []
    if fmt == "npz":
        np.savez(path, ids=np.array([f"{i}.mp4" for i in ids]), emb=x)
    elif fmt == "npy":
        np.save(path, x)
        (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
        extra = ["--ids", str(tmp_path / "ids.txt")]
    elif fmt == "h5":
        with h5py.File(path, "w") as f:
            f["video"] = np.array(ids, dtype=object).astype("S")
            f["emb"] = x
    elif fmt == "csv":
        lines = ["filename," + ",".join(f"d{k}" for k in range(x.shape[1]))]
        lines += [f"{i}.mp4," + ",".join(f"{v:.8g}" for v in row) for i, row in zip(ids, x, strict=True)]
        path.write_text("\n".join(lines))
    argv = ["--dataset", "Memento10k", "--data_dir", str(data_dir), "--import", str(path), "--name", name, *extra]
    import_features(parse(GenConfig, argv))
    return ids, x


@pytest.mark.parametrize("fmt", ["npz", "npy", "h5", "csv"])
def test_import_formats(memento, tmp_path, fmt):
    ids, x = _import(memento, tmp_path, fmt)
    data = FeatureStore.at(memento / "features", "Memento10k", "emb").read()
    order = np.argsort(ids)
    assert data.ids == sorted(ids) and data.dims == {"emb": x.shape[1]}
    np.testing.assert_allclose(data.features["emb"], x[order], rtol=1e-6)
    assert data.meta["family"] == "import" and len(data.meta["provenance"]["sha256"]) == 64


def test_import_refusals(memento, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 2)))
    base = ["--dataset", "Memento10k", "--data_dir", str(memento), "--name", "emb", "--import"]
    with pytest.raises(ConfigError, match="pass --ids FILE"):
        import_features(parse(GenConfig, [*base, str(tmp_path / "x.npy")]))
    np.savez(tmp_path / "y.npz", ids=np.array(["a", "b"]), emb=np.zeros((2, 2)))
    with pytest.raises(ConfigError, match="none of the 2 ids"):
        import_features(parse(GenConfig, [*base, str(tmp_path / "y.npz")]))
    for name, message in (
        ("raw", "built-in raw tier"),
        ("similarity_hrnet_f1", "built-in similarity tier"),
        ("../x", "use letters"),
    ):
        with pytest.raises(ConfigError, match=message):
            import_features(parse(GenConfig, [*base[:-3], "--name", name, "--import", str(tmp_path / "y.npz")]))


def _train(memento, tmp_path, *extra):
    argv = [
        "--data_dir",
        str(memento),
        "--runs_dir",
        str(tmp_path / "runs"),
        "--extra_features",
        "emb",
        "--seed",
        "3",
        "--epochs",
        "4",
        "--hidden_channels",
        "32",
        "8",
        "--lr",
        "0.01",
        "--batch_size",
        "8",
        *extra,
    ]
    cfg, explicit = parse_explicit(TrainConfig, argv, check=False)
    return run_training(cfg, explicit)


def test_train_learns_writes_run_dir_and_is_reproducible(memento, tmp_path):
    _import(memento, tmp_path)
    a = _train(memento, tmp_path, "-n", "a", "-s")
    _train(memento, tmp_path, "-n", "b")
    assert a["best"]["val_spearman"] > 0.5  # the first column carries the score
    rows = [json.loads(line) for line in (tmp_path / "runs/a/metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(line) for line in (tmp_path / "runs/b/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in rows_b]  # bit for bit
    run = tmp_path / "runs/a"
    for name in (
        "config.yaml",
        "predictions_val.csv",
        "summary.json",
        "best.pt",
        "last.pt",
        "scatter_val.png",
        "histograms_val.png",
        "learning_curves.png",
    ):
        assert (run / name).is_file(), name
    assert not (tmp_path / "runs/b/best.pt").exists()  # no --save, no checkpoint
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["dims"] == {"emb": 6} and ckpt["modules"] == ["emb"] and ckpt["config"]["seed"] == 3
    assert ckpt["epoch"] == a["best"]["epoch"] and ckpt["metrics"]["val_spearman"] == a["best"]["val_spearman"]
    assert ckpt["sources"]["emb"]["dims"] == {"emb": 6} and ckpt["code_version"]
    header = (run / "predictions_val.csv").read_text().splitlines()[0]
    assert header == "id,score,pred_best,pred_last"


@pytest.mark.parametrize("scheduler", ["step", "cosine"])
def test_interrupted_run_resumes_exactly(memento, tmp_path, monkeypatch, scheduler):
    """A run killed during epoch 2 of 4, resumed from its last.pt, ends exactly like an uninterrupted one."""
    from pipeline.run.training import Trainer

    _import(memento, tmp_path)
    sched = ["--scheduler", scheduler, "--scheduler_step_size", "1", "--epochs", "4"]
    straight = _train(memento, tmp_path, "-n", "straight", *sched)
    real_epoch = Trainer.train_epoch

    def killed_at_2(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", killed_at_2)
    with pytest.raises(Interrupted, match="Resume with: .*--checkpoint_local"):  # Ctrl-C: where to resume from
        _train(memento, tmp_path, "-n", "killed", "-s", *sched)
    monkeypatch.setattr(Trainer, "train_epoch", real_epoch)
    cfg, explicit = parse_explicit(
        TrainConfig, ["--checkpoint_local", str(tmp_path / "runs/killed/last.pt")], check=False
    )
    resumed = run_training(cfg, explicit)
    assert resumed["run_dir"] == str(tmp_path / "runs/killed")
    assert resumed["last"]["epoch"] == 3
    for key in ("val_spearman", "val_mse", "train_loss", "lr"):
        assert resumed["last"][key] == straight["last"][key]
    lines = (tmp_path / "runs/killed/metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2, 3]


def test_resume_with_more_epochs(memento, tmp_path):
    """A step schedule extends (its steps go on); a cosine one cannot and is refused with the reason."""
    _import(memento, tmp_path)
    _train(memento, tmp_path, "-n", "step", "-s", "--scheduler_step_size", "1", "--scheduler_gamma", "0.5")
    argv = ["--checkpoint_local", str(tmp_path / "runs/step/last.pt"), "--epochs", "6"]
    run_training(*parse_explicit(TrainConfig, argv, check=False))
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "runs/step/metrics.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(lrs, [0.01 * 0.5**e for e in range(6)])
    _train(memento, tmp_path, "-n", "cos", "-s", "--scheduler", "cosine")
    argv = ["--checkpoint_local", str(tmp_path / "runs/cos/last.pt"), "--epochs", "6"]
    with pytest.raises(ConfigError, match="cosine schedule over 4 epochs; it cannot be stretched to 6"):
        run_training(*parse_explicit(TrainConfig, argv, check=False))


def _csv_columns(path) -> dict[str, list]:
    """A predictions CSV as columns: ids as strings, every other column as floats."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [r[k] if k == "id" else float(r[k]) for r in rows] for k in rows[0]}


def test_evaluate_scores_and_refuses_changed_features(memento, tmp_path):
    _import(memento, tmp_path)
    result = _train(memento, tmp_path, "-n", "e", "-s", "--epochs", "8", "--lr", "0.05")  # best epoch 4, last 7
    assert result["best"]["epoch"] == 4 and result["last"]["epoch"] == 7
    out = run_evaluation(parse(EvalConfig, ["--checkpoint", str(tmp_path / "runs/e/best.pt"), "--split", "all"]))
    assert out["val"]["spearman"] == pytest.approx(result["best"]["val_spearman"], abs=1e-6)
    assert out["test"] == {"n": 10, "n_scored": 0}  # unlabelled test videos are scored, not measured
    assert (tmp_path / "runs/e/predictions_Memento10k_test_best.csv").is_file()
    assert json.loads((tmp_path / "runs/e/metrics_Memento10k_all_best.json").read_text())["val"]["n"] == 20
    # the same predictions the run wrote for its best and its last epoch, and metrics computed here from them
    run_csv = _csv_columns(tmp_path / "runs/e/predictions_val.csv")
    best = _csv_columns(tmp_path / "runs/e/predictions_Memento10k_val_best.csv")
    assert best["id"] == run_csv["id"] and len(best["id"]) == 20
    np.testing.assert_allclose(best["pred"], run_csv["pred_best"], atol=2e-6)
    last = run_evaluation(parse(EvalConfig, ["--checkpoint", str(tmp_path / "runs/e/last.pt"), "--split", "val"]))
    np.testing.assert_allclose(
        _csv_columns(tmp_path / "runs/e/predictions_Memento10k_val_last.csv")["pred"], run_csv["pred_last"], atol=2e-6
    )
    assert np.abs(np.array(run_csv["pred_best"]) - run_csv["pred_last"]).max() > 1e-4  # the test can tell them apart
    pred, true = np.array(best["pred"]), np.array(best["score"])
    rp, rt = (np.argsort(np.argsort(v)).astype(float) for v in (pred, true))
    rp, rt = rp - rp.mean(), rt - rt.mean()
    assert out["val"]["spearman"] == pytest.approx((rp * rt).sum() / np.sqrt((rp**2).sum() * (rt**2).sum()), abs=1e-6)
    assert out["val"]["mse"] == pytest.approx(np.mean((pred - true) ** 2), rel=1e-4) and last["val"]["n_scored"] == 20
    ids, x = signal_features(memento)
    np.savez(tmp_path / "other.npz", ids=np.array(ids), emb=x + 0.01)  # the same kind of features, another file
    gen = ["--dataset", "Memento10k", "--data_dir", str(memento), "--name", "emb", "--overwrite", "--import"]
    import_features(parse(GenConfig, [*gen, str(tmp_path / "other.npz")]))
    assert run_evaluation(parse(EvalConfig, ["--checkpoint", str(tmp_path / "runs/e/best.pt")]))["val"]["n"] == 20
    np.savez(tmp_path / "wide.npz", ids=np.array(ids), emb=np.zeros((len(ids), 9)))
    import_features(
        parse(
            GenConfig,
            [
                "--dataset",
                "Memento10k",
                "--data_dir",
                str(memento),
                "--import",
                str(tmp_path / "wide.npz"),
                "--name",
                "emb",
                "--overwrite",
            ],
        )
    )
    with pytest.raises(ConfigError, match=r"emb dims: checkpoint \{'emb': 6\}, feature store \{'emb': 9\}"):
        run_evaluation(parse(EvalConfig, ["--checkpoint", str(tmp_path / "runs/e/best.pt")]))


def test_wandb_offline_logging(memento, tmp_path, monkeypatch):
    import wandb

    logged = []
    real_log = wandb.sdk.wandb_run.Run.log

    def spy(self, data, *args, **kwargs):
        logged.append(dict(data))
        return real_log(self, data, *args, **kwargs)

    artifacts = []
    real_art = wandb.sdk.wandb_run.Run.log_artifact

    def spy_art(self, art, *args, aliases=None, **kwargs):
        artifacts.append((art.name, art.metadata["epoch"], sorted(aliases)))
        return real_art(self, art, *args, aliases=aliases, **kwargs)

    summary = {}
    real_set = wandb.sdk.wandb_summary.Summary.__setitem__

    def spy_summary(self, key, value):
        summary[key] = value
        return real_set(self, key, value)

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", spy)
    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log_artifact", spy_art)
    monkeypatch.setattr(wandb.sdk.wandb_summary.Summary, "__setitem__", spy_summary)
    _import(memento, tmp_path)
    _train(memento, tmp_path, "-n", "w", "-l", "--group", "g1", "--tags", "t1", "t2", "--epochs", "2")
    expected = {"train_loss", "lr", "val_spearman", "val_kendall", "val_loss", "val_mse", "val_mae", "val_kl", "val_js"}
    assert len(logged) == 2 and all(expected <= set(row) for row in logged)
    assert isinstance(logged[0]["val_pred_hist"], wandb.Histogram)
    assert [row["epoch"] for row in logged] == [1, 2]  # counted from 1, as printed
    best = json.loads((tmp_path / "runs/w/summary.json").read_text())["best"]
    assert summary["best_epoch"] == best["epoch"] + 1 and summary["best_spearman"] == best["val_spearman"]
    assert list((tmp_path / "runs/w/wandb").glob("offline-run-*/run-*.wandb"))
    assert [a[1] for a in artifacts] == [0, 1] and all(a[0].startswith("model-") for a in artifacts)
    assert {"epoch-0", "latest"} <= set(artifacts[0][2]) and {"epoch-1", "latest"} <= set(artifacts[1][2])
    assert sum("best" in a[2] for a in artifacts) >= 1 and (tmp_path / "runs/w/best.pt").exists()
    with pytest.raises(ConfigError, match="needs wandb online"):
        run_training(*parse_explicit(TrainConfig, ["--checkpoint_run_id", "abc123"], check=False))


def test_cli_end_to_end_and_clear_errors(memento, tmp_path):
    _import(memento, tmp_path)
    run = [sys.executable, "train.py", "--data_dir", str(memento), "--runs_dir", str(tmp_path / "runs"), "-n", "cli"]
    ok = subprocess.run(
        [*run, "--extra_features", "emb", "--epochs", "2", "--hidden_channels", "8"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert ok.returncode == 0, ok.stderr
    assert "best epoch" in ok.stdout and "last epoch 2" in ok.stdout and "run directory" in ok.stdout
    bad = subprocess.run([*run, "--use_csn"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2
    assert (
        "ip_csn_152.h5 does not exist" in bad.stderr
        and "gen_features.py --dataset Memento10k --features csn" in bad.stderr
    )


@pytest.mark.parametrize(
    "optimizer, scheduler, expected_lr",
    [
        ("adam", "step", lambda e: 0.01 * 0.5 ** (e // 2)),
        ("adamw", "cosine", lambda e: 0.01 * (1 + np.cos(np.pi * e / 4)) / 2),
        ("sgd", "none", lambda e: 0.01),
    ],
)
def test_optimizers_and_schedules(memento, tmp_path, optimizer, scheduler, expected_lr):
    _import(memento, tmp_path)
    extra = ["-n", optimizer, "--optimizer", optimizer, "--scheduler", scheduler, "--scheduler_gamma", "0.5",
             "--scheduler_step_size", "2"]  # fmt: skip
    _train(memento, tmp_path, *extra)
    rows = [json.loads(line) for line in (tmp_path / f"runs/{optimizer}/metrics.jsonl").read_text().splitlines()]
    np.testing.assert_allclose([r["lr"] for r in rows], [expected_lr(e) for e in range(4)], rtol=1e-9)
    assert all(np.isfinite(r["train_loss"]) for r in rows)


def test_resume_from_a_wandb_artifact(memento, tmp_path, monkeypatch):
    """--checkpoint_run_id / --checkpoint_epoch fetch the artifact model-<run id>:epoch-<N> (faked API: no network);
    the run goes on under its own name in --runs_dir, not in wandb's download cache."""
    import shutil

    import wandb

    _import(memento, tmp_path)
    _train(memento, tmp_path, "-n", "src", "-s", "--epochs", "2")
    asked = []

    class FakeArtifact:
        def download(self):
            folder = tmp_path / "artifact"
            folder.mkdir(exist_ok=True)
            shutil.copy(tmp_path / "runs/src/last.pt", folder / "checkpoint.pt")
            return str(folder)

    class FakeApi:
        def artifact(self, name, type=None):
            asked.append((name, type))
            return FakeArtifact()

    monkeypatch.setattr(wandb, "Api", FakeApi)
    monkeypatch.delenv("WANDB_MODE")
    argv = ["--checkpoint_run_id", "me/m3s/abc123", "--checkpoint_epoch", "1", "--epochs", "3",
            "--runs_dir", str(tmp_path / "runs2")]  # fmt: skip
    result = run_training(*parse_explicit(TrainConfig, argv, check=False))
    assert asked == [("me/m3s/model-abc123:epoch-1", "model")]
    assert result["last"]["epoch"] == 2 and result["run_dir"] == str(tmp_path / "runs2/src")


def test_code_version_runs_git_once(monkeypatch):
    import core.io

    calls = []
    real = core.io.subprocess.run
    monkeypatch.setattr(core.io.subprocess, "run", lambda *a, **k: calls.append(a) or real(*a, **k))
    core.io.code_version.cache_clear()
    first = [core.io.code_version() for _ in range(3)]
    assert len(calls) == 1 and len(set(first)) == 1


def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
    import matplotlib

    from pipeline.run.plots import plot_run

    before = matplotlib.get_backend()
    matplotlib.use("pdf")
    try:
        history = [{"epoch": e, "train_loss": 1 / (e + 1), "val_loss": 1.0, "val_spearman": 0.1, "val_kendall": 0.1}
                   for e in range(3)]  # fmt: skip
        paths = plot_run(tmp_path, history, np.linspace(0.5, 1, 10), np.linspace(0.6, 0.9, 10), "t", 1, "mse")
        assert matplotlib.get_backend() == "pdf" and all(p.stat().st_size > 0 for p in paths)
    finally:
        matplotlib.use(before)
