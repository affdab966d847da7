"""Hyper-parameter search: ``train.py --search N`` runs Optuna trials over a YAML search space.

Each trial trains the grid of ``--seeds`` x ``--folds`` with the trial's values (batched, on tables built once for
the whole search) and scores it by the mean last-epoch val Spearman of its runs (the honest number; the best epoch
is recorded beside it). TPE is seeded (``--search_seed``) and the median pruner stops a trial whose mean val Spearman
at an epoch falls below the median of earlier trials at that epoch. The study lives in SQLite in the run directory
(``search.db``) unless ``--search_storage URL`` names another database (PostgreSQL, MySQL: workers on several
machines share one study), so a killed search resumes: ``--search N`` means N finished trials in the study, and a
rerun of the same command runs only those still missing. Several local processes may run the same command at once.

Search space YAML: ``name: {type: float|int|categorical, low, high, log, step, choices}`` per config field (any
``TrainConfig`` field; list values such as ``hidden_channels: [[512, 64], [256, 32]]`` are categorical choices).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path

import yaml

from config import ModuleConfig, TrainConfig, from_dict
from core.cli import load_yaml
from core.io import ConfigError, write_json, write_text
from pipeline.experiments import Grid, run_experiment

SEARCH_TYPES = ("float", "int", "categorical")
INNER_FOLDS = 3  # --search_on inner_cv: trials are scored on this many folds of the train videos


def load_space(path: str | Path) -> dict[str, dict]:
    """The search space, checked: every key a config field, every entry a valid distribution."""
    space = load_yaml(path)
    fields = set(TrainConfig.__dataclass_fields__)
    for name, spec in space.items():
        if name not in fields:
            raise ConfigError(f"{path}: {name!r} is not a train.py config field")
        if name in ModuleConfig.__dataclass_fields__:  # the tables are built once for the whole search
            raise ConfigError(f"{path}: {name} changes the feature table; search it with separate runs (--ablate)")
        if not isinstance(spec, dict) or spec.get("type") not in SEARCH_TYPES:
            raise ConfigError(f"{path}: {name} needs a mapping with type one of {', '.join(SEARCH_TYPES)}")
        if spec["type"] == "categorical" and not spec.get("choices"):
            raise ConfigError(f"{path}: {name} (categorical) needs choices")
        if spec["type"] != "categorical" and not {"low", "high"} <= set(spec):
            raise ConfigError(f"{path}: {name} ({spec['type']}) needs low and high")
    return space


def suggest(trial, space: dict[str, dict]) -> dict:
    """The trial's config values. Categorical choices other than strings (lists...) are offered to Optuna as JSON."""
    out = {}
    for name, spec in space.items():
        if spec["type"] == "float":
            out[name] = trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))
        elif spec["type"] == "int":
            out[name] = trial.suggest_int(name, spec["low"], spec["high"], step=spec.get("step", 1))
        else:
            labels = {c if isinstance(c, str) else json.dumps(c): c for c in spec["choices"]}
            out[name] = labels[trial.suggest_categorical(name, list(labels))]
    return out


def trial_config(cfg: TrainConfig, values: dict) -> TrainConfig:
    """``cfg`` with a trial's values, validated like flags."""
    out = from_dict(TrainConfig, asdict(cfg) | values, source="search trial")
    out.check()
    return out


def storage_url(cfg: TrainConfig, run_dir: Path) -> str:
    return cfg.search_storage or f"sqlite:///{(run_dir / 'search.db').resolve()}"


def _finished(study) -> int:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def _objective(cfg: TrainConfig, grid: Grid, space: dict):
    import optuna

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, space)
        tcfg = trial_config(cfg, values)
        pruned = []

        def on_epoch(epoch: int, rows: list[dict]) -> bool:
            trial.report(sum(r["val_spearman"] for r in rows) / len(rows), epoch)
            if trial.should_prune():
                pruned.append(epoch)
            return bool(pruned)

        results = grid.train(tcfg, on_epoch)
        last = sum(r.history[-1]["val_spearman"] for r in results) / len(results)
        best = sum(r.best["val_spearman"] for r in results) / len(results)
        trial.set_user_attr("best_epoch_spearman", best)
        trial.set_user_attr("runs", len(results))
        if cfg.log:
            _log_trial(cfg, trial.number, values, last, best, bool(pruned))
        if pruned:
            raise optuna.TrialPruned(f"pruned at epoch {pruned[0]}")
        return last

    return objective


