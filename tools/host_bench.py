"""Host-path benchmark of an MGiaD training step: runs anywhere, no GPU needed.

    python -m tools.host_bench [--out-dir DIR] [--repeats N] [--no-cold-start] [--device cpu|cuda]

CPU tensors take the real Triton launch path, compiled for sm_90 by the stand-in CUDA driver
(``tools.standin_driver``), so what is measured is the host side of a GPU training step: how
many kernels it launches (counted as the stand-in's recorded no-op launches) and what each launch costs
the CPU (timed through Triton's own CUDA launcher, built against a no-op libcuda.so.1: everything a
launch does on a GPU's host but the driver's own calls; the no-op launcher where no C compiler is found).

1. Launches per MGiaD forward+backward (after a warm-up step): Triton launches (from the stand-in's
   recorder) and aten compute ops (``AtenLaunchCounter``: the aten ops that would launch a GPU
   kernel; views, pure allocations and ops returning no tensor are not counted; the package's
   custom ops are opened up and the aten ops inside them counted).
2. Host microseconds per call, medians over ``--repeats`` batches of 1000 calls, the batches of
   (a)-(c) interleaved: (a) ``torch.add(a, b, out=c)`` on 16 floats, (a2) ``torch.add(a, b)``, which
   allocates its output as a conv does, (b) one Triton launch (``conv_launch.conv2d_forward`` of a small
   grouped conv), with parts of it timed alone: (b1) the output's allocation as the generated warm call
   makes it, and (b2) the launcher call the
   warm launch makes (the package's fast launcher, ``mgiad_kernels.runtime.fast_launch``, on the site's packed
   plan; Triton's C launch function where the fast launcher is not built), (c) the same conv through the
   custom op
   ``torch.ops.mgiad_kernels.conv2d``, (c2) through ``conv_ops.call_conv2d``, the entry the eager autograd
   Functions use (no dispatcher for plain tensors), and (d) the whole step's host time per Triton launch.
3. Cold start (a subprocess, empty TRITON_CACHE_DIR, autotuning off): compiles, autotune
   benchmarks and wall seconds of a first forward+backward; ``--no-cold-start`` skips it.
4. Where the step's host time goes besides the launch itself: each launcher the step calls
   (``STEP_LAUNCHERS``), its calls and Triton launches per step and its own host microseconds per call
   (argument checks, site keys, allocations, launches; the launchers it calls not included), medians
   over ``--repeats`` steps, per launch and over (a). (b) is conv2d_forward timed alone.

``--device cuda`` (on a GPU) times measurement 2 and the step with CUDA tensors instead: Triton's own
launcher and CUDA's caching allocator in (b), against aten ops that launch a kernel too, each batch
started on an idle GPU; the step's host time beside its wall time, and its Triton launches counted
through the launch hook. On the CPU, (b2) skips the driver's calls and (a) launches nothing, so the
CPU ratio is the stricter one.

Everything but the cold start runs on a warm Triton cache (the user's), with one torch thread.
Writes ``<out-dir>/host-<device>-<date>.json`` and ``.md`` (atomically, once everything is measured)
and prints a summary. Runs without TRITON_INTERPRET (the stand-in needs the compiler): when it is
set, the benchmark re-runs itself in a child process without it.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

PROG = "python -m tools.host_bench"
ARCH = 90  # the stand-in's target: sm_90, an H100
H100_PROGRAMS = 4 * 132  # parallel programs a launch offers on an H100 (4 per SM)
MODEL_CONFIG = dict(num_classes=10, widths=(64, 128, 256, 256), smoothing_steps=(2, 2, 2, 2), coarsest_channels=64,
                    group_size=8, channel_scale=3, backend="triton")
INPUT_SHAPE = (2, 3, 32, 32)
LABELS = (1, 7)
CALLS_PER_BATCH = 1000
CUDA_CALLS_PER_BATCH = 200  # well under CUDA's pending-launch queue (~1024): a batch times the host, not the GPU
# The small grouped conv of measurement 2: x (N, C, H, W), weight (C_out, C_in / groups, KH, KW).
CONV_X, CONV_W, CONV_GROUPS = (2, 64, 8, 8), (64, 8, 3, 3), 8

TARGETS = {  # name: (what, limit); a value meets its target when value <= limit
    "triton_plus_aten_launches": ("Triton + aten launches per MGiaD fwd+bwd", 650),
    "aten_launches": ("aten compute ops per MGiaD fwd+bwd", 100),
    "launch_us_ratio": ("host us per Triton launch / us per tiny aten op", 2.5),
    "cold_start_compiles": ("compiles of a first fwd+bwd on an empty cache", 60),
    "cold_start_benchmarks": ("autotune benchmarks of that first step", 0),
}

# ---- counting the aten ops that would launch a GPU kernel ---------------------------------------------------------

VIEW_OPS = frozenset({"as_strided", "view", "_unsafe_view", "_reshape_alias", "reshape", "t", "transpose", "permute",
                      "expand", "alias", "slice", "select", "unsqueeze", "squeeze", "detach", "unfold", "split",
                      "split_with_sizes", "unbind", "chunk", "narrow", "diagonal", "view_as", "lift_fresh",
                      # in-place metadata changes: strides, shape or storage, no data touched
                      "as_strided_", "t_", "transpose_", "squeeze_", "unsqueeze_", "detach_", "resize_", "set_"})
ALLOCATION_OPS = frozenset({"empty", "empty_strided", "new_empty", "new_empty_strided", "empty_like"})
NON_TENSOR_OPS = frozenset({"promote_types", "result_type", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset",
                            "is_same_size", "_local_scalar_dense", "_has_compatible_shallow_copy_type"})
EXCLUDED_OPS = VIEW_OPS | ALLOCATION_OPS | NON_TENSOR_OPS  # aten overload packet names never counted


def _returns_tensor(func) -> bool:
    return any("Tensor" in str(r.type) for r in func._schema.returns)


def _mutates(func) -> bool:
    return any(a.alias_info is not None and a.alias_info.is_write for a in func._schema.arguments)


def is_counted(func) -> bool:
    """Whether an aten op would launch a GPU kernel: not a view or alias, not a pure allocation, and
    it returns a tensor or writes one (``_foreach_add_`` returns nothing but computes)."""
    if func.namespace != "aten":
        return False
    name = func.overloadpacket.__name__
    if func.is_view or name in EXCLUDED_OPS:
        return False
    return _returns_tensor(func) or _mutates(func)


class AtenLaunchCounter(TorchDispatchMode):
    """Counts the aten compute ops run under it (``counts``: op overload -> calls, e.g. 'aten.add.Tensor').

    The package's custom ops (namespace ``mgiad_kernels``) are opaque to a dispatch mode; each is not
    counted itself but runs its Python implementation under the mode, so the aten ops inside its
    launchers (allocations excepted, zero fills counted) are. Triton launches are not aten ops.
    """

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "mgiad_kernels":
            # calling func again under the mode would recurse forever: its implementation, opened up
            from mgiad_kernels.conv import ops as conv_ops
            from mgiad_kernels.smoothing import ops as smoothing_ops

            name = func._schema.name.split("::")[1]
            impl = getattr(conv_ops, name, None) or getattr(smoothing_ops, name)
            impl = impl._init_fn
            with self:
                return impl(*args, **kwargs)
        if is_counted(func):
            self.counts[str(func)] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# ---- the stand-in set-up ------------------------------------------------------------------------------------------

@contextlib.contextmanager
def triton_on_cpu(arch: int = ARCH, launcher: str = "noop"):
    """CPU tensors take the Triton path, with an H100's grids, under the stand-in driver (``launcher``: its
    'noop' launches or Triton's own launcher, see standin_cuda_driver); yields its recorder. Everything
    patched is restored on exit."""
    import mgiad_kernels.backend as backend
    from mgiad_kernels.conv import launch as conv_launch
    from tools.standin_driver import standin_cuda_driver

    saved = backend.triton_unavailable_reason, conv_launch.parallel_programs_wanted
    backend.triton_unavailable_reason = lambda *tensors, **kwargs: None  # CPU tensors stand in for CUDA ones
    conv_launch.parallel_programs_wanted = lambda device: H100_PROGRAMS  # an H100's grids
    try:
        with standin_cuda_driver(arch=arch, launcher=launcher) as rec:
            yield rec
    finally:
        backend.triton_unavailable_reason, conv_launch.parallel_programs_wanted = saved


@contextlib.contextmanager
def _torch_threads(n: int):
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def build_step(device: torch.device = torch.device("cpu")):
    """The benchmark's model and batch on ``device``; returns (forward, step): forward() zeroes the gradients
    (to None) and returns the loss; step() runs forward().backward()."""
    import torch.nn.functional as F

    from mgiad.models import MGiaD

    torch.manual_seed(0)
    model = MGiaD(**MODEL_CONFIG).to(device=device, memory_format=torch.channels_last)
    x = torch.randn(*INPUT_SHAPE, device=device).to(memory_format=torch.channels_last)
    y = torch.tensor(LABELS, device=device)

    def forward():
        model.zero_grad(set_to_none=True)
        return F.cross_entropy(model(x), y)

    def step():
        forward().backward()

    return forward, step


def _launches(rec, start: int) -> list:
    return [launch for launch in rec.launches[start:] if not launch.bench]


# ---- timing -------------------------------------------------------------------------------------------------------

def _quantiles(samples: list[float], scale: float = 1.0) -> tuple[float, float, float]:
    """(median, p20, p80) of the samples, times ``scale``."""
    s = sorted(samples)
    pick = lambda q: s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]  # noqa: E731
    return statistics.median(s) * scale, pick(0.2) * scale, pick(0.8) * scale


def _stats(samples: list[float], scale: float = 1.0) -> dict:
    """Median, p20 and p80 of per-call microseconds (the samples times ``scale``)."""
    median, p20, p80 = _quantiles(samples, scale)
    return {"median_us": median, "p20_us": p20, "p80_us": p80, "batches": len(samples)}


def time_interleaved(fns: dict, batches: int, calls: int = CALLS_PER_BATCH, settle=None) -> dict:
    """Per-call host microseconds of each function: ``batches`` batches of ``calls`` calls each, the
    functions' batches interleaved (drift hits them all alike), garbage collection off meanwhile.
    ``settle()`` runs before each batch, untimed (on a GPU: drain the queue the last batch filled)."""
    for fn in fns.values():  # warm-up: compiles, caches
        for _ in range(min(calls, 50)):
            fn()
    samples = {name: [] for name in fns}
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(batches):
            for name, fn in fns.items():
                if settle is not None:
                    settle()
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn()
                samples[name].append((time.perf_counter() - t0) / calls * 1e6)
    finally:
        if enabled:
            gc.enable()
    return {name: _stats(s) for name, s in samples.items()}


def _small_conv_calls(device: torch.device = torch.device("cpu")):
    """(launch, custom op, direct call, parts): the same small grouped conv as one Triton launch, through the
    custom op and through ``conv_ops.call_conv2d``, the geometry built as ``mgiad_kernels.ops`` builds it;
    ``parts()`` (after a warm launch) gives the pieces of a warm launch to time alone: the call of the compiled
    kernel's launcher as the warm launch makes it, and the output's allocation as the generated call makes it."""
    from mgiad_kernels.conv import launch as conv_launch
    from mgiad_kernels.conv import ops as conv_ops
    from mgiad_kernels.conv.ops import conv_geometry

    x = torch.randn(*CONV_X, device=device).to(memory_format=torch.channels_last)
    w = torch.randn(*CONV_W, device=device)
    stride, padding, dilation = [1, 1], [1, 1, 1, 1], [1, 1]
    geo = conv_geometry(x.shape, w.shape, stride, padding, dilation, CONV_GROUPS)
    op = torch.ops.mgiad_kernels.conv2d

    def parts():
        from mgiad_kernels.runtime import launch_sites

        launch_sites.clear()  # then this conv's key is the only one
        for _ in range(3):  # its call made, then generated, then warm
            y = conv_launch.conv2d_forward(x, w, None, None, 1.0, geo)
        call, = conv_launch._FORWARD_SITES.values()
        site = call.launch_site
        placeholder = conv_launch.scratch(x.device).data_ptr()  # as a warm launch passes it
        # conv2d_forward's pointers: src, weight, adjoint weight, bias, dst, other and ten more placeholders
        pointers = (x, w, placeholder, placeholder, y, *(placeholder,) * 11)
        timed = {"compiled_launcher": launch_sites.launcher_call(site, pointers)}
        # the generated call's allocation: torch.empty_like(x) for a same-size conv (as this one), else y's shape
        # and strides
        like_input = "empty_like" in call.__code__.co_names
        timed["output_allocation"] = (lambda: torch.empty_like(x)) if like_input else \
            (lambda: x.new_empty_strided(y.shape, y.stride()))
        return timed

    return (lambda: conv_launch.conv2d_forward(x, w, None, None, 1.0, geo),
            lambda: op(x, w, None, None, 1.0, stride, padding, dilation, CONV_GROUPS),
            lambda: conv_ops.call_conv2d(x, w, None, None, 1.0, stride, padding, dilation, CONV_GROUPS), parts)


def _host_calls(device: torch.device) -> dict:
    """Measurement 2's calls on ``device`` by name: (a), (a2), (b), (c), (c2) and (b)'s parts (after a
    warm launch)."""
    a, b, c = (torch.randn(16, device=device) for _ in range(3))
    launch, custom_op, direct_call, parts = _small_conv_calls(device)
    return {"aten_add_16": lambda: torch.add(a, b, out=c), "aten_add_16_allocating": lambda: torch.add(a, b),
            "triton_conv2d_launch": launch, "custom_op_conv2d": custom_op, "direct_call_conv2d": direct_call,
            **parts()}


def _add_ratios(timed: dict) -> None:
    """Each entry's median over (a)'s, as ``ratio_to_aten_add``."""
    base = timed["aten_add_16"]["median_us"]
    for entry in timed.values():
        entry["ratio_to_aten_add"] = entry["median_us"] / base


# the launchers an MGiaD step calls (by the module they live in, mgiad_kernels.{conv,smoothing}.launch), timed
# per call in measurement 4
STEP_LAUNCHERS = ("conv2d_forward", "conv2d_grad_input", "conv2d_grad_weight", "smoothing_step_forward",
                  "smoothing_step_backward")
_LAUNCH_MODULES = {"conv2d_forward": "conv", "conv2d_grad_input": "conv", "conv2d_grad_weight": "conv",
                   "smoothing_step_forward": "smoothing", "smoothing_step_backward": "smoothing"}


@contextlib.contextmanager
def timing_launchers(launches_so_far=None):
    """Wraps each of ``STEP_LAUNCHERS`` in its launch module (callers look them up there) to keep,
    per call, its own host seconds and, given ``launches_so_far()`` (the Triton launches made until now), its
    own launches: a launcher's calls of another (smoothing_step_backward's conv2d_grad_weight) count for that
    one only. Yields {name: [(seconds, launches), ...]}."""
    import importlib

    modules = {name: importlib.import_module(f"mgiad_kernels.{package}.launch")
               for name, package in _LAUNCH_MODULES.items()}

    calls = {name: [] for name in STEP_LAUNCHERS}
    inner = []  # per open call: (seconds, launches) of the timed calls it made

    def timed(name, fn):
        def call(*args, **kwargs):
            inner.append([0.0, 0])
            start = launches_so_far() if launches_so_far is not None else 0
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds = time.perf_counter() - t0
                launched = launches_so_far() - start if launches_so_far is not None else 0
                nested_seconds, nested_launches = inner.pop()
                calls[name].append((seconds - nested_seconds, launched - nested_launches))
                if inner:
                    inner[-1][0] += seconds
                    inner[-1][1] += launched
        return call

    saved = {name: getattr(modules[name], name) for name in STEP_LAUNCHERS}
    try:
        for name, fn in saved.items():
            setattr(modules[name], name, timed(name, fn))
        yield calls
    finally:
        for name, fn in saved.items():
            setattr(modules[name], name, fn)


def _launcher_rows(counted: dict, timed: dict, steps: int, aten_us: float, launches_counted: bool = True) -> dict:
    """Measurement 4 per launcher: calls and Triton launches per step (from ``counted``, one step;
    ``launches_counted`` False: launches not known, None), median own host us per call over ``steps`` timed
    steps (``timed``), per launch, and over (a)."""
    rows = {}
    for name in STEP_LAUNCHERS:
        if not timed[name]:
            continue
        calls = len(counted[name])
        if len(timed[name]) != steps * calls:
            raise RuntimeError(f"{name}: {calls} calls in the counted step, {len(timed[name])} in {steps} timed steps")
        launches = sum(n for _, n in counted[name]) / max(calls, 1) if launches_counted else None
        median = statistics.median(seconds for seconds, _ in timed[name]) * 1e6
        rows[name] = {"calls_per_step": calls, "launches_per_call": launches, "median_us_per_call": median,
                      "us_per_launch": median / launches if launches else None,
                      "per_launch_ratio_to_aten_add": median / launches / aten_us if launches else None}
    return rows


def timing_launcher() -> str:
    """The stand-in's launcher for the CPU timings: 'triton' (Triton's own launcher on the no-op libcuda: a
    launch's host cost as on a GPU, less the driver's calls) where it can be built (no GPU visible, a C
    compiler), else 'noop' (the recorded no-op launch, which does less than Triton's)."""
    from tools import standin_driver

    try:
        standin_driver.noop_libcuda()
    except (RuntimeError, OSError, subprocess.CalledProcessError):
        return "noop"
    return "triton"


def measure_warm(repeats: int, log=print, launcher: str | None = None) -> dict:
    """Measurements 1, 2 and 4, in this process, on the warm Triton cache: the launches counted on the
    stand-in's recorded no-op launcher, the host times on ``launcher`` (default ``timing_launcher()``)."""
    from mgiad_kernels.conv import launch as conv_launch

    launcher = launcher or timing_launcher()
    with _torch_threads(1):
        with triton_on_cpu() as rec:
            forward, step = build_step()
            t0 = time.perf_counter()
            step()  # warm-up: compiles (or loads from the disk cache) every kernel of the step
            log(f"warm-up step: {time.perf_counter() - t0:.1f} s, {len(rec.compiles)} kernels compiled or loaded")
            with timing_launchers(lambda: len(rec.launches)) as counted:
                step()  # each launcher's calls and Triton launches (measurement 4)
            start = len(rec.launches)
            with AtenLaunchCounter() as counter:
                loss = forward()
            forward_triton, forward_aten = len(_launches(rec, start)), counter.total
            with counter:
                loss.backward()
            del loss
            launched = _launches(rec, start)
            per_kernel = Counter(launch.name for launch in launched)
            start = len(rec.launches)
            for call in _host_calls(torch.device("cpu")).values():
                call()
            conv_launches = Counter(launch.name for launch in _launches(rec, start))
            del rec.launches[:]  # the recorder keeps every launch

        with triton_on_cpu(launcher=launcher):
            step()  # loads every kernel under this launcher
            step_ms = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                step()
                step_ms.append((time.perf_counter() - t0) * 1e3)
            with timing_launchers() as per_launcher:
                for _ in range(repeats):
                    step()
            timed = time_interleaved(_host_calls(torch.device("cpu")), repeats)
            call, = conv_launch._FORWARD_SITES.values()  # the timed conv's (_small_conv_calls)
            warm_launch = "fast" if call.launch_site.fast_plan is not None else "triton"

    n_triton = len(launched)
    timed["mgiad_step_per_triton_launch"] = _stats(step_ms, 1e3 / max(n_triton, 1))
    _add_ratios(timed)
    median, p20, p80 = _quantiles(step_ms)
    return {
        "launchers": _launcher_rows(counted, per_launcher, repeats, timed["aten_add_16"]["median_us"]),
        "launches": {"triton": n_triton, "triton_per_kernel": dict(sorted(per_kernel.items())),
                     "aten": counter.total, "aten_per_op": dict(sorted(counter.counts.items())),
                     "triton_plus_aten": n_triton + counter.total,
                     "forward": {"triton": forward_triton, "aten": forward_aten},
                     "backward": {"triton": n_triton - forward_triton, "aten": counter.total - forward_aten}},
        "host_us": timed,
        "mgiad_step_ms": {"median": median, "p20": p20, "p80": p80, "repeats": len(step_ms)},
        "small_conv": {"x": list(CONV_X), "weight": list(CONV_W), "groups": CONV_GROUPS, "stride": 1, "padding": 1,
                       "kernels_launched": sorted(conv_launches)},
        "launcher": launcher, "warm_launch": warm_launch,
    }


# ---- on a GPU -----------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _counting_triton_launches():
    """Counts Triton launches through the launch hook (a HookChain, triton >= 3.5); yields [count], or
    [None] where the hook cannot be chained. A set hook sends warm launches through LaunchSite.launch,
    which passes it on: count in a pass of its own, not a timed one."""
    from triton import knobs

    chain = knobs.runtime.launch_enter_hook
    count = [0 if hasattr(chain, "add") else None]

    def hook(metadata):
        count[0] += 1

    if count[0] is not None:
        chain.add(hook)
    try:
        yield count
    finally:
        if count[0] is not None:
            chain.remove(hook)


def measure_cuda(repeats: int, log=print, device: torch.device = torch.device("cuda"), sync=None) -> dict:
    """Measurement 2 and the step's host time on a GPU: CUDA tensors, Triton's own launcher and CUDA's
    caching allocator, against aten ops that launch a kernel too. Each batch starts on an idle GPU
    (``sync``: torch.cuda.synchronize; the test runs it on the stand-in with CPU tensors)."""
    sync = torch.cuda.synchronize if sync is None else sync
    with _torch_threads(1):
        _, step = build_step(device)
        t0 = time.perf_counter()
        step()
        sync()
        log(f"warm-up step: {time.perf_counter() - t0:.1f} s")
        with _counting_triton_launches() as count, timing_launchers(
                None if count[0] is None else lambda: count[0]) as counted:
            step()
        sync()
        host_ms, wall_ms = [], []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            step()
            host_ms.append((time.perf_counter() - t0) * 1e3)
            sync()
            wall_ms.append((time.perf_counter() - t0) * 1e3)
        with timing_launchers() as per_launcher:
            for _ in range(repeats):
                step()
        sync()
        timed = time_interleaved(_host_calls(device), repeats, calls=CUDA_CALLS_PER_BATCH, settle=sync)
        sync()
    n_triton = count[0]
    if n_triton:
        timed["mgiad_step_per_triton_launch"] = _stats(host_ms, 1e3 / n_triton)
    _add_ratios(timed)
    median, p20, p80 = _quantiles(host_ms)
    wall = _quantiles(wall_ms)
    return {"launches": {"triton": n_triton}, "host_us": timed,
            "launchers": _launcher_rows(counted, per_launcher, repeats, timed["aten_add_16"]["median_us"],
                                        launches_counted=n_triton is not None),
            "mgiad_step_ms": {"median": median, "p20": p20, "p80": p80, "repeats": len(host_ms)},
            "mgiad_step_wall_ms": {"median": wall[0], "p20": wall[1], "p80": wall[2], "repeats": len(wall_ms)},
            "small_conv": {"x": list(CONV_X), "weight": list(CONV_W), "groups": CONV_GROUPS, "stride": 1,
                           "padding": 1}}


# ---- cold start ---------------------------------------------------------------------------------------------------

def cold_start_child() -> None:
    """In a fresh process (empty TRITON_CACHE_DIR): one forward+backward; prints its record as JSON."""
    torch.set_num_threads(1)
    with triton_on_cpu() as rec:
        _, step = build_step()
        t0 = time.perf_counter()
        step()
        seconds = time.perf_counter() - t0
    per_kernel = Counter(c.name for c in rec.compiles)
    print(json.dumps({"compiles": len(rec.compiles), "compiles_per_kernel": dict(sorted(per_kernel.items())),
                      "benchmarks": len(rec.benchmarks), "launches": len([x for x in rec.launches if not x.bench]),
                      "step_s": seconds}))


def _child_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MGIAD_KERNELS_AUTOTUNE")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def measure_cold_start(timeout: float = 1800) -> dict:
    """Measurement 3 in a subprocess with an empty Triton cache and autotuning off."""
    with tempfile.TemporaryDirectory(prefix="mgiad-host-bench-cache-") as cache:
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", "from tools.host_bench import cold_start_child; "
                               "cold_start_child()"], env=_child_env(TRITON_CACHE_DIR=cache),
                              capture_output=True, text=True, timeout=timeout)
        process_s = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"the cold-start process failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = process_s
    return result


