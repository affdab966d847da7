"""Hyper-parameter search: ``train.py --search N`` runs Optuna trials over a YAML search space.

Each trial trains the grid of ``--seeds`` x ``--folds`` with the trial's values (batched, on tables built once for
the whole search) and scores it by the mean last-epoch val Spearman of its runs (the honest number; the best epoch
is recorded beside it). TPE is seeded (``--search_seed``) and the median pruner stops a trial whose mean val Spearman
at an epoch falls below the median of earlier trials at that epoch. The study lives in SQLite in the run directory
(``search.db``) unless ``--search_storage URL`` names another database (PostgreSQL, MySQL: workers on several
machines, each with its own run directory, share one study), so a killed search resumes: ``--search N`` means N
finished trials in the study, and a rerun of the same command runs only those still missing.

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
from core.io import ConfigError, Interrupted, write_json, write_text
from pipeline.grid.runner import Grid, experiment_dir, run_experiment
from pipeline.run.loop import sigterm_as_interrupt

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


#: Fields that act only when another field has one of some values: sampling them otherwise would tune nothing.
ACTS_ONLY_WITH: dict[str, tuple[str, tuple]] = {
    "scheduler_gamma": ("scheduler", ("step",)),
    "scheduler_step_size": ("scheduler", ("step",)),
    "momentum": ("optimizer", ("sgd",)),
    "mse_tails_pow": ("loss", ("mse_tails",)),
    "mse_tails_mult_fact": ("loss", ("mse_tails",)),
}


def idle_fields(space: dict[str, dict], cfg: TrainConfig) -> list[str]:
    """Fields of ``space`` that no trial can use: their controlling field is fixed by ``cfg`` to another value."""
    return [
        name
        for name in space
        if name in ACTS_ONLY_WITH
        and ACTS_ONLY_WITH[name][0] not in space
        and getattr(cfg, ACTS_ONLY_WITH[name][0]) not in ACTS_ONLY_WITH[name][1]
    ]


def suggest(trial, space: dict[str, dict], cfg: TrainConfig) -> dict:
    """The trial's config values. Categorical choices other than strings (lists...) are offered to Optuna as JSON.
    Controlling fields are drawn first; a field that would not act under them (``ACTS_ONLY_WITH``) is not drawn."""
    out = {}
    controllers = {ctrl for ctrl, _ in ACTS_ONLY_WITH.values()}
    for name in sorted(space, key=lambda n: n not in controllers):
        spec = space[name]
        if name in ACTS_ONLY_WITH:
            ctrl, values = ACTS_ONLY_WITH[name]
            if out.get(ctrl, getattr(cfg, ctrl)) not in values:
                continue
        if spec["type"] == "float":
            out[name] = trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))
        elif spec["type"] == "int":
            out[name] = trial.suggest_int(name, spec["low"], spec["high"], step=spec.get("step", 1))
        else:
            labels = {c if isinstance(c, str) else json.dumps(c): c for c in spec["choices"]}
            out[name] = labels[trial.suggest_categorical(name, list(labels))]
    return out


def _finished(study) -> int:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def _objective(cfg: TrainConfig, grid: Grid, space: dict):
    import optuna

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, space, cfg)
        tcfg = from_dict(TrainConfig, asdict(cfg) | values, source="search trial")
        tcfg.check()  # a trial's values are validated like flags
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
            trial.set_user_attr("pruned_epoch", pruned[0] + 1)
            raise optuna.TrialPruned(f"pruned at epoch {pruned[0] + 1}")
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


def fail_orphans(study) -> list[int]:
    """Mark FAIL the trials a killed process left RUNNING in this run directory's own study (this process owns the
    directory, so no live process runs them); their numbers."""
    import optuna

    orphans = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in orphans:
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    return [t.number for t in orphans]


def run_search(cfg: TrainConfig) -> dict:
    """Run the trials still missing from the study, then write ``search.json`` and ``best_config.yaml``."""
    import optuna

    with experiment_dir(cfg, "search") as run_dir:
        space = load_space(cfg.search_space)
        idle = idle_fields(space, cfg)
        base = copy.deepcopy(cfg)
        base.search = 0  # a trial is a plain grid
        grid = Grid(base, inner_cv=INNER_FOLDS if cfg.search_on == "inner_cv" else 0)
        where = storage = cfg.search_storage or f"sqlite:///{(run_dir / 'search.db').resolve()}"
        if cfg.search_storage:  # workers send heartbeats: a dead worker's trial is failed once they stop
            storage = optuna.storages.RDBStorage(cfg.search_storage, heartbeat_interval=30, grace_period=120)
        # Optuna's per-trial warnings would repeat our lines and tracebacks
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        study = optuna.create_study(
            study_name=base.name,
            storage=storage,
            load_if_exists=True,
            direction="maximize",
            pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, cfg.epochs // 4)),
        )
        orphans = [] if cfg.search_storage else fail_orphans(study)
        # seeded by the trials already there: a resumed search draws new values, the same history the same ones
        study.sampler = optuna.samplers.TPESampler(seed=cfg.search_seed + len(study.get_trials(deepcopy=False)))
        done = _finished(study)
        print(f"{grid.describe()}\nsearch: {done} of {cfg.search} trials already in {where}")
        if orphans:
            print(f"trial(s) {', '.join(map(str, orphans))} were left running by a killed process: marked FAIL")
        if idle:
            print(f"not searched: {', '.join(idle)} (they act only under another setting than this config's)")
        if done < cfg.search:

            def report(study, trial) -> None:
                print(trial_line(trial_row(trial), len(study.trials), score_label(cfg)), flush=True)

            try:
                with sigterm_as_interrupt():
                    study.optimize(_objective(base, grid, space), n_trials=cfg.search - done, callbacks=[report])
            except KeyboardInterrupt:
                raise Interrupted(
                    f"interrupted: {_finished(study)} of {cfg.search} trials are finished in {where}; run the same "
                    "command again to run the rest"
                ) from None
        return _write_results(cfg, study, run_dir, where)


def _write_results(cfg: TrainConfig, study, run_dir: Path, storage: str) -> dict:
    import optuna

    trials = [trial_row(t) for t in study.get_trials(deepcopy=False)]
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    summary = {
        "study": study.study_name,
        "storage": storage,
        "metric": "mean last-epoch Spearman on "
        + ("3 inner folds of the train videos (val unseen)" if cfg.search_on == "inner_cv" else "val (optimistic)"),
        "trial_metric": score_label(cfg),
        "trials": trials,
    }
    if complete:
        best = max(complete, key=lambda t: t.value)
        values = suggest(optuna.trial.FixedTrial(best.params), load_space(cfg.search_space), cfg)
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


def trial_row(t) -> dict:
    """What search.json and the printed list say of one trial (a pruned one: the epoch and mean it was stopped at)."""
    row = {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params} | t.user_attrs
    if t.state.name == "PRUNED" and t.intermediate_values:
        step = max(t.intermediate_values)
        row["pruned_at"] = {"epoch": step + 1, "val_spearman": t.intermediate_values[step]}
    return row


def score_label(cfg: TrainConfig) -> str:
    """What a trial's value is, in a few words."""
    return "inner-CV Spearman (train only)" if cfg.search_on == "inner_cv" else "last-epoch val Spearman"


def trial_line(t: dict, n: int | None = None, metric: str = "last-epoch val Spearman") -> str:
    if t["state"] == "PRUNED" and "pruned_at" in t:
        at = t["pruned_at"]
        score = f"pruned at epoch {at['epoch']} (mean val Spearman there {at['val_spearman']:.4f})"
    elif t["value"] is None:
        score = "no score"
    else:
        score = f"{metric} {t['value']:.4f}"
    count = f" ({n} in the study)" if n else ""
    return f"  trial {t['number']:3d} {t['state']:8s} {score}  {t['params']}{count}"


def search_lines(summary: dict) -> list[str]:
    lines = [f"study {summary['study']} ({summary['storage']}): {len(summary['trials'])} trials"]
    lines += [trial_line(t, metric=summary["trial_metric"]) for t in summary["trials"]]
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
