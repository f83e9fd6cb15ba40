"""grouped_conv2d / GroupedConv2d against a float64 F.conv2d reference, forward and every gradient."""
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from support import ALL_DTYPES, DEVICE, ON_GPU, TRITON_DTYPES, assert_close_rel

from mgiad_kernels import GroupedConv2d, grouped_conv2d

# (N, C_in, C_out, H, W, kernel, stride, padding, groups, bias), named after what makes them awkward
CASES = [
    pytest.param(2, 16, 16, 7, 5, 3, 1, 1, 4, False, id="smoother3x3-g4-oddHW"),
    pytest.param(1, 32, 32, 6, 6, 3, 1, 1, 4, False, id="smoother3x3-8groups-N1"),
    pytest.param(2, 16, 16, 5, 5, 3, 1, 1, 1, True, id="dense3x3-bias"),
    pytest.param(2, 16, 16, 6, 6, 3, 1, 1, 16, False, id="depthwise3x3"),
    pytest.param(2, 8, 16, 7, 7, 3, 2, 1, 8, False, id="depthwise-stride2-multiplier2-odd"),
    pytest.param(2, 8, 8, 9, 7, 3, 2, 0, 2, True, id="stride2-pad0-odd"),
    pytest.param(2, 16, 8, 5, 6, 1, 1, 0, 4, False, id="restrict1x1-halving"),
    pytest.param(2, 8, 16, 5, 6, 1, 1, 0, 4, True, id="prolong1x1-doubling"),
    pytest.param(2, 12, 6, 5, 5, 3, 1, 1, 2, False, id="odd-group-size-3-out"),
    pytest.param(1, 48, 48, 4, 4, 3, 1, 1, 1, True, id="dense-wider-than-tile-bias"),
    pytest.param(1, 3, 8, 6, 6, 3, 1, 1, 1, True, id="stem-3-channels"),
]


def _reference(x, w, b, stride, padding, groups, grad_y):
    """float64 F.conv2d output and gradients on the CPU."""
    x64 = x.detach().double().cpu().requires_grad_()
    w64 = w.detach().double().cpu().requires_grad_()
    b64 = b.detach().double().cpu().requires_grad_() if b is not None else None
    y64 = F.conv2d(x64, w64, b64, stride, padding, 1, groups)
    y64.backward(grad_y.double().cpu())
    return y64, x64.grad, w64.grad, (b64.grad if b is not None else None)


def _run(x, w, b, stride, padding, groups, backend, grad_y=None):
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    b = b.detach().requires_grad_() if b is not None else None
    y = grouped_conv2d(x, w, b, stride=stride, padding=padding, groups=groups, backend=backend)
    grad_y = torch.randn_like(y) if grad_y is None else grad_y
    y.backward(grad_y)
    return y, x.grad, w.grad, (b.grad if b is not None else None), grad_y


