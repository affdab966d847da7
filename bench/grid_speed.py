"""Grid speed: the 15-combination x 3-seed ablation trained as one batched model vs the same 45 runs one after
another through the ordinary ``train.py`` path, on Memento10k-sized synthetic features.

    python bench/grid_speed.py [--epochs 20] [--threads 1 2] [--sequential_runs 45]

7000 train + 1500 val videos; raw 15, hrnet 720, csn 2048 and similarity 40 dims (the similarity block is an imported
module: the same matrix to the trainer); the paper configuration (MLP 512-64, batch 32, Adam 1e-3, weight decay
1e-5, StepLR 0.2 / 5, mse). "batched" is ``train.py --ablate --seeds 1 2 3`` (start-up paid once: the stores read
once, one table, sub-run files and the ablation table and plot written); it runs once per ``--threads`` value, to
show what CPU threads buy. "sequential" calls ``run_training`` (what ``train.py`` runs, minus interpreter start-up
and imports) for each of the 45 (combination, seed) configurations, with its default threads.
``--sequential_runs N`` times only the first N of them and scales the time to 45 (say so when you quote it).
Last, "compute only" times one epoch of 15 runs without any start-up, batched vs a plain loop: the arithmetic
ceiling of batching on this machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import ROOT, TrainConfig
from features.store import FeatureStore, StoredFeatures
from model.mlp import ModularMLP
from pipeline.grid.batched import train_batched
from pipeline.grid.runner import combinations, run_experiment, with_modules
from pipeline.grid.specs import FoldData, RunSpec
from pipeline.run.training import make_optimizer, run_training

N_TRAIN, N_VAL = 7000, 1500
BLOCKS = {"raw": 15, "hrnet": 720, "csn": 2048, "sim": 40}
RAW = {"hog": 10, "brightness": 1, "contrast": 1, "blurriness": 1, "size_orig": 1, "meanOF": 1}
SEEDS = (1, 2, 3)


def make_corpus(root: Path, seed: int = 0) -> None:
    """Memento10k annotations and the four feature stores, each block carrying a weak signal of the score."""
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_VAL
    ids = [f"action-{i % 300}_clip{i:05d}" for i in range(n)]
    scores = np.clip(rng.normal(0.8, 0.1, n), 0.38, 1.0)
    blocks = {m: rng.normal(size=(n, d)).astype(np.float32) for m, d in BLOCKS.items()}
    for block in blocks.values():
        block[:, 0] += (scores - 0.8).astype(np.float32) * 5
    ds = root / "data" / "Memento10k"
    ds.mkdir(parents=True)
    for split, sel in (("train", range(N_TRAIN)), ("val", range(N_TRAIN, n))):
        recs = [{"filename": f"{ids[i]}.mp4", "url": "", "mem_score": float(scores[i]), "alpha": 0.0} for i in sel]
        (ds / f"memento_{split}_data.json").write_text(json.dumps(recs))
    fdir, meta = root / "data" / "features", {"family": "bench", "dataset": "Memento10k", "settings": {}}
    cols = np.cumsum([0, *RAW.values()])
    raw = {name: blocks["raw"][:, cols[k] : cols[k + 1]] for k, name in enumerate(RAW)}
    FeatureStore.at(fdir, "Memento10k", "raw").write(StoredFeatures(ids, raw, meta | {"smoke": False}))
    for store, (module, block) in zip(("hrnet_f1", "ip_csn_152", "sim"), list(blocks.items())[1:], strict=True):
        FeatureStore.at(fdir, "Memento10k", store).write(StoredFeatures(ids, {module: block}, meta | {"smoke": False}))


def base_config(root: Path, epochs: int, **kw) -> TrainConfig:
    return TrainConfig(
        data_dir=str(root / "data"), runs_dir=str(root / "runs"), use_raw=True, use_hrnet=True, use_csn=True,
        extra_features=["sim"], normalize_extra=True, epochs=epochs, device="cpu", **kw,
    )  # fmt: skip


def import_seconds() -> float:
    """What each of 45 separate ``python train.py`` commands would add: the interpreter and m3s's imports."""
    code = "import time; t = time.perf_counter(); import pipeline.run.training; print(time.perf_counter() - t)"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - t