# ---- report -------------------------------------------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU's model name (lscpu, /proc/cpuinfo), else platform.processor() or the machine."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.strip().lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def targets(doc: dict) -> dict:
    """Each target of the issue: its value, limit and whether it is met (None: not measured, as the
    launch counts and the cold start on a GPU, where only the host times are measured)."""
    launches, cold = doc["launches"], doc.get("cold_start")
    values = {"triton_plus_aten_launches": launches.get("triton_plus_aten"), "aten_launches": launches.get("aten"),
              "launch_us_ratio": doc["host_us"]["triton_conv2d_launch"]["ratio_to_aten_add"],
              "cold_start_compiles": cold["compiles"] if cold else None,
              "cold_start_benchmarks": cold["benchmarks"] if cold else None}
    return {name: {"what": what, "value": values[name], "limit": limit,
                   "met": None if values[name] is None else values[name] <= limit}
            for name, (what, limit) in TARGETS.items()}


def results_stem(out_dir: str, date: datetime.date, device: torch.device = torch.device("cpu")) -> str:
    """``out_dir/host-<device>-<date>``, named like tools.kernel_bench.report's results."""
    from tools.kernel_bench.report import results_stem as kernel_results_stem

    return kernel_results_stem(out_dir, device, prefix="host-", date=date)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


