"""grouped_conv2d is F.conv2d over F.conv2d's whole argument space, in every derivative.

A generated grid: one base convolution varied along each axis of the argument space (input
rank, every padding form, strides, dilations, groups from 1 to C, channel multipliers,
non-contiguous / expanded / channels_last input, weight and bias, zero-size dimensions) on
the Triton path, against float64 F.conv2d: the output, every gradient, forward-mode AD
(torch.func.jvp) and double backward, and the exact pattern of NaN and Inf outputs.
"""
import itertools

import pytest
import torch
import torch.nn.functional as F
from support import DEVICE, REL_TOL, TRITON_DTYPES, nonfinite_on_purpose

from mgiad_kernels import grouped_conv2d

BASE = dict(n=2, c_in=8, c_out=8, h=6, w=5, k=(3, 3), stride=1, padding=1, dilation=1, groups=4, bias=True,
            unbatched=False, x_layout="contiguous", w_layout="contiguous", b_layout="contiguous")

VARIATIONS = {
    "unbatched": dict(unbatched=True),
    "N1": dict(n=1),
    "pad-pair": dict(padding=(2, 0)),
    "pad-1-tuple": dict(padding=(1,)),
    "pad-valid": dict(padding="valid"),
    "pad-same-odd": dict(padding="same"),
    "pad-same-even-kernel": dict(padding="same", k=(2, 4)),
    "pad-same-dilated-even": dict(padding="same", k=(2, 3), dilation=(3, 1)),
    "pad-large": dict(padding=3),
    "stride2": dict(stride=2),
    "stride-1x2": dict(stride=(1, 2)),
    "stride3-pad0": dict(stride=3, padding=0),
    "dilation2": dict(dilation=2, padding=2),
    "dilation-2x1": dict(dilation=(2, 1), padding=(2, 1)),
    "kernel1x1-halving": dict(k=(1, 1), padding=0, c_out=4),
    "kernel5x5": dict(k=(5, 5), padding=2, h=7, w=7),
    "kernel-1x3": dict(k=(1, 3), padding=(0, 1)),
    "dense": dict(groups=1),
    "depthwise": dict(groups=8),
    "depthwise-multiplier2-stride2": dict(groups=8, c_out=16, stride=2),
    "groups2-out12": dict(groups=2, c_out=12),
    "group-size-3": dict(c_in=9, c_out=6, groups=3),
    "odd-channels-dense": dict(c_in=3, c_out=5, groups=1),
    "no-bias": dict(bias=False),
    "x-channels_last": dict(x_layout="channels_last"),
    "w-channels_last": dict(w_layout="channels_last"),
    "x-and-w-channels_last": dict(x_layout="channels_last", w_layout="channels_last"),  # with the base: all 4 pairs
    "depthwise-stride2-x-and-w-channels_last": dict(groups=8, stride=2, x_layout="channels_last",
                                                    w_layout="channels_last"),
    "x-sliced": dict(x_layout="sliced"),
    "x-expanded": dict(x_layout="expanded"),
    "w-transposed-storage": dict(w_layout="sliced"),
    "bias-strided": dict(b_layout="sliced"),
    "unbatched-channels_last-weight": dict(unbatched=True, w_layout="channels_last"),
    "zero-batch": dict(n=0),
    "zero-batch-dense": dict(n=0, groups=1),
    "stride2-odd-no-bias-dilated": dict(stride=2, dilation=2, padding=1, h=9, w=8, bias=False),
}
CASES = [pytest.param({**BASE, **v}, id=k) for k, v in VARIATIONS.items()]


def _leaves(case, dtype, seed=0):
    """Leaf tensors (what gradients are taken of) for x, weight and bias, in float64 on the CPU."""
    g = torch.Generator().manual_seed(seed)
    kh, kw = case["k"]
    x_shape = (case["n"], case["c_in"], case["h"], case["w"])
    if case["x_layout"] == "expanded":
        x_shape = (1, case["c_in"], 1, case["w"])
    x = torch.randn(x_shape, generator=g, dtype=torch.float64)
    w = torch.randn(case["c_out"], case["c_in"] // case["groups"], kh, kw, generator=g, dtype=torch.float64)
    w = w / (w[0].numel() ** 0.5)
    b = torch.randn(case["c_out"], generator=g, dtype=torch.float64) if case["bias"] else None
    return x, w, b


def _views(case, x, w, b):
    """The tensors as the case hands them to the convolution: layouts, slices, expansion, rank."""
    n, c, h, wd = case["n"], case["c_in"], case["h"], case["w"]
    if case["x_layout"] == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif case["x_layout"] == "sliced":  # every other column of a wider, channels-innermost buffer
        x = torch.cat([x, x], dim=3).permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)[..., ::2]
    elif case["x_layout"] == "expanded":
        x = x.expand(n, c, h, wd)
    if case["w_layout"] == "channels_last":
        w = w.contiguous(memory_format=torch.channels_last)
    elif case["w_layout"] == "sliced":
        w = w.transpose(2, 3).contiguous().transpose(2, 3)
    if b is not None and case["b_layout"] == "sliced":
        b = torch.stack([b, b], dim=1)[:, 0]
    if case["unbatched"]:
        x = x[0]
    return x, w, b


