"""The fused smoothing step's PyTorch custom ops over its launchers (``launch.py``), with fake (meta)
registrations so that ``torch.compile`` traces through them, and its autograd (SmoothingStepFunction).

conv_a / conv_b: [pad_top, pad_left, dil_h, dil_w, groups] of the stride-1, size-preserving A and B.
"""
from __future__ import annotations

import inspect
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..conv import launch as conv_launch
from ..conv.geometry import ConvGeometry
from ..runtime.device_calls import DirectCall, on_input_device
from . import launch


def _geometry(u_shape, weight: Tensor, conv: List[int]) -> ConvGeometry:
    """conv: [pad_top, pad_left, dil_h, dil_w, groups] of a size-preserving stride-1 convolution."""
    kh, kw = weight.shape[2:]
    top, left, dil_h, dil_w, groups = conv
    padding = (top, left, dil_h * (kh - 1) - top, dil_w * (kw - 1) - left)
    return ConvGeometry.of(u_shape, weight.shape, (1, 1), padding, (dil_h, dil_w), groups)


def _activation_fake(u: Tensor, weight_a: Tensor, intermediate: bool = False) -> Tensor:
    """An activation as the step's launchers allocate it: an output or a gradient (F.conv2d's memory-format rule on
    u and weight_a), or an ``intermediate`` (launch.intermediate_memory_format)."""
    memory_format = (launch.intermediate_memory_format(u, weight_a) if intermediate
                     else conv_launch.conv_output_memory_format(u, weight_a))
    return torch.empty(u.shape, device=u.device, dtype=u.dtype, memory_format=memory_format)


