"""Whether the Triton path can run, decided without touching a GPU at import time."""
from __future__ import annotations

import functools
import importlib.util
import os

import torch

TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None
TRITON_DTYPES = {torch.float32, torch.float16, torch.bfloat16}  # fp32 accumulation in every kernel


def interpreter_enabled() -> bool:
    """True when Triton kernels run on CPU tensors through the interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def autotune_enabled() -> bool:
    """Whether the kernels autotune over their config lists: on GPUs, unless MGIAD_KERNELS_AUTOTUNE=0
    (then the first config only: a correctness run compiles each kernel variant once, not per config).
    Read when the kernels are defined, like TRITON_INTERPRET."""
    return not interpreter_enabled() and os.environ.get("MGIAD_KERNELS_AUTOTUNE", "1") != "0"


def triton_unavailable_reason(*tensors: torch.Tensor) -> str | None:
    """Why the Triton kernels cannot run on ``tensors``, or None when they can."""
    if not TRITON_AVAILABLE:
        return "the 'triton' package is not installed"
    dtypes = {t.dtype for t in tensors if t is not None}
    if not dtypes <= TRITON_DTYPES:
        return f"the Triton kernels compute in {sorted(map(str, TRITON_DTYPES))}, got {sorted(map(str, dtypes))}"
    devices = {t.device.type for t in tensors if t is not None}
    if devices <= {"cuda"}:
        return None
    if devices <= {"cpu"}:
        if not interpreter_enabled():
            return "the tensors are on the CPU and TRITON_INTERPRET=1 is not set"
        if any(t.dtype == torch.bfloat16 for t in tensors if t is not None):
            return "the Triton interpreter cannot compute in bfloat16"
        return None
    return f"Triton kernels run on CUDA tensors, got tensors on {sorted(devices)}"


@functools.lru_cache(maxsize=None)
def multiprocessor_count(device_index: int) -> int:
    """Streaming multiprocessors of a CUDA device, asked at call time (never at import)."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def parallel_programs_wanted(device: torch.device) -> int:
    """How many programs a launch should offer to fill the device."""
    if device.type == "cuda":
        return 4 * multiprocessor_count(device.index if device.index is not None else torch.cuda.current_device())
    return 4  # interpreter: a few programs exercise the split logic without slowing tests
