"""A stand-in CUDA driver: the real launch path compiles for sm_XX with no GPU, and launches do nothing.

``with standin_cuda_driver(arch=90) as rec:`` makes ``triton.runtime.driver.active`` a driver whose
target is ``GPUTarget("cuda", arch, 32)``. ``@triton.jit`` / ``@triton.autotune`` kernels called with CPU
tensors then specialize their arguments as on a GPU (ints and pointers divisible by 16; torch's CPU
allocations are 64-byte aligned), compile with ptxas, and "launch" through a no-op launcher. The
autotuner benchmarks every config through a stub benchmarker (fake timings; its hooks run on the CPU
tensors). ``rec`` records compiles, launches and benchmark calls. Run without TRITON_INTERPRET.

``launcher="triton"`` launches through Triton's own CUDA launcher instead (its C argument parsing and
pointer extraction, the Python around it), built against a no-op ``libcuda.so.1`` (``noop_libcuda``):
the host cost of a launch as on a GPU, less the driver's own calls. Those launches are not recorded.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import os
import subprocess
import tempfile
import time
import types
import weakref
from typing import Any, Callable, NamedTuple

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.driver import DriverBase
from triton.runtime import autotuner as _autotuner
from triton.runtime.driver import driver as _driver_config

from mgiad_kernels.runtime import launch_sites
from tools.c_build import build_shared_library, c_compiler

# Device properties per arch (the keys of CudaUtils.get_device_properties); other archs get sm_90's.
_PROPS = {80: (166912, 108, 1410000, 1215000, 5120), 89: (101376, 128, 2520000, 10501000, 384),
          90: (232448, 132, 1755000, 2619000, 5120), 100: (232448, 148, 1965000, 3996000, 8192)}
_PROP_KEYS = ("max_shared_mem", "multiprocessor_count", "sm_clock_rate", "mem_clock_rate", "mem_bus_width")
_MODULE = "standin-module"  # CompiledKernel.module of a kernel loaded by the stand-in
_KERNELS: weakref.WeakSet = weakref.WeakSet()  # every kernel compiled under a stand-in
_RECORDERS: list = []  # the recorders of the open contexts, innermost last
_FUNCTIONS: dict = {}  # cubin -> the function handle the stand-in gave it


def _cuobjdump(cubin: bytes, *flags: str) -> str:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool, *flags, f.name], check=True, capture_output=True, text=True).stdout


@functools.lru_cache(maxsize=None)
def cubin_resources(cubin: bytes) -> dict:
    """{'REG', 'STACK', 'SHARED', 'LOCAL', ...} of the cubin's kernel, from ``cuobjdump -res-usage``."""
    line = next(ln for ln in _cuobjdump(cubin, "-res-usage").splitlines() if "REG:" in ln)
    return {k: int(v) for k, v in (f.split(":", 1) for f in line.split() if ":" in f) if v.isdigit()}


def _spill_words(cubin: bytes) -> int:
    """Spilled 4-byte words per thread: ptxas puts spills in the stack frame (STACK), some in LOCAL."""
    res = cubin_resources(cubin)
    return (res.get("STACK", 0) + res.get("LOCAL", 0)) // 4


