"""What ``gen_features.py`` runs: the chosen tiers' stores for a dataset, or an import of your own features.

Video tiers come first (each tier's extractor into the store the tier names, ``features/extract.py``), derived tiers
(similarity) after them, since they read the video tiers' stores.
"""

from __future__ import annotations

import re

from config import GenConfig
from core.io import ConfigError, ensure_writable
from dataset import DATASETS, generating_demo, load_records, reading_only
from features.extract import Dist, Summary, device_for, extract_family, with_crop
from features.importer import import_features
from features.store import FeatureStore, StoredFeatures
from tiers import TIERS, owner


def run(cfg: GenConfig) -> list[Summary]:
    """Compute every tier of ``cfg.features`` for ``cfg.dataset``, in the registry's order (similarity after the tiers
    whose stores it reads, whatever order the flags gave); returns one summary per video tier."""
    chosen = [t for t in TIERS.values() if t.name in cfg.features]
    ensure_writable(cfg.resolved_features_dir() / cfg.dataset)  # before any pre-pass or decoding
    dist = Dist.from_env()
    dist.init()
    try:
        with generating_demo():  # gen_features.py --dataset demo is the one command that writes the demo corpus
            records = load_records(cfg.dataset, cfg)
        device = device_for(cfg.device, dist)
        # new videos are framed like the training dataset's (VideoMem: centre crop)
        crop = DATASETS[cfg.fit_on or cfg.dataset].crop
        if dist.rank == 0 and not cfg.fit_on and not any(r.split == "train" for r in records):
            print(
                f"{cfg.dataset} has no train split: its fitted transforms (raw's HOG PCA, similarity) are fitted on "
                f"its own {len(records)} videos, a basis no checkpoint was trained in; to score these videos with a "
                "model, extract them with what its training dataset fitted (--fit_on DATASET, or evaluate.py --videos "
                "DIR --checkpoint CKPT)",
                flush=True,
            )
        summaries = []
        for tier in (t for t in chosen if t.extractor is not None):
            ext = with_crop(tier.extractor(cfg, device), crop)
            summary = extract_family(ext, tier.store(cfg), records, cfg, dist)
            if dist.rank == 0:
                print(summary.text(), flush=True)
            summaries.append(summary)
        if dist.rank == 0:
            for tier in (t for t in chosen if t.derived):
                tier.compute(cfg, records)
        return summaries
    finally:
        dist.close()


def run_import(cfg: GenConfig) -> StoredFeatures:
    """``--import FILE --name NAME``: the name must be free (no tier owns it) and usable as a file name."""
    taken = owner(cfg.name)
    if taken is not None or cfg.name in TIERS:
        raise ConfigError(
            f"--name {cfg.name!r} is a store of the built-in {(taken or TIERS[cfg.name]).name} tier; "
            "choose another name for imported features"
        )
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", cfg.name):
        raise ConfigError(f"--name {cfg.name!r}: use letters, digits, '_', '.' and '-' (it names a file)")
    existing = FeatureStore.at(cfg.resolved_features_dir(), cfg.dataset, cfg.name)
    if existing.exists() and not cfg.overwrite:
        source = existing.meta().get("provenance", {}).get("source", "another file")
        raise ConfigError(
            f"{existing.path} already holds features named {cfg.name!r} (imported from {source}); pass --overwrite to "
            "replace them (a model trained on them will no longer match), or choose another --name"
        )
    with reading_only():  # an import needs the ids; it must not save a split that training then inherits
        records = load_records(cfg.dataset, cfg)
    return import_features(cfg, records)
