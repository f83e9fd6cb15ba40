"""Autograd for the Triton convolution: reverse mode, forward mode and every higher order.

y = other + alpha * (conv(x, w) + b) and its two gradient ops are each linear in each of their
two tensor inputs, so every derivative of one is a sum of the others:

| op                      | d/d first input         | d/d second input          |
|-------------------------|-------------------------|---------------------------|
| y  = conv(x, w)         | gx = convT(gy, w)       | gw = gradW(gy, x)         |
| gx = convT(gy, w)       | conv(ggx, w)            | gradW(gy, ggx)            |
| gw = gradW(gy, x) (+gb) | conv(x, ggw) + ggb      | convT(gy, ggw)            |

Each backward calls the differentiable forms (``conv``, ``conv_transpose``, ``conv_weight_grad``)
when grad mode is on (``create_graph=True``), so double backward and beyond work; forward mode
(``torch.func.jvp``, ``torch.autograd.forward_ad``) uses bilinearity: d op(a, b) = op(da, b) + op(a, db).
Under ``torch.compile`` the Function classes without ``jvp`` are used (Dynamo refuses a custom jvp).
"""
from __future__ import annotations

import inspect
from typing import NamedTuple

import torch
import torch.autograd.forward_ad as fwAD

from . import ops
from .geometry import ConvGeometry
from ..runtime.device_calls import dispatch_free, on_input_device
from .launch import adjoint_weight_wanted, strides_like_channels_last, with_contiguous_channels


class ConvParams(NamedTuple):
    """The non-tensor arguments of the three ops: stride, padding (top, left, bottom, right), dilation, groups;
    and, in eager calls, the geometry the caller checked (``geometry.check_conv_args``), which every launch of
    the same convolution and of its derivatives shares (they all see the input's and the weight's shapes)."""

    stride: list
    padding: list
    dilation: list
    groups: int
    geometry: ConvGeometry | None = None

    def op_args(self) -> tuple:
        return self.stride, self.padding, self.dilation, self.groups


def forward_derivative_requested(*tensors) -> bool:
    """A forward-AD level is open or a tensor is wrapped by a functorch transform (never while compiling)."""
    if torch.compiler.is_compiling():
        return False
    if fwAD._current_level >= 0:
        return True
    return any(t is not None and torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors)


def _autograd_wanted(*tensors) -> bool:
    """Whether a derivative of the op may be asked for: grad mode, a forward-AD level, a functorch transform."""
    return torch.is_grad_enabled() or forward_derivative_requested(*tensors)


def _pick(plain, with_jvp):
    return plain if torch.compiler.is_compiling() else with_jvp


def _add(a, b):
    return b if a is None else a if b is None else a + b


# ---- the differentiable forms -------------------------------------------------------------------------------------

def conv(x, w, b, other, alpha: float, p: ConvParams):
    """other + alpha * (conv2d(x, w) + b); ``b`` and ``other`` may be None."""
    if _autograd_wanted(x, w, b, other):
        if torch.compiler.is_compiling():
            return _Conv.apply(x, w, b, other, alpha, p)
        return _ConvKeepingAdjoint.apply(x, w, b, other, alpha, p)[0]
    return ops.call_conv2d.with_geometry(p.geometry, x, w, b, other, alpha, *p.op_args())


def conv_transpose(gy, w, x_shape, channels_last: bool, alpha: float, p: ConvParams, w_adjoint=None):
    """alpha * convT(gy, w): the gradient of alpha * conv2d with respect to its input; ``w_adjoint``: w's
    adjoint weight as the forward wrote it (``launch.adjoint_weight_wanted``), read in w's place."""
    if _autograd_wanted(gy, w):
        return _pick(_ConvTranspose, _ConvTransposeJvp).apply(gy, w, tuple(x_shape), channels_last, alpha, p,
                                                              w_adjoint)
    return ops.call_conv2d_grad_input.with_geometry(p.geometry, gy, w, w_adjoint, list(x_shape), *p.op_args(),
                                                channels_last, alpha)