def _max_threads(regs: int) -> int:
    """CUDA's max threads per block at ``regs`` registers a thread (64K registers, 256-register warp units)."""
    return min(1024, 65536 // (-(-max(regs, 1) * 32 // 256) * 256) * 32)


@dataclasses.dataclass
class CompileRecord:
    """One in-process compile (a JIT cache miss; Triton's disk cache may have served the binary)."""
    name: str
    constexprs: dict  # argument name -> value (the autotune config's values included)
    specialization: dict  # argument name -> attributes, e.g. [['tt.divisibility', 16]]
    signature: dict  # argument name -> Triton type ('*fp32', 'i32', 'constexpr')
    num_warps: int
    num_stages: int
    seconds: float  # wall time of the compile (or of the disk-cache load)
    kernel: Any  # triton.compiler.CompiledKernel: .asm['cubin'/'ptx'/'ttgir'], .metadata, ...

    n_regs = property(lambda self: cubin_resources(self.kernel.asm["cubin"])["REG"])
    n_spills = property(lambda self: _spill_words(self.kernel.asm["cubin"]))
    shared = property(lambda self: self.kernel.metadata.shared)
    sass = property(lambda self: _cuobjdump(self.kernel.asm["cubin"], "-sass"))


@dataclasses.dataclass
class LaunchRecord:
    """One no-op launch; ``bench``: made inside an autotune benchmark; ``t``: time.perf_counter() then."""
    name: str
    grid: tuple
    constexprs: dict
    num_warps: int
    num_stages: int
    bench: bool
    t: float


@dataclasses.dataclass
class BenchRecord:
    """One benchmarker call: the autotuned kernel, the config, its index in the autotuner's configs, fake ms."""
    name: str
    config: Any
    index: int
    ms: float


@dataclasses.dataclass
class Recorder:
    """What a ``standin_cuda_driver`` context saw, in order."""
    compiles: list = dataclasses.field(default_factory=list)
    launches: list = dataclasses.field(default_factory=list)
    benchmarks: list = dataclasses.field(default_factory=list)
    on_launch: Callable | None = None  # on_launch(record, args): e.g. emulate the kernel's writes on the CPU
    in_bench: bool = False


class _Event:
    """torch.cuda.Event stand-in, timed with perf_counter (for triton.testing.do_bench)."""

    def __init__(self, enable_timing=False, **_):
        self.t = None

    def record(self, stream=None):
        self.t = time.perf_counter()

    def elapsed_time(self, end):
        return (end.t - self.t) * 1e3

    synchronize = wait = query = lambda self, *a: True


class StandinCudaDriver(DriverBase):
    """A DriverBase with a fixed CUDA target, a no-op launcher and a stub benchmarker."""

    def __init__(self, arch: int, rec: Recorder, bench_ms=None, bench_calls: int = 1, props: dict | None = None,
                 launcher: str = "noop"):
        super().__init__()
        self.arch, self.rec, self.bench_ms, self.bench_calls = arch, rec, bench_ms, bench_calls
        self.device = arch  # JIT caches are per device: one key per arch, never a real GPU's index
        self.props = dict(zip(_PROP_KEYS, _PROPS.get(arch, _PROPS[90])), max_num_regs=65536, warpSize=32)
        self.props.update(props or {})
        cap = divmod(arch, 10)
        self.utils = types.SimpleNamespace(
            load_binary=self._load_binary, unload_module=lambda module: None,
            get_device_properties=lambda device: dict(self.props), get_current_device=lambda: self.device,
            set_current_device=lambda device: None, get_device_capability=lambda device: cap,
            set_printf_fifo_size=lambda size: None)
        self.launcher_cls = _NoopLauncher
        if launcher == "triton":
            self.utils.__dict__.update(_triton_launch_utils())
            self.launcher_cls = _triton_launcher
        stream = types.SimpleNamespace(cuda_stream=0, synchronize=lambda: None)
        self.interface = types.SimpleNamespace(  # torch.cuda on a GPU
            Event=_Event, synchronize=lambda *a: None, current_device=lambda: self.device, set_device=lambda d: None,
            device_count=lambda: 1, is_available=lambda: True, get_device_capability=lambda *a: cap,
            current_stream=lambda *a: stream, default_stream=lambda *a: stream, ExternalStream=lambda *a, **k: stream,
            stream=lambda s: contextlib.nullcontext())

    @classmethod
    def is_active(cls):
        return False  # never chosen by Triton's own driver discovery

    def map_python_to_cpp_type(self, ty: str) -> str:
        from triton.backends.nvidia.driver import ty_to_cpp
        return ty_to_cpp(ty)

    def get_current_target(self):
        return GPUTarget("cuda", self.arch, 32)

    def get_current_device(self):
        return self.device

    def get_current_stream(self, device=None):
        return 0

    def set_current_device(self, device):
        pass

    def get_device_capability(self, device=None):
        return divmod(self.arch, 10)

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_device_interface(self):
        return self.interface

    def get_empty_cache_for_benchmark(self):
        return torch.empty(16, dtype=torch.int)

    def clear_cache(self, cache):
        cache.zero_()

    def allocate_default_profile_scratch(self, size, alignment, stream):
        return torch.zeros(size, dtype=torch.int8)

    def get_benchmarker(self):
        return self._bench

    @staticmethod
    def _load_binary(name, cubin, shared, device):
        """(module, function, registers, spills, max threads); the function handle is a distinct int per
        kernel binary, which a launcher passes to the driver (``driver_launches``)."""
        regs = cubin_resources(cubin)["REG"]
        return _MODULE, _FUNCTIONS.setdefault(cubin, 16 * (len(_FUNCTIONS) + 1)), regs, _spill_words(cubin), \
            _max_threads(regs)

    def _bench(self, kernel_call: Callable, quantiles=None, **kwargs):
        """The stub benchmarker: runs kernel_call (hooks, compile, no-op launch); returns a fake time."""
        cells = dict(zip(kernel_call.__code__.co_freevars, (c.cell_contents for c in kernel_call.__closure__ or ())))
        config, tuner = cells.get("config"), cells.get("self")  # Autotuner._bench's closure
        configs = list(getattr(tuner, "configs", None) or [])
        index = configs.index(config) if config in configs else len(self.rec.benchmarks)
        self.rec.in_bench = True
        try:
            for _ in range(self.bench_calls):
                kernel_call()
        finally:
            self.rec.in_bench = False
        ms = self.bench_ms(config, index) if callable(self.bench_ms) else (
            1.0 + 0.01 * index if self.bench_ms is None else float(self.bench_ms))
        name = getattr(getattr(tuner, "base_fn", None), "__name__", "?")
        self.rec.benchmarks.append(BenchRecord(name, config, index, ms))
        return [ms] * len(quantiles) if quantiles else ms


def _by_name(names, values) -> dict:
    """{(i,): v} (Triton's argument paths) -> {names[i]: v}."""
    return {(names[k[0]] if isinstance(k, tuple) and len(k) == 1 else k): v for k, v in (values or {}).items()}


class _NoopLauncher:
    """launcher_cls(src, metadata): records each launch in the innermost open context, calls the launch
    hooks as CUDA's launcher does, and touches no memory."""

    def __init__(self, src, metadata):
        self.name, self.num_warps, self.num_stages = metadata.name, metadata.num_warps, metadata.num_stages
        names = list(getattr(src.fn, "arg_names", []))
        self.constexprs = _by_name(names, getattr(src, "constants", {}))
        self.n_args = len(names)  # CUDA's launcher parses one argument per kernel parameter, constexprs included

    def __call__(self, gx, gy, gz, stream, function, packed_metadata, launch_metadata, enter_hook, exit_hook, *args):
        if self.n_args and len(args) != self.n_args:
            raise TypeError(f"{self.name}: the launcher takes {self.n_args} kernel arguments, got {len(args)}")
        if enter_hook is not None:
            enter_hook(launch_metadata)
        if _RECORDERS:
            rec = _RECORDERS[-1]
            record = LaunchRecord(self.name, (gx, gy, gz), self.constexprs, self.num_warps, self.num_stages,
                                  rec.in_bench, time.perf_counter())
            rec.launches.append(record)
            if rec.on_launch is not None:
                rec.on_launch(record, args)
        if exit_hook is not None:
            exit_hook(launch_metadata)


# A libcuda.so.1 whose every call Triton's launcher makes succeeds and does nothing, but count and describe
# the kernel launches (cuLaunchKernelEx): what Triton's own launcher costs on the host, less the driver.
_NOOP_LIBCUDA_SOURCE = r"""
#include <string.h>
#include "cuda.h"

#define LOGGED 256  /* launches kept */
#define PARAMS 128  /* kernel parameters kept per launch */
#define DESCRIBED 256  /* functions whose parameters are kept */

typedef struct { CUfunction function; int count; unsigned char sizes[PARAMS]; } Described;
typedef struct {
  unsigned int grid[3], block[3], shared, attributes;
  CUstream stream;
  CUfunction function;
  int count;
  unsigned long long params[PARAMS];
} Logged;

static CUcontext context = (CUcontext)16;
static unsigned long long launches;
static Described described[DESCRIBED];
static int n_described;
static Logged logged[LOGGED];

CUresult cuCtxGetCurrent(CUcontext *pctx) { *pctx = context; return CUDA_SUCCESS; }
CUresult cuCtxGetDevice(CUdevice *device) { *device = 0; return CUDA_SUCCESS; }
CUresult cuCtxGetLimit(size_t *value, CUlimit limit) { *value = 0; return CUDA_SUCCESS; }
CUresult cuCtxSetCurrent(CUcontext ctx) { return CUDA_SUCCESS; }
CUresult cuCtxSetLimit(CUlimit limit, size_t value) { return CUDA_SUCCESS; }
CUresult cuDeviceGet(CUdevice *device, int ordinal) { *device = ordinal; return CUDA_SUCCESS; }
CUresult cuDeviceGetAttribute(int *value, CUdevice_attribute attribute, CUdevice device) {
  *value = 0; return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice device) { *pctx = context; return CUDA_SUCCESS; }
CUresult cuDriverGetVersion(int *version) { *version = 12080; return CUDA_SUCCESS; }
CUresult cuFuncGetAttribute(int *value, CUfunction_attribute attribute, CUfunction f) {
  *value = 0; return CUDA_SUCCESS;
}
CUresult cuFuncSetAttribute(CUfunction f, CUfunction_attribute attribute, int value) { return CUDA_SUCCESS; }
CUresult cuFuncSetCacheConfig(CUfunction f, CUfunc_cache config) { return CUDA_SUCCESS; }
CUresult cuGetErrorString(CUresult error, const char **text) { *text = "no-op libcuda"; return CUDA_SUCCESS; }
CUresult cuModuleGetFunction(CUfunction *f, CUmodule module, const char *name) {
  *f = (CUfunction)32; return CUDA_SUCCESS;
}
CUresult cuModuleLoadData(CUmodule *module, const void *image) { *module = (CUmodule)48; return CUDA_SUCCESS; }
CUresult cuModuleUnload(CUmodule module) { return CUDA_SUCCESS; }
CUresult cuOccupancyMaxActiveClusters(int *count, CUfunction f, const CUlaunchConfig *config) {
  *count = 1; return CUDA_SUCCESS;
}
CUresult cuPointerGetAttribute(void *data, CUpointer_attribute attribute, CUdeviceptr pointer) {
  *(CUdeviceptr *)data = pointer;  /* CU_POINTER_ATTRIBUTE_DEVICE_POINTER: every address is its own */
  return CUDA_SUCCESS;
}
CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **params, void **extra) {
  Logged *entry = &logged[launches++ % LOGGED];
  entry->grid[0] = config->gridDimX; entry->grid[1] = config->gridDimY; entry->grid[2] = config->gridDimZ;
  entry->block[0] = config->blockDimX; entry->block[1] = config->blockDimY; entry->block[2] = config->blockDimZ;
  entry->shared = config->sharedMemBytes; entry->attributes = config->numAttrs; entry->stream = config->hStream;
  entry->function = f;
  entry->count = -1;  /* parameters not kept: the function was not described */
  for (int d = 0; d < n_described; d++) {
    if (described[d].function != f) continue;
    entry->count = described[d].count;
    for (int i = 0; i < entry->count; i++) {
      entry->params[i] = 0;
      memcpy(&entry->params[i], params[i], described[d].sizes[i]);
    }
    break;
  }
  return CUDA_SUCCESS;
}

/* the stand-in's own: how many launches; the parameters (count, bytes each) of a function's launches to keep;
   the i-th launch kept (of the last LOGGED) */
unsigned long long noop_launches(void) { return launches; }
int noop_describe(CUfunction f, const unsigned char *sizes, int count) {
  if (count < 0 || count > PARAMS || n_described == DESCRIBED) return -1;
  described[n_described].function = f;
  described[n_described].count = count;
  memcpy(described[n_described].sizes, sizes, count);
  n_described++;
  return 0;
}
const Logged *noop_logged(unsigned long long i) {
  return i < launches && launches - i <= LOGGED ? &logged[i % LOGGED] : 0;
}
"""


class _LoggedLaunch(ctypes.Structure):
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("shared", ctypes.c_uint),
                ("attributes", ctypes.c_uint), ("stream", ctypes.c_void_p), ("function", ctypes.c_void_p),
                ("count", ctypes.c_int), ("params", ctypes.c_ulonglong * 128)]


