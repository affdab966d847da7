"""The summary of a grid: mean +- std over runs per combination and model, every run, the seed ensemble; the printed
table, ``summary.json``, and with ``--ablate`` ``ablation.csv``, ``ablation.md`` and ``ablation.png``.

Three numbers per MLP row, all val Spearman: the **best** epoch (chosen on val, so optimistic), the **last** epoch,
and the **seed ensemble** (per fold, the mean of the seeds' last-epoch predictions). Baselines have no epochs: their
one val score per fold fills the last-epoch and ensemble columns. Rows are sorted by the last epoch, the honest one.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from config import TrainConfig
from core.io import atomic_write, write_json, write_text
from model.metrics import compute_metrics
from pipeline.batched import FoldData, RunResult

COLUMNS = ("best", "last", "ensemble")


def ensemble_spearman(results: list[RunResult], folds: list[FoldData]) -> list[float]:
    """Per fold, the val Spearman of the mean of the runs' last-epoch predictions (the seed ensemble)."""
    out = []
    for f, fold in enumerate(folds):
        preds = [r.last_pred for r in results if r.spec.fold == f]
        if preds:
            out.append(compute_metrics(np.mean(preds, axis=0), fold.y_val.cpu().numpy())["spearman"])
    return out


def mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (0 for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "n": len(arr)}


def _mlp_row(combo: tuple[str, ...], runs: list[RunResult], folds: list[FoldData]) -> dict:
    return {
        "combination": "+".join(combo),
        "modules": list(combo),
        "model": "mlp",
        "best": mean_std([r.best["val_spearman"] for r in runs]),
        "best_epoch": mean_std([r.best["epoch"] for r in runs]),
        "last": mean_std([r.history[-1]["val_spearman"] for r in runs]),
        "ensemble": mean_std(ensemble_spearman(runs, folds)),
        "runs": [
            {
                "seed": r.spec.seed,
                "fold": r.spec.fold,
                "dir": r.spec.dir_name,
                "best_epoch": r.best["epoch"],
                "best_spearman": r.best["val_spearman"],
                "last_epoch": r.history[-1]["epoch"],
                "last_spearman": r.history[-1]["val_spearman"],
                "last_mse": r.history[-1]["val_mse"],
            }
            for r in runs
        ],
    }


def _baseline_row(b: dict) -> dict:
    score = mean_std(b["per_fold"])
    row = {"combination": "+".join(b["modules"]), "modules": list(b["modules"]), "model": b["model"]}
    return row | {"best": None, "best_epoch": None, "last": score, "ensemble": score, "runs": b["runs"]}


def summarise(
    cfg: TrainConfig, results: list[RunResult], folds: list[FoldData], baselines: list[dict], seconds: float
) -> dict:
    combos = sorted({r.spec.modules for r in results}, key=lambda c: (len(c), c))
    rows = [_mlp_row(c, [r for r in results if r.spec.modules == c], folds) for c in combos]
    rows += [_baseline_row(b) for b in baselines]
    rows.sort(key=lambda row: -row["last"]["mean"] if not math.isnan(row["last"]["mean"]) else math.inf)
    return {
        "dataset": cfg.dataset,
        "seeds": sorted({r.spec.seed for r in results}),
        "folds": cfg.folds,
        "fold_seed": cfg.fold_seed if cfg.folds else None,
        "n_train": [len(f.y_train) for f in folds],
        "n_val": [len(f.y_val) for f in folds],
        "epochs": cfg.epochs,
        "runs": len(results),
        "batched": cfg.batched,
        "train_seconds": seconds,
        "metric": "val Spearman; best epoch chosen on val (optimistic); last epoch and seed ensemble are honest",
        "rows": rows,
    }


