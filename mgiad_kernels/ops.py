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
                      padding: List[int], dilation: List[int], groups: int, channels_last: bool,
                      negate: bool) -> Tensor:
    """Gradient of conv2d with respect to its input (the transposed convolution), negated if ``negate``."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return launchers.conv2d_grad_input(grad_y, x_shape, weight, stride, padding, dilation, groups, fmt, negate)


@conv2d_grad_input.register_fake
def _conv2d_grad_input_fake(grad_y, weight, x_shape, stride, padding, dilation, groups, channels_last, negate):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(x_shape, device=grad_y.device, dtype=grad_y.dtype, memory_format=fmt)


@torch.library.custom_op("mgiad_kernels::conv2d_grad_weight", mutates_args=())
def conv2d_grad_weight(grad_y: Tensor, x: Tensor, weight_shape: List[int], stride: List[int],
                       padding: List[int], dilation: List[int], groups: int,
                       with_bias: bool, negate: bool) -> tuple[Tensor, Tensor]:
    """Gradients of conv2d with respect to weight and bias (an empty tensor when with_bias is False),
    negated if ``negate``."""
    grad_w, grad_b = launchers.conv2d_grad_weight(grad_y, x, weight_shape, stride, padding, dilation,
                                                  groups, with_bias, negate=negate)
    return grad_w, grad_b if grad_b is not None else x.new_empty(0)


@conv2d_grad_weight.register_fake
def _conv2d_grad_weight_fake(grad_y, x, weight_shape, stride, padding, dilation, groups, with_bias, negate):
    return x.new_empty(weight_shape), x.new_empty(weight_shape[0] if with_bias else 0)


def _conv2d_setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(x, weight)
    ctx.conv_args = (list(stride), list(padding), list(dilation), groups)
    ctx.has_bias = bias is not None
    ctx.x_channels_last = launchers.strides_like_channels_last(x)
    ctx.negate = False


def _conv2d_grads(ctx, grad_y, need_x, need_w, need_b):
    """grad x, weight, bias of a (possibly negated) conv2d, each None where not needed."""
    x, weight = ctx.saved_tensors
    grad_x = grad_w = grad_b = None
    if need_x:
        grad_x = conv2d_grad_input(grad_y, weight, list(x.shape), *ctx.conv_args, ctx.x_channels_last, ctx.negate)
    if need_w or need_b:
        grad_w, grad_b = conv2d_grad_weight(grad_y, x, list(weight.shape), *ctx.conv_args,
                                            ctx.has_bias and need_b, ctx.negate)
        grad_w = grad_w if need_w else None
        grad_b = grad_b if (ctx.has_bias and need_b) else None
    return grad_x, grad_w, grad_b


def _conv2d_backward(ctx, grad_y):
    return (*_conv2d_grads(ctx, grad_y, *ctx.needs_input_grad[:3]), None, None, None, None)


torch.library.register_autograd("mgiad_kernels::conv2d", _conv2d_backward, setup_context=_conv2d_setup_context)


@torch.library.custom_op("mgiad_kernels::conv2d_residual", mutates_args=())
def conv2d_residual(x: Tensor, weight: Tensor, bias: Optional[Tensor], other: Tensor, subtract: bool,
                    stride: List[int], padding: List[int], dilation: List[int], groups: int) -> Tensor:
    """other - conv2d(x) if ``subtract`` else other + conv2d(x), the sum in the convolution's epilogue."""
    return launchers.conv2d_residual_forward(x, weight, bias, other, subtract, stride, padding, dilation, groups)


@conv2d_residual.register_fake
def _conv2d_residual_fake(x, weight, bias, other, subtract, stride, padding, dilation, groups):
    return _conv2d_fake(x, weight, bias, stride, padding, dilation, groups)


def _conv2d_residual_setup_context(ctx, inputs, output):
    x, weight, bias, _, subtract, stride, padding, dilation, groups = inputs
    _conv2d_setup_context(ctx, (x, weight, bias, stride, padding, dilation, groups), output)
    ctx.negate = subtract


def _conv2d_residual_backward(ctx, grad_y):
    need_x, need_w, need_b, need_other = ctx.needs_input_grad[:4]
    grad_x, grad_w, grad_b = _conv2d_grads(ctx, grad_y, need_x, need_w, need_b)
    return grad_x, grad_w, grad_b, grad_y if need_other else None, None, None, None, None, None


torch.library.register_autograd("mgiad_kernels::conv2d_residual", _conv2d_residual_backward,
                                setup_context=_conv2d_residual_setup_context)


