"""Functional ops with the backend switch."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import ops
from .backend import autocast_inputs, check_backend, use_triton
from .conv_geometry import check_conv_args


def grouped_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1,
                   padding=0, dilation=1, groups: int = 1, backend: str = "auto") -> torch.Tensor:
    """Grouped 2-D convolution with exactly ``F.conv2d``'s semantics and argument names.

    The grouped convolution of the MGiaD paper (Sec. III d, Fig. 5): each of ``groups``
    groups couples only its own C_in/groups input and C_out/groups output channels.
    ``backend``: 'triton' (the Triton kernels, forward and backward), 'torch' (``F.conv2d``)
    or 'auto' (Triton wherever it can run). Under ``torch.autocast`` the Triton path computes in
    the autocast dtype, as F.conv2d does.
    """
    check_backend(backend)
    stride, padding, dilation = check_conv_args(input, weight, bias, stride, padding, dilation, groups)
    cast = autocast_inputs(input, weight, bias) if backend != "torch" else ()
    if cast and use_triton(backend, *cast):
        return ops.conv2d(*cast, list(stride), list(padding), list(dilation), groups)
    return F.conv2d(input, weight, bias, stride, padding, dilation, groups)
