"""The whole M3-S network for end-to-end training: the deep backbones (HRNet, CSN) run inside the step, their pooled
features join the pre-computed modules (raw, similarity, imported...) and the ``ModularMLP`` head scores the clip.

No I/O here: the backbones are built and loaded by the caller (``model.backbones``), the clips decoded by
``pipeline.e2e.clips``. Frames arrive as uint8 and are normalised on the device (moving uint8 is 4x less traffic).

- ``frozen``: the backbones take no gradient and run under ``no_grad`` (features recomputed per augmented view);
- fine-tuned: their parameters train, but every BatchNorm stays in eval mode (running statistics frozen: batches of
  a few clips would give useless statistics, and the pretrained ones are what the weights expect);
- ``channels_last`` (CUDA): HRNet runs NHWC, faster 2-D convolutions on tensor cores;
- ``grad_checkpointing``: each HRNet stage and CSN Bottleneck recomputes its activations in the backward pass.
"""

from __future__ import annotations

import torch
from torch import nn

from model.mlp import ModularMLP

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # HRNet (CSAIL ADE20K training)
IMAGENET_STD = (0.229, 0.224, 0.225)
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)  # CSN (VMZ / torchvision video models)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


def hrnet_frame_indices(n_frames: int, k: int) -> list[int]:
    """Frames ``0, s, 2s, ...`` (k of them) with ``s = T // k``; T=45: k=1 -> [0], 5 -> [0, 9, ..., 36],
    9 -> [0, 5, ..., 40]. A clip shorter than k frames repeats its last frame. (The hrnet tier's rule, shared by the
    extractor and the end-to-end model.)
    """
    s = max(n_frames // k, 1)
    return [min(i * s, n_frames - 1) for i in range(k)]


class EndToEndModel(nn.Module):
    """``backbones`` maps a module name (``hrnet``, ``csn``) to its network (with a ``features`` method and an
    ``out_channels``); ``dims`` is every module's width in input order, the deep ones included."""

    def __init__(
        self,
        backbones: dict[str, nn.Module],
        dims: dict[str, int],
        hidden: list[int] | tuple[int, ...],
        hrnet_frames: int = 1,
        frozen: bool = False,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        for module, net in backbones.items():
            if dims.get(module) != net.out_channels:
                raise ValueError(f"{module}: the backbone gives {net.out_channels} dims, the head expects {dims}")
        self.backbones = nn.ModuleDict(backbones)
        self.head = ModularMLP(dims, hidden)
        self.dims = dict(dims)
        self.hrnet_frames = hrnet_frames
        self.frozen = frozen
        self.channels_last = False
        for net in self.backbones.values():
            net.grad_checkpointing = grad_checkpointing and not frozen
            if hasattr(net, "fc"):  # the CSN classifier is not part of the feature: it takes no gradient
                net.fc.requires_grad_(False)
        if frozen:
            self.backbones.requires_grad_(False)
        for name, (mean, std) in {"hrnet": (IMAGENET_MEAN, IMAGENET_STD), "csn": (KINETICS_MEAN, KINETICS_STD)}.items():
            self.register_buffer(f"{name}_mean", torch.tensor(mean).view(1, 3, 1, 1, 1), persistent=False)
            self.register_buffer(f"{name}_std", torch.tensor(std).view(1, 3, 1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> EndToEndModel:
        """The head follows ``mode``; the backbones stay in eval mode (frozen BatchNorm statistics)."""
        super().train(mode)
        self.backbones.eval()
        return self

    def use_channels_last(self) -> None:
        """NHWC memory for HRNet (CUDA); CSN stays NCDHW (channels-last-3d is unmeasured for depthwise 3-D convs)."""
        if "hrnet" in self.backbones:
            self.backbones["hrnet"].to(memory_format=torch.channels_last)
            self.channels_last = True

    def trainable_backbone_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.backbones.parameters() if p.requires_grad]

    def _normalise(self, clips: torch.Tensor, name: str) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) -> float (B, 3, T, H, W), normalised with the backbone's mean and std."""
        x = clips.movedim(-1, 1).float().div_(255)
        return (x - getattr(self, f"{name}_mean")) / getattr(self, f"{name}_std")

    def deep_features(self, clips: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{module: (B, D) float32}`` of the backbones for uint8 clips (B, T, H, W, 3) on the model's device."""
        out = {}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            if "hrnet" in self.backbones:
                idx = hrnet_frame_indices(clips.shape[1], self.hrnet_frames)
                x = self._normalise(clips[:, idx], "hrnet")  # (B, 3, k, H, W)
                b, k = x.shape[0], x.shape[2]
                x = x.transpose(1, 2).reshape(b * k, 3, *x.shape[-2:])  # (B*k, 3, H, W)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                out["hrnet"] = self.backbones["hrnet"].features(x).view(b, k, -1).mean(dim=1)  # (B, D)
            if "csn" in self.backbones:
                out["csn"] = self.backbones["csn"].features(self._normalise(clips, "csn").contiguous()).float()
        return out

    def forward(self, clips: torch.Tensor, pre: dict[str, torch.Tensor]) -> torch.Tensor:
        """uint8 clips (B, T, H, W, 3) and the other modules' ``{module: (B, D)}`` -> (B,) scores in [0, 1]."""
        feats = pre | self.deep_features(clips)
        x = ModularMLP.concat({m: feats[m].float() for m in self.dims}, self.dims)
        # the head in fp32 even under autocast: bf16 scores (8 bits of mantissa) would tie in the rankings
        with torch.autocast(x.device.type, enabled=False):
            return self.head(x)
