"""The fitted transforms a checkpoint carries, so that it can score new videos on its own.

A store's fitted transforms (the raw tier's HOG PCA, each similarity method's state: PCA, KDE train matrix and
bandwidth, DBSCAN labels and classifier weights, the train mean...) are plain arrays plus JSON info
(``features.store.Transform``). In a checkpoint they become tensors and a JSON string, beside what the store's
metadata says of how its features were made (family, settings, smoke), so ``torch.load(weights_only=True)`` still
reads it and ``evaluate.py --videos`` can rebuild the stores of new videos with exactly the training transforms.

Layout of ``ckpt["fitted"]``::

    {store: {"meta": {"family", "settings", "smoke"}, "transforms": {name: {"arrays": {a: tensor}, "info": json}}}}
"""

from __future__ import annotations

import json

import numpy as np
import torch

from features.store import StoredFeatures, Transform

META_KEYS = ("family", "settings", "smoke")
Fitted = dict[str, dict]  # store -> {"meta": {...}, "transforms": {name: Transform}}


def fitted_of(stores: dict[str, StoredFeatures]) -> Fitted:
    """The stores that hold fitted transforms, with what a new store built from them must share (``META_KEYS``)."""
    return {
        name: {"meta": {k: data.meta.get(k) for k in META_KEYS}, "transforms": dict(data.transforms)}
        for name, data in stores.items()
        if data.transforms
    }


def _tensor(name: str, arr: np.ndarray) -> torch.Tensor:
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"fitted array {name} has dtype {arr.dtype}; a checkpoint holds numeric arrays only")
    return torch.from_numpy(np.ascontiguousarray(arr))  # shares memory: packing at every epoch copies nothing


def pack(fitted: Fitted) -> dict:
    """Tensors and plain values only (``weights_only=True`` loads them)."""
    return {
        store: {
            "meta": json.dumps(entry["meta"], sort_keys=True),
            "transforms": {
                tname: {
                    "arrays": {a: _tensor(f"{store}/{tname}/{a}", v) for a, v in t.arrays.items()},
                    "info": json.dumps(t.info, sort_keys=True),
                }
                for tname, t in entry["transforms"].items()
            },
        }
        for store, entry in fitted.items()
    }


def unpack(packed: dict) -> Fitted:
    """The inverse of ``pack``: the arrays come back with their dtypes and shapes, so their digests are unchanged."""
    return {
        store: {
            "meta": json.loads(entry["meta"]),
            "transforms": {
                tname: Transform({a: v.numpy() for a, v in t["arrays"].items()}, json.loads(t["info"]))
                for tname, t in entry["transforms"].items()
            },
        }
        for store, entry in packed.items()
    }