def _log_trial(cfg: TrainConfig, number: int, values: dict, last: float, best: float, pruned: bool) -> None:
    import wandb

    run = wandb.init(
        project=cfg.project, group=cfg.group or cfg.name, name=f"{cfg.name}-trial{number}", tags=cfg.tags or None,
        config=asdict(cfg) | values, reinit="finish_previous",
    )  # fmt: skip
    run.summary.update({"last_spearman": last, "best_spearman": best, "pruned": pruned})
    run.finish()


def run_search(cfg: TrainConfig) -> dict:
    """Run the trials still missing from the study, then write ``search.json`` and ``best_config.yaml``."""
    import optuna

    space = load_space(cfg.search_space)
    base = copy.deepcopy(cfg)
    base.search = 0  # a trial is a plain grid
    grid = Grid(base, inner_cv=INNER_FOLDS if cfg.search_on == "inner_cv" else 0)
    grid.run_dir.mkdir(parents=True, exist_ok=True)
    write_text(grid.run_dir / "config.yaml", yaml.safe_dump(asdict(cfg), sort_keys=False))
    storage = storage_url(cfg, grid.run_dir)
    study = optuna.create_study(
        study_name=base.name,
        storage=storage,
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=cfg.search_seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, cfg.epochs // 4)),
    )
    done = _finished(study)
    print(f"{grid.describe()}\nsearch: {done} of {cfg.search} trials already in {storage}")
    if done < cfg.search:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study.optimize(_objective(base, grid, space), n_trials=cfg.search - done)
    return _write_results(cfg, study, grid.run_dir, storage)


def _write_results(cfg: TrainConfig, study, run_dir: Path, storage: str) -> dict:
    import optuna

    trials = [
        {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params} | t.user_attrs
        for t in study.get_trials(deepcopy=False)
    ]
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    summary = {
        "study": study.study_name,
        "storage": storage,
        "metric": "mean last-epoch Spearman on "
        + ("3 inner folds of the train videos (val unseen)" if cfg.search_on == "inner_cv" else "val (optimistic)"),
        "trials": trials,
    }
    if complete:
        best = max(complete, key=lambda t: t.value)
        values = suggest(optuna.trial.FixedTrial(best.params), load_space(cfg.search_space))
        best_cfg = asdict(cfg) | values | {"search": 0, "name": ""}
        write_text(run_dir / "best_config.yaml", yaml.safe_dump(best_cfg, sort_keys=False))
        summary |= {"best": {"number": best.number, "value": best.value, "values": values}}
        if cfg.search_on == "inner_cv":  # the chosen config, trained on train and scored once on val
            final = from_dict(TrainConfig, best_cfg | {"name": f"{cfg.name}-best", "search_on": "val"})
            final.seeds = final.seeds or [final.seed or 0]
            row = run_experiment(final)["rows"][0]
            summary["best"]["val_once"] = {"ensemble": row["ensemble"]["mean"], "last": row["last"]["mean"]}
    write_json(run_dir / "search.json", summary)
    summary["run_dir"] = str(run_dir)
    return summary


def search_lines(summary: dict) -> list[str]:
    lines = [f"study {summary['study']} ({summary['storage']}): {len(summary['trials'])} trials"]
    for t in summary["trials"]:
        value = "-" if t["value"] is None else f"{t['value']:.4f}"
        lines.append(f"  trial {t['number']:3d} {t['state']:8s} {value}  {t['params']}")
    if "best" in summary:
        b = summary["best"]
        lines.append(f"best: trial {b['number']} ({b['value']:.4f}, {summary['metric']}): {b['values']}")
        if "val_once" in b:
            v = b["val_once"]
            lines.append(
                f"its val Spearman, scored once: seed ensemble {v['ensemble']:.4f}, last epoch {v['last']:.4f}"
            )
        lines.append(f"its config: {summary['run_dir']}/best_config.yaml (train.py --config it)")
    return lines