def _cell(stat: dict | None) -> str:
    return "-" if stat is None else f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def table_lines(summary: dict) -> list[str]:
    """The summary as a Markdown table, best row first."""
    lines = [
        "| combination | model | runs | best epoch (val-selected) | last epoch | seed ensemble |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        n = (
            row["last"]["n"]
            if row["model"] == "mlp"
            else f"{row['last']['n']} fit{'s' if row['last']['n'] > 1 else ''}"
        )
        cells = [row["combination"], row["model"], str(n), *(_cell(row[c]) for c in COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot_ablation(path: Path, summary: dict) -> None:
    """Val Spearman per combination and model, sorted, mean +- std error bars (last epoch), best and ensemble dots."""
    rows = summary["rows"][::-1]  # best at the top
    fig = Figure(figsize=(10, 1.5 + 0.32 * len(rows)))
    ax = fig.subplots()
    y = np.arange(len(rows))
    colors = {"mlp": "tab:blue", "ridge": "tab:gray", "svr": "tab:orange"}
    ax.barh(
        y,
        [r["last"]["mean"] for r in rows],
        xerr=[r["last"]["std"] for r in rows],
        color=[colors.get(r["model"], "tab:green") for r in rows],
        alpha=0.7,
        capsize=3,
        label="last epoch (mean ± std)",
    )
    best = [(i, r["best"]["mean"]) for i, r in enumerate(rows) if r["best"]]
    if best:
        ax.plot([b for _, b in best], [i for i, _ in best], "k|", ms=10, label="best epoch (val-selected)")
    ens = [(i, r["ensemble"]["mean"]) for i, r in enumerate(rows) if r["model"] == "mlp"]
    ax.plot([e for _, e in ens], [i for i, _ in ens], "r.", ms=8, label="seed ensemble")
    ax.set_yticks(y, [f"{r['combination']} ({r['model']})" for r in rows], fontsize=8)
    ax.set(xlabel="val Spearman", title=f"{summary['dataset']}: ablation over {summary['runs']} MLP runs")
    marks = [r["last"]["mean"] - r["last"]["std"] for r in rows] + [b for _, b in best] + [e for _, e in ens]
    high = [r["last"]["mean"] + r["last"]["std"] for r in rows] + [b for _, b in best] + [e for _, e in ens]
    finite = [v for v in marks + high if math.isfinite(v)]
    if finite:  # zoom on the differences: the bars start left of the lowest score
        ax.set_xlim(max(-1.0, min(finite) - 0.05), min(1.0, max(finite) + 0.02))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    with atomic_write(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)


def write_ablation_csv(path: Path, summary: dict) -> None:
    with atomic_write(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["combination", "model", "n", *(f"{c}_{s}" for c in COLUMNS for s in ("mean", "std"))])
        for row in summary["rows"]:
            vals = [row[c][s] if row[c] else "" for c in COLUMNS for s in ("mean", "std")]
            w.writerow([row["combination"], row["model"], row["last"]["n"], *vals])


def write_summary(run_dir: Path, summary: dict, ablation: bool) -> list[Path]:
    """``summary.json`` (and the ablation files); returns the paths written."""
    paths = [run_dir / "summary.json"]
    write_json(paths[0], summary)
    if ablation:
        paths += [run_dir / "ablation.csv", run_dir / "ablation.md", run_dir / "ablation.png"]
        write_ablation_csv(paths[1], summary)
        write_text(paths[2], "\n".join(table_lines(summary)) + "\n")
        plot_ablation(paths[3], summary)
    return paths


def summary_lines(summary: dict) -> list[str]:
    """What train.py prints for a grid."""
    where = f"{summary['folds']} folds" if summary["folds"] else "the dataset's val split"
    lines = [
        f"{summary['runs']} runs, seeds {summary['seeds']}, {where}: val Spearman "
        "(best epoch chosen on val, so optimistic; the last epoch and the seed ensemble are honest)",
        *table_lines(summary),
        f"trained in {summary['train_seconds']:.1f} s; run directory: {summary['run_dir']} (summary.json"
        + (
            ", ablation.csv, ablation.md, ablation.png)" if (Path(summary["run_dir"]) / "ablation.md").exists() else ")"
        ),
    ]
    return lines
