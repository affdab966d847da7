"""The training loop itself, on an in-memory feature table (no dataset, no files): what an epoch computes, how the
best epoch is chosen and kept, what a checkpoint holds, how a run resumes, and the messages it prints."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from config import ConfigError, GenConfig, TrainConfig, parse, parse_explicit
from core.rundir import free_run_name
from dataset import load_records
from model.losses import LOSSES, LossContext
from model.mlp import ModularMLP
from pipeline.generate import run_import as import_features
from pipeline.run import loop, training
from pipeline.run.checkpoint import save_checkpoint
from pipeline.run.table import FeatureTable, SplitData
from pipeline.run.training import (
    Trainer,
    interrupted_message,
    make_optimizer,
    make_scheduler,
    predict,
    resolve_resume,
    run_lines,
    run_training,
    seed_everything,
    set_threads,
)
from tests.test_train import _import, _train


def make_table(n_train: int = 45, n_val: int = 20, dim: int = 4, seed: int = 0) -> FeatureTable:
    """A learnable task: y is a squashed linear function of x, plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, generator=g)

    def split(n: int, prefix: str) -> SplitData:
        x = torch.randn(n, dim, generator=g)
        y = torch.sigmoid(x @ w + 0.1 * torch.randn(n, generator=g))
        return SplitData([f"{prefix}{i}" for i in range(n)], x, y)

    stats = {"emb": {"mean": torch.zeros(dim), "std": torch.ones(dim)}}
    sources = {"emb": {"tier": "imported", "features": ["emb"], "settings": {}, "smoke": False}}
    return FeatureTable(["emb"], {"emb": dim}, {"train": split(n_train, "t"), "val": split(n_val, "v")}, stats,
                        sources)  # fmt: skip


def make_cfg(**kw) -> TrainConfig:
    base = {"extra_features": ["emb"], "seed": 3, "epochs": 3, "batch_size": 8, "hidden_channels": [6], "lr": 0.01}
    return TrainConfig(**(base | kw))


class Recorder:
    """A RunLogger stand-in that keeps every call."""

    def __init__(self) -> None:
        self.rows, self.checkpoints, self.finished = [], [], None

    def epoch(self, row, pred, true):
        self.rows.append((dict(row), pred.copy(), true.copy()))

    def checkpoint(self, state, is_best):
        self.checkpoints.append((state, is_best))

    def finish(self, history, best, val, best_pred, last_pred):
        self.finished = (list(history), dict(best), val, best_pred.copy(), last_pred.copy())


def last_state(table: FeatureTable | None = None, **kw) -> tuple[Trainer, dict]:
    """A short saved run (2 epochs unless ``epochs=``) on ``table``: its trainer and the state of its last epoch."""
    trainer, log = Trainer(make_cfg(**({"epochs": 2, "save": True} | kw)), table or make_table(), "cpu"), Recorder()
    trainer.fit(log)
    return trainer, log.checkpoints[-1][0]


def _scripted(trainer: Trainer, scores: list[float]) -> list[dict]:
    """Make ``trainer``'s val Spearman of each epoch the next of ``scores``; returns the model's weights at each."""
    real, it, weights = trainer.evaluate, iter(scores), []

    def evaluate(split):
        metrics, pred = real(split)
        weights.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        return metrics | {"spearman": next(it)}, pred

    trainer.evaluate = evaluate
    return weights


def test_seed_everything_seeds_python_numpy_and_torch():
    seed = 3 * 2**32 + 5  # numpy takes it modulo 2**32 (it refuses seeds of 2**32 and more)
    seed_everything(seed)
    drawn = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    assert drawn == (random.random(), np.random.rand(), torch.rand(1).item())


