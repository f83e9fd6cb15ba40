"""Fused Triton kernels for multigrid CNNs (MGiaD, MgNet, MGIC, Poly-MgNet).

Importing this package never touches a GPU and works without Triton installed.
"""
from .backend import BACKENDS
from .functional import grouped_conv2d
from .modules import GroupedConv2d

__all__ = ["BACKENDS", "GroupedConv2d", "grouped_conv2d"]
__version__ = "0.1.0"
