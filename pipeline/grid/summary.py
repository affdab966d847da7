"""The summary of a grid: mean +- std over runs per combination and model, every run, the seed ensemble; the printed
table, ``summary.json``, and with ``--ablate`` ``ablation.csv``, ``ablation.md`` and ``ablation.png``.

Three numbers per row, all val Spearman: the **seed ensemble** (per fold, the mean of the seeds' last-epoch
predictions: the headline), the **last** epoch (mean over runs), and the **best** epoch (chosen on val, so optimistic;
only heads trained over epochs have one). A fitted head (ridge, svr, stack) has one 'epoch': its val score fills the
last-epoch and ensemble columns. Rows are sorted by the seed ensemble. A mean over a single value has no spread:
it is printed ``± -``, not ``± 0.0000``. A baseline's row (``--baselines``) also carries ``head_minus_this``: the
head's seed ensemble minus the baseline's on the same val videos, with a paired-bootstrap 95 % interval.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from config import TrainConfig
from core.io import atomic_write, write_csv, write_json, write_text
from model.heads import HEADS
from model.metrics import compute_metrics, paired_difference
from pipeline.grid.specs import FoldData, RunResult

COLUMNS = ("ensemble", "last", "best")


def ensembles(results: list[RunResult], folds: list[FoldData]) -> dict[int, np.ndarray]:
    """Per fold the runs trained on, the mean of their last-epoch val predictions (the seed ensemble)."""
    per_fold = {f: [r.last_pred for r in results if r.spec.fold == f] for f in range(len(folds))}
    return {f: np.mean(preds, axis=0) for f, preds in per_fold.items() if preds}


def ensemble_spearman(results: list[RunResult], folds: list[FoldData]) -> list[float]:
    """Per fold, the val Spearman of the seed ensemble."""
    return [compute_metrics(p, folds[f].y_val.cpu().numpy())["spearman"] for f, p in ensembles(results, folds).items()]


def versus(head: list[RunResult], other: list[RunResult], folds: list[FoldData]) -> dict | None:
    """The head's seed ensemble minus another model's on the same combination, with its paired 95 % interval
    (``model.metrics.paired_difference``) over the folds both were trained on; None where they share none."""
    a, b = ensembles(head, folds), ensembles(other, folds)
    shared = sorted(set(a) & set(b))
    if not shared:
        return None
    return paired_difference([a[f] for f in shared], [b[f] for f in shared],
                             [folds[f].y_val.cpu().numpy() for f in shared])  # fmt: skip


def mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (0 for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "n": len(arr)}


def _row(combo: tuple[str, ...], head: str, runs: list[RunResult], folds: list[FoldData], infos: dict) -> dict:
    """One (combination, head) row: best epoch (epoch-trained heads only), last epoch, seed ensemble, every run."""
    epochs = HEADS[head].epochs
    return {
        "combination": "+".join(combo),
        "modules": list(combo),
        "model": head,
        "best": mean_std([r.best["val_spearman"] for r in runs]) if epochs else None,
        "best_epoch": mean_std([r.best["epoch"] for r in runs]) if epochs else None,
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
            | ({"fit": infos[r.spec]} if r.spec in infos else {})
            for r in runs
        ],
    }


def _notes(rows: list[dict], head: str) -> list[str]:
    """What a reader must not miss: a baseline that beats the grid's head, grids whose choice sat on an edge,
    scikit-learn's ill-conditioning warnings (counted, not printed one by one)."""
    notes = []
    main = {r["combination"]: r for r in rows if r["model"] == head}
    for r in rows:
        m, d = main.get(r["combination"]), r.get("head_minus_this")
        if r["model"] != head and m and r["ensemble"]["mean"] > m["ensemble"]["mean"]:
            paired = ""
            if d:
                lo, hi = d["ci95"]
                paired = f"; {head} minus {r['model']} {d['diff']:+.4f}, 95 % CI [{lo:+.3f}, {hi:+.3f}]"
                paired += ", holds 0: not told apart" if lo <= 0 <= hi else ""
            notes.append(f"{r['model']} beats {head} on {r['combination']}: {r['ensemble']['mean']:.4f} vs "
                         f"{m['ensemble']['mean']:.4f} (seed ensemble{paired})")  # fmt: skip
    fits = [(r, run["fit"]) for r in rows for run in r["runs"] if "fit" in run]
    edges = sorted({f"{r['model']} {p}" for r, f in fits for p in f.get("edge", [])})
    if edges:
        notes.append(f"chosen on the edge of its (widened) grid: {', '.join(edges)}; see summary.json")
    widened = sorted({f"{r['model']} {p}" for r, f in fits for p in f.get("widened", [])})
    if widened:
        notes.append(f"grid widened past an edge choice: {', '.join(widened)}")
    warned = sum(f.get("linalg_warnings", 0) for _, f in fits)
    if warned:
        notes.append(f"{warned} scikit-learn LinAlgWarnings (ill-conditioned Ridge solves) caught and counted here")
    return notes