def test_threads_follow_the_flag_or_the_size_of_a_step(monkeypatch):
    monkeypatch.setattr(training, "available_cores", lambda: 4)
    before = torch.get_num_threads()
    try:
        assert set_threads(make_cfg(threads=3)) == 3 and torch.get_num_threads() == 3
        assert set_threads(make_cfg(batch_size=32)) == 1
        assert set_threads(make_cfg(batch_size=32), runs=64) == 2  # 2048 rows a step
        assert set_threads(make_cfg(batch_size=1024), runs=9) == 4  # never more than the cores
        assert set_threads(make_cfg(batch_size=1023)) == 1
        assert set_threads(make_cfg(batch_size=1024)) == 1 and set_threads(make_cfg(batch_size=1024), runs=2) == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_optimizers_get_every_hyper_parameter(name):
    cfg = make_cfg(optimizer=name, lr=0.02, weight_decay=0.003, momentum=0.7)
    opt = make_optimizer(cfg, ModularMLP({"emb": 2}, [3]).parameters())
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[name]
    group = opt.param_groups[0]
    assert type(opt) is kind and (group["lr"], group["weight_decay"], group["fused"]) == (0.02, 0.003, True)
    if name == "sgd":
        assert group["momentum"] == 0.7


@pytest.mark.parametrize(
    ("scheduler", "lrs"),
    [
        ("step", [0.1, 0.1, 0.05, 0.05, 0.025]),
        ("cosine", [0.1 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(5)]),
        ("none", [0.1] * 5),
    ],
)
def test_schedules_over_epochs(scheduler, lrs):
    cfg = make_cfg(scheduler=scheduler, lr=0.1, scheduler_step_size=2, scheduler_gamma=0.5, epochs=4)
    opt = torch.optim.SGD(ModularMLP({"emb": 2}, [3]).parameters(), lr=0.1)
    sched = make_scheduler(cfg, opt)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx(lrs)


def test_predict_in_chunks_equals_one_pass_in_eval_mode():
    model = ModularMLP({"emb": 3}, [4]).train()
    x = torch.randn(10, 3)
    whole = model(x).detach().numpy()
    out = predict(model, x, batch=3)
    assert out.dtype == np.float32 and out.shape == (10,) and not model.training
    np.testing.assert_allclose(out, whole, rtol=1e-6)
    np.testing.assert_allclose(predict(model, x), whole, rtol=1e-6)


def test_a_table_without_train_or_val_is_refused():
    table = make_table()
    del table.splits["val"]
    with pytest.raises(ConfigError) as err:
        Trainer(make_cfg(dataset="VideoMem"), table, torch.device("cpu"))
    assert str(err.value) == "VideoMem needs scored train and val videos; found splits ['train']"
    table = make_table()
    del table.splits["train"]
    with pytest.raises(ConfigError, match=r"found splits \['val'\]"):
        Trainer(make_cfg(), table, torch.device("cpu"))


def test_an_unseeded_run_draws_and_records_a_seed(monkeypatch):
    monkeypatch.setattr(training.os, "urandom", lambda n: bytes(range(7, 7 + n)))
    cfg = make_cfg(seed=None)
    Trainer(cfg, make_table(), torch.device("cpu"))
    assert cfg.seed == int.from_bytes(bytes([7, 8, 9, 10]), "little")  # 32 bits, little-endian


def test_the_loss_context_holds_the_train_mean_and_the_schedule():
    table = make_table()
    trainer = Trainer(make_cfg(epochs=5, mse_tails_pow=3.0, mse_tails_mult_fact=1.5), table, torch.device("cpu"))
    ctx = trainer.ctx
    assert (ctx.epoch, ctx.epochs, ctx.tails_pow, ctx.tails_mult) == (0, 5, 3.0, 1.5)
    assert ctx.train_mean == pytest.approx(float(table.splits["train"].y.double().mean()), rel=1e-12)
    assert ctx.train_mean != pytest.approx(float(table.splits["val"].y.double().mean()), rel=1e-3)


