"""The fused smoothing step and FAS transfers against the eager composition in float64.

Every output and gradient (u, f, A, B, both BatchNorms' gamma and beta) and the running
statistics are compared; the Triton path must not call aten convolution or batch_norm, and
eval mode must take at most two kernel launches per step.
"""
import copy

import pytest
import torch
from launch_counter import counting_launches
from support import DEVICE, ON_GPU, REL_TOL, TRITON_DTYPES, nonfinite_on_purpose, rel_err
from torch import nn

from torch.utils._python_dispatch import TorchDispatchMode

from mgiad_kernels import (FASRestriction, GroupedConv2d, ProlongationCorrection, SmoothingStep, fas_restriction,
                           prolongation_correction, residual_conv2d, smoothing_step,
                           smoothing_steps)
from mgiad_kernels.conv import launch as conv_launch
from mgiad_kernels.runtime import launch_sites
from mgiad_kernels.smoothing import launch as smoothing_launch

# (N, C, H, W, channels per group, kernel, dilation, bias, channels_last), named after what makes them awkward
STEP_CASES = [
    pytest.param(2, 16, 5, 7, 4, 3, 1, False, False, id="g4-oddHW"),
    pytest.param(1, 32, 3, 5, 8, 3, 1, False, False, id="g8-N1-odd"),
    pytest.param(2, 16, 4, 4, 1, 3, 1, False, False, id="depthwise"),
    pytest.param(2, 16, 4, 6, 16, 3, 1, False, False, id="dense"),
    pytest.param(1, 48, 3, 3, 16, 3, 1, True, False, id="g16-wider-than-tile-bias"),
    pytest.param(2, 8, 6, 5, 4, 3, 2, False, True, id="dilated-channels_last"),
    pytest.param(2, 12, 5, 5, 3, 5, 1, False, False, id="group-size-3-kernel5"),
]


@pytest.fixture
def launches():
    """The names of the Triton kernels launched while the test runs, in order (``launch_counter``: the same
    count on a GPU, on the stand-in driver and under the interpreter)."""
    with counting_launches() as names:
        yield names


def _make_step(c, group_size, kernel, dilation, bias, backend, seed=0):
    torch.manual_seed(seed)
    groups = c // group_size
    pad = dilation * (kernel - 1) // 2
    A = GroupedConv2d(c, c, kernel, padding=pad, dilation=dilation, groups=groups, bias=bias, backend=backend)
    B = GroupedConv2d(c, c, kernel, padding=pad, dilation=dilation, groups=groups, bias=bias, backend=backend)
    step = SmoothingStep(A, B, c, backend=backend)
    with torch.no_grad():
        for bn in (step.bn1, step.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    return step.to(DEVICE)


def _inputs(n, c, h, w, dtype, channels_last, seed=1):
    g = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    u, f, grad = (torch.randn(n, c, h, w, generator=g) for _ in range(3))
    return tuple(t.to(DEVICE, dtype).contiguous(memory_format=fmt) for t in (u, f, grad))


def _run(module, u, f, grad, steps=1):
    """Output, grads of u and f, every parameter's grad and every buffer after ``steps`` applications."""
    u = u.detach().clone().requires_grad_()
    f = f.detach().clone().requires_grad_()
    out = u
    for _ in range(steps):
        out = module(out, f)
    out.backward(grad.to(out.dtype))
    named = {"output": out, "grad u": u.grad, "grad f": f.grad}
    named.update({f"grad {n}": p.grad for n, p in module.named_parameters()})
    named.update({n: b for n, b in module.named_buffers()})
    return named


def _compare(fused, eager_same_dtype, reference, dtype):
    """fp32: within REL_TOL of float64. Half types: no worse than twice the eager path's own error."""
    for name, expect in reference.items():
        got = fused[name]
        if expect is None:  # no gradient reaches it
            assert got is None, f"{name}: a gradient where the reference has none"
            continue
        assert got is not None, f"{name} is missing"
        assert got.shape == expect.shape, f"{name}: shape {tuple(got.shape)} != {tuple(expect.shape)}"
        if name.endswith("num_batches_tracked"):
            assert torch.equal(got.cpu(), expect.cpu()), name
            continue
        if expect.abs().max() < 1e-9:  # a conv bias before a batch-statistics BatchNorm: exactly zero gradient
            assert got.abs().max() <= 1e-2 * REL_TOL[dtype] ** 0.5, f"{name}: {got.abs().max():.2e}, expected 0"
            continue
        err = rel_err(got, expect)
        bound = REL_TOL[dtype] if dtype == torch.float32 else max(REL_TOL[dtype], 2 * rel_err(eager_same_dtype[name],
                                                                                               expect))
        assert err <= bound, f"{name}: relative error {err:.2e} > {bound:.1e} ({dtype})"


def _check_step(step, u, f, grad, dtype, train, steps=1):
    eager = copy.deepcopy(step)
    eager.backend = "torch"
    reference = copy.deepcopy(eager).double()
    for m in (step, eager, reference):
        m.train(train)
    fused = _run(step.to(dtype), u, f, grad, steps)
    _compare(fused, _run(eager.to(dtype), u, f, grad, steps), _run(reference, u.double(), f.double(), grad, steps),
             dtype)
    return fused


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=str)
@pytest.mark.parametrize("n,c,h,w,group_size,kernel,dilation,bias,channels_last", STEP_CASES)
def test_fused_step_matches_eager_float64(n, c, h, w, group_size, kernel, dilation, bias, channels_last, dtype,
                                          train):
    step = _make_step(c, group_size, kernel, dilation, bias, "triton")
    u, f, grad = _inputs(n, c, h, w, dtype, channels_last)
    fused = _check_step(step, u, f, grad, dtype, train)
    if channels_last:
        assert fused["output"].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval-with-grad"])