_LAUNCHER_TEXT = {
    "triton": "through Triton's own CUDA launcher (its argument parsing and pointer extraction) on a no-op "
              "libcuda.so.1: a launch's host cost as on a GPU, less the driver's own calls",
    "noop": "through the stand-in's recorded no-op launcher, which does less than Triton's own (the no-op "
            "libcuda could not be built or loaded here)"}
_WARM_LAUNCH_TEXT = {"fast": "the fast launcher on the site's packed plan",
                     "triton": "Triton's, its C launch function called directly"}
_HOST_ROWS = (("aten_add_16", "(a) torch.add, 16 floats, out="),
              ("aten_add_16_allocating", "(a2) torch.add, 16 floats, allocating its output"),
              ("triton_conv2d_launch", "(b) one Triton launch (conv_launch.conv2d_forward)"),
              ("output_allocation", "(b1) of (b): its output's allocation alone, as the warm call makes it"),
              ("compiled_launcher", "(b2) of (b): the compiled launcher's call alone"),
              ("custom_op_conv2d", "(c) torch.ops.mgiad_kernels.conv2d"),
              ("direct_call_conv2d", "(c2) conv_ops.call_conv2d: (c) as eager autograd calls it (DirectCall)"),
              ("mgiad_step_per_triton_launch", "(d) MGiaD fwd+bwd host time / Triton launches"))