_PARAM_BYTES = {"i1": 4, "i8": 1, "i16": 2, "i32": 4, "i64": 8, "u1": 4, "u8": 1, "u16": 2, "u32": 4, "u64": 8,
                "fp16": 2, "bf16": 2, "fp32": 4, "f32": 4, "fp64": 8}


def describe_to_driver(kernel) -> None:
    """Have the no-op libcuda keep the parameters of ``kernel``'s launches (a loaded CompiledKernel): its
    signature's non-constexpr arguments in order, then Triton's two scratch pointers."""
    sizes = [8 if ty.startswith("*") else _PARAM_BYTES[ty] for ty in kernel.src.signature.values() if ty != "constexpr"]
    sizes += [8, 8]
    if noop_libcuda().noop_describe(kernel.function, bytes(sizes), len(sizes)):
        raise ValueError(f"the no-op libcuda keeps the parameters of at most 256 functions of at most 128 each, "
                         f"got {kernel.name} with {len(sizes)}")


class DriverLaunch(NamedTuple):
    """A launch as the no-op libcuda's cuLaunchKernelEx received it."""
    grid: tuple  # (x, y, z) blocks
    block: tuple  # (x, y, z) threads
    shared: int  # dynamic shared memory, bytes
    attributes: int  # launch attributes passed (cluster, cooperative, PDL, ...)
    stream: int
    function: int  # the function handle (the stand-in's _load_binary)
    params: tuple | None  # the kernel parameters as ints (``describe_to_driver``); None where not described


