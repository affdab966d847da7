"""Experiments: a grid of runs (seeds x folds x module combinations) trained at once, and what it leaves behind.

``train.py --seeds 1 2 3 --folds 5 --ablate --baselines`` comes here (``TrainConfig.grid()``). The stores are read
once, each fold's table is built once, and every run of the grid trains in one batched model
(``pipeline.grid.batched``; ``--no-batched`` trains them one by one through the ordinary ``Trainer`` instead). The run
directory gets one sub-run per (combination, seed, fold), ``<combination>/seed<S>-fold<F>/``, with the files of an
ordinary run (config.yaml, metrics.jsonl, predictions_val.csv, summary.json; best.pt and last.pt with ``-s``), and
the summary of the whole grid (``pipeline.grid.summary``).
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import yaml

from config import TrainConfig
from core.device import resolve_device
from core.io import ConfigError, Interrupted, escape_bytes, read_csv, write_json, write_text
from core.rundir import free_run_name, owned
from dataset import load_records
from pipeline.grid.batched import DoneCallback, EpochCallback, train_batched
from pipeline.grid.folds import fold_data, load_or_make_folds, make_folds
from pipeline.grid.specs import RunResult, RunSpec
from pipeline.grid.summary import summarise, write_summary
from pipeline.run.checkpoint import build_checkpoint, save_checkpoint
from pipeline.run.heads import BASELINES, head_results
from pipeline.run.logger import RunLogger, log_finished_run, write_config, write_predictions
from pipeline.run.loop import sigterm_as_interrupt
from pipeline.run.table import FeatureTable, SplitData
from pipeline.run.training import Trainer, set_threads
from tiers import TIERS, module_tiers


def combinations(modules: list[str]) -> list[tuple[str, ...]]:
    """Every non-empty combination of ``modules``, smallest first, each in the model's input order."""
    return [c for k in range(1, len(modules) + 1) for c in itertools.combinations(modules, k)]


def with_modules(cfg: TrainConfig, modules: tuple[str, ...]) -> TrainConfig:
    """``cfg`` with only ``modules`` switched on (tier switches, and the subset of ``--extra_features``)."""
    sub = copy.deepcopy(cfg)
    for tier in TIERS.values():
        if tier.has_switch:
            setattr(sub, tier.switch, any(m in modules for m in tier.modules(cfg)))
    sub.extra_features = [m for m in cfg.extra_features if m in modules]
    if list(module_tiers(sub)) != list(modules):
        raise ConfigError(f"cannot select exactly the modules {modules} by switches (got {list(module_tiers(sub))})")
    return sub


def grid_seeds(cfg: TrainConfig) -> list[int]:
    if cfg.seeds:
        return list(cfg.seeds)
    if cfg.seed is None:
        cfg.seed = int.from_bytes(os.urandom(4), "little")  # recorded in config.yaml
    return [cfg.seed]


def plan_runs(cfg: TrainConfig, n_folds: int) -> list[RunSpec]:
    """The grid, ordered by fold then seed (runs sharing a batch order are neighbours), then combination."""
    combos = combinations(cfg.modules()) if cfg.ablate else [tuple(cfg.modules())]
    return [RunSpec(s, f, c, cfg.head) for f in range(n_folds) for s in grid_seeds(cfg) for c in combos]


def subrun_config(cfg: TrainConfig, spec: RunSpec, run_dir: Path) -> TrainConfig:
    """The config of one sub-run, as ``train.py`` would take it (one seed, its modules, no grid flags)."""
    sub = with_modules(cfg, spec.modules)
    sub.seed, sub.seeds, sub.ablate, sub.baselines, sub.search = spec.seed, [], False, False, 0
    sub.head, sub.runs_dir, sub.name = spec.head, str(run_dir / spec.combination), spec.run_name  # spec.dir_name
    return sub


#: Fields that may change between two invocations of one experiment (how it runs, where it logs, how many trials).
RERUN_FREE = ("search", "threads", "log", "project", "group", "tags", "device")


def _recorded(run_dir: Path) -> dict | None:
    try:
        theirs = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return theirs if isinstance(theirs, dict) else None


