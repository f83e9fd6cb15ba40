// conv2d_forward's warm calls in C++ (mgiad_kernels.forward_dispatch): the site key read from the tensors
// themselves, the output allocated by ATen, the launch made by the fast launcher's C function.
//
// A warm conv2d_forward in Python spends most of its host time on what is not the launch: the key's
// getters (each builds a Python object: torch.Size, stride tuples), hashing the key, the output's
// allocation through torch's Python binding, and the generated function's gates. Here the key is a flat
// array of integers read from the at::Tensor, the allocation is at::empty_like / at::empty_strided (the
// dispatcher's own path, no argument parsing) and the gates are the same reads the generated Python
// function makes. Entries are registered from Python (launchers._forward_call) once a site's warm launch
// has a fast plan; a call whose key is not here, or whose gates are closed, returns None and takes the
// Python path, which holds every case this file does not.
#include <Python.h>

#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/empty_strided.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <unordered_map>

namespace {

// the fast launcher's C function (fast_launch.launch_plan_capsule): 1 launched, 0 declined, -1 error set
typedef int (*LaunchPlan)(const char *plan, uint64_t stream, const uint64_t *addresses, uint32_t n_addresses);

constexpr size_t kMaxEntries = 4096;  // as launch_plans' caches; beyond it, new keys take the Python path
constexpr int64_t kMaxDims = 8;       // a tensor with more dimensions takes the Python path
// site_id, tf32, then per tensor (5): dimensions, sizes, strides, dtype, device type and index
constexpr int kKeySlots = 2 + 5 * (4 + 2 * kMaxDims);
constexpr int64_t kAbsent = -1;       // an optional tensor not given

// conv2d_forward's arguments in call order, and the output: the tensors a plan's pointers are taken from
enum Argument : uint8_t { kX = 0, kWeight, kBias, kOther, kAdjointWeight, kY, kArguments };

LaunchPlan launch_plan = nullptr;
PyObject *runtime = nullptr;       // triton's knobs.runtime: the launch hooks
PyObject *driver = nullptr;        // triton.runtime.driver: the active driver
PyObject *active_name = nullptr;   // the attribute holding it ('_active' or 'active')
PyObject *state = nullptr;         // launch_plans' state dict: 'enabled'
PyObject *tf32_allowed = nullptr;  // torch._C._get_cudnn_allow_tf32
PyObject *enter_name, *exit_name, *calls_name, *enabled_name;

struct Key {
  std::array<int64_t, kKeySlots> values;
  int size = 0;
  double alpha = 0;
  bool push(int64_t value) {
    if (size == kKeySlots) return false;
    values[size++] = value;
    return true;
  }
  bool operator==(const Key &other) const {
    // alpha by value, as Python's key compares it (0.0 == -0.0, NaN never equal)
    return size == other.size && alpha == other.alpha &&
           std::memcmp(values.data(), other.values.data(), size * sizeof(int64_t)) == 0;
  }
};

struct KeyHash {
  size_t operator()(const Key &key) const {
    uint64_t hash = std::hash<double>()(key.alpha == 0 ? 0.0 : key.alpha);
    for (int i = 0; i < key.size; i++) hash = (hash ^ static_cast<uint64_t>(key.values[i])) * 0x100000001b3ULL;
    return hash;
  }
};

// A registered warm call; owns its Python references (released with the GIL held: entries are dropped
// only by clear() and by calls, both holding it).
struct Entry {
  PyObject *plan = nullptr;      // bytes: the fast launcher's plan
  PyObject *site = nullptr;      // the launch site (keeps the compiled kernel the plan launches alive)
  PyObject *active = nullptr;    // the driver the plan was made under
  PyObject *enter = nullptr;     // the launch hooks then (None or a HookChain)
  PyObject *exit = nullptr;
  PyObject *current_stream = nullptr, *current_device = nullptr;  // the driver's getters, as the plan's
  bool like_input = false;       // y = empty_like(x), else empty_strided(shape, strides)
  std::array<int64_t, kMaxDims> shape{}, strides{};
  int64_t dims = 0;
  std::array<uint8_t, kArguments> tensors{};  // the plan's tensors in its order, as Arguments
  uint32_t n_tensors = 0;
  ~Entry() {
    for (PyObject *object : {plan, site, active, enter, exit, current_stream, current_device}) Py_XDECREF(object);
  }
};

std::unordered_map<Key, std::shared_ptr<Entry>, KeyHash> *table = nullptr;
uint64_t served = 0;  // calls served (launched) since the module was loaded

// The tensor held by ``object``, or nullptr where it is not one the fast path serves: not a Tensor or
// Parameter (a subclass's allocation, through __torch_function__ or __torch_dispatch__, is its own), a
// tensor with Python dispatch, or more than kMaxDims dimensions.
const at::Tensor *plain_tensor(PyObject *object) {
  if (!THPVariable_CheckExact(object)) return nullptr;
  const at::Tensor &tensor = THPVariable_Unpack(object);
  if (tensor.unsafeGetTensorImpl()->is_python_dispatch() || tensor.dim() > kMaxDims) return nullptr;
  return &tensor;
}

// Pushes what fixes ``tensor``'s part of a launch but its address: dimensions, sizes, strides, dtype, device.
bool push_tensor(Key &key, const at::Tensor &tensor) {
  if (!key.push(tensor.dim())) return false;
  for (int64_t size : tensor.sizes())
    if (!key.push(size)) return false;
  for (int64_t stride : tensor.strides())
    if (!key.push(stride)) return false;
  return key.push(static_cast<int64_t>(tensor.scalar_type())) &&
         key.push(static_cast<int64_t>(tensor.device().type())) && key.push(tensor.device().index());
}

// The key of conv2d_forward(x, weight, bias, other, adjoint_weight) at site ``site_id`` with ``alpha``: what
// launchers.conv2d_forward's Python key holds (site_id, x's shape, strides, dtype and device, weight's
// strides, bias's stride and dtype, other's strides and dtype, adjoint_weight's strides, alpha, tf32), and
// also every given tensor's sizes, dtype and device. 1: made, 0: not served here, -1: an error (set).
int make_key(PyObject *const *args, Key &key, const at::Tensor **tensors) {
  if (at::impl::torch_function_mode_enabled()) return 0;  // the mode sees the Python path's allocation
  for (int i = kX; i <= kAdjointWeight; i++) {
    tensors[i] = nullptr;
    if (args[i] == Py_None) {
      if (i == kX || i == kWeight) return 0;
      continue;
    }
    if ((tensors[i] = plain_tensor(args[i])) == nullptr) return 0;
  }
  int64_t site_id = PyLong_AsLongLong(args[5]);
  if (site_id == -1 && PyErr_Occurred()) return -1;
  if (!PyFloat_Check(args[6]) && !PyLong_Check(args[6])) return 0;
  key.alpha = PyFloat_AsDouble(args[6]);
  if (key.alpha == -1.0 && PyErr_Occurred()) {  // an int too large for a double: the Python path's
    PyErr_Clear();
    return 0;
  }
  PyObject *tf32 = PyObject_CallNoArgs(tf32_allowed);
  if (tf32 == nullptr) return -1;
  int tf32_on = PyObject_IsTrue(tf32);
  Py_DECREF(tf32);
  if (tf32_on < 0) return -1;
  if (!key.push(site_id) || !key.push(tf32_on)) return 0;
  for (int i = kX; i <= kAdjointWeight; i++)
    if (!(tensors[i] == nullptr ? key.push(kAbsent) : push_tensor(key, *tensors[i]))) return 0;
  return 1;
}

// Whether ``hook`` (read now) is the entry's ``registered`` one and calls nothing: 1 yes, 0 no, -1 error.
int hook_quiet(PyObject *name, PyObject *registered) {
  PyObject *hook = PyObject_GetAttr(runtime, name);
  if (hook == nullptr) return -1;
  int quiet = hook == registered;
  if (quiet && hook != Py_None) {  // a HookChain: quiet while its list of calls is empty
    PyObject *calls = PyObject_GetAttr(hook, calls_name);
    if (calls == nullptr) {
      Py_DECREF(hook);
      return -1;
    }
    quiet = PyList_Check(calls) && PyList_GET_SIZE(calls) == 0;
    Py_DECREF(calls);
  }
  Py_DECREF(hook);
  return quiet;
}

// The generated Python function's gates: plans enabled, the entry's driver active, its hooks set and quiet.
int gates_open(const Entry &entry) {
  PyObject *enabled = PyDict_GetItemWithError(state, enabled_name);  // borrowed
  if (enabled == nullptr) return PyErr_Occurred() ? -1 : 0;
  int open = PyObject_IsTrue(enabled);
  if (open <= 0) return open;
  PyObject *active = PyObject_GetAttr(driver, active_name);
  if (active == nullptr) return -1;
  open = active == entry.active;
  Py_DECREF(active);
  if (open) open = hook_quiet(enter_name, entry.enter);
  if (open == 1) open = hook_quiet(exit_name, entry.exit);
  return open;
}

// The current stream as the plan's driver gives it: current_stream(current_device()); -1 error (set).
int current_stream(const Entry &entry, uint64_t *stream) {
  PyObject *device = PyObject_CallNoArgs(entry.current_device);
  if (device == nullptr) return -1;
  PyObject *value = PyObject_CallOneArg(entry.current_stream, device);
  Py_DECREF(device);
  if (value == nullptr) return -1;
  *stream = PyLong_AsUnsignedLongLong(value);
  Py_DECREF(value);
  return *stream == static_cast<uint64_t>(-1) && PyErr_Occurred() ? -1 : 0;
}

// call(x, weight, bias, other, adjoint_weight, site_id, alpha) -> y, launched; or None: not served here
// (no entry for the key, gates closed, a pointer the plan cannot take), nothing launched.
PyObject *call(PyObject *, PyObject *const *args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 7) {
    PyErr_Format(PyExc_TypeError, "call(x, weight, bias, other, adjoint_weight, site_id, alpha): got %zd arguments",
                 nargs);
    return nullptr;
  }
  if (table == nullptr || table->empty()) Py_RETURN_NONE;
  Key key;
  const at::Tensor *tensors[kArguments];
  int made = make_key(args, key, tensors);
  if (made <= 0) return made < 0 ? nullptr : Py_NewRef(Py_None);
  auto found = table->find(key);
  if (found == table->end()) Py_RETURN_NONE;
  std::shared_ptr<Entry> entry = found->second;  // held: the gates and the stream getter run Python code
  int open = gates_open(*entry);
  if (open <= 0) return open < 0 ? nullptr : Py_NewRef(Py_None);
  uint64_t stream;
  if (current_stream(*entry, &stream)) return nullptr;
  const at::Tensor &x = *tensors[kX];
  at::Tensor y = entry->like_input
                     ? at::empty_like(x)
                     : at::empty_strided(c10::IntArrayRef(entry->shape.data(), entry->dims),
                                         c10::IntArrayRef(entry->strides.data(), entry->dims), x.options());
  tensors[kY] = &y;
  uint64_t addresses[kArguments];
  for (uint32_t i = 0; i < entry->n_tensors; i++)
    addresses[i] = reinterpret_cast<uint64_t>(tensors[entry->tensors[i]]->data_ptr());
  int launched = launch_plan(PyBytes_AS_STRING(entry->plan), stream, addresses, entry->n_tensors);
  if (launched <= 0) return launched < 0 ? nullptr : Py_NewRef(Py_None);
  served++;
  return THPVariable_Wrap(std::move(y));
  END_HANDLE_TH_ERRORS
}