def test_an_epoch_returns_the_mean_loss_over_samples_and_steps_the_schedule():
    """With a vanishing lr the model does not move, so the epoch's loss is the plain MSE over all train samples,
    whatever the batch split (45 = 5 x 8 + 5: a last, smaller batch weighs less)."""
    table = make_table()
    trainer = Trainer(make_cfg(optimizer="sgd", momentum=0.0, lr=1e-30, scheduler_step_size=1), table, "cpu")
    train = table.splits["train"]
    with torch.no_grad():
        expected = float(((trainer.model(train.x) - train.y) ** 2).mean())
    assert trainer.train_epoch(2) == pytest.approx(expected, rel=1e-5)
    assert trainer.model.training and trainer.ctx.epoch == 2
    assert trainer.opt.param_groups[0]["lr"] == pytest.approx(1e-30 * 0.2)


def test_an_epoch_visits_every_train_video_once_per_epoch_in_seeded_order():
    table = make_table()
    trainer = Trainer(make_cfg(batch_size=8), table, "cpu")
    seen = []
    trainer.loss_fn = lambda pred, y, ctx: (seen.append(y.clone()), ((pred - y) ** 2).mean())[1]
    trainer.train_epoch(0)
    order = torch.randperm(45, generator=torch.Generator().manual_seed(3))
    assert [len(b) for b in seen] == [8] * 5 + [5]
    torch.testing.assert_close(torch.cat(seen), table.splits["train"].y[order])


def _ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x)).astype(np.float64)  # no ties in continuous data


@pytest.mark.parametrize("loss", ["l1", "mse_tails"])
def test_evaluate_scores_the_split_and_its_loss(loss):
    """Against numbers computed here: the model applied to the split in its order, Spearman as the Pearson
    correlation of ranks, the loss written out with the train split's mean."""
    table = make_table()
    trainer = Trainer(make_cfg(loss=loss), table, "cpu")
    val, train_y = table.splits["val"], table.splits["train"].y.double().numpy()
    metrics, pred = trainer.evaluate(val)
    with torch.no_grad():
        want = trainer.model(val.x).double().numpy()
    y = val.y.double().numpy()
    np.testing.assert_allclose(pred, want, rtol=1e-6)
    rp, ry = _ranks(want), _ranks(y)
    rp, ry = rp - rp.mean(), ry - ry.mean()
    assert metrics["spearman"] == pytest.approx((rp * ry).sum() / np.sqrt((rp**2).sum() * (ry**2).sum()))
    assert metrics["mse"] == pytest.approx(np.mean((want - y) ** 2), rel=1e-5)
    assert metrics["mae"] == pytest.approx(np.mean(np.abs(want - y)), rel=1e-5)
    if loss == "l1":
        expected = np.mean(np.abs(want - y))
    else:  # weights 1 + 2 |y - train mean|^4, normalised to mean 1 (the config's defaults)
        w = 1 + 2.0 * np.abs(y - train_y.mean()) ** 4
        assert abs(train_y.mean() - y.mean()) > 1e-3  # a val mean would give another number
        expected = np.mean(w / w.mean() * (want - y) ** 2)
    assert metrics["loss"] == pytest.approx(expected, rel=1e-5)


def test_fit_keeps_the_best_epoch_on_val_and_reports_the_last():
    table = make_table()
    cfg = make_cfg(epochs=6, lr=0.05, save=True)
    trainer = Trainer(cfg, table, "cpu")
    weights = _scripted(trainer, [0.2, 0.5, 0.5, 0.4, 0.6, 0.1])  # val Spearman: best is epoch 4, ties do not win
    log = Recorder()
    lrs = [g["lr"] for g in trainer.opt.param_groups]
    result = trainer.fit(log)
    history = trainer.track.history
    assert [r["epoch"] for r in history] == list(range(6)) and history[0]["lr"] == lrs[0]
    assert set(history[0]) >= {"epoch", "lr", "train_loss", "seconds", "val_spearman", "val_loss", "val_mse"}
    assert result["best"] == history[4] and result["last"] == history[5]
    assert [improved for _, improved in log.checkpoints] == [True, True, False, False, True, False]
    assert [state["epoch"] for state, _ in log.checkpoints] == list(range(6))
    for k, v in trainer.track.best_weights.items():
        torch.testing.assert_close(v, weights[4][k])
    assert [row for row, _, _ in log.rows] == history
    np.testing.assert_array_equal(log.rows[0][2], table.splits["val"].y.numpy())
    done_history, best, val, best_pred, last_pred = log.finished
    assert done_history == history and best == history[4] and val is table.splits["val"]
    best_net = ModularMLP(table.dims, cfg.hidden_channels)
    best_net.load_state_dict(weights[4])
    np.testing.assert_allclose(best_pred, predict(best_net, val.x), rtol=1e-6)
    np.testing.assert_allclose(last_pred, predict(trainer.model, val.x), rtol=1e-6)
    assert not np.allclose(best_pred, last_pred)


