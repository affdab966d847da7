"""Clips for end-to-end training: decoded (``features.video.read_clip``) in ``DataLoader`` workers, the reference
augmentation, the raw tier computed on the same frames in the workers (``features.raw.raw_features``, with the HOG
PCA of the raw store), and the batch order (seeded per epoch, split across ``torchrun`` processes and accumulation
steps). The augmentation is one crop and flip for all the frames of a clip; when the backbones' frames and the raw
tier's differ in size, the clip is decoded twice and both get the same one. Its parameters come from ``(seed,
epoch, clip index)`` alone, so they do not depend on the worker that decodes the clip and a resumed run draws the
same ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from core.io import M3SError
from dataset import VideoRecord
from features.base import Clip, FrameSpec
from features.hog import HogPCA
from features.raw import raw_features
from features.video import VideoError, read_clip

AUG_SCALE = (0.8, 1.0)  # area of the crop, as a fraction of the frame (the M3-S reference augmentation)
FLIP_P = 0.5


@dataclass(frozen=True)
class Crop:
    """One clip's augmentation: a square crop (top, left, side as fractions of the square frame's side), then an
    optional horizontal flip. Fractions, so that frames decoded at two sizes (deep and raw) get the same crop."""

    top: float
    left: float
    side: float
    flip: bool


def draw_crop(seed: int, epoch: int, index: int) -> Crop:
    """The augmentation of clip ``index`` in ``epoch``: a function of these numbers only (exact resume)."""
    rng = np.random.default_rng([seed % 2**63, epoch, index])
    side = math.sqrt(rng.uniform(*AUG_SCALE))  # area fraction -> side fraction (square aspect)
    top, left = rng.uniform(0, 1 - side, size=2)
    return Crop(float(top), float(left), side, bool(rng.random() < FLIP_P))


def apply_crop(frames: np.ndarray, crop: Crop) -> np.ndarray:
    """uint8 (T, H, W, 3) square frames -> the same shape: crop, resize back (bilinear), flip."""
    T, H, W, _ = frames.shape
    side = max(1, min(round(crop.side * H), H))
    top, left = min(round(crop.top * H), H - side), min(round(crop.left * W), W - side)
    out = np.empty_like(frames)
    for t in range(T):
        patch = frames[t, top : top + side, left : left + side]
        patch = cv2.resize(patch, (W, H), interpolation=cv2.INTER_LINEAR)
        out[t] = patch[:, ::-1] if crop.flip else patch
    return out


@dataclass(frozen=True)
class ClipSpec:
    """What a clip item holds: how its frames are decoded and whether the raw tier is computed from them."""

    deep: FrameSpec | None  # frames the backbones see (None: no deep tier)
    raw: FrameSpec | None  # frames the raw tier is computed on (None: raw read from its store, or not used)
    seed: int


class ClipDataset(torch.utils.data.Dataset):
    """Item ``(index, epoch, augment)`` -> ``{"index", "frames" (T, H, W, 3) uint8, "raw": {name: vector}}``.

    ``index`` is the clip's row in ``records`` (the same row as in the split's feature table)."""

    def __init__(self, records: list[VideoRecord], spec: ClipSpec, hog_pca: HogPCA | None) -> None:
        self.records, self.spec, self.hog_pca = records, spec, hog_pca

    def _decode(self, rec: VideoRecord, spec: FrameSpec, crop: Crop | None) -> np.ndarray:
        try:
            frames = read_clip(rec.path, spec)
        except VideoError as err:
            raise M3SError(f"end-to-end training cannot decode video {rec.id}: {err}") from None
        return frames if crop is None else apply_crop(frames, crop)

    def __getitem__(self, item: tuple[int, int, bool]) -> dict:
        index, epoch, augment = item
        rec = self.records[index]
        crop = draw_crop(self.spec.seed, epoch, index) if augment else None
        out: dict = {"index": index}
        frames = None
        if self.spec.deep is not None:
            frames = self._decode(rec, self.spec.deep, crop)
            out["frames"] = frames
        if self.spec.raw is not None:
            if frames is None or self.spec.raw != self.spec.deep:
                frames = self._decode(rec, self.spec.raw, crop)
            out["raw"] = raw_features(Clip(rec.id, rec.path, frames, dict(rec.extras)), self.hog_pca)
        return out


def collate(items: list[dict]) -> dict:
    """``{"index": (B,) int64, "frames": (B, T, H, W, 3) uint8, "raw": {name: (B, d) float32}}``."""
    out: dict = {"index": torch.tensor([it["index"] for it in items], dtype=torch.int64)}
    if "frames" in items[0]:
        out["frames"] = torch.from_numpy(np.stack([it["frames"] for it in items]))
    if "raw" in items[0]:
        out["raw"] = {k: torch.from_numpy(np.stack([it["raw"][k] for it in items])) for k in items[0]["raw"]}
    return out


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # the workers are the parallelism
    cv2.setNumThreads(1)


def micro_batches(order: list[int], batch: int, world: int, rank: int, accum: int) -> list[list[int]]:
    """Split ``order`` into global batches of ``batch`` clips and each into ``world * accum`` near-equal parts; this
    rank's ``accum`` parts of every global batch, in order. A trailing batch too small to give every part a clip is
    dropped (every process must take the same number of steps)."""
    parts = world * accum
    out = []
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        if len(chunk) < parts:
            break
        split = np.array_split(np.asarray(chunk), parts)
        out.extend(split[rank * accum + a].tolist() for a in range(accum))
    return out


def make_loader(
    dataset: ClipDataset, batches: list[list[tuple[int, int, bool]]], workers: int, prefetch: int, pin: bool
) -> torch.utils.data.DataLoader:
    """A ``DataLoader`` over ``batches``, the micro-batches of this process for the current epoch as lists of
    ``(index, epoch, augment)``: filled in place each epoch, a persistent loader reads the list anew at each
    iteration. ``workers`` 0 decodes in this process."""
    kwargs: dict = {}
    if workers > 0:
        # forkserver, not fork: a worker forked from a parent whose OpenCV/OpenMP threads hold a lock can hang
        kwargs = {
            "prefetch_factor": prefetch,
            "worker_init_fn": _worker_init,
            "multiprocessing_context": "forkserver",
            "persistent_workers": True,
        }
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate, pin_memory=pin, **kwargs
    )
