"""Multigrid convolution networks (Ke, Maire, Yu, "Multigrid Neural Architectures"; the slides).

A network's state is a pyramid of grids [x_0 (finest), x_1, ...], each half the previous
resolution. A multigrid convolution (mg-conv) gives grid i the concatenation of the
max-pooled finer grid, itself and the nearest-upsampled coarser grid, then conv + BN + ReLU.
The CIFAR-100 networks of the slides' table are built on the VGG / ResNet backbone that
reproduces its VGG-k and RES-k counts exactly: five stages of widths 64, 128, 256, 512, 512,
each followed by 2x2 max-pooling of every grid, and a linear classifier.

Our choices where the slides are silent (weight counts against the table in
docs/param_counts.md): a multigrid pyramid has 3 grids, the finest at the stage width and each
coarser one with half the channels of the one above (a grid at 1x1 is not pooled further);
PMG ("progressive") grows the pyramid by one grid per stage (1, 2, 3, 3, ... grids); a depth d counts conv layers plus the classifier, so plain networks
have d - 1 conv layers and residual ones a stem and (d - 2) / 2 two-layer units, spread over
the stages as evenly as possible (earlier stages first); residual units use parameter-free
shortcuts (zero-padded channels) like RES-k.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mgiad_kernels import check_backend

from .layers import conv3x3, to_model_layout
from .rules import check_int, check_int_tuple

STAGE_WIDTHS = (64, 128, 256, 512, 512)
NETWORKS = ("VGG-6", "VGG-11", "VGG-16", "VGG-21", "MG-6", "MG-11", "MG-16", "MG-21", "PMG-9", "PMG-16", "PMG-30",
            "RES-12", "RES-22", "RES-32", "RES-42", "R-MG-12", "R-MG-22", "R-MG-32", "R-MG-42",
            "R-PMG-16", "R-PMG-30", "R-PMG-44")
_NAME = re.compile(r"^(VGG|MG|PMG|RES|R-MG|R-PMG)-(\d+)$")


class MultigridConv2d(nn.Module):
    """mg-conv over a pyramid: grid i gets conv3x3(cat(maxpool(x_{i-1}), x_i, upsample(x_{i+1}))) + BN + ReLU.

    ``in_channels[i]`` / ``out_channels[i]``: channels of grid i, finest first. The grids'
    resolutions must halve (up to rounding) from one to the next.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int], backend: str = "auto"):
        super().__init__()
        self.in_channels = check_int_tuple("in_channels", in_channels)
        self.out_channels = check_int_tuple("out_channels", out_channels)
        if len(self.in_channels) != len(self.out_channels):
            raise ValueError(f"in_channels and out_channels must have one entry per grid, got "
                             f"{len(self.in_channels)} and {len(self.out_channels)}")
        check_backend(backend)
        grids = len(self.in_channels)
        mixed = [self.in_channels[i] + (self.in_channels[i - 1] if i else 0)
                 + (self.in_channels[i + 1] if i + 1 < grids else 0) for i in range(grids)]
        self.convs = nn.ModuleList(conv3x3(m, c, 1, backend) for m, c in zip(mixed, self.out_channels))
        self.bns = nn.ModuleList(nn.BatchNorm2d(c) for c in self.out_channels)

    def forward(self, pyramid: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(pyramid) != len(self.convs):
            raise ValueError(f"expected a pyramid of {len(self.convs)} grids, got {len(pyramid)}")
        out = []
        for i, x in enumerate(pyramid):
            parts = [x]
            if i:
                parts.insert(0, F.adaptive_max_pool2d(pyramid[i - 1], x.shape[-2:]))
            if i + 1 < len(pyramid):
                parts.append(F.interpolate(pyramid[i + 1], size=x.shape[-2:], mode="nearest"))
            out.append(F.relu(self.bns[i](self.convs[i](torch.cat(parts, 1)))))
        return out


def _pad_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    return x if x.shape[1] == channels else F.pad(x, (0, 0, 0, 0, 0, channels - x.shape[1]))


class MultigridResidualUnit(nn.Module):
    """Residual multigrid unit: x_i + mg-conv(mg-conv(x))_i per grid, channels zero-padded where they grow."""

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int], backend: str = "auto"):
        super().__init__()
        self.first = MultigridConv2d(in_channels, out_channels, backend)
        self.second = MultigridConv2d(out_channels, out_channels, backend)
        if any(o < i for i, o in zip(self.first.in_channels, self.first.out_channels)):
            raise ValueError("a residual multigrid unit cannot shrink a grid's channels (its shortcut pads)")

    def forward(self, pyramid: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out = self.second(self.first(pyramid))
        return [_pad_channels(x, y.shape[1]) + y for x, y in zip(pyramid, out)]


def _pool(grid: torch.Tensor) -> torch.Tensor:
    """2x2 max-pooling; a grid already 1x1 in a dimension stays so (coarse grids bottom out at 1x1)."""
    kernel = tuple(2 if size > 1 else 1 for size in grid.shape[-2:])
    return F.max_pool2d(grid, kernel, kernel, ceil_mode=True)


def _spread(total: int, stages: int) -> list[int]:
    return [total // stages + (1 if s < total % stages else 0) for s in range(stages)]


class MultigridNet(nn.Module):
    """A VGG / ResNet-style CIFAR network over a pyramid of grids (see the module docstring)."""

    def __init__(self, family: str, depth: int, num_classes: int = 100, in_channels: int = 3,
                 stage_widths: Sequence[int] = STAGE_WIDTHS, backend: str = "auto"):
        super().__init__()
        check_backend(backend)
        check_int("num_classes", num_classes)
        check_int("in_channels", in_channels)
        if not _NAME.match(f"{family}-{depth}"):
            raise ValueError(f"family must be one of VGG, MG, PMG, RES, R-MG, R-PMG and depth a positive int, "
                             f"got {family!r} and {depth!r}")
        stage_widths = check_int_tuple("stage_widths", stage_widths)
        residual = family in ("RES", "R-MG", "R-PMG")
        multigrid = family not in ("VGG", "RES")
        progressive = family in ("PMG", "R-PMG")
        layers = (depth - 2) // 2 if residual else depth - 1
        if layers < len(stage_widths) or (residual and depth % 2):
            raise ValueError(f"{family}-{depth} is too shallow or has the wrong parity for {len(stage_widths)} "
                             f"stages; the slides' networks are {', '.join(NETWORKS)}")
        self.family, self.depth, self.residual = family, depth, residual
        self.stages = nn.ModuleList()
        self.grids_per_stage = []
        prev = None
        stem_grids = None
        for s, (width, count) in enumerate(zip(stage_widths, _spread(layers, len(stage_widths)))):
            grids = 1 if not multigrid else (min(s + 1, 3) if progressive else 3)
            channels = [width] if not multigrid else [max(1, width >> g) for g in range(grids)]
            if prev is None:
                stem_grids = grids
                prev = [in_channels] * grids
                if residual:  # the stem: one mg-conv from the image pyramid
                    self.stem = MultigridConv2d(prev, channels, backend)
                    prev = channels
            prev = self._match_grids(prev, grids)
            block = MultigridResidualUnit if residual else MultigridConv2d
            units = []
            for _ in range(count):
                units.append(block(prev, channels, backend))
                prev = channels
            self.stages.append(nn.ModuleList(units))
            self.grids_per_stage.append(grids)
        self.stem_grids = stem_grids
        self.fc = nn.Linear(sum(prev), num_classes)

    @staticmethod
    def _match_grids(channels: list[int], grids: int) -> list[int]:
        """Channels after the pyramid gains grids between stages (a new coarse grid is the coarsest one, pooled)."""
        return channels + [channels[-1]] * (grids - len(channels))

    @staticmethod
    def _resize_pyramid(pyramid: list[torch.Tensor], grids: int) -> list[torch.Tensor]:
        while len(pyramid) < grids:
            pyramid.append(_pool(pyramid[-1]))
        return pyramid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_model_layout(x)
        pyramid = self._resize_pyramid([x], self.stem_grids)
        if self.residual:
            pyramid = self.stem(pyramid)
        for s, units in enumerate(self.stages):
            pyramid = self._resize_pyramid(pyramid, self.grids_per_stage[s])
            for unit in units:
                pyramid = unit(pyramid)
            pyramid = [_pool(g) for g in pyramid]
        return self.fc(torch.cat([g.mean((2, 3)) for g in pyramid], 1))


def multigrid_net(name: str, num_classes: int = 100, in_channels: int = 3, backend: str = "auto") -> MultigridNet:
    """A network of the slides' CIFAR-100 table by name: VGG-k, MG-k, PMG-k, RES-k, R-MG-k or R-PMG-k."""
    if not isinstance(name, str) or name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; the slides' CIFAR-100 table has {', '.join(NETWORKS)}")
    family, depth = _NAME.match(name).groups()
    return MultigridNet(family, int(depth), num_classes, in_channels, backend=backend)
