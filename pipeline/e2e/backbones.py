"""The networks inside an end-to-end step: which backbones the selected modules run (official weights, random smoke
weights or tiny stand-ins), and the precision they run in (autocast, checked against fp32)."""

from __future__ import annotations

import torch
from torch import nn

from config import TrainConfig
from model.backbones import build_standin, load_backbone
from model.e2e import EndToEndModel
from tiers import module_tiers

MIN_COSINE = 0.99  # reduced-precision backbone features must agree this well with fp32 (some cuDNN get bf16 3-D wrong)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def autocast_dtype(device: torch.device, requested: str) -> torch.dtype:
    """``auto``: bf16 on a GPU that has it, else fp16 (CUDA); fp32 on the CPU. An explicit value is taken as is."""
    if requested != "auto":
        return _DTYPES[requested]
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def deep_backbones(cfg: TrainConfig) -> dict[str, str]:
    """``{module: backbone name}`` of the selected modules whose tier runs a network inside the step."""
    return {m: name for m, tier in module_tiers(cfg).items() if (name := tier.backbone(cfg)) is not None}


def build_backbones(cfg: TrainConfig) -> dict[str, nn.Module]:
    """``{module: backbone}`` of the deep modules ``cfg`` selects: official weights, random (smoke) or stand-ins."""
    deep = deep_backbones(cfg)
    if cfg.standin_backbones:
        return {m: build_standin(name) for m, name in deep.items()}
    return {m: load_backbone(name, cfg.weights_dir, cfg.smoke_random_weights) for m, name in deep.items()}


@torch.no_grad()
def precision_agrees(model: EndToEndModel, clips: torch.Tensor, dtype: torch.dtype) -> float:
    """The smallest cosine similarity between the backbone features in ``dtype`` (autocast) and in fp32."""
    exact = model.deep_features(clips)
    with torch.autocast(clips.device.type, dtype=dtype):
        reduced = model.deep_features(clips)
    cos = [nn.functional.cosine_similarity(exact[m], reduced[m].float(), dim=1).min() for m in exact]
    return float(torch.stack(cos).min()) if cos else 1.0
