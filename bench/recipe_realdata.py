"""The default recipe (``configs/recipe.yaml``, its ``head``) beside m3s's SVR, Ridge and the paper config on every
development set, through m3s's own CLI (``gen_features.py --import``, ``train.py``), with the wall time of each.

Dev sets: ``../shared/realdata`` (VideoMem COCO-80 class scores, 6400 / 1600; the TRECVid 2021 sets, 588 train /
1116 or 410 val, MiniLM caption embeddings and AudioSet class scores) fed in as ``--dataset scores`` (a scores.csv
with the file's own split, plus an import), and the demo corpus (raw, raw + text; ``gen_features.py --dataset demo
--features raw text`` first).

``--stage val`` (default): per set, ``train.py --config configs/recipe.yaml --seeds 3 4 5 --baselines`` (the
default, and Ridge and the SVR on the same videos: the grid's paired bootstrap of the default minus the SVR) and
``train.py --seeds 3 4 5 --baselines`` (the paper MLP on raw inputs, and what the baselines cost beside it, where
the default's own grid reuses its members' fits); val Spearman of the seed ensemble and the mean last
epoch. ``--stage select``: how the default was chosen, without val: the val rows are dropped and each candidate
runs ``--folds 3`` over the train videos only (an inner 3-fold CV), and candidates are ranked per set by their
inner-CV seed ensemble (the mean over the fold partitions ``--fold_seeds``); the mean rank over the sets picks the
default.

    python bench/recipe_realdata.py [--sets trecvid_text ...] [--stage val|select] [--fold_seeds 0 1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "realdata"
SEEDS = ["--seeds", "3", "4", "5"]

#: name -> (npz, feature arrays, train/val) or the demo tiers
SETS = {
    "videomem_coco80": ("videomem/coco80_rn101.npz", ["features"]),
    "trecvid_text_minilm": ("trecvid/trecvid2021_text.npz", ["minilm"]),
    "trecvid_audioset527": ("trecvid/trecvid_audioset.npz", ["audioset527"]),
    "trecvid_as_minilm": ("trecvid/trecvid_audioset.npz", ["minilm"]),
    "trecvid_audioset527+minilm": ("trecvid/trecvid_audioset.npz", ["audioset527", "minilm"]),
    "demo_raw": (None, ["--use_raw"]),
    "demo_raw+text": (None, ["--use_raw", "--use_text"]),
}
#: --stage select: the candidates, each a list of train.py flags over the set's modules
CANDIDATES = {
    "paper MLP": [],
    "recipe MLP (standardised)": ["--config", "configs/recipe.yaml", "--head", "mlp"],
    "ridge": ["--head", "ridge"],
    "svr": ["--head", "svr"],
    "stack": ["--config", "configs/recipe.yaml", "--head", "stack"],
    "select": ["--config", "configs/recipe.yaml", "--head", "select"],
    "stack_1se": ["--config", "configs/recipe.yaml", "--head", "stack_1se"],
    "stack_ls": ["--config", "configs/recipe.yaml", "--head", "stack_ls"],
    "average": ["--config", "configs/recipe.yaml", "--head", "average"],
}
#: --stage select: sets whose train videos and features are another set's (the same 588 TRECVid videos and MiniLM
#: embeddings; only their val videos differ), scored once, under the other's name
SAME_TRAIN = {"trecvid_as_minilm": "trecvid_text_minilm"}


def _videomem_scores(ids: np.ndarray) -> np.ndarray:
    with open(REAL / "videomem/ground-truth_dev-set.csv", encoding="utf-8-sig", newline="") as f:
        gt = {r["video"]: float(r["short-term_memorability"]) for r in csv.DictReader(f)}
    return np.array([gt[i] for i in ids], dtype=np.float64)


def _write_scores(root: Path, ids, y, split, arrays: dict[str, np.ndarray], inner: bool) -> None:
    """scores.csv (train / val of the file, or the train rows only and no split column for ``inner``) + imports."""
    root.mkdir(parents=True, exist_ok=True)
    keep = np.array([s == "train" for s in split]) if inner else np.ones(len(ids), bool)
    with open(root / "scores.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "score"] + ([] if inner else ["split"]))
        for i in np.flatnonzero(keep):
            w.writerow([ids[i], f"{y[i]:.6f}"] + ([] if inner else [split[i]]))
    for name, x in arrays.items():
        np.savez(root / f"{name}.npz", ids=np.asarray(ids)[keep], emb=x[keep])
        _cli("gen_features.py", "--dataset", "scores", "--data_dir", str(root), "--import", str(root / f"{name}.npz"),
             "--name", name)  # fmt: skip


def _demo_arrays(flags: list[str]) -> tuple[list[str], np.ndarray, list[str], dict[str, np.ndarray]]:
    """The demo's modules as m3s builds them (not normalised), to run the inner CV on its train videos."""
    sys.path.insert(0, str(ROOT))
    from config import TrainConfig, parse
    from dataset import load_records
    from pipeline.run.table import FeatureTable

    cfg = parse(TrainConfig, ["--dataset", "demo", *flags])
    records = [r for r in load_records("demo", cfg) if r.score is not None]
    table = FeatureTable.build(cfg, records, "cpu", stats={}, splits=("train", "val"))
    ids, xs, ys, splits = [], [], [], []
    for s in ("train", "val"):
        d = table.splits[s]
        ids += d.ids
        xs.append(d.x.numpy())
        ys.append(d.y.numpy())
        splits += [s] * len(d.ids)
    x = np.concatenate(xs)
    cols = np.cumsum([0, *table.dims.values()])
    # imported under another name than the built-in tier's
    return ids, np.concatenate(ys), splits, {f"demo_{m}": x[:, cols[i] : cols[i + 1]] for i, m in enumerate(table.dims)}