def test_without_a_terminal_each_epoch_is_one_line_and_without_save_or_log_no_checkpoint(capsys):
    log = Recorder()
    trainer = Trainer(make_cfg(epochs=2), make_table(), "cpu")
    _scripted(trainer, [0.5, 0.25])
    trainer.fit(log)
    assert log.checkpoints == [] and len(log.rows) == 2
    assert 0 <= trainer.track.history[0]["seconds"] < 60
    loss = [f"{r['train_loss']:.4f}" for r in trainer.track.history]
    assert capsys.readouterr().out == (  # no terminal under pytest
        f"epoch 1/2: train mse {loss[0]}, val Spearman 0.5000 (best so far)\n"
        f"epoch 2/2: train mse {loss[1]}, val Spearman 0.2500\n"
    )


def test_on_a_terminal_the_bar_shows_the_epochs_loss_and_val_spearman(monkeypatch, capsys):
    shown = []

    class Bar:
        disable = False  # a terminal

        def __init__(self, iterable, **kwargs):
            self.iterable = iterable
            shown.append(kwargs)

        def __iter__(self):
            return iter(self.iterable)

        def set_postfix(self, **kwargs):
            shown.append(kwargs)

    monkeypatch.setattr(loop, "tqdm", Bar)
    trainer = Trainer(make_cfg(epochs=2), make_table(), "cpu")
    _scripted(trainer, [0.5, 0.25])
    trainer.fit(Recorder())
    loss = [f"{r['train_loss']:.4f}" for r in trainer.track.history]
    assert shown == [
        {"desc": "epochs", "unit": "ep", "disable": None},
        {"loss": loss[0], "val_spearman": "0.5000"},
        {"loss": loss[1], "val_spearman": "0.2500"},
    ]
    assert capsys.readouterr().out == ""  # the bar instead of the lines


def test_a_checkpoint_holds_the_whole_run_and_resumes_it_exactly(tmp_path):
    table = make_table()
    cfg = make_cfg(epochs=4, save=True)
    whole = Trainer(cfg, table, "cpu")
    whole.fit(Recorder())
    first, state = last_state(table)
    assert state["tiers"] == {"emb": "imported"} and state["modules"] == ["emb"] and state["dims"] == {"emb": 4}
    assert state["train_mean"] == first.ctx.train_mean and state["fitted"] == {} and state["epoch"] == 1
    assert state["config"]["epochs"] == 2 and state["sources"] is table.sources
    assert state["stats"].keys() == table.stats.keys() and all(state["stats"][m] is table.stats[m] for m in table.stats)
    assert (
        state["best"] == first.track.best and len(state["history"]) == 2 and state["metrics"] == first.track.history[-1]
    )
    save_checkpoint(state, tmp_path / "last.pt")
    resumed = Trainer(make_cfg(epochs=4, save=True), table, "cpu", resume=torch.load(tmp_path / "last.pt"))
    assert resumed.start_epoch == 2
    resumed.fit(Recorder())
    for k, v in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v)
    assert [r["val_spearman"] for r in resumed.track.history] == [r["val_spearman"] for r in whole.track.history]