def same_experiment(run_dir: Path, cfg: TrainConfig, free: tuple[str, ...] = RERUN_FREE) -> bool:
    """Whether ``run_dir`` holds this experiment (its config.yaml equals ``cfg`` but for the fields ``free``): a rerun
    of the same command continues it; anything else is another experiment, which gets a directory of its own."""
    theirs = _recorded(run_dir)
    ours = yaml.safe_load(yaml.safe_dump(asdict(cfg), sort_keys=False))
    return theirs is not None and {k: v for k, v in theirs.items() if k not in free} == {
        k: v for k, v in ours.items() if k not in free
    }


@contextmanager
def experiment_dir(cfg: TrainConfig, kind: str) -> Iterator[Path]:
    """Name, claim and hold the run directory of a grid or a search before any data loads: this same experiment
    interrupted earlier is continued (with the seed it drew; a search also when finished, to add trials), a finished
    grid or another experiment gets ``name-2``..., and a live owner of the directory stops this process."""
    cfg.check()
    free = RERUN_FREE + (("seed",) if cfg.seed is None and not cfg.seeds else ())  # a seed to draw: take the run's
    if not cfg.name:
        cfg.name = f"{cfg.dataset}_{'+'.join(cfg.modules())}_{kind}_{time.strftime('%Y%m%d-%H%M%S')}"

    def resumable(d: Path) -> bool:  # a finished grid is not continued: running it again is a new experiment
        return same_experiment(d, cfg, free) and (kind == "search" or not (d / "summary.json").is_file())

    cfg.name = free_run_name(Path(cfg.runs_dir), cfg.name, resumable=resumable)
    with owned(Path(cfg.runs_dir) / cfg.name) as run_dir:
        earlier = _recorded(run_dir)
        if "seed" in free and earlier and same_experiment(run_dir, cfg, free):
            cfg.seed = earlier.get("seed")
        grid_seeds(cfg)  # draws the seed of a new experiment, recorded in its config.yaml
        write_text(run_dir / "config.yaml", yaml.safe_dump(asdict(cfg), sort_keys=False))
        try:
            yield run_dir
        except BaseException:
            if earlier is None and {p.name for p in run_dir.iterdir()} <= {"config.yaml", ".lock"}:
                (run_dir / "config.yaml").unlink()  # stopped before any result: the name stays free
            raise


