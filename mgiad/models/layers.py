"""Layers every model is built from: grouped 3x3 and 1x1 convolutions, the stem, the head, the layout.

The models' convolution weights are channels_last from construction, as ``model.to(memory_format=
torch.channels_last)`` would make them: the kernels' variants for channels_last weights are the tuned ones, and
a model used as constructed (``MGiaD(backend="triton").cuda()`` in a user's own loop) launches the same kernels
as under ``mgiad train``. The values, the initialization and the state_dict are those of a contiguous weight;
``.to()``, ``.cuda()``, ``copy.deepcopy`` and ``load_state_dict`` keep the layout (they preserve memory format).
"""
from __future__ import annotations

import torch
from torch import nn

from mgiad_kernels import GroupedConv2d


def channels_last_weight(conv: nn.Conv2d) -> nn.Conv2d:
    """``conv`` with its weight's storage re-laid channels_last in place (same Parameter, same values)."""
    conv.weight.data = conv.weight.data.to(memory_format=torch.channels_last)
    return conv


def conv3x3(c_in: int, c_out: int, groups: int, backend: str, stride: int = 1) -> GroupedConv2d:
    return channels_last_weight(GroupedConv2d(c_in, c_out, 3, stride=stride, padding=1, groups=groups, bias=False,
                                              backend=backend))


def conv1x1(c_in: int, c_out: int, groups: int, backend: str, stride: int = 1) -> GroupedConv2d:
    return channels_last_weight(GroupedConv2d(c_in, c_out, 1, stride=stride, groups=groups, bias=False,
                                              backend=backend))


def stem(in_channels: int, channels: int, backend: str) -> nn.Sequential:
    """3x3 conv + BN + ReLU: the data f of the first level (MgNet convention)."""
    return nn.Sequential(conv3x3(in_channels, channels, 1, backend), nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


def classifier_head(u: torch.Tensor, fc: nn.Linear) -> torch.Tensor:
    return fc(torch.flatten(nn.functional.adaptive_avg_pool2d(u, 1), 1))


def to_model_layout(x: torch.Tensor) -> torch.Tensor:
    """Activations stay channels_last inside the models on a GPU (the kernels' fast layout)."""
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x