def test_a_run_resumed_past_its_last_epoch_still_finishes():
    table = make_table()
    first, state = last_state(table)
    again = Trainer(make_cfg(epochs=2), table, "cpu", resume=state)
    done = Recorder()
    result = again.fit(done)
    assert done.rows == [] and result["last"] == first.track.history[-1]
    np.testing.assert_allclose(done.finished[4], predict(first.model, table.splits["val"].x), rtol=1e-6)


def test_a_checkpoint_of_other_widths_is_refused():
    _, state = last_state(make_table(dim=4), epochs=1)
    with pytest.raises(ConfigError) as err:
        Trainer(make_cfg(), make_table(dim=5), "cpu", resume=state)
    assert str(err.value) == "checkpoint dims {'emb': 4} differ from the feature table's {'emb': 5}"


def _saved_run(tmp_path, **kw):
    path = tmp_path / "runs" / "old" / "last.pt"
    path.parent.mkdir(parents=True)
    save_checkpoint(last_state(**kw)[1], path)
    return path


def test_resume_takes_the_checkpoint_config_and_the_flags_given_now(tmp_path):
    path = _saved_run(tmp_path)
    cfg = make_cfg(checkpoint_local=str(path), epochs=5)
    assert resolve_resume(make_cfg(), {}) == (make_cfg(), None)
    resumed, ckpt = resolve_resume(cfg, {"epochs": 5})
    assert (resumed.epochs, resumed.lr, resumed.name, resumed.checkpoint_local) == (5, 0.01, "old", str(path))
    assert resumed.runs_dir == str((tmp_path / "runs").resolve()) and ckpt["epoch"] == 1
    renamed, _ = resolve_resume(cfg, {"epochs": 5, "name": "new"})
    assert (renamed.name, renamed.runs_dir) == ("new", "runs")


def test_resume_refuses_changed_training_settings_in_one_message(tmp_path):
    path = _saved_run(tmp_path)
    with pytest.raises(ConfigError) as err:
        resolve_resume(make_cfg(checkpoint_local=str(path)), {"lr": 0.5, "hidden_channels": [7], "data_dir": "/x"})
    assert str(err.value) == (
        "--hidden_channels [7] differs from the checkpoint's [6]; --lr 0.5 differs from the checkpoint's 0.01. A "
        f"resumed run keeps the model, inputs and training settings of {path}; start a new run (another -n NAME) "
        "instead"
    )


def test_resume_refuses_a_best_checkpoint_without_optimiser_and_a_stretched_cosine(tmp_path):
    path = _saved_run(tmp_path, scheduler="cosine")
    with pytest.raises(ConfigError) as err:
        resolve_resume(make_cfg(checkpoint_local=str(path)), {"epochs": 3})
    assert str(err.value) == (
        f"{path} follows a cosine schedule over 2 epochs; it cannot be stretched to 3 after the fact (its learning "
        "rate would jump back up). Resume with the same --epochs, or start a new run (a step or constant schedule "
        "can be extended)"
    )
    assert resolve_resume(make_cfg(checkpoint_local=str(path)), {"epochs": 2})[0].epochs == 2
    state = torch.load(path)
    del state["optimizer"]
    save_checkpoint(state, path)
    with pytest.raises(ConfigError) as err:
        resolve_resume(make_cfg(checkpoint_local=str(path)), {})
    assert str(err.value) == f"{path} holds no optimiser state (a best.pt rebuilt after a kill); resume from last.pt"