def _launcher_table(doc: dict) -> list[str]:
    """Measurement 4's table (lines), or none where it was not measured."""
    if not doc.get("launchers"):
        return []
    lines = ["", "Where the step's host time goes (measurement 4): each launcher's own host time per call, medians "
             "over the timed steps (a launcher's calls of another counted for that one). In a step a call runs on "
             "caches the rest of the step has cooled, where (a) and (b) repeat one call.", "",
             "| launcher | calls per step | Triton launches per call | own host us per call | us per launch "
             "| per launch / (a) |", "|---|---|---|---|---|---|"]
    for name, r in doc["launchers"].items():
        launches = "" if r["launches_per_call"] is None else f"{r['launches_per_call']:.2f}"
        per_launch = "" if r["us_per_launch"] is None else f"{r['us_per_launch']:.1f}"
        ratio = "" if r["per_launch_ratio_to_aten_add"] is None else f"{r['per_launch_ratio_to_aten_add']:.1f}x"
        lines.append(f"| {name} | {r['calls_per_step']} | {launches} | {r['median_us_per_call']:.1f} | "
                     f"{per_launch} | {ratio} |")
    return lines


def markdown_cuda(doc: dict) -> str:
    """The GPU run's table: host times only (the launch counts and cold start are the CPU run's)."""
    host, t, m = doc["host_us"], doc["targets"], doc["model"]
    lines = [f"# Host-path benchmark on {doc['device']}, {doc['date'][:10]}", "",
             f"torch {doc['torch']}, triton {doc['triton']}, Python {doc['python']}; {doc['platform']}; CPU "
             f"{doc['cpu']}. CUDA tensors through Triton's own launcher, against aten ops that launch a kernel "
             f"too; one torch thread; each batch starts on an idle GPU. MGiaD widths {tuple(m['widths'])}, input "
             f"{tuple(m['input_shape'])} channels_last. Host times are medians (p20-p80) of "
             f"{doc['settings']['repeats']} batches of {doc['settings']['calls_per_batch']} calls.", "",
             "| measurement | value | target | met |", "|---|---|---|---|"]
    for key, label in _HOST_ROWS:
        if key not in host:
            continue
        h, target = host[key], t["launch_us_ratio"] if key == "triton_conv2d_launch" else None
        met = "" if target is None else {True: "yes", False: "**no**"}[target["met"]]
        limit = "" if target is None else f"<= {_fmt(target['limit'])}"
        lines.append(f"| {label}, us | {h['median_us']:.2f} ({h['p20_us']:.2f}-{h['p80_us']:.2f}), "
                     f"{h['ratio_to_aten_add']:.2f}x (a) | {limit} | {met} |")
    s, w = doc["mgiad_step_ms"], doc["mgiad_step_wall_ms"]
    lines.append(f"| MGiaD fwd+bwd host time, ms | {s['median']:.1f} ({s['p20']:.1f}-{s['p80']:.1f}) |  |  |")
    lines.append(f"| MGiaD fwd+bwd wall time (to the GPU's end), ms | {w['median']:.1f} "
                 f"({w['p20']:.1f}-{w['p80']:.1f}) |  |  |")
    counted = doc["launches"]["triton"]
    lines.append(f"| Triton launches per fwd+bwd (launch hook) | "
                 f"{'not measured (no HookChain)' if counted is None else counted} |  |  |")
    return "\n".join(lines + _launcher_table(doc)) + "\n"


