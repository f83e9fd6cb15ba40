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
Triton generates its own argument binder, ``warm_function``). Where Triton's CudaLauncher would only pass
its arguments on (triton 3.6 and 3.8, no scratch, no cluster), the launch is one call of the package's
fast launcher (``fast_launch``) on the site's plan, the packed parameters the driver reads: it writes the
checked tensors' addresses, tests their alignment and calls ``cuLaunchKernelEx``. Else one alignment test
over the pointers it checks, then the compiled launcher with the grid, the kernel and the arguments after
the pointers bound as constants and the placeholder as its address (Triton's C launch function directly
where it can). Either way a warm launch runs no loop, builds no argument tuple and looks nothing up. A
launcher with a cache of its own (conv2d_forward's) generates its warm call around the same launch, the
output's allocation included. On Triton's own launcher (the stand-in's ``launcher='triton'``) a warm
grouped conv forward, allocation included, takes 2.8-3.0 us of host through the fast launcher, against 5.1
calling Triton's C launch function and 7.0 calling Triton's launcher. Under the interpreter, through the
autotuner and with plans disabled, every launch goes through Triton.

With MGIAD_KERNELS_CHECK_PROMISES=1 (``triton_support.promises_checked``), a debug switch, every launch first
checks the promises made to the kernel (``check_promises``): the launcher's own, given as the site's
``promises`` (the alignment and whole-tile constexprs it derived, recomputed from the launch's tensors), and the
16-byte alignment of each pointer the compiled variant the launch takes was specialized on. A broken promise
raises ``BrokenPromise`` naming the kernel, the site and the promise, before anything is launched: on a GPU it
would be a misaligned-address error that ends the process, or wrong values. No warm function is generated
then, so every launch goes through ``LaunchSite.launch``; with the switch off a site is made as before and its
warm launch runs no check.
"""
from __future__ import annotations

import weakref
from typing import Callable, Sequence

from .fast_launch import launcher as fast_launcher, make_plan
from .triton_support import promises_checked

_MAX_SITES = 4096  # distinct (shape, layout, fusion) launches kept per cache; the oldest go first beyond it
_STATE = {"enabled": True, "checks": 0}  # plans enabled; the promise checks made (check_promises)
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


def forget_on_clear(cache) -> None:
    """Have ``clear()`` call ``cache.clear()`` too (a cache holding plans that is not a SiteCache)."""
    _CACHES.append(cache)


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
    a launch with every checked pointer aligned has made its plan; then the instance's generated one. Where
    launches check their promises (``promises_checked``), it is always an instance function that checks each
    launch (``check_promises``) and then calls the method."""

    def __init__(self, jit_fn, grid, rest: tuple, constexprs: dict, options: dict, through_triton: bool = False,
                 promises: Callable | None = None, description: str = ""):
        self.jit_fn, self.rest, self.constexprs, self.options = jit_fn, rest, constexprs, options
        self.promises = promises  # promises(constexprs, pointers) -> the launcher's promises to the kernel that
        #                           the launch's tensors break, as texts (checked under promises_checked())
        self.description = description  # the site as a broken promise names it: what its key fixes, readably
        self.through_triton = through_triton or not isinstance(jit_fn, _triton_runtime()[2])  # the interpreter
        self.grid = grid if self.through_triton else (tuple(grid) + (1, 1))[:3]
        self.plans: dict = {}  # misaligned-pointer bits -> (driver, launcher, function, packed metadata, kernel,
        #                                              the driver's current-stream and current-device functions)
        self.args_tail = None  # rest + the constexprs in parameter order: what the compiled launcher takes
        self.n_pointers = None  # how many pointers a launch takes; set with ``checked``
        self.checked = None  # positions of the pointers that are not the placeholder, whose alignment a
        #                      launch checks; set at the first direct launch
        self.fast_plan = None  # the fast launcher's plan of the warm launch (fast_launch), where it has one
        self.placeholder = self.placeholder_address = None  # the aligned plan's placeholder, and its address
        if promises_checked():  # every launch checked, none through a generated function
            self.launch = _checking_launch(weakref.ref(self))

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
                                         active.get_current_stream, _device_getter(active.get_current_device))
        if misaligned == 0:
            # the placeholder is passed as its address, and kept: the address stays its own
            self.placeholder, self.placeholder_address = placeholder, None if placeholder is None else \
                placeholder.data_ptr()
            self.fast_plan = _fast_plan(self, plan)
            if not promises_checked():
                self.launch = warm_function(self, "pointers, placeholder=None",
                                            [f"pointers[{i}]" for i in range(self.n_pointers)],
                                            fallback="pointers, placeholder")


def _device_getter(get_current_device):
    """The driver's current-device function as a launch calls it: torch's C getter where it is
    ``torch.cuda.current_device`` (Triton's CUDA driver with torch), whose Python frame only adds a lazy-init
    check that the launch which made the plan has passed; else the driver's own."""
    import torch

    return torch._C._cuda_getDevice if get_current_device is torch.cuda.current_device else get_current_device


def _hooks(runtime) -> tuple:
    """The launch hooks as Triton passes them, but None for an empty HookChain (triton >= 3.5 keeps a chain
    that is never None): the launcher then calls nothing and no launch metadata is built."""
    enter, leave = runtime.launch_enter_hook, runtime.launch_exit_hook
    if enter is not None and not getattr(enter, "calls", True):
        enter = None
    if leave is not None and not getattr(leave, "calls", True):
        leave = None
    return enter, leave


def _hook_calls(name: str, hook) -> str:
    """Whether the launch hook ``hook``, bound as ``name``, calls anything, as a warm launch's source tests it:
    a HookChain's list of calls (triton >= 3.5: a chain that is never None), 'True' for a plain function (as
    set before), 'False' for None."""
    if hook is None:
        return "False"
    return f"{name}.calls" if isinstance(getattr(hook, "calls", None), list) else "True"


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
    """A call of the launcher ``site``'s warm launch calls (the fast launcher on its plan, else the compiled
    kernel's launcher of its aligned plan) on ``pointers`` as the warm launch makes it (no checks, the stream
    of the first call), to time alone."""
    (_, run, function, packed, _, current_stream, current_device), = (
        plan for bits, plan in site.plans.items() if bits == 0)
    stream = current_stream(current_device())
    if site.fast_plan is not None:
        fast_launch, plan, tensors = fast_launcher(), site.fast_plan, tuple(pointers[i] for i in site.checked)
        return lambda: fast_launch(plan, stream, *tensors)
    call, bound = _launcher_call(run, "*pointers")
    gx, gy, gz = site.grid
    scope = dict(function=function, packed=packed, tail=site.args_tail, gx=gx, gy=gy, gz=gz, pointers=pointers,
                 stream=stream, **bound)
    source = f"def call():\n    {call}\n"
    exec(compile(source, f"<launcher call of {site.jit_fn.__name__}>", "exec"), scope)  # noqa: S102
    return scope["call"]


def _fast_plan(site: LaunchSite, plan: tuple) -> bytes | None:
    """The fast launcher's plan of ``site``'s aligned ``plan`` (fast_launch.make_plan), or None where its
    warm launch calls the compiled kernel's launcher: a launcher other than Triton's CudaLauncher with no
    scratch (``_direct_launch``), no fast launcher built, or a launch the plan cannot carry."""
    run, kernel = plan[1], plan[4]
    if _direct_launch(run) is None or fast_launcher() is None:
        return None
    address = site.placeholder_address
    values = tuple(None if i in site.checked else address for i in range(site.n_pointers)) + site.args_tail
    return make_plan(kernel, site.grid, values, site.checked)


def warm_function(site: LaunchSite, parameters: str, pointers: Sequence[str], before: str = "",
                  result: str = "None", fallback: str | None = None, bound: dict | None = None,
                  name: str = "launch") -> Callable | None:
    """``def name(parameters): before; <site's warm launch on pointers>; return result``, generated for
    ``site``'s aligned plan (None where the site has none yet: no aligned launch made, or it launches
    through Triton), so that a launcher's warm call (allocation, launch) is one function.

    ``pointers``: one source expression per kernel pointer (those the site does not check are not
    evaluated: the plan holds the placeholder's address); ``before``: statements (each line indented by
    4); ``bound``: the names they use. The launch: where the fast launcher can carry it (``_fast_plan``),
    one call of it on the tensors the site checks (it tests their alignment and launches nothing where
    one is misaligned); else the checked pointers' alignment tested in one expression and the compiled
    kernel's launcher called with the grid and arguments after the pointers bound, the placeholder as its
    address (Triton's launchers take an int as a device address as is: no data_ptr() call, no driver
    query), Triton's C launch function directly where its launcher would only pass its arguments on
    (``_direct_launch``). Anything else (a misaligned pointer, another driver, plans disabled, a launch
    hook set, no current CUDA context) goes to ``LaunchSite.launch(site, fallback)``, looked up then
    (``fallback``: the source of its arguments; default, the pointers as a tuple and the placeholder).
    None as well where launches check their promises (``promises_checked``): each goes through the site."""
    plan = site.plans.get(0)
    if site.through_triton or site.checked is None or plan is None or promises_checked():
        return None
    active, run, function, packed, _, current_stream, current_device = plan
    runtime, driver, _ = _TRITON
    checked = [pointers[i] for i in site.checked]
    if fallback is None:
        fallback = "(" + "".join(f"{p}, " if i in site.checked else "placeholder, "
                                 for i, p in enumerate(pointers)) + "), placeholder"
    # the launch hooks: the objects set now, and while they stay set, whether they call anything
    enter, leave = runtime.launch_enter_hook, runtime.launch_exit_hook
    gates = (f"    if {'driver._active' if hasattr(driver, '_active') else 'driver.active'} is not active \\\n"
             "            or not state['enabled'] \\\n"
             "            or runtime.launch_enter_hook is not enter or runtime.launch_exit_hook is not leave \\\n"
             f"            or {_hook_calls('enter', enter)} or {_hook_calls('leave', leave)} \\\n")
    take_fallback = f"        LaunchSite.launch(site(), {fallback})\n"
    scope = dict(bound or {})
    if site.fast_plan is not None:
        launch = (gates + f"            or not fast_launch(fast_plan, current_stream(current_device()), "
                  f"{', '.join(checked)}):\n" + take_fallback)
        scope.update(fast_launch=fast_launcher(), fast_plan=site.fast_plan)
    else:
        aligned = " | ".join(f"{p}.data_ptr()" for p in checked) or "0"
        call, launcher_names = _launcher_call(run, ", ".join(
            p if i in site.checked else "placeholder_address" for i, p in enumerate(pointers)))
        launch = (gates + f"            or ({aligned}) & 15:\n" + take_fallback + "    else:\n"
                  "        stream = current_stream(current_device())\n" f"        {call}\n")
        gx, gy, gz = site.grid
        scope.update(launcher_names, function=function, packed=packed, tail=site.args_tail, gx=gx, gy=gy, gz=gz,
                     placeholder_address=site.placeholder_address)
    source = f"def {name}({parameters}):\n{before}{launch}    return {result}\n"
    # the site by weak reference: the site holds its own warm launch, which would otherwise hold the site
    scope.update(runtime=runtime, driver=driver, active=active, state=_STATE, LaunchSite=LaunchSite, enter=enter,
                 leave=leave, site=weakref.ref(site), current_stream=current_stream, current_device=current_device,
                 placeholder=site.placeholder)
    exec(compile(source, f"<{name} of {site.jit_fn.__name__}>", "exec"), scope)  # noqa: S102
    return scope[name]


def add_site(key, jit_fn, grid, rest: tuple, constexprs: dict, options: dict, through_triton: bool = False,
             promises: Callable | None = None, description: str = "") -> LaunchSite:
    """Make and keep the site of ``key`` (see LaunchSite)."""
    return SITES.put(key, LaunchSite(jit_fn, grid, rest, constexprs, options, through_triton, promises, description))


class BrokenPromise(RuntimeError):
    """A launch whose tensors break a promise made to its kernel (``check_promises``)."""


def checks_made() -> int:
    """How many launches this process has checked the promises of (MGIAD_KERNELS_CHECK_PROMISES=1)."""
    return _STATE["checks"]


def _checking_launch(site_ref) -> Callable:
    """A site's launch where launches check their promises: ``check_promises``, then ``LaunchSite.launch``
    (looked up at each call). The site by weak reference: it holds this function."""

    def launch(pointers: tuple, placeholder=None) -> None:
        site = site_ref()
        check_promises(site, pointers, placeholder)
        LaunchSite.launch(site, pointers, placeholder)

    return launch


def promise(holds: bool, text: str) -> list[str]:
    """``[text]`` where the promise ``text`` (e.g. 'RED_ALIGN=16 divides the reduced channels per group (12)')
    does not hold for a launch's tensors, else []: a line of a site's ``promises``."""
    return [] if holds else [text]


def kernel_name(site: LaunchSite) -> str:
    """The name of the kernel ``site`` launches (through an Autotuner: the kernel it tunes)."""
    fn = site.jit_fn
    return getattr(fn, "__name__", None) or getattr(getattr(fn, "fn", None), "__name__", None) or repr(fn)


def check_promises(site: LaunchSite, pointers: tuple, placeholder=None) -> None:
    """Raise BrokenPromise naming ``site``'s kernel, the site and each promise a launch on ``pointers`` would
    break: the launcher's (``site.promises`` against the constexprs baked into the site) and the pointers'
    (``_pointer_promises``). Counted by ``checks_made``."""
    _STATE["checks"] += 1
    broken = list(site.promises(site.constexprs, pointers)) if site.promises is not None else []
    broken += _pointer_promises(site, pointers, placeholder)
    if broken:
        raise BrokenPromise(f"{kernel_name(site)}, launch site {site.description or '(not described)'}: broken "
                            "promise: " + "; ".join(broken))


def _pointer_promises(site: LaunchSite, pointers: tuple, placeholder) -> list[str]:
    """The pointers' promises a launch on ``pointers`` breaks, once the site has made a direct launch: the
    placeholder stands where it stood then (a warm launch passes its address there, whatever it is given), and
    each pointer the compiled variant this launch takes (its plan for the pointers' misalignment, on the active
    driver) was specialized as divisible by d (Triton's tt.divisibility, 16 bytes) is at an address divisible
    by d. A launch with no plan yet, or through Triton's dispatch, is specialized by Triton on these tensors."""
    if site.through_triton or site.checked is None:
        return []
    names = _pointer_names(site)
    broken = [f"{names[i]} is a tensor where the site's first launch had the placeholder"
              for i, t in enumerate(pointers) if i not in site.checked and t is not placeholder]
    misaligned = sum(1 << i for i in site.checked if pointers[i].data_ptr() & 15)
    plan = site.plans.get(misaligned)
    if plan is None or plan[0] is not _TRITON[1].active:
        return broken
    attrs = getattr(plan[4].src, "attrs", None) or {}
    for i, t in enumerate(pointers):
        for attr in attrs.get((i,), ()):
            if attr[0] == "tt.divisibility" and t.data_ptr() % attr[1]:
                broken.append(f"{names[i]} specialized as divisible by {attr[1]} bytes in the compiled variant this "
                              f"launch takes, at an address {t.data_ptr() % attr[1]} bytes past a multiple")
    return broken


def _pointer_names(site: LaunchSite) -> list[str]:
    """The kernel's parameter names, the pointers' first."""
    fn = site.jit_fn
    return list(getattr(fn, "arg_names", None) or fn.fn.arg_names)
