"""HRNetV2-W48 encoder, laid out like the CSAIL ADE20K checkpoint ``ade20k-hrnetv2-c1/encoder_epoch_30.pth``.

Written for m3s from the published architecture (Wang et al., "Deep High-Resolution Representation Learning", 2019)
and the key/shape manifest of the official file (``shared/reference/hrnetv2_w48_encoder.keys.tsv``): module names,
registration order and shapes follow that file, so its state dict loads key for key. The checkpoint was saved from
a model with synchronised batch norm; its extra buffers are ignored on load (``model.backbones``).

Shape walk for a 256x256 input: stem (two stride-2 3x3 convs) -> 64 x 64x64 -> layer1 (4 Bottlenecks) -> 256 x 64x64
-> stage2 (2 branches), stage3 (3), stage4 (4): branch i has ``WIDTHS[i]`` channels at 64 / 2**i pixels ->
the four branches upsampled to branch 0's size and concatenated: 720 x 64x64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

WIDTHS = (48, 96, 192, 384)  # channels of branch 0..3 (the "W48" of HRNetV2-W48)
OUT_CHANNELS = sum(WIDTHS)  # 720
# (number of HighResolutionModules, number of branches) of stages 2, 3, 4; every branch has 4 BasicBlocks
STAGES = ((1, 2), (4, 3), (3, 4))
BLOCKS_PER_BRANCH = 4
BN_EPS = 1e-5  # the CSAIL code keeps PyTorch's default
BN_MOMENTUM = 0.1


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN, identity shortcut (the branches never change width inside a stage)."""

    expansion = 1

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(channels, channels)
        self.bn1 = _bn(channels)
        self.conv2 = _conv3x3(channels, channels)
        self.bn2 = _bn(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 channels), with a 1x1 conv + BN shortcut when the width changes (layer1.0 only)."""

    expansion = 4

    def __init__(self, c_in: int, planes: int) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, kernel_size=1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, c_out, kernel_size=1, bias=False)
        self.bn3 = _bn(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size=1, bias=False), _bn(c_out)) if c_in != c_out else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


def _down(c_in: int, c_out: int, relu: bool) -> nn.Sequential:
    """Stride-2 3x3 conv + BN (+ ReLU): one halving step of a fuse or transition path."""
    layers: list[nn.Module] = [_conv3x3(c_in, c_out, stride=2), _bn(c_out)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """Parallel branches of BasicBlocks, then every output branch i sums all inputs brought to its resolution.

    ``fuse_layers[i][j]`` maps branch j to branch i: a 1x1 conv + BN then bilinear upsampling when j > i (lower
    resolution), ``None`` when j == i, and ``i - j`` stride-2 3x3 convs when j < i (only the last changes width and
    has no ReLU).
    """

    def __init__(self, widths: tuple[int, ...], blocks: int = BLOCKS_PER_BRANCH) -> None:
        super().__init__()
        self.widths = widths
        n = len(widths)
        self.branches = nn.ModuleList(nn.Sequential(*(BasicBlock(w) for _ in range(blocks))) for w in widths)
        fuse_layers = []
        for i in range(n):
            row: list[nn.Module | None] = []
            for j in range(n):
                if j > i:
                    row.append(
                        nn.Sequential(nn.Conv2d(widths[j], widths[i], kernel_size=1, bias=False), _bn(widths[i]))
                    )
                elif j == i:
                    row.append(None)
                else:
                    steps = [_down(widths[j], widths[j], relu=True) for _ in range(i - j - 1)]
                    steps.append(_down(widths[j], widths[i], relu=False))
                    row.append(nn.Sequential(*steps))
            fuse_layers.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse_layers)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        out = []
        for i, row in enumerate(self.fuse_layers):
            size = xs[i].shape[-2:]
            y = xs[i]
            for j, fuse in enumerate(row):
                if j == i:
                    continue
                z = fuse(xs[j])
                if j > i:
                    z = F.interpolate(z, size=size, mode="bilinear", align_corners=False)
                y = y + z
            out.append(self.relu(y))
        return out


class HRNetV2(nn.Module):
    """HRNetV2-W48 encoder. ``forward`` gives the 720-channel map at 1/4 of the input size; ``features`` pools it.

    The defaults are the official layout. Smaller ``widths`` / ``stem`` / block counts build a stand-in of the same
    structure (``model.backbones.STANDINS``: CPU tests of end-to-end training); ``out_channels`` follows the widths.
    ``grad_checkpointing`` recomputes each stage's activations in the backward pass instead of keeping them.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = WIDTHS,
        stem: int = 64,
        layer1_blocks: int = 4,
        stages: tuple[tuple[int, int], ...] = STAGES,
        blocks: int = BLOCKS_PER_BRANCH,
    ) -> None:
        super().__init__()
        self.out_channels = sum(widths)
        self.n_stages = len(stages)
        self.grad_checkpointing = False
        self.conv1 = _conv3x3(3, stem, stride=2)
        self.bn1 = _bn(stem)
        self.conv2 = _conv3x3(stem, stem, stride=2)
        self.bn2 = _bn(stem)
        self.relu = nn.ReLU(inplace=True)
        c1 = stem * Bottleneck.expansion
        self.layer1 = nn.Sequential(*(Bottleneck(stem if i == 0 else c1, stem) for i in range(layer1_blocks)))

        prev: tuple[int, ...] = (c1,)
        for s, (n_modules, n_branches) in enumerate(stages, start=2):
            w = widths[:n_branches]
            self.add_module(f"transition{s - 1}", self._transition(prev, w))
            self.add_module(f"stage{s}", nn.Sequential(*(HighResolutionModule(w, blocks) for _ in range(n_modules))))
            prev = w

    @staticmethod
    def _transition(prev: tuple[int, ...], widths: tuple[int, ...]) -> nn.ModuleList:
        """Existing branches keep going (3x3 conv + BN + ReLU if their width changes, else ``None``); each new
        branch is made from the lowest-resolution previous branch by stride-2 convs (all but the last keep width).
        """
        layers: list[nn.Module | None] = []
        for i, w in enumerate(widths):
            if i < len(prev):
                same = prev[i] == w
                layers.append(None if same else nn.Sequential(_conv3x3(prev[i], w), _bn(w), nn.ReLU(inplace=True)))
            else:
                n_steps = i + 1 - len(prev)
                steps = [_down(prev[-1], w if k == n_steps - 1 else prev[-1], relu=True) for k in range(n_steps)]
                layers.append(nn.Sequential(*steps))
        return nn.ModuleList(layers)

    def _run(self, module: nn.Module, x):
        """``module(x)``, through activation checkpointing when it is on and gradients are being recorded."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(module, x, use_reentrant=False)
        return module(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, 3, H, W) normalised RGB -> (B, 720, H/4, W/4)."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self._run(self.layer1, x)  # (B, 256, H/4, W/4)
        xs = [x]
        for s in range(2, 2 + self.n_stages):
            transition: nn.ModuleList = getattr(self, f"transition{s - 1}")
            # a new branch grows from the last (lowest-resolution) output of the previous stage
            xs = [xs[i] if t is None else t(xs[min(i, len(xs) - 1)]) for i, t in enumerate(transition)]
            xs = self._run(getattr(self, f"stage{s}"), xs)
        size = xs[0].shape[-2:]
        ups = [xs[0]] + [F.interpolate(z, size=size, mode="bilinear", align_corners=False) for z in xs[1:]]
        return torch.cat(ups, dim=1)  # (B, 48+96+192+384, H/4, W/4)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 720): the encoder map, globally average-pooled (in fp32 under autocast)."""
        return self.forward(x).float().mean(dim=(2, 3))
