"""Score new videos from a checkpoint alone: ``evaluate.py --checkpoint best.pt --videos DIR_OR_LIST --out scores.csv``.

The checkpoint carries everything fitted on its training dataset (``pipeline/run/fitted.py``: the HOG PCA, the
similarity methods' state; and the normalisation statistics), so the training dataset's stores are not needed. In a
temporary features folder, the fitted transforms are written as the stores of a pseudo-dataset ``checkpoint``, and
every store the checkpoint's modules read is computed for the new videos the way ``gen_features.py --fit_on`` does
(video tiers first, derived tiers such as similarity after them). The feature table is then built with the
checkpoint's statistics, checked against the checkpoint's provenance (same settings, same fitted transforms), and
scored.

A video that cannot be decoded or extracted is written to the output with its reason, and the run goes on.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from config import EvalConfig, GenConfig
from core.device import resolve_device
from core.io import ConfigError, read_csv, write_csv
from core.media import CLIP_SUFFIXES, video_id
from dataset import DATASETS, VideoRecord
from features.extract import Dist, device_for, extract_family, with_crop
from features.store import FeatureStore, StoredFeatures
from pipeline.run.checkpoint import load_checkpoint
from pipeline.run.fitted import Fitted, unpack
from pipeline.scoring.loader import Scorer
from tiers import TIERS, Tier, owner

FITTED_DATASET = "checkpoint"  # pseudo-dataset holding the checkpoint's fitted transforms as stores
NEW_DATASET = "folder"  # the new videos' stores (a dataset name configs accept: unscored, split test)


def video_records(videos: str | Path, suffixes: tuple[str, ...] = CLIP_SUFFIXES) -> list[VideoRecord]:
    """A folder of videos (or of any ``suffixes`` files; searched recursively; ids are the paths below it without
    suffix), or a text file listing one path per line (relative paths are relative to the list file's folder; ids
    are the file names without suffix, or the listed paths where names repeat). A listed path that does not exist is
    kept: it fails later with its reason, like an unreadable video."""
    path = Path(videos)
    if path.is_dir():
        records = DATASETS["folder"].index(path, suffixes)
        if not records:
            kind = "video" if suffixes == CLIP_SUFFIXES else "video or image"
            raise ConfigError(f"--videos {path}: no {kind} files ({', '.join(suffixes)}) in that folder")
        return records
    if not path.is_file():
        raise FileNotFoundError(f"--videos {path}: no such folder or list file")
    if path.suffix.lower() in CLIP_SUFFIXES:
        raise ConfigError(f"--videos {path} is one video; pass its folder, or a text file listing video paths")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines()]
    files = [Path(ln) if Path(ln).is_absolute() else path.parent / ln for ln in lines if ln and not ln.startswith("#")]
    if not files:
        raise ConfigError(f"--videos {path}: the list is empty (one video path per line)")
    names = [video_id(f.name) for f in files]
    ids = names if len(set(names)) == len(names) else [video_id(str(f)) for f in files]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"--videos {path} lists a video twice")
    return [VideoRecord(i, f, "test", None) for i, f in zip(ids, files, strict=True)]


def needed_stores(ckpt: dict) -> list[str]:
    """Every store the checkpoint's modules read, plus the stores similarity is computed from."""
    stores = list(ckpt["sources"])
    for name, src in ckpt["sources"].items():
        source = (src.get("settings") or {}).get("source")
        if owner(name) is TIERS.get("similarity") and source and source not in stores:
            stores.insert(0, source)
    return stores


def _tier_of(store: str, ckpt: dict) -> Tier:
    tier = owner(store)
    if tier is None or not tier.computed:
        raise ConfigError(
            f"{Path(ckpt['path']).name} reads the imported features {store!r}, which --videos cannot compute from "
            f"videos; import them for your videos (gen_features.py --dataset folder --data_dir DIR --import FILE "
            f"--name {store}) and run evaluate.py --dataset folder --data_dir DIR --split test"
        )
    return tier


def gen_config(cfg: EvalConfig, ckpt: dict, features_dir: Path) -> GenConfig:
    """The ``gen_features.py`` config the checkpoint's stores were made with, for the new videos."""
    train = ckpt["config"]
    gen_options = {n for t in TIERS.values() for n, o in t.options(TIERS).items() if o.gen}
    values = {k: train[k] for k in gen_options if k in train}
    smoke = any(src.get("smoke") for src in ckpt["sources"].values())
    if smoke:
        print("warning: the checkpoint was trained on smoke stores (RANDOM backbone weights): its scores mean nothing")
    return GenConfig(
        **values,
        dataset=NEW_DATASET,
        features_dir=str(features_dir),
        fit_on=FITTED_DATASET,
        workers=cfg.workers,
        device=cfg.device,
        weights_dir=cfg.weights_dir,
        smoke_random_weights=smoke,
    )


def write_fitted(features_dir: Path, fitted: Fitted) -> None:
    """Each store's fitted transforms as an empty store of the pseudo-dataset, where ``--fit_on`` looks for them."""
    for store, entry in fitted.items():
        FeatureStore.at(features_dir, FITTED_DATASET, store).write(
            StoredFeatures([], {}, dict(entry["meta"]), {}, entry["transforms"])
        )


