"""The MgNet smoothing step u + relu(bn2(B(relu(bn1(f - A u))))) (MGiaD paper eq. 3, Alg. 1-3).

backend="torch" is the eager composition (F.conv2d, F.batch_norm, relu and adds); "triton"
fuses it: training is three launches forward in fp32 (A with the residual and bn1's batch moments,
merged and applied to the running statistics in its epilogue; B with bn1 + relu in its
prologue and bn2's moments and running statistics in its epilogue; the residual update, which
counts the batch), four in 16-bit (t = relu(bn1(r)) written by a launch of its own and kept for
B's grad weight: ``launch.materializes_t``), and seven kernels backward; eval mode folds both
BatchNorms into the two convolutions' epilogues (two launches).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..backend import autocast_inputs, check_backend, use_triton, warn_fallback
from ..conv.autograd import forward_derivative_requested
from ..conv.geometry import as_pair, resolve_padding
from . import ops


def _eager_conv(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The module's convolution on F.conv2d, whatever its own backend."""
    if isinstance(conv, nn.Conv2d):
        return nn.Conv2d._conv_forward(conv, x, conv.weight, conv.bias)
    return conv(x)


def _eager_step(u, f, A, B, bn1, bn2):
    return u + F.relu(bn2(_eager_conv(B, F.relu(bn1(f - _eager_conv(A, u))))))


def smoothing_conv_args(name: str, conv: nn.Module, channels: int) -> list[int]:
    """[pad_top, pad_left, dil_h, dil_w, groups] of a stride-1, size-preserving C -> C convolution, else ValueError."""
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"{name} must be an nn.Conv2d (or GroupedConv2d), got {type(conv).__name__}")
    if conv.in_channels != channels or conv.out_channels != channels:
        raise ValueError(f"{name} must map channels={channels} to {channels}, got "
                         f"{conv.in_channels} -> {conv.out_channels}")
    kernel = as_pair(conv.kernel_size, f"{name}.kernel_size", 1)
    stride = as_pair(conv.stride, f"{name}.stride", 1)
    dilation = as_pair(conv.dilation, f"{name}.dilation", 1)
    padding = resolve_padding(conv.padding, kernel, stride, dilation)
    totals = (padding[0] + padding[2], padding[1] + padding[3])
    if stride != (1, 1) or any(t != d * (k - 1) for t, d, k in zip(totals, dilation, kernel)):
        raise ValueError(f"{name} must keep the grid size (stride 1, padding = dilation * (kernel - 1) / 2), "
                         f"got kernel {kernel}, stride {stride}, padding {conv.padding}, dilation {dilation}")
    return [padding[0], padding[1], *dilation, conv.groups]


def check_batchnorm(name: str, bn: nn.Module, channels: int, dtype: torch.dtype) -> None:
    """bn must be a BatchNorm over ``channels`` whose parameters are float32 or the activations' dtype."""
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"{name} must be an nn.BatchNorm2d, got {type(bn).__name__}")
    if bn.num_features != channels:
        raise ValueError(f"{name} must normalize channels={channels}, got num_features={bn.num_features}")
    for tensor_name in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(bn, tensor_name)
        if t is not None and t.dtype not in (torch.float32, dtype):
            raise TypeError(f"{name}.{tensor_name} must be float32 or the activations' dtype {dtype}, got {t.dtype}")


def _unfusable_reason(A, B, bn1, bn2) -> str | None:
    """Why the fused kernels cannot run this configuration (they then fall back to the eager step)."""
    if A.padding_mode != "zeros" or B.padding_mode != "zeros":
        return "the fused smoothing step needs padding_mode='zeros' convolutions"
    for name, bn in (("bn1", bn1), ("bn2", bn2)):
        if not isinstance(bn, nn.BatchNorm2d) or not bn.affine or not bn.track_running_stats:
            return f"the fused smoothing step needs {name} to be an affine nn.BatchNorm2d tracking running stats"
    if bn1.training != bn2.training or bn1.momentum != bn2.momentum:
        return "the fused smoothing step needs bn1 and bn2 in the same mode with the same momentum"
    return None


