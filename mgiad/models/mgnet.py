"""MgNet (He and Xu 2019) as the MGiaD authors built it (MGiaD paper Alg. 1 with FAS eq. 6-7)."""
from __future__ import annotations

import torch
from torch import nn

from mgiad_kernels import SmoothingStep, check_backend, smoothing_steps

from .fas import FASNetwork
from .layers import conv3x3
from .rules import check_choice, check_group_size_divides, check_model_args

SHARES = ("AB", "A", None)


class MgNetLevel(nn.Module):
    """The smoothing steps of one resolution level, u = u + relu(bn2(B(relu(bn1(f - A u))))).

    share="AB": one A and one B for all steps (MgNet^{A,B}); "A": one A, a B per step (MgNet^A);
    None: an A and a B per step (ResNet-like).
    """

    def __init__(self, channels: int, steps: int, share, groups: int, backend: str):
        super().__init__()
        A = conv3x3(channels, channels, groups, backend)
        B = conv3x3(channels, channels, groups, backend)
        smoothers = []
        for i in range(steps):
            if i and share is None:
                A = conv3x3(channels, channels, groups, backend)
            if i and share != "AB":
                B = conv3x3(channels, channels, groups, backend)
            smoothers.append(SmoothingStep(A, B, channels, backend=backend))
        self.steps = nn.ModuleList(smoothers)

    @property
    def A(self) -> nn.Module:
        """The level's A used by the FAS transfers (the first step's)."""
        return self.steps[0].A

    def forward(self, u: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return smoothing_steps(u, f, self.steps)[0]  # f (and a shared A, B): gradients summed in the kernels


class MgNet(FASNetwork):
    """MgNet: smoothing iterations (eq. 3) on each resolution level, FAS transfers (eq. 6-7) between them.

    ``group_size`` makes A and B grouped convolutions with that many channels per group
    (MGiaD paper Table VI); None keeps them dense.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths=(64, 128, 256, 256),
                 smoothing_steps=(2, 2, 2, 2), share="AB", group_size: int | None = None, backend: str = "auto"):
        super().__init__()
        widths, steps = check_model_args(num_classes, in_channels, widths, smoothing_steps)
        check_choice("share", share, SHARES)
        check_backend(backend)
        if group_size is not None:
            check_group_size_divides(group_size, widths)
        self.build_skeleton(in_channels, widths, lambda: [
            MgNetLevel(c, n, share, 1 if group_size is None else c // group_size, backend)
            for c, n in zip(widths, steps)], num_classes, backend)
