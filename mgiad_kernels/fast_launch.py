"""The warm launch's own C launcher: one call hands the driver a site's kernel, its fixed arguments packed once.

Triton's C launch function parses every argument of every launch: for a grouped conv, 82 Python objects
(the constexprs included) walked against their annotations, each pointer's ``data_ptr()`` called and the
address checked with a driver query (``cuPointerGetAttribute``). A warm launch site fixes everything but
the addresses of the tensors it is given (launch_plans), so its plan packs the rest once, as the bytes
the driver reads (``make_plan``), and a launch is ``launch(plan, stream, *tensors)``: copy the packed
parameters, write each tensor's address, ``cuLaunchKernelEx``. It returns False, having launched nothing,
where a tensor is not 16-byte aligned (the plan is the aligned specialization's) or no CUDA context is
current on the thread (Triton's launcher then makes one), and the caller launches through Triton.

Built from ``_SOURCE`` on first use with the C compiler Triton's own launchers need, against Triton's
``cuda.h``; it finds the driver's functions in the ``libcuda.so.1`` already loaded (by Triton). Where it
cannot be built or bound, ``launcher()`` is None and warm launches call Triton's C launch function. Its C
function, ``launch_plan``, is exported as a PyCapsule (``launch_plan_capsule``) for the C++ dispatch of
warm conv forwards (forward_dispatch).
"""
from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import struct
import sysconfig
import warnings

from .c_build import build_shared_library

_MODULE_NAME = "mgiad_fast_launch"
MAX_PARAMETER_BYTES = 4096  # the packed parameters a plan may hold (CUDA's classic kernel parameter limit)
MAX_PARAMETERS = 512
_MAX_SHARED_PLAIN = 228 * 1024  # above it Triton's launcher adds an oversized-shared-memory attribute
_HEADER = struct.Struct("<Q10I")  # function, grid x/y/z, block x, shared bytes, parameters, tensors,
#                                   the packed parameters' start and size, padding: PlanHeader below

_SOURCE = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include "cuda.h"

#define MAX_PARAMETER_BYTES 4096
#define MAX_PARAMETERS 512

typedef CUresult (*LaunchKernelEx)(const CUlaunchConfig *, CUfunction, void **, void **);
typedef CUresult (*CtxGetCurrent)(CUcontext *);
typedef CUresult (*GetErrorString)(CUresult, const char **);

static LaunchKernelEx launch_kernel_ex;
static CtxGetCurrent ctx_get_current;
static GetErrorString get_error_string;
static PyObject *data_ptr_name;

/* A plan (bytes): this header, uint32 offsets of the kernel's parameters into the packed parameters,
   uint32 offsets of the tensors' addresses there, then (at parameters_start, 8-byte aligned) the packed
   parameters themselves. */
typedef struct {
  uint64_t function;
  uint32_t grid_x, grid_y, grid_z, block_x, shared_bytes;
  uint32_t n_parameters, n_tensors, parameters_start, parameters_bytes, padding;
} PlanHeader;

/* Launch ``plan`` on ``stream`` with the tensors' ``addresses`` written in: 1 launched (or an empty grid),
   0 launched nothing (an address not 16-byte aligned, or no current context), -1 an error (set). Exported
   to other extensions as the capsule ``launch_plan`` (forward_dispatch's warm conv forward calls it). */
static int launch_plan(const char *plan, uint64_t stream, const uint64_t *addresses, uint32_t n_addresses) {
  if (launch_kernel_ex == NULL) {
    PyErr_SetString(PyExc_RuntimeError, "mgiad_fast_launch: bind() the driver's functions first");
    return -1;
  }
  PlanHeader header;
  memcpy(&header, plan, sizeof header);
  if (n_addresses != header.n_tensors) {
    PyErr_Format(PyExc_TypeError, "the plan launches on %u tensors, got %u", header.n_tensors, n_addresses);
    return -1;
  }
  const uint32_t *parameter_offsets = (const uint32_t *)(plan + sizeof header);
  const uint32_t *tensor_offsets = parameter_offsets + header.n_parameters;
  uint64_t storage[MAX_PARAMETER_BYTES / 8];
  memcpy(storage, plan + header.parameters_start, header.parameters_bytes);
  for (uint32_t i = 0; i < header.n_tensors; i++) {
    if (addresses[i] & 15) return 0;
    memcpy((char *)storage + tensor_offsets[i], &addresses[i], sizeof addresses[i]);
  }
  if ((uint64_t)header.grid_x * header.grid_y * header.grid_z == 0) return 1;
  CUcontext context = NULL;
  if (ctx_get_current(&context) != CUDA_SUCCESS || context == NULL) return 0;
  void *params[MAX_PARAMETERS];
  for (uint32_t j = 0; j < header.n_parameters; j++) params[j] = (char *)storage + parameter_offsets[j];
  CUlaunchConfig config;
  memset(&config, 0, sizeof config);
  config.gridDimX = header.grid_x; config.gridDimY = header.grid_y; config.gridDimZ = header.grid_z;
  config.blockDimX = header.block_x; config.blockDimY = 1; config.blockDimZ = 1;
  config.sharedMemBytes = header.shared_bytes;
  config.hStream = (CUstream)(uintptr_t)stream;
  CUresult status;
  Py_BEGIN_ALLOW_THREADS
  status = launch_kernel_ex(&config, (CUfunction)(uintptr_t)header.function, params, NULL);
  Py_END_ALLOW_THREADS
  if (status != CUDA_SUCCESS) {
    const char *text = NULL;
    if (get_error_string == NULL || get_error_string(status, &text) != CUDA_SUCCESS || text == NULL)
      text = "unknown error";
    PyErr_Format(PyExc_RuntimeError, "Triton Error [CUDA]: %s", text);
    return -1;
  }
  return 1;
}

