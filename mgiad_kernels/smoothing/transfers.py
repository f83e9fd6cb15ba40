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

from ..backend import check_backend
from ..conv.functional import grouped_conv2d, residual_conv2d
from .step import SmoothingCarry, carried


def _conv(conv: nn.Conv2d, x: torch.Tensor, backend: str, other: torch.Tensor | None = None,
          subtract: bool = False, params: tuple | None = None) -> torch.Tensor:
    """A conv module's convolution on ``backend``, optionally summed with ``other`` in its epilogue;
    ``params``: (weight, bias) standing in for the module's own (a smoothing run's carried ones).

    Every backend checks ``other``'s shape the same way (no broadcasting on one and not the other).
    """
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"transfer convolutions must be nn.Conv2d (or GroupedConv2d), got {type(conv).__name__}")
    weight, bias = params if params is not None else (conv.weight, conv.bias)
    padding = conv.padding
    if conv.padding_mode != "zeros":
        x = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
        padding = 0
    if other is None:
        return grouped_conv2d(x, weight, bias, conv.stride, padding, conv.dilation, conv.groups, backend=backend)
    return residual_conv2d(x, weight, other, bias, conv.stride, padding, conv.dilation, conv.groups,
                           subtract=subtract, backend=backend)


def fas_restriction(u: torch.Tensor, f: torch.Tensor, A: nn.Conv2d, Pi: nn.Conv2d, R: nn.Conv2d, A_coarse: nn.Conv2d,
                    backend: str = "auto", carry: SmoothingCarry | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """FAS restriction (eq. 6-7; Alg. 2 lines 4-5): ``u_c = Pi(u)``, ``f_c = R(f - A(u)) + A_coarse(u_c)``.

    Four launches on the Triton backend: A with the residual in its epilogue, Pi, A_coarse,
    and R with the sum in its epilogue. Returns (u_c, f_c). ``carry``: one of the carries of the
    smoothing run before it on the same f and A (``smoothing_steps``); f's and A's gradients from the
    residual then go back to that run's last step, which sums them in its kernels.
    """
    check_backend(backend)
    if carry is not None and not isinstance(carry, SmoothingCarry):
        raise TypeError(f"carry must be a SmoothingCarry or None, got {type(carry).__name__}")
    f, weight_a, bias_a = carried(carry, (f, A.weight, A.bias))
    residual = _conv(A, u, backend, other=f, subtract=True, params=(weight_a, bias_a))
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
