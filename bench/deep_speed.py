"""Deep-tier throughput: clips/s of each backbone through its extractor, batch size swept, with achieved FLOP/s.

    python bench/deep_speed.py                                          # full size: 45 x 256x256 clips
    python bench/deep_speed.py --frames 16 --size 128 --repeats 1       # a quick CPU run

Runs ``features.deep``'s extractors (normalisation, autocast on CUDA, fp32 on CPU, host-to-device copy included;
video decoding excluded: clips are random uint8 arrays already in memory) with RANDOM weights: speed only, the
features mean nothing. FLOPs per clip come from the SPEC's counts (ip-CSN-152 108.8 / ir-CSN-152 96.7 GFLOPs per
32x224x224 clip, HRNetV2-W48 22 per 256x256 frame), scaled linearly in frames and pixels to the clip measured; the
"GMAC" column counts this code's convolution multiply-accumulates on a meta-device pass, for comparison: published
"GFLOPs" of these models are multiply-accumulate counts. HRNet at 256x256: 21.2 counted vs 22 published. CSN at
32x224x224: 83.3 (ip) and 74.0 (ir) counted vs 108.8 and 96.7 published, exactly the 32x256x256 counts (x 256^2/224^2),
so the VMZ figures look counted at 256 pixels, and a 45x256x256 clip is 158.2 (ip) / 140.7 (ir) GMACs rather than
the SPEC's "about 200". ``--flops counted`` uses the counted figures. hrnet runs ``--hrnet_frames`` frames per clip.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import GenConfig
from features.base import Clip, FrameSpec
from features.deep import CSNExtractor, DeepExtractor, HRNetExtractor
from model.backbones import BACKBONES

# SPEC GFLOPs and the input they were counted for: (GFLOPs, frames, height, width)
SPEC_GFLOPS = {
    "hrnetv2_w48": (22.0, 1, 256, 256),
    "ip_csn_152": (108.8, 32, 224, 224),
    "ir_csn_152": (96.7, 32, 224, 224),
}


def spec_gflops(arch: str, frames: int, size: int) -> float:
    """The SPEC's GFLOPs for one input of ``frames`` x ``size``x``size``, scaled linearly from its reference input."""
    g, t, h, w = SPEC_GFLOPS[arch]
    return g * (frames / t) * (size * size) / (h * w)


def counted_gmacs(arch: str, frames: int, size: int) -> float:
    """Convolution multiply-accumulates of one input, counted with hooks on a meta-device pass (no compute)."""
    with torch.device("meta"):
        model = BACKBONES[arch].build().eval()
        x = torch.empty((1, 3, size, size) if arch.startswith("hrnet") else (1, 3, frames, size, size))
    total = 0

    def hook(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * mod.in_channels // mod.groups * int(np.prod(mod.kernel_size))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    with torch.no_grad():
        model.features(x)
    for h in handles:
        h.remove()
    return total * (frames if arch.startswith("hrnet") else 1) / 1e9


def make_extractor(family: str, arch: str, args: argparse.Namespace, device: torch.device) -> DeepExtractor:
    cfg = GenConfig(
        smoke_random_weights=True, weights_dir="/nonexistent", hrnet_frames=args.hrnet_frames, deep_dtype=args.dtype
    )
    if family == "csn":
        cfg.csn_arch = arch
    cls = HRNetExtractor if family == "hrnet" else CSNExtractor
    ext = cls(cfg, device)
    if args.channels_last and device.type == "cuda" and not ext.use_channels_last:
        ext.use_channels_last = True
        ext.model = ext.model.to(memory_format=torch.channels_last_3d)
    ext.frame_spec = FrameSpec(args.frames, (args.size, args.size), "squash")
    return ext


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(ext: DeepExtractor, batch: int, args: argparse.Namespace) -> float:
    """Seconds per extract() call on ``batch`` clips: best of ``--repeats`` after ``--warmup`` calls."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (args.frames, args.size, args.size, 3), dtype=np.uint8)
    clips = [Clip(f"c{i}", None, frames) for i in range(batch)]
    for _ in range(args.warmup):
        ext.extract(clips)
    sync(ext.device)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ext.extract(clips)
        sync(ext.device)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["hrnetv2_w48", "ip_csn_152", "ir_csn_152"])
    parser.add_argument("--batch_sizes", nargs="+", type=int, help="clips per batch (default: GPU 1 2 4 8, CPU 1 2)")
    parser.add_argument("--frames", type=int, default=45, help="frames per clip (hrnet uses --hrnet_frames of them)")
    parser.add_argument("--size", type=int, default=256, help="frame height and width")
    parser.add_argument("--hrnet_frames", type=int, default=1, choices=(1, 5, 9))
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per setting (the best is kept)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first (cuDNN autotuning)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"), help="CUDA only")
    parser.add_argument("--channels_last", action="store_true", help="channels-last memory for CSN too (CUDA)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--flops", default="spec", choices=("spec", "counted"), help="FLOPs per clip for the rate")
    parser.add_argument("--json", action="store_true", help="also print one JSON line per setting")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    gpu = device.type == "cuda"
    batches = args.batch_sizes or ([1, 2, 4, 8] if gpu else [1, 2])
    unit, scale = ("TFLOP/s", 1e3) if gpu else ("GFLOP/s", 1.0)
    where = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"deep_speed: {where}; clips {args.frames} x {args.size}x{args.size}; RANDOM weights (speed only); "
          f"{unit} from the {'SPEC GFLOP' if args.flops == 'spec' else 'counted GMAC'} column")  # fmt: skip
    print(f"{'backbone':<12} {'dtype':<9} {'batch':>5} {'s/batch':>9} {'clips/s':>9} {'GFLOP/clip':>10} "
          f"{'GMAC/clip':>9} {unit:>8}")  # fmt: skip
    for arch in args.backbones:
        family = "hrnet" if arch.startswith("hrnet") else "csn"
        ext = make_extractor(family, arch, args, device)
        per_clip_frames = args.hrnet_frames if family == "hrnet" else args.frames
        gflops = spec_gflops(arch, per_clip_frames, args.size)
        gmacs = counted_gmacs(arch, per_clip_frames, args.size)
        dtype = str(ext.dtype).removeprefix("torch.")
        for batch in batches:
            try:
                seconds = measure(ext, batch, args)
            except torch.OutOfMemoryError:
                print(f"{arch:<12} {dtype:<9} {batch:>5} out of memory")
                torch.cuda.empty_cache()
                break
            rate = batch / seconds
            achieved = rate * (gflops if args.flops == "spec" else gmacs) / scale
            print(f"{arch:<12} {dtype:<9} {batch:>5} {seconds:>9.3f} {rate:>9.3f} {gflops:>10.1f} {gmacs:>9.1f} "
                  f"{achieved:>8.2f}")  # fmt: skip
            if args.json:
                row = {"backbone": arch, "device": where, "dtype": dtype, "batch": batch, "frames": args.frames,
                       "size": args.size, "hrnet_frames": args.hrnet_frames, "seconds": seconds, "clips_per_s": rate,
                       "spec_gflops_per_clip": gflops, "counted_gmacs_per_clip": gmacs, unit: achieved,
                       "random_weights": True}  # fmt: skip
                print(json.dumps(row))
        del ext
        if gpu:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