// add(x, weight, bias, other, adjoint_weight, site_id, alpha, entry) -> bool: registers ``entry`` for the
// key of the call with these arguments; False where the key is not one served here, the plan takes a tensor
// the call does not give, or the table is full (its entries stay until clear()).
// entry: (plan: bytes, site, active driver, enter hook, exit hook, current_stream, current_device,
//         shape: tuple or None (y = empty_like(x)), strides: tuple or None, tensors: tuple of Argument)
PyObject *add(PyObject *, PyObject *const *args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (table == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "forward_dispatch: bind() first");
    return nullptr;
  }
  if (nargs != 8 || !PyTuple_Check(args[7])) {
    PyErr_SetString(PyExc_TypeError, "add(x, weight, bias, other, adjoint_weight, site_id, alpha, entry: tuple)");
    return nullptr;
  }
  auto entry = std::make_shared<Entry>();
  PyObject *shape, *strides, *tensors;
  if (!PyArg_ParseTuple(args[7], "SOOOOOOOOO", &entry->plan, &entry->site, &entry->active, &entry->enter,
                        &entry->exit, &entry->current_stream, &entry->current_device, &shape, &strides, &tensors)) {
    entry->plan = entry->site = entry->active = entry->enter = entry->exit = nullptr;
    entry->current_stream = entry->current_device = nullptr;
    return nullptr;
  }
  for (PyObject *object : {entry->plan, entry->site, entry->active, entry->enter, entry->exit,
                           entry->current_stream, entry->current_device})
    Py_INCREF(object);
  if (!PyTuple_Check(tensors) || PyTuple_GET_SIZE(tensors) > kArguments) {
    PyErr_SetString(PyExc_TypeError, "add: entry's tensors must be a tuple of at most 6 argument indices");
    return nullptr;
  }
  entry->n_tensors = static_cast<uint32_t>(PyTuple_GET_SIZE(tensors));
  for (uint32_t i = 0; i < entry->n_tensors; i++) {
    long index = PyLong_AsLong(PyTuple_GET_ITEM(tensors, i));
    if (index < 0 || index >= kArguments) {
      if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "add: argument index %ld out of range", index);
      return nullptr;
    }
    entry->tensors[i] = static_cast<uint8_t>(index);
  }
  entry->like_input = shape == Py_None;
  if (!entry->like_input) {
    if (!PyTuple_Check(shape) || !PyTuple_Check(strides) || PyTuple_GET_SIZE(shape) != PyTuple_GET_SIZE(strides) ||
        PyTuple_GET_SIZE(shape) > kMaxDims) {
      PyErr_SetString(PyExc_TypeError, "add: entry's shape and strides must be tuples of one length (at most 8)");
      return nullptr;
    }
    entry->dims = PyTuple_GET_SIZE(shape);
    for (int64_t i = 0; i < entry->dims; i++) {
      entry->shape[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(shape, i));
      entry->strides[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(strides, i));
    }
    if (PyErr_Occurred()) return nullptr;
  }
  if (table->size() >= kMaxEntries) Py_RETURN_FALSE;
  Key key;
  const at::Tensor *arguments[kArguments];
  int made = make_key(args, key, arguments);
  if (made <= 0) return made < 0 ? nullptr : Py_NewRef(Py_False);
  for (uint32_t i = 0; i < entry->n_tensors; i++)  // a plan's tensor this call does not give: not served
    if (entry->tensors[i] != kY && arguments[entry->tensors[i]] == nullptr) Py_RETURN_FALSE;
  (*table)[key] = std::move(entry);
  Py_RETURN_TRUE;
  END_HANDLE_TH_ERRORS
}

