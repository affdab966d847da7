"""The run's plots, each readable on its own: what it shows, of which split, at which epoch, how good.

``scatter_val.png`` (predicted vs true, with Spearman rho, n, split and epoch), ``histograms_val.png`` (the two score
distributions over the range the scores occupy, not the whole 0-1 axis) and ``learning_curves.png`` (the named loss,
on a log scale when the first epochs dwarf the rest, and the rank correlations, with the best epoch marked).
Epochs are counted from 1, as a person counts them. ``matplotlib.figure.Figure`` draws without pyplot: no global
backend switch, no figure registry to leak into.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy.stats import spearmanr

PLOTS = ("scatter_val.png", "histograms_val.png", "learning_curves.png")
MAX_BINS = 40
LOG_RATIO = 5.0  # log scale when the first epoch's loss is this many times the median of the rest


def _rho(true: np.ndarray, pred: np.ndarray) -> float:
    return 0.0 if np.ptp(pred) == 0 else float(spearmanr(pred, true).statistic)


def scatter(path: Path, true: np.ndarray, pred: np.ndarray, name: str, split: str, epoch: str) -> None:
    fig = Figure(figsize=(5.2, 5.2))
    ax = fig.subplots()
    ax.scatter(true, pred, s=10, alpha=0.6)
    lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="prediction = truth")
    ax.text(0.03, 0.97, f"Spearman rho = {_rho(true, pred):.3f}\nn = {len(true)} {split} videos\n{epoch}",
            transform=ax.transAxes, va="top", bbox={"boxstyle": "round", "fc": "white", "alpha": 0.8})  # fmt: skip
    ax.set(xlabel=f"true memorability ({split})", ylabel="predicted memorability", title=f"{name}: {split} predictions")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def histograms(path: Path, true: np.ndarray, pred: np.ndarray, name: str, split: str, epoch: str) -> None:
    """Both distributions on shared bins spanning the data (plus a margin), so no part of the axis is empty; about
    2 sqrt(n) bins (8 to 40), so that a small split is not a comb of single videos."""
    lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    margin = max((hi - lo) * 0.05, 1e-3)
    bins = int(np.clip(round(2 * np.sqrt(len(true))), 8, MAX_BINS))
    edges = np.linspace(lo - margin, hi + margin, bins + 1)
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for values, label in ((true, "truth"), (pred, "prediction")):
        counts, _ = np.histogram(values, bins=edges)
        ax.stairs(counts / len(values), edges, label=f"{label} (mean {values.mean():.3f}, std {values.std():.3f})",
                  fill=True, alpha=0.5)  # fmt: skip
    ax.set(xlabel="memorability", ylabel="fraction of videos", xlim=(edges[0], edges[-1]),
           title=f"{name}: {split} score distributions, n = {len(true)}\n{epoch}")  # fmt: skip
    ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # room for the legend above the bars
    ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def learning_curves(path: Path, history: list[dict], loss: str, best_epoch: int, title: str) -> None:
    """Loss (named, log scale when the first epochs dwarf the rest) and val rank correlations, best epoch marked."""
    epochs = [h["epoch"] + 1 for h in history]
    train, val = np.array([h["train_loss"] for h in history]), np.array([h["val_loss"] for h in history])
    best = next(h for h in history if h["epoch"] + 1 == best_epoch) if best_epoch in epochs else None
    fig = Figure(figsize=(11, 4.2))
    a1, a2 = fig.subplots(1, 2)
    a1.plot(epochs, train, marker=".", label=f"train {loss}")
    a1.plot(epochs, val, marker=".", label=f"val {loss}")
    both = np.concatenate([train, val])
    log = len(epochs) > 2 and (both > 0).all() and max(train[0], val[0]) > LOG_RATIO * np.median(both)
    if log:
        a1.set_yscale("log")
    a1.set(xlabel="epoch", ylabel=f"{loss} loss" + (" (log scale)" if log else ""), title=f"loss: {loss}")
    a2.plot(epochs, [h["val_spearman"] for h in history], marker=".", label="val Spearman")
    a2.plot(epochs, [h["val_kendall"] for h in history], marker=".", label="val Kendall")
    a2.set(xlabel="epoch", ylabel="rank correlation", title="val rank correlation")
    if best is not None:
        for ax, label in ((a1, ""), (a2, f" (Spearman {best['val_spearman']:.3f})")):
            ax.axvline(best_epoch, color="tab:red", ls=":", lw=1.2, label=f"best epoch {best_epoch}{label}")
    for ax in (a1, a2):
        ax.legend()
        if len(epochs) <= 20:
            ax.set_xticks(epochs)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_run(
    run_dir: Path, history: list[dict], true: np.ndarray, pred: np.ndarray, name: str, best_epoch: int, loss: str
) -> list[Path]:
    """The three plots of a run; ``pred`` are the best epoch's val predictions, ``best_epoch`` counted from 0 as
    stored in the history (shown from 1)."""
    paths = [run_dir / p for p in PLOTS]
    shown = best_epoch + 1
    epoch = f"best epoch {shown} of {len(history)}"
    scatter(paths[0], true, pred, name, "val", epoch)
    histograms(paths[1], true, pred, name, "val", epoch)
    learning_curves(paths[2], history, loss, shown, f"{name}: {len(history)} epochs")
    return paths