def prepare(name: str, tmp: Path, inner: bool) -> list[str]:
    """The set as train.py flags (dataset, data_dir, modules); writes the scores dataset it needs."""
    npz, keys = SETS[name]
    if npz is None and not inner:
        return ["--dataset", "demo", *keys]
    if npz is None:
        ids, y, split, arrays = _demo_arrays(keys)
    else:
        d = np.load(REAL / npz)
        ids, split = [str(i) for i in d["ids"]], [str(s) for s in d["split"]]
        y = _videomem_scores(d["ids"]) if "y" not in d.files else d["y"]
        arrays = {("coco80" if k == "features" else k): d[k] for k in keys}
    root = tmp / name / ("inner" if inner else "val")
    _write_scores(root, ids, y, split, arrays, inner)
    return ["--dataset", "scores", "--data_dir", str(root), "--extra_features", *arrays]


def _cli(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{script} {' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return out.stdout


def train(flags: list[str], runs: Path, name: str) -> tuple[dict, float]:
    """``train.py`` with ``flags``; the grid's summary.json and the command's wall time."""
    t0 = time.perf_counter()
    _cli("train.py", *flags, "--runs_dir", str(runs), "-n", name)
    return json.loads((runs / name / "summary.json").read_text()), time.perf_counter() - t0


def _row(summary: dict, model: str) -> dict:
    return next(r for r in summary["rows"] if r["model"] == model)


def stage_val(sets: list[str], tmp: Path) -> list[str]:
    head = yaml.safe_load((ROOT / "configs" / "recipe.yaml").read_text())["head"]
    lines = [
        f"| dev set (train / val) | default: {head} ensemble / last | paper config ensemble / last | m3s SVR "
        "| m3s Ridge | default >= SVR | default minus SVR, 95 % CI (paired) | wall: default / paper MLP grid / "
        "baselines |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in sets:
        flags = prepare(name, tmp, inner=False)
        default, t_default = train(["--config", "configs/recipe.yaml", *flags, *SEEDS, "--baselines"], tmp / "runs",
                                   f"{name}_default")  # fmt: skip
        paper, _ = train([*flags, *SEEDS, "--baselines"], tmp / "runs", f"{name}_paper")  # what baselines cost alone
        st, mlp, svr, ridge = _row(default, head), _row(paper, "mlp"), _row(default, "svr"), _row(default, "ridge")
        fit, d = svr["runs"][0]["fit"], svr["head_minus_this"]
        svr_cell = (
            f"{svr['last']['mean']:.3f} (C={fit['params']['C']:g}, gamma={fit['params']['gamma']}"
            + (f"; widened: {', '.join(fit['widened'])}" if fit["widened"] else "")
            + (f"; edge: {', '.join(fit['edge'])}" if fit["edge"] else "")
            + ")"
        )
        ok = "yes" if st["ensemble"]["mean"] >= svr["last"]["mean"] else "**no**"
        n = f"{paper['n_train'][0]} / {paper['n_val'][0]}"
        lines.append(
            f"| {name} ({n}) | **{st['ensemble']['mean']:.3f}** / {st['last']['mean']:.3f} | "
            f"{mlp['ensemble']['mean']:.3f} / {mlp['last']['mean']:.3f} | {svr_cell} | {ridge['last']['mean']:.3f} | "
            f"{ok} | {d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] | {t_default:.0f} s / "
            f"{paper['train_seconds']:.1f} s / {paper['baseline_seconds']:.1f} s |"
        )
        print(lines[-1], flush=True)
    return lines


def stage_select(sets: list[str], tmp: Path, fold_seeds: list[int]) -> list[str]:
    """Each candidate's inner-CV seed ensemble per set, the mean over the fold partitions ``fold_seeds`` (repeated
    CV: one partition's draw moves the blends by about their differences); ranked per set, by mean rank."""
    sets = [s for s in sets if SAME_TRAIN.get(s) not in sets]
    scores: dict[str, dict[str, float]] = {c: {} for c in CANDIDATES}
    for name in sets:
        flags = prepare(name, tmp, inner=True)
        for cand, extra in CANDIDATES.items():
            per_partition = []
            for fs in fold_seeds:
                tag = f"{name}_inner_{list(CANDIDATES).index(cand)}_f{fs}"
                summary, _ = train([*extra, *flags, "--folds", "3", "--fold_seed", str(fs), "--seeds", "3"],
                                   tmp / "runs", tag)  # fmt: skip
                per_partition.append(summary["rows"][0]["ensemble"]["mean"])
            scores[cand][name] = float(np.mean(per_partition))
            print(f"  {name} {cand}: {' '.join(f'{v:.4f}' for v in per_partition)}", flush=True)
        print(name, {c: round(s[name], 4) for c, s in scores.items()}, flush=True)
    ranks = {c: [] for c in CANDIDATES}
    for name in sets:
        order = sorted(CANDIDATES, key=lambda c: -scores[c][name])
        for c in CANDIDATES:
            ranks[c].append(order.index(c) + 1)
    lines = ["| candidate | " + " | ".join(sets) + " | mean rank |", "|---" * (len(sets) + 2) + "|"]
    for c in sorted(CANDIDATES, key=lambda c: np.mean(ranks[c])):
        cells = " | ".join(f"{scores[c][s]:.3f} ({r})" for s, r in zip(sets, ranks[c], strict=True))
        lines.append(f"| {c} | {cells} | {np.mean(ranks[c]):.1f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--stage", choices=("val", "select"), default="val")
    ap.add_argument("--keep", default="", help="work in this folder (kept) instead of a temporary one")
    ap.add_argument("--fold_seeds", nargs="+", type=int, default=[0],
                    help="--stage select: the fold partitions of the inner CV, scores averaged over them")  # fmt: skip
    args = ap.parse_args()
    if not REAL.is_dir():
        raise SystemExit(f"{REAL} is absent: the dev sets live there (../shared/realdata)")
    with tempfile.TemporaryDirectory(prefix="m3s-recipe-") as t:
        tmp = Path(args.keep or t)
        t0 = time.perf_counter()
        if args.stage == "val":
            lines = stage_val(args.sets, tmp)
        else:
            lines = stage_select(args.sets, tmp, args.fold_seeds)
        print("\n".join(lines))
        print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