def conv_weight_grad(gy, x, w_shape, w_channels_last: bool, with_bias: bool, alpha: float, p: ConvParams):
    """(gw, gb) of alpha * conv2d; gb is None unless ``with_bias``; gw channels_last if ``w_channels_last``
    (the weight's layout, which autograd accumulates into without a copy)."""
    if _autograd_wanted(gy, x):
        return _pick(_ConvWeightGrad, _ConvWeightGradJvp).apply(gy, x, tuple(w_shape), w_channels_last, with_bias,
                                                                alpha, p)
    gw, gb = ops.call_conv2d_grad_weight.with_geometry(p.geometry, gy, x, list(w_shape), *p.op_args(),
                                                        w_channels_last, with_bias, alpha)
    return gw, (gb if with_bias else None)


_with_contiguous_channels = on_input_device(with_contiguous_channels)  # launched on the tensor's device


def _bias_term(gb, shape):
    """A per-channel gradient broadcast over (N, C, H, W)."""
    return gb.view(1, -1, 1, 1).expand(shape)


# ---- the Functions ------------------------------------------------------------------------------------------------

class _Conv(torch.autograd.Function):
    """y; under torch.compile (see _ConvKeepingAdjoint for eager)."""

    @staticmethod
    def forward(x, w, b, other, alpha, p):
        return ops.call_conv2d.with_geometry(p.geometry, x, w, b, other, alpha, *p.op_args())

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, b, other, alpha, p = inputs
        w_adjoint = output[1] if type(output) is tuple else None  # _ConvKeepingAdjoint's
        if w_adjoint is not None:
            ctx.mark_non_differentiable(w_adjoint)
        ctx.save_for_backward(x, w, w_adjoint)
        ctx.alpha, ctx.p, ctx.has_bias = alpha, p, b is not None
        ctx.channels_last = strides_like_channels_last(x)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, gy, *_):
        x, w, w_adjoint = ctx.saved_tensors
        need_x, need_w, need_b, need_other = ctx.needs_input_grad[:4]
        gx = gw = gb = None
        g = gy
        if need_x and (need_w or need_b) and not torch.is_grad_enabled() and dispatch_free((gy,)):
            g = _with_contiguous_channels(gy)  # read by both gradients (NCHW): re-laid once, not by each
        if need_x:
            gx = conv_transpose(g, w, x.shape, ctx.channels_last, ctx.alpha, ctx.p, w_adjoint)
        if need_w or need_b:
            gw, gb = conv_weight_grad(g, x, w.shape, strides_like_channels_last(w), ctx.has_bias and need_b,
                                      ctx.alpha, ctx.p)
        return gx, gw if need_w else None, gb, gy if need_other else None, None, None


class _ConvKeepingAdjoint(_Conv):
    """(y, w's adjoint weight or None), with forward mode: where ``launch.adjoint_weight_wanted`` and x
    requires grad, the forward also writes the weight grad input reads (not differentiable). Eager only:
    Dynamo cannot trace the backward of a Function with a non-differentiable output under dynamic shapes."""

    @staticmethod
    def forward(x, w, b, other, alpha, p):
        if x.requires_grad and adjoint_weight_wanted(x.dtype):
            return ops.call_conv2d_with_adjoint_weight.with_geometry(p.geometry, x, w, b, other, alpha,
                                                                     *p.op_args())
        return ops.call_conv2d.with_geometry(p.geometry, x, w, b, other, alpha, *p.op_args()), None

    @staticmethod
    def setup_context(ctx, inputs, output):
        _Conv.setup_context(ctx, inputs, output)
        ctx.save_for_forward(inputs[0], inputs[1])
        ctx.out_shape = output[0].shape

    @staticmethod
    def jvp(ctx, x_t, w_t, b_t, other_t, _alpha, _p):
        x, w = ctx.saved_tensors[:2]
        out, bias_t = other_t, b_t  # each tangent term rides in one launch's epilogue
        if x_t is not None:
            out, bias_t = conv(x_t, w, bias_t, out, ctx.alpha, ctx.p), None
        if w_t is not None:
            out, bias_t = conv(x, w_t, bias_t, out, ctx.alpha, ctx.p), None
        if bias_t is not None:
            out = _add(out, ctx.alpha * _bias_term(bias_t, ctx.out_shape))
        return out, None