class Grid:
    """What a grid trains on: the folds' tables, built once, and the runs; it trains them, and writes and reads back
    its sub-runs."""

    def __init__(self, cfg: TrainConfig, inner_cv: int = 0) -> None:
        """``cfg``: checked, named and its run directory claimed (``experiment_dir``). ``inner_cv=K``: the grid runs
        on K folds of the train videos only (``--search_on inner_cv``)."""
        self.cfg, self.device = cfg, resolve_device(cfg.device)
        self.runs = plan_runs(cfg, max(cfg.folds, 1))
        self.run_dir = Path(cfg.runs_dir) / cfg.name
        records = load_records(cfg.dataset, cfg)
        if inner_cv:
            records = [r for r in records if r.split == "train"]
            fold_ids = make_folds([r.id for r in records if r.score is not None], inner_cv, cfg.fold_seed)
        else:
            fold_ids = load_or_make_folds(cfg, records) if cfg.folds else None
        self.folds, self.dims, self.sources, self.fitted = fold_data(cfg, records, fold_ids, self.device)
        self.threads = set_threads(cfg, runs=len(self.runs) if cfg.batched else 1)

    def describe(self) -> str:
        n = {"train": len(self.folds[0].y_train), "val": len(self.folds[0].y_val)}
        how = "batched" if self.cfg.batched else "one by one"
        where = f"{self.cfg.folds} folds" if self.cfg.folds else "the dataset's split"
        return (
            f"{self.cfg.dataset}: {len(self.runs)} runs ({how}, {self.threads} threads) over {where} {n}; "
            f"modules {self.dims}; device {self.device}"
        )

    def train(
        self,
        cfg: TrainConfig | None = None,
        on_epoch: EpochCallback | None = None,
        runs: list[RunSpec] | None = None,
        on_done: DoneCallback | None = None,
        save_dir: Path | None = None,
    ) -> list[RunResult]:
        """``runs`` (default: all) with ``cfg`` (default: the grid's; a search passes a trial's), batched, or with
        ``--no-batched`` each through the ordinary ``Trainer`` (and its run directory, plots included), one after
        another. ``save_dir``: where the batched engine keeps its chunk in training (a grid's directory, with -s)."""
        cfg = cfg or self.cfg
        runs = self.runs if runs is None else runs
        if cfg.batched:
            return train_batched(cfg, runs, self.folds, self.dims, self.device, on_epoch, on_done, save_dir)
        out = []
        for spec in runs:
            sub = subrun_config(cfg, spec, self.run_dir)
            sub.save = sub.log = False  # checkpoints and wandb as for batched runs, when it finishes (Grid.write)
            trainer = Trainer(sub, self.table(spec), self.device)
            with RunLogger(sub) as logger:
                trainer.fit(logger)
            t = trainer.track
            out.append(RunResult(spec, t.history, t.best, t.best_pred, t.last_pred, trainer.weights(0), t.best_weights))
            if on_done is not None:
                on_done(out[-1:])
        return out

    def table(self, spec: RunSpec) -> FeatureTable:
        """The fold of ``spec`` as the ordinary ``FeatureTable`` of its modules."""
        fold, modules = self.folds[spec.fold], spec.modules

        def split(ids: list[str], x: dict[str, torch.Tensor], y: torch.Tensor) -> SplitData:
            return SplitData(ids, torch.cat([x[m] for m in modules], dim=1), y)

        stats = {m: s for m, s in fold.stats.items() if m in modules}
        splits = {
            "train": split(fold.train_ids, fold.x_train, fold.y_train),
            "val": split(fold.val_ids, fold.x_val, fold.y_val),
        }
        return FeatureTable(list(modules), {m: self.dims[m] for m in modules}, splits, stats, self.sources)

    def write(self, res: RunResult) -> Path:
        """The files of an ordinary run for one run of the grid (the sequential path's RunLogger has written most)."""
        cfg, fold = self.cfg, self.folds[res.spec.fold]
        sub = subrun_config(cfg, res.spec, self.run_dir)
        path = Path(sub.runs_dir) / sub.name
        path.mkdir(parents=True, exist_ok=True)
        write_config(path, sub)
        write_text(path / "metrics.jsonl", "".join(f"{json.dumps(r)}\n" for r in res.history))
        true = fold.y_val.cpu().numpy()
        write_predictions(
            path / "predictions_val.csv", fold.val_ids, true, {"pred_best": res.best_pred, "pred_last": res.last_pred}
        )
        if cfg.save:  # best.pt and last.pt, as a single run's -s writes them (scoring checkpoints: no optimiser state)
            train_mean = float(fold.y_train.double().mean())
            to_best = [row for row in res.history if row["epoch"] <= res.best["epoch"]]
            for name, history, weights in (
                ("best.pt", to_best, res.best_weights),
                ("last.pt", res.history, res.weights),
            ):
                state = build_checkpoint(sub, list(res.spec.modules), self.dims, fold.stats, self.sources, self.fitted,
                                         history, weights, train_mean, res.best)  # fmt: skip
                save_checkpoint(state, path / name)
        if cfg.log:  # its own wandb run, in the grid's group (the grid's table is one more run, at the end)
            log_finished_run(sub, path, res.history, res.best, f"{cfg.name}/{res.spec.dir_name}", cfg.group or cfg.name)
        # written last: it marks the run finished
        write_json(path / "summary.json", {"best": res.best, "last": res.history[-1]})
        return path

    def read(self, spec: RunSpec) -> RunResult | None:
        """A sub-run that an earlier, interrupted invocation of this grid finished (its summary.json is written last),
        as the result training it again would give; None if it is not finished or does not match this fold."""
        path = self.run_dir / spec.dir_name
        if not (path / "summary.json").is_file():
            return None
        try:
            rows = read_csv(path / "predictions_val.csv")
            history = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line]
            best = json.loads((path / "summary.json").read_text())["best"]
        except (OSError, ValueError, KeyError):
            return None
        epochs = self.cfg.epochs if spec.head == "mlp" else 1  # a head fitted in one go has one row
        same_videos = [r["id"] for r in rows] == [escape_bytes(i) for i in self.folds[spec.fold].val_ids]
        if not same_videos or len(history) != epochs:
            return None
        columns = {k: np.array([float(r[k]) for r in rows]) for k in ("pred_best", "pred_last")}
        return RunResult(spec, history, best, columns["pred_best"], columns["pred_last"])


def run_line(res: RunResult, k: int, n: int, seconds: float) -> str:
    """The progress line of one finished run of a grid."""
    spec, last = res.spec, res.history[-1]
    return (
        f"[{k}/{n}] {spec.combination} seed {spec.seed} fold {spec.fold}: last-epoch val Spearman "
        f"{last['val_spearman']:.4f} (best {res.best['val_spearman']:.4f} at epoch {res.best['epoch'] + 1}, "
        f"selected on val) [{seconds:.0f} s]"
    )