def _make(n, c_in, c_out, h, w, k, groups, bias, dtype, device=DEVICE):
    x = torch.randn(n, c_in, h, w, device=device).to(dtype)
    weight = (torch.randn(c_out, c_in // groups, k, k, device=device) / (c_in // groups * k * k) ** 0.5).to(dtype)
    b = torch.randn(c_out, device=device).to(dtype) if bias else None
    return x, weight, b


def _check_against_reference(x, w, b, stride, padding, groups, backend, dtype):
    y, gx, gw, gb, grad_y = _run(x, w, b, stride, padding, groups, backend)
    ref = _reference(x, w, b, stride, padding, groups, grad_y)
    for name, out, expect in zip(("output", "grad_input", "grad_weight", "grad_bias"), (y, gx, gw, gb), ref):
        if expect is not None:
            assert out.dtype == dtype, f"{name} has dtype {out.dtype}, expected {dtype}"
            assert_close_rel(out, expect, dtype, name)
    return y, gx


@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=str)
@pytest.mark.parametrize("n,c_in,c_out,h,w,k,stride,padding,groups,bias", CASES)
def test_triton_matches_float64(n, c_in, c_out, h, w, k, stride, padding, groups, bias, dtype):
    torch.manual_seed(0)
    x, weight, b = _make(n, c_in, c_out, h, w, k, groups, bias, dtype)
    _check_against_reference(x, weight, b, stride, padding, groups, "triton", dtype)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("n,c_in,c_out,h,w,k,stride,padding,groups,bias", CASES)
def test_torch_backend_matches_float64(n, c_in, c_out, h, w, k, stride, padding, groups, bias, dtype):
    torch.manual_seed(1)
    x, weight, b = _make(n, c_in, c_out, h, w, k, groups, bias, dtype)
    tol_dtype = dtype if dtype != torch.float32 or DEVICE.type == "cuda" else torch.float32
    _check_against_reference(x, weight, b, stride, padding, groups, "torch", tol_dtype)


@pytest.mark.parametrize("layout", ["channels_last", "non_contiguous_input", "non_contiguous_weight"])
def test_triton_layouts(layout):
    torch.manual_seed(2)
    x, weight, _ = _make(2, 16, 16, 7, 6, 3, 4, False, torch.float32)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "non_contiguous_input":
        x = torch.randn(2, 7, 16, 9, device=DEVICE).permute(0, 2, 3, 1)[..., 1:7]
        assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    else:
        weight = torch.randn(16, 3, 3, 8, device=DEVICE)[:, :, :, ::2].permute(0, 3, 1, 2)[:, :4]
        assert not weight.is_contiguous()
    y, gx = _check_against_reference(x, weight, None, 1, 1, 4, "triton", torch.float32)
    expected = F.conv2d(x.detach(), weight.detach(), None, 1, 1, 1, 4)
    cl = torch.channels_last
    assert y.is_contiguous(memory_format=cl) == expected.is_contiguous(memory_format=cl)


@pytest.mark.parametrize("x_format", ["contiguous", "channels_last"])
@pytest.mark.parametrize("w_format", ["contiguous", "channels_last"])
def test_output_memory_format_follows_conv2d(x_format, w_format):
    fmt = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    x = torch.randn(2, 8, 5, 5, device=DEVICE).to(memory_format=fmt[x_format])
    w = torch.randn(8, 2, 3, 3, device=DEVICE).to(memory_format=fmt[w_format])
    expected = F.conv2d(x, w, padding=1, groups=4)
    y = grouped_conv2d(x, w, padding=1, groups=4, backend="triton")
    assert y.is_contiguous(memory_format=torch.channels_last) == expected.is_contiguous(
        memory_format=torch.channels_last)
    assert y.is_contiguous() == expected.is_contiguous()


def test_rectangular_kernel_dilation_and_string_padding():
    torch.manual_seed(3)
    x = torch.randn(2, 8, 9, 8, device=DEVICE)
    w = torch.randn(8, 4, 3, 1, device=DEVICE)
    for kwargs in [dict(padding=(2, 0), dilation=(2, 1)), dict(padding="same"), dict(padding="valid")]:
        y = grouped_conv2d(x, w, groups=2, backend="triton", **kwargs)
        assert_close_rel(y, F.conv2d(x.double(), w.double(), groups=2, **kwargs), torch.float32, str(kwargs))


def test_grad_weight_is_deterministic():
    torch.manual_seed(4)
    x, w, b = _make(4, 16, 16, 12, 12, 3, 4, True, torch.float32)
    runs = [_run(x, w, b, 1, 1, 4, "triton", grad_y=torch.ones(4, 16, 12, 12, device=DEVICE)) for _ in range(2)]
    assert torch.equal(runs[0][2], runs[1][2]) and torch.equal(runs[0][3], runs[1][3])


def test_grad_weight_splits_the_pixel_reduction():
    """Enough pixels for several splits: partial sums must add up to the full reduction."""
    torch.manual_seed(5)
    x, w, _ = _make(3, 8, 8, 20, 20, 3, 2, False, torch.float32)  # 25 boxes of 4 x 4 x 4: several splits
    _check_against_reference(x, w, None, 1, 1, 2, "triton", torch.float32)


@pytest.mark.parametrize("sizes, box", [
    ((128, 32, 32), (4, 4, 4)),  # 4x4 pixels of 4 images at every level from 4x4 up: one compiled kernel
    ((128, 4, 4), (4, 4, 4)),
    ((128, 2, 2), (16, 2, 2)),  # smaller images: more of them
    ((1, 1, 1), (64, 1, 1)),  # a pixel per image: the box spans the batch
    ((2, 1, 100), (16, 1, 4)),  # a single row
    ((3, 5, 3), (4, 4, 4)),  # odd sizes: the box's powers of two
])
def test_grad_weight_pixel_box(sizes, box):
    """grad weight reduces over (TILE_N, TILE_H, TILE_W) boxes of 64 output pixels, powers of two, the same
    at every resolution from 4x4 up (one compiled kernel per key), narrower for smaller images."""
    from mgiad_kernels.conv.tiles import grad_weight_pixel_box

    assert grad_weight_pixel_box(*sizes) == box


def test_grad_weight_with_64_bit_pixel_indices(monkeypatch):
    """The kernels' WIDE_PIXEL_INDEX branches (gather and grad weight, taken from 2^31 pixels on), forced at a
    small shape."""
    from mgiad_kernels.runtime import launch_sites
    from mgiad_kernels.conv import launch as conv_launch

    monkeypatch.setattr(conv_launch, "_PIXEL_INDEX_LIMIT", 0)
    launch_sites.clear()
    try:
        torch.manual_seed(6)
        x, w, b = _make(3, 8, 8, 20, 20, 3, 2, True, torch.float32)
        _check_against_reference(x, w, b, 1, 1, 2, "triton", torch.float32)
    finally:
        launch_sites.clear()


@pytest.mark.parametrize("wide_pixel_index", [False, True], ids=["32-bit", "64-bit"])
@pytest.mark.parametrize("n, h, w, stride, dilation", [
    pytest.param(5, 9, 11, 1, 1, id="3x3-boxes-splits-start-mid-image"),  # 2 x 3 x 3 boxes in 5 splits of 4
    pytest.param(5, 21, 10, 2, 2, id="strided-dilated-3x2-boxes"),  # 11 x 5 out: 2 x 3 x 2 boxes, 3 splits of 4
])
def test_grad_weight_splits_step_across_box_rows_and_images(monkeypatch, n, h, w, stride, dilation, wide_pixel_index):
    """With the splits a GPU gets, a split starts at any box and steps its corner along W, then H, then to
    the next images: grad weight and grad bias against float64 at every crossing."""
    from mgiad_kernels.runtime import launch_sites
    from mgiad_kernels.conv import launch as conv_launch

    monkeypatch.setattr(conv_launch, "parallel_programs_wanted", lambda device: 64)
    if wide_pixel_index:
        monkeypatch.setattr(conv_launch, "_PIXEL_INDEX_LIMIT", 0)
    launch_sites.clear()
    try:
        torch.manual_seed(7)
        x, wt, b = _make(n, 8, 8, h, w, 3, 2, True, torch.float32)
        x, wt, b = x.requires_grad_(), wt.requires_grad_(), b.requires_grad_()
        y = grouped_conv2d(x, wt, b, stride=stride, padding=2, dilation=dilation, groups=2, backend="triton")
        grad_y = torch.randn_like(y)
        y.backward(grad_y)
        ref = [t.detach().double().requires_grad_() for t in (x, wt, b)]
        y_ref = F.conv2d(*ref, stride=stride, padding=2, dilation=dilation, groups=2)
        y_ref.backward(grad_y.double())
        for name, out, expect in (("output", y, y_ref), ("grad_input", x.grad, ref[0].grad),
                                  ("grad_weight", wt.grad, ref[1].grad), ("grad_bias", b.grad, ref[2].grad)):
            assert_close_rel(out, expect, torch.float32, name)
    finally:
        launch_sites.clear()


def test_gradcheck_torch_path_float64():
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: grouped_conv2d(*t, stride=2, padding=1, groups=2, backend="torch"),
                                    (x, w, b))