def summarise(
    cfg: TrainConfig,
    results: list[RunResult],
    folds: list[FoldData],
    seconds: float,
    infos: dict | None = None,
    baseline_seconds: float = 0.0,
) -> dict:
    """The grid's summary: ``results`` holds every head's runs (``spec.head``); ``infos``, what each fit chose."""
    groups = sorted({(r.spec.modules, r.spec.head) for r in results}, key=lambda g: (len(g[0]), g[0], g[1]))
    runs = {g: [r for r in results if (r.spec.modules, r.spec.head) == g] for g in groups}
    rows = [_row(c, h, runs[c, h], folds, infos or {}) for c, h in groups]
    for (c, h), row in zip(groups, rows, strict=True):  # a baseline beside the grid's head: the paired difference
        if h != cfg.head and (c, cfg.head) in runs:
            row["head_minus_this"] = versus(runs[c, cfg.head], runs[c, h], folds)
    rows.sort(key=lambda row: -row["ensemble"]["mean"] if not math.isnan(row["ensemble"]["mean"]) else math.inf)
    return {
        "dataset": cfg.dataset,
        "head": cfg.head,
        "seeds": sorted({r.spec.seed for r in results if r.spec.head == cfg.head}),
        "folds": cfg.folds,
        "fold_seed": cfg.fold_seed if cfg.folds else None,
        "n_train": [len(f.y_train) for f in folds],
        "n_val": [len(f.y_val) for f in folds],
        "epochs": cfg.epochs,
        "runs": sum(r.spec.head == cfg.head for r in results),
        "batched": cfg.batched,
        "train_seconds": seconds,
        "baseline_seconds": baseline_seconds,
        "metric": "val Spearman; the seed ensemble (mean of the runs' last-epoch predictions) is the headline; the "
        "last epoch is honest too; the best epoch is chosen on val (optimistic)",
        "notes": _notes(rows, cfg.head),
        "rows": rows,
    }


def _cell(stat: dict | None) -> str:
    if stat is None:
        return "-"
    return f"{stat['mean']:.4f} ± {stat['std']:.4f}" if stat["n"] > 1 else f"{stat['mean']:.4f} ± -"


