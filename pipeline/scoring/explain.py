"""Why a model predicts what it does: ``evaluate.py --checkpoint best.pt --explain [--split val]``.

Each module's (tier's) contribution on a scored split, three ways:

- **mean replacement**: the drop in Spearman when the module's input is replaced by its train mean (the module says
  nothing; the others are untouched);
- **permutation importance**: the drop in Spearman when the module's rows are shuffled across videos (its values
  stay realistic but no longer belong to their video), mean and std over ``--explain_repeats`` seeded shuffles;
- **gradient x input**: the share of ``|d prediction / d x| * |x - train mean|`` mass that falls on the module's
  inputs, summed over the split's videos (a first-order attribution of each prediction to the modules).

And the best and worst predicted videos (smallest and largest absolute error), with each module's signed gradient x
(input - train mean) contribution, and a strip of their first frames when the videos are on disk (as in the paper's
figures). Everything goes to ``explain_<dataset>_<split>_<checkpoint>/`` beside the checkpoint (or in ``--out_dir``):
``explain.csv``, ``explain.md``, ``explain.png``, ``examples.csv`` and ``examples.png``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy.stats import spearmanr

from config import EvalConfig
from core.device import resolve_device
from core.io import ConfigError, write_csv, write_text
from dataset import VideoRecord, load_records
from features.base import FrameSpec
from features.video import VideoError, read_clip
from model.mlp import ModularMLP
from pipeline.run.table import SplitData
from pipeline.run.training import predict
from pipeline.scoring.loader import Scorer

N_EXAMPLES = 5  # best and worst predicted videos shown
THUMB = FrameSpec(n_frames=8, size=(96, 128), crop="squash")


@dataclass
class Explanation:
    modules: list[str]
    rho: float  # Spearman of the unmodified predictions
    mean_drop: dict[str, float]
    perm_drop: dict[str, float]
    perm_std: dict[str, float]
    grad_share: dict[str, float]
    contributions: np.ndarray  # (N, M) signed gradient x (input - train mean) per module
    pred: np.ndarray  # (N,)
    true: np.ndarray  # (N,)
    ids: list[str]


def _rho(pred: np.ndarray, true: np.ndarray) -> float:
    """Spearman; 0 for constant predictions (no ranking at all), as ``model.metrics`` scores them."""
    return 0.0 if np.ptp(pred) == 0 else float(spearmanr(pred, true).statistic)


def module_slices(dims: dict[str, int]) -> dict[str, slice]:
    """Each module's columns in the concatenated input, in input order."""
    out, start = {}, 0
    for module, dim in dims.items():
        out[module] = slice(start, start + dim)
        start += dim
    return out


def gradient_x_input(model: ModularMLP, x: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """(N, in_dim) ``d pred / d x * (x - baseline)``: each input's first-order share of ``pred - pred(baseline)``."""
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).sum(), x)
    return (grad * (x - baseline)).detach()


def explain(
    model: ModularMLP, data: SplitData, train_mean: torch.Tensor, repeats: int = 5, seed: int = 0
) -> Explanation:
    """Every module's contribution on ``data`` (a scored split); ``train_mean`` (in_dim,) is the baseline input."""
    slices = module_slices(model.dims)
    true = data.y.cpu().numpy()
    pred = predict(model, data.x)
    rho = _rho(pred, true)
    rng = np.random.default_rng(seed)
    mean_drop, perm_drop, perm_std = {}, {}, {}
    for module, cols in slices.items():
        x = data.x.clone()
        x[:, cols] = train_mean[cols]
        mean_drop[module] = rho - _rho(predict(model, x), true)
        drops = []
        for _ in range(repeats):
            x = data.x.clone()
            order = torch.from_numpy(rng.permutation(len(x))).to(x.device)
            x[:, cols] = data.x[order][:, cols]  # the module's rows move together to other videos
            drops.append(rho - _rho(predict(model, x), true))
        perm_drop[module], perm_std[module] = float(np.mean(drops)), float(np.std(drops))
    gxi = gradient_x_input(model, data.x, train_mean).cpu().numpy()  # (N, in_dim)
    mass = {m: float(np.abs(gxi[:, s]).sum()) for m, s in slices.items()}
    total = sum(mass.values()) or 1.0
    contributions = np.stack([gxi[:, s].sum(axis=1) for s in slices.values()], axis=1)  # (N, M)
    return Explanation(
        list(slices), rho, mean_drop, perm_drop, perm_std, {m: v / total for m, v in mass.items()},
        contributions, pred, true, list(data.ids),
    )  # fmt: skip


