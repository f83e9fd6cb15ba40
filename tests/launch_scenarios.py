"""The launch-count tests' scenarios, runnable on any launch path: the interpreter, a GPU, the stand-in driver.

Each scenario builds its modules and inputs on ``device`` and calls ``phase()`` between the phases it
counts; ``count_phases(scenario, device, count)`` returns the launches of each phase, ``count()`` being any
running total of launches (``launch_counter``'s names, the stand-in's record, the no-op libcuda's count).
``EXPECTED`` holds the counts that tests/test_smoothing.py asserts for the same steps. The modules and
inputs are channels_last, as the mgiad models hold them: NCHW activations and OIHW weights add the copies that
re-lay them (``conv_launch.relaid``), counted by tests/test_smoothing.py.
"""
from __future__ import annotations

from typing import Callable

import torch

from mgiad_kernels import FASRestriction, GroupedConv2d, ProlongationCorrection, SmoothingStep

# scenario -> launches per phase
EXPECTED = {
    "smoothing eval, no grad": [2],  # relu(bn1(f - A u)), u + relu(bn2(B t))
    "smoothing train fp32": [3, 7],  # A, B, the update; backward
    "smoothing train fp16": [4, 7],  # t written in a launch of its own (smoothing_launch.materializes_t)
    "FAS restriction, prolongation": [4, 1],  # A + residual, Pi, A_coarse, R + sum; P + sum
}


def _step(device: torch.device, dtype: torch.dtype, c: int = 16, group_size: int = 4) -> SmoothingStep:
    torch.manual_seed(0)
    convs = [GroupedConv2d(c, c, 3, padding=1, groups=c // group_size, bias=False, backend="triton")
             for _ in range(2)]
    step = SmoothingStep(*convs, c, backend="triton")
    with torch.no_grad():
        for bn in (step.bn1, step.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
    return step.to(device=device, dtype=dtype, memory_format=torch.channels_last)


def _pair(device: torch.device, dtype: torch.dtype, c: int = 16, hw: int = 4):
    g = torch.Generator().manual_seed(1)
    return tuple(torch.randn(2, c, hw, hw, generator=g).to(device, dtype, memory_format=torch.channels_last)
                 for _ in range(2))


def smoothing_eval(device: torch.device, phase: Callable[[], None]) -> None:
    step = _step(device, torch.float32).eval()
    with torch.no_grad():
        step(*_pair(device, torch.float32))


def _smoothing_train(device: torch.device, phase: Callable[[], None], dtype: torch.dtype) -> None:
    step = _step(device, dtype).train()
    u, f = _pair(device, dtype)
    out = step(u.requires_grad_(), f)
    phase()
    out.backward(torch.ones_like(out))


def fas_transfers(device: torch.device, phase: Callable[[], None]) -> None:
    def conv(c_in, c_out, kernel, stride, groups, seed):
        torch.manual_seed(seed)
        return GroupedConv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False,
                             backend="triton").to(device, memory_format=torch.channels_last)

    Pi, R = conv(8, 8, 3, 2, 8, 1), conv(8, 8, 3, 2, 8, 2)
    A, A_coarse, P = conv(8, 8, 3, 1, 2, 0), conv(8, 8, 3, 1, 2, 3), conv(8, 8, 1, 1, 2, 4)
    u, f = _pair(device, torch.float32, c=8, hw=6)
    with torch.no_grad():
        u_coarse, f_coarse = FASRestriction(Pi, R, backend="triton")(u, f, A, A_coarse)
        phase()
        ProlongationCorrection(P, backend="triton")(u_coarse, f_coarse)


SCENARIOS = {
    "smoothing eval, no grad": smoothing_eval,
    "smoothing train fp32": lambda device, phase: _smoothing_train(device, phase, torch.float32),
    "smoothing train fp16": lambda device, phase: _smoothing_train(device, phase, torch.float16),
    "FAS restriction, prolongation": fas_transfers,
}


def count_phases(name: str, device: torch.device, count: Callable[[], int]) -> list[int]:
    """Run scenario ``name`` on ``device``; the launches of each of its phases, by ``count``."""
    marks = [count()]
    SCENARIOS[name](device, lambda: marks.append(count()))
    marks.append(count())
    return [b - a for a, b in zip(marks, marks[1:])]
