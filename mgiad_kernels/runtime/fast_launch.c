/* The warm launch's own C launcher: see fast_launch.py. */
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
   0 launched nothing (an address not 16-byte aligned, or no current context), -1 an error (set). */
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
  return PyModule_Create(&module);
}
