"""Datasets: one adapter per dataset reading its official on-disk files into ``VideoRecord``s.

``DATASETS`` maps a name to an adapter whose ``index(root)`` returns one ``VideoRecord`` per video, every split.
Adding a dataset = one ``Dataset`` subclass here + one entry in ``DATASETS`` (+ a test writing its official files).
Training needs only the annotation files and the feature stores, never the videos.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pickle
import random
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.demo import ensure_demo_corpus
from core.io import ConfigError, write_text
from core.media import CLIP_SUFFIXES, video_id

SPLITS = ("train", "val", "test")


@dataclass
class VideoRecord:
    """One video: ``score`` is None where the dataset withholds it; ``extras`` holds alpha, captions, labels..."""

    id: str
    path: Path | None
    split: str
    score: float | None
    extras: dict = field(default_factory=dict)


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
        splits, split_source = self._splits(root, [r["video"] for r in rows])
        captions = self._captions(root)
        records = []
        for r in rows:
            extras = {
                "nb_short": int(r["nb_short-term_annotations"]),
                "long_term": float(r["long-term_memorability"]),
                "nb_long": int(r["nb_long-term_annotations"]),
                "split_source": split_source,  # which train/val split this is (train.py says it and records it)
            }
            if r["video"] in captions:
                extras["captions"] = [captions[r["video"]]]
            vid = video_id(r["video"])
            score = float(r["short-term_memorability"])
            records.append(VideoRecord(vid, self._video(root, vid), splits[r["video"]], score, extras))
        return records

    @staticmethod
    def _captions(root: Path) -> dict[str, str]:
        """``dev-set_video-captions.txt``: ``videoN.webm<TAB>hyphen-joined-title`` lines (CRLF); the title's hyphens
        become spaces (``owl-in-tree-close-up`` -> ``owl in tree close up``). Absent file: no captions."""
        candidates = (root / "dev-set_video-captions.txt", root / "dev-set" / "dev-set_video-captions.txt")
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return {}
        out = {}
        for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
            if not line.strip():
                continue
            name, sep, title = line.partition("\t")
            if not sep:
                raise ConfigError(f"{path}, line {n}: expected 'videoN.webm<TAB>title', got {line[:80]!r}")
            out[name.strip()] = " ".join(title.replace("-", " ").split())
        return out

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

    def _splits(self, root: Path, names: list[str]) -> tuple[dict[str, str], str]:
        """M3-S's pickle when present; else a seeded split written next to the data once, reused ever after (not
        written while ``reading_only``). Returns ``{name: split}`` and which split it is, in words."""
        official, ours = root / "train_test_split_videomem.pkl", root / "m3s_split_videomem.json"
        fallback = _cache_dir(root) / ours.name  # where the split goes when the dataset's folder is read-only
        ours = ours if ours.is_file() or not fallback.is_file() else fallback
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
            train, val, ours = _draw_split(names, self.split_seed, self.val_fraction, ours, fallback)
        split = {n: "train" for n in train} | {n: "val" for n in val}
        source = official if official.is_file() else ours
        described = (
            f"the official split {official}"
            if official.is_file()
            else f"the seeded split (seed {self.split_seed}) {ours if ours.is_file() else '(not saved)'}"
        )
        missing = [n for n in names if n not in split]
        if missing and split and all(video_id(n) in split for n in missing):
            print(f"note: {source} names the videos without their suffix ({next(iter(split))}; the ground truth: "
                  f"{missing[0]}); matched by name")  # fmt: skip
            split |= {n: split[video_id(n)] for n in missing}
            missing = []
        if missing:
            raise ConfigError(
                f"{len(missing)} videos of the ground truth are in no split of {source} (first: {missing[:3]}; the "
                f"split names videos like {next(iter(split), 'nothing')!r}): the two must name the same videos"
            )
        return split, described


def _draw_split(names: list[str], seed: int, val_fraction: float, ours: Path, fallback: Path):
    """A seeded train/val split of ``names``, written to ``ours`` once (``fallback`` where its folder is read-only;
    nothing while ``reading_only``); returns ``(train, val, where it was written)``."""
    shuffled = sorted(names)
    random.Random(seed).shuffle(shuffled)
    n_val = round(len(shuffled) * val_fraction)
    val, train = sorted(shuffled[:n_val]), sorted(shuffled[n_val:])
    text = json.dumps({"seed": seed, "train": train, "val": val}, indent=0)
    try:
        if _WRITE_SPLIT.get():
            write_text(ours, text)
    except OSError as err:  # read-only storage: keep the split beside the user's cache instead
        write_text(fallback, text)
        print(f"{ours.parent} is not writable ({err.strerror}); the seeded split is kept in {fallback}")
        ours = fallback
    return train, val, ours


def _refuse_shared_ids(records: list[VideoRecord], root: Path) -> None:
    """``a.mp4`` and ``a.avi`` would both be video ``a``: one's features would silently replace the other's."""
    seen: dict[str, Path] = {}
    for r in records:
        if r.id in seen:
            raise ConfigError(
                f"{seen[r.id].relative_to(root)} and {r.path.relative_to(root)} would both be video {r.id!r}; rename "
                "one of them (ids are file names without their suffix)"
            )
        seen[r.id] = r.path


def _cache_dir(root: Path) -> Path:
    """A writable per-dataset folder (``$XDG_CACHE_HOME/m3s/<hash of the dataset path>``)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "m3s" / hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]