class _ConvTranspose(torch.autograd.Function):
    @staticmethod
    def forward(gy, w, x_shape, channels_last, alpha, p, w_adjoint):
        return ops.call_conv2d_grad_input.with_geometry(p.geometry, gy, w, w_adjoint, list(x_shape), *p.op_args(),
                                                channels_last, alpha)

    @staticmethod
    def setup_context(ctx, inputs, output):
        gy, w, x_shape, channels_last, alpha, p, _ = inputs
        ctx.save_for_backward(gy, w)
        ctx.x_shape, ctx.channels_last, ctx.alpha, ctx.p = x_shape, channels_last, alpha, p
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, ggx):
        gy, w = ctx.saved_tensors
        need_gy, need_w = ctx.needs_input_grad[:2]
        g_gy = conv(ggx, w, None, None, ctx.alpha, ctx.p) if need_gy and ggx is not None else None
        g_w = None
        if need_w and ggx is not None:
            g_w = conv_weight_grad(gy, ggx, w.shape, strides_like_channels_last(w), False, ctx.alpha, ctx.p)[0]
        return g_gy, g_w, None, None, None, None, None


class _ConvTransposeJvp(_ConvTranspose):
    @staticmethod
    def setup_context(ctx, inputs, output):
        _ConvTranspose.setup_context(ctx, inputs, output)
        ctx.save_for_forward(inputs[0], inputs[1])

    @staticmethod
    def jvp(ctx, gy_t, w_t, *_):
        gy, w = ctx.saved_tensors
        out = None
        if gy_t is not None:
            out = conv_transpose(gy_t, w, ctx.x_shape, ctx.channels_last, ctx.alpha, ctx.p)
        if w_t is not None:
            out = _add(out, conv_transpose(gy, w_t, ctx.x_shape, ctx.channels_last, ctx.alpha, ctx.p))
        return out


class _ConvWeightGrad(torch.autograd.Function):
    @staticmethod
    def forward(gy, x, w_shape, w_channels_last, with_bias, alpha, p):
        gw, gb = ops.call_conv2d_grad_weight.with_geometry(p.geometry, gy, x, list(w_shape), *p.op_args(),
                                                        w_channels_last, with_bias, alpha)
        return gw, (gb if with_bias else None)

    @staticmethod
    def setup_context(ctx, inputs, output):
        gy, x, w_shape, w_channels_last, with_bias, alpha, p = inputs
        ctx.save_for_backward(gy, x)
        ctx.alpha, ctx.p = alpha, p
        ctx.channels_last = strides_like_channels_last(x)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, ggw, ggb):
        gy, x = ctx.saved_tensors
        need_gy, need_x = ctx.needs_input_grad[:2]
        g_gy = g_x = None
        if need_gy and ggw is not None:
            g_gy = conv(x, ggw, ggb, None, ctx.alpha, ctx.p)
        elif need_gy and ggb is not None:
            g_gy = ctx.alpha * _bias_term(ggb, gy.shape)
        if need_x and ggw is not None:
            g_x = conv_transpose(gy, ggw, x.shape, ctx.channels_last, ctx.alpha, ctx.p)
        return g_gy, g_x, None, None, None, None, None


class _ConvWeightGradJvp(_ConvWeightGrad):
    @staticmethod
    def setup_context(ctx, inputs, output):
        _ConvWeightGrad.setup_context(ctx, inputs, output)
        ctx.save_for_forward(inputs[0], inputs[1])
        ctx.w_shape, ctx.w_channels_last, ctx.with_bias = inputs[2], inputs[3], inputs[4]

    @staticmethod
    def jvp(ctx, gy_t, x_t, *_):
        gy, x = ctx.saved_tensors
        gw_t = gb_t = None
        if gy_t is not None:
            gw_t, gb_t = conv_weight_grad(gy_t, x, ctx.w_shape, ctx.w_channels_last, ctx.with_bias, ctx.alpha, ctx.p)
        if x_t is not None:
            gw_t = _add(gw_t, conv_weight_grad(gy, x_t, ctx.w_shape, ctx.w_channels_last, False, ctx.alpha,
                                               ctx.p)[0])
        if ctx.with_bias and gb_t is None:
            gb_t = torch.zeros(ctx.w_shape[0], dtype=gy.dtype, device=gy.device)
        return gw_t, gb_t


# Function.apply binds its arguments with inspect.signature(forward) on every call when setup_context is
# defined (torch.autograd.function._bind_default_args); a function's __signature__, which inspect returns
# as is, spares rebuilding it each time (~60 calls per MGiaD training step).
for _function in (_Conv, _ConvKeepingAdjoint, _ConvTranspose, _ConvWeightGrad):
    _function.forward.__signature__ = inspect.signature(_function.forward)