def test_float64_on_triton_falls_back_with_warning(monkeypatch):
    """The kernels accumulate in fp32: float64 goes to F.conv2d rather than losing precision silently."""
    import mgiad_kernels.backend as backend_mod

    monkeypatch.setattr(backend_mod, "_warned", set())
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64, device=DEVICE)
    w = torch.randn(4, 2, 3, 3, dtype=torch.float64, device=DEVICE)
    with pytest.warns(RuntimeWarning, match="float64"):
        y = grouped_conv2d(x, w, padding=1, groups=2, backend="triton")
    assert torch.equal(y, F.conv2d(x, w, padding=1, groups=2))


def _gather_sites():
    """The constexprs of every gather launch site made since launch_sites.clear()."""
    from mgiad_kernels.runtime import launch_sites

    return [site.constexprs for site in launch_sites.SITES.values() if "WEIGHT_OUT_IS_DST" in site.constexprs]


@pytest.mark.parametrize("n,c_in,c_out,h,w,k,stride,padding,groups,bias", CASES)
def test_forward_writes_the_adjoint_weight_grad_input_reads(n, c_in, c_out, h, w, k, stride, padding, groups, bias):
    """fp32 (conv_launch.adjoint_weight_wanted): a forward whose input requires grad writes
    adjoint[g*I + i, o] = weight[g*O + o, i] (bit for bit, every element: the buffer starts as NaN), and
    grad input reads it in the weight's place, matching float64. A forward reading NCHW pixel vectors has the
    launch making the weight's band write it."""
    from mgiad_kernels.runtime import launch_sites
    from mgiad_kernels.conv import launch as conv_launch
    from mgiad_kernels.conv.ops import conv_geometry

    torch.manual_seed(5)
    x, weight, b = _make(n, c_in, c_out, h, w, k, groups, bias, torch.float32)
    geo = conv_geometry(x.shape, weight.shape, [stride] * 2, [padding] * 4, [1, 1], groups)
    adjoint = conv_launch.empty_adjoint_weight(weight, geo).fill_(float("nan"))
    conv_launch.conv2d_forward(x, weight, b, None, 1.0, geo, adjoint)
    expected = weight.view(groups, c_out // groups, c_in // groups, k, k).transpose(1, 2).reshape(adjoint.shape)
    assert torch.equal(adjoint, expected)
    assert adjoint.is_contiguous(memory_format=torch.channels_last)  # out-channels contiguous

    launch_sites.clear()
    _check_against_reference(x, weight, b, stride, padding, groups, "triton", torch.float32)
    flags = {(c["TRANSPOSED"], c["WEIGHT_OUT_IS_DST"], c["WRITE_ADJOINT_WEIGHT"] or c["PIXEL_VECTOR"] > 1)
             for c in _gather_sites()}
    assert flags == {(False, True, True), (True, True, False)}, flags
    vectors = any(c["PIXEL_VECTOR"] > 1 for c in _gather_sites())
    bands = [site.constexprs["WRITE_ADJOINT_WEIGHT"] for key, site in launch_sites.SITES.items() if key[0] == "band"]
    assert bands == ([True] if vectors else []), bands


@pytest.mark.parametrize("dtype,x_requires_grad", [(torch.float32, False), (torch.float16, True)],
                         ids=["fp32-weight-grad-only", "fp16"])
def test_no_adjoint_weight_where_grad_input_does_not_want_it(dtype, x_requires_grad):
    """No grad input (x not requiring grad), or 16-bit, whose dots transpose in shared memory: the
    forward writes nothing and grad input, if any, reads the weight itself."""
    from mgiad_kernels.runtime import launch_sites

    torch.manual_seed(6)
    x, weight, _ = _make(2, 8, 8, 5, 5, 3, 2, False, dtype)
    x.requires_grad_(x_requires_grad)
    weight.requires_grad_()
    launch_sites.clear()
    grouped_conv2d(x, weight, padding=1, groups=2, backend="triton").sum().backward()
    flags = {(c["TRANSPOSED"], c["WEIGHT_OUT_IS_DST"], c["WRITE_ADJOINT_WEIGHT"]) for c in _gather_sites()}
    assert flags == ({(False, True, False), (True, False, False)} if x_requires_grad else {(False, True, False)})


def test_triton_path_calls_no_aten_convolution():
    x, w, b = _make(2, 8, 8, 5, 5, 3, 2, True, torch.float32)
    x.requires_grad_()
    with torch.profiler.profile() as prof:
        grouped_conv2d(x, w, b, padding=1, groups=2, backend="triton").sum().backward()
    names = {e.name for e in prof.events()}
    # fp32 with x requiring grad: the forward also writes the adjoint weight grad input reads
    assert {"mgiad_kernels::conv2d_with_adjoint_weight", "mgiad_kernels::conv2d_grad_input"} <= names, names
    assert not {n for n in names if n.startswith("aten::") and "conv" in n}, names


def test_module_is_a_drop_in_for_nn_conv2d():
    torch.manual_seed(6)
    ref = torch.nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=True).to(DEVICE)
    mod = GroupedConv2d(16, 16, 3, padding=1, groups=4, bias=True, backend="triton").to(DEVICE)
    mod.load_state_dict(ref.state_dict())
    assert set(mod.state_dict()) == set(ref.state_dict())
    x = torch.randn(2, 16, 6, 6, device=DEVICE)
    assert_close_rel(mod(x), ref(x), torch.float32, "module output")
    assert "backend='triton'" in repr(mod)


