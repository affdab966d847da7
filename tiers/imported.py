"""Imported features: each ``--extra_features NAME`` is a module read from the store ``gen_features.py --import FILE
--name NAME`` wrote (CLIP, captions, audio... your own features)."""

from __future__ import annotations

from typing import Any

from tiers.base import Option, Tier


class ImportedTier(Tier):
    name = "imported"
    has_switch = False
    normalize = "normalize_extra"

    def options(self, registry: dict[str, Tier]) -> dict[str, Option]:
        return {
            "extra_features": Option(
                list[str], [], "imported feature stores to use as extra modules (gen_features.py --import)"
            ),
            "normalize_extra": Option(bool, False, "standardise imported features with train-split mean/std"),
        }

    def modules(self, cfg: Any) -> list[str]:
        return list(cfg.extra_features)

    def store(self, cfg: Any, **options: Any) -> str:
        raise TypeError("an imported module's store is named after the module")

    def owns(self, store: str) -> bool:
        return False  # any name that no other tier owns

    def sources(self, cfg: Any, module: str, stores: Any = None) -> list[tuple[str, str]]:
        return [(module, f) for f in (sorted(stores[module].features) if stores else [""])]

    def gen_command(self, cfg: Any, store: str) -> str:
        return f"python gen_features.py --dataset {cfg.dataset} --import FILE --name {store}"