def markdown(doc: dict) -> str:
    if doc.get("device_type") == "cuda":
        return markdown_cuda(doc)
    host, launches, cold = doc["host_us"], doc["launches"], doc["cold_start"]
    m = doc["model"]
    lines = [f"# Host-path benchmark on {doc['cpu']}, {doc['date'][:10]}", "",
             f"torch {doc['torch']}, triton {doc['triton']}, Python {doc['python']}; {doc['platform']}. "
             f"MGiaD widths {tuple(m['widths'])}, smoothing steps {tuple(m['smoothing_steps'])}, coarsest "
             f"{m['coarsest_channels']}, group size {m['group_size']}, channel scale {m['channel_scale']}, input "
             f"{tuple(m['input_shape'])} channels_last, on CPU tensors through the Triton launch path compiled for "
             f"sm_{ARCH} by the stand-in driver; one torch thread. Launches counted as the stand-in's recorded "
             f"no-ops; host times {_LAUNCHER_TEXT[doc.get('launcher', 'noop')]}, medians (p20-p80) of "
             f"{doc['settings']['repeats']} batches of {doc['settings']['calls_per_batch']} calls.", "",
             "| measurement | value | target | met |", "|---|---|---|---|"]
    t = doc["targets"]

    def row(label, value, target=None):
        met = "" if target is None else {True: "yes", False: "**no**", None: "not measured"}[t[target]["met"]]
        limit = "" if target is None else f"<= {_fmt(t[target]['limit'])}"
        lines.append(f"| {label} | {value} | {limit} | {met} |")

    fwd, bwd = launches["forward"], launches["backward"]
    row("Triton launches per fwd+bwd (fwd + bwd)", f"{launches['triton']} ({fwd['triton']} + {bwd['triton']})")
    row("aten compute ops per fwd+bwd (fwd + bwd)", f"{launches['aten']} ({fwd['aten']} + {bwd['aten']})",
        "aten_launches")
    row("Triton + aten per fwd+bwd", launches["triton_plus_aten"], "triton_plus_aten_launches")
    for key, label in _HOST_ROWS:
        if key not in host:
            continue
        h = host[key]
        if key == "compiled_launcher":
            label += f" ({_WARM_LAUNCH_TEXT[doc.get('warm_launch', 'triton')]})" if doc.get("launcher") == "triton" \
                else " (the stand-in's no-op)"
        value = f"{h['median_us']:.2f} ({h['p20_us']:.2f}-{h['p80_us']:.2f}), {h['ratio_to_aten_add']:.2f}x (a)"
        if key == "triton_conv2d_launch":  # and against the aten op that allocates its output, as (b) does
            value += f", {h['median_us'] / host['aten_add_16_allocating']['median_us']:.2f}x (a2)"
        row(f"{label}, us", value, "launch_us_ratio" if key == "triton_conv2d_launch" else None)
    own = host["triton_conv2d_launch"]["median_us"] - host["output_allocation"]["median_us"] \
        - host["compiled_launcher"]["median_us"]
    row("(b) - (b1) - (b2): the package's own Python per warm launch, us", f"{own:.2f}")
    s = doc["mgiad_step_ms"]
    row("MGiaD fwd+bwd host time, ms", f"{s['median']:.1f} ({s['p20']:.1f}-{s['p80']:.1f})")
    if cold:
        row("cold start: compiles", cold["compiles"], "cold_start_compiles")
        row("cold start: autotune benchmarks", cold["benchmarks"], "cold_start_benchmarks")
        row("cold start: first fwd+bwd, s (whole process)", f"{cold['step_s']:.1f} ({cold['process_s']:.1f})")
    else:
        row("cold start", "skipped (--no-cold-start)", "cold_start_compiles")
    lines += _launcher_table(doc)
    counts = lambda d: ", ".join(f"{k} {v}" for k, v in d.items())  # noqa: E731
    lines += ["", "Triton launches per kernel: " + counts(launches["triton_per_kernel"]),
              "", "aten ops: " + counts(launches["aten_per_op"])]
    if cold:
        lines += ["", "Cold-start compiles per kernel: " + counts(cold["compiles_per_kernel"])]
    return "\n".join(lines) + "\n"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_atomically(files: dict) -> None:
    """{path: text}: each written to a temporary file beside it, then all moved into place."""
    tmps = {}
    try:
        for path, text in files.items():
            fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                                       dir=os.path.dirname(path) or ".")
            tmps[path] = tmp
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's files are private
        for path, tmp in tmps.items():
            os.replace(tmp, path)
    finally:
        for tmp in tmps.values():
            if os.path.exists(tmp):
                os.remove(tmp)