@pytest.mark.parametrize("case", [pytest.param(c.values, id=c.id) for c in STEP_CASES
                                  if c.id in ("g4-oddHW", "dilated-channels_last", "g8-N1-odd")])
def test_half_step_keeps_t_for_the_backward_pass(case, train, launches):
    """In 16-bit (smoothing_launch.materializes_t) the step writes t = relu(bn1(r)) in a launch of its own, B reads
    it with no prologue and B's grad weight reads it with no recompute: four launches forward, seven
    backward, within twice the eager fp16 error of float64 (run in fp16 under the interpreter too)."""
    n, c, h, w, group_size, kernel, dilation, bias, channels_last = case
    step = _make_step(c, group_size, kernel, dilation, bias, "triton")
    if not train:  # eval mode with parameters requiring grad: the running statistics, autograd kept
        step.eval()
    u, f, grad = _inputs(n, c, h, w, torch.float16, channels_last)
    launch_sites.clear()
    try:
        _check_step(step, u, f, grad, torch.float16, train)
        assert len(_step_kernels(launches)) == 4 + 7, launches
        recompute = {site[0].constexprs["X_BN_RELU"] for site in conv_launch._GRAD_WEIGHT_SITES.values()}
        assert recompute == {False}, recompute
        prologue = {site.constexprs["PROLOGUE_BN_RELU"] for site in launch_sites.SITES.values()
                    if "PROLOGUE_BN_RELU" in site.constexprs}
        assert prologue == {False}, prologue
        assert _adjoint_flags() == {(False, True, False), (True, False, False)}  # 16-bit: no adjoint weights
    finally:
        launch_sites.clear()


def _adjoint_flags():
    """(TRANSPOSED, WEIGHT_OUT_IS_DST, WRITE_ADJOINT_WEIGHT) of every gather launch site made."""
    from mgiad_kernels.runtime import launch_sites

    return {(c["TRANSPOSED"], c["WEIGHT_OUT_IS_DST"], c["WRITE_ADJOINT_WEIGHT"])
            for c in (site.constexprs for site in launch_sites.SITES.values()) if "WEIGHT_OUT_IS_DST" in c}


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval-with-grad"])
@pytest.mark.parametrize("case", [pytest.param(c.values, id=c.id) for c in STEP_CASES
                                  if c.id in ("g4-oddHW", "dilated-channels_last")])
def test_fp32_step_writes_adjoint_weights_for_its_backward(case, train, launches):
    """fp32 (conv_launch.adjoint_weight_wanted): A and B write their adjoint weights in the forward's
    launches and B^T and A^T read them (vector loads on sm_90), still three launches forward and seven
    backward, matching float64."""
    from mgiad_kernels.runtime import launch_sites

    n, c, h, w, group_size, kernel, dilation, bias, channels_last = case
    step = _make_step(c, group_size, kernel, dilation, bias, "triton")
    u, f, grad = _inputs(n, c, h, w, torch.float32, channels_last)
    launch_sites.clear()
    try:
        _check_step(step, u, f, grad, torch.float32, train)
        assert len(_step_kernels(launches)) == 3 + 7, launches
        assert _adjoint_flags() == {(False, True, True), (True, True, False)}
    finally:
        launch_sites.clear()


