"""What a run leaves behind: the run directory (config, metrics, predictions, plots, checkpoints) and wandb."""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import numpy as np
import yaml

from config import TrainConfig
from core.io import ConfigError, remove_stale_temps, write_csv, write_json, write_text
from core.rundir import owned
from pipeline.run.checkpoint import save_checkpoint
from pipeline.run.plots import plot_run


def write_predictions(path: Path, ids: list[str], true: np.ndarray | None, columns: dict[str, np.ndarray]) -> None:
    """CSV ``id, score, <prediction columns>`` (score empty where unknown)."""
    rows = (
        [vid, "" if true is None else f"{true[i]:.6f}", *(f"{c[i]:.6f}" for c in columns.values())]
        for i, vid in enumerate(ids)
    )
    write_csv(path, ["id", "score", *columns], rows)


def _epoch(line: str) -> float:
    """The epoch of a metrics.jsonl line; a line cut short by a kill counts as no epoch (it is dropped)."""
    try:
        return json.loads(line)["epoch"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")


def write_config(run_dir: Path, cfg: TrainConfig) -> None:
    """A run's config.yaml, with the roots as resolved: '' (the default) would say nothing of where the data was."""
    resolved = {"data_dir": str(cfg.resolved_data_dir()), "features_dir": str(cfg.resolved_features_dir())}
    write_text(run_dir / "config.yaml", yaml.safe_dump(asdict(cfg) | resolved, sort_keys=False))


def _wandb_run(cfg: TrainConfig, name: str, group: str | None, run_dir: Path):
    import wandb  # deliberately lazy here and below: half a second of start-up, needed only with -l

    return wandb.init(project=cfg.project, name=name, group=group, tags=cfg.tags or None,
                      config=asdict(cfg), dir=str(run_dir))  # fmt: skip


class RunLogger:
    """Writes ``runs/<name>/`` and, with ``cfg.log``, mirrors it to wandb. Use as a context manager."""

    def __init__(self, cfg: TrainConfig, resume_epoch: int = 0) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.runs_dir) / cfg.name
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.wandb = None
        self.notes: dict = {}  # what summary.json must say beside the metrics (e.g. smoke stores)
        with ExitStack() as stack:  # one process writes a run directory: a second one stops here, with one line
            stack.enter_context(owned(self.run_dir))
            write_config(self.run_dir, cfg)
            remove_stale_temps(self.run_dir)  # what a kill inside torch.save left
            # A resumed run drops the lines of epochs after its checkpoint, so metrics.jsonl stays one line an epoch.
            kept = []
            if resume_epoch and self.metrics_path.exists():
                kept = [line for line in self.metrics_path.read_text().splitlines() if _epoch(line) < resume_epoch]
            write_text(self.metrics_path, "".join(f"{line}\n" for line in kept))
            if cfg.log:
                self.wandb = _wandb_run(cfg, cfg.name, cfg.group or None, self.run_dir)
            self._owned = stack.pop_all()  # held until __exit__ (released at once if anything above fails)

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.wandb is not None:
                self.wandb.finish(exit_code=0 if exc[0] is None else 1)
        finally:
            self._owned.close()

    def epoch(self, row: dict, pred: np.ndarray, true: np.ndarray) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            import wandb

            # epochs count from 1 in wandb, as printed and in the plots (metrics.jsonl and checkpoints keep 0-based)
            log = row | {"epoch": row["epoch"] + 1}
            log |= {"val_pred_hist": wandb.Histogram(pred), "val_true_hist": wandb.Histogram(true)}
            self.wandb.log(log, step=row["epoch"])

    def checkpoint(self, state: dict, is_best: bool) -> None:
        """Write ``last.pt`` (and ``best.pt`` when this epoch is the best so far). With wandb, every epoch's checkpoint
        is a version of the artifact ``model-<run id>`` with aliases ``epoch-N`` and ``latest`` (plus ``best``), which
        is what ``--checkpoint_run_id`` / ``--checkpoint_epoch`` fetch."""
        last = self.run_dir / "last.pt"
        if is_best:  # best first: a kill in between leaves last.pt behind, and resuming repeats this epoch
            save_checkpoint(state, self.run_dir / "best.pt")
        save_checkpoint(state, last)
        if self.wandb is not None:
            import wandb

            art = wandb.Artifact(f"model-{self.wandb.id}", type="model", metadata={"epoch": state["epoch"]})
            art.add_file(str(last), name="checkpoint.pt")
            aliases = [f"epoch-{state['epoch']}", "latest"] + (["best"] if is_best else [])
            self.wandb.log_artifact(art, aliases=aliases)

    def finish(self, history: list[dict], best: dict, val, best_pred: np.ndarray, last_pred: np.ndarray) -> None:
        true = val.y.cpu().numpy()
        write_predictions(
            self.run_dir / "predictions_val.csv", val.ids, true, {"pred_best": best_pred, "pred_last": last_pred}
        )
        write_json(self.run_dir / "summary.json", {"best": best, "last": history[-1], **self.notes})
        plot_run(self.run_dir, history, true, best_pred, self.cfg.name, best["epoch"], self.cfg.loss)
        if self.wandb is not None:
            self.wandb.summary["best_spearman"] = best["val_spearman"]
            self.wandb.summary["best_epoch"] = best["epoch"] + 1  # 1-based, as printed
            self.wandb.summary["last_spearman"] = history[-1]["val_spearman"]


