"""What is timed: a callable per (case, provider), with the case's minimum bytes and FLOPs (cost.py)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mgiad_kernels import GroupedConv2d, SmoothingStep, grouped_conv2d
from .cases import TRITON_PROVIDERS, Case, channels_last, conv_geometry
from .cost import conv_cost, smoothing_step_cost
from .timing import Rotation

Runner = tuple[Callable[[], object], float, float]  # (run once, minimum bytes, FLOPs)


def _elem(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits // 8


def conv_fn(provider: str, case: Case, device: torch.device) -> Runner:
    """One pass (forward, or forward and both gradients) of the case's convolution on ``provider``."""
    c_in, c_out, k, stride, groups = conv_geometry(case)
    backward = case.pass_ == "fwd+bwd"
    fmt = torch.channels_last if channels_last(provider) else torch.contiguous_format

    def make():
        x = torch.randn(case.N, c_in, case.H, case.W, device=device, dtype=case.dtype).to(memory_format=fmt)
        w = torch.randn(c_out, c_in // groups, k, k, device=device, dtype=case.dtype)
        return x.requires_grad_(backward), w.requires_grad_(backward)

    conv = (lambda x, w: grouped_conv2d(x, w, None, stride, k // 2, 1, groups, backend="triton")) \
        if provider in TRITON_PROVIDERS else (lambda x, w: F.conv2d(x, w, None, stride, k // 2, 1, groups))
    if provider == "torch_compile":
        conv = torch.compile(conv, mode="max-autotune-no-cudagraphs", dynamic=False)
    nbytes, flops = conv_cost(case.N, c_in, c_out, case.H, case.W, k, stride, groups, _elem(case.dtype), backward)
    rotation = Rotation(make, int(nbytes), device)
    grad_y = None

    def run():
        nonlocal grad_y
        x, w = rotation.next()
        y = conv(x, w)
        if backward:
            grad_y = torch.ones_like(y) if grad_y is None or grad_y.shape != y.shape else grad_y
            torch.autograd.grad(y, (x, w), grad_y)

    return run, nbytes, flops


def smoothing_fn(provider: str, case: Case, device: torch.device) -> Runner:
    """A training smoothing step (forward and backward) on ``provider``."""
    backend = "triton" if provider == "triton" else "torch"
    c, groups = case.C, case.C // case.group_size
    step = SmoothingStep(GroupedConv2d(c, c, 3, padding=1, groups=groups, bias=False, backend=backend),
                         GroupedConv2d(c, c, 3, padding=1, groups=groups, bias=False, backend=backend), c,
                         backend=backend).to(device=device, dtype=case.dtype)
    fmt = torch.channels_last if channels_last(provider) else torch.contiguous_format
    step = step.to(memory_format=fmt)
    module: nn.Module = torch.compile(step, mode="max-autotune-no-cudagraphs") if provider == "torch_compile" else step
    nbytes, flops = smoothing_step_cost(case.N, c, case.H, case.W, groups, _elem(case.dtype))

    def make():
        u = torch.randn(case.N, c, case.H, case.W, device=device, dtype=case.dtype).to(memory_format=fmt)
        return u.requires_grad_(), torch.randn_like(u).requires_grad_()

    rotation = Rotation(make, int(nbytes), device)

    def run():
        u, f = rotation.next()
        out = module(u, f)
        torch.autograd.grad(out.sum(), (u, f))

    return run, nbytes, flops


def build(case: Case, provider: str, device: torch.device) -> Runner:
    if case.op == "smoothing_step":
        return smoothing_fn(provider, case, device)
    return conv_fn(provider, case, device)