def test_fused_step_sums_bn2_gradients_over_several_pixel_tiles(monkeypatch):
    """bn2's backward sums take 256-pixel tiles (smoothing_launch._GRAD_SUMS_BLOCK_P): 2*17*16 = 544 pixels make three
    partial rows, the last one part-filled, merged in order by the last tile to arrive; matches float64."""
    rows = []
    original = smoothing_launch._elementwise

    def record(kernel, grid, *args, **kwargs):
        if kernel is smoothing_launch._batchnorm_kernels().bn_relu_grad_sums_kernel:
            rows.append(grid[0])
        return original(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(smoothing_launch, "_elementwise", record)
    step = _make_step(8, 4, 3, 1, False, "triton")
    u, f, grad = _inputs(2, 8, 17, 16, torch.float32, True)
    _check_step(step, u, f, grad, torch.float32, True)
    assert rows == [3]


def _channels_last(*shape):
    return torch.empty(*shape).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("make,evenly_spaced", [
    pytest.param(lambda: _channels_last(2, 8, 5, 3), True, id="channels_last"),
    pytest.param(lambda: torch.empty(2, 8, 5, 3), False, id="NCHW"),
    pytest.param(lambda: torch.empty(1, 8, 5, 3), True, id="NCHW-N1"),
    pytest.param(lambda: _channels_last(2, 16, 5, 3)[:, :8], True, id="channels_last-channel-slice"),
    pytest.param(lambda: _channels_last(2, 8, 5, 6)[..., :3], False, id="channels_last-column-slice"),
    pytest.param(lambda: _channels_last(4, 8, 5, 3)[::2], False, id="channels_last-every-other-image"),
    pytest.param(lambda: _channels_last(2, 8, 1, 3), True, id="channels_last-one-row"),
    pytest.param(lambda: torch.empty(2, 8, 1, 3), False, id="NCHW-one-row"),
])
def test_batchnorm_kernels_index_evenly_spaced_pixels_without_division(make, evenly_spaced):
    """PIXEL_DENSE (pixel p at p * stride_w) exactly when the tensor's pixels are evenly spaced."""
    t = make()
    assert smoothing_launch._pixels_evenly_spaced(t) == evenly_spaced
    if evenly_spaced:
        n, c, h, w = t.shape
        flat = torch.arange(n * h * w)
        nn_, hh, ww = flat // (h * w), flat // w % h, flat % w
        by_nhw = nn_ * t.stride(0) + hh * t.stride(2) + ww * t.stride(3)
        assert torch.equal(by_nhw, flat * t.stride(3))


def test_fused_step_reads_a_gradient_with_gaps_between_rows():
    """A gradient sliced from a wider channels_last tensor: the BatchNorm kernels index it by (n, h, w)
    (PIXEL_DENSE off) and the step still matches float64."""
    step = _make_step(8, 4, 3, 1, False, "triton")
    u, f, _ = _inputs(2, 8, 5, 4, torch.float32, True)
    wide = torch.randn(2, 8, 5, 7, generator=torch.Generator().manual_seed(3))
    grad = wide.to(DEVICE).contiguous(memory_format=torch.channels_last)[..., 2:6]
    assert not smoothing_launch._pixels_evenly_spaced(grad)
    launch_sites.clear()
    _check_step(step, u, f, grad, torch.float32, True)
    dense = {site.constexprs["PIXEL_DENSE"] for site in launch_sites.SITES.values()
             if "PIXEL_DENSE" in site.constexprs}
    assert dense == {True, False}, dense  # the update reads evenly spaced u, s; the backward the sliced grad


@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=str)
def test_shared_A_B_across_two_steps(dtype):
    first = _make_step(16, 4, 3, 1, False, "triton")
    second = SmoothingStep(first.A, first.B, 16, backend="triton").to(DEVICE)
    u, f, grad = _inputs(2, 16, 5, 5, dtype, False)
    fused = _check_step(TwoSteps(first, second), u, f, grad, dtype, train=True)
    assert fused["grad first.A.weight"].abs().sum() > 0
    assert "grad second.A.weight" not in fused  # one parameter, shared


class TwoSteps(nn.Module):
    def __init__(self, first: SmoothingStep, second: SmoothingStep):
        super().__init__()
        self.first, self.second = first, second

    @property
    def backend(self):
        return self.first.backend

    @backend.setter
    def backend(self, value):
        self.first.backend = self.second.backend = value

    def forward(self, u, f):
        return self.second(self.first(u, f), f)


class EveryBackend(nn.Module):
    """A model whose ``backend`` attribute sets every submodule's (steps, convolutions, transfers)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def backend(self):
        return next(m.backend for m in self.model.modules() if hasattr(m, "backend"))

    @backend.setter
    def backend(self, value):
        for module in self.model.modules():
            if hasattr(module, "backend"):
                module.backend = value

    def forward(self, u, f):
        return self.model(u, f)


class TwoRuns(nn.Module):
    """Two runs of smoothing steps on one f, the second taking the first's carry (MGiaD's pre- and
    post-smoothing around a coarse-grid correction); ``detach``: u leaves the graph between them, so
    the first run's last node gets gradients only through what it carried."""

    def __init__(self, pre: list, post: list, detach: bool = False):
        super().__init__()
        self.pre, self.post, self.detach = nn.ModuleList(pre), nn.ModuleList(post), detach

    def forward(self, u, f):
        u, (carry,) = smoothing_steps(u, f, self.pre)
        if self.detach:
            u = u.detach()
        return smoothing_steps(u, f, self.post, carry)[0]


def _runs(share: str, bias: bool, detach: bool) -> TwoRuns:
    """Three steps (two, then one with the carry): A and B shared by all ('AB'), A shared and a B per
    step ('A'), or each step its own ('none')."""
    first = _make_step(16, 4, 3, 1, bias, "triton")
    steps = [first]
    for seed in (1, 2):
        other = _make_step(16, 4, 3, 1, bias, "triton", seed=seed)
        steps.append(SmoothingStep(first.A if share != "none" else other.A, first.B if share == "AB" else other.B,
                                   16, backend="triton").to(DEVICE))
    return TwoRuns(steps[:2], steps[2:], detach)


