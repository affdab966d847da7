"""``text``: what a video shows, as people describe it: the mean sentence embedding of its captions
(``features/text.py``; Memento10k's five captions, VideoMem's title, a ``folder``'s ``captions.csv``)."""

from __future__ import annotations

from typing import Any

from dataset import load_records
from features.extract import Dist, device_for
from features.text import DEFAULT_MODEL, compute_text_store, store_slug
from tiers.base import Option, Source, Tier


class TextTier(Tier):
    name = "text"
    help = "use the text tier (sentence embeddings of the captions)"
    derived = True  # computed from the records' captions, no video decoding
    normalize = "normalize_text"
    # Similarity runs DBSCAN on a t-SNE of whitened PCA components, so eps does not depend on the embedding's scale.
    # A sentence embedding of captions is a semantic space like CSN's (one cluster per kind of scene or action), so it
    # takes CSN's eps; hrnet's larger 1.25 suits a scene-layout space with broader clusters. Not tuned on real data.
    dbscan_eps = 0.9

    def options(self, registry: dict[str, Tier]) -> dict[str, Option]:
        return {
            "text_model": Option(
                str, DEFAULT_MODEL, "sentence-transformers model of the text tier: a name, or a local folder", gen=True
            ),
            "normalize_text": Option(
                bool, False, "standardise text embeddings with train-split mean/std (off: the embedding's own scale)"
            ),
        }

    def store(self, cfg: Any, **options: Any) -> str:
        return f"text_{store_slug(options.get('text_model', cfg.text_model))}"

    def owns(self, store: str) -> bool:
        return store == self.name or store.startswith("text_")

    def sources(self, cfg: Any, module: str, stores: Any = None) -> list[Source]:
        return [(self.store(cfg), "text")]

    def gen_options(self, cfg: Any, store: str) -> dict[str, Any]:
        return {"text_model": cfg.text_model}

    def spaces(self) -> tuple[str, ...]:
        return ("text",)

    def space(self, cfg: Any, space: str) -> tuple[str, str, dict[str, Any]]:
        return self.store(cfg), "text", {"text_model": cfg.text_model}

    def compute(self, cfg: Any, records: list | None = None) -> list[str]:
        """``gen_features.py --features text``: embed every video's captions (resumes: stored ids are skipped)."""
        records = load_records(cfg.dataset, cfg) if records is None else records
        device = device_for(cfg.device, Dist.from_env())
        return [compute_text_store(cfg, records, self.store(cfg), device)]
