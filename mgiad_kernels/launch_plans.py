"""Warm launches without Triton's per-launch dispatch: the compiled kernel's launcher called directly.

``JITFunction.run`` binds every argument, computes its specialization (dtypes, 16-byte alignment of
pointers, divisibility of ints), hashes a cache key, re-checks the kernel's globals and only then calls
the compiled launcher: ~30-100 us of Python per launch, against ~1.5-3 us for a tiny aten op.

A launcher describes each launch once per *site key* it chooses (what fixes the launch but the tensors'
addresses: shapes, strides, dtypes, fusion flags, scalars) as a ``LaunchSite``: the kernel, its grid, the
runtime arguments after the pointers, the constexprs and options. A site keeps, per pattern of 16-byte
misaligned pointers (Triton specializes each pointer on it) and per driver, the CompiledKernel that
Triton's first launch made; later launches check the pointers' alignment and call the compiled launcher.
Once a site has launched with every pointer aligned, its ``launch`` is a function generated for it (as
Triton generates its own argument binder): one alignment test over the pointers it checks, the grid, the
kernel and the arguments after the pointers bound as constants, so a warm launch runs no loop, builds no
argument tuple and looks nothing up. It passes the placeholder as its address (Triton's launchers take an
int as is: no ``data_ptr()`` call, no driver query) and, where Triton's CudaLauncher would only pass its
arguments on (triton 3.6 and 3.8, no scratch), calls its C launch function directly: on Triton's own
launcher (the stand-in's ``launcher='triton'``) a warm grouped conv's launch went from 7.0 to 5.1 us of host.
Under the interpreter, through the autotuner and with plans disabled,
every launch goes through Triton.
"""
from __future__ import annotations

import weakref
from typing import Callable

_MAX_SITES = 4096  # distinct (shape, layout, fusion) launches kept per cache; the oldest go first beyond it
_STATE = {"enabled": True}
_CACHES: list = []


class SiteCache(dict):
    """A launcher's sites (or what it keeps with them) by key, bounded, and forgotten by ``clear()``.
    Read with ``get`` (one dict lookup per launch), written with ``put``."""

    def __init__(self):
        super().__init__()
        _CACHES.append(self)

    def put(self, key, value):
        if len(self) >= _MAX_SITES:
            try:
                del self[next(iter(self))]
            except (KeyError, RuntimeError, StopIteration):  # another thread evicted or added meanwhile
                pass
        self[key] = value
        return value


SITES = SiteCache()  # site key -> LaunchSite


def clear() -> None:
    """Forget every site and plan (the compiled kernels stay in Triton's own caches)."""
    for cache in _CACHES:
        cache.clear()


def set_enabled(enabled: bool) -> bool:
    """Route every launch through Triton's dispatch (False), e.g. for tools that intercept
    ``JITFunction.run``; returns the previous setting."""
    previous, _STATE["enabled"] = _STATE["enabled"], enabled
    return previous


_TRITON: list = []  # [knobs.runtime, the driver config, JITFunction], bound at the first launch


def _triton_runtime() -> list:
    if not _TRITON:
        from triton import knobs
        from triton.runtime.driver import driver
        from triton.runtime.jit import JITFunction

        _TRITON[:] = (knobs.runtime, driver, JITFunction)  # one assignment: threads may race here
    return _TRITON


