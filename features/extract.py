"""The extraction loop behind ``gen_features.py``: videos in, one feature store per family out.

For each tier in ``--features`` (``pipeline/generate.py`` asks the tier registry for its extractor and its store
name): open its store (``<features_dir>/<dataset>/<store>.h5``), skip ids already stored or already failed
(``--retry_failed`` tries failures again), decode the rest in a ``torch.utils.data.DataLoader`` (``--workers``
processes; 0 = one per available core) so decoding overlaps compute, append every batch as a part file, compact at
the end, then run the extractor's ``fit`` on the train split. A killed run resumes where it stopped and, once
compacted, gives the same bytes as an uninterrupted one (rows are sorted by id; nothing depends on batch order).

- CPU-only families (``cpu_extract``, the raw tier) compute their features inside the decoding workers, so
  all cores work; the others (GPU backbones) get decoded clips in the main process.
- Families with a pre-pass (``has_prepass``, the raw tier's HOG PCA fitted on the first frame of every training
  video) run it first, unless the store already holds the fitted transform. A dataset without a train split (a
  folder of your own videos) is fitted on all its videos, unless ``--fit_on`` adopts another dataset's fit.
- Decoding follows the family's ``frame_spec``; the crop comes from the dataset adapter (VideoMem: centre crop)
  unless the family sets ``dataset_crop = False`` (raw squash-resizes on every dataset, as M3-S did).
- A video that cannot be decoded or extracted is recorded in the store's failure list with its reason; the run goes
  on. If a batch fails inside the extractor, its clips are retried one at a time so only the bad one is lost.
- Under ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK), rank r takes every WORLD_SIZE-th video of the dataset, writes
  its own parts (``shard=rank<r>``); after a gloo barrier rank 0 compacts and fits. Rank 0 alone runs the pre-pass.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from core.device import available_cores, resolve_device
from core.io import StoreError, code_version
from features.base import Clip, Extractor, fitting_videos
from features.store import FeatureStore, StoredFeatures, Transform, check_compatible
from features.video import VideoError, read_clip

MAX_REASONS_SHOWN = 20


@dataclass
class Dist:
    """This process's place in a ``torchrun`` job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @classmethod
    def from_env(cls) -> Dist:
        env = os.environ
        return cls(
            int(env.get("RANK", 0)),
            int(env.get("WORLD_SIZE", 1)),
            int(env.get("LOCAL_RANK", 0)),
            int(env.get("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE", 1))),
        )

    def init(self) -> None:
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("gloo")

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def gather(self, obj: object) -> list:
        if self.world == 1:
            return [obj]
        out: list = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@dataclass
class Summary:
    family: str
    store: str
    extracted: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def merge(self, other: Summary) -> None:
        self.extracted += other.extracted
        self.skipped = max(self.skipped, other.skipped)
        self.failed.update(other.failed)
        self.seconds = max(self.seconds, other.seconds)

    def text(self) -> str:
        rate = self.extracted / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"{self.family}: {self.extracted} extracted, {self.skipped} already done, {len(self.failed)} failed "
            f"in {self.seconds:.1f} s ({rate:.2f} videos/s) -> {self.store}"
        ]
        for vid, reason in sorted(self.failed.items())[:MAX_REASONS_SHOWN]:
            lines.append(f"  failed {vid}: {reason}")
        if len(self.failed) > MAX_REASONS_SHOWN:
            lines.append(f"  ... and {len(self.failed) - MAX_REASONS_SHOWN} more (see the store's failure list)")
        return "\n".join(lines)


# --------------------------------------------------------------------------- decoding workers


class _Videos(torch.utils.data.Dataset):
    """Item i: ``(id, payload, reason)``; payload is a Clip, the family's features (``cpu_extract``) or its
    pre-pass item (``mode="prepare"``: of its first sampled frame; ``"prepare_all"``: of every sampled frame); reason
    is None, or why the video failed."""

    def __init__(self, records: list, ext: Extractor, mode: str) -> None:
        self.records, self.ext, self.mode = records, ext, mode
        self.spec = ext.frame_spec

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[str, object, str | None]:
        rec = self.records[i]
        try:
            first_only = self.mode == "prepare"
            frames = read_clip(rec.path, self.spec, first_only=first_only, images=self.ext.accepts_images)
            clip = Clip(rec.id, rec.path, frames, dict(rec.extras))
            if self.mode in ("prepare", "prepare_all"):
                return rec.id, self.ext.prepare_item(clip), None
            if self.ext.cpu_extract:
                return rec.id, self.ext.extract([clip])[0], None
            return rec.id, clip, None
        except VideoError as err:
            return rec.id, None, str(err)
        except Exception as err:
            return rec.id, None, f"{rec.path}: {type(err).__name__}: {err}"