# --------------------------------------------------------------------------- outputs


def write_tables(e: Explanation, out: Path, title: str) -> None:
    """``explain.csv`` (one row per module) and ``explain.md`` (the same, readable, with the examples)."""
    header = ["module", "mean_replacement_drop", "permutation_drop", "permutation_std", "grad_x_input_share"]
    rows = [[m, e.mean_drop[m], e.perm_drop[m], e.perm_std[m], e.grad_share[m]] for m in e.modules]
    write_csv(out / "explain.csv", header, [[r[0], *(f"{v:.6f}" for v in r[1:])] for r in rows])
    lines = [
        f"# {title}",
        "",
        f"Spearman of the predictions: {e.rho:.4f} over {len(e.ids)} videos. Drops are in Spearman (higher: the model "
        "leans on the module more); the gradient x input share sums to 1 over the modules.",
        "",
        "| module | drop, input set to its train mean | drop, rows permuted (mean ± std) | gradient x input share |",
        "|---|---:|---:|---:|",
        *(f"| {m} | {a:+.4f} | {b:+.4f} ± {c:.4f} | {d:.1%} |" for m, a, b, c, d in rows),
        "",
        "## Best and worst predicted videos",
        "",
        "Contributions: gradient x (input - train mean) per module, in units of the prediction.",
        "",
        "| | id | truth | prediction | " + " | ".join(e.modules) + " |",
        "|---|---|---:|---:|" + "---:|" * len(e.modules),
    ]
    for kind, i in examples(e):
        parts = " | ".join(f"{c:+.4f}" for c in e.contributions[i])
        lines.append(f"| {kind} | {e.ids[i]} | {e.true[i]:.4f} | {e.pred[i]:.4f} | {parts} |")
    write_text(out / "explain.md", "\n".join(lines) + "\n")