def test_a_taken_run_name_gets_the_next_free_number(tmp_path, capsys):
    assert free_run_name(tmp_path, "demo") == "demo" and capsys.readouterr().out == ""
    for name in ("demo", "demo-2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text("{}")
    (tmp_path / "demo-3").mkdir()  # a folder without a run in it is free
    assert free_run_name(tmp_path, "demo") == "demo-3"
    assert capsys.readouterr().out == (
        f"{tmp_path / 'demo'} holds another run; this one is {tmp_path / 'demo-3'} (-n NAME to choose)\n"
    )


def test_the_interrupted_message_says_how_to_resume(tmp_path):
    assert interrupted_message(tmp_path) == (
        "interrupted before any checkpoint was written (train with -s to be able to resume); the epochs done are in "
        f"{tmp_path / 'metrics.jsonl'}"
    )
    save_checkpoint(last_state(epochs=1)[1] | {"epoch": 6}, tmp_path / "last.pt")
    assert interrupted_message(tmp_path) == (
        f"interrupted; the last checkpoint is {tmp_path / 'last.pt'} (epoch 7). Resume with: "
        f".venv/bin/python train.py --checkpoint_local {tmp_path / 'last.pt'}"
    )


def test_the_summary_gives_the_best_and_the_last_epoch():
    def row(epoch, s):
        return {"epoch": epoch, "val_spearman": s, "val_kendall": s / 2, "val_mse": 0.01, "val_mae": 0.08}

    lines = run_lines({"best": row(4, 0.61234), "last": row(9, 0.5), "run_dir": "runs/x"})
    assert lines == [
        "best epoch 5 (selected on val, so optimistic): spearman 0.6123, kendall 0.3062, mse 0.0100, mae 0.0800",
        "last epoch 10: spearman 0.5000, kendall 0.2500, mse 0.0100, mae 0.0800",
        "run directory: runs/x (plots: scatter_val.png, histograms_val.png, learning_curves.png)",
    ]
    nan = run_lines({"best": row(0, float("nan")), "last": row(0, float("nan")), "run_dir": "r"})
    assert nan[0] == "warning: val Spearman is NaN" and len(nan) == 4


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_trains(name):
    """An epoch returns the named loss averaged over its seeded batches (weighted by their sizes: 5 of 8, one of 5),
    computed here at frozen weights; then a few epochs lower that loss on the whole train split."""
    table = make_table()
    train = table.splits["train"]
    frozen = Trainer(make_cfg(loss=name, optimizer="sgd", momentum=0.0, lr=1e-30), table, "cpu")
    ctx = LossContext(epoch=1, epochs=3, train_mean=float(train.y.double().mean()), tails_pow=4.0, tails_mult=2.0)
    order = torch.randperm(45, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        batches = [(LOSSES[name](frozen.model(train.x[i]), train.y[i], ctx), len(i)) for i in order.split(8)]
    assert frozen.train_epoch(1) == pytest.approx(sum(float(v) * n for v, n in batches) / 45, rel=1e-5)
    trainer = Trainer(make_cfg(loss=name, epochs=8, lr=0.02), table, "cpu")

    def whole_train_loss():
        with torch.no_grad():
            return float(LOSSES[name](trainer.model(train.x), train.y, ctx))

    before = whole_train_loss()
    for epoch in range(8):
        trainer.train_epoch(epoch)
    assert whole_train_loss() < before


# --------------------------------------------------------------------------- run_training over a dataset


def test_an_unnamed_run_is_named_after_its_dataset_modules_and_time(memento, tmp_path, capsys):
    _import(memento, tmp_path, name="emb")
    _import(memento, tmp_path, name="emb2")
    result = _train(memento, tmp_path, "--extra_features", "emb", "emb2", "--epochs", "1")
    assert re.fullmatch(r"Memento10k_emb\+emb2_\d{8}-\d{6}", Path(result["run_dir"]).name)
    assert (
        "Memento10k: {'train': 60, 'val': 20} videos; modules {'emb': 6, 'emb2': 6} -> in_dim 12; device cpu; seed 3"
    ) in capsys.readouterr().out


def test_a_resumed_run_keeps_the_normalisation_of_its_checkpoint(memento, tmp_path):
    """Resuming rebuilds the table with the checkpoint's statistics, not new ones from today's train split."""
    _import(memento, tmp_path)
    _train(memento, tmp_path, "-n", "r", "-s", "--epochs", "1", "--normalize_extra")
    last = tmp_path / "runs" / "r" / "last.pt"
    before = torch.load(last, weights_only=True)["stats"]
    annotations = memento / "Memento10k" / "memento_train_data.json"
    annotations.write_text(json.dumps(json.loads(annotations.read_text())[:30]))  # half the train videos now
    cfg, explicit = parse_explicit(TrainConfig, ["--checkpoint_local", str(last), "--epochs", "2"], check=False)
    run_training(cfg, explicit)
    after = torch.load(last, weights_only=True)
    assert after["epoch"] == 1 and set(after["stats"]) == set(before) == {"emb"}
    for key, value in before["emb"].items():
        torch.testing.assert_close(after["stats"]["emb"][key], value)


def test_a_seeded_videomem_split_is_said_and_recorded(tmp_path, capsys):
    """Without the official pickle, VideoMem's train/val split is drawn (seeded): the run says which one it used."""
    root = tmp_path / "data" / "VideoMem"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.6, 1.0, 50)
    lines = ["video,short-term_memorability,nb_short-term_annotations,long-term_memorability,nb_long-term_annotations"]
    lines += [f"video{i}.webm,{s:.3f},30,0.5,10" for i, s in enumerate(scores)]
    (root / "ground-truth_dev-set.csv").write_text("\r\n".join(lines) + "\r\n", encoding="utf-8-sig")
    x = np.c_[scores * 10, rng.normal(size=(50, 3))].astype(np.float32)
    np.savez(tmp_path / "f.npz", ids=np.array([f"video{i}" for i in range(50)]), emb=x)
    gen = ["--dataset", "VideoMem", "--data_dir", str(tmp_path / "data"), "--import", str(tmp_path / "f.npz")]
    import_features(parse(GenConfig, [*gen, "--name", "emb"]))
    source = load_records("VideoMem", GenConfig(data_dir=str(tmp_path / "data")))[0].extras["split_source"]
    capsys.readouterr()
    argv = ["--dataset", "VideoMem", "--data_dir", str(tmp_path / "data"), "--runs_dir", str(tmp_path / "runs"),
            "-n", "vm", "--extra_features", "emb", "--epochs", "1", "--seed", "0"]  # fmt: skip
    run_training(*parse_explicit(TrainConfig, argv, check=False))
    assert f"VideoMem train/val split: {source}\n" in capsys.readouterr().out
    assert json.loads((tmp_path / "runs" / "vm" / "summary.json").read_text())["split"] == source


def test_every_smoke_store_is_named_in_the_warning(memento, tmp_path, monkeypatch, capsys):
    _import(memento, tmp_path, name="emb")
    _import(memento, tmp_path, name="emb2")
    real = FeatureTable.build.__func__

    def smoke_build(cls, *args, **kwargs):
        table = real(cls, *args, **kwargs)
        for source in table.sources.values():
            source["smoke"] = True  # as stores extracted with --smoke_random_weights are
        return table

    monkeypatch.setattr(FeatureTable, "build", classmethod(smoke_build))
    _train(memento, tmp_path, "--extra_features", "emb", "emb2", "--epochs", "1")
    assert (
        "warning: emb, emb2 hold SMOKE features (random backbone weights): this run measures nothing"
        in capsys.readouterr().out
    )


def test_resume_from_wandb_fetches_from_the_project_and_names_a_foreign_config(tmp_path, monkeypatch):
    path = _saved_run(tmp_path)
    asked = []
    monkeypatch.setattr(training, "fetch_wandb_checkpoint", lambda *args: (asked.append(args), path)[1])
    cfg = make_cfg(checkpoint_run_id="ent/proj/abc", checkpoint_epoch=1, project="memo", runs_dir=str(tmp_path / "r"))
    resumed, _ = resolve_resume(cfg, {})
    assert asked == [("ent/proj/abc", 1, "memo")] and resumed.runs_dir == str(tmp_path / "r")
    state = torch.load(path)
    state["config"]["future_flag"] = 1  # a checkpoint from another version of m3s
    save_checkpoint(state, path)
    with pytest.raises(ConfigError, match=rf"^checkpoint {re.escape(str(path))}: unknown key\(s\) future_flag; "):
        resolve_resume(make_cfg(checkpoint_local=str(path)), {})