class LaunchSite:
    """jit_fn[grid](*pointers, *rest, **constexprs, **options) for one site key; see the module docstring.

    ``through_triton``: always launch through ``jit_fn[grid]`` (an Autotuner: it benchmarks and picks the
    tile; ``grid`` is then a function of the chosen meta-parameters). ``launch`` is the method below until
    a launch with every checked pointer aligned has made its plan; then the instance's generated one."""

    def __init__(self, jit_fn, grid, rest: tuple, constexprs: dict, options: dict, through_triton: bool = False):
        self.jit_fn, self.rest, self.constexprs, self.options = jit_fn, rest, constexprs, options
        self.through_triton = through_triton or not isinstance(jit_fn, _triton_runtime()[2])  # the interpreter
        self.grid = grid if self.through_triton else (tuple(grid) + (1, 1))[:3]
        self.plans: dict = {}  # misaligned-pointer bits -> (driver, launcher, function, packed metadata, kernel,
        #                                              the driver's current-stream and current-device functions)
        self.args_tail = None  # rest + the constexprs in parameter order: what the compiled launcher takes
        self.n_pointers = None  # how many pointers a launch takes; set with ``checked``
        self.checked = None  # positions of the pointers that are not the placeholder, whose alignment a
        #                      launch checks; set at the first direct launch

    def launch(self, pointers: tuple, placeholder=None) -> None:
        """Launch on ``pointers``, the kernel's leading tensor arguments. ``placeholder``: the 16-byte aligned
        tensor that stands in for the pointers a launch does not use; the site key must fix which those are
        (their alignment is not checked)."""
        checked = self.checked
        if checked is None or not _STATE["enabled"]:
            if self.through_triton or not _STATE["enabled"]:
                self.jit_fn[self.grid](*pointers, *self.rest, **self.constexprs, **self.options)
                return
            checked = self.checked = tuple(i for i, t in enumerate(pointers) if t is not placeholder)
            self.n_pointers = len(pointers)
        misaligned = 0  # a bit per pointer not 16-byte aligned
        for i in checked:
            if pointers[i].data_ptr() & 15:
                misaligned |= 1 << i
        runtime, driver, _ = _TRITON
        active = driver.active
        plan = self.plans.get(misaligned)
        if plan is None or plan[0] is not active:
            self._first_launch(pointers, misaligned, active, placeholder)
            return
        _, run, function, packed, kernel, current_stream, current_device = plan
        args = pointers + self.args_tail
        enter, leave = _hooks(runtime)
        stream = current_stream(current_device())
        hooked = enter is not None or leave is not None
        metadata = kernel.launch_metadata(self.grid, stream, *args) if hooked else None
        run(*self.grid, stream, function, packed, metadata, enter, leave, *args)

    def _first_launch(self, pointers: tuple, misaligned: int, active, placeholder) -> None:
        """Through JITFunction.run (compiling if needed); keeps the CompiledKernel for this alignment, and
        with every pointer aligned, generates the site's warm ``launch``."""
        jit_fn = self.jit_fn
        meta = {**self.constexprs, **self.options}
        kernel = jit_fn.run(*pointers, *self.rest, grid=self.grid, warmup=False, **meta)
        if self.args_tail is None:
            self.args_tail = self.rest + tuple(self.constexprs[p.name]
                                               for p in jit_fn.params[len(pointers) + len(self.rest):])
        plan = self.plans[misaligned] = (active, kernel.run, kernel.function, kernel.packed_metadata, kernel,
                                         active.get_current_stream, active.get_current_device)
        if misaligned == 0:
            self.launch = _warm_launch(self, plan, placeholder)


def _hooks(runtime) -> tuple:
    """The launch hooks as Triton passes them, but None for an empty HookChain (triton >= 3.5 keeps a chain
    that is never None): the launcher then calls nothing and no launch metadata is built."""
    enter, leave = runtime.launch_enter_hook, runtime.launch_exit_hook
    if enter is not None and not getattr(enter, "calls", True):
        enter = None
    if leave is not None and not getattr(leave, "calls", True):
        leave = None
    return enter, leave


def _direct_launch(launcher) -> tuple[str, tuple] | None:
    """How to call the C launch function of Triton's CudaLauncher ``launcher`` without its ``__call__``:
    (form, bound values), or None where ``__call__`` does more than pass its arguments on (scratch to
    allocate, a sanitizer) or its form is not one read here. Forms, as ``__call__`` calls ``launcher.launch``:

    - 'spread' (triton 3.6): grid, stream, function, cooperative, pdl, global scratch, profile scratch,
      packed metadata, launch metadata, enter hook, exit hook, *kernel arguments;
    - 'annotated' (triton 3.8): grid, stream, function, cooperative, pdl, packed metadata, launch metadata,
      enter hook, exit hook, global scratch, profile scratch, argument annotations, signature, kernel arguments.
    """
    cls = type(launcher)
    if cls.__name__ != "CudaLauncher" or cls.__module__ != "triton.backends.nvidia.driver":
        return None
    if getattr(launcher, "global_scratch_size", 1) or getattr(launcher, "profile_scratch_size", 1) \
            or getattr(launcher, "gsan_enabled", False):
        return None
    form = _LAUNCH_FORMS.get(_triton_version())
    if form is None:
        return None
    bound = (launcher.launch, launcher.launch_cooperative_grid, launcher.launch_pdl)
    if form == "annotated":
        bound += (launcher.arg_annotations, launcher.kernel_signature)
    return form, bound


_LAUNCH_FORMS = {(3, 6): "spread", (3, 8): "annotated"}  # CudaLauncher.__call__ read in each release


def _triton_version() -> tuple[int, int]:
    import triton

    major, minor = triton.__version__.split(".")[:2]
    return int(major), int(minor)


