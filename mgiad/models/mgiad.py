"""MGiaD: multigrid in all dimensions (MGiaD paper Alg. 2 and 3)."""
from __future__ import annotations

import torch
from torch import nn

from mgiad_kernels import (SmoothingStep, check_backend, fas_restriction, prolongation_correction,
                           smoothing_steps)

from .fas import FASNetwork
from .layers import conv1x1, conv3x3
from .rules import channel_levels, check_channel_levels, check_coarsest_fits, check_int, check_model_args

__all__ = ["MGiaD", "SiC", "channel_levels"]


class SiC(nn.Module):
    """Multigrid smoothing in channels, SiC(f, u) of Alg. 2, as a recursion over channel levels.

    Channel level kappa has grouped A-hat, B-hat (``group_size`` channels per group), shared by
    its pre- and post-smoothing steps (each step with its own BatchNorms). The levels are
    ``rules.channel_levels``: channels halve while even and half is at least ``coarsest_channels``;
    the coarsest level's A-hat, B-hat are fully coupled.
    Between levels: grouped 1x1 restriction R-hat and FAS restriction Pi-hat (c -> c/2, eq. 8
    and 11) and prolongation P-hat (c/2 -> c, eq. 9), each with c / group_size groups.
    Post-smoothing (Alg. 2 lines 8-9) runs on every channel level, the coarsest included.
    """

    def __init__(self, channels: int, coarsest_channels: int, group_size: int, pre_smoothing: int,
                 post_smoothing: int, backend: str):
        super().__init__()
        levels = check_channel_levels(channels, coarsest_channels, group_size)
        check_int("pre_smoothing", pre_smoothing, 0)
        check_int("post_smoothing", post_smoothing, 0)
        self.channels = channels
        self.backend = check_backend(backend)
        self.is_coarsest = len(levels) == 1
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
        # the restriction and the post-smoothing run take the pre-smoothing run's carries: f's, A-hat's
        # and B-hat's gradients from all their uses on this level are summed in the step kernels
        u, carries = smoothing_steps(u, f, self.pre, hand_on=1 if self.is_coarsest else 2)  # Alg. 2 lines 1-2
        if not self.is_coarsest:
            # lines 4-5: u_c = Pi-hat(u), f_c = R-hat(f - A-hat(u)) + A-hat_c(u_c), fused
            u_coarse, f_coarse = fas_restriction(u, f, self.A, self.Pi_hat, self.R_hat, self.coarse.A, self.backend,
                                                 carries[1])
            u = prolongation_correction(u, self.coarse(u_coarse, f_coarse), self.P_hat, self.backend)  # lines 6-7
        return smoothing_steps(u, f, self.post, carries[0])[0]  # lines 8-9


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
        check_int("coarsest_channels", coarsest_channels)
        check_int("group_size", group_size)
        check_int("channel_scale", channel_scale)
        check_int("post_smoothing", post_smoothing, 0)
        widths = tuple(channel_scale * c for c in widths)
        check_coarsest_fits(coarsest_channels, widths)
        for c in widths:
            check_channel_levels(c, coarsest_channels, group_size)
        self.widths = widths
        self.build_skeleton(in_channels, widths, lambda: [  # Alg. 3 around a SiC per level
            SiC(c, coarsest_channels, group_size, n, post_smoothing, backend) for c, n in zip(widths, steps)],
            num_classes, backend)
