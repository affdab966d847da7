"""Datasets (official on-disk formats) and the in-memory feature table that training runs on.

``DATASETS`` maps a name to an adapter whose ``index(root)`` returns one ``VideoRecord`` per video, every split.
``FeatureTable.build`` joins those records with the feature stores and holds each split as one float32 matrix on
the training device. Training needs only annotation files and feature stores, never the videos.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from config import ConfigError, GenConfig, ModuleConfig, Paths
from features.store import FeatureStore, StoredFeatures, atomic_write

SPLITS = ("train", "val", "test")
VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".npy")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class VideoRecord:
    """One video: ``score`` is None where the dataset withholds it; ``extras`` holds alpha, captions, labels..."""

    id: str
    path: Path | None
    split: str
    score: float | None
    extras: dict = field(default_factory=dict)


def video_id(name: str) -> str:
    """The id of a video or image file name: its name without a media suffix (``video10.webm`` -> ``video10``)."""
    stem, suffix = os.path.splitext(name)
    return stem if suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES else name


def _missing(path: Path, how: str) -> FileNotFoundError:
    return FileNotFoundError(f"{path} does not exist. {how}")


class Dataset(ABC):
    """An adapter: where a dataset lives and how its official files are read."""

    name: str = ""
    crop: str = "squash"  # how videos are fitted to 256x256 for the deep tiers ("center" for VideoMem's resized_mp4)
    how_to_get: str = ""

    @abstractmethod
    def index(self, root: Path) -> list[VideoRecord]:
        """Every video of every split present under ``root``."""


class Memento10k(Dataset):
    """``memento_{train,val,test}_data.json`` + ``videos/<filename>`` (or M3-S's ``videos_npy/<stem>.npy``)."""

    name = "Memento10k"
    how_to_get = (
        "Request Memento10k from http://memento.csail.mit.edu/ and unpack it there "
        "(memento_{train,val,test}_data.json and videos/), or point --data_dir / $M3S_DATA_DIR at its parent."
    )

    def index(self, root: Path) -> list[VideoRecord]:
        records = []
        for split in SPLITS:
            path = root / f"memento_{split}_data.json"
            if not path.is_file():
                if split == "test":  # the unlabelled test split is optional
                    continue
                raise _missing(path, self.how_to_get)
            for item in json.loads(path.read_text(encoding="utf-8")):
                vid = video_id(item["filename"])
                score = item.get("mem_score") if split != "test" else None
                extras = {
                    k: item[k] for k in ("url", "alpha", "captions", "action_labels", "audio_description") if k in item
                }
                records.append(VideoRecord(vid, self._video(root, item["filename"]), split, score, extras))
        return records

    @staticmethod
    def _video(root: Path, filename: str) -> Path:
        original, npy = root / "videos" / filename, root / "videos_npy" / f"{video_id(filename)}.npy"
        return npy if npy.exists() and not original.exists() else original


class _RestrictedUnpickler(pickle.Unpickler):
    """The official split pickle holds two sequences of video names: Python lists/tuples of str, or numpy arrays /
    numpy strings (its format is unconfirmed). Only the numpy classes needed to rebuild those are allowed: a pickle
    can run code, a split file must not."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a split file")


class VideoMem(Dataset):
    """``ground-truth_dev-set.csv`` (BOM, CRLF) + M3-S's ``train_test_split_videomem.pkl`` (train, val names)."""

    name = "VideoMem"
    crop = "center"
    split_seed = 0
    val_fraction = 0.2
    how_to_get = (
        "Get the VideoMem dev-set (MediaEval 2018/2019 Predicting Media Memorability) and put "
        "ground-truth_dev-set.csv and resized_mp4/ (or sources/*.webm) there."
    )

    def index(self, root: Path) -> list[VideoRecord]:
        candidates = (root / "ground-truth_dev-set.csv", root / "dev-set/ground-truth/ground-truth_dev-set.csv")
        gt = next((p for p in candidates if p.is_file()), None)
        if gt is None:
            raise _missing(root / "ground-truth_dev-set.csv", self.how_to_get)
        with gt.open(encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f))
        splits = self._splits(root, [r["video"] for r in rows])
        records = []
        for r in rows:
            extras = {
                "nb_short": int(r["nb_short-term_annotations"]),
                "long_term": float(r["long-term_memorability"]),
                "nb_long": int(r["nb_long-term_annotations"]),
            }
            vid = video_id(r["video"])
            score = float(r["short-term_memorability"])
            records.append(VideoRecord(vid, self._video(root, vid), splits[r["video"]], score, extras))
        return records

    @staticmethod
    def _video(root: Path, vid: str) -> Path:
        for p in (
            root / "resized_mp4" / f"{vid}.mp4",
            root / "sources" / f"{vid}.webm",
            root / "dev-set/sources" / f"{vid}.webm",
        ):
            if p.exists():
                return p
        return root / "resized_mp4" / f"{vid}.mp4"

    def _splits(self, root: Path, names: list[str]) -> dict[str, str]:
        """M3-S's pickle when present; else a seeded split written next to the data once, reused ever after."""
        official, ours = root / "train_test_split_videomem.pkl", root / "m3s_split_videomem.json"
        if official.is_file():
            try:
                with official.open("rb") as f:
                    loaded = _RestrictedUnpickler(f).load()
                if isinstance(loaded, str | bytes) or len(loaded) < 2 or isinstance(loaded[0], str | bytes):
                    raise ValueError(f"found a {type(loaded).__name__}")
                train, val = ([str(n) for n in names] for names in loaded[:2])
            except (pickle.UnpicklingError, TypeError, ValueError, EOFError) as err:
                raise ConfigError(f"{official} is not a (train names, val names) pair: {err}") from err
        elif ours.is_file():
            saved = json.loads(ours.read_text())
            train, val = saved["train"], saved["val"]
        else:
            shuffled = sorted(names)
            random.Random(self.split_seed).shuffle(shuffled)
            n_val = round(len(shuffled) * self.val_fraction)
            val, train = sorted(shuffled[:n_val]), sorted(shuffled[n_val:])
            with atomic_write(ours) as tmp:
                tmp.write_text(json.dumps({"seed": self.split_seed, "train": train, "val": val}, indent=0))
        split = {n: "train" for n in train} | {n: "val" for n in val}
        missing = [n for n in names if n not in split]
        if missing:
            raise ConfigError(f"{len(missing)} videos of the ground truth are in no split (first: {missing[:3]})")
        return split