class SmoothingCarry(NamedTuple):
    """What a fused training step hands on to a later use of its f, A and B (``smoothing_steps``).

    ``tensors``: (f, weight_a, bias_a, weight_b, bias_b) as outputs of that step's autograd node
    (the autocast dtype's copies under autocast); ``sources``: the tensors they stand for. A later
    step uses a carried tensor only in place of its own source, so its gradient goes back to that
    node, which adds it to its own gradient in its kernels instead of autograd adding the two with
    an aten op.
    """

    sources: tuple
    tensors: tuple


def smoothing_step(u: torch.Tensor, f: torch.Tensor, A: nn.Module, B: nn.Module, bn1: nn.Module, bn2: nn.Module,
                   backend: str = "auto") -> torch.Tensor:
    """One step of eq. (3) in the MgNet^{A,B} convention: r = f - A(u), u + relu(bn2(B(relu(bn1(r))))).

    ``A``, ``B``: C -> C convolutions keeping the grid size; ``bn1``, ``bn2``: nn.BatchNorm2d(C).
    In training mode the BatchNorms use the batch statistics and update their running ones, as
    nn.BatchNorm2d does; in eval mode they use the running ones.
    """
    return _step(u, f, A, B, bn1, bn2, backend, None, 0)[0]


def smoothing_steps(u: torch.Tensor, f: torch.Tensor, steps, carry: SmoothingCarry | None = None,
                    hand_on: int = 1) -> tuple[torch.Tensor, tuple]:
    """A run of smoothing steps on one right-hand side f (MgNet Alg. 1; MGiaD Alg. 2 lines 1-2 and 8-9):
    u = step(u, f) for each ``SmoothingStep`` in ``steps``, the same values as calling them in turn.

    On the fused training path each step hands f and its A's and B's parameters to the next as
    outputs of its autograd node (``SmoothingCarry``), so the gradients of f and of a shared A and B
    are summed in the backward kernels, not by autograd. Returns (u, carries): ``hand_on`` (1 or 2)
    carries from the last step, one for each later use of f and A (a run after a coarse-grid
    correction, ``fas_restriction``); each is used once. A carry is only used for the tensors it
    was made from, so any carry gives the same values.
    """
    if hand_on not in (1, 2):
        raise ValueError(f"hand_on must be 1 or 2, got {hand_on!r}")
    steps = list(steps)
    for i, step in enumerate(steps):
        if not isinstance(step, SmoothingStep):
            raise TypeError(f"steps[{i}] must be a SmoothingStep, got {type(step).__name__}")
    if not steps:
        return u, (carry,) + (None,) * (hand_on - 1)
    carries = (carry,)
    for i, step in enumerate(steps):
        u, carries = _step(u, f, step.A, step.B, step.bn1, step.bn2, step.backend, carries[0],
                           hand_on if i == len(steps) - 1 else 1)
    return u, carries


def carried(carry: SmoothingCarry | None, sources: tuple) -> tuple:
    """``sources`` with each tensor a carry was made from replaced by its carried stand-in."""
    if carry is None:
        return sources
    out = []
    for t in sources:
        stand_in = t
        for source, tensor in zip(carry.sources, carry.tensors):
            if t is not None and source is t:
                stand_in = tensor
                break
        out.append(stand_in)
    return tuple(out)


