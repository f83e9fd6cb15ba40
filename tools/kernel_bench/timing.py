"""Timers (CUDA-event medians on a GPU, wall-clock on a CPU), the copy-bandwidth roofline, input rotation."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from .cases import Case
from .report import Result

L2_ROTATION_BYTES = 256 << 20  # more than any lent GPU's L2
Timer = Callable[[Callable[[], object]], "tuple[float, float, float]"]
CPU_ROUNDS = 5  # timed calls per case on a CPU, after one warm-up call


def quantiles_ms(times_ms: list[float]) -> tuple[float, float, float]:
    """(median, p20, p80) of timings, the quantiles as the nearest-rank timings (of 5: the second-lowest and
    the second-highest)."""
    times = sorted(times_ms)
    rank = lambda q: times[round(q * (len(times) - 1))]  # noqa: E731
    return statistics.median(times), rank(0.2), rank(0.8)


def timer(device: torch.device) -> Timer:
    """A function timing a callable: (median, p20, p80) in ms."""
    if device.type == "cuda":
        import triton.testing

        def cuda_time(fn):
            q = triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
            return q[0], q[1], q[2]

        return cuda_time

    def cpu_time(fn):
        fn()
        times = []
        for _ in range(CPU_ROUNDS):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return quantiles_ms(times)

    return cpu_time


def copy_bandwidth_gbs(device: torch.device) -> float:
    """Measured device-to-device copy bandwidth, bytes read plus bytes written."""
    n = (1 << 28) if device.type == "cuda" else (1 << 24)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms, _, _ = timer(device)(lambda: dst.copy_(src))
    return 2 * n / ms / 1e6


class Rotation:
    """Copies of the inputs cycled through so that no timed call finds them in L2."""

    def __init__(self, make: Callable[[], tuple], bytes_per_copy: int, device: torch.device):
        copies = 1 if device.type != "cuda" else max(2, min(64, L2_ROTATION_BYTES // max(bytes_per_copy, 1) + 1))
        self.items = [make() for _ in range(copies)]
        self.i = 0

    def next(self) -> tuple:
        self.i = (self.i + 1) % len(self.items)
        return self.items[self.i]


def measure(case: Case, provider: str, device: torch.device, copy_gbs: float, build,
            time_fn: Timer | None = None) -> Result:
    """Time one case on one provider. ``build(case, provider, device)`` gives (run, bytes, FLOPs);
    ``time_fn``: the timer (default: ``timer(device)``)."""
    run, nbytes, flops = build(case, provider, device)
    median, p20, p80 = (time_fn or timer(device))(run)
    gbs = nbytes / median / 1e6
    return Result(case.op_name, case.pass_, case.dtype_name, case.N, case.C, case.H, case.W, case.group_size,
                  provider, median, p20, p80, gbs, flops / median / 1e9, gbs / copy_gbs if copy_gbs else 0.0)
