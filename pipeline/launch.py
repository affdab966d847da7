"""What ``train.py`` runs, decided in one place and said before it starts.

A config is one of five kinds of work: a search (``--search N``), a grid (``--seeds`` / ``--folds`` / ``--ablate`` /
``--baselines``), a head fitted in one go (``--head ridge|svr|stack``), end-to-end training (``--no-fixed_features``,
or resuming an end-to-end checkpoint), or one MLP run. :func:`plan` picks it and says what will run, how many runs,
and where; :meth:`Plan.run` runs it and returns the lines to print.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from config import TrainConfig


@dataclass
class Plan:
    kind: str
    runs: int  # trainings (a search: per trial)
    text: str
    run: Callable[[], list[str]]


def _where(cfg: TrainConfig) -> str:
    root = Path(cfg.runs_dir)
    return (
        f"{root / cfg.name} (or {cfg.name}-2... if it holds another run)" if cfg.name else f"a new directory in {root}/"
    )


def grid_size(cfg: TrainConfig) -> int:
    """Runs of the grid ``cfg`` asks for (the head's runs; ``--baselines`` adds two fits per fold and combination)."""
    n = len(cfg.modules())
    combos = 2**n - 1 if cfg.ablate else 1
    return combos * max(len(cfg.seeds), 1) * max(cfg.folds, 1)


def plan(cfg: TrainConfig, explicit: dict) -> Plan:
    """The one place that decides what ``train.py`` does with ``cfg``."""
    resuming = cfg.checkpoint_local or cfg.checkpoint_run_id
    modules = "+".join(cfg.modules()) or ("the checkpoint's modules" if resuming else "no module")
    if cfg.search:
        from pipeline.grid.search import run_search, search_lines

        scored = "3 inner folds of train" if cfg.search_on == "inner_cv" else "val"
        text = (
            f"plan: a search of {cfg.search} trials over {cfg.search_space}, each a grid of {grid_size(cfg)} "
            f"{cfg.head} run(s) over {modules} scored on {scored}; in {_where(cfg)}"
        )
        return Plan("search", grid_size(cfg), text, lambda: search_lines(run_search(cfg)))
    if cfg.grid():
        from pipeline.grid.runner import run_experiment
        from pipeline.grid.summary import grid_lines

        extra = " + ridge and svr baselines" if cfg.baselines else ""
        how = f"{cfg.folds} folds" if cfg.folds else "the dataset's split"
        text = f"plan: a grid of {grid_size(cfg)} {cfg.head} run(s){extra} over {modules} on {how}; in {_where(cfg)}"
        return Plan("grid", grid_size(cfg), text, lambda: grid_lines(run_experiment(cfg)))
    if cfg.head != "mlp":
        from pipeline.run.heads import fitted_lines, run_fitted

        text = f"plan: one {cfg.head} head fitted on {modules}; in {_where(cfg)}"
        return Plan("fitted head", 1, text, lambda: fitted_lines(run_fitted(cfg)))
    from pipeline.e2e.training import resumes_end_to_end, run_end_to_end
    from pipeline.run.training import run_lines, run_training

    resume = f", resumed from {resuming}" if resuming else ""
    if not cfg.fixed_features or resumes_end_to_end(cfg):
        text = f"plan: one end-to-end run over {modules} (backbones in the step){resume}; in {_where(cfg)}"
        return Plan("end-to-end", 1, text, lambda: run_lines(run_end_to_end(cfg, explicit)))
    text = f"plan: one MLP run over {modules}, {cfg.epochs} epochs{resume}; in {_where(cfg)}"
    return Plan("single", 1, text, lambda: run_lines(run_training(cfg, explicit)))