class _CountAdds(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.adds = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.adds += func.__name__ in ("add.Tensor", "add_.Tensor")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("share,bias,detach,channels_last", [
    pytest.param("AB", True, False, True, id="shared-AB-bias-channels_last"),
    pytest.param("A", True, False, False, id="shared-A-bias"),
    pytest.param("none", False, False, False, id="f-only"),
    pytest.param("AB", True, True, False, id="u-detached-between-runs"),
])
def test_smoothing_runs_sum_shared_gradients_in_the_kernels(share, bias, detach, channels_last):
    runs = _runs(share, bias, detach)
    u, f, grad = _inputs(2, 16, 5, 3, torch.float32, channels_last)
    _check_step(EveryBackend(copy.deepcopy(runs)), u, f, grad, torch.float32, train=True)
    # the fused backward sums f's, A's and B's gradients in its kernels: autograd adds nothing
    u, f = u.clone().requires_grad_(), f.clone().requires_grad_()
    out = runs(u, f)
    with _CountAdds() as counted:
        out.backward(grad)
    assert counted.adds == 0


def test_channel_multigrid_level_hands_its_carries_to_the_restriction_and_post_smoothing():
    """MGiaD's SiC: pre-smoothing hands one carry to the FAS restriction and one to post-smoothing,
    so f's, A-hat's and B-hat's gradients from all five uses are summed in the step kernels. What autograd
    still adds: u (read by Pi-hat, A-hat and the correction: 2), u_c (A-hat_c and the coarse level: 1)
    and the coarse A-hat (the restriction's A-hat_c(u_c) and its own steps: 1)."""
    from mgiad.models.mgiad import SiC

    torch.manual_seed(3)
    level = EveryBackend(SiC(16, 8, 4, pre_smoothing=2, post_smoothing=1, backend="triton")).to(DEVICE)
    u, f, grad = _inputs(2, 16, 4, 3, torch.float32, False)
    _check_step(copy.deepcopy(level), u, f, grad, torch.float32, train=True)
    u, f = u.clone().requires_grad_(), f.clone().requires_grad_()
    out = level(u, f)
    with _CountAdds() as counted:
        out.backward(grad)
    assert counted.adds == 4


def test_smoothing_steps_takes_only_smoothing_steps_and_ignores_a_foreign_carry():
    runs = _runs("AB", False, False)
    u, f, grad = _inputs(2, 16, 4, 4, torch.float32, False)
    with pytest.raises(TypeError, match=r"steps\[0\] must be a SmoothingStep"):
        smoothing_steps(u, f, [nn.Identity()])
    with pytest.raises(ValueError, match="hand_on must be 1 or 2"):
        smoothing_steps(u, f, runs.pre, hand_on=3)
    _, (carry,) = smoothing_steps(u, f.clone(), runs.pre)  # made from another f: used for f by nothing here
    expect = copy.deepcopy(runs.post)
    assert torch.equal(smoothing_steps(u, f, runs.post, carry)[0], smoothing_steps(u, f, expect)[0])


def test_running_statistics_over_several_batches_and_cumulative_momentum():
    step = _make_step(8, 4, 3, 1, False, "triton")
    step.bn1.momentum = step.bn2.momentum = None  # cumulative moving average
    eager = copy.deepcopy(step)
    eager.backend = "torch"
    for seed in range(3):
        u, f, _ = _inputs(2, 8, 4, 5, torch.float32, False, seed=seed)
        with torch.no_grad():
            step(u, f)
            eager(u, f)
    for (name, got), expect in zip(step.named_buffers(), eager.buffers()):
        assert rel_err(got, expect) <= 1e-6 or torch.equal(got, expect), name


def _step_kernels(launches: list) -> list:
    """The launches but the copies that re-lay NCHW activations and OIHW weights (``conv_launch.relaid``)."""
    return [name for name in launches if name != "relayout_kernel"]


def test_eval_mode_is_two_launches_and_train_mode_fuses(launches):
    step = _make_step(16, 4, 3, 1, False, "triton").eval().to(memory_format=torch.channels_last)
    u, f, grad = _inputs(2, 16, 4, 4, torch.float32, True)
    with torch.no_grad():
        step(u, f)
    assert len(launches) == 2, launches
    launches.clear()
    step.train()
    u.requires_grad_()
    out = step(u, f)
    forward_launches = len(launches)
    out.backward(grad)
    # A (+ bn1 batch statistics merged in the kernel, its running statistics updated there), B (+ bn2's),
    # the update u + relu(bn2(s)) (+ num_batches_tracked)
    assert forward_launches == 3, launches
    assert len(launches) - forward_launches == 7, launches[forward_launches:]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_strided_channels_are_relaid_once_per_tensor_and_the_outputs_keep_their_layout(dtype, launches):
    """NCHW activations and OIHW weights (channels KH*KW and H*W apart) are read from channels_last copies, one
    relayout launch each: eval u and both weights (f is read as is, by A's epilogue); training the same forward,
    and backward grad_out, u, grad f back to NCHW, and (16-bit: no adjoint weights) both weights again. The
    step's own launches and the outputs' and gradients' layouts are those of the eager step."""
    step = _make_step(16, 4, 3, 1, False, "triton").eval().to(dtype=dtype)
    u, f, grad = _inputs(2, 16, 4, 4, dtype, False)
    with torch.no_grad():
        out = step(u, f)
    assert launches.count("relayout_kernel") == 3 and len(_step_kernels(launches)) == 2, launches
    assert out.is_contiguous()
    launches.clear()
    step.train()
    u.requires_grad_()
    f.requires_grad_()
    out = step(u, f)
    forward = list(launches)
    grad_u, grad_f = torch.autograd.grad(out, (u, f), grad)
    backward = launches[len(forward):]
    assert forward.count("relayout_kernel") == 3, forward
    assert backward.count("relayout_kernel") == (3 if dtype == torch.float32 else 5), backward
    assert len(_step_kernels(forward)) == (3 if dtype == torch.float32 else 4)
    assert len(_step_kernels(backward)) == 7
    assert out.is_contiguous() and grad_u.is_contiguous() and grad_f.is_contiguous()


def test_fused_step_calls_no_aten_convolution_or_batch_norm():
    step = _make_step(16, 4, 3, 1, True, "triton")
    u, f, grad = _inputs(2, 16, 5, 5, torch.float32, False)
    u.requires_grad_()
    with torch.profiler.profile() as prof:
        step(u, f).backward(grad)
        step.eval()
        with torch.no_grad():
            step(u, f)
    names = {e.name for e in prof.events()}
    assert {"mgiad_kernels::smoothing_step", "mgiad_kernels::smoothing_step_inference"} <= names
    banned = {n for n in names if n.startswith("aten::") and ("conv" in n or "batch_norm" in n)}
    assert not banned, banned


def test_fused_step_is_deterministic():
    results = []
    for _ in range(2):
        step = _make_step(16, 4, 3, 1, False, "triton")
        u, f, grad = _inputs(2, 16, 5, 5, torch.float32, False)
        results.append(_run(step, u, f, grad))
    for name, value in results[0].items():
        assert torch.equal(value, results[1][name]), name


def test_torch_backend_is_the_eager_composition():
    step = _make_step(8, 4, 3, 1, False, "torch")
    u, f, _ = _inputs(2, 8, 4, 4, torch.float32, False)
    bn1, bn2 = copy.deepcopy(step.bn1), copy.deepcopy(step.bn2)
    A, B = step.A, step.B
    expect = u + torch.relu(bn2(nn.functional.conv2d(torch.relu(bn1(f - nn.functional.conv2d(
        u, A.weight, None, 1, 1, 1, A.groups))), B.weight, None, 1, 1, 1, B.groups)))
    assert torch.equal(step(u, f), expect)


def test_functional_form_matches_module():
    step = _make_step(8, 4, 3, 1, False, "triton")
    twin = copy.deepcopy(step)
    u, f, _ = _inputs(2, 8, 4, 4, torch.float32, False)
    out = smoothing_step(u, f, twin.A, twin.B, twin.bn1, twin.bn2, backend="triton")
    assert torch.equal(out, step(u, f))


def test_torch_compile_traces_the_fused_step():
    step = _make_step(8, 4, 3, 1, False, "triton")
    eager = copy.deepcopy(step)
    eager.backend = "torch"
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager" if not ON_GPU else "inductor")
    u, f, grad = _inputs(2, 8, 4, 4, torch.float32, False)
    fused = {name.replace("_orig_mod.", ""): v for name, v in _run(compiled, u, f, grad).items()}
    expect = _run(eager, u, f, grad)
    for name, value in expect.items():
        assert rel_err(fused[name], value) <= 1e-5, name


@pytest.mark.parametrize("make,error,message", [
    (lambda: SmoothingStep(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 3, padding=1), 8), ValueError,
     "A must keep the grid size"),
    (lambda: SmoothingStep(nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1), 8), ValueError,
     "B must map channels=8"),
    (lambda: SmoothingStep(nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 8), 8), TypeError, "B must be an nn.Conv2d"),
    (lambda: SmoothingStep(nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), 8, backend="cuda"),
     ValueError, "backend must be one of"),
])
def test_bad_configuration_is_refused_at_construction(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_bad_inputs_name_the_argument():
    step = _make_step(8, 4, 3, 1, False, "triton")
    u, f, _ = _inputs(2, 8, 4, 4, torch.float32, False)
    with pytest.raises(ValueError, match="u and f must be"):
        step(u, f[:, :, :3])
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        step(u[:1, :, :1, :1], f[:1, :, :1, :1])


# ---- FAS transfers ------------------------------------------------------------------------------------------------

def _conv(c_in, c_out, kernel, stride, groups, seed):
    torch.manual_seed(seed)
    return GroupedConv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False,
                         backend="triton").to(DEVICE)