PyObject *clear(PyObject *, PyObject *) {
  if (table != nullptr) {
    auto dropped = std::move(*table);  // the entries' references are released after the table is empty
    table->clear();
  }
  Py_RETURN_NONE;
}

PyObject *size(PyObject *, PyObject *) { return PyLong_FromSize_t(table == nullptr ? 0 : table->size()); }

PyObject *served_calls(PyObject *, PyObject *) { return PyLong_FromUnsignedLongLong(served); }

// bind(launch_plan capsule, knobs.runtime, triton.runtime.driver, active attribute name, launch_plans' state,
//      torch._C._get_cudnn_allow_tf32)
PyObject *bind(PyObject *, PyObject *args) {
  PyObject *capsule, *bound[5];
  if (!PyArg_ParseTuple(args, "OOOUO!O", &capsule, &bound[0], &bound[1], &bound[2], &PyDict_Type, &bound[3],
                        &bound[4]))
    return nullptr;
  void *function = PyCapsule_GetPointer(capsule, "mgiad_fast_launch.launch_plan");
  if (function == nullptr) return nullptr;
  PyObject **slots[5] = {&runtime, &driver, &active_name, &state, &tf32_allowed};
  for (int i = 0; i < 5; i++) {
    Py_INCREF(bound[i]);
    Py_XSETREF(*slots[i], bound[i]);
  }
  launch_plan = reinterpret_cast<LaunchPlan>(function);
  if (table == nullptr) table = new std::unordered_map<Key, std::shared_ptr<Entry>, KeyHash>();
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"call", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(call)), METH_FASTCALL,
     "call(x, weight, bias, other, adjoint_weight, site_id, alpha) -> y or None"},
    {"add", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(add)), METH_FASTCALL,
     "add(x, weight, bias, other, adjoint_weight, site_id, alpha, entry) -> bool"},
    {"clear", clear, METH_NOARGS, "forget every entry"},
    {"size", size, METH_NOARGS, "the number of entries"},
    {"served", served_calls, METH_NOARGS, "the calls served (launched) since the module was loaded"},
    {"bind", bind, METH_VARARGS, "bind(launch_plan, runtime, driver, active_name, state, tf32_allowed)"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "mgiad_forward_dispatch", nullptr, -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit_mgiad_forward_dispatch(void) {
  enter_name = PyUnicode_InternFromString("launch_enter_hook");
  exit_name = PyUnicode_InternFromString("launch_exit_hook");
  calls_name = PyUnicode_InternFromString("calls");
  enabled_name = PyUnicode_InternFromString("enabled");
  if (!enter_name || !exit_name || !calls_name || !enabled_name) return nullptr;
  return PyModule_Create(&module);
}