def _collate(items: list) -> list:
    return items


def _worker_init(_: int, parent: int) -> None:
    # one thread per worker process: the workers are the parallelism
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    # A forkserver worker is the forkserver's child, not the extraction's: PyTorch's own watchdog watches the
    # forkserver, which outlives a killed extraction. Watch the extraction itself and leave with it.
    threading.Thread(target=_exit_with, args=(parent,), daemon=True, name="m3s-parent-watch").start()


def _exit_with(parent: int, every: float = 0.5) -> None:
    while True:
        time.sleep(every)
        try:
            os.kill(parent, 0)
        except (ProcessLookupError, PermissionError):  # gone (PermissionError: the pid is another user's now)
            os._exit(1)


def _loader(records: list, ext: Extractor, mode: str, cfg: Any, dist: Dist) -> torch.utils.data.DataLoader:
    workers = cfg.workers if cfg.workers >= 0 else max(1, available_cores() // max(dist.local_world, 1))
    # forkserver, not fork: a worker forked from a parent whose OpenCV/OpenMP threads hold a lock can hang forever
    kwargs = (
        {
            "prefetch_factor": 2,
            "worker_init_fn": functools.partial(_worker_init, parent=os.getpid()),
            "multiprocessing_context": "forkserver",
        }
        if workers > 0
        else {}
    )
    return torch.utils.data.DataLoader(
        _Videos(records, ext, mode), batch_size=max(cfg.batch_size, 1), shuffle=False, num_workers=workers,
        collate_fn=_collate, **kwargs,
    )  # fmt: skip


def _progress(total: int, desc: str, dist: Dist):
    return tqdm(total=total, desc=desc, unit="video", disable=dist.rank != 0 or total == 0, file=sys.stderr)


# --------------------------------------------------------------------------- the loop


def device_for(requested: str, dist: Dist) -> torch.device:
    """This process's device: under ``torchrun`` with several processes, ``cuda`` is the local rank's GPU."""
    return resolve_device(requested, dist.local_rank if dist.world > 1 else 0)


def with_crop(ext: Extractor, crop: str) -> Extractor:
    """Decode with the dataset's crop (VideoMem: centre) unless the family keeps its own (``dataset_crop=False``)."""
    if ext.dataset_crop:
        ext.frame_spec = dataclasses.replace(ext.frame_spec, crop=crop)
    return ext


def store_meta(ext: Extractor, cfg: Any) -> dict:
    return {
        "family": ext.family,
        "dataset": cfg.dataset,
        "settings": ext.settings(),
        "smoke": ext.smoke,
        "code_version": code_version(),
    }


def adopt_transforms(ext: Extractor, store: FeatureStore, cfg: Any, meta: dict) -> None:
    """``--fit_on D``: copy the fitted transforms of D's store for this family (same settings) into this store."""
    source = FeatureStore.at(cfg.resolved_features_dir(), cfg.fit_on, store.path.stem)
    if not source.exists():
        raise FileNotFoundError(
            f"--fit_on {cfg.fit_on}: {source.path} does not exist; extract it first "
            f"(python gen_features.py --dataset {cfg.fit_on} --features {ext.family})"
        )
    fitted = source.read()
    check_compatible(fitted.meta, meta, str(source.path))
    have = store.read_transforms() if store.exists() else {}
    for name, transform in fitted.transforms.items():
        if name in have and have[name].digest() != transform.digest() and store.done_ids():
            raise StoreError(
                f"--fit_on {cfg.fit_on}: {store.path} holds videos extracted with another {name} "
                f"({have[name].info.get('fitted_on', 'fitted elsewhere')}); their features are in that basis. "
                "Delete the store, or extract into another --features_dir"
            )
        adopted = Transform(transform.arrays, transform.info | {"adopted_from": cfg.fit_on})
        if store.exists():
            store.set_transform(name, adopted)
        else:
            store.write(StoredFeatures([], {}, meta, {}, {name: adopted}))


def _prepare(ext: Extractor, store: FeatureStore, records: list, cfg: Any, dist: Dist, meta: dict) -> list[str] | None:
    """The family's pre-pass on the training videos (raw: fit the HOG PCA), once, by rank 0. Returns the train ids
    the transforms belong to (None when adopted from ``--fit_on``)."""
    if cfg.fit_on:
        if dist.rank == 0:
            adopt_transforms(ext, store, cfg, meta)
        dist.barrier()
        if not ext.load_prepared(store, None):
            raise StoreError(f"--fit_on {cfg.fit_on}: its {store.path.stem} store holds no fitted transform")
        return None
    train = fitting_videos(records)
    train_ids = [r.id for r in train]
    if dist.rank == 0 and not ext.load_prepared(store, train_ids):
        items: dict[str, np.ndarray] = {}
        with _progress(len(train), f"{ext.family} pre-pass (fit)", dist) as bar:
            mode = "prepare_all" if ext.prepare_all_frames(len(train)) else "prepare"
            for batch in _loader(train, ext, mode, cfg, dist):
                for vid, item, reason in batch:
                    if reason is None:
                        items[vid] = item
                bar.update(len(batch))
        ext.prepare_fit(store, train_ids, items, meta)
    dist.barrier()
    if dist.rank != 0 and not ext.load_prepared(store, train_ids):
        raise RuntimeError(f"rank {dist.rank}: rank 0 did not leave the fitted pre-pass in {store.path}")
    return train_ids


def extract_family(ext: Extractor, store_name: str, records: list, cfg: Any, dist: Dist) -> Summary:
    """Run one family over ``records`` (every split) into the store ``store_name``; see the module docstring.
    ``cfg`` is the ``gen_features.py`` config (``config.GenConfig``)."""
    store = FeatureStore.at(cfg.resolved_features_dir(), cfg.dataset, store_name)
    summary = Summary(ext.family, str(store.path))
    meta = store_meta(ext, cfg)
    train_ids = None if cfg.fit_on else [r.id for r in fitting_videos(records)]
    if ext.has_prepass:
        train_ids = _prepare(ext, store, records, cfg, dist, meta)
    done = store.done_ids(include_failed=not cfg.retry_failed)
    # shard by position in the dataset, not in the to-do list: the assignment must not depend on what other ranks
    # have already written when this rank looks
    mine = records[dist.rank :: dist.world]
    todo = [r for r in mine if r.id not in done]
    summary.skipped = len(mine) - len(todo)
    if cfg.limit > 0:
        todo = todo[: cfg.limit]
    shard = f"rank{dist.rank}" if dist.world > 1 else "0"
    cpu = ext.cpu_extract
    start = time.perf_counter()
    with _progress(len(todo), ext.family, dist) as bar:
        for batch in _loader(todo, ext, "extract", cfg, dist) if todo else []:
            ok: list[tuple[str, dict]] = []
            failed: dict[str, str] = {}
            payloads = [(vid, p) for vid, p, reason in batch if reason is None]
            failed.update({vid: reason for vid, _, reason in batch if reason is not None})
            if cpu:
                ok = payloads
            elif payloads:
                ok, more = _extract_clips(ext, [p for _, p in payloads])
                failed.update(more)
            if ok or failed:
                ids = [vid for vid, _ in ok]
                names = sorted(ok[0][1]) if ok else []
                feats = {n: np.stack([f[n] for _, f in ok]) for n in names}
                store.append(ids, feats, meta, failed, shard=shard)
            summary.extracted += len(ok)
            summary.failed.update(failed)
            bar.update(len(batch))
    summary.seconds = time.perf_counter() - start
    for other in dist.gather(summary)[1:]:
        summary.merge(other)
    dist.barrier()
    if dist.rank == 0 and store.exists():
        store.compact()
        ext.fit(store, train_ids)
    return summary


def _extract_clips(ext: Extractor, clips: list[Clip]) -> tuple[list[tuple[str, dict]], dict[str, str]]:
    """Extract a batch; if it raises, retry clip by clip so that only the bad clips fail."""
    try:
        return list(zip([c.id for c in clips], ext.extract(clips), strict=True)), {}
    except Exception:
        ok, failed = [], {}
        for clip in clips:
            try:
                ok.append((clip.id, ext.extract([clip])[0]))
            except Exception as err:
                failed[clip.id] = f"{clip.path}: {type(err).__name__}: {err}"
        return ok, failed