_WRITE_SPLIT: ContextVar[bool] = ContextVar("write_split", default=True)
_MAY_GENERATE_DEMO: ContextVar[bool] = ContextVar("may_generate_demo", default=False)


@contextmanager
def reading_only() -> Iterator[None]:
    """Index datasets without writing beside them: a VideoMem seeded split is drawn but not saved (an import of
    features needs the video ids, not a split that training would then silently inherit)."""
    token = _WRITE_SPLIT.set(False)
    try:
        yield
    finally:
        _WRITE_SPLIT.reset(token)


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


@contextmanager
def generating_demo() -> Iterator[None]:
    """Let the demo dataset generate its corpus where it is missing: ``gen_features.py --dataset demo`` only. Other
    commands (train, evaluate, an import) never write 300 clips into a mistyped ``--data_dir`` before failing."""
    token = _MAY_GENERATE_DEMO.set(True)
    try:
        yield
    finally:
        _MAY_GENERATE_DEMO.reset(token)


class Demo(Memento10k):
    """The built-in synthetic corpus in the Memento10k layout, generated by ``gen_features.py --dataset demo``."""

    name = "demo"
    how_to_get = "Generate it (and its raw features) with: python gen_features.py --dataset demo --features raw"

    def index(self, root: Path) -> list[VideoRecord]:
        if _MAY_GENERATE_DEMO.get():
            if not (root / ".complete").is_file():
                print(f"generating the demo corpus (300 synthetic clips) in {root}", flush=True)
            ensure_demo_corpus(root)
        elif not (root / ".complete").is_file():
            raise FileNotFoundError(
                f"no demo corpus in {root}; generate it (and its raw features) with: python gen_features.py "
                f"--dataset demo --data_dir {root.parent} --features raw"
            )
        return super().index(root)


class Folder(Dataset):
    """Your own videos: every video file in ``--data_dir`` (recursively), unscored, split ``test``. An optional
    ``captions.csv`` there (header ``id,caption``; one row per caption, a video may have several) gives the text
    tier its captions; ``id`` is the video's path below the folder, with or without its suffix (``a/clip.mp4``)."""

    name = "folder"
    captions_file = "captions.csv"

    def _captions(self, root: Path) -> dict[str, list[str]]:
        path = root / self.captions_file
        if not path.is_file():
            return {}
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            if not {"id", "caption"} <= set(reader.fieldnames or ()):
                raise ConfigError(f"{path}: expected the columns id,caption; found {reader.fieldnames}")
            out: dict[str, list[str]] = {}
            for row in reader:
                out.setdefault(video_id(row["id"].strip()), []).append(row["caption"] or "")
        return out

    def index(self, root: Path, suffixes: tuple[str, ...] = CLIP_SUFFIXES) -> list[VideoRecord]:
        if not root.is_dir():
            raise _missing(root, "Pass --data_dir pointing at a folder of videos.")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
        # the id is the path below the folder without its suffix, so a/clip.mp4 and b/clip.mp4 stay two videos;
        # a features/ folder inside it (the default feature store location) holds no videos
        rel = [p.relative_to(root) for p in files]
        captions = self._captions(root)
        records = [
            VideoRecord(vid, p, "test", None, {"captions": captions[vid]} if vid in captions else {})
            for r, p in zip(rel, files, strict=True)
            if r.parts[0] != "features"
            for vid in (video_id(r.as_posix()),)
        ]
        _refuse_shared_ids(records, root)
        return records


