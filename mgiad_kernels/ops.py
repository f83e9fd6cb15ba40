"""PyTorch custom ops over the Triton launchers, with fake (meta) registrations so that
``torch.compile`` traces through them without graph breaks. The convolution ops are
differentiated in conv_autograd.py; the fused smoothing step's autograd is SmoothingStepFunction here."""
from __future__ import annotations

import functools
import inspect
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import launchers
from .conv_geometry import ConvGeometry


class DirectCall:
    """``op(*args)``, with eager calls on plain tensors going straight to the op's implementation.

    Through the dispatcher, a custom op call in eager mode does nothing more for the package's callers
    than run the implementation below autograd (they are autograd Functions' forward and backward, or
    no-grad paths) and, for an op that mutates arguments, bump their version counters; it costs ~36 us of
    host time per call on this CPU (`python -m mgiad.bench --host`, ~250 calls per MGiaD training step).
    The dispatcher is kept wherever it does more: under ``torch.compile``, a dispatch or function mode
    (FakeTensorMode, FlopCounterMode, ...), a functorch transform, a profiler (which names the op), and for
    tensor subclasses or meta tensors. ``mutated``: positions of the arguments the op declares mutated,
    whose versions are bumped as the dispatcher's ADInplaceOrView kernel does.
    """

    __slots__ = ("op", "impl", "mutated")

    def __init__(self, op, impl, mutated: tuple = ()):
        self.op, self.impl, self.mutated = op, impl, mutated

    def __call__(self, *args):
        if not _dispatch_free(args):
            return self.op(*args)
        if self.mutated and not torch.is_inference_mode_enabled():
            torch.autograd.graph.increment_version([args[i] for i in self.mutated])
        return self.impl(*args)


def _dispatch_free(args) -> bool:
    """Eager, no mode, transform or profiler active, and every tensor argument (lists' included) a plain, non-meta
    torch.Tensor or Parameter."""
    if (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack()
            or torch._C._is_torch_function_mode_enabled() or torch._C._are_functorch_transforms_active()
            or torch._C._autograd._profiler_enabled()):
        return False
    return _plain_tensors(args)


_PLAIN_TENSOR_TYPES = (Tensor, torch.nn.Parameter)  # a Parameter is a plain tensor to the dispatcher


def _plain_tensors(args) -> bool:
    for arg in args:
        if isinstance(arg, Tensor):
            if type(arg) not in _PLAIN_TENSOR_TYPES or arg.is_meta:
                return False
        elif type(arg) is list:  # the ops' lists hold ints or tensors, never lists
            for item in arg:
                if isinstance(item, Tensor) and (type(item) not in _PLAIN_TENSOR_TYPES or item.is_meta):
                    return False
    return True


# the CUDA device functions the implementations run under (names of their own: tests stand them in)
_current_cuda_device = getattr(torch._C, "_cuda_getDevice", None)
_cuda_device = torch.cuda.device


def _on_input_device(impl):
    """``impl`` run with the current CUDA device set to its first argument's, as aten's CUDA kernels set it
    with a device guard: Triton launches on the current device's context and stream, so a model on cuda:1
    would otherwise launch on cuda:0's. Costs nothing where the device is already current."""

    @functools.wraps(impl)
    def on_input_device(*args):
        first = args[0]
        if not first.is_cuda:
            return impl(*args)
        index = first.get_device()
        if index == _current_cuda_device():
            return impl(*args)
        with _cuda_device(index):
            return impl(*args)

    return on_input_device


# ---- grouped convolution: launch primitives; conv_autograd.py differentiates them -----------------------------------
# padding: [top, left, bottom, right]. Each op is linear in each of its two tensor inputs.

def conv_geometry(x_shape, weight_shape, stride, padding, dilation, groups) -> ConvGeometry:
    return ConvGeometry.of(x_shape, weight_shape, stride, padding, dilation, groups)


@_on_input_device
def _conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], other: Optional[Tensor], alpha: float,
           stride: List[int], padding: List[int], dilation: List[int], groups: int) -> Tensor:
    """other + alpha * (conv2d(x, weight) + bias) on the Triton kernels (``other`` None: no sum)."""
    geo = conv_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    return launchers.conv2d_forward(x, weight, bias, other, alpha, geo)


conv2d = torch.library.custom_op("mgiad_kernels::conv2d", _conv2d, mutates_args=())
call_conv2d = DirectCall(conv2d, _conv2d)


