"""Every layout a user holds: NCHW activations and OIHW weights are read from channels_last copies made by
relayout_kernel (``conv_launch.relaid``), outputs keep F.conv2d's memory format, and an NCHW output is stored
along its pixels (the gather's DST_PIXEL_RUN)."""
import pytest
import torch
import torch.nn.functional as F
from launch_counter import counting_launches
from support import DEVICE, assert_close_rel

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
