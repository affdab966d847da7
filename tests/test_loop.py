"""The one epoch loop (``pipeline.run.loop``) over a scripted engine: the rows it writes, the best-epoch rule, what
each run keeps, stopping, resuming, and SIGTERM."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch

from pipeline.run import loop
from pipeline.run.loop import Engine, Track


class Scripted(Engine):
    """Two runs whose val Spearman per epoch is scripted; run r's 'weights' after epoch e are [10 e + r]."""

    n_runs = 2

    def __init__(self, scores: list[tuple[float, float]]) -> None:
        self.scores, self.epoch, self.lr = scores, -1, 0.5

    def lrs(self) -> dict[str, float]:
        return {"lr": self.lr, "backbone_lr": self.lr / 10}

    def step_epoch(self, epoch: int) -> list[float]:
        self.epoch = epoch
        self.lr /= 2
        return [1.0 + epoch, 2.0 + epoch]

    def row_extras(self, train_seconds: float) -> dict:
        return {"data_wait_seconds": 0.0}

    def score_val(self) -> list[tuple[dict, np.ndarray]]:
        return [({"spearman": s}, np.full(3, 10.0 * self.epoch + r)) for r, s in enumerate(self.scores[self.epoch])]

    def weights(self, run: int) -> dict[str, torch.Tensor]:
        return {"w": torch.tensor([10.0 * self.epoch + run])}


def test_rows_best_epoch_and_what_each_run_keeps():
    engine = Scripted([(0.1, 0.5), (0.3, 0.5), (0.3, 0.2), (0.2, 0.4)])
    tracks = loop.fit(engine, [Track(), Track()], 4, keep_best_weights=True)
    first = tracks[0].history[0]
    assert list(first) == ["epoch", "lr", "train_loss", "seconds", "backbone_lr", "data_wait_seconds", "val_spearman"]
    assert (first["epoch"], first["lr"], first["backbone_lr"], first["train_loss"]) == (0, 0.5, 0.05, 1.0)
    assert [r["lr"] for r in tracks[1].history] == [0.5, 0.25, 0.125, 0.0625]  # the rate the epoch trained with
    assert first["seconds"] == tracks[1].history[0]["seconds"] >= 0  # a batched epoch's time, shared
    # run 0: 0.3 at epochs 1 and 2, the first is kept; run 1: 0.5 at epochs 0 and 1, the first is kept
    assert [t.best["epoch"] for t in tracks] == [1, 0]
    assert tracks[0].best_pred.tolist() == [10.0] * 3 and tracks[1].best_pred.tolist() == [1.0] * 3
    assert [t.best_weights["w"].item() for t in tracks] == [10.0, 1.0]
    assert [t.last_pred[0] for t in tracks] == [30.0, 31.0]


def test_a_hook_stops_training_and_a_resumed_track_goes_on():
    seen = []

    def stop_after_one(epoch, rows, improved):
        seen.append((epoch, improved))
        return True

    engine = Scripted([(0.1, 0.5), (0.9, 0.6), (0.2, 0.1)])
    tracks = loop.fit(engine, [Track(), Track()], 3, on_epoch=stop_after_one)
    assert seen == [(0, [True, True])] and len(tracks[0].history) == 1
    assert tracks[0].best_weights is None  # kept only when asked
    resumed = loop.fit(engine, tracks, 3, start=1)  # the tracks a checkpoint restored, from the next epoch
    assert [r["epoch"] for r in resumed[0].history] == [0, 1, 2]
    assert [t.best["epoch"] for t in resumed] == [1, 1]


def test_sigterm_during_an_epoch_stops_it_as_ctrl_c_does():
    class Killed(Scripted):
        def step_epoch(self, epoch):
            os.kill(os.getpid(), signal.SIGTERM)
            return super().step_epoch(epoch)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        loop.fit(Killed([(0.1, 0.2)]), [Track(), Track()], 1)
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
