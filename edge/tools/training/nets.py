"""The reference networks: a small residual tile classifier and a residual-encoder U-Net.

Both are sized for CPU inference on 256 x 256 tiles of a 1-channel strip. The classifier is
about a tenth of the segmenter's cost per tile, which is what makes the cascade pay: every
tile is classified, only flagged tiles are segmented.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.nn import functional as F

NUM_CLASSES = 4


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    """A ResNet basic block (two 3x3 convolutions and a shortcut)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class TileClassifier(nn.Module):
    """Per tile, one logit per class: "class k is present in this tile"."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(1, widths[0], 2), nn.MaxPool2d(2))
        self.stages = nn.Sequential(
            *(ResidualBlock(a, b, 2) for a, b in itertools.pairwise(widths))
        )
        self.head = nn.Linear(widths[-1], NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.stages(self.stem(x))
        # Max pooling keeps a small defect's response undiluted by the clean rest of the tile.
        return self.head(torch.amax(features, dim=(2, 3)))


class TileUNet(nn.Module):
    """Per pixel, one logit per class. Works at half resolution and upsamples the logits."""

    def __init__(
        self, widths: tuple[int, ...] = (16, 32, 64, 96), decoder: tuple[int, ...] = (64, 24, 12)
    ) -> None:
        super().__init__()
        w0, w1, w2, w3 = widths
        self.stem = _conv_bn(1, w0, 2)  # 1/2
        self.enc1 = ResidualBlock(w0, w1, 2)  # 1/4
        self.enc2 = ResidualBlock(w1, w2, 2)  # 1/8
        self.enc3 = ResidualBlock(w2, w3, 2)  # 1/16
        d3, d2, d1 = decoder
        self.dec3 = _conv_bn(w3 + w2, d3)
        self.dec2 = _conv_bn(d3 + w1, d2)
        self.dec1 = _conv_bn(d2 + w0, d1)
        self.head = nn.Conv2d(d1, NUM_CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = self.stem(x)
        s1 = self.enc1(s0)
        s2 = self.enc2(s1)
        s3 = self.enc3(s2)
        d = self.dec3(torch.cat([_up(s3, s2), s2], 1))
        d = self.dec2(torch.cat([_up(d, s1), s1], 1))
        d = self.dec1(torch.cat([_up(d, s0), s0], 1))
        return F.interpolate(self.head(d), size=x.shape[-2:], mode="bilinear", align_corners=False)


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def build(role: str) -> nn.Module:
    if role == "classifier":
        return TileClassifier()
    if role == "segmenter":
        return TileUNet()
    raise ValueError(f"no reference network for role {role!r}")