def test_module_padding_mode_reflect():
    mod = GroupedConv2d(8, 8, 3, padding=1, groups=2, padding_mode="reflect", backend="triton").to(DEVICE)
    ref = torch.nn.Conv2d(8, 8, 3, padding=1, groups=2, padding_mode="reflect").to(DEVICE)
    ref.load_state_dict(mod.state_dict())
    x = torch.randn(1, 8, 5, 5, device=DEVICE)
    assert_close_rel(mod(x), ref(x), torch.float32, "reflect padding")


def test_torch_compile_traces_without_graph_breaks():
    torch.manual_seed(7)
    mod = GroupedConv2d(8, 8, 3, padding=1, groups=4, backend="triton").to(DEVICE)
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager" if not ON_GPU else "inductor")
    x = torch.randn(2, 8, 6, 6, device=DEVICE, requires_grad=True)
    y = compiled(x)
    y.square().sum().backward()
    x_ref = x.detach().requires_grad_()
    y_ref = F.conv2d(x_ref, mod.weight, mod.bias, padding=1, groups=4)
    y_ref.square().sum().backward()
    assert_close_rel(y, y_ref, torch.float32, "compiled output")
    assert_close_rel(x.grad, x_ref.grad, torch.float32, "compiled grad_input")


def test_torch_compile_with_dynamic_shapes():
    """Symbolic sizes reach the convolution's geometry (not hashable: it is built, not looked up) and stay
    symbolic: one graph serves both sizes."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch.manual_seed(8)
    mod = GroupedConv2d(8, 8, 3, padding=1, groups=2, backend="triton").to(DEVICE)
    counter = CompileCounterWithBackend("aot_eager" if not ON_GPU else "inductor")
    compiled = torch.compile(mod, fullgraph=True, dynamic=True, backend=counter)
    for hw in (5, 7):
        x = torch.randn(2, 8, hw, hw, device=DEVICE)
        assert_close_rel(compiled(x), F.conv2d(x, mod.weight, mod.bias, padding=1, groups=2), torch.float32,
                         f"compiled output at {hw}x{hw}")
    assert counter.frame_count == 1, f"{counter.frame_count} graphs: a size was specialized"


def test_triton_without_a_runner_falls_back_with_one_warning(monkeypatch):
    if ON_GPU:
        pytest.skip("the fallback is for tensors Triton cannot run on; CUDA tensors always can")
    import mgiad_kernels.backend as backend_mod

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(backend_mod, "_warned", set())
    x, w = torch.randn(1, 4, 5, 5), torch.randn(4, 1, 3, 3)
    with pytest.warns(RuntimeWarning, match="TRITON_INTERPRET"):
        y = grouped_conv2d(x, w, padding=1, groups=4, backend="triton")
    assert torch.equal(y, F.conv2d(x, w, padding=1, groups=4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grouped_conv2d(x, w, padding=1, groups=4, backend="triton")  # warned once already
        grouped_conv2d(x, w, padding=1, groups=4, backend="auto")  # auto never warns


def test_bfloat16_on_interpreter_falls_back_with_warning(monkeypatch):
    if ON_GPU:
        pytest.skip("CUDA runs bfloat16 in Triton")
    import mgiad_kernels.backend as backend_mod

    monkeypatch.setattr(backend_mod, "_warned", set())
    x, w = torch.randn(1, 4, 5, 5).bfloat16(), torch.randn(4, 1, 3, 3).bfloat16()
    with pytest.warns(RuntimeWarning, match="bfloat16"):
        y = grouped_conv2d(x, w, padding=1, groups=4, backend="triton")
    assert torch.equal(y, F.conv2d(x, w, padding=1, groups=4))


def test_import_without_triton_and_without_gpu():
    code = (
        "import sys, warnings; sys.modules['triton'] = None\n"
        "import torch, mgiad_kernels\n"
        "from mgiad_kernels.runtime.triton_support import triton_unavailable_reason\n"
        "x = torch.randn(1, 4, 5, 5); w = torch.randn(4, 1, 3, 3)\n"
        "with warnings.catch_warnings(record=True) as rec:\n"
        "    warnings.simplefilter('always')\n"
        "    y = mgiad_kernels.grouped_conv2d(x, w, padding=1, groups=4, backend='triton')\n"
        "assert torch.equal(y, torch.nn.functional.conv2d(x, w, padding=1, groups=4))\n"
        "print(len(rec), rec[0].message)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)})
    assert out.stdout.startswith("1 ") and "triton" in out.stdout, out.stdout + out.stderr


BAD_INPUTS = [
    pytest.param(dict(x=torch.randn(4, 5)), ValueError, r"input must be 3-D \(C, H, W\) or 4-D", id="input-2d"),
    pytest.param(dict(x=torch.randn(1, 1, 4, 5, 5)), ValueError, "or 4-D", id="input-5d"),
    pytest.param(dict(w=torch.randn(4, 1, 3)), ValueError, "weight must be 4-D", id="weight-3d"),
    pytest.param(dict(groups=3), ValueError, "groups=3 must divide the input channels", id="groups-not-dividing-cin"),
    pytest.param(dict(w=torch.randn(6, 1, 3, 3), groups=4), ValueError, "must divide the output channels",
                 id="groups-not-dividing-cout"),
    pytest.param(dict(w=torch.randn(4, 2, 3, 3)), ValueError, r"weight.shape\[1\] must be", id="weight-channels"),
    pytest.param(dict(w=torch.randn(4, 1, 3, 3, dtype=torch.float64)), TypeError, "weight dtype",
                 id="dtype-mismatch"),
    pytest.param(dict(b=torch.randn(5)), ValueError, "bias must have shape", id="bias-shape"),
    pytest.param(dict(stride=0), ValueError, "stride must be at least 1", id="stride-zero"),
    pytest.param(dict(padding=-1), ValueError, "padding must be at least 0", id="padding-negative"),
    pytest.param(dict(padding="full"), ValueError, "padding must be", id="padding-string"),
    pytest.param(dict(stride=(1, 2, 3)), ValueError, "stride must be an int or a sequence of 1 or 2", id="stride-triple"),
    pytest.param(dict(stride=2.0), TypeError, "stride must be an int", id="stride-float"),
    pytest.param(dict(padding=True), TypeError, "padding must be an int", id="padding-bool"),
    pytest.param(dict(dilation=0), ValueError, "dilation must be at least 1", id="dilation-zero"),
    pytest.param(dict(w=torch.randn(0, 1, 3, 3)), ValueError, "at least one output channel", id="zero-out-channels"),
    pytest.param(dict(w=torch.randn(4, 1, 0, 3)), ValueError, "kernel size must be at least 1x1", id="empty-kernel"),
    pytest.param(dict(x=torch.randn(1, 4, 0, 5)), ValueError, "empty spatial dimension", id="empty-height"),
    pytest.param(dict(padding="SAME"), ValueError, "padding must be", id="padding-string-case"),
    pytest.param(dict(b=torch.randn(4, 1)), ValueError, "bias must have shape", id="bias-2d"),
    pytest.param(dict(groups=0), ValueError, "groups must be a positive int", id="groups-zero"),
    pytest.param(dict(backend="cuda"), ValueError, "backend must be one of", id="unknown-backend"),
    pytest.param(dict(x=torch.randn(1, 4, 1, 1), padding=0), ValueError, "too small", id="input-too-small"),
]


@pytest.mark.parametrize("override,error,message", BAD_INPUTS)
def test_bad_input_gets_a_clear_error(override, error, message):
    args = dict(x=torch.randn(1, 4, 5, 5), w=torch.randn(4, 1, 3, 3), b=None, stride=1, padding=1, groups=4,
                backend="triton")
    args.update(override)
    with pytest.raises(error, match=message):
        grouped_conv2d(args["x"], args["w"], args["b"], stride=args["stride"], padding=args["padding"],
                       dilation=args.get("dilation", 1), groups=args["groups"], backend=args["backend"])


def test_device_mismatch_is_reported():
    if not ON_GPU:
        pytest.skip("needs two devices")
    with pytest.raises(ValueError, match="weight is on"):
        grouped_conv2d(torch.randn(1, 4, 5, 5, device="cuda"), torch.randn(4, 1, 3, 3), padding=1, groups=4)


def test_module_rejects_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        GroupedConv2d(4, 4, 3, backend="cudnn")


def test_demo_runs_both_backends(capsys):
    from examples.demo import main

    main(["--channels", "16", "--group-size", "4", "--size", "4", "--batch", "1"])
    out = capsys.readouterr().out
    assert "backend=torch" in out and "backend=triton" in out


def test_autocast_runs_the_triton_conv_in_the_autocast_dtype():
    x, w, b = _make(2, 8, 8, 5, 5, 3, 2, True, torch.float32)
    x.requires_grad_()
    with torch.autocast(DEVICE.type, dtype=torch.float16):
        y = grouped_conv2d(x, w, b, padding=1, groups=2, backend="triton")
        y_ref = F.conv2d(x, w, b, padding=1, groups=2)
    assert y.dtype == y_ref.dtype == torch.float16
    assert_close_rel(y, y_ref, torch.float16, "autocast output")
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32


@pytest.mark.parametrize("layout", ["OIHW", "channels_last", "channels_last-g3", "sliced-out-channels", "expanded"])
def test_weight_alignment_divides_the_strides_the_gather_rounds(layout):
    """The gather rounds the weight's out-channel and tap strides down to W_ALIGN (so the compiler sees their
    alignment): exact only if W_ALIGN divides them, for every layout a weight can come in."""
    from mgiad_kernels.conv.tiles import weight_alignment

    cl = torch.channels_last
    weights = {"OIHW": torch.empty(16, 8, 3, 3), "channels_last": torch.empty(16, 8, 3, 3).to(memory_format=cl),
               "channels_last-g3": torch.empty(12, 3, 3, 3).to(memory_format=cl),
               "sliced-out-channels": torch.empty(32, 8, 3, 3)[::2],
               "expanded": torch.empty(1, 8, 3, 3).expand(16, -1, -1, -1)}
    w = weights[layout]
    align = weight_alignment(w.stride())
    assert align in (1, 2, 4, 8, 16)
    assert all(s % align == 0 for s in (w.stride(0), w.stride(2), w.stride(3))), (w.stride(), align)
    expected = {"OIHW": 1, "channels_last": 8, "channels_last-g3": 1, "sliced-out-channels": 1, "expanded": 1}
    assert align == expected[layout]


def _every_channel_block_whole(c_dst, dst_per_group, red_per_group, block_dst, block_red):
    """What FULL_CHANNEL_BLOCKS promises, walked tile by tile as conv2d_gather_kernel walks them."""
    for c0 in range(0, c_dst, block_dst):
        if c0 + block_dst > c_dst:
            return False
        red_start = c0 // dst_per_group * red_per_group
        red_end = ((c0 + block_dst - 1) // dst_per_group + 1) * red_per_group
        if (red_end - red_start) % block_red:
            return False
    return True


@pytest.mark.parametrize("c_dst, dst_per_group, red_per_group, tiles, expected", [
    (64, 8, 8, [(32, 32)], True),  # g_s=8: a tile spans 4 whole groups
    (48, 8, 8, [(32, 32)], False),  # C not a multiple of BLOCK_DST: the last tile is partial
    (96, 24, 24, [(32, 32)], False),  # tiles straddle groups: 2 groups = 48 reduced channels
    (96, 24, 16, [(32, 32)], True),  # ... 2 groups of 16 = 32 reduced channels, every tile
    (64, 64, 64, [(32, 32)], True),  # dense
    (64, 64, 8, [(32, 32)], False),  # halving-like 1x1: 8 reduced channels per tile, BLOCK_RED 32
    (128, 8, 8, [(32, 32), (64, 16)], True),  # every config of an autotune list
    (128, 8, 8, [(32, 32), (16, 32)], False),  # ... one config with a partial reduced block
    (6, 3, 3, [(16, 16)], False),  # fewer channels than one tile
])
def test_full_channel_blocks_matches_the_kernels_tile_walk(c_dst, dst_per_group, red_per_group, tiles, expected):
    """The launcher drops the gather's channel masks only if every tile of every config it may launch is
    whole, as checked by walking the kernel's tiles."""
    from mgiad_kernels.conv.tiles import full_channel_blocks

    walked = all(_every_channel_block_whole(c_dst, dst_per_group, red_per_group, bd, br) for bd, br in tiles)
    assert walked == expected
    assert full_channel_blocks(c_dst, dst_per_group, red_per_group, tiles) == expected


