"""The feature store: one HDF5 file per (dataset, feature family).

Layout of ``<features_dir>/<dataset>/<family>.h5``::

    /ids                     (N,) utf-8 strings, sorted; a file name that is not valid UTF-8 keeps its own bytes
    /features/<name>         (N, D) float32, one matrix per feature
    /failures/ids, reasons   videos that could not be processed, and why
    /transforms/<name>/<arr> fitted transforms (HOG PCA, ...) as plain arrays; attrs["info"] = JSON
    attrs["meta"]            JSON: family, dataset, settings, dims, code version, smoke flag

Writes never touch a file a reader may hold: an extraction appends *part* files next to the store
(``<family>.parts/<shard>-<seq>.h5``), each written to a temporary name and renamed, and ``compact`` folds the
parts into a new main file, again written aside and renamed. A reader sees the main file plus every finished part,
so it can read while another process appends, and a killed run leaves at most a temporary file behind, which is
ignored, and removed by the next compaction once its writer process is gone (another live writer's are kept). Rows
are sorted by id on compaction, so the file does not depend on the order videos were processed in, nor on how many
processes shared the work.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from core.io import StoreError, atomic_write, out_of_space, remove_stale_temps

__all__ = ["FeatureStore", "StoreError", "StoredFeatures", "Transform", "check_compatible"]

STORE_FORMAT = 1
_STR = h5py.string_dtype("utf-8")


@dataclass
class Transform:
    """A fitted transform: named float arrays plus JSON-able info (what it was fitted on, its settings)."""

    arrays: dict[str, np.ndarray]
    info: dict = field(default_factory=dict)

    def digest(self) -> str:
        """Identity of the fitted state (its arrays): equal digests, same transform, wherever it was copied."""
        h = hashlib.sha1()
        for name in sorted(self.arrays):
            arr = np.ascontiguousarray(self.arrays[name])
            h.update(f"{name}{arr.dtype.str}{arr.shape}".encode())
            h.update(arr.tobytes())
        return h.hexdigest()


@dataclass
class StoredFeatures:
    """Everything in a store, in memory. ``features[name]`` rows follow ``ids``."""

    ids: list[str]
    features: dict[str, np.ndarray]
    meta: dict
    failures: dict[str, str] = field(default_factory=dict)
    transforms: dict[str, Transform] = field(default_factory=dict)

    @property
    def dims(self) -> dict[str, int]:
        return {name: int(m.shape[1]) for name, m in self.features.items()}


def _write_h5(path: Path, data: StoredFeatures) -> None:
    """Write ``data`` to ``path`` atomically and deterministically (no timestamps: same data, same bytes). A full disk
    is a clear error; what was written before stays (the half-written file is a temp file, removed)."""
    try:
        _write_h5_unchecked(path, data)
    except OSError as err:
        if out_of_space(err, path.parent):
            raise StoreError(
                f"no space left on {path.parent}: free some space and run the same command again"
            ) from None
        raise


def _write_h5_unchecked(path: Path, data: StoredFeatures) -> None:
    with atomic_write(path) as tmp, h5py.File(tmp, "w", track_order=False) as f:
        f.attrs["meta"] = json.dumps(data.meta, sort_keys=True)
        _dataset(f, "ids", _encoded(data.ids), _STR)
        for name, matrix in sorted(data.features.items()):
            _dataset(f, f"features/{name}", np.ascontiguousarray(matrix, dtype=np.float32))
        failed = sorted(data.failures)
        _dataset(f, "failures/ids", _encoded(failed), _STR)
        _dataset(f, "failures/reasons", _encoded([data.failures[i] for i in failed]), _STR)
        for tname, transform in sorted(data.transforms.items()):
            group = f.require_group(f"transforms/{tname}")
            group.attrs["info"] = json.dumps(transform.info, sort_keys=True)
            for aname, arr in sorted(transform.arrays.items()):
                _dataset(f, f"transforms/{tname}/{aname}", np.asarray(arr))


def _as_rows(values: np.ndarray, n: int) -> np.ndarray:
    """(n, D) float32; a vector per row becomes a column, an empty batch keeps its width."""
    arr = np.asarray(values, dtype=np.float32)
    return arr.reshape(n, -1) if n else arr.reshape(0, arr.shape[-1] if arr.ndim > 1 else 1)


def _dataset(f: h5py.File, name: str, arr: np.ndarray, dtype=None) -> None:
    f.create_dataset(name, data=arr, dtype=dtype, track_times=False)


def _encoded(strings: list[str]) -> np.ndarray:
    """UTF-8 bytes, with the surrogate escapes of a file name that is not valid UTF-8 (``caf\\xe9.mp4`` from a
    Latin-1 file system, decoded by ``os.fsdecode``) turned back into that name's own bytes: the id round-trips.
    Valid names give the bytes h5py would write for them, so existing stores are unchanged."""
    return np.array([s.encode("utf-8", "surrogateescape") for s in strings], dtype=object)


def _strings(dataset: h5py.Dataset) -> list[str]:
    return [s.decode("utf-8", "surrogateescape") if isinstance(s, bytes) else s for s in dataset[()]]


def _refuse_linked_storage(f: h5py.File, path: Path) -> None:
    """A store's data lives in the store: external or virtual datasets could read any file of this machine."""
    linked: list[str] = []
    f.visititems(
        lambda name, obj: (
            linked.append(name) if isinstance(obj, h5py.Dataset) and (obj.external or obj.is_virtual) else None
        )
    )
    if linked:
        raise StoreError(f"{path}: datasets {linked[:3]} keep their data in other files; m3s stores never do")


