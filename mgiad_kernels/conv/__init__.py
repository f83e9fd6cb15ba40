"""Grouped 2-D convolution, ``F.conv2d``'s semantics on Triton kernels written for small groups.

``kernels.py`` (Triton), ``tiles.py`` (tile policy), ``launch.py`` (launchers), ``ops.py`` (custom ops),
``autograd.py`` (reverse, forward and higher-order derivatives), ``functional.py`` and ``module.py`` (the
public entry points), ``geometry.py`` (argument checks and shape arithmetic), ``swap.py`` (``use_kernels``: a
model's nn.Conv2d modules swapped for GroupedConv2d in one call, and its undo).
"""
from .functional import grouped_conv2d, residual_conv2d
from .module import GroupedConv2d
from .swap import ConversionReport, restore_convs, use_kernels

__all__ = ["ConversionReport", "GroupedConv2d", "grouped_conv2d", "residual_conv2d", "restore_convs", "use_kernels"]
