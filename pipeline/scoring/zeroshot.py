"""Zero-shot scores without a trained checkpoint: ``evaluate.py --videos DIR_OR_LIST --pretrained resmem --out F.csv``.

The number is the **mean ResMem image memorability of the sampled frames** (``--resmem_frames`` evenly spaced frames
of a video; an image is its own one frame): ResMem (``features/resmem.py``) is an image model trained on human
memorability scores of images (LaMem + MemCat), not a video model trained on human video memorability scores. It
ranks videos by how memorable their frames are as still images; the max and std over the frames are written beside
it. The files go through the extraction loop (decoding workers overlap the network, a failed file is recorded with
its reason and the run goes on) into a temporary store, and come out as a CSV in input order.
"""

from __future__ import annotations

import tempfile
import time

from config import EvalConfig, GenConfig
from core.media import CLIP_SUFFIXES, IMAGE_SUFFIXES
from features.extract import Dist, device_for, extract_family
from features.resmem import LICENCE, ResMemExtractor
from features.store import FeatureStore
from pipeline.scoring.videos import scores_path, video_records, write_scores
from tiers import TIERS

WHAT = (
    "prediction = mean ResMem image memorability (0-1) of {frames} evenly spaced frames per video (an image: its "
    "own score); ResMem is an image model trained on LaMem + MemCat human image scores, not a video model trained on "
    "human video memorability scores"
)


def score_pretrained(cfg: EvalConfig) -> dict:
    """Everything ``evaluate.py --pretrained resmem --videos ...`` does; returns what ``zero_shot_lines`` prints."""
    records = video_records(cfg.videos, CLIP_SUFFIXES + IMAGE_SUFFIXES)
    out = scores_path(cfg)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="m3s-zeroshot-") as tmp:
        gen = GenConfig(
            dataset="folder", features=["resmem"], features_dir=tmp, workers=cfg.workers, device=cfg.device,
            resmem_frames=cfg.resmem_frames,
        )  # fmt: skip
        dist = Dist()
        ext = ResMemExtractor(gen, device_for(cfg.device, dist))
        store = TIERS["resmem"].store(gen)
        summary = extract_family(ext, store, records, gen, dist)
        data = FeatureStore.at(tmp, "folder", store).read()
    rows = dict(zip(data.ids, data.features["resmem"].tolist(), strict=True)) if data.ids else {}
    failed = {vid: reason for vid, reason in data.failures.items() if vid not in rows}
    scores = {}
    for r in (r for r in records if r.id in rows):
        frames = 1 if r.path.suffix.lower() in IMAGE_SUFFIXES else cfg.resmem_frames  # an image is its own frame
        scores[r.id] = [*(f"{v:.6f}" for v in rows[r.id]), frames]
    write_scores(out, records, scores, failed, ("prediction", "resmem_max", "resmem_std", "frames"))
    return {
        "n": len(records), "n_scored": len(rows), "failed": failed, "out": str(out), "frames": cfg.resmem_frames,
        "seconds": time.perf_counter() - start, "extract_seconds": summary.seconds, "weights": ext.weights,
    }  # fmt: skip


def zero_shot_lines(result: dict) -> list[str]:
    lines = [
        f"scored {result['n_scored']} of {result['n']} files with ResMem ({result['weights']}, zero-shot, no "
        f"checkpoint) in {result['seconds']:.1f} s",
        WHAT.format(frames=result["frames"]),
        f"licence of the ResMem weights: {LICENCE}",
    ]
    lines += [f"  failed {vid}: {reason}" for vid, reason in sorted(result["failed"].items())[:20]]
    if len(result["failed"]) > 20:
        lines.append(f"  ... and {len(result['failed']) - 20} more (see the error column)")
    return lines + [f"scores: {result['out']}"]