def driver_launches(start: int = 0) -> list[DriverLaunch]:
    """The launches the no-op libcuda saw from the ``start``-th on (at most the last 256)."""
    lib = noop_libcuda()
    out = []
    for i in range(start, lib.noop_launches()):
        entry = lib.noop_logged(i)
        if not entry:
            raise ValueError(f"launch {i} is no longer kept (the no-op libcuda keeps the last 256)")
        e = entry.contents
        out.append(DriverLaunch(tuple(e.grid), tuple(e.block), e.shared, e.attributes, e.stream or 0, e.function,
                                None if e.count < 0 else tuple(e.params[:e.count])))
    return out


@functools.lru_cache(maxsize=None)
def noop_libcuda() -> ctypes.CDLL:
    """The no-op libcuda.so.1 (``_NOOP_LIBCUDA_SOURCE``), built with the C compiler once per source in Triton's
    cache directory and loaded for the whole process, so that Triton's launchers link and load against it.

    Off-GPU only: loaded first, it would stand in for a real driver's library. Its own functions:
    ``noop_launches()`` (launches so far), ``noop_describe(function, sizes, count)`` (keep the first ``count``
    kernel parameters of that function's launches, ``sizes[i]`` bytes each) and ``noop_logged(i)`` (the i-th
    launch, one of the last 256, as a pointer to ``_LoggedLaunch``; NULL otherwise): see ``driver_launches``."""
    import torch.cuda

    if torch.cuda.is_available():
        raise RuntimeError("the no-op libcuda.so.1 would stand in for this machine's CUDA driver: "
                           "launcher='triton' runs only where no GPU is visible")
    if c_compiler() is None:
        raise RuntimeError("launcher='triton' builds a no-op libcuda.so.1 and needs a C compiler (gcc or cc, or $CC)")
    include = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "include")
    library = build_shared_library(_NOOP_LIBCUDA_SOURCE, "mgiad-noop-libcuda", "libcuda.so.1",
                                   ("-Wl,-soname,libcuda.so.1", f"-I{include}"))
    directory = os.path.dirname(library)
    unversioned = os.path.join(directory, "libcuda.so")  # what triton 3.6's launchers link with (-lcuda)
    if not os.path.exists(unversioned):
        try:
            os.symlink("libcuda.so.1", unversioned)
        except FileExistsError:  # another process made it
            pass
    lib = ctypes.CDLL(library, mode=ctypes.RTLD_GLOBAL)
    lib.noop_launches.restype = ctypes.c_ulonglong
    lib.noop_describe.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int)
    lib.noop_logged.argtypes = (ctypes.c_ulonglong,)
    lib.noop_logged.restype = ctypes.POINTER(_LoggedLaunch)
    lib.directory = directory
    return lib