def _conv(case, backend):
    def fn(x, w, b):
        x, w, b = _views(case, x, w, b)
        kwargs = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
                      groups=case["groups"])
        if backend == "reference":
            return F.conv2d(x, w, b, **kwargs)
        return grouped_conv2d(x, w, b, backend=backend, **kwargs)
    return fn


def _rel(out, ref):
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != {tuple(ref.shape)}"
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _inputs(case, dtype):
    leaves = _leaves(case, dtype)
    return [t.to(DEVICE, dtype) if t is not None else None for t in leaves], leaves


def _differentiable(tensors):
    return [t.detach().requires_grad_() if t is not None else None for t in tensors]


@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES)
def test_values_gradients_and_layout(case, dtype):
    (x, w, b), ref_leaves = _inputs(case, dtype)
    y = _conv(case, "triton")(*(args := _differentiable((x, w, b))))
    ref_args = _differentiable(ref_leaves)
    y_ref = _conv(case, "reference")(*ref_args)
    assert y.shape == y_ref.shape and y.dtype == dtype
    if y.dim() == 4:
        cl = torch.channels_last
        expect = _conv(case, "reference")(*(t.detach().to(dtype) if t is not None else None for t in ref_leaves))
        assert y.is_contiguous(memory_format=cl) == expect.is_contiguous(memory_format=cl)
    assert _rel(y, y_ref) <= REL_TOL[dtype] or y.numel() == 0
    grad_y = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    wanted = [t for t in args if t is not None]
    grads = torch.autograd.grad(y, wanted, grad_y.to(DEVICE, dtype))
    grads_ref = torch.autograd.grad(y_ref, [t for t in ref_args if t is not None], grad_y)
    for name, got, expect in zip(("input", "weight", "bias"), grads, grads_ref):
        assert got.dtype == dtype, f"grad {name} has dtype {got.dtype}"
        if expect.count_nonzero() == 0:
            assert got.shape == expect.shape and got.count_nonzero() == 0, f"grad {name} should be exactly zero"
        else:
            assert _rel(got, expect) <= REL_TOL[dtype], f"grad {name}: {_rel(got, expect):.2e}"


@pytest.mark.parametrize("case", [c for c in CASES if c.values[0]["n"] > 0])
def test_forward_mode_ad(case):
    (x, w, b), ref_leaves = _inputs(case, torch.float32)
    g = torch.Generator().manual_seed(2)
    tangents64 = [torch.randn(t.shape, generator=g, dtype=torch.float64) if t is not None else None
                  for t in ref_leaves]
    primals = [t for t in (x, w, b) if t is not None]
    tangents = [t.to(DEVICE, torch.float32) for t in tangents64 if t is not None]
    fn = _conv(case, "triton")
    ref = _conv(case, "reference")
    has_bias = b is not None
    _, jvp = torch.func.jvp(lambda *t: fn(t[0], t[1], t[2] if has_bias else None), tuple(primals), tuple(tangents))
    _, jvp_ref = torch.func.jvp(lambda *t: ref(t[0], t[1], t[2] if has_bias else None),
                                tuple(t for t in ref_leaves if t is not None), tuple(t for t in tangents64 if t is not None))
    assert _rel(jvp, jvp_ref) <= REL_TOL[torch.float32]


@pytest.mark.parametrize("case", [c for c in CASES if c.values[0]["n"] > 0])
def test_double_backward(case):
    """d/d(x, w, grad_y) of |grad_x|^2 + |grad_w|^2 + |grad_b|^2: every second derivative."""
    (x, w, b), ref_leaves = _inputs(case, torch.float32)
    results = []
    for fn, leaves in ((_conv(case, "triton"), (x, w, b)), (_conv(case, "reference"), ref_leaves)):
        args = _differentiable(leaves)
        y = fn(*args)
        grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        grad_y = grad_y.to(y.device, y.dtype).requires_grad_()
        wanted = [t for t in args if t is not None]
        first = torch.autograd.grad(y, wanted, grad_y, create_graph=True)
        loss = sum(g.square().sum() for g in first)
        results.append(torch.autograd.grad(loss, [*args[:2], grad_y], allow_unused=True))
    for name, got, expect in zip(("input", "weight", "grad_output"), *results):
        assert (got is None) == (expect is None), name
        if expect is not None:
            assert _rel(got, expect) <= 1e-4, f"second derivative wrt {name}: {_rel(got, expect):.2e}"


