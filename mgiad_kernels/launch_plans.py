"""Warm launches without Triton's per-launch dispatch: the compiled kernel's launcher called directly.

``JITFunction.run`` binds every argument, computes its specialization (dtypes, 16-byte alignment of
pointers, divisibility of ints), hashes a cache key, re-checks the kernel's globals and only then calls
the compiled launcher: ~100 us of Python per launch, against ~3 us for a tiny aten op. A launcher here
names a *plan key* that fixes all of that (the non-pointer arguments, the constexprs and options, the
pointers' dtypes, the device and driver); the first launch under a key goes through Triton (compiling if
needed) and keeps the CompiledKernel and its grid, later ones only check each pointer's alignment and call
the compiled launcher. Under the interpreter every launch goes through Triton.
"""
from __future__ import annotations

import functools
from typing import Callable

from ._triton_support import interpreter_enabled


class LaunchPlan:
    """A compiled kernel with its grid and the arguments that follow the pointers, for one plan key."""

    __slots__ = ("kernel", "grid", "rest")

    def __init__(self, kernel, grid: tuple, rest: tuple):
        self.kernel, self.grid, self.rest = kernel, grid, rest


_PLANS: dict = {}
_MAX_PLANS = 4096  # distinct (shape, layout, fusion) launches kept; the oldest go first beyond it
_STATE = {"enabled": True}


def clear() -> None:
    """Forget every plan (the compiled kernels stay in Triton's own caches)."""
    _PLANS.clear()


def set_enabled(enabled: bool) -> bool:
    """Route every launch through Triton's dispatch (False), e.g. for tools that intercept
    ``JITFunction.run``; returns the previous setting."""
    previous, _STATE["enabled"] = _STATE["enabled"], enabled
    return previous


@functools.lru_cache(maxsize=None)
def _triton_runtime():
    from triton import knobs
    from triton.runtime.driver import driver

    return knobs, driver


def launch(jit_fn, grid: Callable[[dict], tuple], pointers: tuple, rest: tuple, constexprs: dict,
           options: dict) -> None:
    """jit_fn[grid](*pointers, *rest, **constexprs, **options), cheaply when warm.

    ``pointers``: the kernel's leading tensor arguments; ``rest``: the remaining runtime arguments (ints,
    floats), in order, after which the kernel takes only constexprs. ``grid(meta)`` gets the constexprs.
    """
    if not _STATE["enabled"] or interpreter_enabled():
        jit_fn[grid(constexprs)](*pointers, *rest, **constexprs, **options)
        return
    knobs, driver = _triton_runtime()
    active = driver.active
    misaligned = 0  # a bit per pointer not 16-byte aligned: Triton specializes each pointer on it
    bit = 1
    for t in pointers:
        if t.data_ptr() & 15:
            misaligned |= bit
        bit <<= 1
    # ids: a JITFunction hashes its source and a torch.dtype hashes slowly; both live as long as the process
    key = (id(jit_fn), id(active), pointers[0].device, *[id(t.dtype) for t in pointers], misaligned,
           rest, *constexprs.values(), *options.values())
    plan = _PLANS.get(key)
    if plan is None:
        meta = {**constexprs, **options}
        g = tuple(grid(meta))
        kernel = jit_fn.run(*pointers, *rest, grid=g, warmup=False, **meta)
        tail = tuple(constexprs[p.name] for p in jit_fn.params[len(pointers) + len(rest):])
        if len(_PLANS) >= _MAX_PLANS:
            del _PLANS[next(iter(_PLANS))]
        _PLANS[key] = LaunchPlan(kernel, (g + (1, 1))[:3], rest + tail)
        return
    kernel = plan.kernel
    stream = active.get_current_stream(active.get_current_device())
    enter_hook = knobs.runtime.launch_enter_hook
    args = pointers + plan.rest
    metadata = None  # what launch hooks get; computed only when one is installed (a HookChain may be empty)
    if enter_hook is not None and getattr(enter_hook, "calls", True):
        metadata = kernel.launch_metadata(plan.grid, stream, *args)
    kernel.run(*plan.grid, stream, kernel.function, kernel.packed_metadata, metadata, enter_hook,
               knobs.runtime.launch_exit_hook, *args)