class LaMem(Dataset):
    """Images: ``splits/{train,val,test}_{fold}.txt`` lines ``<image> <score>``, images in ``images/``."""

    name = "LaMem"
    fold = 1
    how_to_get = "Download lamem.tar.gz from http://memorability.csail.mit.edu/ and unpack it there."

    def index(self, root: Path) -> list[VideoRecord]:
        records = []
        for split in SPLITS:
            path = root / "splits" / f"{split}_{self.fold}.txt"
            if not path.is_file():
                raise _missing(path, self.how_to_get)
            for line in path.read_text().splitlines():
                if line.strip():
                    name, score = line.split()[:2]
                    records.append(VideoRecord(video_id(name), root / "images" / name, split, float(score)))
        return records


class Demo(Memento10k):
    """The built-in synthetic corpus, generated on first use in the Memento10k layout."""

    name = "demo"
    how_to_get = "It is generated automatically."

    def index(self, root: Path) -> list[VideoRecord]:
        from features.demo import ensure_demo_corpus

        ensure_demo_corpus(root)
        return super().index(root)


class Folder(Dataset):
    """Your own videos: every video file in ``--data_dir`` (recursively), unscored, split ``test``."""

    name = "folder"

    def index(self, root: Path) -> list[VideoRecord]:
        if not root.is_dir():
            raise _missing(root, "Pass --data_dir pointing at a folder of videos.")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
        # the id is the path below the folder without its suffix, so a/clip.mp4 and b/clip.mp4 stay two videos;
        # a features/ folder inside it (the default feature store location) holds no videos
        rel = [p.relative_to(root) for p in files]
        return [
            VideoRecord(video_id(r.as_posix()), p, "test", None)
            for r, p in zip(rel, files, strict=True)
            if r.parts[0] != "features"
        ]


DATASETS: dict[str, Dataset] = {d.name: d for d in (Memento10k(), VideoMem(), LaMem(), Demo(), Folder())}


def dataset_root(name: str, paths: Paths) -> Path:
    """``<data_dir>/<name>`` (the folder dataset is ``<data_dir>`` itself)."""
    data_dir = paths.resolved_data_dir()
    return data_dir if name == "folder" else data_dir / name


def load_records(name: str, paths: Paths) -> list[VideoRecord]:
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name].index(dataset_root(name, paths))


# --------------------------------------------------------------------------- feature table


