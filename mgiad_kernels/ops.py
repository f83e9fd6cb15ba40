"""PyTorch custom ops over the Triton launchers, with fake (meta) and autograd registrations,
so that ``torch.compile`` traces through them without graph breaks."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from . import launchers
from .conv_geometry import ConvGeometry


@torch.library.custom_op("mgiad_kernels::conv2d", mutates_args=())
def conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
           dilation: List[int], groups: int) -> Tensor:
    """Grouped 2-D convolution on the Triton kernels (F.conv2d's semantics, arguments checked)."""
    return launchers.conv2d_forward(x, weight, bias, stride, padding, dilation, groups)


@conv2d.register_fake
def _conv2d_fake(x, weight, bias, stride, padding, dilation, groups):
    geo = ConvGeometry.of(x.shape, weight.shape, stride, padding, dilation, groups)
    return torch.empty((x.shape[0], weight.shape[0], *geo.out_hw), device=x.device, dtype=x.dtype,
                       memory_format=launchers.conv_output_memory_format(x, weight))


@torch.library.custom_op("mgiad_kernels::conv2d_grad_input", mutates_args=())
def conv2d_grad_input(grad_y: Tensor, weight: Tensor, x_shape: List[int], stride: List[int],
                      padding: List[int], dilation: List[int], groups: int, channels_last: bool) -> Tensor:
    """Gradient of conv2d with respect to its input (the transposed convolution)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return launchers.conv2d_grad_input(grad_y, x_shape, weight, stride, padding, dilation, groups, fmt)


@conv2d_grad_input.register_fake
def _conv2d_grad_input_fake(grad_y, weight, x_shape, stride, padding, dilation, groups, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(x_shape, device=grad_y.device, dtype=grad_y.dtype, memory_format=fmt)


@torch.library.custom_op("mgiad_kernels::conv2d_grad_weight", mutates_args=())
def conv2d_grad_weight(grad_y: Tensor, x: Tensor, weight_shape: List[int], stride: List[int],
                       padding: List[int], dilation: List[int], groups: int,
                       with_bias: bool) -> tuple[Tensor, Tensor]:
    """Gradients of conv2d with respect to weight and bias (an empty tensor when with_bias is False)."""
    grad_w, grad_b = launchers.conv2d_grad_weight(grad_y, x, weight_shape, stride, padding, dilation,
                                                  groups, with_bias)
    return grad_w, grad_b if grad_b is not None else x.new_empty(0)


@conv2d_grad_weight.register_fake
def _conv2d_grad_weight_fake(grad_y, x, weight_shape, stride, padding, dilation, groups, with_bias):
    return x.new_empty(weight_shape), x.new_empty(weight_shape[0] if with_bias else 0)


def _conv2d_setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(x, weight)
    ctx.conv_args = (list(stride), list(padding), list(dilation), groups)
    ctx.has_bias = bias is not None
    ctx.x_channels_last = launchers.strides_like_channels_last(x)


def _conv2d_backward(ctx, grad_y):
    x, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    grad_x = grad_w = grad_b = None
    if need_x:
        grad_x = conv2d_grad_input(grad_y, weight, list(x.shape), *ctx.conv_args, ctx.x_channels_last)
    if need_w or need_b:
        grad_w, grad_b = conv2d_grad_weight(grad_y, x, list(weight.shape), *ctx.conv_args,
                                            ctx.has_bias and need_b)
        grad_w = grad_w if need_w else None
        grad_b = grad_b if (ctx.has_bias and need_b) else None
    return grad_x, grad_w, grad_b, None, None, None, None


torch.library.register_autograd("mgiad_kernels::conv2d", _conv2d_backward, setup_context=_conv2d_setup_context)
