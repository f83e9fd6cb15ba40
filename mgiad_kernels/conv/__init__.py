"""Grouped 2-D convolution, ``F.conv2d``'s semantics on Triton kernels written for small groups.

``kernels.py`` (Triton), ``tiles.py`` (tile policy), ``launch.py`` (launchers), ``ops.py`` (custom ops),
``autograd.py`` (reverse, forward and higher-order derivatives), ``functional.py`` and ``module.py`` (the
public entry points), ``geometry.py`` (argument checks and shape arithmetic).
"""
from .functional import grouped_conv2d, residual_conv2d
from .module import GroupedConv2d

__all__ = ["GroupedConv2d", "grouped_conv2d", "residual_conv2d"]
