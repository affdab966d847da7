"""``raw``: the low-level tier (HOG, brightness, contrast, blurriness, optical flow, compressed size)."""

from __future__ import annotations

from typing import Any

from features.raw import RAW_FEATURES, RawExtractor
from features.store import StoredFeatures
from tiers.base import Option, Source, Tier

REFERENCE_ORDER = ("hog", "brightness", "contrast", "blurriness", "size_orig", "meanOF")  # M3-S's default input order


class RawTier(Tier):
    name = "raw"
    help = "use the raw (low-level) tier"
    extractor = RawExtractor
    normalize = "normalize_raw"
    transforms = (RawExtractor.transform_name,)

    def options(self, registry: dict[str, Tier]) -> dict[str, Option]:
        names = tuple(RAW_FEATURES)
        return {
            "raw_features": Option(list[str], list(REFERENCE_ORDER), "raw features, in input order", names),
            "normalize_raw": Option(bool, True, "standardise raw features with train-split mean/std"),
            "use_temporal_std": Option(
                bool, False, "append the temporal std of per-frame raw features after their mean"
            ),
        }

    def fitted_in_use(self, cfg: Any, transforms: list[str]) -> list[str]:
        """The HOG PCA only projects ``hog`` (and its temporal std): the other raw features are fitted on nothing."""
        return list(transforms) if "hog" in cfg.raw_features else []

    def sources(self, cfg: Any, module: str, stores: dict[str, StoredFeatures] | None = None) -> list[Source]:
        """``--raw_features`` in order, each followed by its temporal std with ``--use_temporal_std`` (per-frame
        features only; per-video ones such as ``meanOF`` have none)."""
        out = []
        for f in cfg.raw_features:
            out.append(("raw", f))
            if cfg.use_temporal_std and (stores is None or f"{f}_std" in stores["raw"].features):
                out.append(("raw", f"{f}_std"))
        return out
