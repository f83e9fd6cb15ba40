"""conv2d_forward's warm call in C++: key, allocation and launch in one call of an extension.

A warm ``launchers.conv2d_forward`` in Python is a site key (seven getters, each building a Python object,
then a hash of the nested tuple), the output's allocation through torch's Python binding, the generated
function's gates and the fast launcher: about 2.4x a tiny aten op on the host. ``csrc/forward_dispatch.cpp``
reads the same key from the at::Tensor (integers, no Python objects), allocates with ATen's C++ API and
launches with the fast launcher's C function (``fast_launch.launch_plan_capsule``). It serves only calls
registered from Python (``register``, once a site's warm launch has a fast plan) whose gates are open; for
every other call it returns None and conv2d_forward takes its Python path, which stays the reference.

Built on first use (like the fast launcher, in Triton's cache, once per machine; ~15 s) with the C++
compiler against torch's own headers and libraries. Off (``module()`` is None, with a warning, once) where
it cannot be built or the fast launcher is off, and with ``MGIAD_KERNELS_CXX_DISPATCH=0``.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import sysconfig
import warnings

import torch

from . import launch_plans
from .c_build import build_shared_library
from .fast_launch import launch_plan_capsule

_MODULE_NAME = "mgiad_forward_dispatch"
_SOURCE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "forward_dispatch.cpp")
# conv2d_forward's pointers by position (launchers._FORWARD_POINTERS: src, weight, adjoint weight, bias, dst,
# other) as the C++ file's Argument: x 0, weight 1, bias 2, other 3, adjoint weight 4, y 5
_ARGUMENT_OF_POINTER = (0, 1, 4, 2, 5, 3)


# the C++ standards tried in turn: torch's recent headers need C++20; older compilers name it c++2a, and
# older torch headers build as C++17 too
_STANDARDS = ("c++20", "c++2a", "c++17")


def _build_flags(standard: str) -> tuple[str, ...]:
    """Compile and link flags for an extension on torch's C++ API (as torch.utils.cpp_extension sets them);
    torch's version is among them (unused by the source) so that the build's digest changes with it."""
    root = os.path.dirname(torch.__file__)
    library = os.path.join(root, "lib")
    return (f"-std={standard}", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            f"-DMGIAD_TORCH_VERSION=\"{torch.__version__}\"", f"-I{os.path.join(root, 'include')}",
            f"-I{os.path.join(root, 'include', 'torch', 'csrc', 'api', 'include')}",
            f"-I{sysconfig.get_paths()['include']}", f"-L{library}", f"-Wl,-rpath,{library}",
            "-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python")


@functools.lru_cache(maxsize=None)
def module():
    """The built extension, bound to the fast launcher and Triton's runtime, or None where it is off."""
    if os.environ.get("MGIAD_KERNELS_CXX_DISPATCH", "1") == "0":
        return None
    capsule = launch_plan_capsule()
    if capsule is None:
        return None
    from triton import knobs
    from triton.runtime import driver

    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    errors = []
    try:
        with open(_SOURCE_PATH, encoding="utf-8") as f:
            source = f.read()
    except OSError as error:  # the package installed without its C++ source: nothing to build
        errors.append(str(error))
    for standard in _STANDARDS if not errors else ():
        try:
            path = build_shared_library(source, "mgiad-forward-dispatch", _MODULE_NAME + suffix,
                                        _build_flags(standard), language="c++")
            spec = importlib.util.spec_from_file_location(_MODULE_NAME, path)
            extension = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(extension)
            break
        except (OSError, RuntimeError, ImportError) as error:
            errors.append(f"-std={standard}: {error}")
    else:
        warnings.warn("mgiad_kernels: warm conv forward calls take the Python path (the C++ dispatch is off: "
                      + "\n".join(errors) + ")", RuntimeWarning, stacklevel=3)
        return None
    extension.bind(capsule, knobs.runtime, driver, "_active" if hasattr(driver, "_active") else "active",
                   launch_plans._STATE, torch._C._get_cudnn_allow_tf32)
    launch_plans.forget_on_clear(extension)
    return extension


def register(site, x, weight, bias, other, adjoint_weight, site_id: int, alpha: float, shape, strides,
             like_input: bool) -> bool:
    """Serve conv2d_forward's calls with the key of this one (its arguments) from C++: allocate y (as
    ``torch.empty_like(x)`` where ``like_input``, else with ``shape`` and ``strides``) and launch ``site``'s
    fast plan, with the gates of its generated warm function (launch_plans.warm_function). False where the
    site has no fast plan, the extension is off, a launch hook is a plain function (never quiet), or the key
    is not one it serves."""
    if site.fast_plan is None:
        return False
    extension = module()
    if extension is None:
        return False
    from triton import knobs

    active, _, _, _, _, current_stream, current_device = site.plans[0]
    enter, leave = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
    if any(hook is not None and not isinstance(getattr(hook, "calls", None), list) for hook in (enter, leave)) \
            or any(i >= len(_ARGUMENT_OF_POINTER) for i in site.checked):
        return False
    tensors = tuple(_ARGUMENT_OF_POINTER[i] for i in site.checked)
    entry = (site.fast_plan, site, active, enter, leave, current_stream, current_device,
             None if like_input else tuple(shape), None if like_input else tuple(strides), tensors)
    return extension.add(x, weight, bias, other, adjoint_weight, site_id, alpha, entry)

