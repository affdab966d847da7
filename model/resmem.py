"""ResMem (Needell & Bainbridge, Brain Bridge Lab, University of Chicago): an image-memorability network, as the
``resmem`` package (1.1.6) defines it, written for m3s so that its state dict loads into a module we own (the
package builds ``torchvision.models.resnet152(pretrained=...)``, a call current torchvision refuses).

Two branches read the same 227x227 RGB image in [0, 1] (no mean/std normalisation: the package's preprocessing is
resize to 256x256, centre crop 227, ``ToTensor``):

- ``features``: an ImageNet ResNet-152 (torchvision's layout and key names, bottleneck stride on the 3x3 conv), whole,
  classifier included: its 1000 logits are an input of the head; its 2048-d global-average-pooled output is what the
  resmem tier stores as the second feature space;
- an AlexNet-like branch (``conv1``-``conv5``, grouped convs, local response norm) whose 256x6x6 output is flattened.

The head (``fc6``-``fc12``, ReLU between, dropout 0.5 after fc6 and fc7, identity in eval mode) maps the 9216 + 1000
concatenation to one sigmoid score: the predicted memorability of the image (trained on LaMem + MemCat).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

RESNET152_BLOCKS = (3, 8, 36, 3)
INPUT_SIZE = 227  # the package's centre crop
RESIZE = 256  # the package's resize (both sides: a squash, not a short-side resize)
CRUISE = 384  # width of conv3 / conv4 (the package's ``cruise_altitude`` default)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: 1x1 -> 3x3 (stride) -> 1x1 (x4), BN after each, residual."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))
            if stride != 1 or in_ch != out_ch
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity, inplace=True)


class ResNet152(nn.Module):
    """ImageNet ResNet-152, torchvision's parameter names; ``forward`` -> (pooled (N, 2048), logits (N, 1000))."""

    def __init__(self, blocks: tuple[int, ...] = RESNET152_BLOCKS, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = 64
        for i, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512), strict=True)):
            layer = []
            for b in range(n):
                layer.append(Bottleneck(in_ch, width, stride=2 if b == 0 and i > 0 else 1))
                in_ch = width * Bottleneck.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x)), inplace=True))  # (N, 64, 57, 57) at 227
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (N, 2048, 8, 8) at 227
        pooled = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # (N, 2048)
        return pooled, self.fc(pooled)


class ResMem(nn.Module):
    """The ResMem network. ``forward(x)`` -> (N,) memorability in (0, 1); ``features(x)`` -> (score, pooled)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = ResNet152()
        # the AlexNet-like branch, 227 -> 55 -> 27 -> 13 -> 6
        self.conv1 = nn.Conv2d(3, 48, 11, stride=4)
        self.conv2 = nn.Conv2d(48, 256, 5, padding=2, groups=2)
        self.conv3 = nn.Conv2d(256, CRUISE, 3, padding=1, groups=2)
        self.conv4 = nn.Conv2d(CRUISE, CRUISE, 3, padding=1, groups=2)
        self.conv5 = nn.Conv2d(CRUISE, 256, 3, padding=1, groups=2)
        self.pool = nn.MaxPool2d(3, stride=2)
        self.lrn = nn.LocalResponseNorm(5)
        # the head: 9216 + 1000 -> 4096 -> 4096 -> 2048 -> 1024 -> 512 -> 256 -> 1
        widths = (256 * 6 * 6 + 1000, 4096, 4096, 2048, 1024, 512, 256, 1)
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            setattr(self, f"fc{i + 6}", nn.Linear(a, b))
        self.drop6 = nn.Dropout(0.5)  # the package's drp6 (after fc6) and drp8 (applied after fc7)
        self.drop7 = nn.Dropout(0.5)

    def _alexnet(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lrn(self.pool(F.relu(self.conv1(x))))  # (N, 48, 27, 27)
        x = self.lrn(self.pool(F.relu(self.conv2(x))))  # (N, 256, 13, 13)
        x = F.relu(self.conv5(F.relu(self.conv4(F.relu(self.conv3(x))))))  # (N, 256, 13, 13)
        return torch.flatten(self.pool(x), 1)  # (N, 9216)

    def features_and_score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, 227, 227) in [0, 1] -> (score (N,), ResNet-152 pooled features (N, 2048))."""
        pooled, logits = self.features(x)
        h = torch.cat((self._alexnet(x), logits), 1)  # (N, 10216)
        h = self.drop6(F.relu(self.fc6(h)))
        h = self.drop7(F.relu(self.fc7(h)))
        for fc in (self.fc8, self.fc9, self.fc10, self.fc11):
            h = F.relu(fc(h))
        return torch.sigmoid(self.fc12(h)).squeeze(1), pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_score(x)[0]
