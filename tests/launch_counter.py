"""Counts Triton kernel launches the same way on a GPU, on the stand-in driver and under the interpreter.

A compiled kernel's launch (Triton's ``JITFunction.run``, the package's launch sites, the stand-in's
launchers, Triton's own CUDA launcher) calls Triton's launch-enter hook (``knobs.runtime.launch_enter_hook``,
a HookChain since triton 3.5); the interpreter calls no launch hook, and runs every kernel through
``InterpretedFunction.run``. ``counting_launches()`` listens to both, so one count means the same on every
path. While the hook is set, the package's warm launches leave their fast path for ``LaunchSite.launch``,
which passes the hook on (see ``launch_sites.warm_function``): the kernels launched are the same, the host
path is not the warm one. ``tests/test_launch_counts.py`` checks the count against the launches the stand-in's
no-op libcuda receives with no hook set.
"""
from __future__ import annotations

import contextlib


def _kernel_name(metadata) -> str:
    """The kernel's name from a launch hook's argument (a LazyDict, its data holding 'name')."""
    data = getattr(metadata, "data", None)
    return data.get("name", "?") if isinstance(data, dict) else "?"


@contextlib.contextmanager
def _hooked(record):
    """``record(name)`` at every compiled launch, through the launch-enter hook."""
    from triton import knobs

    chain = knobs.runtime.launch_enter_hook

    def hook(metadata):
        record(_kernel_name(metadata))

    if hasattr(chain, "add"):  # a HookChain (triton >= 3.5)
        chain.add(hook)
        try:
            yield
        finally:
            chain.remove(hook)
        return
    previous = chain  # triton 3.4: one hook or None

    def chained(metadata):
        hook(metadata)
        if previous is not None:
            previous(metadata)

    knobs.runtime.launch_enter_hook = chained
    try:
        yield
    finally:
        knobs.runtime.launch_enter_hook = previous


@contextlib.contextmanager
def _interpreted(record):
    """``record(name)`` at every launch the interpreter runs (``InterpretedFunction.run``, not a warm-up)."""
    from triton.runtime.interpreter import InterpretedFunction

    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        if not warmup:
            record(self.fn.__name__)
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = run
    try:
        yield
    finally:
        InterpretedFunction.run = original


@contextlib.contextmanager
def counting_launches():
    """Yields a list that gets each launched kernel's name, in launch order, while the context is open."""
    names: list[str] = []
    with _hooked(names.append), _interpreted(names.append):
        yield names