def test_full_channel_blocks_agrees_with_the_tile_walk_on_every_small_shape():
    from mgiad_kernels.conv.tiles import full_channel_blocks

    for groups in (1, 2, 3, 4, 6, 8):
        for dst_per_group in (1, 2, 3, 4, 8, 12, 16, 24, 64):
            for red_per_group in (1, 4, 8, 16, 24, 32):
                for tile in ((16, 16), (32, 32), (64, 16), (32, 64)):
                    c_dst = groups * dst_per_group
                    assert full_channel_blocks(c_dst, dst_per_group, red_per_group, [tile]) == \
                        _every_channel_block_whole(c_dst, dst_per_group, red_per_group, *tile), \
                        (c_dst, dst_per_group, red_per_group, tile)


def _every_reduced_range_one_block(c_dst, dst_per_group, red_per_group, block_dst, block_red):
    """What SINGLE_RED_BLOCK promises, walked tile by tile as conv2d_gather_kernel walks them."""
    for c0 in range(0, c_dst, block_dst):
        red_start = c0 // dst_per_group * red_per_group
        red_end = ((min(c0 + block_dst, c_dst) - 1) // dst_per_group + 1) * red_per_group
        if red_end - red_start > block_red:
            return False
    return True


def test_single_reduced_block_agrees_with_the_tile_walk_on_every_small_shape():
    """The gather computes a tile's reduced-channel offsets and masks once, outside its tap loop, only if
    every tile of every config it may launch reduces over one block; the interpreter's 32x32 tile takes the
    flat (tap, block) loop for the dense 48-channel case of CASES and the single block for the others."""
    from mgiad_kernels.conv.tiles import _INTERPRETER_GATHER
    from mgiad_kernels.conv.tiles import single_reduced_block

    for groups in (1, 2, 3, 4, 6, 8):
        for dst_per_group in (1, 2, 3, 4, 8, 12, 16, 24, 64):
            for red_per_group in (1, 4, 8, 16, 24, 32):
                for tile in ((16, 16), (32, 32), (64, 16), (32, 64), (16, 32)):
                    c_dst = groups * dst_per_group
                    assert single_reduced_block(c_dst, dst_per_group, red_per_group, [tile]) == \
                        _every_reduced_range_one_block(c_dst, dst_per_group, red_per_group, *tile), \
                        (c_dst, dst_per_group, red_per_group, tile)
    assert not single_reduced_block(64, 8, 8, [(32, 32), (64, 16)])  # one config of an autotune list spills over
    interpreter_tile = [(_INTERPRETER_GATHER["BLOCK_DST"], _INTERPRETER_GATHER["BLOCK_RED"])]
    assert not single_reduced_block(48, 48, 48, interpreter_tile)  # dense-wider-than-tile-bias: the flat loop
    assert single_reduced_block(32, 4, 4, interpreter_tile)  # smoother3x3-8groups-N1: one block


def test_launch_site_caches_are_bounded_oldest_first_and_cleared_together():
    from mgiad_kernels.runtime import launch_sites

    cache = launch_sites.SiteCache()
    for key in range(launch_sites._MAX_SITES + 10):
        cache.put(key, str(key))
    assert len(cache) == launch_sites._MAX_SITES
    newest = launch_sites._MAX_SITES + 9
    assert 9 not in cache and cache[10] == "10" and cache[newest] == str(newest)
    launch_sites.clear()
    assert not cache


def _reduced_channel_range(c_dst, dst_per_group, red_per_group, c0, block_dst):
    """(first, end) of the reduced channels a tile of dst channels c0..c0+block_dst needs, by listing them."""
    groups = {c // dst_per_group for c in range(c0, min(c0 + block_dst, c_dst))}
    needed = [r for g in groups for r in range(g * red_per_group, (g + 1) * red_per_group)]
    return min(needed), max(needed) + 1


def test_channel_range_alignment_divides_every_tiles_reduced_range_and_is_the_largest():
    """The alignment the launchers hint for the reduced-channel range of a tile (gather's RED_RANGE_ALIGN,
    grad weight's IN_ALIGN) divides the start and end of the channels every tile reads, listed one by one,
    and no larger power of two (at most 16) does: 4-channel groups in 16-wide tiles load 16 at once."""
    from mgiad_kernels.conv.tiles import channel_range_alignment

    assert channel_range_alignment(128, 4, 4, [16]) == 16
    assert channel_range_alignment(128, 4, 4, [16, 32]) == 16
    assert channel_range_alignment(12, 4, 4, [16]) == 4  # the one tile ends at 12
    assert channel_range_alignment(48, 6, 6, [16]) == 2  # 16 dst channels touch groups 0-2: 0..18
    for groups in (1, 2, 3, 4, 6, 8):
        for dst_per_group in (1, 2, 3, 4, 8, 12, 16):
            for red_per_group in (1, 2, 4, 6, 8, 16, 32):
                for block_dst in (16, 32, 64):
                    c_dst = groups * dst_per_group
                    align = channel_range_alignment(c_dst, dst_per_group, red_per_group, [block_dst])
                    ends = [e for c0 in range(0, c_dst, block_dst)
                            for e in _reduced_channel_range(c_dst, dst_per_group, red_per_group, c0, block_dst)]
                    assert all(e % align == 0 for e in ends), (c_dst, dst_per_group, red_per_group, block_dst)
                    assert align == 16 or any(e % (2 * align) for e in ends), \
                        (c_dst, dst_per_group, red_per_group, block_dst, align)


@pytest.mark.parametrize("n, c, h, w, groups, whole_boxes, whole_channel_blocks", [
    pytest.param(4, 32, 8, 8, 8, True, True, id="whole-boxes-and-channel-blocks"),
    pytest.param(4, 32, 8, 8, 1, True, True, id="dense-whole"),
    pytest.param(3, 32, 8, 8, 8, False, True, id="images-past-the-last-box"),
    pytest.param(4, 32, 7, 8, 8, False, True, id="rows-past-the-last-box"),
    pytest.param(4, 24, 8, 8, 6, True, False, id="a-partial-channel-tile"),
])
def test_grad_weight_whole_boxes_and_channel_blocks_drop_their_masks(n, c, h, w, groups, whole_boxes,
                                                                      whole_channel_blocks):
    """Grad weight's FULL_BOXES (N, H_out, W_out multiples of the 4x4x4 pixel box) and FULL_CHANNEL_BLOCKS
    (whole 16- or 32-wide channel tiles) let the kernel skip the pixel and channel masks; either way it
    matches float64."""
    from mgiad_kernels.runtime import launch_sites
    from mgiad_kernels.conv import launch as conv_launch

    launch_sites.clear()
    try:
        torch.manual_seed(8)
        x, wt, b = _make(n, c, c, h, w, 3, groups, True, torch.float32)
        _check_against_reference(x, wt, b, 1, 1, groups, "triton", torch.float32)
        flags = {(site[0].constexprs["FULL_BOXES"], site[0].constexprs["FULL_CHANNEL_BLOCKS"])
                 for site in conv_launch._GRAD_WEIGHT_SITES.values()}
        assert flags == {(whole_boxes, whole_channel_blocks)}, flags
    finally:
        launch_sites.clear()


def test_the_path_from_the_module_to_its_launches_normalizes_the_geometry_once(monkeypatch):
    """GroupedConv2d.forward, forward and backward on the Triton path: the sizes are normalized by the argument
    check alone (ConvGeometry.of once); the launches of the op and of its derivatives reuse that geometry."""
    from mgiad_kernels.conv import geometry

    made = []
    original = geometry.ConvGeometry.of
    monkeypatch.setattr(geometry.ConvGeometry, "of", staticmethod(lambda *args: made.append(args) or original(*args)))
    conv = GroupedConv2d(8, 8, 3, padding=1, groups=2, backend="triton").to(DEVICE)
    x = torch.randn(2, 8, 5, 5, device=DEVICE, requires_grad=True)
    conv(x).sum().backward()
    assert len(made) == 1, made
    assert x.grad is not None and conv.weight.grad is not None
