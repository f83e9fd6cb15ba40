"""The MgNet smoothing step u + relu(bn2(B(relu(bn1(f - A u))))) (MGiaD paper eq. 3, Alg. 1-3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backend import check_backend


def smoothing_step(u: torch.Tensor, f: torch.Tensor, A: nn.Module, B: nn.Module, bn1: nn.Module,
                   bn2: nn.Module) -> torch.Tensor:
    """One step of eq. (3) in the MgNet^{A,B} convention: r = f - A(u), u + relu(bn2(B(relu(bn1(r)))))."""
    if u.shape != f.shape:
        raise ValueError(f"u and f must have the same shape, got {tuple(u.shape)} and {tuple(f.shape)}")
    return u + F.relu(bn2(B(F.relu(bn1(f - A(u))))))


class SmoothingStep(nn.Module):
    """One smoothing step with its own two BatchNorms; A and B may be shared by several steps.

    ``A`` and ``B`` are conv modules (``GroupedConv2d`` or ``nn.Conv2d``) mapping ``channels``
    to ``channels``. The convolutions run on their own modules' backends.
    """

    def __init__(self, A: nn.Module, B: nn.Module, channels: int, backend: str = "auto"):
        super().__init__()
        for name, conv in (("A", A), ("B", B)):
            if getattr(conv, "in_channels", None) != channels or getattr(conv, "out_channels", None) != channels:
                raise ValueError(f"{name} must map channels={channels} to {channels}, got "
                                 f"{getattr(conv, 'in_channels', '?')} -> {getattr(conv, 'out_channels', '?')}")
        self.A, self.B = A, B
        self.bn1, self.bn2 = nn.BatchNorm2d(channels), nn.BatchNorm2d(channels)
        self.backend = check_backend(backend)

    def forward(self, u: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return smoothing_step(u, f, self.A, self.B, self.bn1, self.bn2)