def _launcher_call(run, arguments: str) -> tuple[str, dict]:
    """(the source of a call of the compiled launcher ``run`` with grid gx, gy, gz, ``stream``, ``function``,
    ``packed`` and the kernel arguments ``arguments`` (source) then ``tail``, the values it binds): Triton's C
    launch function directly where ``_direct_launch`` allows, else ``run`` itself."""
    direct = _direct_launch(run)
    if direct is None:
        return f"run(gx, gy, gz, stream, function, packed, None, None, None, {arguments}, *tail)", {"run": run}
    if direct[0] == "spread":
        return (f"launch_c(gx, gy, gz, stream, function, cooperative, pdl, None, None, packed, None, None, None, "
                f"{arguments}, *tail)", dict(zip(("launch_c", "cooperative", "pdl"), direct[1])))
    return (f"launch_c(gx, gy, gz, stream, function, cooperative, pdl, packed, None, None, None, None, None, "
            f"annotations, signature, ({arguments}, *tail))",
            dict(zip(("launch_c", "cooperative", "pdl", "annotations", "signature"), direct[1])))


def launcher_call(site: LaunchSite, pointers: tuple) -> Callable[[], None]:
    """A call of the compiled launcher of ``site``'s aligned plan on ``pointers`` as its warm launch makes
    it (no checks, the stream of the first call), to time alone."""
    (_, run, function, packed, _, current_stream, current_device), = (
        plan for bits, plan in site.plans.items() if bits == 0)
    call, bound = _launcher_call(run, "*pointers")
    gx, gy, gz = site.grid
    scope = dict(function=function, packed=packed, tail=site.args_tail, gx=gx, gy=gy, gz=gz, pointers=pointers,
                 stream=current_stream(current_device()), **bound)
    source = f"def call():\n    {call}\n"
    exec(compile(source, f"<launcher call of {site.jit_fn.__name__}>", "exec"), scope)  # noqa: S102
    return scope["call"]


def _warm_launch(site: LaunchSite, plan: tuple, placeholder) -> Callable:
    """``site.launch`` for its aligned plan, generated: the pointers it checks tested in one expression, the
    grid, launcher and arguments after the pointers bound, the placeholder passed as its address (Triton's
    launchers take an int as a device address as is: no data_ptr() call, no driver query). Where Triton's
    launcher would only pass its arguments on, its C launch function is called directly (``_direct_launch``).
    Anything else (a misaligned pointer, another driver, plans disabled, a launch hook set) goes to
    LaunchSite.launch, looked up at that call."""
    active, run, function, packed, _, current_stream, current_device = plan
    runtime, driver, _ = _TRITON
    aligned = " | ".join(f"pointers[{i}].data_ptr()" for i in site.checked) or "0"
    arguments = ", ".join(f"pointers[{i}]" if i in site.checked else "placeholder_address"
                          for i in range(site.n_pointers))
    call, bound = _launcher_call(run, arguments)
    source = (
        "def launch(pointers, placeholder=None):\n"
        "    enter, leave = runtime.launch_enter_hook, runtime.launch_exit_hook\n"
        f"    if ({aligned}) & 15 or driver.active is not active or not state['enabled'] \\\n"
        "            or (enter is not None and getattr(enter, 'calls', True)) \\\n"
        "            or (leave is not None and getattr(leave, 'calls', True)):\n"
        "        return LaunchSite.launch(site(), pointers, placeholder)\n"
        "    stream = current_stream(current_device())\n"
        f"    {call}\n")
    gx, gy, gz = site.grid
    # the site by weak reference: the site holds this function, which would otherwise hold the site; the
    # placeholder itself, so that its address stays its own
    scope = dict(runtime=runtime, driver=driver, active=active, state=_STATE, LaunchSite=LaunchSite,
                 site=weakref.ref(site), current_stream=current_stream, current_device=current_device,
                 function=function, packed=packed, tail=site.args_tail, gx=gx, gy=gy, gz=gz, **bound,
                 placeholder_tensor=placeholder, placeholder_address=None if placeholder is None else
                 placeholder.data_ptr())
    exec(compile(source, f"<warm launch of {site.jit_fn.__name__}>", "exec"), scope)  # noqa: S102
    return scope["launch"]


def add_site(key, jit_fn, grid, rest: tuple, constexprs: dict, options: dict,
             through_triton: bool = False) -> LaunchSite:
    """Make and keep the site of ``key`` (see LaunchSite)."""
    return SITES.put(key, LaunchSite(jit_fn, grid, rest, constexprs, options, through_triton))