def compute_stores(gen: GenConfig, ckpt: dict, records: list[VideoRecord]) -> dict[str, str]:
    """Compute every store the checkpoint needs for ``records``; returns ``{id: reason}`` of the failed videos."""
    stores = needed_stores(ckpt)
    tiers = {s: _tier_of(s, ckpt) for s in stores}
    crop = DATASETS[ckpt["config"]["dataset"]].crop  # new videos are framed like the training dataset's
    dist = Dist()
    device = device_for(gen.device, dist)
    for store in (s for s in stores if tiers[s].extractor is not None):
        tier = tiers[store]
        g = dataclasses.replace(gen, **tier.gen_options(gen, store))
        summary = extract_family(with_crop(tier.extractor(g, device), crop), store, records, g, dist)
        print(summary.text(), flush=True)
    failed = _failures(gen, [s for s in stores if tiers[s].extractor is not None])
    ok = [r for r in records if r.id not in failed]
    derived = [t for t in TIERS.values() if t.derived and t in tiers.values()]  # registry order: similarity last
    for tier in derived if ok else []:
        tier.compute(gen, ok)
    _check_similarity_sources(gen, ckpt)
    return failed


def _failures(gen: GenConfig, stores: list[str]) -> dict[str, str]:
    failed: dict[str, str] = {}
    for store in stores:
        data = FeatureStore.at(gen.resolved_features_dir(), NEW_DATASET, store)
        if data.exists():
            for vid, reason in data.read().failures.items():
                failed.setdefault(vid, f"{store}: {reason}")
    return failed


def _check_similarity_sources(gen: GenConfig, ckpt: dict) -> None:
    """Similarity scores new videos in a source store's space: it must be made as the training one was."""
    for name, src in ckpt["sources"].items():
        settings = src.get("settings") or {}
        source = settings.get("source")
        if owner(name) is not TIERS.get("similarity") or not source:
            continue
        new = FeatureStore.at(gen.resolved_features_dir(), NEW_DATASET, source)
        if new.exists() and new.meta().get("settings") != settings.get("source_settings"):
            raise ConfigError(
                f"{source} of the new videos is made with other settings than the store {name} was fitted on: "
                f"{new.meta().get('settings')} vs {settings.get('source_settings')}"
            )


def scores_path(cfg: EvalConfig) -> Path:
    """``--out``, else ``scores_<videos>_<checkpoint or pretrained model>.csv`` (one file per pair) in ``--out_dir``,
    by default beside the checkpoint (zero-shot: the current folder)."""
    if cfg.out:
        return Path(cfg.out)
    if cfg.pretrained:
        folder, model = Path(cfg.out_dir or "."), cfg.pretrained
    else:
        ckpt = Path(cfg.checkpoint)
        folder, model = (Path(cfg.out_dir) if cfg.out_dir else ckpt.resolve().parent), ckpt.stem
    return folder / f"scores_{Path(cfg.videos).resolve().stem}_{model}.csv"


def score_videos(cfg: EvalConfig) -> dict:
    """Everything ``evaluate.py --videos`` does; returns ``{"n", "n_scored", "failed", "out", "checkpoint"}``."""
    ckpt = load_checkpoint(cfg.checkpoint) | {"path": str(cfg.checkpoint)}
    if "fitted" not in ckpt:
        raise ConfigError(
            f"{cfg.checkpoint} was written before checkpoints carried their fitted transforms; retrain it, or extract "
            "the videos' features with gen_features.py --dataset folder --data_dir DIR --fit_on <training dataset>"
        )
    records = video_records(cfg.videos)
    out = scores_path(cfg)
    device = resolve_device(cfg.device)
    with tempfile.TemporaryDirectory(prefix="m3s-videos-") as tmp:
        features_dir = Path(tmp)
        write_fitted(features_dir, unpack(ckpt["fitted"]))
        failed = compute_stores(gen_config(cfg, ckpt, features_dir), ckpt, records)
        ok = [r for r in records if r.id not in failed]
        preds = {}
        if ok:
            scorer = Scorer.load(ckpt["path"], ckpt, dataset=NEW_DATASET, features_dir=str(features_dir))
            scorer.cfg.data_dir = ""  # new videos: the records carry their paths
            ids, _, pred = scorer.predict(ok, ("test",), device)["test"]
            preds = {vid: [f"{p:.6f}"] for vid, p in zip(ids, pred, strict=True)}
    write_scores(out, records, preds, failed)
    return {"n": len(records), "n_scored": len(preds), "failed": failed, "out": str(out), "checkpoint": cfg.checkpoint}


def write_scores(
    path: Path, records: list[VideoRecord], scores: dict[str, list], failed: dict[str, str], columns=("prediction",)
) -> None:
    """CSV ``id, <columns>, error, path`` in input order: a video's ``scores`` (one per column), or empty ones with
    why it failed."""
    rows = []
    for r in records:
        values = scores.get(r.id)
        if values is None:
            rows.append([r.id, *[""] * len(columns), failed.get(r.id, "no score was computed"), str(r.path)])
        else:
            rows.append([r.id, *values, "", str(r.path)])
    write_csv(path, ["id", *columns, "error", "path"], rows)


def read_scores(path: Path) -> dict[str, float]:
    """``{id: prediction}`` of a scores CSV (failed videos left out)."""
    return {row["id"]: float(row["prediction"]) for row in read_csv(path) if row["prediction"]}
