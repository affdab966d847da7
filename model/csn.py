"""Channel-separated networks ip-CSN-152 and ir-CSN-152, laid out like the VMZ checkpoints.

Written for m3s from the published architecture (Tran et al., "Video Classification with Channel-Separated
Convolutional Networks", ICCV 2019) and the key/shape manifests of the official files
(``shared/reference/{ip,ir}_csn_152.keys.tsv``): torchvision-VideoResNet-style names (``stem.0``,
``layerN.i.conv2.0.0``, ...), so the files load strictly.

A 3-D ResNet-152 (Bottleneck blocks [3, 8, 36, 3]) whose 3x3x3 convolution in each block is channel-separated:
- ir (interaction-reduced): depthwise 3x3x3 only (``conv2.0`` = depthwise conv, ``conv2.1`` = BN);
- ip (interaction-preserved): 1x1x1 conv + BN, then depthwise 3x3x3 (``conv2.0.0``, ``conv2.0.1``, ``conv2.0.2``).
Every BatchNorm3d uses eps 1e-3 (VMZ's value; PyTorch's default 1e-5 makes the features drift).

Shape walk for a (B, 3, 45, 256, 256) clip: stem conv (1, 2, 2) stride + max-pool (1, 2, 2) -> 64 x 45x64x64;
layer1 -> 256 x 45x64x64; layer2 -> 512 x 23x32x32; layer3 -> 1024 x 12x16x16; layer4 -> 2048 x 6x8x8;
global average pool -> 2048 (the feature); ``fc`` -> 400 Kinetics logits (unused for features).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

BN_EPS = 1e-3  # VMZ's BatchNorm3d eps; see module docstring
LAYERS = (3, 8, 36, 3)  # Bottlenecks per stage (ResNet-152)
FEATURE_DIM = 2048
N_CLASSES = 400  # Kinetics-400 classifier, present in the files


def _bn(channels: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(channels, eps=BN_EPS)


def _depthwise(channels: int, stride: int) -> nn.Conv3d:
    """3x3x3 depthwise conv; ``stride`` applies to time as well as space (VMZ's CSN downsampling)."""
    return nn.Conv3d(channels, channels, kernel_size=3, stride=stride, padding=1, groups=channels, bias=False)


def ir_conv(channels: int, stride: int) -> nn.Module:
    """Interaction-reduced separable conv: depthwise 3x3x3 only."""
    return _depthwise(channels, stride)


def ip_conv(channels: int, stride: int) -> nn.Module:
    """Interaction-preserved separable conv: 1x1x1 conv + BN (no ReLU between), then depthwise 3x3x3."""
    return nn.Sequential(
        nn.Conv3d(channels, channels, kernel_size=1, bias=False), _bn(channels), _depthwise(channels, stride)
    )


class Bottleneck(nn.Module):
    """1x1x1 reduce -> separable 3x3x3 (strided) -> 1x1x1 expand (x4), plus identity or 1x1x1 strided shortcut."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, separable: Callable[[int, int], nn.Module]) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = nn.Sequential(
            nn.Conv3d(c_in, planes, kernel_size=1, bias=False), _bn(planes), nn.ReLU(inplace=True)
        )
        self.conv2 = nn.Sequential(separable(planes, stride), _bn(planes), nn.ReLU(inplace=True))
        self.conv3 = nn.Sequential(nn.Conv3d(planes, c_out, kernel_size=1, bias=False), _bn(c_out))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv3d(c_in, c_out, kernel_size=1, stride=stride, bias=False), _bn(c_out))
            if stride != 1 or c_in != c_out
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + shortcut)


class CSN(nn.Module):
    """CSN-152 video backbone. ``features`` gives the 2048-d pooled layer4 output; ``forward`` the 400 logits.

    The defaults are the official layout; smaller ``layers`` / ``planes`` / ``stem`` build a stand-in of the same
    structure (``model.backbones.STANDINS``), whose ``out_channels`` is ``planes[-1] * 4``. ``grad_checkpointing``
    recomputes each Bottleneck's activations in the backward pass instead of keeping them.
    """

    def __init__(
        self,
        separable: Callable[[int, int], nn.Module],
        layers: tuple[int, ...] = LAYERS,
        planes: tuple[int, ...] = (64, 128, 256, 512),
        stem: int = 64,
    ) -> None:
        super().__init__()
        self.out_channels = planes[-1] * Bottleneck.expansion
        self.grad_checkpointing = False
        self.stem = nn.Sequential(
            nn.Conv3d(3, stem, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            _bn(stem),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )
        c_in = stem
        for n, (blocks, width) in enumerate(zip(layers, planes, strict=True), start=1):
            stride = 1 if n == 1 else 2
            layer = []
            for i in range(blocks):
                layer.append(Bottleneck(c_in, width, stride if i == 0 else 1, separable))
                c_in = width * Bottleneck.expansion
            self.add_module(f"layer{n}", nn.Sequential(*layer))
        self.fc = nn.Linear(self.out_channels, N_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, 3, T, H, W) normalised RGB -> (B, 2048)."""
        x = self.stem(x)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                ckpt = self.grad_checkpointing and torch.is_grad_enabled()
                x = checkpoint(block, x, use_reentrant=False) if ckpt else block(x)
        # x: (B, 2048, T', H/32, W/32)
        return x.float().mean(dim=(2, 3, 4))  # global average pool, in fp32 under autocast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def ip_csn_152(**sizes: Any) -> CSN:
    return CSN(ip_conv, **sizes)


def ir_csn_152(**sizes: Any) -> CSN:
    return CSN(ir_conv, **sizes)