@conv2d.register_fake
def _conv2d_fake(x, weight, bias, other, alpha, stride, padding, dilation, groups):
    geo = conv_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    return torch.empty((x.shape[0], weight.shape[0], *geo.out_hw), device=x.device, dtype=x.dtype,
                       memory_format=launchers.conv_output_memory_format(x, weight))


@_on_input_device
def _conv2d_with_adjoint_weight(x: Tensor, weight: Tensor, bias: Optional[Tensor], other: Optional[Tensor],
                                alpha: float, stride: List[int], padding: List[int], dilation: List[int],
                                groups: int) -> tuple[Tensor, Tensor]:
    """conv2d, and the weight of its grad input's convolution written by the same launch
    (``launchers.adjoint_weight_wanted``), for conv2d_grad_input."""
    geo = conv_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    adjoint = launchers.empty_adjoint_weight(weight, geo)
    return launchers.conv2d_forward(x, weight, bias, other, alpha, geo, adjoint), adjoint


conv2d_with_adjoint_weight = torch.library.custom_op("mgiad_kernels::conv2d_with_adjoint_weight",
                                                     _conv2d_with_adjoint_weight, mutates_args=())
call_conv2d_with_adjoint_weight = DirectCall(conv2d_with_adjoint_weight, _conv2d_with_adjoint_weight)


@conv2d_with_adjoint_weight.register_fake
def _conv2d_with_adjoint_weight_fake(x, weight, bias, other, alpha, stride, padding, dilation, groups):
    geo = conv_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    return (_conv2d_fake(x, weight, bias, other, alpha, stride, padding, dilation, groups),
            launchers.empty_adjoint_weight(weight, geo))


@_on_input_device
def _conv2d_grad_input(grad_y: Tensor, weight: Tensor, adjoint_weight: Optional[Tensor], x_shape: List[int],
                       stride: List[int], padding: List[int], dilation: List[int], groups: int, channels_last: bool,
                       alpha: float) -> Tensor:
    """alpha * conv_transpose2d(grad_y, weight): the gradient of alpha * conv2d with respect to its input,
    through ``adjoint_weight`` where conv2d_with_adjoint_weight wrote it (None: through ``weight``)."""
    geo = conv_geometry(x_shape, weight.shape, stride, padding, dilation, groups)
    return launchers.conv2d_grad_input(grad_y, x_shape, weight, geo, _format(channels_last), alpha, adjoint_weight)


conv2d_grad_input = torch.library.custom_op("mgiad_kernels::conv2d_grad_input", _conv2d_grad_input,
                                            mutates_args=())
call_conv2d_grad_input = DirectCall(conv2d_grad_input, _conv2d_grad_input)


@conv2d_grad_input.register_fake
def _conv2d_grad_input_fake(grad_y, weight, adjoint_weight, x_shape, stride, padding, dilation, groups, channels_last,
                            alpha):
    return torch.empty(x_shape, device=grad_y.device, dtype=grad_y.dtype, memory_format=_format(channels_last))


@_on_input_device
def _conv2d_grad_weight(grad_y: Tensor, x: Tensor, weight_shape: List[int], stride: List[int],
                       padding: List[int], dilation: List[int], groups: int, weight_channels_last: bool,
                       with_bias: bool, alpha: float) -> tuple[Tensor, Tensor]:
    """Gradients of alpha * conv2d with respect to weight (channels_last if ``weight_channels_last``) and
    bias (an empty tensor when not with_bias)."""
    geo = conv_geometry(x.shape, weight_shape, stride, padding, dilation, groups)
    grad_w, grad_b = launchers.conv2d_grad_weight(grad_y, x, geo, with_bias, alpha=alpha,
                                                  memory_format=_format(weight_channels_last))
    return grad_w, grad_b if grad_b is not None else x.new_empty(0)


conv2d_grad_weight = torch.library.custom_op("mgiad_kernels::conv2d_grad_weight", _conv2d_grad_weight,
                                             mutates_args=())
call_conv2d_grad_weight = DirectCall(conv2d_grad_weight, _conv2d_grad_weight)


@conv2d_grad_weight.register_fake
def _conv2d_grad_weight_fake(grad_y, x, weight_shape, stride, padding, dilation, groups, weight_channels_last,
                             with_bias, alpha):
    return (torch.empty(weight_shape, device=x.device, dtype=x.dtype, memory_format=_format(weight_channels_last)),
            x.new_empty(weight_shape[0] if with_bias else 0))


def _format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


