"""Eager calls of the package's custom ops skip the dispatcher (device_calls.DirectCall) only where it would do nothing:
the same values, gradients and version counters either way, and the dispatcher whenever a mode, a
transform, a profiler, a tensor subclass or a meta tensor needs it."""
import pytest
import torch
from support import DEVICE
from torch.utils._python_dispatch import TorchDispatchMode

from mgiad_kernels import GroupedConv2d, SmoothingStep
from mgiad_kernels.conv import ops as conv_ops
from mgiad_kernels.runtime import device_calls
from mgiad_kernels.smoothing import ops as smoothing_ops


class _PassThrough(TorchDispatchMode):
    """Runs every op unchanged; records the package's custom ops it sees."""

    def __init__(self):
        super().__init__()
        self.custom = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "mgiad_kernels":
            self.custom.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def dispatched(monkeypatch):
    """The names of the custom ops called through the dispatcher while the test runs."""
    names = []
    for call in (conv_ops.call_conv2d, conv_ops.call_conv2d_grad_input, conv_ops.call_conv2d_grad_weight,
                 smoothing_ops.call_smoothing_step,
                 smoothing_ops.call_smoothing_step_backward, smoothing_ops.call_smoothing_step_inference):
        def counting(*args, _op=call.op):
            names.append(_op._qualname)
            return _op(*args)
        monkeypatch.setattr(call, "op", counting)
    return names


def _step(seed=0):
    torch.manual_seed(seed)
    conv = [GroupedConv2d(8, 8, 3, padding=1, groups=2, bias=True, backend="triton") for _ in range(2)]
    return SmoothingStep(*conv, 8, backend="triton").to(DEVICE)


def _train_once(step, u, f):
    """Output, the gradients of u, f and every parameter, and the buffers' values and versions."""
    u, f = u.clone().requires_grad_(), f.clone().requires_grad_()
    out = step(u, f)
    out.backward(torch.ones_like(out))
    return ([out, u.grad, f.grad, *(p.grad for p in step.parameters())],
            [(b.clone(), b._version) for b in step.buffers()])


def test_eager_training_step_calls_no_custom_op_through_the_dispatcher(dispatched):
    step = _step()
    u, f = (torch.randn(2, 8, 5, 5, device=DEVICE) for _ in range(2))
    _train_once(step, u, f)
    step.eval()
    with torch.no_grad():
        step(u, f)
    assert dispatched == []


def test_direct_and_dispatched_calls_agree_to_the_bit_and_bump_the_same_versions(dispatched):
    u, f = (torch.randn(2, 8, 5, 5, device=DEVICE) for _ in range(2))
    direct = _train_once(_step(), u, f)
    assert dispatched == []
    with _PassThrough() as mode:
        through = _train_once(_step(), u, f)
    assert {"smoothing_step.default", "smoothing_step_backward.default"} <= set(mode.custom)
    assert len(dispatched) >= 2
    for a, b in zip(direct[0], through[0]):
        assert torch.equal(a, b)
    for (value_a, version_a), (value_b, version_b) in zip(direct[1], through[1]):
        assert torch.equal(value_a, value_b) and version_a == version_b
    # the running statistics were updated in place, which the version counters record
    assert all(version > 0 for _, version in direct[1])


def test_a_saved_running_statistic_updated_by_a_direct_call_is_caught_by_autograd():
    step = _step()
    u, f = (torch.randn(2, 8, 5, 5, device=DEVICE) for _ in range(2))
    scale = torch.ones(8, device=DEVICE, requires_grad=True)
    saved = (scale * step.bn1.running_mean).sum()  # mul saves running_mean for its backward
    step(u, f)  # training: updates running_mean in place
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved.backward()


def test_a_profiler_sees_the_custom_ops(dispatched):
    step = _step()
    u, f = (torch.randn(2, 8, 5, 5, device=DEVICE) for _ in range(2))
    with torch.profiler.profile():
        step(u, f)
    assert dispatched == ["mgiad_kernels::smoothing_step"]


def test_meta_tensors_and_subclasses_take_the_dispatcher(dispatched):
    x, w = torch.empty(2, 8, 5, 5, device="meta"), torch.empty(8, 4, 3, 3, device="meta")
    y = conv_ops.call_conv2d(x, w, None, None, 1.0, [1, 1], [1, 1, 1, 1], [1, 1], 2)  # the op's fake
    assert y.device.type == "meta" and y.shape == (2, 8, 5, 5)
    assert dispatched == ["mgiad_kernels::conv2d"]

    class Marked(torch.Tensor):
        pass

    x = torch.randn(2, 8, 5, 5, device=DEVICE)
    conv = GroupedConv2d(8, 8, 3, padding=1, groups=2, backend="triton").to(DEVICE)
    with torch.no_grad():
        expected = conv(x)
        got = conv(x.as_subclass(Marked))
    assert dispatched[-1] == "mgiad_kernels::conv2d" and len(dispatched) == 2
    assert torch.equal(got.as_subclass(torch.Tensor), expected)


def test_tensors_inside_list_arguments_are_checked_too():
    class Marked(torch.Tensor):
        pass

    plain = torch.zeros(1)
    assert device_calls.dispatch_free((plain, [1, 2], [None, plain], torch.nn.Parameter(plain)))
    assert not device_calls.dispatch_free((plain, [None, plain.as_subclass(Marked)]))
    assert not device_calls.dispatch_free((plain, [torch.zeros(1, device="meta")]))
    with _PassThrough():
        assert not device_calls.dispatch_free((plain,))


class _OnDevice:
    """Stands in for a tensor on a CUDA device (``index``; None: a CPU tensor)."""

    def __init__(self, index):
        self.is_cuda, self.index = index is not None, index

    def get_device(self):
        return -1 if self.index is None else self.index


@pytest.mark.parametrize("tensor_device, current, entered", [
    pytest.param(None, 0, [], id="cpu_tensor"),
    pytest.param(0, 0, [], id="current_device"),
    pytest.param(1, 0, [1], id="other_device"),
])
def test_an_op_runs_with_its_first_tensors_device_current(monkeypatch, tensor_device, current, entered):
    """Triton launches on the current CUDA device's context and stream: each op's implementation runs with the
    current device set to its first tensor's (as aten's kernels do), and only where it is not current already."""
    seen = []

    class Device:
        def __init__(self, index):
            self.index = index

        def __enter__(self):
            seen.append(self.index)

        def __exit__(self, *exc):
            seen.append("left")

    monkeypatch.setattr(device_calls, "_current_cuda_device", lambda: current)
    monkeypatch.setattr(device_calls, "_cuda_device", Device)
    impl = device_calls.on_input_device(lambda first, second: (second, list(seen)))
    assert impl(_OnDevice(tensor_device), 7) == (7, entered)  # run inside the device's context, if entered
    assert seen == (entered + ["left"] if entered else [])


def test_every_op_implementation_sets_its_inputs_device():
    """Every custom op's implementation, eager (DirectCall) and through the dispatcher, is wrapped."""
    calls = [value for module in (conv_ops, smoothing_ops) for value in vars(module).values()
             if isinstance(value, device_calls.DirectCall)]
    assert len(calls) == 7, calls
    for call in calls:
        assert call.impl.__code__ is device_calls.on_input_device(len).__code__, call.op
        assert call.op._init_fn is call.impl, call.op