# (C fine, C coarse, grid stride, Pi/R kernel, Pi/R groups, A groups, P groups), one resolution and two channel levels
TRANSFER_CASES = [
    pytest.param(8, 16, 2, 3, 8, 2, None, id="resolution-depthwise-stride2-multiplier2"),
    pytest.param(8, 8, 2, 3, 8, 8, None, id="resolution-depthwise-oddHW"),
    pytest.param(16, 8, 1, 1, 4, 4, 4, id="channel-grouped1x1-halving"),
]


def _transfer_outputs(u, f, convs, backend, with_correction):
    u = u.detach().clone().requires_grad_()
    f = f.detach().clone().requires_grad_()
    A, Pi, R, A_coarse, P = convs
    u_coarse, f_coarse = fas_restriction(u, f, A, Pi, R, A_coarse, backend=backend)
    loss_terms = [u_coarse, f_coarse]
    if with_correction:
        loss_terms.append(prolongation_correction(u, u_coarse * f_coarse, P, backend=backend))
    g = torch.Generator().manual_seed(5)
    loss = sum((t * torch.randn(t.shape, generator=g).to(t)).sum() for t in loss_terms)
    loss.backward()
    named = {"u_coarse": u_coarse, "f_coarse": f_coarse, "grad u": u.grad, "grad f": f.grad}
    named.update({f"grad {i}": c.weight.grad for i, c in enumerate(convs) if c is not None})
    if with_correction:
        named["corrected u"] = loss_terms[-1]
    for c in convs:
        if c is not None:
            c.weight.grad = None
    return named


