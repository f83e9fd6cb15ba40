"""The convolution's PyTorch custom ops over its launchers (``launch.py``), with fake (meta) registrations so
that ``torch.compile`` traces through them without graph breaks; ``autograd.py`` differentiates them.

padding: [top, left, bottom, right]. Each op is linear in each of its two tensor inputs.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from ..runtime.device_calls import DirectCall, on_input_device
from . import launch
from .geometry import ConvGeometry


def conv_geometry(x_shape, weight_shape, stride, padding, dilation, groups) -> ConvGeometry:
    return ConvGeometry.of(x_shape, weight_shape, stride, padding, dilation, groups)


def _conv2d_launch(x: Tensor, weight: Tensor, bias: Optional[Tensor], other: Optional[Tensor], alpha: float,
                   stride, padding, dilation, groups, geo: ConvGeometry) -> Tensor:
    return launch.conv2d_forward(x, weight, bias, other, alpha, geo)


@on_input_device
def _conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], other: Optional[Tensor], alpha: float,
           stride: List[int], padding: List[int], dilation: List[int], groups: int) -> Tensor:
    """other + alpha * (conv2d(x, weight) + bias) on the Triton kernels (``other`` None: no sum)."""
    geo = conv_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    return _conv2d_launch(x, weight, bias, other, alpha, stride, padding, dilation, groups, geo)


conv2d = torch.library.custom_op("mgiad_kernels::conv2d", _conv2d, mutates_args=())
call_conv2d = DirectCall(conv2d, _conv2d, launch=on_input_device(_conv2d_launch))


@conv2d.register_fake
def _conv2d_fake(x, weight, bias, other, alpha, stride, padding, dilation, groups):
    geo = conv_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    return torch.empty((x.shape[0], weight.shape[0], *geo.out_hw), device=x.device, dtype=x.dtype,
                       memory_format=launch.conv_output_memory_format(x, weight))


def _conv2d_with_adjoint_weight_launch(x: Tensor, weight: Tensor, bias: Optional[Tensor], other: Optional[Tensor],
                                       alpha: float, stride, padding, dilation, groups,
                                       geo: ConvGeometry) -> tuple[Tensor, Tensor]:
    adjoint = launch.empty_adjoint_weight(weight, geo)
    return launch.conv2d_forward(x, weight, bias, other, alpha, geo, adjoint), adjoint


@on_input_device
def _conv2d_with_adjoint_weight(x: Tensor, weight: Tensor, bias: Optional[Tensor], other: Optional[Tensor],
                                alpha: float, stride: List[int], padding: List[int], dilation: List[int],
                                groups: int) -> tuple[Tensor, Tensor]:
    """conv2d, and the weight of its grad input's convolution written by the same launch
    (``launch.adjoint_weight_wanted``), for conv2d_grad_input."""
    geo = conv_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    return _conv2d_with_adjoint_weight_launch(x, weight, bias, other, alpha, stride, padding, dilation, groups, geo)


conv2d_with_adjoint_weight = torch.library.custom_op("mgiad_kernels::conv2d_with_adjoint_weight",
                                                     _conv2d_with_adjoint_weight, mutates_args=())
call_conv2d_with_adjoint_weight = DirectCall(conv2d_with_adjoint_weight, _conv2d_with_adjoint_weight,
                                             launch=on_input_device(_conv2d_with_adjoint_weight_launch))


@conv2d_with_adjoint_weight.register_fake
def _conv2d_with_adjoint_weight_fake(x, weight, bias, other, alpha, stride, padding, dilation, groups):
    geo = conv_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    return (_conv2d_fake(x, weight, bias, other, alpha, stride, padding, dilation, groups),
            launch.empty_adjoint_weight(weight, geo))


def _conv2d_grad_input_launch(grad_y: Tensor, weight: Tensor, adjoint_weight: Optional[Tensor], x_shape,
                              stride, padding, dilation, groups, channels_last: bool, alpha: float,
                              geo: ConvGeometry) -> Tensor:
    return launch.conv2d_grad_input(grad_y, x_shape, weight, geo, _format(channels_last), alpha, adjoint_weight)


@on_input_device
def _conv2d_grad_input(grad_y: Tensor, weight: Tensor, adjoint_weight: Optional[Tensor], x_shape: List[int],
                       stride: List[int], padding: List[int], dilation: List[int], groups: int, channels_last: bool,
                       alpha: float) -> Tensor:
    """alpha * conv_transpose2d(grad_y, weight): the gradient of alpha * conv2d with respect to its input,
    through ``adjoint_weight`` where conv2d_with_adjoint_weight wrote it (None: through ``weight``)."""
    geo = conv_geometry(x_shape, weight.shape, stride, padding, dilation, groups)
    return _conv2d_grad_input_launch(grad_y, weight, adjoint_weight, x_shape, stride, padding, dilation, groups,
                                     channels_last, alpha, geo)


conv2d_grad_input = torch.library.custom_op("mgiad_kernels::conv2d_grad_input", _conv2d_grad_input,
                                            mutates_args=())
call_conv2d_grad_input = DirectCall(conv2d_grad_input, _conv2d_grad_input,
                                    launch=on_input_device(_conv2d_grad_input_launch))


@conv2d_grad_input.register_fake
def _conv2d_grad_input_fake(grad_y, weight, adjoint_weight, x_shape, stride, padding, dilation, groups, channels_last,
                            alpha):
    return torch.empty(x_shape, device=grad_y.device, dtype=grad_y.dtype, memory_format=_format(channels_last))


def _conv2d_grad_weight_launch(grad_y: Tensor, x: Tensor, weight_shape, stride, padding, dilation, groups,
                               weight_channels_last: bool, with_bias: bool, alpha: float,
                               geo: ConvGeometry) -> tuple[Tensor, Tensor]:
    grad_w, grad_b = launch.conv2d_grad_weight(grad_y, x, geo, with_bias, alpha=alpha,
                                               memory_format=_format(weight_channels_last))
    return grad_w, grad_b if grad_b is not None else x.new_empty(0)


@on_input_device
def _conv2d_grad_weight(grad_y: Tensor, x: Tensor, weight_shape: List[int], stride: List[int],
                       padding: List[int], dilation: List[int], groups: int, weight_channels_last: bool,
                       with_bias: bool, alpha: float) -> tuple[Tensor, Tensor]:
    """Gradients of alpha * conv2d with respect to weight (channels_last if ``weight_channels_last``) and
    bias (an empty tensor when not with_bias)."""
    geo = conv_geometry(x.shape, weight_shape, stride, padding, dilation, groups)
    return _conv2d_grad_weight_launch(grad_y, x, weight_shape, stride, padding, dilation, groups,
                                      weight_channels_last, with_bias, alpha, geo)


conv2d_grad_weight = torch.library.custom_op("mgiad_kernels::conv2d_grad_weight", _conv2d_grad_weight,
                                             mutates_args=())
call_conv2d_grad_weight = DirectCall(conv2d_grad_weight, _conv2d_grad_weight,
                                     launch=on_input_device(_conv2d_grad_weight_launch))


@conv2d_grad_weight.register_fake
def _conv2d_grad_weight_fake(grad_y, x, weight_shape, stride, padding, dilation, groups, weight_channels_last,
                             with_bias, alpha):
    return (torch.empty(weight_shape, device=x.device, dtype=x.dtype, memory_format=_format(weight_channels_last)),
            x.new_empty(weight_shape[0] if with_bias else 0))


def _format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


# ---- the fused smoothing step (MGiaD paper eq. 3) ------------------------------------------------------------------
# conv_a / conv_b: [pad_top, pad_left, dil_h, dil_w, groups] of the stride-1, size-preserving A and B.