static int address_of(PyObject *tensor, uint64_t *address) {
  PyObject *value = PyLong_CheckExact(tensor) ? (Py_INCREF(tensor), tensor)
                                              : PyObject_CallMethodNoArgs(tensor, data_ptr_name);
  if (value == NULL) return -1;
  *address = PyLong_AsUnsignedLongLong(value);
  Py_DECREF(value);
  return (*address == (uint64_t)-1 && PyErr_Occurred()) ? -1 : 0;
}

/* launch(plan, stream, *tensors) -> True (launched, or an empty grid), False (launched nothing: a tensor
   not 16-byte aligned, or no current context) */
static PyObject *launch(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
  if (nargs < 2 || !PyBytes_CheckExact(args[0])) {
    PyErr_SetString(PyExc_TypeError, "launch(plan: bytes, stream: int, *tensors)");
    return NULL;
  }
  if (nargs - 2 > MAX_PARAMETERS) {
    PyErr_Format(PyExc_TypeError, "launch takes at most %d tensors, got %zd", MAX_PARAMETERS, nargs - 2);
    return NULL;
  }
  uint64_t stream = PyLong_AsUnsignedLongLong(args[1]);
  if (stream == (uint64_t)-1 && PyErr_Occurred()) return NULL;
  uint64_t addresses[MAX_PARAMETERS];
  for (Py_ssize_t i = 2; i < nargs; i++)
    if (address_of(args[i], &addresses[i - 2])) return NULL;
  int launched = launch_plan(PyBytes_AS_STRING(args[0]), stream, addresses, (uint32_t)(nargs - 2));
  if (launched < 0) return NULL;
  return PyBool_FromLong(launched);
}

/* bind(cuLaunchKernelEx, cuCtxGetCurrent, cuGetErrorString): the driver's functions, as addresses */
static PyObject *bind(PyObject *self, PyObject *args) {
  unsigned long long launch_address, context_address, error_address;
  if (!PyArg_ParseTuple(args, "KKK", &launch_address, &context_address, &error_address)) return NULL;
  if (!launch_address || !context_address) {
    PyErr_SetString(PyExc_ValueError, "bind: cuLaunchKernelEx and cuCtxGetCurrent must not be NULL");
    return NULL;
  }
  launch_kernel_ex = (LaunchKernelEx)(uintptr_t)launch_address;
  ctx_get_current = (CtxGetCurrent)(uintptr_t)context_address;
  get_error_string = (GetErrorString)(uintptr_t)error_address;
  Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
  {"launch", (PyCFunction)(void (*)(void))launch, METH_FASTCALL, "launch(plan, stream, *tensors) -> bool"},
  {"bind", bind, METH_VARARGS, "bind(cuLaunchKernelEx, cuCtxGetCurrent, cuGetErrorString) addresses"},
  {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "mgiad_fast_launch", NULL, -1, methods};

PyMODINIT_FUNC PyInit_mgiad_fast_launch(void) {
  data_ptr_name = PyUnicode_InternFromString("data_ptr");
  if (data_ptr_name == NULL) return NULL;
  PyObject *created = PyModule_Create(&module);
  if (created == NULL) return NULL;
  PyObject *capsule = PyCapsule_New((void *)launch_plan, "mgiad_fast_launch.launch_plan", NULL);
  if (capsule == NULL || PyModule_AddObject(created, "launch_plan", capsule)) {
    Py_XDECREF(capsule);
    Py_DECREF(created);
    return NULL;
  }
  return created;
}
"""


@functools.lru_cache(maxsize=None)
def _module():
    """The built module, bound to the loaded libcuda.so.1, or None (with a warning, once) where it cannot be
    built or no libcuda.so.1 is loaded yet."""
    import triton

    include = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "include")
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    try:
        path = build_shared_library(_SOURCE, "mgiad-fast-launch", _MODULE_NAME + suffix,
                                    (f"-I{include}", f"-I{sysconfig.get_paths()['include']}"))
        libcuda = ctypes.CDLL("libcuda.so.1", mode=os.RTLD_NOLOAD | os.RTLD_NOW)
    except (OSError, RuntimeError) as error:
        warnings.warn(f"mgiad_kernels: warm launches call Triton's launcher (the fast launcher is off: {error})",
                      RuntimeWarning, stacklevel=3)
        return None
    spec = importlib.util.spec_from_file_location(_MODULE_NAME, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    address = lambda name: ctypes.cast(getattr(libcuda, name), ctypes.c_void_p).value  # noqa: E731
    module.bind(address("cuLaunchKernelEx"), address("cuCtxGetCurrent"), address("cuGetErrorString"))
    return module


def launcher():
    """The fast launcher, ``launch(plan, stream, *tensors) -> bool``, or None where it cannot be built or no
    libcuda.so.1 is loaded yet (warm launches then call Triton's launcher)."""
    module = _module()
    return None if module is None else module.launch


def launch_plan_capsule():
    """The fast launcher's C function ``int launch_plan(const char *plan, uint64_t stream, const uint64_t
    *addresses, uint32_t n)`` as a PyCapsule named ``mgiad_fast_launch.launch_plan``, for other extensions
    (forward_dispatch), or None where the fast launcher is off."""
    module = _module()
    return None if module is None else module.launch_plan


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
