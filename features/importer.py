"""Bring your own features: import a table (CLIP, captions, audio...) into the store as a new module.

``python gen_features.py --dataset Memento10k --import clip.npz --name clip`` then
``python train.py --dataset Memento10k --extra_features clip [--use_raw ...]``.

Accepted files: ``.npy`` (N, D) with ``--ids ids.txt`` (one id per line, row order); ``.npz`` with an id array
(``ids`` or ``id``, or ``--id_column``) and one or more (N, D) arrays; ``.h5`` likewise with datasets; ``.csv`` with
an id column (``id``, ``video``, ``filename`` or ``--id_column``) and numeric columns. Ids may carry a media suffix
(``video10.webm``): it is dropped, as the dataset adapters do.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from core.io import ConfigError, code_version
from core.media import video_id
from features.store import FeatureStore, StoredFeatures

ID_KEYS = ("ids", "id", "video", "video_id", "filename")


def _ids_of(values: object) -> list[str]:
    out = []
    for v in np.asarray(values).reshape(-1):
        out.append(video_id(v.decode() if isinstance(v, bytes) else str(v)))
    return out


def _pick_id_key(keys: list[str], wanted: str, path: Path) -> str:
    if wanted:
        if wanted not in keys:
            raise ConfigError(f"{path}: no id column {wanted!r}; it has {keys}")
        return wanted
    for k in ID_KEYS:
        if k in keys:
            return k
    raise ConfigError(f"{path}: no id column found (looked for {', '.join(ID_KEYS)}); name it with --id_column")


def _read_npy(path: Path, ids_file: str, id_column: str) -> tuple[list[str], dict[str, np.ndarray]]:
    if not ids_file:
        raise ConfigError(f"{path}: a .npy holds no ids; pass --ids FILE (one video id per line, in row order)")
    lines = Path(ids_file).read_text(encoding="utf-8-sig").splitlines()
    return _ids_of([line.strip() for line in lines if line.strip()]), {"": np.load(path, allow_pickle=False)}


def _read_npz(path: Path, ids_file: str, id_column: str) -> tuple[list[str], dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as z:
        return _split_ids({k: z[k] for k in z.files}, id_column, path)


def _read_hdf5(path: Path, ids_file: str, id_column: str) -> tuple[list[str], dict[str, np.ndarray]]:
    with h5py.File(path, "r") as f:
        datasets = {k: f[k] for k in f if isinstance(f[k], h5py.Dataset)}
        for k, ds in datasets.items():
            # external or virtual storage reads other files of this machine (any path: /etc/passwd was imported)
            if ds.external or ds.is_virtual:
                raise ConfigError(f"{path}: dataset {k!r} keeps its data in other files (external/virtual storage)")
        return _split_ids({k: ds[()] for k, ds in datasets.items()}, id_column, path)


def _split_ids(arrays: dict[str, np.ndarray], id_column: str, path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    key = _pick_id_key(list(arrays), id_column, path)
    ids = _ids_of(arrays.pop(key))
    feats = {k: v for k, v in arrays.items() if np.issubdtype(np.asarray(v).dtype, np.number)}
    if not feats:
        raise ConfigError(f"{path}: no numeric array besides the ids {key!r}")
    return ids, feats


def _read_csv(path: Path, ids_file: str, id_column: str) -> tuple[list[str], dict[str, np.ndarray]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = list(reader.fieldnames or [])
    if not rows:
        raise ConfigError(f"{path}: no rows")
    for line, r in enumerate(rows, start=2):  # a short row fills with None, a long one keeps the rest under None
        if None in r or None in r.values():
            n = len(header) - sum(v is None for v in r.values()) + len(r.get(None) or [])
            raise ConfigError(f"{path}: line {line} has {n} fields; the header has {len(header)}")
    key = _pick_id_key(header, id_column, path)
    cols = [c for c in header if c != key]
    try:
        matrix = np.array([[float(r[c]) for c in cols] for r in rows], dtype=np.float64)
    except ValueError as err:
        raise ConfigError(f"{path}: every column but the id {key!r} must be numeric ({err})") from err
    return _ids_of([r[key] for r in rows]), {"": matrix.reshape(len(rows), len(cols))}


READERS = {".npy": _read_npy, ".npz": _read_npz, ".h5": _read_hdf5, ".hdf5": _read_hdf5, ".csv": _read_csv}


def read_table(
    path: Path, name: str, ids_file: str = "", id_column: str = ""
) -> tuple[list[str], dict[str, np.ndarray]]:
    """``(ids, {feature name: (N, D) array})`` from a user's file: one array is named ``name``; several (an .npz /
    .h5 with more than one) keep their own names."""
    if not path.is_file():
        raise FileNotFoundError(f"feature file {path} does not exist")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise ConfigError(f"{path}: unsupported format {path.suffix!r}; use .npy (+ --ids), .npz, .h5 or .csv")
    try:
        ids, feats = reader(path, ids_file, id_column)
    except ConfigError:  # the reader's own message (a ValueError too): as it is
        raise
    except (OSError, ValueError) as err:  # truncated/empty npy, npz or h5 files
        raise ConfigError(f"{path}: not a readable {path.suffix} file ({err})") from None
    if not ids:
        raise ConfigError(f"{path}: no rows")
    return ids, ({name: next(iter(feats.values()))} if len(feats) == 1 else feats)


def _checked(path: Path, fname: str, values: np.ndarray, ids: list[str]) -> np.ndarray:
    """(N, D) float32 with D >= 1, real and finite, one row per id."""
    m = np.asarray(values)
    if not (np.issubdtype(m.dtype, np.integer) or np.issubdtype(m.dtype, np.floating)):
        raise ConfigError(f"{path}: {fname} holds {m.dtype} values; expected real numbers")
    m = m.astype(np.float32)
    if m.ndim == 1:
        m = m[:, None]
    if m.ndim != 2 or len(m) != len(ids) or m.shape[1] < 1:
        raise ConfigError(f"{path}: {fname} has shape {m.shape}; expected ({len(ids)}, D >= 1), one row per id")
    bad = ~np.isfinite(m).all(axis=1)
    if bad.any():
        raise ConfigError(
            f"{path}: {int(bad.sum())} rows of {fname} hold NaN or inf (first id {ids[int(np.argmax(bad))]})"
        )
    return m


def import_features(cfg: Any, records: list) -> StoredFeatures:
    """Validate a user's table against the dataset's ``records`` and write it as the store
    ``<features_dir>/<dataset>/<name>.h5``. ``cfg`` is the ``gen_features.py`` config (``config.GenConfig``); the
    name was checked by the caller (``pipeline.generate.run_import``: no tier owns it)."""
    path = Path(cfg.import_path)
    ids, feats = read_table(path, cfg.name, cfg.ids, cfg.id_column)
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ConfigError(f"{path}: repeated ids (first: {dup})")
    feats = {fname: _checked(path, fname, m, ids) for fname, m in feats.items()}
    known = {r.id for r in records}
    unknown = [i for i in ids if i not in known]
    if len(unknown) == len(ids):
        raise ConfigError(f"none of the {len(ids)} ids of {path} is a {cfg.dataset} video (first: {ids[:3]})")
    if unknown:
        print(
            f"warning: {len(unknown)} ids are not {cfg.dataset} videos and are kept but unused (first: {unknown[:3]})"
        )
    meta = {
        "family": "import",
        "dataset": cfg.dataset,
        # No settings: the features of new videos, imported from another file, must match a model trained on these.
        "settings": {},
        "provenance": {"source": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()},
        "smoke": False,
        "code_version": code_version(),
    }
    store = FeatureStore.at(cfg.resolved_features_dir(), cfg.dataset, cfg.name)
    data = StoredFeatures(ids, feats, meta)
    store.write(data)
    covered = len(known & set(ids))
    dims = {k: v.shape[1] for k, v in feats.items()}
    print(f"imported {len(ids)} rows {dims} into {store.path}; {covered}/{len(known)} {cfg.dataset} videos covered")
    return data
