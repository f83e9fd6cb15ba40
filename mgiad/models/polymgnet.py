"""Poly-MgNet (van Betteray, Rottmann, Kahl): MgNet with B replaced by a polynomial p_d(A).

The smoothing update is u <- u + p_d(A) t with t = relu(bn(f - A u)), so the residual
propagates with q_{d+1}(A) = I - A p_d(A), whose roots are the trainable parameters:
- degree 1, linear steps: p_0 = alpha (q_1 has the root 1/alpha), u <- u + alpha t;
- degree 2, the quadratic block replacing two steps: q_2(A) = (I - A/l1)(I - A/l2), so
  p_1(A) t = (1/l1 + 1/l2) t - (1/(l1 l2)) A t; with a complex-conjugate pair l = a +- ib this is
  (2a/(a^2+b^2)) t - (1/(a^2+b^2)) A t (REFERENCE.md), with a real pair l1, l2 as written.
Roots start on the spectrum of A at initialisation (the summary: roots chosen from the
spectrum): the eigenvalues of A's Fourier symbol with the smallest and largest real part
(real pair), or the one with the largest imaginary part (complex pair).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mgiad_kernels import check_backend

from .fas import FASNetwork
from .layers import conv3x3
from .rules import check_choice, check_model_args

DEGREES = (1, 2)
ROOTS = ("real", "complex")
_MIN_ROOT = 0.25  # roots nearer 0 would give the polynomial huge coefficients at initialisation


def symbol_spectrum(weight: torch.Tensor, groups: int, frequencies: int = 4) -> torch.Tensor:
    """Eigenvalues of a C -> C convolution's Fourier symbol on a frequencies x frequencies grid (complex128)."""
    c_out, c_in_group, kh, kw = weight.shape
    dense = torch.zeros(c_out, c_out, kh, kw, dtype=torch.float64)
    out_per_group = c_out // groups
    w = weight.detach().to("cpu", torch.float64)
    for g in range(groups):
        rows = slice(g * out_per_group, (g + 1) * out_per_group)
        dense[rows, g * c_in_group:(g + 1) * c_in_group] = w[rows]
    theta = 2 * math.pi * torch.arange(frequencies, dtype=torch.float64) / frequencies
    th, tw = torch.meshgrid(theta, theta, indexing="ij")
    taps_h = torch.arange(kh, dtype=torch.float64) - kh // 2
    taps_w = torch.arange(kw, dtype=torch.float64) - kw // 2
    phase = torch.exp(1j * (th.reshape(-1, 1, 1) * taps_h[None, :, None]
                            + tw.reshape(-1, 1, 1) * taps_w[None, None, :]))
    symbol = torch.einsum("oihw,fhw->foi", dense.to(torch.complex128), phase)
    return torch.linalg.eigvals(symbol).reshape(-1)


def _away_from_zero(x: float) -> float:
    return math.copysign(max(abs(x), _MIN_ROOT), x if x != 0 else 1.0)


class PolySmoothingStep(nn.Module):
    """u <- u + p(A) relu(bn(f - A u)) with p from trainable roots (see the module docstring)."""

    def __init__(self, A: nn.Conv2d, channels: int, degree: int, roots: str):
        super().__init__()
        self.A, self.degree, self.roots = A, degree, roots
        self.bn = nn.BatchNorm2d(channels)
        if degree == 1:
            self.alpha = nn.Parameter(torch.ones(()))
        else:
            self.root_params = nn.Parameter(torch.tensor([1.0, 1.0] if roots == "complex" else [1.0, 2.0]))
        self.reset_roots()

    def reset_roots(self) -> None:
        """Roots on A's spectrum (left at the defaults when A lives on the meta device, for counting only)."""
        if self.A.weight.is_meta:
            return
        eig = symbol_spectrum(self.A.weight, self.A.groups)
        with torch.no_grad():
            if self.degree == 1:  # Richardson: the root at the largest real part
                self.alpha.fill_(1.0 / _away_from_zero(eig.real.max().item()))
            elif self.roots == "real":
                self.root_params.copy_(torch.tensor([_away_from_zero(eig.real.min().item()),
                                                     _away_from_zero(eig.real.max().item())]))
            else:
                top = eig[eig.imag.argmax()]
                self.root_params.copy_(torch.tensor([_away_from_zero(top.real.item()),
                                                     max(abs(top.imag.item()), _MIN_ROOT)]))

    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(c0, c1) of p(A) t = c0 t - c1 A t."""
        if self.degree == 1:
            return self.alpha, torch.zeros_like(self.alpha)
        x, y = self.root_params[0], self.root_params[1]
        if self.roots == "complex":  # x +- iy
            modulus = x * x + y * y
            return 2 * x / modulus, 1 / modulus
        return 1 / x + 1 / y, 1 / (x * y)

    def forward(self, u: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        t = F.relu(self.bn(f - self.A(u)))
        c0, c1 = self.coefficients()
        if self.degree == 1:
            return u + c0 * t
        return u + c0 * t - c1 * self.A(t)

    def extra_repr(self) -> str:
        return f"degree={self.degree}, roots={self.roots!r}"


class PolyMgNetLevel(nn.Module):
    """One resolution level: a shared A and its polynomial smoothing steps."""

    def __init__(self, channels: int, steps: int, degree: int, roots: str, backend: str):
        super().__init__()
        self.A = conv3x3(channels, channels, 1, backend)
        blocks = steps if degree == 1 else steps // 2
        self.steps = nn.ModuleList(PolySmoothingStep(self.A, channels, degree, roots) for _ in range(blocks))

    def forward(self, u: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            u = step(u, f)
        return u


class PolyMgNet(FASNetwork):
    """Poly-MgNet on the MgNet skeleton (stem, FAS transfers, head) with B replaced by p_d(A).

    ``degree`` is that of the residual polynomial q: 1 (linear steps) or 2 (quadratic blocks,
    each replacing two smoothing steps, so every entry of ``smoothing_steps`` must be even).
    ``roots``: 'real' or 'complex' (conjugate pair), for degree 2.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths=(64, 128, 256, 256),
                 smoothing_steps=(2, 2, 2, 2), degree: int = 2, roots: str = "complex", backend: str = "auto"):
        super().__init__()
        widths, steps = check_model_args(num_classes, in_channels, widths, smoothing_steps)
        check_backend(backend)
        check_choice("degree", degree, DEGREES)
        check_choice("roots", roots, ROOTS)
        if degree == 2 and any(n % 2 for n in steps):
            raise ValueError(f"degree=2 pairs smoothing steps into quadratic blocks: smoothing_steps must be even, "
                             f"got {steps}")
        self.build_skeleton(in_channels, widths, lambda: [
            PolyMgNetLevel(c, n, degree, roots, backend) for c, n in zip(widths, steps)], num_classes, backend)
