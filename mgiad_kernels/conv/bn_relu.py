"""BatchNorm and ReLU arithmetic shared by the convolution and BatchNorm kernels (MGiaD paper eq. 3).

ReLU and its gradient follow torch exactly on non-finite values: relu(NaN) is NaN, and the
gradient passes where the ReLU's output is NaN (torch masks with ``output <= 0``).
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def bn_scale_shift(mean_ptr, var_ptr, gamma_ptr, beta_ptr, eps, offs, mask):
    """Per-channel (mean, rstd, scale, shift) of a BatchNorm: bn(x) = x * scale + shift."""
    mean = tl.load(mean_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    var = tl.load(var_ptr + offs, mask=mask, other=1.0).to(tl.float32)
    gamma = tl.load(gamma_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(var + eps)
    scale = gamma * rstd
    return mean, rstd, scale, beta - mean * scale


@triton.jit
def relu(x):
    """max(x, 0) that keeps NaN, as torch.relu does (one max.NaN, which ptxas folds into a following
    conversion's .relu; -0.0 may come out as +0.0, equal to it)."""
    return tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def relu_grad(grad, x):
    """grad where relu(x) > 0 or x is NaN, as torch's threshold_backward masks (x <= 0 gives 0)."""
    return tl.where(x <= 0.0, 0.0, grad)
