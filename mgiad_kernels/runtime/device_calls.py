"""How the custom ops' implementations are called: eager calls on plain tensors skip the dispatcher
(DirectCall), and every implementation runs with its input's CUDA device current (on_input_device)."""
from __future__ import annotations

import functools
import inspect

import torch
from torch import Tensor

class DirectCall:
    """``op(*args)``, with eager calls on plain tensors going straight to the op's implementation.

    Through the dispatcher, a custom op call in eager mode does nothing more for the package's callers
    than run the implementation below autograd (they are autograd Functions' forward and backward, or
    no-grad paths) and, for an op that mutates arguments, bump their version counters; it costs ~36 us of
    host time per call on this CPU (`python -m tools.host_bench`, ~250 calls per MGiaD training step).
    The dispatcher is kept wherever it does more: under ``torch.compile``, a dispatch or function mode
    (FakeTensorMode, FlopCounterMode, ...), a functorch transform, a profiler (which names the op), and for
    tensor subclasses or meta tensors. ``mutated``: positions of the arguments the op declares mutated,
    whose versions are bumped as the dispatcher's ADInplaceOrView kernel does.
    """

    __slots__ = ("op", "impl", "mutated", "launch")

    def __init__(self, op, impl, mutated: tuple = (), launch=None):
        self.op, self.impl, self.mutated, self.launch = op, impl, mutated, launch

    def __call__(self, *args):
        if not dispatch_free(args):
            return self.op(*args)
        if self.mutated and not torch.is_inference_mode_enabled():
            torch.autograd.graph.increment_version([args[i] for i in self.mutated])
        return self.impl(*args)

    def with_geometry(self, geometry, *args):
        """``self(*args)``, where the implementation is called directly handing it the caller's checked
        ``geometry`` (``launch(*args, geometry)``), so the sizes are not normalized again; ``geometry`` None,
        or a call through the dispatcher: the op's own, from its arguments."""
        if geometry is None or self.launch is None or self.mutated or not dispatch_free(args):
            return self(*args)
        return self.launch(*args, geometry)


def dispatch_free(args) -> bool:
    """Eager, no mode, transform or profiler active, and every tensor argument (lists' included) a plain, non-meta
    torch.Tensor or Parameter."""
    if (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack()
            or torch._C._is_torch_function_mode_enabled() or torch._C._are_functorch_transforms_active()
            or torch._C._autograd._profiler_enabled()):
        return False
    return _plain_tensors(args)


_PLAIN_TENSOR_TYPES = (Tensor, torch.nn.Parameter)  # a Parameter is a plain tensor to the dispatcher


def _plain_tensors(args) -> bool:
    for arg in args:
        if isinstance(arg, Tensor):
            if type(arg) not in _PLAIN_TENSOR_TYPES or arg.is_meta:
                return False
        elif type(arg) is list:  # the ops' lists hold ints or tensors, never lists
            for item in arg:
                if isinstance(item, Tensor) and (type(item) not in _PLAIN_TENSOR_TYPES or item.is_meta):
                    return False
    return True


# the CUDA device functions the implementations run under (names of their own: tests stand them in)
_current_cuda_device = getattr(torch._C, "_cuda_getDevice", None)
_cuda_device = torch.cuda.device


def on_input_device(impl):
    """``impl`` run with the current CUDA device set to its first argument's, as aten's CUDA kernels set it
    with a device guard: Triton launches on the current device's context and stream, so a model on cuda:1
    would otherwise launch on cuda:0's. Costs nothing where the device is already current."""

    @functools.wraps(impl)
    def on_input_device(*args):
        first = args[0]
        if not first.is_cuda:
            return impl(*args)
        index = first.get_device()
        if index == _current_cuda_device():
            return impl(*args)
        with _cuda_device(index):
            return impl(*args)

    # annotations evaluated in impl's own module, where torch.library.custom_op's schema inference reads them
    on_input_device.__signature__ = inspect.signature(impl, eval_str=True)
    return on_input_device