def run_experiment(cfg: TrainConfig) -> dict:
    """Everything ``train.py`` does for a grid: train it (the runs an interrupted invocation left unfinished), write
    each sub-run as it finishes, then the summary (and the ablation)."""
    with experiment_dir(cfg, "grid"):
        grid = Grid(cfg)
        print(grid.describe())
        done = {spec: res for spec in grid.runs if (res := grid.read(spec)) is not None}
        todo = [spec for spec in grid.runs if spec not in done]
        if done:
            print(
                f"{len(done)} of {len(grid.runs)} runs finished earlier in {grid.run_dir}; "
                f"training the other {len(todo)}"
            )
        t0 = time.perf_counter()
        infos: dict = {}

        def finished(results: list[RunResult]) -> None:
            for res in results:
                grid.write(res)
                done[res.spec] = res
                print(run_line(res, len(done), len(grid.runs), time.perf_counter() - t0), flush=True)

        try:
            with sigterm_as_interrupt():
                if cfg.head == "mlp":  # with -s, the chunk in training is saved as it goes (a kill resumes it)
                    grid.train(runs=todo, on_done=finished, save_dir=grid.run_dir if cfg.save else None)
                else:  # a head fitted in one go, run by run
                    for spec in todo:
                        res, fits = head_results(cfg, cfg.head, [spec], grid.folds, grid.dims, grid.device)
                        infos |= fits
                        finished(res)
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted: {len(done)} of {len(grid.runs)} runs are finished in {grid.run_dir} and kept"
                + (", and the chunk in training as of its last save" if any(grid.run_dir.glob("chunk-*.pt")) else "")
                + f"; run the same command again to train the other {len(grid.runs) - len(done)}"
            ) from None
        seconds = time.perf_counter() - t0
        results = [done[spec] for spec in grid.runs]
        baselines, t0 = [], time.perf_counter()
        if cfg.baselines:  # each baseline once per (fold, combination): their fits do not depend on the seed
            combos = sorted({r.spec.modules for r in results}, key=lambda c: (len(c), c))
            specs = [RunSpec(grid_seeds(cfg)[0], f, c) for f in range(len(grid.folds)) for c in combos]
            for name in (b for b in BASELINES if b != cfg.head):
                res, fits = head_results(cfg, name, specs, grid.folds, grid.dims, grid.device)
                baselines += res
                infos |= fits
        for res in baselines:
            grid.write(res)
        summary = summarise(cfg, results + baselines, grid.folds, seconds, infos, time.perf_counter() - t0)
        summary["run_dir"] = str(grid.run_dir)
        paths = write_summary(grid.run_dir, summary, ablation=cfg.ablate)
        if cfg.log:
            log_grid(cfg, summary, paths)
        return summary


def log_grid(cfg: TrainConfig, summary: dict, paths: list[Path]) -> None:
    """With ``-l``: one wandb run for the grid, its table (one row per combination and model) and the ablation plot."""
    import wandb

    run = wandb.init(
        project=cfg.project, name=cfg.name, group=cfg.group or None, tags=cfg.tags or None, config=asdict(cfg),
        dir=str(paths[0].parent),
    )  # fmt: skip
    columns = ["combination", "model", "n", "best_mean", "best_std", "last_mean", "last_std", "ensemble_mean",
               "head_minus_this", "ci95_low", "ci95_high"]  # fmt: skip
    table = wandb.Table(columns=columns)
    for row in summary["rows"]:
        best = row["best"] or {"mean": None, "std": None}
        last, ens = row["last"], row["ensemble"]
        paired = row.get("head_minus_this") or {"diff": None, "ci95": [None, None]}  # beside --baselines
        table.add_data(row["combination"], row["model"], last["n"], best["mean"], best["std"], last["mean"],
                       last["std"], ens["mean"], paired["diff"], *paired["ci95"])  # fmt: skip
    images = {p.stem: wandb.Image(str(p)) for p in paths if p.suffix == ".png"}  # ablation.png with --ablate
    run.log({"summary": table} | images)
    top = summary["rows"][0]
    run.summary.update({"best_row": f"{top['combination']} ({top['model']})", "last_spearman": top["last"]["mean"]})
    run.finish()