@contextlib.contextmanager
def _noop_libcuda_path():
    """Triton's libcuda lookup (knobs.nvidia.libcuda_path) pointed at the no-op library while it builds."""
    from triton import knobs
    from triton.backends.nvidia import driver as nvidia

    with knobs.nvidia.scope():
        knobs.nvidia.libcuda_path = noop_libcuda().directory
        try:
            yield nvidia
        finally:
            nvidia.libcuda_dirs.cache_clear()  # it keeps the path it found
            nvidia.library_dirs.cache_clear()


@functools.lru_cache(maxsize=None)
def _triton_launch_utils() -> dict:
    """The functions of Triton's CUDA utilities its launcher takes from ``driver.active.utils`` (triton >= 3.7:
    the generic C launch), from its driver.c built against the no-op libcuda; {} where each launcher builds
    its own (triton 3.6)."""
    with _noop_libcuda_path() as nvidia:
        utils = nvidia.CudaUtils()
    return {name: getattr(utils, name) for name in ("launch", "build_signature_metadata") if hasattr(utils, name)}


def _triton_launcher(src, metadata):
    """Triton's own CudaLauncher for a kernel, built and linked against the no-op libcuda."""
    with _noop_libcuda_path() as nvidia:
        return nvidia.CudaLauncher(src, metadata)