def compute_only(threads: list[int]) -> None:
    """Where the ceiling is: one epoch of the 15 combinations of one seed on in-memory tensors, no start-up or files,
    batched (as the grid trains on a CPU) vs a plain loop of ModularMLP + fused Adam steps on one thread."""
    dims = dict(BLOCKS)
    gen = torch.Generator().manual_seed(0)
    x = {m: torch.randn(N_TRAIN, d, generator=gen) for m, d in dims.items()}
    xv = {m: torch.randn(N_VAL, d, generator=gen) for m, d in dims.items()}
    y, yv = torch.rand(N_TRAIN, generator=gen), torch.rand(N_VAL, generator=gen)
    fold = FoldData([str(i) for i in range(N_TRAIN)], [str(i) for i in range(N_VAL)], x, y, xv, yv, {})
    cfg = TrainConfig(epochs=1, device="cpu")
    runs = [RunSpec(1, 0, c) for c in combinations(list(dims))]
    for n in threads:
        torch.set_num_threads(n)
        t = time.perf_counter()
        train_batched(cfg, runs, [fold], dims, torch.device("cpu"))
        print(f"compute only, 15 run-epochs: batched, {n} thread(s) {time.perf_counter() - t:.1f} s")
    torch.set_num_threads(1)
    t = time.perf_counter()
    for run in runs:
        xs = torch.cat([x[m] for m in run.modules], 1)
        net = ModularMLP({m: dims[m] for m in run.modules}, cfg.hidden_channels)
        opt = make_optimizer(cfg, net.parameters())
        for idx in torch.randperm(N_TRAIN).split(cfg.batch_size):
            loss = ((net(xs[idx]).squeeze(-1) - y[idx]) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    print(f"compute only, 15 run-epochs: plain loop of runs, 1 thread {time.perf_counter() - t:.1f} s (each step of "
          "a run reads and writes its own first-layer weights, gradients and Adam moments: memory-bound, and no "
          "batching shares that)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts of the batched runs")
    ap.add_argument("--sequential_runs", type=int, default=45, help="time this many of the 45 and scale (45: all)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_corpus(root)
        print(f"corpus: {N_TRAIN} train + {N_VAL} val videos, dims {BLOCKS}; 15 combinations x seeds {SEEDS}")
        batched = {}
        for threads in args.threads:
            cfg = base_config(root, args.epochs, name=f"grid{threads}", ablate=True, seeds=list(SEEDS), threads=threads)
            t = time.perf_counter()
            summary = run_experiment(cfg)
            batched[threads] = time.perf_counter() - t
            print(f"batched, {threads} thread(s): {batched[threads]:.1f} s in all ({summary['train_seconds']:.1f} s "
                  f"training), {summary['runs']} runs; best row {summary['rows'][0]['combination']} last-epoch "
                  f"{summary['rows'][0]['last']['mean']:.4f}")  # fmt: skip
        combos = [(c, s) for c in combinations(["raw", "hrnet", "csn", "sim"]) for s in SEEDS]
        timed = combos[:: max(1, len(combos) // args.sequential_runs)][: args.sequential_runs]
        t = time.perf_counter()
        for i, (combo, seed) in enumerate(timed):
            cfg = with_modules(base_config(root, args.epochs, seed=seed, name=f"seq{i}"), combo)
            run_training(cfg)
        seq = (time.perf_counter() - t) * len(combos) / len(timed)
        threads_used = torch.get_num_threads()
    scaled = "" if len(timed) == len(combos) else f" (timed {len(timed)} of {len(combos)}, scaled)"
    print(f"sequential, {threads_used} thread(s), {len(combos)} runs through run_training: {seq:.1f} s{scaled}")
    best = min(batched, key=batched.get)
    print(f"speed-up, batched ({best} thread(s)) vs sequential: {seq / batched[best]:.1f}x (target >= 5x); "
          f"as 45 separate train.py commands the sequential way would also pay {import_seconds():.1f} s of "
          "interpreter and imports each")  # fmt: skip
    for threads, s in batched.items():
        print(f"  batched with {threads} thread(s): {s:.1f} s -> {seq / s:.1f}x")
    compute_only(args.threads)


if __name__ == "__main__":
    main()