def summary(doc: dict) -> str:
    launches, host, t = doc["launches"], doc["host_us"], doc["targets"]
    mark = lambda name: {True: "met", False: "NOT MET", None: "not measured"}[t[name]["met"]]  # noqa: E731
    if "aten" in launches:
        lines = [f"launches per MGiaD fwd+bwd: {launches['triton']} Triton + {launches['aten']} aten = "
                 f"{launches['triton_plus_aten']} (target <= {t['triton_plus_aten_launches']['limit']}: "
                 f"{mark('triton_plus_aten_launches')}; aten <= {t['aten_launches']['limit']}: "
                 f"{mark('aten_launches')})"]
    else:
        counted = "not measured" if launches["triton"] is None else launches["triton"]
        lines = [f"Triton launches per MGiaD fwd+bwd: {counted} (aten ops: the CPU run's count)"]
    for key in ("aten_add_16", "triton_conv2d_launch", "custom_op_conv2d", "mgiad_step_per_triton_launch"):
        if key not in host:
            continue
        h = host[key]
        lines.append(f"host us {key:<30} {h['median_us']:8.2f}  ({h['ratio_to_aten_add']:.2f}x aten add)")
    lines.append(f"launch / aten add target <= {t['launch_us_ratio']['limit']}x: {mark('launch_us_ratio')}")
    if doc.get("launchers"):
        lines.append("in the step, own host us per launch: " + ", ".join(
            f"{name} {r['us_per_launch']:.1f} ({r['per_launch_ratio_to_aten_add']:.1f}x)"
            for name, r in doc["launchers"].items() if r["us_per_launch"] is not None))
    cold = doc["cold_start"]
    if doc.get("device_type") == "cuda":
        lines.append("cold start: measured on the CPU run's stand-in")
    elif cold:
        lines.append(f"cold start: {cold['compiles']} compiles (target <= {t['cold_start_compiles']['limit']}: "
                     f"{mark('cold_start_compiles')}), {cold['benchmarks']} autotune benchmarks, "
                     f"{cold['step_s']:.1f} s step, {cold['process_s']:.1f} s process")
    else:
        lines.append("cold start: skipped")
    return "\n".join(lines)


