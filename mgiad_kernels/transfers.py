"""Fused FAS transfers between multigrid levels (MGiaD paper eq. 6-7, Alg. 1 and Alg. 2 lines 4-7).

Restriction: u_c = Pi(u), f_c = R(f - A(u)) + A_c(u_c); the residual f - A(u) is formed in A's
epilogue and the sum in R's, so r and R(r) never make an extra pass over memory. Correction
(prolongation): u + P(u_c), the add in P's epilogue. The same functions serve resolution
levels (R, Pi depthwise 3x3 stride 2) and channel levels (grouped 1x1 R-hat, Pi-hat, P-hat).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .backend import autocast_inputs, check_backend, use_triton
from .conv_geometry import ConvGeometry, check_conv_args
from .functional import grouped_conv2d


def residual_conv2d(input: torch.Tensor, weight: torch.Tensor, other: torch.Tensor, bias: torch.Tensor | None = None,
                    stride=1, padding=0, dilation=1, groups: int = 1, subtract: bool = False,
                    backend: str = "auto") -> torch.Tensor:
    """``other - conv2d(input)`` if ``subtract`` else ``other + conv2d(input)``, with F.conv2d's arguments.

    On the Triton backend the sum is the convolution's epilogue (one launch, forward and
    backward). ``other`` must have the convolution output's shape and dtype.
    """
    check_backend(backend)
    stride, padding, dilation = check_conv_args(input, weight, bias, stride, padding, dilation, groups)
    if not isinstance(other, torch.Tensor):
        raise TypeError(f"other must be a tensor, got {type(other).__name__}")
    geo = ConvGeometry.of(input.shape, weight.shape, stride, padding, dilation, groups)
    expected = (input.shape[0], weight.shape[0], *geo.out_hw)
    if tuple(other.shape) != expected:
        raise ValueError(f"other must have the convolution output's shape {expected}, got {tuple(other.shape)}")
    if other.dtype != input.dtype or other.device != input.device:
        raise ValueError(f"other must match input's dtype and device ({input.dtype}, {input.device}), "
                         f"got {other.dtype} on {other.device}")
    cast = autocast_inputs(input, weight, bias, other) if backend != "torch" else ()
    if cast and use_triton(backend, *cast):
        out = ops.conv2d_residual(cast[0], cast[1], cast[2], cast[3], subtract, list(stride), list(padding),
                                  list(dilation), groups)
        return out.to(torch.promote_types(other.dtype, out.dtype))  # eager: other +- conv promotes
    y = F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    return other - y if subtract else other + y


def _conv(conv: nn.Conv2d, x: torch.Tensor, backend: str, other: torch.Tensor | None = None,
          subtract: bool = False) -> torch.Tensor:
    """A conv module's convolution on ``backend``, optionally summed with ``other`` in its epilogue."""
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"transfer convolutions must be nn.Conv2d (or GroupedConv2d), got {type(conv).__name__}")
    if conv.padding_mode != "zeros" or backend == "torch":
        y = nn.Conv2d._conv_forward(conv, x, conv.weight, conv.bias)
        if other is None:
            return y
        return other - y if subtract else other + y
    if other is None:
        return grouped_conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups,
                              backend=backend)
    return residual_conv2d(x, conv.weight, other, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups,
                           subtract=subtract, backend=backend)


def fas_restriction(u: torch.Tensor, f: torch.Tensor, A: nn.Conv2d, Pi: nn.Conv2d, R: nn.Conv2d, A_coarse: nn.Conv2d,
                    backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """FAS restriction (eq. 6-7; Alg. 2 lines 4-5): ``u_c = Pi(u)``, ``f_c = R(f - A(u)) + A_coarse(u_c)``.

    Four launches on the Triton backend: A with the residual in its epilogue, Pi, A_coarse,
    and R with the sum in its epilogue. Returns (u_c, f_c).
    """
    check_backend(backend)
    residual = _conv(A, u, backend, other=f, subtract=True)
    u_coarse = _conv(Pi, u, backend)
    return u_coarse, _conv(R, residual, backend, other=_conv(A_coarse, u_coarse, backend))


def prolongation_correction(u: torch.Tensor, u_coarse: torch.Tensor, P: nn.Conv2d,
                            backend: str = "auto") -> torch.Tensor:
    """Coarse-level correction (Alg. 2 lines 6-7): ``u + P(u_coarse)``, the add in P's epilogue."""
    check_backend(backend)
    return _conv(P, u_coarse, backend, other=u)


class FASRestriction(nn.Module):
    """Owns Pi and R; ``forward(u, f, A, A_coarse)`` returns (Pi(u), R(f - A(u)) + A_coarse(Pi(u)))."""

    def __init__(self, Pi: nn.Conv2d, R: nn.Conv2d, backend: str = "auto"):
        super().__init__()
        if (Pi.in_channels, Pi.out_channels, Pi.stride) != (R.in_channels, R.out_channels, R.stride):
            raise ValueError(f"Pi and R must map the same channels with the same stride, got "
                             f"Pi {Pi.in_channels}->{Pi.out_channels} stride {Pi.stride} and "
                             f"R {R.in_channels}->{R.out_channels} stride {R.stride}")
        self.Pi, self.R = Pi, R
        self.backend = check_backend(backend)

    def forward(self, u: torch.Tensor, f: torch.Tensor, A: nn.Conv2d, A_coarse: nn.Conv2d):
        return fas_restriction(u, f, A, self.Pi, self.R, A_coarse, backend=self.backend)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"


class ProlongationCorrection(nn.Module):
    """Owns P; ``forward(u, u_coarse)`` returns u + P(u_coarse)."""

    def __init__(self, P: nn.Conv2d, backend: str = "auto"):
        super().__init__()
        self.P = P
        self.backend = check_backend(backend)

    def forward(self, u: torch.Tensor, u_coarse: torch.Tensor) -> torch.Tensor:
        return prolongation_correction(u, u_coarse, self.P, backend=self.backend)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"