# ---- the fused smoothing step (MGiaD paper eq. 3) ------------------------------------------------------------------
# conv_a / conv_b: [pad_h, pad_w, dil_h, dil_w, groups] of the stride-1, size-preserving A and B.

def _geometry(u_shape, weight: Tensor, conv: List[int]) -> ConvGeometry:
    return ConvGeometry.of(u_shape, weight.shape, (1, 1), conv[0:2], conv[2:4], conv[4])


def _activation_fake(u: Tensor, weight_a: Tensor) -> Tensor:
    return torch.empty(u.shape, device=u.device, dtype=u.dtype,
                       memory_format=launchers.conv_output_memory_format(u, weight_a))


@torch.library.custom_op("mgiad_kernels::smoothing_step", mutates_args=())
def smoothing_step(u: Tensor, f: Tensor, weight_a: Tensor, bias_a: Optional[Tensor], weight_b: Tensor,
                   bias_b: Optional[Tensor], bn1_weight: Tensor, bn1_bias: Tensor, bn2_weight: Tensor,
                   bn2_bias: Tensor, running_mean1: Tensor, running_var1: Tensor, running_mean2: Tensor,
                   running_var2: Tensor, conv_a: List[int], conv_b: List[int], eps1: float, eps2: float,
                   batch_stats: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """u + relu(bn2(B(relu(bn1(f - A u))))), differentiable; also returns r, s and the statistics used.

    ``batch_stats``: normalize with the batch's statistics (training); the running ones are then
    not read (update them with update_running_stats_). Else normalize with the running ones.
    """
    running = None if batch_stats else (running_mean1, running_var1, running_mean2, running_var2)
    return launchers.smoothing_step_forward(
        u, f, weight_a, bias_a, _geometry(u.shape, weight_a, conv_a), weight_b, bias_b,
        _geometry(u.shape, weight_b, conv_b), (bn1_weight, bn1_bias), (bn2_weight, bn2_bias), (eps1, eps2), running)


@smoothing_step.register_fake
def _smoothing_step_fake(u, f, weight_a, bias_a, weight_b, bias_b, bn1_weight, bn1_bias, bn2_weight, bn2_bias,
                         running_mean1, running_var1, running_mean2, running_var2, conv_a, conv_b, eps1, eps2,
                         batch_stats):
    stats = u.new_empty((4, u.shape[1]), dtype=torch.float32)
    return _activation_fake(u, weight_a), _activation_fake(u, weight_a), _activation_fake(u, weight_a), stats


@torch.library.custom_op("mgiad_kernels::smoothing_step_backward", mutates_args=())
def smoothing_step_backward(grad_out: Tensor, u: Tensor, weight_a: Tensor, weight_b: Tensor, r: Tensor, s: Tensor,
                            stats: Tensor, bn1_weight: Tensor, bn1_bias: Tensor, bn2_weight: Tensor,
                            bn2_bias: Tensor, conv_a: List[int], conv_b: List[int], eps1: float, eps2: float,
                            batch_stats: bool, has_bias_a: bool, has_bias_b: bool, need_weight_a: bool,
                            need_weight_b: bool) -> List[Tensor]:
    """Gradients of smoothing_step: [u, f, weight_a, bias_a, weight_b, bias_b, bn1, bn2].

    bn1, bn2: (2, C) fp32, the gradients of beta (row 0) and gamma (row 1). A gradient that was
    not asked for (a missing bias, a weight not requiring grad) is an empty tensor.
    """
    grads = launchers.smoothing_step_backward(
        grad_out, u, weight_a, _geometry(u.shape, weight_a, conv_a), weight_b, _geometry(u.shape, weight_b, conv_b),
        r, s, stats, (bn1_weight, bn1_bias), (bn2_weight, bn2_bias), (eps1, eps2), batch_stats,
        (has_bias_a, has_bias_b), (need_weight_a, need_weight_b))
    return [g if g is not None else u.new_empty(0) for g in grads]


@smoothing_step_backward.register_fake
def _smoothing_step_backward_fake(grad_out, u, weight_a, weight_b, r, s, stats, bn1_weight, bn1_bias, bn2_weight,
                                  bn2_bias, conv_a, conv_b, eps1, eps2, batch_stats, has_bias_a, has_bias_b,
                                  need_weight_a, need_weight_b):
    channels = u.shape[1]
    empty = u.new_empty(0)
    return [_activation_fake(u, weight_a), _activation_fake(u, weight_a),
            weight_a.new_empty(weight_a.shape) if need_weight_a else empty,
            u.new_empty(channels) if need_weight_a and has_bias_a else empty,
            weight_b.new_empty(weight_b.shape) if need_weight_b else empty,
            u.new_empty(channels) if need_weight_b and has_bias_b else empty,
            u.new_empty((2, channels), dtype=torch.float32), u.new_empty((2, channels), dtype=torch.float32)]


def _smoothing_step_setup_context(ctx, inputs, output):
    (u, f, weight_a, bias_a, weight_b, bias_b, bn1_weight, bn1_bias, bn2_weight, bn2_bias,
     _, _, _, _, conv_a, conv_b, eps1, eps2, batch_stats) = inputs
    _, r, s, stats = output
    ctx.save_for_backward(u, weight_a, weight_b, r, s, stats, bn1_weight, bn1_bias, bn2_weight, bn2_bias)
    ctx.args = (list(conv_a), list(conv_b), eps1, eps2, batch_stats, bias_a is not None, bias_b is not None)
    ctx.mark_non_differentiable(r, s, stats)


def _smoothing_step_autograd(ctx, grad_out, _grad_r, _grad_s, _grad_stats):
    u, weight_a, weight_b, r, s, stats, bn1_weight, bn1_bias, bn2_weight, bn2_bias = ctx.saved_tensors
    conv_a, conv_b, eps1, eps2, batch_stats, has_bias_a, has_bias_b = ctx.args
    need = ctx.needs_input_grad
    grads = smoothing_step_backward(
        grad_out, u, weight_a, weight_b, r, s, stats, bn1_weight, bn1_bias, bn2_weight, bn2_bias, conv_a, conv_b,
        eps1, eps2, batch_stats, has_bias_a, has_bias_b, need[2] or need[3], need[4] or need[5])
    grad_u, grad_f, grad_wa, grad_ba, grad_wb, grad_bb, grad_bn1, grad_bn2 = grads
    return (grad_u if need[0] else None, grad_f if need[1] else None,
            grad_wa if need[2] else None, grad_ba if has_bias_a and need[3] else None,
            grad_wb if need[4] else None, grad_bb if has_bias_b and need[5] else None,
            grad_bn1[1].to(bn1_weight.dtype), grad_bn1[0].to(bn1_bias.dtype),
            grad_bn2[1].to(bn2_weight.dtype), grad_bn2[0].to(bn2_bias.dtype),
            None, None, None, None, None, None, None, None, None)


torch.library.register_autograd("mgiad_kernels::smoothing_step", _smoothing_step_autograd,
                                setup_context=_smoothing_step_setup_context)


@torch.library.custom_op("mgiad_kernels::smoothing_step_inference", mutates_args=())
def smoothing_step_inference(u: Tensor, f: Tensor, weight_a: Tensor, bias_a: Optional[Tensor], weight_b: Tensor,
                             bias_b: Optional[Tensor], bn1_weight: Tensor, bn1_bias: Tensor, bn2_weight: Tensor,
                             bn2_bias: Tensor, running_mean1: Tensor, running_var1: Tensor, running_mean2: Tensor,
                             running_var2: Tensor, conv_a: List[int], conv_b: List[int], eps1: float,
                             eps2: float) -> Tensor:
    """Eval-mode smoothing step, BatchNorm folded into the two convolutions: two launches, no autograd."""
    return launchers.smoothing_step_inference(
        u, f, weight_a, bias_a, _geometry(u.shape, weight_a, conv_a), weight_b, bias_b,
        _geometry(u.shape, weight_b, conv_b),
        launchers.BatchNormArgs(running_mean1, running_var1, bn1_weight, bn1_bias, eps1),
        launchers.BatchNormArgs(running_mean2, running_var2, bn2_weight, bn2_bias, eps2))


@smoothing_step_inference.register_fake
def _smoothing_step_inference_fake(u, f, weight_a, bias_a, weight_b, bias_b, *args):
    return _activation_fake(u, weight_a)


@torch.library.custom_op("mgiad_kernels::update_running_stats_",
                         mutates_args=("running_mean1", "running_var1", "running_mean2", "running_var2",
                                       "num_batches1", "num_batches2"))
def update_running_stats_(running_mean1: Tensor, running_var1: Tensor, running_mean2: Tensor, running_var2: Tensor,
                          num_batches1: Tensor, num_batches2: Tensor, batch_stats: Tensor, momentum: Optional[float],
                          count: int) -> None:
    """Both BatchNorms' running statistics from smoothing_step's batch statistics, as nn.BatchNorm2d does."""
    launchers.update_running_stats((running_mean1, running_var1, running_mean2, running_var2),
                                   (num_batches1, num_batches2), batch_stats, momentum, count)
