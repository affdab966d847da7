"""The one epoch loop of m3s. Every training is a step engine driven by ``fit``: a run over the in-memory feature
table (``pipeline.run.training.Trainer``), the batched runs of a grid (``pipeline.grid.batched``) and an end-to-end
run (``pipeline.e2e.training``). The loop owns the epochs, the row each run's metrics.jsonl gets, the best-epoch rule
(the highest val Spearman, the first on ties), what a run keeps of its best and last epochs, and SIGTERM (stopped as
Ctrl-C is); an engine owns its steps, its evaluation and its weights. A resumed run passes the tracks its checkpoint
restored and the epoch to start from.
"""

from __future__ import annotations

import signal
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm


class Engine(ABC):
    """What ``fit`` drives: ``n_runs`` trainings at once, each with its own val predictions."""

    n_runs: int = 1
    opt: torch.optim.Optimizer

    def lrs(self) -> dict[str, float]:
        """The learning rates of the epoch about to train, as the row records them."""
        return {"lr": self.opt.param_groups[0]["lr"]}

    @abstractmethod
    def step_epoch(self, epoch: int) -> list[float]:
        """One epoch of steps; the mean train loss of each run."""

    @abstractmethod
    def score_val(self) -> list[tuple[dict, np.ndarray]]:
        """Each run's val metrics and predictions, in the order of the runs."""

    def row_extras(self, train_seconds: float) -> dict:
        """What the engine adds to every row after the learning rates (e.g. time spent waiting for data)."""
        return {}

    @abstractmethod
    def weights(self, run: int) -> dict[str, torch.Tensor]:
        """A CPU copy of run ``run``'s weights now (kept when it improves, with ``keep_best_weights``)."""


@dataclass
class Track:
    """One run's record: every epoch's row, the best epoch's row and predictions (and weights), the last predictions."""

    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    best_pred: np.ndarray | None = None
    best_weights: dict[str, torch.Tensor] | None = None
    last_pred: np.ndarray | None = None

    def add(self, row: dict, pred: np.ndarray) -> bool:
        """Record an epoch; True when it is the best so far."""
        self.history.append(row)
        self.last_pred = pred
        improved = self.best is None or row["val_spearman"] > self.best["val_spearman"]
        if improved:
            self.best, self.best_pred = dict(row), pred
        return improved


#: (epoch, each run's row, whether each improved) -> stop training now
EpochHook = Callable[[int, list[dict], list[bool]], bool | None]


def fit(
    engine: Engine,
    tracks: list[Track],
    epochs: int,
    start: int = 0,
    on_epoch: EpochHook | None = None,
    progress: str | None = None,
    keep_best_weights: bool = False,
) -> list[Track]:
    """Train ``engine`` from epoch ``start`` to ``epochs`` (or until ``on_epoch`` says stop), recording each run in
    its track. ``progress``: the loss name, for a bar on a terminal and a line an epoch elsewhere (single runs).
    A batched epoch's time is shared by its runs: each row's ``seconds`` is its share."""
    bar = tqdm(range(start, epochs), desc="epochs", unit="ep", disable=None if progress else True)
    with sigterm_as_interrupt():
        for epoch in bar:
            t0 = time.perf_counter()
            lrs = engine.lrs()
            losses = engine.step_epoch(epoch)
            extras = engine.row_extras(time.perf_counter() - t0)
            scored = engine.score_val()
            seconds = (time.perf_counter() - t0) / engine.n_runs
            rows, improved = [], []
            for run, (track, loss, (metrics, pred)) in enumerate(zip(tracks, losses, scored, strict=True)):
                row = {"epoch": epoch, "lr": lrs["lr"], "train_loss": loss, "seconds": seconds}
                row |= {k: v for k, v in lrs.items() if k != "lr"} | extras
                row |= {f"val_{k}": v for k, v in metrics.items()}
                better = track.add(row, pred)
                if better and keep_best_weights:
                    track.best_weights = engine.weights(run)
                rows.append(row)
                improved.append(better)
            if progress:
                _report(bar, epoch, epochs, progress, rows[0], improved[0])
            if on_epoch is not None and on_epoch(epoch, rows, improved):
                break
    return tracks


def _report(bar: tqdm, epoch: int, epochs: int, loss: str, row: dict, improved: bool) -> None:
    bar.set_postfix(loss=f"{row['train_loss']:.4f}", val_spearman=f"{row['val_spearman']:.4f}")
    if bar.disable:  # no terminal (a log file, a job scheduler): one line an epoch instead of the bar
        print(f"epoch {epoch + 1}/{epochs}: train {loss} {row['train_loss']:.4f}, val Spearman "
              f"{row['val_spearman']:.4f}{' (best so far)' if improved else ''}", flush=True)  # fmt: skip


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's kill, ``kill PID``) stops training as Ctrl-C does (signals: main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
