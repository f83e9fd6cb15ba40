"""Fused Triton kernels for multigrid CNNs (MGiaD, MgNet, MGIC, Poly-MgNet).

Importing this package never touches a GPU and works without Triton installed.
"""
from .backend import BACKENDS, check_backend
from .functional import grouped_conv2d, residual_conv2d
from .modules import GroupedConv2d
from .smoothing import SmoothingCarry, SmoothingStep, smoothing_step, smoothing_steps
from .transfers import FASRestriction, ProlongationCorrection, fas_restriction, prolongation_correction

__all__ = ["BACKENDS", "check_backend", "FASRestriction", "GroupedConv2d", "ProlongationCorrection", "SmoothingCarry",
           "SmoothingStep", "fas_restriction", "grouped_conv2d", "prolongation_correction", "residual_conv2d",
           "smoothing_step", "smoothing_steps"]
__version__ = "0.1.0"