class Scores(Dataset):
    """Your own human scores: ``scores.csv`` in ``--data_dir`` (header ``video_id,score`` and optionally ``split``:
    train / val / test; an empty score is an unscored test video), beside the videos (found recursively; a video's id
    is its path below the folder without suffix) or without them, for imported features (``gen_features.py --dataset
    scores --import``). Without a split column, a seeded 80/20 train/val split of the scored videos is written once
    to ``m3s_split_scores.json`` there and reused, as for VideoMem."""

    name = "scores"
    csv_name = "scores.csv"
    split_seed, val_fraction = 0, 0.2
    how_to_get = "Write scores.csv there: a header video_id,score[,split] and one row per video."

    def index(self, root: Path) -> list[VideoRecord]:
        path = root / self.csv_name
        if not path.is_file():
            raise _missing(path, self.how_to_get)
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            if not {"video_id", "score"} <= set(reader.fieldnames or ()):
                raise ConfigError(f"{path}: expected the columns video_id,score[,split]; found {reader.fieldnames}")
            rows = [
                (video_id(r["video_id"].strip()), r["score"].strip(), (r.get("split") or "").strip()) for r in reader
            ]
        splits = {vid: s for vid, _, s in rows}
        bad = [(v, s) for v, s in splits.items() if s not in SPLITS] if any(splits.values()) else []
        if bad or len(splits) != len(rows):
            raise ConfigError(f"{path}: a video listed twice, or a split not in {', '.join(SPLITS)} ({bad[:1]})")
        if not any(splits.values()):
            ours, fallback = root / "m3s_split_scores.json", _cache_dir(root) / "m3s_split_scores.json"
            ours = ours if ours.is_file() or not fallback.is_file() else fallback
            scored = [vid for vid, score, _ in rows if score]
            if ours.is_file():
                saved = json.loads(ours.read_text())
                train, val = saved["train"], saved["val"]
                if sorted(train + val) != sorted(scored):
                    raise ConfigError(f"{ours} was drawn for other scored videos than {path}'s; delete it to redraw")
            else:
                train, val, _ = _draw_split(scored, self.split_seed, self.val_fraction, ours, fallback)
            splits = {vid: "test" for vid in splits} | {v: "train" for v in train} | {v: "val" for v in val}
        files = [p for p in root.rglob("*") if p.suffix.lower() in CLIP_SUFFIXES and p.is_file()]
        videos = {
            video_id(p.relative_to(root).as_posix()): p for p in files if p.relative_to(root).parts[0] != "features"
        }
        return [
            VideoRecord(vid, videos.get(vid), splits[vid], float(score) if score else None) for vid, score, _ in rows
        ]


DATASETS: dict[str, Dataset] = {d.name: d for d in (Memento10k(), VideoMem(), LaMem(), Demo(), Folder(), Scores())}


def dataset_root(name: str, paths: Any) -> Path:
    """``<data_dir>/<name>`` (the folder and scores datasets are ``<data_dir>`` itself)."""
    data_dir = paths.resolved_data_dir()
    return data_dir if name in ("folder", "scores") else data_dir / name


def load_records(name: str, paths: Any) -> list[VideoRecord]:
    """Every record of dataset ``name``; ``paths`` is any config with ``resolved_data_dir()`` (``config.Paths``)."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name].index(dataset_root(name, paths))