Source = tuple[str, str]  # (store name, feature name)


def module_sources(cfg: ModuleConfig, stores: dict[str, StoredFeatures] | None = None) -> dict[str, list[Source]]:
    """``{module: [(store name, feature name), ...]}`` in the model's input order.

    Raw features come in ``--raw_features`` order, each followed by its temporal std with ``--use_temporal_std``
    (per-frame features only; per-video ones such as ``meanOF`` have none). Similarity comes per method, the spaces of
    ``--similarity_features`` concatenated within each. An imported module uses every feature of its store. Without
    ``stores`` (before they are read), the raw stds and imported features are not resolved yet.
    """
    from features.similarity import similarity_store_name

    sources: dict[str, list[Source]] = {}
    for module in cfg.modules():
        if module == "raw":
            sources["raw"] = []
            for f in cfg.raw_features:
                sources["raw"].append(("raw", f))
                if cfg.use_temporal_std and (stores is None or f"{f}_std" in stores["raw"].features):
                    sources["raw"].append(("raw", f"{f}_std"))
        elif module == "hrnet":
            sources["hrnet"] = [(f"hrnet_f{cfg.hrnet_frames}", "hrnet")]
        elif module == "csn":
            sources["csn"] = [(cfg.csn_arch, "csn")]
        elif module == "similarity":
            spaces = [similarity_store_name(space, cfg.hrnet_frames) for space in cfg.similarity_features]
            sources["similarity"] = [(store, method) for method in cfg.similarity_methods for store in spaces]
        else:
            sources[module] = [(module, f) for f in (sorted(stores[module].features) if stores else [""])]
    return sources


def gen_command(store_name: str, cfg: ModuleConfig | GenConfig) -> str:
    """The gen_features.py command that creates a store."""
    base = f"python gen_features.py --dataset {cfg.dataset}"
    if store_name == "raw":
        return f"{base} --features raw"
    if store_name.startswith("hrnet_f"):
        return f"{base} --features hrnet --hrnet_frames {store_name[7:]}"
    if store_name.endswith("csn_152"):
        return f"{base} --features csn --csn_arch {store_name}"
    if store_name.startswith("similarity_"):
        spaces, methods = " ".join(cfg.similarity_features), " ".join(cfg.similarity_methods)
        return f"{base} --features similarity --similarity_features {spaces} --similarity_methods {methods}"
    return f"{base} --import FILE --name {store_name}"


NORMALIZED = {"raw": "normalize_raw", "similarity": "normalize_similarity"}


@dataclass
class SplitData:
    ids: list[str]
    x: torch.Tensor  # (N, in_dim) float32, modules concatenated in input order
    y: torch.Tensor  # (N,) float32 memorability