# ---- the fused smoothing step (MGiaD paper eq. 3) ------------------------------------------------------------------
# conv_a / conv_b: [pad_top, pad_left, dil_h, dil_w, groups] of the stride-1, size-preserving A and B.

def _geometry(u_shape, weight: Tensor, conv: List[int]) -> ConvGeometry:
    """conv: [pad_top, pad_left, dil_h, dil_w, groups] of a size-preserving stride-1 convolution."""
    kh, kw = weight.shape[2:]
    top, left, dil_h, dil_w, groups = conv
    padding = (top, left, dil_h * (kh - 1) - top, dil_w * (kw - 1) - left)
    return ConvGeometry.of(u_shape, weight.shape, (1, 1), padding, (dil_h, dil_w), groups)


def _activation_fake(u: Tensor, weight_a: Tensor) -> Tensor:
    return torch.empty(u.shape, device=u.device, dtype=u.dtype,
                       memory_format=launchers.conv_output_memory_format(u, weight_a))


@_on_input_device
def _smoothing_step(u: Tensor, f: Tensor, weight_a: Tensor, bias_a: Optional[Tensor], weight_b: Tensor,
                   bias_b: Optional[Tensor], bn1_weight: Tensor, bn1_bias: Tensor, bn2_weight: Tensor,
                   bn2_bias: Tensor, running_mean1: Tensor, running_var1: Tensor, running_mean2: Tensor,
                   running_var2: Tensor, num_batches1: Tensor, num_batches2: Tensor, conv_a: List[int],
                   conv_b: List[int], eps1: float, eps2: float, batch_stats: bool,
                   momentum: Optional[float], adjoint_weights: bool
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """u + relu(bn2(B(relu(bn1(f - A u))))); also returns r, s, the statistics used, t = relu(bn1(r))
    (empty unless ``launchers.materializes_t``: 16-bit) and A's and B's adjoint weights (empty unless
    ``adjoint_weights`` and ``launchers.adjoint_weight_wanted``: fp32), which smoothing_step_backward
    reads (SmoothingStepFunction differentiates the pair).

    ``batch_stats``: normalize with the batch's statistics (training) and update both BatchNorms'
    running statistics and num_batches_tracked with ``momentum`` as nn.BatchNorm2d does (in the
    kernels that merge the moments). Else normalize with the running ones, and mutate nothing.
    """
    geo_a, geo_b = _geometry(u.shape, weight_a, conv_a), _geometry(u.shape, weight_b, conv_b)
    if batch_stats:
        count = u.shape[0] * u.shape[2] * u.shape[3]
        updates = (launchers.RunningStatsUpdate(running_mean1, running_var1, num_batches1, momentum, count),
                   launchers.RunningStatsUpdate(running_mean2, running_var2, num_batches2, momentum, count))
        return launchers.smoothing_step_forward(u, f, weight_a, bias_a, geo_a, weight_b, bias_b, geo_b,
                                                (bn1_weight, bn1_bias), (bn2_weight, bn2_bias), (eps1, eps2),
                                                None, updates, adjoint_weights)
    return launchers.smoothing_step_forward(u, f, weight_a, bias_a, geo_a, weight_b, bias_b, geo_b,
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
    t = _activation_fake(u, weight_a) if launchers.materializes_t(u.dtype) else u.new_empty(0)
    if adjoint_weights and launchers.adjoint_weight_wanted(u.dtype):
        adjoints = [launchers.empty_adjoint_weight(w, _geometry(u.shape, w, conv))
                    for w, conv in ((weight_a, conv_a), (weight_b, conv_b))]
    else:
        adjoints = [u.new_empty(0), u.new_empty(0)]
    return (_activation_fake(u, weight_a), _activation_fake(u, weight_a), _activation_fake(u, weight_a), stats, t,
            *adjoints)


@_on_input_device
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
    grads = launchers.smoothing_step_backward(
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
                       memory_format=launchers.weight_memory_format(weight))


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


@_on_input_device
def _smoothing_step_inference(u: Tensor, f: Tensor, weight_a: Tensor, bias_a: Optional[Tensor], weight_b: Tensor,
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


smoothing_step_inference = torch.library.custom_op("mgiad_kernels::smoothing_step_inference",
                                                   _smoothing_step_inference, mutates_args=())
call_smoothing_step_inference = DirectCall(smoothing_step_inference, _smoothing_step_inference)


@smoothing_step_inference.register_fake
def _smoothing_step_inference_fake(u, f, weight_a, bias_a, weight_b, bias_b, *args):
    return _activation_fake(u, weight_a)
