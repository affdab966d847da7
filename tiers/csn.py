"""``csn``: high-level actions, ip-CSN-152 / ir-CSN-152 clip features (any ``csn`` backbone of
``model.backbones.BACKBONES``: a new variant is one entry there)."""

from __future__ import annotations

from typing import Any

from features.deep import CSNExtractor
from model.backbones import archs
from tiers.base import Option, Source, Tier


class CSNTier(Tier):
    name = "csn"
    help = "use the csn (actions) tier"
    extractor = CSNExtractor
    dbscan_eps = 0.9

    def options(self, registry: dict[str, Tier]) -> dict[str, Option]:
        return {"csn_arch": Option(str, "ip_csn_152", "CSN backbone", archs("csn"), gen=True)}

    def store(self, cfg: Any, **options: Any) -> str:
        return options.get("csn_arch", cfg.csn_arch)  # one store per backbone: ip_csn_152.h5, ir_csn_152.h5

    def owns(self, store: str) -> bool:
        return store == self.name or store in archs("csn")

    def sources(self, cfg: Any, module: str, stores: Any = None) -> list[Source]:
        return [(self.store(cfg), "csn")]

    def gen_options(self, cfg: Any, store: str) -> dict[str, Any]:
        return {"csn_arch": store}

    def backbone(self, cfg: Any) -> str | None:
        return cfg.csn_arch

    def spaces(self) -> tuple[str, ...]:
        return archs("csn")

    def space(self, cfg: Any, space: str) -> tuple[str, str, dict[str, Any]]:
        return space, "csn", {"csn_arch": space}
