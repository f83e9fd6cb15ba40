"""Fused Triton kernels for multigrid CNNs (MGiaD, MgNet, MGIC, Poly-MgNet).

One package per op: ``conv`` (grouped convolution: kernels, tile policy, launch, custom ops, autograd,
functional, module) and ``smoothing`` (the fused smoothing step and the transfers beside it); ``runtime``
makes launches and knows no op; ``backend`` is the switch between Triton and PyTorch. Importing this package
never touches a GPU and works without Triton installed. ``use_kernels(model)`` puts any model's grouped and
depthwise ``nn.Conv2d`` modules on the kernels in one call.
"""
from .backend import BACKENDS, check_backend
from .conv import ConversionReport, GroupedConv2d, grouped_conv2d, residual_conv2d, restore_convs, use_kernels
from .smoothing import (FASRestriction, ProlongationCorrection, SmoothingCarry, SmoothingStep, fas_restriction,
                        prolongation_correction, smoothing_step, smoothing_steps)

__all__ = ["BACKENDS", "check_backend", "ConversionReport", "FASRestriction", "GroupedConv2d", "ProlongationCorrection",
           "SmoothingCarry", "SmoothingStep", "fas_restriction", "grouped_conv2d", "prolongation_correction",
           "residual_conv2d", "restore_convs", "smoothing_step", "smoothing_steps", "use_kernels"]
__version__ = "0.1.0"
