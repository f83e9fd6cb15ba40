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


@functools.lru_cache(maxsize=None)
def autotune_enabled() -> bool:
    """Whether launches autotune: only with MGIAD_KERNELS_AUTOTUNE=1 on a GPU. Then every key (channels,
    groups, kernel size, stride, fusions) benchmarks its config list once, and Triton keeps the choice on
    disk (keyed by device, Triton version, kernel source and key), so a second process tunes nothing.
    By default each key takes one config chosen from its shape: nothing is benchmarked. Read once per
    process, at its first launch (a launch costs a few microseconds of host time, an environment read one)."""
    return not interpreter_enabled() and os.environ.get("MGIAD_KERNELS_AUTOTUNE", "0") == "1"


@functools.lru_cache(maxsize=None)
def promises_checked() -> bool:
    """Whether every launch checks its launcher's promises to the kernel (MGIAD_KERNELS_CHECK_PROMISES=1, a
    debug switch: ``launch_sites.check_promises``); warm launches then go through ``LaunchSite.launch``, not
    their generated functions. Read once per process, when the first launch site is made."""
    return os.environ.get("MGIAD_KERNELS_CHECK_PROMISES", "0") == "1"


def triton_unavailable_reason(*tensors: torch.Tensor, interpreter: bool = True) -> str | None:
    """Why the Triton kernels cannot run on ``tensors``, or None when they can.

    ``interpreter``: CPU tensors may run through Triton's interpreter (TRITON_INTERPRET=1), which
    backend='triton' allows and backend='auto' does not (it is for checking, far too slow to train).
    """
    if not TRITON_AVAILABLE:
        return "the 'triton' package is not installed"
    dtypes = {t.dtype for t in tensors if t is not None}
    if not dtypes <= TRITON_DTYPES:
        return f"the Triton kernels compute in {sorted(map(str, TRITON_DTYPES))}, got {sorted(map(str, dtypes))}"
    devices = {t.device.type for t in tensors if t is not None}
    if devices <= {"cuda"}:
        return None
    if devices <= {"cpu"}:
        if not interpreter:
            return "the tensors are on the CPU; backend='auto' runs Triton on CUDA tensors only"
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


def patch_interpreter_index() -> None:
    """Make triton < 3.7's interpreter work with numpy >= 2.4.

    Its ``tensor.__index__`` is ``int(self.handle.data)``, which numpy 2.4 refuses for a 1-element
    array, so every ``range()`` over a runtime bound fails; triton 3.7 squeezes first. This wraps the
    interpreter's patching so the squeeze happens on every version. A no-op where not needed.
    """
    import triton
    from triton.runtime import interpreter

    if tuple(int(v) for v in triton.__version__.split(".")[:2]) >= (3, 7):
        return
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_mgiad_squeezed", False):
        return

    def patch_lang_tensor(tensor, *args, **kwargs):
        result = original(tensor, *args, **kwargs)
        tensor.__index__ = lambda self: int(self.handle.data.squeeze())
        return result

    patch_lang_tensor._mgiad_squeezed = True
    interpreter._patch_lang_tensor = patch_lang_tensor