@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=str)
@pytest.mark.parametrize("c,c_coarse,stride,kernel,transfer_groups,a_groups,p_groups", TRANSFER_CASES)
def test_fused_fas_transfers_match_float64(c, c_coarse, stride, kernel, transfer_groups, a_groups, p_groups, dtype):
    convs = [_conv(c, c, 3, 1, a_groups, 0), _conv(c, c_coarse, kernel, stride, transfer_groups, 1),
             _conv(c, c_coarse, kernel, stride, transfer_groups, 2), _conv(c_coarse, c_coarse, 3, 1, a_groups, 3),
             _conv(c_coarse, c, 1, 1, p_groups, 4) if p_groups else None]
    u, f, _ = _inputs(2, c, 7, 5, dtype, False)
    fused = _transfer_outputs(u, f, [m.to(dtype) if m is not None else None for m in convs], "triton", bool(p_groups))
    eager = _transfer_outputs(u, f, convs, "torch", bool(p_groups))
    ref_convs = [copy.deepcopy(m).double() if m is not None else None for m in convs]
    reference = _transfer_outputs(u.double(), f.double(), ref_convs, "torch", bool(p_groups))
    _compare(fused, eager, reference, dtype)


def test_transfer_modules_and_launch_counts(launches):
    Pi, R = _conv(8, 8, 3, 2, 8, 1), _conv(8, 8, 3, 2, 8, 2)
    A, A_coarse, P = _conv(8, 8, 3, 1, 2, 0), _conv(8, 8, 3, 1, 2, 3), _conv(8, 8, 1, 1, 2, 4)
    for conv in (Pi, R, A, A_coarse, P):  # channels_last, as the mgiad models hold them: no relayout launches
        conv.to(memory_format=torch.channels_last)
    u, f, _ = _inputs(2, 8, 6, 6, torch.float32, True)
    with torch.no_grad():
        u_coarse, f_coarse = FASRestriction(Pi, R, backend="triton")(u, f, A, A_coarse)
        assert len(launches) == 4  # A + residual, Pi, A_coarse, R + sum
        corrected = ProlongationCorrection(P, backend="triton")(u_coarse, f_coarse)
        assert len(launches) == 5
    expect_coarse = nn.functional.conv2d(u, Pi.weight, None, 2, 1, 1, 8)
    expect_f = nn.functional.conv2d(f - nn.functional.conv2d(u, A.weight, None, 1, 1, 1, 2), R.weight, None, 2, 1, 1,
                                    8) + nn.functional.conv2d(expect_coarse, A_coarse.weight, None, 1, 1, 1, 2)
    assert rel_err(u_coarse, expect_coarse) <= 2e-6
    assert rel_err(f_coarse, expect_f) <= 2e-6
    assert rel_err(corrected, u_coarse + nn.functional.conv2d(f_coarse, P.weight, None, 1, 0, 1, 2)) <= 2e-6


def test_residual_conv2d_checks_other():
    x = torch.randn(2, 8, 5, 5, device=DEVICE)
    w = torch.randn(8, 2, 3, 3, device=DEVICE)
    with pytest.raises(ValueError, match=r"other must have the convolution output's shape \(2, 8, 3, 3\)"):
        residual_conv2d(x, w, torch.zeros(2, 8, 5, 5, device=DEVICE), stride=2, padding=1, groups=4)
    with pytest.raises(ValueError, match="other must match input's dtype"):
        residual_conv2d(x, w, torch.zeros(2, 8, 5, 5, device=DEVICE, dtype=torch.float16), padding=1, groups=4)
    with pytest.raises(TypeError, match="other must be a tensor"):
        residual_conv2d(x, w, 1.0, padding=1, groups=4)


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.float16], ids=["fp32-inputs", "fp16-inputs"])
def test_autocast_runs_the_fused_step_in_the_autocast_dtype(input_dtype):
    """Under torch.autocast the convolutions and the step compute in the autocast dtype (fp16 here, the
    interpreter cannot do bf16); BatchNorm statistics and every parameter's gradient stay fp32, and the
    output has the eager step's dtype (u + relu(bn2(.)) promotes to u's dtype)."""
    step = _make_step(16, 4, 3, 1, False, "triton")
    eager = copy.deepcopy(step)
    eager.backend = "torch"
    u, f, grad = _inputs(2, 16, 5, 5, input_dtype, False)
    results = []
    with torch.profiler.profile() as prof:
        for module in (step, eager):
            with torch.autocast(DEVICE.type, dtype=torch.float16):
                results.append(_run(module, u, f, grad))
    fused, expect = results
    assert fused["output"].dtype == expect["output"].dtype == input_dtype
    for name, value in expect.items():
        assert fused[name].dtype == value.dtype, name
        if not name.endswith("num_batches_tracked"):
            assert rel_err(fused[name], value) <= 1e-2, name
    assert any(e.name == "mgiad_kernels::smoothing_step" for e in prof.events()), "the fused op did not run"


# ---- exactly the eager composition: non-finite input, every derivative, modules that do not fit ------------------

@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("case", [pytest.param(c.values, id=c.id) for c in STEP_CASES
                                  if c.id in ("g4-oddHW", "depthwise", "g16-wider-than-tile-bias")])
