"""``resmem``: the pretrained ResMem image-memorability network over sampled frames (``features/resmem.py``): the
frame scores' mean, max, std and temporal profile, and (``--resmem_resnet``, and as a similarity space) the
ResNet-152 pooled features. Opt-in: ``bash envs/setup.sh --with resmem`` installs the ``resmem`` wheel that ships
the weights, under the ResMem Non-commercial License (University of Chicago)."""

from __future__ import annotations

from typing import Any

from features.resmem import LICENCE, ResMemExtractor
from tiers.base import Option, Source, Tier


class ResMemTier(Tier):
    name = "resmem"
    help = (
        "use the resmem tier (ResMem image memorability of the frames; weights: pip package resmem==1.1.6, "
        "bash envs/setup.sh --with resmem; " + LICENCE + ")"
    )
    extractor = ResMemExtractor
    normalize = "normalize_resmem"
    # ResNet-152's pooled ImageNet features: a semantic space clustered by content, as CSN's and CLIP's are. Not
    # tuned on real data (similarity whitens PCA components before t-SNE, so eps does not depend on the scale).
    dbscan_eps = 0.9

    def options(self, registry: dict[str, Tier]) -> dict[str, Option]:
        return {
            "resmem_frames": Option(
                int, 8, "frames per video scored by ResMem (evenly spaced; an image is one). ResMem's weights are "
                "under the ResMem Non-commercial License (University of Chicago)", gen=True,
            ),
            "resmem_resnet": Option(bool, False, "append ResMem's ResNet-152 pooled features (2048-d) to the module"),
            "normalize_resmem": Option(bool, True, "standardise the resmem features with train statistics"),
        }  # fmt: skip

    def store(self, cfg: Any, **options: Any) -> str:
        return f"resmem_f{options.get('resmem_frames', cfg.resmem_frames)}"

    def owns(self, store: str) -> bool:
        return store == self.name or store.startswith("resmem_f")

    def sources(self, cfg: Any, module: str, stores: Any = None) -> list[Source]:
        store = self.store(cfg)
        resnet = [(store, "resmem_resnet")] if cfg.resmem_resnet else []
        return [(store, "resmem"), (store, "resmem_profile"), *resnet]

    def gen_options(self, cfg: Any, store: str) -> dict[str, Any]:
        return {"resmem_frames": cfg.resmem_frames}

    def spaces(self) -> tuple[str, ...]:
        return ("resmem",)

    def space(self, cfg: Any, space: str) -> tuple[str, str, dict[str, Any]]:
        return self.store(cfg), "resmem_resnet", self.gen_options(cfg, self.store(cfg))
