"""Fused Triton kernels for multigrid CNNs (MGiaD, MgNet, MGIC, Poly-MgNet).

Importing this package never touches a GPU and works without Triton installed.
"""
from .backend import BACKENDS
from .functional import grouped_conv2d
from .modules import GroupedConv2d
from .smoothing import SmoothingStep, smoothing_step

__all__ = ["BACKENDS", "GroupedConv2d", "SmoothingStep", "grouped_conv2d", "smoothing_step"]
__version__ = "0.1.0"
