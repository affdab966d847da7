"""``hrnet``: mid-level scene semantics, HRNetV2-W48 (ADE20K) features of 1, 5 or 9 frames."""

from __future__ import annotations

import re
from typing import Any

from features.deep import HRNetExtractor
from tiers.base import Option, Source, Tier


class HRNetTier(Tier):
    name = "hrnet"
    help = "use the hrnet (scene semantics) tier"
    extractor = HRNetExtractor
    dbscan_eps = 1.25

    def options(self, registry: dict[str, Tier]) -> dict[str, Option]:
        return {"hrnet_frames": Option(int, 1, "HRNet frames averaged per video", (1, 5, 9), gen=True)}

    def store(self, cfg: Any, **options: Any) -> str:
        return f"hrnet_f{options.get('hrnet_frames', cfg.hrnet_frames)}"

    def owns(self, store: str) -> bool:
        return store == self.name or re.fullmatch(r"hrnet_f\d+", store) is not None

    def sources(self, cfg: Any, module: str, stores: Any = None) -> list[Source]:
        return [(self.store(cfg), "hrnet")]

    def gen_options(self, cfg: Any, store: str) -> dict[str, Any]:
        return {"hrnet_frames": int(store.removeprefix("hrnet_f"))}

    def backbone(self, cfg: Any) -> str | None:
        return HRNetExtractor.arch

    def spaces(self) -> tuple[str, ...]:
        return ("hrnet",)

    def space(self, cfg: Any, space: str) -> tuple[str, str, dict[str, Any]]:
        return self.store(cfg), "hrnet", {"hrnet_frames": cfg.hrnet_frames}
