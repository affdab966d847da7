"""Grids and searches get what single runs have: a run directory of their own, progress, Ctrl-C that keeps finished
work, a rerun that resumes it, and searches that do not repeat themselves."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
import torch
import yaml

from config import TrainConfig, parse, parse_explicit
from core.io import ConfigError, Interrupted
from pipeline.grid import batched
from pipeline.grid.runner import run_experiment
from pipeline.grid.search import run_search, trial_line, trial_row
from pipeline.run.training import run_training
from tests.test_experiments import _argv, _import


@pytest.fixture
def two_modules(memento, tmp_path):
    _import(memento, tmp_path, "a", 6, 1)
    _import(memento, tmp_path, "b", 4, 2)
    return memento


def _summary_rows(summary: dict) -> list[tuple]:
    return [(r["combination"], r["model"], r["last"]["mean"], r["ensemble"]["mean"]) for r in summary["rows"]]


def test_a_grid_never_writes_into_another_runs_directory(two_modules, tmp_path):
    runs = tmp_path / "runs"
    run_training(*parse_explicit(TrainConfig, [*_argv(two_modules, tmp_path), "-n", "demo", "--seed", "1"]))
    before = {p.name: p.read_bytes() for p in (runs / "demo").iterdir() if p.is_file()}
    grid = run_experiment(parse(TrainConfig, [*_argv(two_modules, tmp_path), "-n", "demo", "--seeds", "3", "4"]))
    folds = run_experiment(parse(TrainConfig, [*_argv(two_modules, tmp_path), "-n", "demo", "--folds", "2"]))
    assert grid["run_dir"] == str(runs / "demo-2") and folds["run_dir"] == str(runs / "demo-3")
    assert {p.name: p.read_bytes() for p in (runs / "demo").iterdir() if p.is_file()} == before
    assert not list((runs / "demo-3").glob("ablation.*"))


def test_an_interrupted_grid_keeps_its_finished_runs_and_a_rerun_trains_only_the_rest(
    two_modules, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(batched, "CPU_CHUNK_PARAMS", 1)  # one run a chunk: runs finish one after another
    argv = [*_argv(two_modules, tmp_path), "--seeds", "1", "2", "3"]
    reference = run_experiment(parse(TrainConfig, [*argv, "-n", "whole"]))
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")][-1].startswith(
        "[3/3] a+b seed 3 fold 0: last-epoch val Spearman"
    )
    real_fit, fits = batched._Group.fit, []

    def killed_in_second_run(self, on_epoch, **kw):
        fits.append([s.seed for s in self.runs])
        if len(fits) == 2:
            raise KeyboardInterrupt
        return real_fit(self, on_epoch, **kw)

    monkeypatch.setattr(batched._Group, "fit", killed_in_second_run)
    with pytest.raises(Interrupted, match=r"1 of 3 runs are finished in .*/runs/cut and kept; run the same command"):
        run_experiment(parse(TrainConfig, [*argv, "-n", "cut"]))
    assert (tmp_path / "runs/cut/a+b/seed1-fold0/summary.json").is_file()
    assert not (tmp_path / "runs/cut/a+b/seed2-fold0").exists()
    fits.clear()
    monkeypatch.setattr(
        batched._Group, "fit", lambda self, on_epoch, **kw: fits.append(self.runs) or real_fit(self, on_epoch, **kw)
    )
    resumed = run_experiment(parse(TrainConfig, [*argv, "-n", "cut"]))
    assert resumed["run_dir"] == str(tmp_path / "runs/cut")  # the same experiment: continued, not renamed
    assert [[s.seed for s in chunk] for chunk in fits] == [[2], [3]]  # seed 1 was not trained again
    assert "1 of 3 runs finished earlier" in capsys.readouterr().out
    for got, want in zip(_summary_rows(resumed), _summary_rows(reference), strict=True):
        assert got[:2] == want[:2] and got[2:] == pytest.approx(want[2:], abs=1e-6)
    again = run_experiment(parse(TrainConfig, [*argv, "-n", "cut"]))  # finished: a second run is a new directory
    assert again["run_dir"] == str(tmp_path / "runs/cut-2") and (tmp_path / "runs/cut/summary.json").is_file()


def test_config_refusals_of_grids_and_searches(two_modules, tmp_path):
    with pytest.raises(ConfigError, match="--threads and --search must be >= 0"):
        run_search(parse_explicit(TrainConfig, [*_argv(two_modules, tmp_path), "--search", "-2"], check=False)[0])
    with pytest.raises(ConfigError, match=r"--ablate trains every combination .* only \['a'\] is selected"):
        parse(TrainConfig, ["--extra_features", "a", "--ablate"])


def test_an_explicit_seed_wins_over_the_config_files_seeds(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("seeds: [1, 2, 3, 4, 5]\nextra_features: [a]\n")
    cfg = parse(TrainConfig, ["--config", str(config), "--seed", "3"])
    assert cfg.seed == 3 and cfg.seeds == [] and not cfg.grid()
    assert parse(TrainConfig, ["--config", str(config)]).seeds == [1, 2, 3, 4, 5]
    both = parse(TrainConfig, ["--config", str(config), "--seed", "3", "--seeds", "7", "8"])
    assert both.seeds == [7, 8]


def _space(tmp_path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


def test_a_resumed_search_draws_new_values_and_fails_orphaned_trials(two_modules, tmp_path, capsys):
    space = _space(tmp_path, "lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}\n")
    argv = [*_argv(two_modules, tmp_path), "-n", "s", "--search_space", space, "--epochs", "1"]
    for n in (1, 2, 3):  # killed after every trial: each invocation runs one more
        summary = run_search(parse(TrainConfig, [*argv, "--search", str(n)]))
    values = [t["params"]["lr"] for t in summary["trials"]]
    assert len(values) == 3 and len(set(values)) == 3  # a re-seeded TPE drew its first value three times
    assert summary["run_dir"] == str(tmp_path / "runs/s")
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'runs/s/search.db'}")
    study.ask()  # a trial a SIGKILLed process left RUNNING
    capsys.readouterr()
    summary = run_search(parse(TrainConfig, [*argv, "--search", "4"]))
    assert [t["state"] for t in summary["trials"]] == ["COMPLETE"] * 3 + ["FAIL", "COMPLETE"]
    out = capsys.readouterr().out
    assert "trial(s) 3 were left running by a killed process: marked FAIL" in out
    assert "  trial   4 COMPLETE last-epoch val Spearman" in out  # a line as each trial finishes


def test_only_fields_the_config_uses_are_searched(two_modules, tmp_path, capsys):
    space = _space(
        tmp_path,
        "lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}\n"
        "scheduler_gamma: {type: float, low: 0.1, high: 0.9}\nscheduler_step_size: {type: int, low: 1, high: 3}\n",
    )
    argv = [*_argv(two_modules, tmp_path), "-n", "c", "--search_space", space, "--epochs", "1", "--search", "2"]
    summary = run_search(parse(TrainConfig, [*argv, "--scheduler", "cosine"]))
    assert all(set(t["params"]) == {"lr"} for t in summary["trials"])
    assert "not searched: scheduler_gamma, scheduler_step_size" in capsys.readouterr().out
    step = run_search(parse(TrainConfig, [*argv, "-n", "st", "--scheduler", "step"]))
    assert all(set(t["params"]) == {"lr", "scheduler_gamma", "scheduler_step_size"} for t in step["trials"])
    best = json.loads((tmp_path / "runs/c/search.json").read_text())["best"]["values"]
    assert set(best) == {"lr"}


def test_a_pruned_trial_is_listed_with_the_epoch_it_was_stopped_at():
    dist = optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)
    trial = optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED, params={"lr": 0.01}, distributions={"lr": dist},
        intermediate_values={0: 0.12, 1: 0.25},
    )  # fmt: skip
    row = trial_row(trial)
    assert row["pruned_at"] == {"epoch": 2, "val_spearman": 0.25} and row["value"] is None
    line = trial_line(row)
    assert "pruned at epoch 2 (mean val Spearman there 0.2500)" in line and "last-epoch" not in line
    done = optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=0.3, params={}, distributions={})
    assert "last-epoch val Spearman 0.3000" in trial_line(trial_row(done))
    assert np.isclose(trial_row(done)["value"], 0.3)


def test_a_grid_stacks_the_models_own_layers_and_refuses_one_it_cannot_stack(monkeypatch):
    """The batched grid reads ModularMLP's layers (its activations are the model's own modules): a layer it cannot
    reproduce exactly, such as dropout, is refused instead of silently differing from a single run."""
    import torch

    from model.mlp import ModularMLP
    from pipeline.grid.batched import Bundle
    from pipeline.grid.specs import RunSpec

    dims = {"a": 3, "b": 2}
    runs = [RunSpec(1, 0, ("a",)), RunSpec(1, 0, ("a", "b"))]
    bundle = Bundle(runs, dims, [8, 4], torch.device("cpu"))
    assert all(isinstance(a, torch.nn.Mish) for a in bundle.activations)
    x = {"a": torch.randn(5, 3), "b": torch.randn(5, 2)}
    for r, spec in enumerate(runs):  # each stacked run is its ModularMLP
        net = ModularMLP({m: dims[m] for m in spec.modules}, [8, 4])
        net.load_state_dict(bundle.state_dict(r))
        torch.testing.assert_close(bundle.forward(x)[r], net(torch.cat([x[m] for m in spec.modules], 1)))
    real_init = ModularMLP.__init__

    def with_dropout(self, dims, hidden=(512, 64)):
        real_init(self, dims, hidden)
        self.net.insert(2, torch.nn.Dropout(0.1))

    monkeypatch.setattr(ModularMLP, "__init__", with_dropout)
    with pytest.raises(NotImplementedError, match="ModularMLP is now Linear, Mish, Dropout, Linear"):
        Bundle(runs, dims, [8, 4], torch.device("cpu"))


@pytest.mark.parametrize(
    ("argv", "kind", "runs", "said"),
    [
        (["--seed", "1"], "single", 1, "plan: one MLP run over a+b, 3 epochs; in "),
        (["--seeds", "1", "2", "--folds", "3"], "grid", 6, "plan: a grid of 6 mlp run(s) over a+b on 3 folds"),
        (["--ablate", "--seeds", "1", "2", "--baselines"], "grid", 6, "6 mlp run(s) + ridge and svr baselines"),
        (["--head", "ridge"], "fitted head", 1, "plan: one ridge head fitted on a+b"),
        (["--search", "4", "--seeds", "1", "2"], "search", 2, "plan: a search of 4 trials over configs/search"),
        (["--no-fixed_features", "--standin_backbones"], "end-to-end", 1, "plan: one end-to-end run over a+b"),
    ],
)
def test_train_py_says_what_it_will_run_before_it_starts(tmp_path, argv, kind, runs, said):
    from pipeline.launch import plan

    base = ["--extra_features", "a", "b", "--epochs", "3", "--runs_dir", str(tmp_path), "-n", "x"]
    cfg, explicit = parse_explicit(TrainConfig, [*base, *argv], check=False)
    work = plan(cfg, explicit)
    assert (work.kind, work.runs) == (kind, runs) and said in work.text and str(tmp_path / "x") in work.text


@pytest.mark.parametrize("batched_flag", ["--batched", "--no-batched"])
def test_a_grid_sub_run_gets_the_files_of_a_single_run(two_modules, tmp_path, batched_flag):
    """With -s every sub-run has best.pt (its best epoch's weights: scoring it gives that epoch's val Spearman) and
    last.pt, and a config.yaml with the resolved roots, through the batched engine and the one-by-one path alike."""
    from config import EvalConfig
    from pipeline.run.checkpoint import load_checkpoint
    from pipeline.scoring.evaluate import run_evaluation

    argv = [*_argv(two_modules, tmp_path), "-n", "g", "--seeds", "1", "2", "-s", "--epochs", "6", batched_flag]
    run_experiment(parse(TrainConfig, argv))
    for seed in (1, 2):
        sub = tmp_path / f"runs/g/a+b/seed{seed}-fold0"
        history = [json.loads(line) for line in (sub / "metrics.jsonl").read_text().splitlines()]
        best = max(history, key=lambda r: r["val_spearman"])  # the first of equal maxima, as the loop keeps
        assert json.loads((sub / "summary.json").read_text())["best"]["epoch"] == best["epoch"]
        for name, row in (("best.pt", best), ("last.pt", history[-1])):
            ckpt = load_checkpoint(sub / name)
            assert ckpt["epoch"] == row["epoch"] and ckpt["config"]["seed"] == seed
            scored = run_evaluation(parse(EvalConfig, ["--checkpoint", str(sub / name)]))
            assert scored["val"]["spearman"] == pytest.approx(row["val_spearman"], abs=1e-5)
        config = yaml.safe_load((sub / "config.yaml").read_text())
        roots = parse(TrainConfig, argv)
        assert config["features_dir"] == str(roots.resolved_features_dir()) and config["seed"] == seed
        assert config["data_dir"] == str(roots.resolved_data_dir())


def test_with_l_each_sub_run_is_a_wandb_run_of_its_own_in_the_grids_group(two_modules, tmp_path, monkeypatch):
    import wandb

    runs, logged = [], []
    real_init, real_log = wandb.init, wandb.sdk.wandb_run.Run.log

    def init(*args, **kwargs):
        runs.append((kwargs["name"], kwargs["group"]))
        return real_init(*args, **kwargs)

    def log(self, data, *args, **kwargs):
        logged.append((runs[-1][0], dict(data)))
        return real_log(self, data, *args, **kwargs)

    artifacts = []
    real_art = wandb.sdk.wandb_run.Run.log_artifact

    def log_artifact(self, art, *args, aliases=None, **kwargs):
        if art.type == "model":  # (the grid's table travels as an artifact of its own)
            artifacts.append((runs[-1][0], art.metadata["epoch"], sorted(aliases)))
        return real_art(self, art, *args, aliases=aliases, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", log)
    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log_artifact", log_artifact)
    argv = [*_argv(two_modules, tmp_path), "-n", "g", "--seeds", "1", "2", "-l", "-s", "--baselines"]
    summary = run_experiment(parse(TrainConfig, argv))
    subs = ["seed1-fold0", "seed2-fold0", "ridge-seed1-fold0", "svr-seed1-fold0"]  # the baselines are runs too
    assert runs == [(f"g/a+b/{s}", "g") for s in subs] + [("g", None)]  # sub-runs, then the grid
    table = next(d["summary"] for name, d in logged if name == "g" and "summary" in d)  # the grid's own run
    svr = next(r for r in summary["rows"] if r["model"] == "svr")
    cells = {row[1]: dict(zip(table.columns, row, strict=True)) for row in table.data}
    assert (cells["svr"]["head_minus_this"], cells["svr"]["ci95_low"]) == (
        svr["head_minus_this"]["diff"],
        svr["head_minus_this"]["ci95"][0],
    )
    mlp = next(r for r in summary["rows"] if r["model"] == "mlp")
    assert cells["mlp"]["head_minus_this"] is None and cells["mlp"]["ensemble_mean"] == mlp["ensemble"]["mean"]
    for seed in (1, 2):
        rows = [d for name, d in logged if name == f"g/a+b/seed{seed}-fold0"]
        history = (tmp_path / f"runs/g/a+b/seed{seed}-fold0/metrics.jsonl").read_text().splitlines()
        assert [r["epoch"] for r in rows] == [1, 2, 3]  # from 1, as printed
        assert [r["val_spearman"] for r in rows] == [json.loads(line)["val_spearman"] for line in history]
        assert list((tmp_path / f"runs/g/a+b/seed{seed}-fold0/wandb").glob("offline-run-*"))
        best = json.loads((tmp_path / f"runs/g/a+b/seed{seed}-fold0/summary.json").read_text())["best"]["epoch"]
        assert [(e, a) for name, e, a in artifacts if name == f"g/a+b/seed{seed}-fold0"] == [
            (best, sorted(["best", f"epoch-{best}"])),
            (2, ["epoch-2", "latest"]),
        ]


def test_with_s_a_killed_chunk_resumes_from_its_last_saved_epoch_exactly(two_modules, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(batched, "CHUNK_SAVE_SECONDS", 0.0)  # save after every epoch
    argv = [*_argv(two_modules, tmp_path), "--seeds", "1", "2", "-s", "--epochs", "4"]
    run_experiment(parse(TrainConfig, [*argv, "-n", "whole"]))
    real_step, epochs, kills = batched._Group.step_epoch, [], [2]

    def killed_at_epoch_2(self, epoch):
        epochs.append(epoch)
        if kills and epoch == kills[0]:
            kills.pop()
            raise KeyboardInterrupt
        return real_step(self, epoch)

    monkeypatch.setattr(batched._Group, "step_epoch", killed_at_epoch_2)
    with pytest.raises(Interrupted, match="0 of 2 runs are finished .* and the chunk in training as of its last save"):
        run_experiment(parse(TrainConfig, [*argv, "-n", "cut"]))
    assert [p.name for p in (tmp_path / "runs/cut").glob("chunk-*.pt")]  # epochs 1 and 2 are on disk
    epochs.clear()
    run_experiment(parse(TrainConfig, [*argv, "-n", "cut"]))
    assert epochs == [2, 3] and "2 runs resume from epoch 3, as saved in" in capsys.readouterr().out
    assert not list((tmp_path / "runs/cut").glob("chunk-*.pt"))  # removed once its runs are written
    for seed in (1, 2):
        sub = f"a+b/seed{seed}-fold0"
        for name in ("metrics.jsonl", "predictions_val.csv"):
            got, want = ((tmp_path / f"runs/{d}/{sub}/{name}").read_text() for d in ("cut", "whole"))
            if name == "metrics.jsonl":  # all but the wall times
                got, want = ([{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in t.splitlines()]
                             for t in (got, want))  # fmt: skip
            assert got == want
        for name in ("best.pt", "last.pt"):
            got, want = (torch.load(tmp_path / f"runs/{d}/{sub}/{name}", weights_only=True) for d in ("cut", "whole"))
            assert got["epoch"] == want["epoch"] and all(
                torch.equal(got["model"][k], want["model"][k]) for k in got["model"]
            )
