"""Argument checking and shape arithmetic for 2-D convolutions, shared by every layer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch

IntPair = Union[int, Sequence[int]]


def as_pair(value, name: str, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints, each at least ``minimum``, as a tuple; else a clear error."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        pair = (value, value)
    elif isinstance(value, (tuple, list, torch.Size)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")
    return pair


def resolve_padding(padding, kernel_hw: tuple[int, int], stride: tuple[int, int],
                    dilation: tuple[int, int]) -> tuple[int, int]:
    """F.conv2d's padding: an int, a pair, 'valid', or 'same' (stride 1, symmetric padding only)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' needs stride 1, got stride={stride}")
            total = [d * (k - 1) for d, k in zip(dilation, kernel_hw)]
            if any(t % 2 for t in total):
                raise ValueError(
                    f"padding='same' with kernel {kernel_hw} and dilation {dilation} needs asymmetric "
                    "padding, which grouped_conv2d does not support; pad the input explicitly")
            return (total[0] // 2, total[1] // 2)
        raise ValueError(f"padding must be an int, a pair of ints, 'valid' or 'same', got {padding!r}")
    return as_pair(padding, "padding", 0)


@dataclass(frozen=True)
class ConvGeometry:
    """Sizes of one grouped convolution: what every kernel launch needs to know."""

    in_channels: int
    out_channels: int
    groups: int
    kernel_h: int
    kernel_w: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    out_hw: tuple[int, int]

    @property
    def in_per_group(self) -> int:
        return self.in_channels // self.groups

    @property
    def out_per_group(self) -> int:
        return self.out_channels // self.groups

    @staticmethod
    def of(x_shape: Sequence[int], weight_shape: Sequence[int], stride: Sequence[int],
           padding: Sequence[int], dilation: Sequence[int], groups: int) -> "ConvGeometry":
        _, c_in, h, w = x_shape
        c_out, _, kh, kw = weight_shape
        h_out = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        w_out = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        return ConvGeometry(c_in, c_out, groups, kh, kw, tuple(stride), tuple(padding), tuple(dilation),
                            (h_out, w_out))


def check_conv_args(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride,
                    padding, dilation, groups) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Validate F.conv2d-style arguments; return (stride, padding, dilation) as pairs."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if x.dim() != 4:
        raise ValueError(f"input must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"weight must be 4-D (C_out, C_in // groups, KH, KW), got shape {tuple(weight.shape)}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    c_in, c_out = x.shape[1], weight.shape[0]
    if c_in % groups:
        raise ValueError(f"groups={groups} must divide the input channels C_in={c_in}")
    if c_out % groups:
        raise ValueError(f"groups={groups} must divide the output channels C_out={c_out} (weight.shape[0])")
    if weight.shape[1] != c_in // groups:
        raise ValueError(
            f"weight.shape[1] must be C_in // groups = {c_in} // {groups} = {c_in // groups}, "
            f"got weight of shape {tuple(weight.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got dtype {x.dtype}")
    if weight.dtype != x.dtype:
        raise TypeError(f"weight dtype {weight.dtype} must match input dtype {x.dtype}")
    if weight.device != x.device:
        raise ValueError(f"weight is on {weight.device} but input is on {x.device}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if bias.shape != (c_out,):
            raise ValueError(f"bias must have shape ({c_out},) to match C_out, got {tuple(bias.shape)}")
        if bias.dtype != x.dtype:
            raise TypeError(f"bias dtype {bias.dtype} must match input dtype {x.dtype}")
        if bias.device != x.device:
            raise ValueError(f"bias is on {bias.device} but input is on {x.device}")
    stride_pair = as_pair(stride, "stride", 1)
    dilation_pair = as_pair(dilation, "dilation", 1)
    padding_pair = resolve_padding(padding, (weight.shape[2], weight.shape[3]), stride_pair, dilation_pair)
    geo = ConvGeometry.of(x.shape, weight.shape, stride_pair, padding_pair, dilation_pair, groups)
    if min(geo.out_hw) < 1:
        raise ValueError(
            f"input spatial size {tuple(x.shape[2:])} is too small for kernel {tuple(weight.shape[2:])} "
            f"with padding {padding_pair} and dilation {dilation_pair}")
    return stride_pair, padding_pair, dilation_pair