def _compile_hooks(rec: Recorder, prev_cache_hook, prev_post_hook):
    """knobs.runtime.jit_cache_hook (before a JIT compile) and jit_post_compile_hook (after), chained to
    the hooks installed before (except an outer stand-in's: a compile is recorded in the innermost context)."""
    started = {}
    prev_cache_hook = getattr(prev_cache_hook, "standin_prev", prev_cache_hook)
    prev_post_hook = getattr(prev_post_hook, "standin_prev", prev_post_hook)

    def cache_hook(*args, **kwargs):
        started[kwargs["key"]] = time.perf_counter()
        return prev_cache_hook(*args, **kwargs) if prev_cache_hook else None

    def post_hook(*args, **kwargs):
        key, info, jit_fn = kwargs["key"], kwargs["compile"], kwargs["fn"].jit_function
        names = list(jit_fn.arg_names)
        kernel = jit_fn.device_caches[info["device"]][0].get(key)
        if kernel is not None and not hasattr(kernel, "result"):  # async compiles hand back futures
            _KERNELS.add(kernel)
        rec.compiles.append(CompileRecord(
            jit_fn.__name__, _by_name(names, info["constants"]), _by_name(names, (info.get("configs") or [{}])[0]),
            dict(info["signature"]), info["num_warps"], info["num_stages"],
            time.perf_counter() - started.pop(key, time.perf_counter()), kernel))
        return prev_post_hook(*args, **kwargs) if prev_post_hook else None

    cache_hook.standin_prev, post_hook.standin_prev = prev_cache_hook, prev_post_hook
    return cache_hook, post_hook


def _clear_shared_mem_cache():
    """triton.compiler.compiler.max_shared_mem caches the driver's answer per device index."""
    from triton.compiler import compiler
    getattr(getattr(compiler, "max_shared_mem", None), "cache_clear", lambda: None)()


@contextlib.contextmanager
def standin_cuda_driver(arch: int = 90, bench_ms=None, bench_calls: int = 1, props: dict | None = None,
                        on_launch: Callable | None = None, launcher: str = "noop"):
    """Install the stand-in as Triton's active driver; yields a Recorder; restores everything on exit.

    ``bench_ms``: None (config index i -> 1 + 0.01 i ms: the first config wins), a number, or
    ``f(config, index) -> ms``. ``bench_calls``: kernel_call runs per benchmark. ``props``: device
    property overrides (max_shared_mem, multiprocessor_count, ...). ``on_launch(record, args)``: called
    at each launch with the kernel's arguments as passed (CPU tensors included). ``launcher``: 'noop'
    (recorded no-op launches) or 'triton' (Triton's own launcher on the no-op libcuda, not recorded; off-GPU).
    """
    if launcher not in ("noop", "triton"):
        raise ValueError(f"launcher must be 'noop' or 'triton', got {launcher!r}")
    from triton import knobs  # triton >= 3.4

    rec = Recorder(on_launch=on_launch)
    runtime, tuner = knobs.runtime, _autotuner.Autotuner
    saved_active, saved_do_bench = _driver_config._active, tuner.__dict__.get("do_bench")
    saved_hooks = runtime.jit_cache_hook, runtime.jit_post_compile_hook
    standin = StandinCudaDriver(arch, rec, bench_ms, bench_calls, props, launcher)  # builds what it needs first
    _driver_config.set_active(standin)
    # Autotuner.do_bench is a cached_property: ask the active driver on every use instead.
    tuner.do_bench = property(lambda self: self._do_bench or _driver_config.active.get_benchmarker())
    runtime.jit_cache_hook, runtime.jit_post_compile_hook = _compile_hooks(rec, *saved_hooks)
    _RECORDERS.append(rec)
    _clear_shared_mem_cache()
    launch_sites.clear()  # plans hold compiled kernels of the driver they were made under
    _unload_kernels()  # an outer context's kernels load again here, with this driver's launcher
    try:
        yield rec
    finally:
        _RECORDERS.remove(rec)
        runtime.jit_cache_hook, runtime.jit_post_compile_hook = saved_hooks
        if saved_do_bench is not None:
            tuner.do_bench = saved_do_bench
        _driver_config._active = saved_active  # reset_active() would build the default driver: fails off-GPU
        _clear_shared_mem_cache()
        launch_sites.clear()
        if not _RECORDERS:
            _unload_kernels()


def _unload_kernels() -> None:
    """Forget the module and launcher of every kernel the stand-in loaded: its __del__ then asks no other
    driver to unload it, and its next launch loads it again under the driver active then."""
    for kernel in list(_KERNELS):
        if kernel.module == _MODULE:
            kernel.module, kernel._run = None, None
