"""nn.Module front ends of the ops."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backend import check_backend
from .functional import grouped_conv2d


class GroupedConv2d(nn.Conv2d):
    """Drop-in ``nn.Conv2d`` (same arguments, parameters and state_dict) running on ``backend``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None,
                 backend: str = "auto"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self.backend = check_backend(backend)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return grouped_conv2d(input, self.weight, self.bias, self.stride, padding, self.dilation, self.groups,
                              backend=self.backend)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend!r}"