def table_lines(summary: dict) -> list[str]:
    """The summary as a Markdown table, best seed ensemble first."""
    paired = any(r.get("head_minus_this") for r in summary["rows"])  # baselines beside the head: a column more
    lines = [
        "| combination | model | runs | seed ensemble (headline) | last epoch | best epoch (val-selected) |"
        + (f" {summary['head']} minus this, 95 % CI (paired bootstrap) |" if paired else ""),
        "|---|---|---|---|---|---|" + ("---|" if paired else ""),
    ]
    for row in summary["rows"]:
        n = row["last"]["n"]
        n = str(n) if HEADS[row["model"]].epochs else f"{n} fit{'s' if n > 1 else ''}"
        cells = [row["combination"], row["model"], n, *(_cell(row[c]) for c in COLUMNS)]
        if paired:
            d = row.get("head_minus_this")
            cells.append(f"{d['diff']:+.4f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot_ablation(path: Path, summary: dict) -> None:
    """Val Spearman per combination and model, sorted, mean +- std error bars (last epoch), best and ensemble dots."""
    rows = summary["rows"][::-1]  # best at the top
    fig = Figure(figsize=(10, 1.5 + 0.32 * len(rows)))
    ax = fig.subplots()
    y = np.arange(len(rows))
    colors = {"mlp": "tab:blue", "ridge": "tab:gray", "svr": "tab:orange", "stack": "tab:green", "select": "tab:red"}
    ax.barh(
        y,
        [r["last"]["mean"] for r in rows],
        xerr=[r["last"]["std"] for r in rows],
        color=[colors.get(r["model"], "tab:purple") for r in rows],
        alpha=0.7,
        capsize=3,
    )
    best = [(i, r["best"]["mean"]) for i, r in enumerate(rows) if r["best"]]
    if best:
        ax.plot([b for _, b in best], [i for i, _ in best], "k|", ms=10, label="best epoch (val-selected)")
    ens = [(i, r["ensemble"]["mean"]) for i, r in enumerate(rows) if r["ensemble"]["n"] and r["last"]["n"] > 1]
    ax.plot([e for _, e in ens], [i for i, _ in ens], "r.", ms=8, label="seed ensemble")
    # one swatch per model shown (the bars' colour says the model), then the markers
    models = list(dict.fromkeys(r["model"] for r in rows[::-1]))
    swatches = [
        Patch(color=colors.get(m, "tab:purple"), alpha=0.7, label=f"{m}: last epoch, mean ± std") for m in models
    ]
    handles = swatches + ax.get_legend_handles_labels()[0]
    ax.set_yticks(y, [f"{r['combination']} ({r['model']})" for r in rows], fontsize=8)
    ax.set(xlabel="val Spearman", title=f"{summary['dataset']}: ablation over {summary['runs']} {summary['head']} runs")
    bars = [r["last"]["mean"] + sign * r["last"]["std"] for r in rows for sign in (-1, 1)]
    finite = [v for v in bars + [b for _, b in best] + [e for _, e in ens] if math.isfinite(v)]
    if finite:  # zoom on the differences: the bars start left of the lowest score
        ax.set_xlim(max(-1.0, min(finite) - 0.05), min(1.0, max(finite) + 0.02))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    with atomic_write(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)


def write_ablation_csv(path: Path, summary: dict) -> None:
    header = ["combination", "model", "n", *(f"{c}_{s}" for c in COLUMNS for s in ("mean", "std"))]
    rows = []
    for row in summary["rows"]:
        vals = [row[c][s] if row[c] else "" for c in COLUMNS for s in ("mean", "std")]
        rows.append([row["combination"], row["model"], row["last"]["n"], *vals])
    write_csv(path, header, rows)


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


def grid_lines(summary: dict) -> list[str]:
    """What train.py prints for a grid."""
    where = f"{summary['folds']} folds" if summary["folds"] else "the dataset's val split"
    files = ", ablation.csv, ablation.md, ablation.png" if (Path(summary["run_dir"]) / "ablation.md").exists() else ""
    timing = f"trained in {summary['train_seconds']:.1f} s"
    if summary.get("baseline_seconds"):
        timing += f" (+ baselines {summary['baseline_seconds']:.1f} s)"
    return [
        f"{summary['runs']} {summary['head']} runs, seeds {summary['seeds']}, {where}: val Spearman (headline: the "
        "seed ensemble of last-epoch predictions; the last epoch is honest too; the best epoch is chosen on val, so "
        "optimistic)",
        *table_lines(summary),
        *(f"note: {n}" for n in summary.get("notes", [])),
        f"{timing}; run directory: {summary['run_dir']} (summary.json{files})",
    ]