@dataclass
class FeatureTable:
    """The chosen modules' features for each split, in memory on one device, normalised with train statistics."""

    modules: list[str]
    dims: dict[str, int]
    splits: dict[str, SplitData]
    stats: dict[str, dict[str, torch.Tensor]]
    sources: dict[str, dict]  # store name -> {"features", "settings", "smoke", "dims"}: what the features were

    @property
    def in_dim(self) -> int:
        return sum(self.dims.values())

    @classmethod
    def build(
        cls,
        cfg: ModuleConfig,
        records: list[VideoRecord],
        device: torch.device | str = "cpu",
        stats: dict[str, dict[str, torch.Tensor]] | None = None,
        splits: tuple[str, ...] = SPLITS,
        scored_only: bool = True,
    ) -> FeatureTable:
        """Join ``records`` in ``splits`` (only scored ones unless ``scored_only`` is False; y is NaN where unknown)
        with the stores. ``stats`` from a checkpoint are reused; otherwise they are fitted on the train split."""
        features_dir = cfg.resolved_features_dir()
        stores: dict[str, StoredFeatures] = {}
        for module, pairs in module_sources(cfg).items():
            for store_name in dict.fromkeys(name for name, _ in pairs):
                store = FeatureStore.at(features_dir, cfg.dataset, store_name)
                if not store.exists():
                    raise FileNotFoundError(
                        f"no {module} features for {cfg.dataset}: {store.path} does not exist. "
                        f"Compute them with: {gen_command(store_name, cfg)}"
                    )
                stores[store_name] = store.read()
        sources = module_sources(cfg, stores)
        scored = [r for r in records if r.split in splits and (r.score is not None or not scored_only)]
        failed = {i: s.failures[i] for s in stores.values() for i in s.failures}
        skipped = [r for r in scored if r.id in failed]
        if skipped:
            print(
                f"warning: {len(skipped)} videos failed extraction and are left out, e.g. "
                f"{skipped[0].id}: {failed[skipped[0].id]}"
            )
            scored = [r for r in scored if r.id not in failed]

        rows: dict[str, np.ndarray] = {}  # store -> the row of each scored video, looked up once per store
        for module, pairs in sources.items():
            for store_name in dict.fromkeys(name for name, _ in pairs):
                if store_name in rows:
                    continue
                row = {vid: i for i, vid in enumerate(stores[store_name].ids)}
                missing = [r.id for r in scored if r.id not in row]
                if missing:
                    raise ConfigError(
                        f"{len(missing)} of {len(scored)} videos have no {module} features in "
                        f"{FeatureStore.at(features_dir, cfg.dataset, store_name).path} "
                        f"(first: {', '.join(missing[:5])}). Compute them with: {gen_command(store_name, cfg)}"
                    )
                rows[store_name] = np.array([row[r.id] for r in scored], dtype=np.int64)
        columns: dict[Source, np.ndarray] = {}  # (store, feature) -> (N, D) over `scored`
        for module, pairs in sources.items():
            for store_name, name in pairs:
                data = stores[store_name]
                if name not in data.features:
                    have = sorted(data.features)
                    raise ConfigError(
                        f"{module}: store {store_name} has no feature {name!r}; it has {have}. "
                        f"Compute it with: {gen_command(store_name, cfg)}"
                    )
                columns[store_name, name] = data.features[name][rows[store_name]].reshape(len(scored), -1)
        blocks: dict[str, np.ndarray] = {}  # module -> (N, D_module)
        for module, pairs in sources.items():
            block = np.concatenate([columns[pair] for pair in pairs], axis=1).astype(np.float32)
            bad = ~np.isfinite(block).all(axis=1)
            if bad.any():
                ids = [scored[i].id for i in np.flatnonzero(bad)[:5]]
                raise ConfigError(f"{int(bad.sum())} videos have NaN or inf {module} features (first: {ids})")
            blocks[module] = block

        is_train = np.array([r.split == "train" for r in scored], dtype=bool)
        scored_mask = np.array([r.score is not None for r in scored], dtype=bool)
        if stats is None:
            stats = {}
            for module in blocks:
                flag = NORMALIZED.get(module, "normalize_extra" if module in cfg.extra_features else None)
                if flag and getattr(cfg, flag):
                    if not (is_train & scored_mask).any():
                        raise ConfigError(f"cannot fit {module} normalisation: no scored train videos")
                    train = blocks[module][is_train & scored_mask].astype(np.float64)
                    std = train.std(axis=0)
                    std[std < 1e-12] = 1.0  # a constant dimension stays constant instead of dividing by zero
                    stats[module] = {
                        "mean": torch.tensor(train.mean(axis=0), dtype=torch.float32),
                        "std": torch.tensor(std, dtype=torch.float32),
                    }
        for module, s in stats.items():
            blocks[module] = (blocks[module] - s["mean"].numpy()) / s["std"].numpy()

        x_all = torch.from_numpy(np.concatenate([blocks[m] for m in sources], axis=1))  # (N, in_dim)
        y_all = torch.tensor([math.nan if r.score is None else r.score for r in scored], dtype=torch.float32)
        split_data = {}
        for split in splits:
            sel = np.flatnonzero([r.split == split for r in scored])
            if len(sel):
                split_data[split] = SplitData([scored[i].id for i in sel], x_all[sel].to(device), y_all[sel].to(device))
        dims = {m: blocks[m].shape[1] for m in sources}
        provenance: dict[str, dict] = {}  # what the features were, per store
        for pairs in sources.values():
            for store_name, name in pairs:
                meta = stores[store_name].meta
                entry = provenance.setdefault(
                    store_name,
                    {
                        "features": [],
                        "settings": meta.get("settings", {}),
                        "smoke": bool(meta.get("smoke")),
                        "dims": {},
                        # fitted transforms (HOG PCA, similarity state): features from another fit are another basis
                        "transforms": {t: tr.digest() for t, tr in sorted(stores[store_name].transforms.items())},
                    },
                )
                entry["features"].append(name)
                entry["dims"][name] = stores[store_name].dims[name]
        return cls(list(sources), dims, split_data, stats, provenance)
