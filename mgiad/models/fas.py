"""The FAS skeleton MgNet, MGiaD and Poly-MgNet share: stem, levels, resolution transfers, head."""
from __future__ import annotations

import torch
from torch import nn

from mgiad_kernels import FASRestriction

from .layers import classifier_head, conv3x3, stem, to_model_layout
from .rules import check_width_multiples


class ResolutionTransfer(FASRestriction):
    """Learnable depthwise 3x3 stride-2 Pi (features) and R (residual data) between resolution levels.

    MGiaD paper eq. (4)-(7): u_{l+1} = Pi(u_l), f_{l+1} = R(f_l - A_l(u_l)) + A_{l+1}(u_{l+1}),
    fused by mgiad_kernels.fas_restriction. groups = c_in, so a width that grows has channel
    multiplier c_out / c_in.
    """

    def __init__(self, c_in: int, c_out: int, backend: str):
        check_width_multiples((c_in, c_out))
        super().__init__(conv3x3(c_in, c_out, c_in, backend, stride=2), conv3x3(c_in, c_out, c_in, backend, stride=2),
                         backend)


class FASNetwork(nn.Module):
    """The skeleton MgNet, MGiaD and Poly-MgNet share (MGiaD paper Alg. 1 and 3): a stem makes the
    data f, u starts at zero, each resolution level smooths (u, f), FAS transfers connect the levels,
    and a pooled linear head reads u. Subclasses call ``build_skeleton`` with a factory of their
    levels (each exposing ``.A``), built after the stem so parameters initialise in module order."""

    def build_skeleton(self, in_channels: int, widths, make_levels, num_classes: int, backend: str) -> None:
        check_width_multiples(widths)
        self.stem = stem(in_channels, widths[0], backend)
        self.levels = nn.ModuleList(make_levels())
        self.transfers = nn.ModuleList(ResolutionTransfer(a, b, backend) for a, b in zip(widths, widths[1:]))
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stem(to_model_layout(x))
        u = torch.zeros_like(f)  # Alg. 3 line 1
        for i, level in enumerate(self.levels):
            if i:  # lines 4-5: u = Pi(u), f = R(f - A u) + A_next(u)
                u, f = self.transfers[i - 1](u, f, self.levels[i - 1].A, level.A)
            u = level(u, f)  # line 3
        return classifier_head(u, self.fc)
