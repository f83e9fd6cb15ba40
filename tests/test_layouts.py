"""Every layout a user holds: NCHW activations and OIHW weights are read from channels_last copies made by
relayout_kernel (``conv_launch.relaid``), outputs keep F.conv2d's memory format, and an NCHW output is stored
along its pixels (the gather's DST_PIXEL_RUN)."""
import pytest
import torch
import torch.nn.functional as F
from launch_counter import counting_launches
from support import DEVICE, assert_close_rel, nonfinite_on_purpose

from mgiad_kernels import grouped_conv2d
from mgiad_kernels.conv import launch as conv_launch
from mgiad_kernels.conv import tiles
from mgiad_kernels.runtime import launch_sites

_CL = torch.channels_last


@pytest.fixture
def fresh_sites():
    launch_sites.clear()
    yield
    launch_sites.clear()


def _tensors():
    """(name, tensor) of the layouts a copy meets: NCHW and channels_last activations, an OIHW weight, a 1x1
    image, tensors with gaps between rows, channels or images, and an odd-sized one."""
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    return [("nchw", rand(2, 12, 5, 6)), ("channels_last", rand(2, 12, 5, 6).to(memory_format=_CL)),
            ("oihw weight", rand(16, 4, 3, 3)), ("1x1 pixels", rand(3, 40, 1, 1)),
            ("rows with gaps", rand(2, 6, 5, 9)[..., 1:8]), ("channels sliced", rand(2, 20, 4, 4)[:, 3:17]),
            ("images strided", rand(4, 8, 3, 5)[::2]), ("odd sizes", rand(1, 3, 7, 3))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name, t", _tensors(), ids=[name for name, _ in _tensors()])
def test_relaid_copies_every_element_into_the_memory_format(name, t, dtype, fresh_sites):
    t = t.to(device=DEVICE, dtype=dtype)
    t[0, 0, 0, 0] = float("nan")  # copied, not computed
    for memory_format in (_CL, torch.contiguous_format):
        out = conv_launch.relaid(t, memory_format)
        assert out.is_contiguous(memory_format=memory_format) and out.dtype == dtype and out.shape == t.shape
        assert torch.equal(out.nan_to_num(), t.nan_to_num()) and out[0, 0, 0, 0].isnan()


def test_an_empty_tensor_is_relaid_without_a_launch(fresh_sites):
    with counting_launches() as launched:
        out = conv_launch.relaid(torch.empty(0, 8, 4, 4, device=DEVICE), _CL)
    assert launched == [] and out.shape == (0, 8, 4, 4)


def test_only_strided_channels_are_copied():
    assert conv_launch.channels_strided(torch.empty(2, 8, 4, 4))
    assert conv_launch.channels_strided(torch.empty(16, 4, 3, 3))  # OIHW, in-channels 9 apart
    assert not conv_launch.channels_strided(torch.empty(2, 8, 4, 4).to(memory_format=_CL))
    assert not conv_launch.channels_strided(torch.empty(16, 4, 1, 1))  # a 1x1 weight: in-channels contiguous
    assert not conv_launch.channels_strided(torch.empty(16, 1, 3, 3))  # depthwise: one in-channel
    t = torch.empty(2, 8, 4, 4).to(memory_format=_CL)
    assert conv_launch.with_contiguous_channels(t) is t


def _gather_sites():
    return [(key, site) for key, site in launch_sites.SITES.items() if key[0] == "gather"]


@pytest.mark.parametrize("x_cl, w_cl", [(False, False), (False, True), (True, False), (True, True)],
                         ids=["nchw-oihw", "nchw-channels_last", "channels_last-oihw", "channels_last-channels_last"])
def test_a_convolution_reads_channels_last_copies_in_every_layout(x_cl, w_cl, fresh_sites):
    """Forward and backward launch the gathers and the grad weight of the channels_last layout, after one copy per
    tensor with strided channels (x, the OIHW weight; grad_y once for both gradients, x again for grad weight),
    and give F.conv2d's values, output and gradient layouts."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8, 6, device=DEVICE)
    w = torch.randn(16, 4, 3, 3, device=DEVICE)
    x, w = (t.to(memory_format=_CL) if cl else t for t, cl in ((x, x_cl), (w, w_cl)))
    x.requires_grad_()
    w.requires_grad_()
    with counting_launches() as launched:
        y = grouped_conv2d(x, w, padding=1, groups=4, backend="triton")
        forward = list(launched)
        gy = torch.randn_like(y)
        gx, gw = torch.autograd.grad(y, (x, w), gy)
    backward = launched[len(forward):]
    assert forward == ["relayout_kernel"] * ((not x_cl) + (not w_cl)) + ["conv2d_gather_kernel"], forward
    # fp32: grad input reads the adjoint weight the forward wrote, so the weight is not copied again
    relaid_gy = not (x_cl or w_cl)  # grad_y is NCHW where y is: F.conv2d's rule
    assert backward.count("relayout_kernel") == relaid_gy + (not x_cl), backward
    assert sorted(set(backward) - {"relayout_kernel"}) == ["conv2d_gather_kernel", "conv2d_grad_weight_kernel"]
    for key, _ in _gather_sites():
        src_strides = key[2]
        assert src_strides[1] == 1, key  # every gather reads channel-contiguous src
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = F.conv2d(xd, wd, padding=1, groups=4)
    rgx, rgw = torch.autograd.grad(ref, (xd, wd), gy.double())
    assert_close_rel(y, ref, torch.float32, "y")
    assert_close_rel(gx, rgx, torch.float32, "grad x")
    assert_close_rel(gw, rgw, torch.float32, "grad w")
    expect = F.conv2d(x.detach(), w.detach(), padding=1, groups=4)
    assert y.stride() == expect.stride() and gx.stride() == x.stride() and gw.stride() == w.stride()


@pytest.mark.parametrize("hw, run", [((8, 6), 16), ((4, 6), 8), ((5, 5), 1), ((1, 1), 1)])
def test_an_nchw_output_is_stored_along_its_pixels_in_runs_dividing_its_image(hw, run, fresh_sites):
    torch.manual_seed(0)
    x, w = torch.randn(2, 8, *hw, device=DEVICE), torch.randn(8, 2, 3, 3, device=DEVICE)
    y = grouped_conv2d(x, w, padding=1, groups=4, backend="triton")
    assert y.is_contiguous()
    (_, site), = _gather_sites()
    assert site.constexprs["DST_PIXEL_RUN"] == run == tiles.pixel_run(y.shape, y.stride())
    assert_close_rel(y, F.conv2d(x.double(), w.double(), padding=1, groups=4), torch.float32, "y")


def test_pixel_runs_are_promised_for_nchw_pixels_only():
    assert tiles.pixel_run((2, 8, 8, 8), (512, 64, 8, 1)) == 16
    assert tiles.pixel_run((2, 8, 2, 6), (96, 12, 6, 1)) == 4
    assert tiles.pixel_run((2, 8, 8, 8), (512, 1, 64, 8)) == 1  # channels_last
    assert tiles.pixel_run((2, 8, 8, 8), (1024, 128, 16, 1)) == 1  # rows with gaps
    assert tiles.pixel_run((2, 8, 8, 8), (1024, 128, 16, 2)) == 1  # pixels not unit-strided


_VECTOR_CASES = {  # name: (x shape, weight shape, conv args); every W a multiple of the pixel vector (4)
    "3x3, groups 4": ((2, 16, 6, 8), (16, 4, 3, 3), dict(padding=1, groups=4)),
    "3x3, depthwise, stride 2 down the columns": ((2, 8, 7, 8), (8, 1, 3, 3), dict(padding=1, stride=(2, 1),
                                                                                   groups=8)),
    "5x5, dilated rows, padding only left-right": ((1, 8, 9, 12), (8, 4, 5, 5), dict(padding=(0, 2),
                                                                                    dilation=(2, 1), groups=2)),
    "1x1, groups 2": ((2, 8, 3, 4), (6, 4, 1, 1), dict(groups=2)),
    "3x3, 4 groups of 16 in-channels: several reduced blocks": ((1, 64, 4, 4), (16, 16, 3, 3),
                                                                 dict(padding=1, groups=4)),
    "3x1 taps, wider output": ((2, 8, 4, 8), (8, 2, 3, 1), dict(padding=(1, 0), groups=4)),
}


@pytest.mark.parametrize("name", list(_VECTOR_CASES))
@pytest.mark.parametrize("w_cl", [False, True], ids=["oihw", "channels_last-weight"])
@nonfinite_on_purpose
def test_an_nchw_forward_reads_pixel_vectors_against_the_weights_band(name, w_cl, fresh_sites):
    """Where the rows of an NCHW x hold whole pixel vectors (W a multiple of tiles.PIXEL_VECTOR, stride and
    dilation 1 along them), the forward reads x as it is, in aligned vectors, against the weight's band made in a
    launch of its own (which also writes fp32's adjoint weight): no copy of x or of the weight. Values, NaN/Inf
    pattern, output layout and every gradient are F.conv2d's."""
    x_shape, w_shape, args = _VECTOR_CASES[name]
    torch.manual_seed(0)
    x, w, b = torch.randn(x_shape, device=DEVICE), torch.randn(w_shape, device=DEVICE), torch.randn(w_shape[0])
    x[0, 0, 1, 1], x[-1, -1, 0, -1] = float("nan"), float("inf")  # a pixel each: their taps' outputs alone
    if w_cl:
        w = w.to(memory_format=_CL)
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    with counting_launches() as launched:
        y = grouped_conv2d(x, w, b, backend="triton", **args)
    assert launched == ["banded_weight_kernel", "conv2d_gather_kernel"], launched
    (_, site), = _gather_sites()
    assert site.constexprs["PIXEL_VECTOR"] == tiles.PIXEL_VECTOR
    assert site.constexprs["SINGLE_RED_BLOCK"] == ("several" not in name)
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = F.conv2d(xd, wd, bd, **args)
    assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y.isinf(), ref.isinf())
    finite = ref.isfinite()
    assert_close_rel(y[finite], ref[finite], torch.float32, "y")
    assert y.stride() == F.conv2d(x.detach(), w.detach(), b.detach(), **args).stride()
    gy = torch.randn_like(ref).masked_fill(~finite, 0)
    grads = torch.autograd.grad(y, (x, w, b), gy.float())
    want = torch.autograd.grad(ref, (xd, wd, bd), gy)
    for got, expect, what in zip(grads, want, ("grad x", "grad w", "grad b")):
        assert torch.equal(got.isnan(), expect.isnan()), what
        keep = expect.isfinite()
        assert_close_rel(got[keep], expect[keep], torch.float32, what)


def test_a_residual_forward_in_pixel_vectors_adds_other_along_its_pixels(fresh_sites):
    """other - conv (the FAS residual) with every tensor NCHW: pixel vectors in, NCHW other and dst along their
    pixels."""
    from mgiad_kernels.conv.functional import residual_conv2d

    torch.manual_seed(0)
    x, w, other = torch.randn(2, 8, 4, 8), torch.randn(8, 2, 3, 3), torch.randn(2, 8, 4, 8)
    y = residual_conv2d(x, w, other, padding=1, groups=4, subtract=True, backend="triton")
    (_, site), = _gather_sites()
    assert (site.constexprs["PIXEL_VECTOR"], site.constexprs["OTHER_PIXEL_RUN"], site.constexprs["DST_PIXEL_RUN"]) \
        == (tiles.PIXEL_VECTOR, 16, 16)
    ref = other.double() - F.conv2d(x.double(), w.double(), padding=1, groups=4)
    assert_close_rel(y, ref, torch.float32, "other - conv")


def test_pixel_vectors_need_whole_aligned_vectors_in_unit_steps_and_small_groups():
    vector = tiles.PIXEL_VECTOR
    nchw = lambda *shape: (shape, torch.empty(shape).stride())  # noqa: E731
    assert tiles.pixel_vector(*nchw(2, 8, 5, 8), (2, 8, 5, 8), 4, 1, 1, 8) == vector
    assert tiles.pixel_vector(*nchw(2, 8, 5, 8), (2, 8, 5, 8), 2, 1, 1, 8) == vector  # 16-bit: 8 bytes
    assert tiles.pixel_vector(*nchw(2, 8, 5, 8), (2, 8, 5, 8), 4, 1, 1, tiles.VECTOR_MAX_GROUP) == vector
    assert tiles.pixel_vector(*nchw(2, 64, 5, 8), (2, 64, 5, 8), 4, 1, 1, 32) == 1  # the band outgrows its gain
    assert tiles.pixel_vector(*nchw(2, 8, 5, 6), (2, 8, 5, 6), 4, 1, 1, 8) == 1  # rows of 6
    assert tiles.pixel_vector(*nchw(2, 8, 5, 8), (2, 8, 3, 4), 4, 2, 1, 8) == 1  # strided along the rows
    assert tiles.pixel_vector(*nchw(2, 8, 5, 8), (2, 8, 5, 6), 4, 1, 2, 8) == 1  # dilated along the rows
    assert tiles.pixel_vector(*nchw(2, 8, 5, 8), (2, 8, 5, 6), 4, 1, 1, 8) == 1  # output rows of 6
    cl = torch.empty(2, 8, 5, 8).to(memory_format=_CL)
    assert tiles.pixel_vector(cl.shape, cl.stride(), cl.shape, 4, 1, 1, 8) == 1  # channels contiguous already
    gaps = torch.empty(2, 8, 5, 12)[..., :8]
    assert tiles.pixel_vector(gaps.shape, gaps.stride(), gaps.shape, 4, 1, 1, 8) == 1  # rows with gaps
    assert tiles.pixel_vector(*nchw(2, 8, 5, 8), (2, 8, 5, 8), 8, 1, 1, 8) == 1  # fp64: no Triton kernel
    assert tiles.vector_offsets(3, 1, 4) == (-1, 3) and tiles.vector_offsets(1, 0, 4) == (0, 1)
    assert tiles.vector_offsets(7, 3, 4) == (-1, 3)


@pytest.mark.parametrize("u_cl, w_cl", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["nchw-oihw", "channels_last-oihw", "nchw-channels_last", "channels_last-channels_last"])
def test_the_fused_steps_fake_outputs_have_the_real_ones_strides(u_cl, w_cl, fresh_sites):
    """torch.compile (Inductor checks custom ops' output strides) sees the smoothing step's outputs through its
    fake implementation: out in F.conv2d's memory format, r, s, t in the intermediates' (channels_last where u or
    the weights are re-laid), the adjoint weights channels_last, in every layout."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    torch.manual_seed(0)
    u, f = (torch.randn(2, 8, 4, 4, device=DEVICE) for _ in range(2))
    weights = [torch.randn(8, 2, 3, 3, device=DEVICE) for _ in range(2)]
    u = u.to(memory_format=_CL) if u_cl else u
    weights = [w.to(memory_format=_CL) for w in weights] if w_cl else weights
    vec = lambda fill: torch.full((8,), fill, device=DEVICE)  # noqa: E731
    batches = torch.zeros((), dtype=torch.int64, device=DEVICE)
    for dtype in (torch.float32, torch.float16):  # 16-bit keeps t, fp32 the adjoint weights
        args = [u.to(dtype), f.to(dtype), weights[0].to(dtype), None, weights[1].to(dtype), None, vec(1.0), vec(0.0),
                vec(1.0), vec(0.0), vec(0.0), vec(1.0), vec(0.0), vec(1.0), batches.clone(), batches.clone(),
                [1, 1, 1, 1, 4], [1, 1, 1, 1, 4], 1e-5, 1e-5, True, 0.1, True]
        real = torch.ops.mgiad_kernels.smoothing_step(*[a.clone() if torch.is_tensor(a) else a for a in args])
        with FakeTensorMode() as mode:
            fake = torch.ops.mgiad_kernels.smoothing_step(
                *[mode.from_tensor(a) if torch.is_tensor(a) else a for a in args])
        for name, got, want in zip(("out", "r", "s", "stats", "t", "adjoint a", "adjoint b"), fake, real):
            assert (tuple(got.shape), got.stride()) == (tuple(want.shape), want.stride()), (dtype, name)
