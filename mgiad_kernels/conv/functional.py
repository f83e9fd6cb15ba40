"""Functional convolutions with the backend switch: ``grouped_conv2d`` and ``residual_conv2d``."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backend import autocast_inputs, check_backend, use_triton
from . import autograd as conv_autograd
from .geometry import ConvArgs, check_conv_args


def _batched(input, name: str = "input") -> tuple[torch.Tensor, bool]:
    """input as (N, C, H, W) and whether it came unbatched (C, H, W), as F.conv2d accepts it."""
    if isinstance(input, torch.Tensor) and input.dim() == 3:
        return input.unsqueeze(0), True
    return input, False


def _conv(x, weight, bias, other, alpha: float, padding, args: ConvArgs, backend: str) -> torch.Tensor:
    """other + alpha * conv2d(x, weight, bias) on ``backend`` (``other`` None: the convolution alone).

    Zero input channels take F.conv2d (no arithmetic to do; it decides the output's shape).
    """
    if backend != "torch" and x.shape[1] > 0:
        cast = autocast_inputs(x, weight, bias, other)
        if use_triton(backend, *cast):
            # eager launches take the checked geometry; traced ones rebuild it from the op's arguments
            params = conv_autograd.ConvParams(*args.op_args(),
                                              None if torch.compiler.is_compiling() else args.geometry)
            y = conv_autograd.conv(cast[0], cast[1], cast[2], cast[3], alpha, params)
            return y if other is None else y.to(torch.promote_types(other.dtype, y.dtype))  # eager's promotion
    y = F.conv2d(x, weight, bias, args.stride, padding, args.dilation, args.groups)
    if other is None:
        return y
    return other - y if alpha == -1.0 else other + y


def grouped_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1,
                   padding=0, dilation=1, groups: int = 1, backend: str = "auto") -> torch.Tensor:
    """Grouped 2-D convolution with exactly ``F.conv2d``'s semantics and argument names.

    The grouped convolution of the MGiaD paper (Sec. III d, Fig. 5): each of ``groups``
    groups couples only its own C_in/groups input and C_out/groups output channels.
    ``backend``: 'triton' (the Triton kernels, forward and every derivative), 'torch'
    (``F.conv2d``) or 'auto' (Triton on CUDA tensors, ``F.conv2d`` elsewhere). Under
    ``torch.autocast`` the Triton path computes in the autocast dtype, as F.conv2d does.
    """
    check_backend(backend)
    x, unbatched = _batched(input)
    args = check_conv_args(x, weight, bias, stride, padding, dilation, groups)
    y = _conv(x, weight, bias, None, 1.0, padding, args, backend)
    return y.squeeze(0) if unbatched else y


def residual_conv2d(input: torch.Tensor, weight: torch.Tensor, other: torch.Tensor, bias: torch.Tensor | None = None,
                    stride=1, padding=0, dilation=1, groups: int = 1, subtract: bool = False,
                    backend: str = "auto") -> torch.Tensor:
    """``other - conv2d(input)`` if ``subtract`` else ``other + conv2d(input)``, with F.conv2d's arguments.

    The FAS residual and correction (MGiaD eq. 6-7). On the Triton backend the sum is the
    convolution's epilogue (one launch, forward and backward). ``other`` must have exactly the
    convolution output's shape, dtype and device, on every backend.
    """
    check_backend(backend)
    x, unbatched = _batched(input)
    args = check_conv_args(x, weight, bias, stride, padding, dilation, groups)
    if not isinstance(other, torch.Tensor):
        raise TypeError(f"other must be a tensor, got {type(other).__name__}")
    expected = (x.shape[0], weight.shape[0], *args.geometry.out_hw)[1 if unbatched else 0:]
    if tuple(other.shape) != expected:
        raise ValueError(f"other must have the convolution output's shape {expected}, got {tuple(other.shape)}")
    if other.dtype != x.dtype or other.device != x.device:
        raise ValueError(f"other must match input's dtype and device ({x.dtype}, {x.device}), "
                         f"got {other.dtype} on {other.device}")
    y = _conv(x, weight, bias, other.unsqueeze(0) if unbatched else other, -1.0 if subtract else 1.0, padding, args,
              backend)
    return y.squeeze(0) if unbatched else y