def examples(e: Explanation, k: int = N_EXAMPLES) -> list[tuple[str, int]]:
    """``[("best"|"worst", row)]``: the k smallest absolute errors, then the k largest (worst first)."""
    order = np.argsort(np.abs(e.pred - e.true), kind="stable")
    k = min(k, len(order) // 2) or 1
    return [("best", int(i)) for i in order[:k]] + [("worst", int(i)) for i in order[::-1][:k]]


def write_examples(e: Explanation, out: Path) -> None:
    header = ["kind", "id", "truth", "prediction", "abs_error", *(f"contribution_{m}" for m in e.modules)]
    rows = []
    for kind, i in examples(e):
        values = (e.true[i], e.pred[i], abs(e.pred[i] - e.true[i]), *e.contributions[i])
        rows.append([kind, e.ids[i], *(f"{v:.6f}" for v in values)])
    write_csv(out / "examples.csv", header, rows)


def plot_importance(e: Explanation, path: Path, title: str) -> None:
    """Three panels, one per measure, a bar per module."""
    fig = Figure(figsize=(4 + 2.2 * len(e.modules), 4.2))
    axes = fig.subplots(1, 3)
    y = np.arange(len(e.modules))
    ms = e.modules
    panels = (
        ("drop in Spearman,\ninput set to train mean", [e.mean_drop[m] for m in ms], None),
        ("drop in Spearman,\nrows permuted (± std)", [e.perm_drop[m] for m in ms], [e.perm_std[m] for m in ms]),
        ("share of |gradient x input|", [e.grad_share[m] for m in ms], None),
    )
    for ax, (label, values, err), fmt in zip(axes, panels, ("{:+.3f}", "{:+.3f}", "{:.0%}"), strict=True):
        bars = ax.barh(y, values, xerr=err, color="tab:blue", alpha=0.8)
        ax.bar_label(bars, [fmt.format(v) for v in values], padding=3, fontsize=8)
        ends = [v + (e if v >= 0 else -e) for v, e in zip(values, err or [0.0] * len(values), strict=True)]
        span = max(max(map(abs, ends)), 1e-6)
        ax.set_xlim(min(0.0, *ends) - (0.4 * span if min(ends) < 0 else 0), max(0.0, *ends) + 0.4 * span)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(y, e.modules)
        ax.invert_yaxis()
        ax.set_xlabel(label)
    axes[2].xaxis.set_major_formatter("{x:.0%}")
    fig.suptitle(f"{title}\nSpearman {e.rho:.3f}, n = {len(e.ids)}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_examples(e: Explanation, records: dict[str, VideoRecord], path: Path) -> bool:
    """First frames of the best and worst predicted videos; False (nothing written) when no video is on disk."""
    chosen = examples(e)
    frames = {}
    for _, i in chosen:
        rec = records.get(e.ids[i])
        if rec is not None and rec.path is not None and Path(rec.path).is_file():
            try:
                frames[i] = read_clip(rec.path, THUMB, first_only=True)[0]
            except VideoError:
                continue
    if not frames:
        return False
    k = len(chosen) // 2
    fig = Figure(figsize=(2.2 * k, 5.2))
    axes = np.asarray(fig.subplots(2, k, squeeze=False))
    for ax, (kind, i) in zip(axes.ravel(), chosen, strict=True):
        ax.set_axis_off()
        if i in frames:
            ax.imshow(frames[i])
        ax.set_title(f"{kind}: {e.ids[i][:22]}\ntrue {e.true[i]:.3f} pred {e.pred[i]:.3f}", fontsize=7)
    fig.suptitle("best (top) and worst (bottom) predicted videos, first frame")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


# --------------------------------------------------------------------------- the command


def run_explain(cfg: EvalConfig) -> dict:
    """Everything ``evaluate.py --explain`` does; returns the explanation and where its files are."""
    if cfg.split not in ("train", "val", "test"):
        raise ConfigError("--explain looks at one split: --split train, val or test")
    scorer = Scorer.load(cfg.checkpoint, data_dir=cfg.data_dir, features_dir=cfg.features_dir, dataset=cfg.dataset)
    ckpt, train_cfg = scorer.ckpt, scorer.cfg
    if scorer.end_to_end:
        raise ConfigError(
            f"{cfg.checkpoint} was trained end to end (fine-tuned backbones): --explain replaces and shuffles the "
            "pre-computed stores' features, which are not the inputs its head was trained on, so its numbers would "
            "describe another model. Score it with evaluate.py (no --explain); explain a model trained on fixed "
            "features (train.py without --no-fixed_features)"
        )
    device = resolve_device(cfg.device)
    records = load_records(train_cfg.dataset, train_cfg)
    table = scorer.table(records, device, tuple(dict.fromkeys(("train", cfg.split))))
    data = table.splits.get(cfg.split)
    if data is None or len(data.y) < 3:
        raise ConfigError(
            f"--explain needs scored videos: {train_cfg.dataset} {cfg.split} has {0 if data is None else len(data.y)}; "
            "pick a scored split (--split val)"
        )
    if "train" not in table.splits:
        raise ConfigError(f"--explain needs the train split of {train_cfg.dataset} for the modules' train means")
    train_mean = table.splits["train"].x.mean(dim=0)  # (in_dim,)
    model = scorer.model(device)
    e = explain(model, data, train_mean, cfg.explain_repeats, cfg.explain_seed)
    ckpt_path = Path(cfg.checkpoint)
    parent = Path(cfg.out_dir) if cfg.out_dir else ckpt_path.resolve().parent
    out = parent / f"explain_{train_cfg.dataset}_{cfg.split}_{ckpt_path.stem}"
    out.mkdir(parents=True, exist_ok=True)
    run = train_cfg.name or ckpt_path.parent.name
    title = f"{run} ({ckpt_path.name}, epoch {ckpt['epoch'] + 1}): {train_cfg.dataset} {cfg.split}"
    write_tables(e, out, title)
    write_examples(e, out)
    plot_importance(e, out / "explain.png", title)
    thumbs = plot_examples(e, {r.id: r for r in records}, out / "examples.png")
    return {"explanation": e, "out_dir": str(out), "thumbnails": thumbs, "dataset": train_cfg.dataset}


def explain_lines(result: dict) -> list[str]:
    """What ``evaluate.py --explain`` prints: one line per module, then where the files are."""
    e: Explanation = result["explanation"]
    lines = [f"Spearman {e.rho:.4f} over {len(e.ids)} videos; per module: drop (mean / permuted), grad x input share"]
    for m in sorted(e.modules, key=lambda m: -e.perm_drop[m]):
        lines.append(
            f"  {m}: {e.mean_drop[m]:+.4f} / {e.perm_drop[m]:+.4f} ± {e.perm_std[m]:.4f}, {e.grad_share[m]:.1%}"
        )
    extra = ", examples.png" if result["thumbnails"] else " (videos not on disk: no thumbnails)"
    lines.append(f"explanation: {result['out_dir']} (explain.csv, explain.md, explain.png, examples.csv{extra})")
    return lines
