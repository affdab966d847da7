"""End-to-end training throughput: clips/s of the training step (decode + augment + forward + backward + update)
with frozen and with fine-tuned backbones, on whatever device is present, and the share of the step spent waiting
for decoded clips (target < 10 % on a GPU).

    python bench/e2e_speed.py                                     # full-size backbones (random weights), 45x256x256
    python bench/e2e_speed.py --standin --e2e_frames 16 --e2e_size 128 --batch_size 4 --clips 16   # quick CPU run

Writes a synthetic corpus (the demo generator, Memento10k layout) to a temporary folder and runs
``pipeline.e2e.training.EndToEndTrainer.train_epoch`` over its training clips twice: the first epoch warms up (worker
start, cuDNN autotuning), the second is timed. Weights are random (``--smoke_random_weights``, or the tiny
``--standin`` networks): speed only. ``--raw`` adds the raw tier computed on the fly from the augmented frames (its
HOG PCA is fitted first by ``gen_features.py``'s code on the synthetic corpus)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import GenConfig, TrainConfig, parse
from core.demo import ensure_demo_corpus
from dataset import load_records
from features.extract import Dist
from pipeline.e2e.data import build_data
from pipeline.e2e.training import EndToEndTrainer
from pipeline.generate import run as run_extraction


def measure(argv: list[str], device: torch.device) -> dict:
    """One mode: build the trainer, a warm-up epoch, a timed epoch."""
    cfg = parse(TrainConfig, argv)
    data = build_data(cfg, load_records(cfg.dataset, cfg), device)
    trainer = EndToEndTrainer(cfg, data, device, Dist())
    trainer.train_epoch(0)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer.train_epoch(1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    n = sum(len(b) for b in trainer.samplers["train"])  # the clips of the timed epoch
    out = {
        "clips": n,
        "seconds": round(seconds, 3),
        "clips_per_s": round(n / seconds, 3),
        "data_wait_share": round(trainer.wait_s / seconds, 4),
        "dtype": str(trainer.dtype).removeprefix("torch."),
    }
    if device.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=64, help="training clips per timed epoch")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--grad_accumulation", type=int, default=1)
    p.add_argument("--e2e_frames", type=int, default=45)
    p.add_argument("--e2e_size", type=int, default=256)
    p.add_argument("--workers", type=int, default=-1, help="decoding processes (-1: one per core)")
    p.add_argument("--standin", action="store_true", help="tiny stand-in backbones instead of full-size ones")
    p.add_argument("--grad_checkpointing", action="store_true")
    p.add_argument("--raw", action="store_true", help="also compute the raw tier on the fly")
    p.add_argument("--deep_dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"))
    p.add_argument("--modes", nargs="+", default=["frozen", "fine-tuned"], choices=("frozen", "fine-tuned"))
    p.add_argument("--out", default="", help="also write the results as JSON here")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # 70 % of the corpus is train; the HOG PCA of --raw needs more than 10 training videos
        ensure_demo_corpus(root / "Memento10k", n_videos=max(args.clips, 16 if args.raw else 1) * 10 // 7 + 4, seed=0)
        if args.raw:
            run_extraction(parse(GenConfig, ["--dataset", "Memento10k", "--data_dir", tmp, "--features", "raw"]))
        base = [
            "--dataset", "Memento10k", "--data_dir", tmp, "--runs_dir", str(root / "runs"), "--no-fixed_features",
            "--use_hrnet", "--use_csn", "--data_augmentation", "--seed", "0",
            "--batch_size", str(args.batch_size), "--grad_accumulation", str(args.grad_accumulation),
            "--e2e_frames", str(args.e2e_frames), "--e2e_size", str(args.e2e_size),
            "--workers", str(args.workers), "--deep_dtype", args.deep_dtype,
            "--standin_backbones" if args.standin else "--smoke_random_weights",
        ]  # fmt: skip
        base += ["--use_raw"] if args.raw else []
        base += ["--grad_checkpointing"] if args.grad_checkpointing else []
        name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
        print(
            f"device {name}; {'stand-in' if args.standin else 'full-size'} backbones, {args.e2e_frames}x"
            f"{args.e2e_size}x{args.e2e_size} clips, batch {args.batch_size}, raw on the fly {args.raw}",
            flush=True,
        )
        results = {}
        for mode in args.modes:
            r = results[mode] = measure(base + (["--freeze_backbones"] if mode == "frozen" else []), device)
            extra = f", peak {r['peak_gib']} GiB" if "peak_gib" in r else ""
            print(
                f"  {mode:>10}: {r['clips_per_s']:.2f} clips/s ({r['clips']} clips in {r['seconds']:.1f} s, "
                f"{r['dtype']}); waiting for data {100 * r['data_wait_share']:.1f} % of the step{extra}",
                flush=True,
            )
    if args.out:
        Path(args.out).write_text(json.dumps({"device": name, "args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