def _step(u, f, A, B, bn1, bn2, backend: str, carry: SmoothingCarry | None, copies: int):
    """smoothing_step taking a SmoothingCarry and returning (u, ``copies`` carries): new ones from the
    fused training path, whose autograd nodes sum carried gradients; elsewhere the given carry and
    Nones (off that path a step adds nothing to sum)."""
    unchanged = (carry,) + (None,) * (copies - 1)
    check_backend(backend)
    if not isinstance(u, torch.Tensor) or not isinstance(f, torch.Tensor):
        raise TypeError(f"u and f must be tensors, got {type(u).__name__} and {type(f).__name__}")
    if u.dim() != 4 or u.shape != f.shape:
        raise ValueError(f"u and f must be 4-D (N, C, H, W) tensors of the same shape, got {tuple(u.shape)} "
                         f"and {tuple(f.shape)}")
    channels = u.shape[1]
    conv_a = smoothing_conv_args("A", A, channels)
    conv_b = smoothing_conv_args("B", B, channels)
    activation_dtype = autocast_inputs(u)[0].dtype
    check_batchnorm("bn1", bn1, channels, activation_dtype)
    check_batchnorm("bn2", bn2, channels, activation_dtype)
    if backend == "torch" or forward_derivative_requested(u, f):  # forward AD: the eager composition
        return _eager_step(u, f, A, B, bn1, bn2), unchanged
    sources = (f, A.weight, A.bias, B.weight, B.bias)
    # under torch.autocast the convolutions (and so the step) compute in the autocast dtype; the
    # BatchNorms keep their fp32 parameters and statistics, as nn.BatchNorm2d does
    u_c, f_c, weight_a, bias_a, weight_b, bias_b = autocast_inputs(u, *carried(carry, sources))
    if not use_triton(backend, u_c, f_c, weight_a, weight_b):
        return _eager_step(u, f, A, B, bn1, bn2), unchanged
    reason = _unfusable_reason(A, B, bn1, bn2)
    if reason is not None:
        if backend == "triton":
            warn_fallback(reason)
        return _eager_step(u, f, A, B, bn1, bn2), unchanged
    if len({u_c.dtype, f_c.dtype, weight_a.dtype, weight_b.dtype}) != 1:
        raise ValueError(f"u, f, A.weight and B.weight must share a dtype, got {u.dtype}, {f.dtype}, "
                         f"{A.weight.dtype} and {B.weight.dtype}")
    out_dtype = u.dtype  # eager: u + relu(bn2(.)) promotes to u's dtype when u is wider than the autocast dtype

    bn_args = (bn1.weight, bn1.bias, bn2.weight, bn2.bias,
               bn1.running_mean, bn1.running_var, bn2.running_mean, bn2.running_var)
    if not bn1.training:
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (u_c, f_c, weight_a, bias_a, weight_b, bias_b, *bn_args[:4]))
        if not needs_grad:
            return ops.call_smoothing_step_inference(u_c, f_c, weight_a, bias_a, weight_b, bias_b, *bn_args,
                                                     conv_a, conv_b, bn1.eps, bn2.eps).to(out_dtype), unchanged
    count = u.shape[0] * u.shape[2] * u.shape[3]
    if bn1.training and count < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(u.shape)}")
    outputs = ops.SmoothingStepFunction.apply(u_c, f_c, weight_a, bias_a, weight_b, bias_b, *bn_args,
                                              bn1.num_batches_tracked, bn2.num_batches_tracked, conv_a, conv_b,
                                              bn1.eps, bn2.eps, bn1.training, bn1.momentum, copies)
    if not copies:
        return outputs.to(out_dtype), ()
    return outputs[0].to(out_dtype), tuple(SmoothingCarry(sources, tuple(outputs[1 + 5 * i:6 + 5 * i]))
                                           for i in range(copies))


class SmoothingStep(nn.Module):
    """One smoothing step with its own two BatchNorms; A and B may be shared by several steps.

    ``A`` and ``B`` are conv modules (``GroupedConv2d`` or ``nn.Conv2d``) mapping ``channels``
    to ``channels`` on the same grid. ``backend`` picks the eager composition ('torch') or the
    fused kernels ('triton'; 'auto' where they can run).
    """

    def __init__(self, A: nn.Module, B: nn.Module, channels: int, backend: str = "auto"):
        super().__init__()
        smoothing_conv_args("A", A, channels)
        smoothing_conv_args("B", B, channels)
        self.A, self.B = A, B
        self.bn1, self.bn2 = nn.BatchNorm2d(channels), nn.BatchNorm2d(channels)
        self.backend = check_backend(backend)

    def forward(self, u: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return smoothing_step(u, f, self.A, self.B, self.bn1, self.bn2, backend=self.backend)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"