@on_input_device
def _smoothing_step(u: Tensor, f: Tensor, weight_a: Tensor, bias_a: Optional[Tensor], weight_b: Tensor,
                   bias_b: Optional[Tensor], bn1_weight: Tensor, bn1_bias: Tensor, bn2_weight: Tensor,
                   bn2_bias: Tensor, running_mean1: Tensor, running_var1: Tensor, running_mean2: Tensor,
                   running_var2: Tensor, num_batches1: Tensor, num_batches2: Tensor, conv_a: List[int],
                   conv_b: List[int], eps1: float, eps2: float, batch_stats: bool,
                   momentum: Optional[float], adjoint_weights: bool
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """u + relu(bn2(B(relu(bn1(f - A u))))); also returns r, s, the statistics used, t = relu(bn1(r))
    (empty unless ``launch.materializes_t``: 16-bit) and A's and B's adjoint weights (empty unless
    ``adjoint_weights`` and ``conv_launch.adjoint_weight_wanted``: fp32), which smoothing_step_backward
    reads (SmoothingStepFunction differentiates the pair).

    ``batch_stats``: normalize with the batch's statistics (training) and update both BatchNorms'
    running statistics and num_batches_tracked with ``momentum`` as nn.BatchNorm2d does (in the
    kernels that merge the moments). Else normalize with the running ones, and mutate nothing.
    """
    geo_a, geo_b = _geometry(u.shape, weight_a, conv_a), _geometry(u.shape, weight_b, conv_b)
    if batch_stats:
        count = u.shape[0] * u.shape[2] * u.shape[3]
        updates = (conv_launch.RunningStatsUpdate(running_mean1, running_var1, num_batches1, momentum, count),
                   conv_launch.RunningStatsUpdate(running_mean2, running_var2, num_batches2, momentum, count))
        return launch.smoothing_step_forward(u, f, weight_a, bias_a, geo_a, weight_b, bias_b, geo_b,
                                                (bn1_weight, bn1_bias), (bn2_weight, bn2_bias), (eps1, eps2),
                                                None, updates, adjoint_weights)
    return launch.smoothing_step_forward(u, f, weight_a, bias_a, geo_a, weight_b, bias_b, geo_b,
                                            (bn1_weight, bn1_bias), (bn2_weight, bn2_bias), (eps1, eps2),
                                            (running_mean1, running_var1, running_mean2, running_var2),
                                            adjoint_weights=adjoint_weights)


_SMOOTHING_STEP_MUTATES = ("running_mean1", "running_var1", "running_mean2", "running_var2", "num_batches1",
                           "num_batches2")
smoothing_step = torch.library.custom_op("mgiad_kernels::smoothing_step", _smoothing_step,
                                         mutates_args=_SMOOTHING_STEP_MUTATES)
call_smoothing_step = DirectCall(smoothing_step, _smoothing_step, mutated=tuple(
    i for i, name in enumerate(inspect.signature(_smoothing_step).parameters) if name in _SMOOTHING_STEP_MUTATES))


@smoothing_step.register_fake
def _smoothing_step_fake(u, f, weight_a, bias_a, weight_b, bias_b, bn1_weight, bn1_bias, bn2_weight, bn2_bias,
                         running_mean1, running_var1, running_mean2, running_var2, num_batches1, num_batches2,
                         conv_a, conv_b, eps1, eps2, batch_stats, momentum, adjoint_weights):
    stats = u.new_empty((4, u.shape[1]), dtype=torch.float32)
    t = _activation_fake(u, weight_a, intermediate=True) if launch.materializes_t(u.dtype) else u.new_empty(0)
    if adjoint_weights and conv_launch.adjoint_weight_wanted(u.dtype):
        adjoints = [conv_launch.empty_adjoint_weight(w, _geometry(u.shape, w, conv))
                    for w, conv in ((weight_a, conv_a), (weight_b, conv_b))]
    else:
        adjoints = [u.new_empty(0), u.new_empty(0)]
    return (_activation_fake(u, weight_a), _activation_fake(u, weight_a, intermediate=True),
            _activation_fake(u, weight_a, intermediate=True), stats, t, *adjoints)


@on_input_device
def _smoothing_step_backward(grad_out: Tensor, u: Tensor, weight_a: Tensor, weight_b: Tensor, r: Tensor, s: Tensor,
                            t: Tensor, adjoint_a: Tensor, adjoint_b: Tensor, stats: Tensor, bn1_weight: Tensor,
                            bn1_bias: Tensor, bn2_weight: Tensor,
                            bn2_bias: Tensor, conv_a: List[int], conv_b: List[int], eps1: float, eps2: float,
                            batch_stats: bool, has_bias_a: bool, has_bias_b: bool, need_weight_a: bool,
                            need_weight_b: bool, carried: List[Optional[Tensor]]) -> List[Tensor]:
    """Gradients of smoothing_step: [u, f, weight_a, bias_a, weight_b, bias_b, bn1, bn2].

    bn1, bn2: (2, C) fp32, the gradients of beta (row 0) and gamma (row 1). A gradient that was
    not asked for (a missing bias, a weight not requiring grad) is an empty tensor. ``carried``: the
    gradients of (f, weight_a, bias_a, weight_b, bias_b) from up to two other uses (5 entries each, None
    where a use had none), added to the step's own in the kernels.
    """
    grads = launch.smoothing_step_backward(
        grad_out, u, weight_a, _geometry(u.shape, weight_a, conv_a), weight_b, _geometry(u.shape, weight_b, conv_b),
        r, s, t, stats, (bn1_weight, bn1_bias), (bn2_weight, bn2_bias), (eps1, eps2), batch_stats,
        (has_bias_a, has_bias_b), (need_weight_a, need_weight_b),
        [carried[i:i + 5] for i in range(0, len(carried), 5)], (adjoint_a, adjoint_b))
    return [g if g is not None else u.new_empty(0) for g in grads]


smoothing_step_backward = torch.library.custom_op("mgiad_kernels::smoothing_step_backward",
                                                  _smoothing_step_backward, mutates_args=())
call_smoothing_step_backward = DirectCall(smoothing_step_backward, _smoothing_step_backward)


@smoothing_step_backward.register_fake
def _smoothing_step_backward_fake(grad_out, u, weight_a, weight_b, r, s, t, adjoint_a, adjoint_b, stats,
                                  bn1_weight, bn1_bias, bn2_weight, bn2_bias, conv_a, conv_b, eps1, eps2, batch_stats,
                                  has_bias_a, has_bias_b,
                                  need_weight_a, need_weight_b, carried):
    channels = u.shape[1]
    empty = u.new_empty(0)
    return [_activation_fake(u, weight_a), _activation_fake(u, weight_a),
            _weight_like(weight_a) if need_weight_a else empty,
            u.new_empty(channels) if need_weight_a and has_bias_a else empty,
            _weight_like(weight_b) if need_weight_b else empty,
            u.new_empty(channels) if need_weight_b and has_bias_b else empty,
            u.new_empty((2, channels), dtype=torch.float32), u.new_empty((2, channels), dtype=torch.float32)]


def _weight_like(weight: Tensor) -> Tensor:
    return torch.empty(weight.shape, device=weight.device, dtype=weight.dtype,
                       memory_format=conv_launch.weight_memory_format(weight))


def _eager_step(u, f, weight_a, bias_a, weight_b, bias_b, bn1_weight, bn1_bias, bn2_weight, bn2_bias, stats,
                conv_a, conv_b, eps1, eps2, batch_stats):
    """The step composed of differentiable aten ops, from the statistics the fused forward used."""

    def conv(x, weight, bias, args):
        geo = _geometry(x.shape, weight, args)
        top, left = geo.padding
        bottom = geo.dilation[0] * (geo.kernel_h - 1) - top
        right = geo.dilation[1] * (geo.kernel_w - 1) - left
        return F.conv2d(F.pad(x, (left, right, top, bottom)), weight, bias, 1, 0, geo.dilation, geo.groups)

    def bn(x, mean, var, weight, bias, eps):
        return F.batch_norm(x, None if batch_stats else mean, None if batch_stats else var, weight, bias,
                            training=batch_stats, eps=eps)

    t = F.relu(bn(f - conv(u, weight_a, bias_a, conv_a), stats[0], stats[1], bn1_weight, bn1_bias, eps1))
    return u + F.relu(bn(conv(t, weight_b, bias_b, conv_b), stats[2], stats[3], bn2_weight, bn2_bias, eps2))


def _sum_present(grads):
    """The sum of the gradients that are not None (None if none is): the rare paths that add on the host."""
    present = [g for g in grads if g is not None]
    return None if not present else present[0] if len(present) == 1 else sum(present[1:], present[0])


class SmoothingStepFunction(torch.autograd.Function):
    """Autograd of the fused step: smoothing_step forward (in training it also updates the running
    statistics, which take no part in autograd), smoothing_step_backward backward, or the eager
    composition's gradients when they must be differentiable (``create_graph=True``).

    Returns out, followed by ``copies`` (0-2) times (f, weight_a, bias_a, weight_b, bias_b): the
    step's shared inputs handed on as outputs of this node, each copy for one later use in their
    place. Their gradients then come back here and are added to this step's own in its kernels (bn1's
    backward, the grad-weight reductions), where autograd would add each shared use with an aten op.
    """

    @staticmethod
    def forward(ctx, u, f, weight_a, bias_a, weight_b, bias_b, bn1_weight, bn1_bias, bn2_weight, bn2_bias,
                running_mean1, running_var1, running_mean2, running_var2, num_batches1, num_batches2,
                conv_a, conv_b, eps1, eps2, batch_stats, momentum, copies=0):
        out, r, s, stats, t, adjoint_a, adjoint_b = call_smoothing_step(
            u, f, weight_a, bias_a, weight_b, bias_b, bn1_weight, bn1_bias, bn2_weight, bn2_bias, running_mean1,
            running_var1, running_mean2, running_var2, num_batches1, num_batches2, conv_a, conv_b, eps1, eps2,
            batch_stats, momentum, any(ctx.needs_input_grad))
        ctx.save_for_backward(u, f, weight_a, bias_a, weight_b, bias_b, bn1_weight, bn1_bias, bn2_weight, bn2_bias,
                              r, s, stats, t, adjoint_a, adjoint_b)
        ctx.args = (list(conv_a), list(conv_b), eps1, eps2, batch_stats)
        ctx.set_materialize_grads(False)
        if copies:
            return (out, *(f, weight_a, bias_a, weight_b, bias_b) * copies)
        return out

    @staticmethod
    def backward(ctx, grad_out, *carried):
        (u, f, weight_a, bias_a, weight_b, bias_b, bn1_weight, bn1_bias, bn2_weight, bn2_bias,
         r, s, stats, t, adjoint_a, adjoint_b) = ctx.saved_tensors
        conv_a, conv_b, eps1, eps2, batch_stats = ctx.args
        need = ctx.needs_input_grad
        # a carried gradient only reaches an input that requires grad, whose alias required it
        carried = [g if need[1 + i % 5] else None for i, g in enumerate(carried)]
        if grad_out is None:  # the step's output reached the loss through no differentiable path
            summed = [_sum_present(carried[i::5]) for i in range(5)]
            return (None, *summed) + (None,) * (len(need) - 6)
        inputs = (u, f, weight_a, bias_a, weight_b, bias_b, bn1_weight, bn1_bias, bn2_weight, bn2_bias)
        if torch.is_grad_enabled():  # create_graph=True: differentiable gradients from the eager composition
            out = _eager_step(*inputs, stats, conv_a, conv_b, eps1, eps2, batch_stats)
            wanted = [i for i, t in enumerate(inputs) if need[i] and t is not None]
            grads = torch.autograd.grad(out, [inputs[i] for i in wanted], grad_out, create_graph=True,
                                        allow_unused=True)
            result = [None] * len(need)
            for i, g in zip(wanted, grads):
                result[i] = g
            for i, g in enumerate(carried):
                result[1 + i % 5] = _sum_present([result[1 + i % 5], g])
            return tuple(result)
        grads = call_smoothing_step_backward(
            grad_out, u, weight_a, weight_b, r, s, t, adjoint_a, adjoint_b, stats, bn1_weight, bn1_bias, bn2_weight,
            bn2_bias, conv_a, conv_b, eps1, eps2, batch_stats, bias_a is not None, bias_b is not None,
            need[2] or need[3], need[4] or need[5], carried)
        grad_u, grad_f, grad_wa, grad_ba, grad_wb, grad_bb, grad_bn1, grad_bn2 = grads
        return (grad_u if need[0] else None, grad_f if need[1] else None,
                grad_wa if need[2] else None, grad_ba if bias_a is not None and need[3] else None,
                grad_wb if need[4] else None, grad_bb if bias_b is not None and need[5] else None,
                grad_bn1[1].to(bn1_weight.dtype), grad_bn1[0].to(bn1_bias.dtype),
                grad_bn2[1].to(bn2_weight.dtype), grad_bn2[0].to(bn2_bias.dtype),
                *(None,) * 13)


@on_input_device
def _smoothing_step_inference(u: Tensor, f: Tensor, weight_a: Tensor, bias_a: Optional[Tensor], weight_b: Tensor,
                             bias_b: Optional[Tensor], bn1_weight: Tensor, bn1_bias: Tensor, bn2_weight: Tensor,
                             bn2_bias: Tensor, running_mean1: Tensor, running_var1: Tensor, running_mean2: Tensor,
                             running_var2: Tensor, conv_a: List[int], conv_b: List[int], eps1: float,
                             eps2: float) -> Tensor:
    """Eval-mode smoothing step, BatchNorm folded into the two convolutions: two launches, no autograd."""
    return launch.smoothing_step_inference(
        u, f, weight_a, bias_a, _geometry(u.shape, weight_a, conv_a), weight_b, bias_b,
        _geometry(u.shape, weight_b, conv_b),
        conv_launch.BatchNormArgs(running_mean1, running_var1, bn1_weight, bn1_bias, eps1),
        conv_launch.BatchNormArgs(running_mean2, running_var2, bn2_weight, bn2_bias, eps2))


smoothing_step_inference = torch.library.custom_op("mgiad_kernels::smoothing_step_inference",
                                                   _smoothing_step_inference, mutates_args=())
call_smoothing_step_inference = DirectCall(smoothing_step_inference, _smoothing_step_inference)


@smoothing_step_inference.register_fake
def _smoothing_step_inference_fake(u, f, weight_a, bias_a, weight_b, bias_b, *args):
    return _activation_fake(u, weight_a)

