"""ResNet baselines of the MGiaD paper (Table I), with every conv a GroupedConv2d."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mgiad_kernels import check_backend

from .layers import classifier_head, conv1x1, conv3x3, to_model_layout
from .rules import check_int


class BasicBlock(nn.Module):
    """relu(x + bn2(conv2(relu(bn1(conv1(x)))))) with a projection or parameter-free shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, shortcut: str, backend: str):
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out, 1, backend, stride=stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = conv3x3(c_out, c_out, 1, backend)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut_kind = shortcut
        self.pad_channels = c_out - c_in
        self.stride = stride
        self.downsample = None
        if (stride != 1 or c_in != c_out) and shortcut == "projection":
            self.downsample = nn.Sequential(conv1x1(c_in, c_out, 1, backend, stride=stride), nn.BatchNorm2d(c_out))

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            return self.downsample(x)
        if self.stride == 1 and self.pad_channels == 0:
            return x
        x = x[:, :, ::self.stride, ::self.stride]  # He et al.'s option A: subsample, zero-pad channels
        half = self.pad_channels // 2
        return F.pad(x, (0, 0, 0, 0, half, self.pad_channels - half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self._shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, widths, blocks, num_classes: int, in_channels: int, shortcut: str, max_pool: bool,
                 backend: str):
        super().__init__()
        check_backend(backend)
        check_int("num_classes", num_classes)
        check_int("in_channels", in_channels)
        self.conv1 = conv3x3(in_channels, widths[0], 1, backend)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.max_pool = max_pool
        layers, c_in = [], widths[0]
        for i, (c, n) in enumerate(zip(widths, blocks)):
            stage = [BasicBlock(c_in if j == 0 else c, c, (2 if i and j == 0 else 1), shortcut, backend)
                     for j in range(n)]
            layers.append(nn.Sequential(*stage))
            c_in = c
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(to_model_layout(x))))
        if self.max_pool:
            x = F.max_pool2d(x, 3, 2, 1)
        return classifier_head(self.layers(x), self.fc)


def resnet18_cifar(num_classes: int = 10, in_channels: int = 3, backend: str = "auto") -> CifarResNet:
    """torchvision's ResNet18 with a 3x3 stride-1 stem, max-pool kept (11,173,962 weights at 10 classes)."""
    return CifarResNet((64, 128, 256, 512), (2, 2, 2, 2), num_classes, in_channels, "projection", True, backend)


def resnet20(num_classes: int = 10, in_channels: int = 3, backend: str = "auto") -> CifarResNet:
    """He et al.'s CIFAR ResNet20: 16/32/64 channels, 3 blocks per stage, parameter-free shortcuts."""
    return CifarResNet((16, 32, 64), (3, 3, 3), num_classes, in_channels, "parameter_free", False, backend)
