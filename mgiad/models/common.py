"""Building blocks shared by the models."""
from __future__ import annotations

import torch
from torch import nn

from mgiad_kernels import FASRestriction, GroupedConv2d


def conv3x3(c_in: int, c_out: int, groups: int, backend: str, stride: int = 1) -> GroupedConv2d:
    return GroupedConv2d(c_in, c_out, 3, stride=stride, padding=1, groups=groups, bias=False, backend=backend)


def conv1x1(c_in: int, c_out: int, groups: int, backend: str, stride: int = 1) -> GroupedConv2d:
    return GroupedConv2d(c_in, c_out, 1, stride=stride, groups=groups, bias=False, backend=backend)


def stem(in_channels: int, channels: int, backend: str) -> nn.Sequential:
    """3x3 conv + BN + ReLU: the data f of the first level (MgNet convention)."""
    return nn.Sequential(conv3x3(in_channels, channels, 1, backend), nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class ResolutionTransfer(FASRestriction):
    """Learnable depthwise 3x3 stride-2 Pi (features) and R (residual data) between resolution levels.

    MGiaD paper eq. (4)-(7): u_{l+1} = Pi(u_l), f_{l+1} = R(f_l - A_l(u_l)) + A_{l+1}(u_{l+1}),
    fused by mgiad_kernels.fas_restriction. groups = c_in, so a width that grows has channel
    multiplier c_out / c_in.
    """

    def __init__(self, c_in: int, c_out: int, backend: str):
        if c_out % c_in:
            raise ValueError(f"a resolution level's width {c_out} must be a multiple of the previous one {c_in}")
        super().__init__(conv3x3(c_in, c_out, c_in, backend, stride=2), conv3x3(c_in, c_out, c_in, backend, stride=2),
                         backend)


class FASNetwork(nn.Module):
    """The skeleton MgNet, MGiaD and Poly-MgNet share (MGiaD paper Alg. 1 and 3): a stem makes the
    data f, u starts at zero, each resolution level smooths (u, f), FAS transfers connect the levels,
    and a pooled linear head reads u. Subclasses call ``build_skeleton`` with a factory of their
    levels (each exposing ``.A``), built after the stem so parameters initialise in module order."""

    def build_skeleton(self, in_channels: int, widths, make_levels, num_classes: int, backend: str) -> None:
        self.stem = stem(in_channels, widths[0], backend)
        self.levels = nn.ModuleList(make_levels())
        self.transfers = nn.ModuleList(ResolutionTransfer(a, b, backend) for a, b in zip(widths, widths[1:]))
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stem(to_model_layout(x))
        u = torch.zeros_like(f)  # Alg. 3 line 1
        for i, level in enumerate(self.levels):
            if i:  # lines 4-5: u = Pi(u), f = R(f - A u) + A_next(u)
                u, f = self.transfers[i - 1](u, f, self.levels[i - 1].A, level.A)
            u = level(u, f)  # line 3
        return classifier_head(u, self.fc)


def classifier_head(u: torch.Tensor, fc: nn.Linear) -> torch.Tensor:
    return fc(torch.flatten(nn.functional.adaptive_avg_pool2d(u, 1), 1))


def to_model_layout(x: torch.Tensor) -> torch.Tensor:
    """Activations stay channels_last inside the models on a GPU (the kernels' fast layout)."""
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x


def check_int_tuple(value, name: str) -> tuple[int, ...]:
    if isinstance(value, int) or not hasattr(value, "__len__") or len(value) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {value!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise ValueError(f"{name} must hold positive ints, got {value!r}")
    return tuple(value)


def check_model_args(num_classes, in_channels, widths, smoothing_steps) -> tuple[tuple[int, ...], tuple[int, ...]]:
    for name, v in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    widths = check_int_tuple(widths, "widths")
    steps = check_int_tuple(smoothing_steps, "smoothing_steps")
    if len(steps) != len(widths):
        raise ValueError(f"smoothing_steps must have one entry per level: {len(widths)} widths, got {len(steps)} "
                         f"steps {steps}")
    return widths, steps
