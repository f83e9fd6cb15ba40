"""The warm launch's own C launcher: one call hands the driver a site's kernel, its fixed arguments packed once.

Triton's C launch function parses every argument of every launch: for a grouped conv, 82 Python objects
(the constexprs included) walked against their annotations, each pointer's ``data_ptr()`` called and the
address checked with a driver query (``cuPointerGetAttribute``). A warm launch site fixes everything but
the addresses of the tensors it is given (launch_plans), so its plan packs the rest once, as the bytes
the driver reads (``make_plan``), and a launch is ``launch(plan, stream, *tensors)``: copy the packed
parameters, write each tensor's address, ``cuLaunchKernelEx``. It returns False, having launched nothing,
where a tensor is not 16-byte aligned (the plan is the aligned specialization's) or no CUDA context is
current on the thread (Triton's launcher then makes one), and the caller launches through Triton.

Built from ``fast_launch.c`` on first use by Triton's own build helper (the C compiler and the cache its
launchers use), against Triton's ``cuda.h``; it finds the driver's functions in the ``libcuda.so.1`` already
loaded (by Triton). Where it cannot be built or bound, ``launcher()`` is None and warm launches call Triton's
C launch function.
"""
from __future__ import annotations

import ctypes
import functools
import os
import struct
import warnings

_MODULE_NAME = "mgiad_fast_launch"
MAX_PARAMETER_BYTES = 4096  # the packed parameters a plan may hold (CUDA's classic kernel parameter limit)
MAX_PARAMETERS = 512
_MAX_SHARED_PLAIN = 228 * 1024  # above it Triton's launcher adds an oversized-shared-memory attribute
_HEADER = struct.Struct("<Q10I")  # function, grid x/y/z, block x, shared bytes, parameters, tensors,
#                                   the packed parameters' start and size, padding: PlanHeader below



@functools.lru_cache(maxsize=None)
def _module():
    """The built module, bound to the loaded libcuda.so.1, or None (with a warning, once) where it cannot be
    built or no libcuda.so.1 is loaded yet."""
    import triton
    from triton.runtime.build import compile_module_from_src

    include = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "include")
    with open(os.path.join(os.path.dirname(__file__), "fast_launch.c"), encoding="utf-8") as f:
        source = f.read()
    try:
        libcuda = ctypes.CDLL("libcuda.so.1", mode=os.RTLD_NOLOAD | os.RTLD_NOW)
        module = compile_module_from_src(source, _MODULE_NAME, include_dirs=[include])
    except Exception as error:  # no compiler, a failed build, no driver: Triton's launcher serves
        warnings.warn(f"mgiad_kernels: warm launches call Triton's launcher (the fast launcher is off: {error})",
                      RuntimeWarning, stacklevel=3)
        return None
    address = lambda name: ctypes.cast(getattr(libcuda, name), ctypes.c_void_p).value  # noqa: E731
    module.bind(address("cuLaunchKernelEx"), address("cuCtxGetCurrent"), address("cuGetErrorString"))
    return module


def launcher():
    """The fast launcher, ``launch(plan, stream, *tensors) -> bool``, or None where it cannot be built or no
    libcuda.so.1 is loaded yet (warm launches then call Triton's launcher)."""
    module = _module()
    return None if module is None else module.launch


# how each scalar type of a Triton signature is packed (struct format); every parameter gets an 8-byte slot,
# zero-padded, so a 1-byte bool read as 1 or 4 bytes (triton 3.6 or 3.8) reads the same value
_SCALAR_FORMATS = {"i1": "<q", "i8": "<q", "i16": "<q", "i32": "<q", "i64": "<q",
                   "u1": "<Q", "u8": "<Q", "u16": "<Q", "u32": "<Q", "u64": "<Q", "fp32": "<f", "f32": "<f",
                   "fp64": "<d"}


def make_plan(kernel, grid: tuple, values: tuple, tensor_positions: tuple[int, ...]) -> bytes | None:
    """The plan of launching ``kernel`` (a loaded CompiledKernel) on ``grid`` with ``values``, its arguments
    in parameter order (constexprs included; a pointer a launch does not pass: its address as an int, or
    None), the pointers at ``tensor_positions`` given at each launch. None where the launch needs what the
    plan does not carry (clusters, cooperative or PDL launches, oversized shared memory, a parameter type
    other than a pointer, an int or fp32/fp64)."""
    metadata = kernel.metadata
    if getattr(metadata, "num_ctas", 1) != 1 or getattr(metadata, "launch_cooperative_grid", False) \
            or getattr(metadata, "launch_pdl", False) or metadata.shared > _MAX_SHARED_PLAIN:
        return None
    types = list(kernel.src.signature.values())
    if len(types) != len(values):
        return None
    slots, tensor_slots = [], {}
    for position, (ty, value) in enumerate(zip(types, values)):
        if ty == "constexpr":
            continue
        if not isinstance(ty, str):
            return None
        if ty.startswith("*"):
            if position in tensor_positions:
                tensor_slots[position] = len(slots)
                value = 0
            slots.append(struct.pack("<Q", value or 0))
        elif ty in _SCALAR_FORMATS:
            try:
                slots.append(struct.pack(_SCALAR_FORMATS[ty], value).ljust(8, b"\0"))
            except (struct.error, OverflowError):  # out of the type's range: Triton's launcher decides
                return None
        else:
            return None
    if sorted(tensor_slots) != sorted(tensor_positions):
        return None
    slots += [bytes(8), bytes(8)]  # Triton's global and profile scratch pointers: none
    if len(slots) > MAX_PARAMETERS or 8 * len(slots) > MAX_PARAMETER_BYTES:
        return None
    offsets = struct.pack(f"<{len(slots)}I", *range(0, 8 * len(slots), 8))
    tensors = struct.pack(f"<{len(tensor_positions)}I", *(8 * tensor_slots[p] for p in tensor_positions))
    start = _HEADER.size + len(offsets) + len(tensors)
    start += -start % 8
    header = _HEADER.pack(kernel.function, *grid, 32 * metadata.num_warps, metadata.shared, len(slots),
                          len(tensor_positions), start, 8 * len(slots), 0)
    return (header + offsets + tensors).ljust(start, b"\0") + b"".join(slots)