def log_finished_run(cfg: TrainConfig, run_dir: Path, history: list[dict], best: dict, name: str, group: str) -> None:
    """With ``-l``, a run trained elsewhere (a grid's sub-run, written when its chunk ends) as a wandb run of its own
    in ``group``: every epoch's row (epochs from 1, as printed), its best and last epochs, and its best.pt / last.pt as
    versions of the artifact ``model-<run id>`` (aliases ``best`` / ``latest`` and ``epoch-N``) when they exist."""
    import wandb

    run = _wandb_run(cfg, name, group, run_dir)
    for row in history:
        run.log(row | {"epoch": row["epoch"] + 1}, step=row["epoch"])
    run.summary["best_spearman"] = best["val_spearman"]
    run.summary["best_epoch"] = best["epoch"] + 1
    run.summary["last_spearman"] = history[-1]["val_spearman"]
    for file, epoch, aliases in (("best.pt", best["epoch"], ["best"]), ("last.pt", history[-1]["epoch"], ["latest"])):
        if (run_dir / file).is_file():  # with -s: the checkpoints, as a single run's artifact versions
            art = wandb.Artifact(f"model-{run.id}", type="model", metadata={"epoch": epoch})
            art.add_file(str(run_dir / file), name="checkpoint.pt")
            run.log_artifact(art, aliases=[f"epoch-{epoch}", *aliases])
    run.finish()


def fetch_wandb_checkpoint(run_id: str, epoch: int | None, project: str) -> Path:
    """Download the checkpoint artifact of a wandb run (alias ``epoch-N``, or ``latest``); needs network access."""
    import wandb

    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        raise ConfigError(
            f"--checkpoint_run_id needs wandb online (WANDB_MODE={os.environ['WANDB_MODE']}); "
            "use --checkpoint_local runs/<name>/last.pt instead"
        )
    parts = run_id.split("/")
    prefix = "/".join(parts[:-1]) if len(parts) > 1 else project
    alias = f"epoch-{epoch}" if epoch is not None else "latest"
    try:
        art = wandb.Api().artifact(f"{prefix}/model-{parts[-1]}:{alias}", type="model")
    except Exception as err:  # wandb raises several error types for a missing run or alias
        raise ConfigError(f"cannot fetch checkpoint {prefix}/model-{parts[-1]}:{alias} from wandb: {err}") from err
    return Path(art.download()) / "checkpoint.pt"