NONFINITE_CASES = ["N1", "depthwise", "dense", "groups2-out12", "stride2", "group-size-3", "x-channels_last",
                   "depthwise-multiplier2-stride2", "kernel1x1-halving", "pad-same-even-kernel"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("case", [c for c in CASES if c.id in NONFINITE_CASES])
@nonfinite_on_purpose
def test_nonfinite_pattern_matches(case, value):
    """A NaN or Inf in one input channel reaches exactly the outputs F.conv2d's reach (its group only),
    forward and in grad input (a non-finite grad_y)."""
    (x, w, b), ref_leaves = _inputs(case, torch.float32)
    x = x.clone()
    channel = x.shape[1] - 2
    for pos in itertools.islice(itertools.product(range(x.shape[2]), range(x.shape[3])), 0, None, 7):
        x[0, channel, pos[0], pos[1]] = value
    x64 = x.double().cpu()
    y = _conv(case, "triton")(x, w, b)
    y_ref = _conv(case, "reference")(x64, *ref_leaves[1:])
    for what in ("isnan", "isinf"):
        assert torch.equal(getattr(y, what)().cpu(), getattr(y_ref, what)()), f"forward {what} pattern differs"
    finite = torch.isfinite(y_ref)
    assert _rel(y.cpu()[finite], y_ref[finite]) <= REL_TOL[torch.float32]

    args = _differentiable((x.nan_to_num(0.0), w, b))
    y = _conv(case, "triton")(*args)
    ref_args = _differentiable((x64.nan_to_num(0.0), *ref_leaves[1:]))
    y_ref = _conv(case, "reference")(*ref_args)
    grad_y = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    grad_y.view(-1)[:: max(1, grad_y.numel() // 3)] = value
    gx = torch.autograd.grad(y, args[0], grad_y.to(DEVICE, torch.float32))[0]
    gx_ref = torch.autograd.grad(y_ref, ref_args[0], grad_y)[0]
    for what in ("isnan", "isinf"):
        assert torch.equal(getattr(gx, what)().cpu(), getattr(gx_ref, what)()), f"grad input {what} pattern differs"


def test_zero_input_channels_follow_conv2d():
    x = torch.randn(2, 0, 5, 5, device=DEVICE, requires_grad=True)
    w = torch.randn(4, 0, 3, 3, device=DEVICE, requires_grad=True)
    b = torch.randn(4, device=DEVICE, requires_grad=True)
    y = grouped_conv2d(x, w, b, padding=1, backend="triton")
    y_ref = F.conv2d(x, w, b, padding=1)
    assert y.shape == y_ref.shape
    y.sum().backward()
    assert torch.equal(b.grad, torch.zeros_like(b)) and w.grad.shape == w.shape


def test_zero_output_channels_are_refused():
    with pytest.raises(ValueError, match="weight must have at least one output channel"):
        grouped_conv2d(torch.randn(2, 4, 5, 5), torch.randn(0, 4, 3, 3), backend="triton")


@pytest.mark.parametrize("stride", [torch.tensor(2), 2, (2,), [2, 2]], ids=["0d-tensor", "int", "1-tuple", "list"])
def test_int_likes_are_accepted_like_conv2d(stride):
    import numpy as np

    x, w = torch.randn(1, 4, 6, 6, device=DEVICE), torch.randn(4, 2, 3, 3, device=DEVICE)
    y = grouped_conv2d(x, w, stride=stride, padding=np.int64(1), groups=torch.tensor(2), backend="triton")
    assert _rel(y, F.conv2d(x.double(), w.double(), stride=2, padding=1, groups=2)) <= REL_TOL[torch.float32]


@pytest.mark.parametrize("dtype", [torch.int64, torch.complex64], ids=str)
def test_dtypes_the_kernels_do_not_compute_in_run_conv2d(dtype, monkeypatch):
    import mgiad_kernels.backend as backend_mod

    monkeypatch.setattr(backend_mod, "_warned", set())
    x = torch.ones(1, 2, 4, 4, dtype=dtype)
    w = torch.ones(2, 1, 3, 3, dtype=dtype)
    with pytest.warns(RuntimeWarning, match="falls back"):
        y = grouped_conv2d(x, w, padding=1, groups=2, backend="triton")
    assert torch.equal(y, F.conv2d(x, w, padding=1, groups=2))
