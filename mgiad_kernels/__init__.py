"""Fused Triton kernels for multigrid CNNs (MGiaD, MgNet, MGIC, Poly-MgNet).

One package per op: ``conv`` (grouped convolution: kernels, tile policy, launch, custom ops, autograd,
functional, module) and ``smoothing`` (the fused smoothing step and the transfers beside it); ``runtime``
makes launches and knows no op; ``backend`` is the switch between Triton and PyTorch. Importing this package
never touches a GPU and works without Triton installed.
"""
from .backend import BACKENDS, check_backend
from .conv import GroupedConv2d, grouped_conv2d, residual_conv2d
from .smoothing import (FASRestriction, ProlongationCorrection, SmoothingCarry, SmoothingStep, fas_restriction,
                        prolongation_correction, smoothing_step, smoothing_steps)

__all__ = ["BACKENDS", "check_backend", "FASRestriction", "GroupedConv2d", "ProlongationCorrection", "SmoothingCarry",
           "SmoothingStep", "fas_restriction", "grouped_conv2d", "prolongation_correction", "residual_conv2d",
           "smoothing_step", "smoothing_steps"]
__version__ = "0.1.0"
