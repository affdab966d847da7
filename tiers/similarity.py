"""``similarity``: distinctiveness, how a video stands out from the training corpus in another tier's feature space
(any tier that offers ``spaces``: hrnet, the csn backbones, and the tiers still to come)."""

from __future__ import annotations

from typing import Any

from dataset import load_records
from features.similarity import METHODS, Space, compute_similarity
from features.store import StoredFeatures
from tiers.base import Option, Source, Tier


class SimilarityTier(Tier):
    name = "similarity"
    help = "use the similarity (distinctiveness) tier"
    normalize = "normalize_similarity"
    derived = True

    def options(self, registry: dict[str, Tier]) -> dict[str, Option]:
        spaces = tuple(s for tier in registry.values() for s in tier.spaces())
        methods = tuple(METHODS)
        return {
            "similarity_features": Option(
                list[str], ["hrnet", "ip_csn_152"], "feature spaces for similarity", spaces, gen=True
            ),
            "similarity_methods": Option(list[str], ["dbscan"], "similarity methods", methods, gen=True),
            "normalize_similarity": Option(bool, True, "standardise similarity scores with train-split mean/std"),
        }

    def resolve(self, cfg: Any, registry: dict[str, Tier]) -> list[Space]:
        """The spaces of ``cfg.similarity_features``, each resolved by the tier that offers it."""
        out = []
        for name in cfg.similarity_features:
            tier = next(t for t in registry.values() if name in t.spaces())
            store, feature, options = tier.space(cfg, name)
            out.append(Space(name, store, feature, tier.dbscan_eps, tier.gen_command(cfg, store)))
        return out

    def store(self, cfg: Any, **options: Any) -> str:
        """The store of the first space (each space has its own: ``sources`` lists them all)."""
        return self.resolve(cfg, self.registry)[0].out_store

    def owns(self, store: str) -> bool:
        return store == self.name or store.startswith("similarity_")

    def sources(self, cfg: Any, module: str, stores: dict[str, StoredFeatures] | None = None) -> list[Source]:
        """Per method, the spaces of ``--similarity_features`` concatenated within each."""
        spaces = [s.out_store for s in self.resolve(cfg, self.registry)]
        return [(store, method) for method in cfg.similarity_methods for store in spaces]

    def gen_options(self, cfg: Any, store: str) -> dict[str, Any]:
        """Only the space whose store is missing, with the options that name its source store."""
        for name in cfg.similarity_features:
            tier = next(t for t in self.registry.values() if name in t.spaces())
            source, _, options = tier.space(cfg, name)
            if f"similarity_{source}" == store:
                return {"similarity_features": [name], "similarity_methods": cfg.similarity_methods} | options
        return {"similarity_features": cfg.similarity_features, "similarity_methods": cfg.similarity_methods}

    def compute(self, cfg: Any, records: list | None = None) -> list[str]:
        """``gen_features.py --features similarity``: fit and score every space and method of ``cfg``."""
        records = load_records(cfg.dataset, cfg) if records is None else records
        return compute_similarity(cfg, records, self.resolve(cfg, self.registry))
