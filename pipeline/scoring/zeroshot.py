"""Zero-shot scores without a trained checkpoint: ``evaluate.py --videos DIR_OR_LIST --pretrained resmem --out F.csv``.

The number is the **mean ResMem image memorability of the sampled frames** (``--resmem_frames`` evenly spaced frames
of a video; an image is its own one frame): ResMem (``features/resmem.py``) is an image model trained on human
memorability scores of images (LaMem + MemCat), not a video model trained on human video memorability scores. It
ranks videos by how memorable their frames are as still images; the max and std over the frames are written beside
it. The files go through the extraction loop (decoding workers overlap the network, a failed file is recorded with
its reason and the run goes on) into a temporary store, and come out as a CSV in input order.
"""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path

from config import EvalConfig, GenConfig
from core.io import ConfigError, atomic_write
from core.media import CLIP_SUFFIXES, IMAGE_SUFFIXES, video_id
from dataset import VideoRecord
from features.extract import Dist, device_for, extract_family
from features.resmem import LICENCE, ResMemExtractor
from features.store import FeatureStore
from pipeline.scoring.videos import video_records
from tiers import TIERS

MEDIA_SUFFIXES = CLIP_SUFFIXES + IMAGE_SUFFIXES
WHAT = (
    "prediction = mean ResMem image memorability (0-1) of {frames} evenly spaced frames per video (an image: its "
    "own score); ResMem is an image model trained on LaMem + MemCat human image scores, not a video model trained on "
    "human video memorability scores"
)


def media_records(videos: str | Path) -> list[VideoRecord]:
    """A folder (recursive: videos and images; ids are the paths below it without suffix) or a list file."""
    path = Path(videos)
    if not path.is_dir():
        return video_records(path)
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in MEDIA_SUFFIXES and p.is_file())
    rel = [p.relative_to(path) for p in files]
    records = [VideoRecord(video_id(r.as_posix()), p, "test", None) for r, p in zip(rel, files, strict=True)]
    if not records:
        raise ConfigError(f"--videos {path}: no video or image files ({', '.join(MEDIA_SUFFIXES)}) in that folder")
    seen: dict[str, Path] = {}
    for r in records:
        if r.id in seen:
            raise ConfigError(f"--videos {path}: {seen[r.id]} and {r.path} would share the id {r.id!r}; rename one")
        seen[r.id] = r.path
    return records


def default_out(cfg: EvalConfig) -> Path:
    """``scores_<videos>_<pretrained>.csv`` in ``--out_dir`` (default: the current folder)."""
    return Path(cfg.out_dir or ".") / f"scores_{Path(cfg.videos).resolve().stem}_{cfg.pretrained}.csv"


def score_pretrained(cfg: EvalConfig) -> dict:
    """Everything ``evaluate.py --pretrained resmem --videos ...`` does; returns what ``zero_shot_lines`` prints."""
    records = media_records(cfg.videos)
    out = Path(cfg.out) if cfg.out else default_out(cfg)
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
    write_scores(out, records, rows, failed, cfg.resmem_frames)
    return {
        "n": len(records), "n_scored": len(rows), "failed": failed, "out": str(out), "frames": cfg.resmem_frames,
        "seconds": time.perf_counter() - start, "extract_seconds": summary.seconds, "weights": ext.weights,
    }  # fmt: skip


def write_scores(path: Path, records: list[VideoRecord], rows: dict, failed: dict[str, str], frames: int) -> None:
    """CSV ``id, prediction, resmem_max, resmem_std, frames, error, path`` in input order (failed: empty scores)."""
    with atomic_write(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "prediction", "resmem_max", "resmem_std", "frames", "error", "path"])
        for r in records:
            row = rows.get(r.id)
            n = 1 if r.path.suffix.lower() in IMAGE_SUFFIXES else frames
            if row is None:
                w.writerow([r.id, "", "", "", "", failed.get(r.id, "no score was computed"), str(r.path)])
            else:
                w.writerow([r.id, *(f"{v:.6f}" for v in row), n, "", str(r.path)])


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
