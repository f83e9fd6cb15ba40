"""Device buffers every launch can share, whatever its op: the placeholder for pointer arguments a launch
does not use, and the zeroed arrival counters of split reductions finished in the kernel."""
from __future__ import annotations

import torch

_SCRATCH: dict[torch.device, torch.Tensor] = {}
_COUNTERS: dict[tuple, torch.Tensor] = {}
_MIN_COUNTERS = 4096


def arrival_counters(device: torch.device, count: int) -> torch.Tensor:
    """At least ``count`` int32 arrival counters for a split reduction finished in the kernel
    (kernels/split_reduction.py), all zero. The kernel leaves them at zero, so one buffer per device
    and stream serves every launch in stream order; launches on another stream get their own."""
    # the raw handle, as Triton's CUDA driver asks it (a torch.cuda.Stream object costs microseconds)
    stream = torch._C._cuda_getCurrentRawStream(device.index) if device.type == "cuda" else 0
    key = (device, stream)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < count:
        buf = _COUNTERS[key] = torch.zeros(max(count, _MIN_COUNTERS), device=device, dtype=torch.int32)
    return buf


def scratch(device: torch.device) -> torch.Tensor:
    """The package's own placeholder for pointer arguments a launch does not use (no bias, no
    BatchNorm, no statistics): never a user's tensor, so no kernel or autotuner hook can touch one."""
    buf = _SCRATCH.get(device)
    if buf is None:
        buf = _SCRATCH[device] = torch.zeros(16, device=device, dtype=torch.float32)
    return buf