@nonfinite_on_purpose
def test_fused_step_gives_the_eager_nonfinite_pattern(case, value, train):
    """A NaN or Inf at one pixel of u spreads exactly as in eager (through A, the batch statistics,
    ReLU, B); a diverging training is never hidden."""
    n, c, h, w, group_size, kernel, dilation, bias, channels_last = case
    step = _make_step(c, group_size, kernel, dilation, bias, "triton").train(train)
    eager = copy.deepcopy(step)
    eager.backend = "torch"
    u, f, grad = _inputs(n, c, h, w, torch.float32, channels_last)
    u = u.clone()
    u[0, 1, h // 2, w // 2] = value
    outs = []
    for module in (step, eager):
        uu, ff = u.clone().requires_grad_(), f.clone().requires_grad_()
        out = module(uu, ff)
        grads = torch.autograd.grad(out, (uu, ff), grad.nan_to_num(0.0))
        outs.append((out.detach(), *grads))
    for name, got, expect in zip(("output", "grad u", "grad f"), *outs):
        assert torch.equal(got.isnan(), expect.isnan()), f"{name}: {got.isnan().sum()} NaN vs {expect.isnan().sum()}"
        assert torch.equal(got.isinf(), expect.isinf()), name
    assert outs[1][0].isnan().any() or outs[1][0].isinf().any()


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", [pytest.param(c.values, id=c.id) for c in STEP_CASES
                                  if c.id in ("dense", "g4-oddHW")])
@nonfinite_on_purpose
def test_fused_step_gives_the_eager_pattern_of_an_infinite_batchnorm_shift(case, train):
    """bn1's bias at +inf: t = relu(bn1(r)) is +inf on the grid and 0 in B's padding. With B's weights
    positive, eager's B t is +inf at every pixel (no NaN): the prologue's padding, zeroed by a product
    with 0 (inf * 0 = NaN), must be recomputed exactly, or the border pixels would come out NaN."""
    n, c, h, w, group_size, kernel, dilation, bias, channels_last = case
    step = _make_step(c, group_size, kernel, dilation, bias, "triton").train(train)
    with torch.no_grad():
        step.bn1.bias[1] = float("inf")
        step.B.weight.abs_()
    eager = copy.deepcopy(step)
    eager.backend = "torch"
    u, f, grad = _inputs(n, c, h, w, torch.float32, channels_last)
    fused, expect = (_run(module, u, f, grad) for module in (step, eager))
    assert expect["output"].isinf().any() or train  # train: bn2's batch mean is inf, its output NaN
    for name, value in expect.items():
        if value is not None and value.is_floating_point():
            got = fused[name]
            assert torch.equal(got.isnan(), value.isnan()), f"{name}: {got.isnan().sum()} NaN vs {value.isnan().sum()}"
            assert torch.equal(got.isinf(), value.isinf()), name


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@nonfinite_on_purpose
def test_fas_transfers_give_the_eager_nonfinite_pattern(value):
    convs = [_conv(8, 8, 3, 1, 2, 0), _conv(8, 16, 3, 2, 8, 1), _conv(8, 16, 3, 2, 8, 2), _conv(16, 16, 3, 1, 4, 3),
             _conv(16, 16, 1, 1, 4, 4)]
    u, f, _ = _inputs(2, 8, 7, 5, torch.float32, False)
    u = u.clone()
    u[1, 3, 2, 2] = value
    results = []
    for backend in ("triton", "torch"):
        A, Pi, R, A_coarse, P = convs
        with torch.no_grad():
            u_c, f_c = fas_restriction(u, f, A, Pi, R, A_coarse, backend=backend)
            results.append((u_c, f_c, prolongation_correction(u_c, f_c, P, backend=backend)))
    for name, got, expect in zip(("u_coarse", "f_coarse", "corrected"), *results):
        assert torch.equal(got.isnan(), expect.isnan()) and torch.equal(got.isinf(), expect.isinf()), name


def test_fused_step_double_backward_matches_eager():
    step = _make_step(8, 4, 3, 1, True, "triton")
    eager = copy.deepcopy(step)
    eager.backend = "torch"
    u, f, grad = _inputs(2, 8, 4, 5, torch.float32, False)
    results = []
    for module in (step, eager):
        uu, ff = u.clone().requires_grad_(), f.clone().requires_grad_()
        out = module(uu, ff)
        first = torch.autograd.grad(out, (uu, module.A.weight), grad, create_graph=True)
        loss = sum(g.square().sum() for g in first)
        results.append(torch.autograd.grad(loss, (uu, ff, module.A.weight, module.B.weight, module.bn1.weight)))
    for name, got, expect in zip(("u", "f", "A", "B", "bn1.weight"), *results):
        assert rel_err(got, expect) <= 1e-4, name


