"""MGiaD: multigrid in all dimensions (MGiaD paper Alg. 2 and 3)."""
from __future__ import annotations

import torch
from torch import nn

from mgiad_kernels import SmoothingStep, fas_restriction, prolongation_correction
from mgiad_kernels.backend import check_backend

from .common import FASNetwork, check_model_args, conv1x1, conv3x3


class SiC(nn.Module):
    """Multigrid smoothing in channels, SiC(f, u) of Alg. 2, as a recursion over channel levels.

    Channel level kappa has grouped A-hat, B-hat (``group_size`` channels per group), shared by
    its pre- and post-smoothing steps (each step with its own BatchNorms). Channels halve while
    half is at least ``coarsest_channels``; the coarsest level's A-hat, B-hat are fully coupled.
    Between levels: grouped 1x1 restriction R-hat and FAS restriction Pi-hat (c -> c/2, eq. 8
    and 11) and prolongation P-hat (c/2 -> c, eq. 9), each with c / group_size groups.
    Post-smoothing (Alg. 2 lines 8-9) runs on every channel level, the coarsest included.
    """

    def __init__(self, channels: int, coarsest_channels: int, group_size: int, pre_smoothing: int,
                 post_smoothing: int, backend: str):
        super().__init__()
        self.channels = channels
        self.backend = backend
        self.is_coarsest = channels // 2 < coarsest_channels
        groups = 1 if self.is_coarsest else channels // group_size
        self.A = conv3x3(channels, channels, groups, backend)
        self.B = conv3x3(channels, channels, groups, backend)
        self.pre = nn.ModuleList(SmoothingStep(self.A, self.B, channels, backend) for _ in range(pre_smoothing))
        self.post = nn.ModuleList(SmoothingStep(self.A, self.B, channels, backend) for _ in range(post_smoothing))
        if not self.is_coarsest:
            half = channels // 2
            self.R_hat = conv1x1(channels, half, groups, backend)
            self.Pi_hat = conv1x1(channels, half, groups, backend)
            self.P_hat = conv1x1(half, channels, groups, backend)
            self.coarse = SiC(half, coarsest_channels, group_size, pre_smoothing, post_smoothing, backend)

    def forward(self, u: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        for step in self.pre:  # Alg. 2 lines 1-2
            u = step(u, f)
        if not self.is_coarsest:
            # lines 4-5: u_c = Pi-hat(u), f_c = R-hat(f - A-hat(u)) + A-hat_c(u_c), fused
            u_coarse, f_coarse = fas_restriction(u, f, self.A, self.Pi_hat, self.R_hat, self.coarse.A, self.backend)
            u = prolongation_correction(u, self.coarse(u_coarse, f_coarse), self.P_hat, self.backend)  # lines 6-7
        for step in self.post:  # lines 8-9
            u = step(u, f)
        return u


def channel_levels(width: int, coarsest_channels: int) -> list[int]:
    """Channels of a SiC's levels: halve while half is at least coarsest_channels."""
    levels = [width]
    while levels[-1] // 2 >= coarsest_channels and levels[-1] % 2 == 0:
        levels.append(levels[-1] // 2)
    return levels


class MGiaD(FASNetwork):
    """MGiaD (Alg. 3): a SiC on each resolution level, learnable depthwise Pi and R with FAS between.

    Level l has ``channel_scale * widths[l]`` channels (the paper's lambda) and
    ``smoothing_steps[l]`` pre-smoothing steps per channel level; ``post_smoothing`` is the
    paper's eta_post. A-hat and B-hat are shared per channel level (the paper's default).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths=(64, 128, 256, 256),
                 smoothing_steps=(2, 2, 2, 2), coarsest_channels: int = 64, group_size: int = 8,
                 channel_scale: int = 1, post_smoothing: int = 1, backend: str = "auto"):
        super().__init__()
        widths, steps = check_model_args(num_classes, in_channels, widths, smoothing_steps)
        check_backend(backend)
        for name, v, lo in (("coarsest_channels", coarsest_channels, 1), ("group_size", group_size, 1),
                            ("channel_scale", channel_scale, 1), ("post_smoothing", post_smoothing, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int of at least {lo}, got {v!r}")
        widths = tuple(channel_scale * c for c in widths)
        for c in widths:
            if coarsest_channels > c:
                raise ValueError(f"coarsest_channels={coarsest_channels} is larger than the level width {c} "
                                 f"(widths x channel_scale = {widths})")
            for level_c in channel_levels(c, coarsest_channels)[:-1]:
                if level_c % group_size:
                    raise ValueError(f"group_size={group_size} must divide every grouped channel level; "
                                     f"width {c} has level {level_c} (levels {channel_levels(c, coarsest_channels)})")
                if group_size < 2:
                    raise ValueError("group_size must be at least 2 so that the 1x1 restriction can halve each group")
        self.widths = widths
        self.build_skeleton(in_channels, widths, lambda: [  # Alg. 3 around a SiC per level
            SiC(c, coarsest_channels, group_size, n, post_smoothing, backend) for c, n in zip(widths, steps)],
            num_classes, backend)