# ---- command line -------------------------------------------------------------------------------------------------

class _OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``PROG: error: MESSAGE``, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int of at least 1, got {value}")
    return value


def parse_args(argv) -> argparse.Namespace:
    p = _OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default=os.path.join("benchmarks", "results"),
                   help="where host-<device>-<date>.json and .md go (default: benchmarks/results)")
    p.add_argument("--repeats", type=_positive_int, default=20,
                   help="timed batches of each host measurement, and timed MGiaD steps (default 20)")
    p.add_argument("--no-cold-start", action="store_true", help="skip the cold-start subprocess (about a minute)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu (default): CPU tensors on the sm_90 stand-in, everything measured; cuda: on a GPU, "
                        "the host times against aten ops that launch a kernel too, with Triton's own launcher")
    return p.parse_args(argv)


def describe(device: torch.device, now: datetime.datetime, repeats: int, cold_start: bool) -> dict:
    """A results document's header: the machine, versions, model and settings."""
    import triton
    from tools.kernel_bench.report import device_name

    on_gpu = device.type == "cuda"
    return {"benchmark": "host", "date": now.isoformat(timespec="seconds"), "device": device_name(device),
            "device_type": device.type, "standin_arch": None if on_gpu else ARCH,
            "cpu": cpu_model(), "platform": platform.platform(), "processor": platform.processor(),
            "python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
            "model": {**MODEL_CONFIG, "widths": list(MODEL_CONFIG["widths"]),
                      "smoothing_steps": list(MODEL_CONFIG["smoothing_steps"]), "input_shape": list(INPUT_SHAPE),
                      "labels": list(LABELS), "memory_format": "channels_last"},
            "settings": {"repeats": repeats, "calls_per_batch": CUDA_CALLS_PER_BATCH if on_gpu else CALLS_PER_BATCH,
                         "torch_threads": 1,
                         "cold_start": cold_start, "parallel_programs": None if on_gpu else H100_PROGRAMS,
                         "MGIAD_KERNELS_AUTOTUNE": os.environ.get("MGIAD_KERNELS_AUTOTUNE"),
                         "excluded_aten_ops": sorted(EXCLUDED_OPS)}}


