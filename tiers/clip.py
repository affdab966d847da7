"""``clip``: CLIP image embeddings of evenly spaced frames (``features/clip.py``; open_clip, default RN50/openai),
their mean and, with ``--clip_std``, their temporal standard deviation."""

from __future__ import annotations

from typing import Any

from features.clip import CLIPExtractor, slug
from tiers.base import Option, Source, Tier


class CLIPTier(Tier):
    name = "clip"
    help = "use the clip tier (CLIP image embeddings of the frames)"
    extractor = CLIPExtractor
    # Similarity runs DBSCAN on a t-SNE of whitened PCA components, so eps does not depend on the embedding's scale.
    # CLIP's image space is semantic and clustered by content, as CSN's pooled features are: CSN's eps, not hrnet's
    # larger one (a scene-layout space with broader clusters). Not tuned on real data (none here).
    dbscan_eps = 0.9

    def options(self, registry: dict[str, Tier]) -> dict[str, Option]:
        return {
            "clip_model": Option(str, "RN50", "open_clip model of the clip tier (RN50, ViT-L-14...)", gen=True),
            "clip_pretrained": Option(str, "openai", "open_clip pretrained tag of --clip_model", gen=True),
            "clip_frames": Option(int, 8, "frames per video embedded by the clip tier (evenly spaced)", gen=True),
            "clip_std": Option(bool, False, "append the temporal std of the frames' CLIP embeddings after their mean"),
            "clip_download": Option(
                bool, False, "fetch missing CLIP weights from open_clip's hub/URL into --weights_dir (internet)",
                gen=True, train=False,
            ),
        }  # fmt: skip

    def store(self, cfg: Any, **options: Any) -> str:
        model = options.get("clip_model", cfg.clip_model)
        tag = options.get("clip_pretrained", cfg.clip_pretrained)
        return f"clip_{slug(model)}_{slug(tag)}_f{options.get('clip_frames', cfg.clip_frames)}"

    def owns(self, store: str) -> bool:
        return store == self.name or store.startswith("clip_")

    def sources(self, cfg: Any, module: str, stores: Any = None) -> list[Source]:
        store = self.store(cfg)
        return [(store, "clip")] + ([(store, "clip_std")] if cfg.clip_std else [])

    def gen_options(self, cfg: Any, store: str) -> dict[str, Any]:
        return {
            "clip_model": cfg.clip_model,
            "clip_pretrained": cfg.clip_pretrained,
            "clip_frames": cfg.clip_frames,
        }

    def spaces(self) -> tuple[str, ...]:
        return ("clip",)

    def space(self, cfg: Any, space: str) -> tuple[str, str, dict[str, Any]]:
        return self.store(cfg), "clip", self.gen_options(cfg, self.store(cfg))
