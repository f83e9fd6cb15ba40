"""MGIC: multigrid in channels (Eliasof, Ephrath, Ruthotto, Treister; MGIC paper Alg. 1).

A CNN block is wrapped by a hierarchy of channel levels: grouped 1x1 restrictions halve the
channels on the way down, the coarsest level runs the fully coupled block, and on the way up
each level adds the batch-normalized prolongation of its coarse-level change
(x + N(P(x_coarse - R x)), eq. 6) and runs the grouped block (eq. 7).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mgiad_kernels import check_backend

from .layers import classifier_head, conv1x1, conv3x3, stem, to_model_layout
from .rules import check_channel_levels, check_int, check_int_tuple, check_per_level, check_width_multiples


class ResidualBlock(nn.Module):
    """The CNN block of MGIC-ResNet-56: relu(x + bn2(K2 relu(bn1(K1 x)))) with 3x3 K1, K2 in ``groups`` groups."""

    def __init__(self, channels: int, groups: int, backend: str):
        super().__init__()
        self.conv1 = conv3x3(channels, channels, groups, backend)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels, groups, backend)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class MGICBlock(nn.Module):
    """Alg. 1, MGIC-block(x, CNN-block, s_g, s_c), for ``channels`` in and out.

    ``make_block(channels, groups, backend)`` builds the CNN block of a level (default: the
    ResNet basic block). Fine levels use ``group_size`` (s_g) channels per group; the coarsest
    level (``rules.channel_levels``: channels halve while even and half is at least s_c =
    ``coarsest_channels``) is fully coupled. R_j (c -> c/2)
    and P_j (c/2 -> c) are grouped 1x1 convolutions with c / s_g groups, initialised to averages
    (every weight 1 / s_g; P_j = R_j^T).
    """

    def __init__(self, channels: int, group_size: int, coarsest_channels: int,
                 make_block: Callable[[int, int, str], nn.Module] | None = None, backend: str = "auto"):
        super().__init__()
        self.levels = check_channel_levels(channels, coarsest_channels, group_size)
        check_backend(backend)
        make_block = make_block or ResidualBlock
        fine = self.levels[:-1]
        self.group_size = group_size
        self.restrict = nn.ModuleList(conv1x1(c, c // 2, c // group_size, backend) for c in fine)
        self.prolong = nn.ModuleList(conv1x1(c // 2, c, c // group_size, backend) for c in fine)
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in fine)
        self.blocks = nn.ModuleList(make_block(c, c // group_size, backend) for c in fine)
        self.coarsest = make_block(self.levels[-1], 1, backend)
        self.reset_transfers()

    def reset_transfers(self) -> None:
        """R_j and P_j as averages over each group (row sums of R are 1), the MGIC paper's initialisation."""
        with torch.no_grad():
            for conv in (*self.restrict, *self.prolong):
                conv.weight.fill_(1.0 / self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down = [x]
        for restrict in self.restrict:  # going down: x^(j+1) = R_j x^(j)
            down.append(restrict(down[-1]))
        y = self.coarsest(down[-1])  # the fully coupled block on the coarsest level
        for j in reversed(range(len(self.restrict))):  # going up, eq. (6)-(7)
            y = self.blocks[j](down[j] + self.norms[j](self.prolong[j](y - down[j + 1])))
        return y


class MGICResNet(nn.Module):
    """A CIFAR ResNet whose blocks are MGIC blocks; a stage change is a depthwise 3x3 stride-2
    convolution (channel multiplier c_out / c_in) + BN + ReLU (MGIC paper Sec. 4.3)."""

    def __init__(self, widths=(16, 32, 64), blocks=(9, 9, 9), num_classes: int = 10, in_channels: int = 3,
                 group_size: int = 8, coarsest_channels: int = 16, backend: str = "auto"):
        super().__init__()
        check_int("num_classes", num_classes)
        check_int("in_channels", in_channels)
        widths = check_width_multiples(check_int_tuple("widths", widths))
        blocks = check_per_level("blocks", check_int_tuple("blocks", blocks), widths)
        check_backend(backend)
        self.stem = stem(in_channels, widths[0], backend)
        stages = []
        for i, (c, n) in enumerate(zip(widths, blocks)):
            layers: list[nn.Module] = []
            if i:
                layers += [conv3x3(widths[i - 1], c, widths[i - 1], backend, stride=2), nn.BatchNorm2d(c),
                           nn.ReLU(inplace=True)]
            layers += [MGICBlock(c, group_size, coarsest_channels, backend=backend) for _ in range(n)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return classifier_head(self.stages(self.stem(to_model_layout(x))), self.fc)


def mgic_resnet56(num_classes: int = 10, group_size: int = 8, coarsest_channels: int = 16, in_channels: int = 3,
                  backend: str = "auto") -> MGICResNet:
    """MGIC-ResNet-56 for CIFAR-10: ResNet-56's 16/32/64 widths and 9 blocks per stage, each an MGIC block
    (the MGIC paper's Table 2 uses s_g = 8, s_c = 16)."""
    return MGICResNet((16, 32, 64), (9, 9, 9), num_classes, in_channels, group_size, coarsest_channels, backend)