def main(argv=None) -> str | None:
    """Measure, write the JSON and markdown, print a summary; returns the results' stem (None when the
    benchmark ran in a child process because TRITON_INTERPRET was set)."""
    a = parse_args(sys.argv[1:] if argv is None else list(argv))
    if a.device == "cuda" and not torch.cuda.is_available():
        print(f"{PROG}: error: --device cuda: no CUDA device is available (torch.cuda.is_available() is False)",
              file=sys.stderr)
        raise SystemExit(2)
    if "TRITON_INTERPRET" in os.environ:
        print(f"{PROG}: TRITON_INTERPRET is set; the stand-in driver needs Triton's compiler, not its "
              "interpreter: re-running without it", file=sys.stderr, flush=True)
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        argv = sys.argv[1:] if argv is None else list(argv)
        code = subprocess.run([sys.executable, "-m", "tools.host_bench", *[x for x in argv if x != "--host"]],
                              env=env).returncode
        if code:
            raise SystemExit(code)
        return None
    os.makedirs(a.out_dir, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    device = torch.device(a.device)
    on_gpu = device.type == "cuda"
    where = "CUDA tensors, Triton's own launcher" if on_gpu else f"CPU tensors on the sm_{ARCH} stand-in"
    print(f"MGiaD host-path benchmark ({a.repeats} repeats), {where}", flush=True)
    doc = describe(device, now, a.repeats, cold_start=not (a.no_cold_start or on_gpu))
    doc.update(measure_cuda(a.repeats) if on_gpu else measure_warm(a.repeats))
    if a.no_cold_start or on_gpu:
        doc["cold_start"] = None
    else:
        print("cold start: a first fwd+bwd on an empty Triton cache in a subprocess (about a minute)", flush=True)
        doc["cold_start"] = measure_cold_start()
    doc["targets"] = targets(doc)
    met = [t["met"] for t in doc["targets"].values()]  # None: not measured (cold start skipped)
    doc["all_targets_met"] = False if False in met else None if None in met else True
    stem = results_stem(a.out_dir, now.date(), device)
    _write_atomically({stem + ".json": json.dumps(doc, indent=1) + "\n", stem + ".md": markdown(doc)})
    print(summary(doc))
    print(f"wrote {stem}.json and {stem}.md")
    return stem


if __name__ == "__main__":
    main()