def _transforms(f: h5py.File) -> dict[str, Transform]:
    return {
        tname: Transform({a: g[a][()] for a in g}, json.loads(g.attrs["info"]))
        for tname, g in f.get("transforms", {}).items()
    }


def _read_h5(path: Path) -> StoredFeatures:
    try:
        with h5py.File(path, "r") as f:
            _refuse_linked_storage(f, path)
            meta = json.loads(f.attrs["meta"])
            ids = _strings(f["ids"])
            features = {name: f["features"][name][()] for name in f.get("features", {})}
            fids, reasons = _strings(f["failures/ids"]), _strings(f["failures/reasons"])
            transforms = _transforms(f)
    except (OSError, KeyError, ValueError) as err:
        raise StoreError(f"{path} is not a readable m3s feature store ({err}); delete it and extract again") from err
    return StoredFeatures(ids, features, meta, dict(zip(fids, reasons, strict=True)), transforms)


class FeatureStore:
    """One family's features for one dataset. See the module docstring for the file layout."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.parts_dir = self.path.with_suffix(".parts")

    @classmethod
    def at(cls, features_dir: Path | str, dataset: str, family: str) -> FeatureStore:
        return cls(Path(features_dir) / dataset / f"{family}.h5")

    def exists(self) -> bool:
        return self.path.exists() or bool(self._parts())

    def _parts(self) -> list[Path]:
        if not self.parts_dir.is_dir():
            return []
        return sorted(p for p in self.parts_dir.glob("*.h5") if not p.name.startswith("."))

    def read(self) -> StoredFeatures:
        """The main file plus every finished part. Retries if a concurrent ``compact`` removes a part under us."""
        if not self.exists():
            raise StoreError(f"no feature store at {self.path}")
        return self._retrying(lambda: self._merge([_read_h5(p) for p in self._files()]))

    def _files(self) -> list[Path]:
        return ([self.path] if self.path.exists() else []) + self._parts()

    @staticmethod
    def _retrying(read):
        for attempt in range(5):
            try:
                return read()
            except (FileNotFoundError, StoreError):
                if attempt == 4:
                    raise
                time.sleep(0.2)
        raise AssertionError("unreachable")

    def read_transforms(self) -> dict[str, Transform]:
        """The fitted transforms only (no matrix is read): every file's, a later part's winning, as ``read``."""
        if not self.exists():
            raise StoreError(f"no feature store at {self.path}")

        def read() -> dict[str, Transform]:
            out: dict[str, Transform] = {}
            for p in self._files():
                with h5py.File(p, "r") as f:
                    out |= _transforms(f)
            return out

        return self._retrying(read)

    def meta(self) -> dict:
        """Metadata only (cheap: no matrices are read)."""
        for p in self._files():
            with h5py.File(p, "r") as f:
                return json.loads(f.attrs["meta"])
        raise StoreError(f"no feature store at {self.path}")

    def done_ids(self, include_failed: bool = True) -> set[str]:
        """Ids already stored (and already failed, unless ``include_failed`` is False, as for ``--retry_failed``):
        an extraction skips them, which is how a killed run resumes. Reads the id lists only, never a matrix."""

        def read() -> set[str]:
            done: set[str] = set()
            for p in self._files():
                try:
                    with h5py.File(p, "r") as f:
                        done.update(_strings(f["ids"]))
                        if include_failed:
                            done.update(_strings(f["failures/ids"]))
                except (OSError, KeyError) as err:
                    if not p.exists():
                        raise FileNotFoundError(p) from err  # compacted away meanwhile: read again
                    raise StoreError(
                        f"{p} is not a readable m3s feature store ({err}); delete it and extract again"
                    ) from err
            return done

        return self._retrying(read)

    def append(
        self,
        ids: list[str],
        features: dict[str, np.ndarray],
        meta: dict,
        failures: dict[str, str] | None = None,
        shard: str = "0",
    ) -> Path:
        """Add rows (and failures) as one new part file; refuses rows whose settings, feature names or dims differ from
        the store's (its metadata records the names and dims of its features)."""
        features = {k: _as_rows(v, len(ids)) for k, v in features.items()}
        if features and ids:  # a batch of failures only says nothing about the features
            meta = meta | {"dims": {k: int(v.shape[1]) for k, v in sorted(features.items())}}
        if self.exists():
            check_compatible(self.meta(), meta, str(self.path))
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        seq = len(list(self.parts_dir.glob(f"{shard}-*.h5")))
        part = self.parts_dir / f"{shard}-{seq:06d}.h5"
        _write_h5(part, StoredFeatures(list(ids), features, meta, dict(failures or {})))
        return part

    def compact(self) -> StoredFeatures:
        """Fold all parts into the main file (sorted by id), atomically, then delete the parts."""
        parts = self._parts()
        data = self.read()
        if parts or not self.path.exists():
            _write_h5(self.path, data)
            for p in parts:
                p.unlink(missing_ok=True)
        self._clean_parts_dir()
        return data

    def write(self, data: StoredFeatures) -> None:
        """Replace the whole store atomically (imports, fitted transforms)."""
        _write_h5(self.path, self._merge([data]))
        for p in self._parts():
            p.unlink(missing_ok=True)
        self._clean_parts_dir()

    def set_transform(self, name: str, transform: Transform) -> None:
        data = self.compact()
        data.transforms[name] = transform
        self.write(data)

    def _clean_parts_dir(self) -> None:
        """Remove the temporary files of killed writers (never those of a live one: two extractions may share a
        store), and the parts folder once empty."""
        remove_stale_temps(self.path.parent)
        if self.parts_dir.is_dir():
            remove_stale_temps(self.parts_dir)
            if not any(self.parts_dir.iterdir()):
                self.parts_dir.rmdir()

    @staticmethod
    def _merge(pieces: list[StoredFeatures]) -> StoredFeatures:
        """Concatenate pieces; a later piece wins for a repeated id; rows sorted by id; failures that later
        succeeded are dropped."""
        meta = dict(pieces[0].meta)
        rows: dict[str, dict[str, np.ndarray]] = {}
        failures: dict[str, str] = {}
        transforms: dict[str, Transform] = {}
        names = sorted({n for p in pieces for n in p.features})
        for piece in pieces:
            for i, vid in enumerate(piece.ids):
                rows[vid] = {n: piece.features[n][i] for n in piece.features}
            failures.update(piece.failures)
            transforms.update(piece.transforms)
        ids = sorted(rows)
        dims = dict(meta.get("dims", {}))
        features = {}
        for n in names:
            dim = dims.get(n) or next(p.features[n].shape[1] for p in pieces if n in p.features)
            features[n] = np.stack([rows[i][n] for i in ids]) if ids else np.zeros((0, dim), np.float32)
            dims[n] = int(dim)
        meta["dims"] = dims
        failures = {k: v for k, v in failures.items() if k not in rows}
        return StoredFeatures(ids, features, meta, failures, transforms)


def check_compatible(have: dict, want: dict, where: str) -> None:
    """Refuse to mix features computed with different settings or dimensions; say exactly what differs."""
    diffs = []
    for key in ("family", "settings", "smoke"):
        if have.get(key) != want.get(key):
            diffs.append(f"{key}: store has {have.get(key)!r}, requested {want.get(key)!r}")
    have_dims, want_dims = have.get("dims", {}), want.get("dims", {})
    for name, dim in want_dims.items():
        if name in have_dims and have_dims[name] != dim:
            diffs.append(f"dim of {name}: store has {have_dims[name]}, requested {dim}")
    if have_dims and want_dims and set(have_dims) != set(want_dims):  # rows must have every feature of the store
        diffs.append(f"features: store has {sorted(have_dims)}, requested {sorted(want_dims)}")
    if diffs:
        raise StoreError(
            f"{where} was computed with other settings:\n  " + "\n  ".join(diffs) + "\n"
            "Use a different --features_dir, or delete the store to recompute it."
        )