@pytest.mark.parametrize("train", [True, False], ids=["train-fwAD", "eval-func.jvp"])
def test_fused_step_forward_mode_ad_matches_eager(train):
    """Tangents through the step; torch.func.jvp only in eval mode (eager BatchNorm's running-stat
    update is an in-place write functorch refuses, for eager as for us)."""
    import torch.autograd.forward_ad as fwAD

    step = _make_step(8, 4, 3, 1, False, "triton").train(train)
    eager = copy.deepcopy(step)
    eager.backend = "torch"
    u, f, _ = _inputs(2, 8, 4, 5, torch.float32, False)
    u_t, f_t, _ = _inputs(2, 8, 4, 5, torch.float32, False, seed=7)
    tangents = []
    for module in (step, eager):
        if train:
            with fwAD.dual_level():
                out = module(fwAD.make_dual(u, u_t), fwAD.make_dual(f, f_t))
                tangents.append(fwAD.unpack_dual(out).tangent)
        else:
            tangents.append(torch.func.jvp(lambda a, b: module(a, b), (u, f), (u_t, f_t))[1])
    assert tangents[0] is not None and rel_err(tangents[0], tangents[1]) <= 1e-5


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("bad,error,message", [
    ("bn1", ValueError, "bn1 must normalize channels=8, got num_features=12"),
    ("bn2", ValueError, "bn2 must normalize channels=8, got num_features=12"),
    ("half", TypeError, r"bn1.weight must be float32 or the activations' dtype torch.float32, got torch.float16"),
    ("module", TypeError, "bn2 must be an nn.BatchNorm2d, got Identity"),
])
def test_smoothing_step_refuses_batchnorms_that_do_not_fit(bad, error, message, backend):
    step = _make_step(8, 4, 3, 1, False, backend)
    bn1, bn2 = step.bn1, step.bn2
    if bad == "bn1":
        bn1 = nn.BatchNorm2d(12)
    elif bad == "bn2":
        bn2 = nn.BatchNorm2d(12).eval()
    elif bad == "half":
        bn1 = bn1.half()
    else:
        bn2 = nn.Identity()
    u, f, _ = _inputs(2, 8, 4, 4, torch.float32, False)
    with pytest.raises(error, match=message):
        smoothing_step(u, f, step.A, step.B, bn1, bn2, backend=backend)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_transfers_refuse_mismatched_shapes_on_every_backend(backend):
    A, Pi, R, A_coarse = _conv(8, 8, 3, 1, 2, 0), _conv(8, 8, 3, 2, 8, 1), _conv(8, 8, 3, 2, 8, 2), \
        _conv(8, 8, 3, 1, 2, 3)
    u, f, _ = _inputs(2, 8, 6, 6, torch.float32, False)
    with pytest.raises(ValueError, match=r"other must have the convolution output's shape \(2, 8, 6, 6\)"):
        fas_restriction(u, f[:1], A, Pi, R, A_coarse, backend=backend)
    with pytest.raises(ValueError, match="other must have the convolution output's shape"):
        prolongation_correction(u[:, :, :3, :3], u, _conv(8, 8, 1, 1, 2, 4), backend=backend)


def test_auto_backend_never_takes_the_interpreter(launches):
    """backend='auto' means Triton on CUDA tensors; the interpreter runs only when 'triton' asks for it."""
    step = _make_step(8, 4, 3, 1, False, "auto")
    u, f, _ = _inputs(2, 8, 4, 4, torch.float32, False)
    with torch.no_grad():
        step(u, f)
    assert (len(launches) > 0) == ON_GPU



@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("bn_case", ["finite", "infinite-gamma-negative-x", "nan-beta"])
@nonfinite_on_purpose
def test_grad_weight_of_a_batchnorm_relu_input_zeroes_its_padding_exactly(bn_case, dtype):
    """B's weight gradient recomputes t = relu(bn1(r)) as it loads r, and t is zero in B's padding. In
    16-bit (run here in fp16 even under the interpreter) padding is zeroed by a product with 0 where every
    channel's t = relu(bn1(0)) is finite, else selected, as in fp32: with gamma = +inf on a channel whose r
    is negative everywhere eager's gradient is finite (t = 0), and a product with 0 would give NaN.
    Against float64, with the NaN pattern."""
    from mgiad_kernels.conv.geometry import ConvGeometry

    torch.manual_seed(11)
    n, c, h, w, groups = 2, 8, 5, 6, 2
    x = torch.randn(n, c, h, w, device=DEVICE)
    mean, var = torch.randn(c, device=DEVICE) * 0.1, torch.rand(c, device=DEVICE) + 0.5
    gamma, beta = torch.randn(c, device=DEVICE), torch.randn(c, device=DEVICE)
    if bn_case == "infinite-gamma-negative-x":
        gamma[1], mean[1] = float("inf"), 0.5
        x[:, 1] = -1.0 - x[:, 1].abs()
    elif bn_case == "nan-beta":
        beta[3] = float("nan")
    eps = 1e-5
    geo = ConvGeometry.of(x.shape, (c, c // groups, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), groups)
    grad_y = torch.randn(n, c, h, w, device=DEVICE)
    x, grad_y = x.to(dtype), grad_y.to(dtype)
    grad_w, _ = conv_launch.conv2d_grad_weight(grad_y, x, geo, False,
                                             x_bn=conv_launch.BatchNormArgs(mean, var, gamma, beta, eps))
    assert grad_w.dtype == dtype
    t = torch.relu((x.double() - mean.double()[:, None, None]) / (var.double()[:, None, None] + eps).sqrt()
                   * gamma.double()[:, None, None] + beta.double()[:, None, None])
    t = t.to(dtype).double()  # t is rounded as a stored t would be
    expect = torch.nn.grad.conv2d_weight(t, (c, c // groups, 3, 3), grad_y.double(), padding=1, groups=groups)
    assert torch.equal(grad_w.isnan(), expect.isnan()), f"{grad_w.isnan().sum()} NaN vs {expect.isnan().sum()}"
    if bn_case == "infinite-gamma-negative-x":
        assert expect.isfinite().all()
    finite = expect.isfinite()
    assert rel_err(grad_w[finite], expect[finite]) < REL_TOL[dtype]
