"""MGIAD_KERNELS_CHECK_PROMISES=1 (conftest sets it for the test suite): every launch checks the alignment and
contiguity promises its launcher makes to the kernel (``launch_sites.check_promises``) and a broken one raises
naming the kernel, the site and the promise; with the switch off no check runs and warm launches are generated.

In this process (the interpreter) the launchers' promises; in subprocesses on the stand-in sm_90 driver (the
real compiled launch path) the pointers' specialization, and the switch off."""
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from launch_counter import counting_launches
from support import DEVICE, assert_close_rel
from torch import nn

from mgiad_kernels import SmoothingStep, grouped_conv2d
from mgiad_kernels.conv import launch as conv_launch
from mgiad_kernels.runtime import launch_sites
from mgiad_kernels.runtime.triton_support import promises_checked

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CHECKED = pytest.mark.skipif(not promises_checked(), reason="MGIAD_KERNELS_CHECK_PROMISES is set, but not to 1")
_STANDIN = pytest.mark.skipif(importlib.util.find_spec("triton.backends.nvidia") is None or torch.cuda.is_available(),
                              reason="the stand-in driver needs triton's NVIDIA backend and no GPU visible")


@pytest.fixture
def fresh_sites():
    """No launch site made before the test is reused by it, none it made (some broken on purpose) outlives it."""
    launch_sites.clear()
    yield
    launch_sites.clear()


# name: (x's shape, its memory format, the weight's shape, groups, stride, the weight not contiguous)
_CONVS = {
    "nchw, groups 4": ((2, 8, 7, 5), torch.contiguous_format, (8, 2, 3, 3), 4, 1, False),
    "channels_last, groups 8, odd sizes, stride 2": ((3, 16, 9, 5), torch.channels_last, (24, 2, 3, 3), 8, 2, False),
    "non-contiguous weight, groups 4": ((2, 8, 5, 7), torch.channels_last, (12, 2, 3, 3), 4, 1, True),
}


def _conv_case(name: str):
    x_shape, memory_format, w_shape, groups, stride, sliced = _CONVS[name]
    torch.manual_seed(0)
    x = torch.randn(x_shape, device=DEVICE).to(memory_format=memory_format).requires_grad_()
    if sliced:  # the in-channels of a channels_last weight with one more: no standard layout, odd strides
        wider = torch.randn(w_shape[0], w_shape[1] + 1, *w_shape[2:], device=DEVICE)
        w = wider.to(memory_format=torch.channels_last)[:, :w_shape[1]].requires_grad_()
        assert not w.is_contiguous() and not w.is_contiguous(memory_format=torch.channels_last)
    else:
        w = torch.randn(w_shape, device=DEVICE).requires_grad_()
    b = torch.randn(w_shape[0], device=DEVICE, requires_grad=True)
    return x, w, b, dict(stride=stride, padding=1, groups=groups)


@_CHECKED
@pytest.mark.parametrize("name", list(_CONVS))
def test_every_launch_of_a_conv_forward_and_backward_checks_its_promises(name, fresh_sites):
    x, w, b, args = _conv_case(name)
    before = launch_sites.checks_made()
    with counting_launches() as launched:
        y = grouped_conv2d(x, w, b, backend="triton", **args)
        y.square().sum().backward()
    assert len(launched) >= 3 and launch_sites.checks_made() - before == len(launched), launched
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = F.conv2d(xd, wd, bd, **args)
    ref.square().sum().backward()
    assert_close_rel(y, ref, torch.float32, f"{name}: y")
    for got, want, what in ((x.grad, xd.grad, "grad x"), (w.grad, wd.grad, "grad w"), (b.grad, bd.grad, "grad b")):
        assert_close_rel(got, want, torch.float32, f"{name}: {what}")


def _training_step(memory_format, c: int = 16, groups: int = 4):
    torch.manual_seed(0)
    convs = [nn.Conv2d(c, c, 3, padding=1, groups=groups, bias=False) for _ in range(2)]
    step = SmoothingStep(*convs, c, backend="triton").to(DEVICE).train()
    u, f = (torch.randn(2, c, 5, 3, device=DEVICE).to(memory_format=memory_format) for _ in range(2))
    return step, u.requires_grad_(), f.requires_grad_()


@_CHECKED
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_every_launch_of_a_training_smoothing_step_checks_its_promises(memory_format, fresh_sites):
    step, u, f = _training_step(memory_format)
    before = launch_sites.checks_made()
    with counting_launches() as launched:
        step(u, f).square().sum().backward()
    # the copies that re-lay the OIHW weights (forward), and in NCHW u (forward, backward), grad_out and grad f
    relaid = 2 if memory_format == torch.channels_last else 6
    assert len(launched) == 10 + relaid and launched.count("relayout_kernel") == relaid, launched
    assert launch_sites.checks_made() - before == len(launched)
    dense = {site.constexprs["PIXEL_DENSE"] for site in launch_sites.SITES.values() if "PIXEL_DENSE" in site.constexprs}
    # both kinds of BatchNorm site are checked: in NCHW the step's intermediates are channels_last, its output not
    assert dense == ({True} if memory_format == torch.channels_last else {True, False}), dense


def _with_flag(flag: str, value):
    """A _gather_tile_flags that bakes ``flag`` = ``value`` whatever the tile."""
    original = conv_launch._gather_tile_flags

    def planted(*args, **kwargs):
        return {**original(*args, **kwargs), flag: value}

    return planted


@_CHECKED
@pytest.mark.parametrize("flag, value, x_shape, w_shape, groups, says", [
    ("RED_RANGE_ALIGN", 16, (2, 8, 5, 5), (8, 2, 3, 3), 4, "RED_RANGE_ALIGN=16 divides every tile's reduced-channel "
                                                           "range (multiples of 8"),
    ("FULL_CHANNEL_BLOCKS", True, (2, 8, 5, 5), (8, 2, 3, 3), 4, "FULL_CHANNEL_BLOCKS: every channel tile"),
    ("SINGLE_RED_BLOCK", True, (1, 64, 3, 3), (32, 64, 1, 1), 1, "SINGLE_RED_BLOCK: every channel tile"),
])
def test_a_launcher_baking_a_wrong_tile_flag_is_stopped_before_the_launch(monkeypatch, fresh_sites, flag, value,
                                                                          x_shape, w_shape, groups, says):
    monkeypatch.setattr(conv_launch, "_gather_tile_flags", _with_flag(flag, value))
    # channels_last: no copies re-lay them before the gather
    x, w = (torch.randn(shape, device=DEVICE).to(memory_format=torch.channels_last) for shape in (x_shape, w_shape))
    with counting_launches() as launched, pytest.raises(launch_sites.BrokenPromise) as info:
        grouped_conv2d(x, w, padding=w_shape[-1] // 2, groups=groups, backend="triton")
    message = str(info.value)
    assert message.startswith("conv2d_gather_kernel, launch site forward src " + str(tuple(x_shape))), message
    assert says in message and message.count("; ") == 0, message  # that promise alone
    assert launched == []


def _site(kernel_name: str, description_start: str = ""):
    sites = [site for site in launch_sites.SITES.values() if launch_sites.kernel_name(site) == kernel_name
             and site.description.startswith(description_start)]
    assert sites, (kernel_name, [site.description for site in launch_sites.SITES.values()])
    return sites[0]


@_CHECKED
def test_a_cached_site_whose_promises_the_tensors_break_raises_naming_each(fresh_sites):
    x, w, b, args = _conv_case("non-contiguous weight, groups 4")
    run = lambda: grouped_conv2d(x, w, b, backend="triton", **args).square().sum().backward()  # noqa: E731
    run()
    gather = _site("conv2d_gather_kernel", "forward")
    assert gather.constexprs["W_ALIGN"] == 1  # the sliced weight's strides (27, 1, 9, 3)
    gather.constexprs["W_ALIGN"] = gather.constexprs["DST_ALIGN"] = 16
    with pytest.raises(launch_sites.BrokenPromise) as info:
        run()
    message = str(info.value)
    assert "conv2d_gather_kernel, launch site forward" in message and "(27, 1, 9, 3)" in message, message
    assert "W_ALIGN=16 divides the weight's out-channel and tap strides" in message, message
    assert "DST_ALIGN=16 divides the dst channels per group (3)" in message, message
    gather.constexprs["W_ALIGN"], gather.constexprs["DST_ALIGN"] = 1, 1
    run()  # the promises hold again
    (site, *_), = conv_launch._GRAD_WEIGHT_SITES.values()
    assert not site.constexprs["FULL_BOXES"]  # 5 x 7 pixels in 4 x 4 boxes
    site.constexprs["FULL_BOXES"] = True
    with pytest.raises(launch_sites.BrokenPromise, match=r"conv2d_grad_weight_kernel, launch site x \(2, 8, 5, 7\).*"
                                                         r"FULL_BOXES: N, H_out, W_out \(2, 5, 7\) are multiples"):
        run()


@_CHECKED
def test_a_batchnorm_site_promising_dense_pixels_of_nchw_activations_raises(fresh_sites):
    step, u, f = _training_step(torch.contiguous_format)
    step(u, f).square().sum().backward()
    site = _site("bn_relu_residual_kernel")
    assert site.constexprs["PIXEL_DENSE"] is False
    site.constexprs["PIXEL_DENSE"] = True
    with pytest.raises(launch_sites.BrokenPromise, match=r"bn_relu_residual_kernel, launch site grid .*broken "
                                                         r"promise: PIXEL_DENSE: every activation's pixels are evenly"):
        step(u, f)


@_CHECKED
def test_32_bit_pixel_indices_are_promised_below_2_31_pixels_only(fresh_sites):
    """The sites' promises read the launch's tensors' sizes alone: meta tensors stand for 2^32 pixels."""
    x, w, b, args = _conv_case("nchw, groups 4")
    grouped_conv2d(x, w, b, backend="triton", **args).sum().backward()
    gather = _site("conv2d_gather_kernel", "forward")
    (grad_weight, *_), = conv_launch._GRAD_WEIGHT_SITES.values()
    assert not gather.constexprs["WIDE_PIXEL_INDEX"] and not grad_weight.constexprs["WIDE_PIXEL_INDEX"]
    # as the gather reads them: channels_last copies (conv_launch.with_contiguous_channels)
    x, w = (t.detach().to(memory_format=torch.channels_last) for t in (x, w))
    huge = torch.empty(2 ** 16, 8, 2 ** 8, 2 ** 8, device="meta")
    meta_w = torch.empty(8, 2, 3, 3, device="meta").to(memory_format=torch.channels_last)
    assert gather.promises(gather.constexprs, (huge, meta_w, None, None, huge)) == [
        f"WIDE_PIXEL_INDEX=False: the dst pixels ({2 ** 32}) are below 2^31"]
    assert grad_weight.promises(grad_weight.constexprs, (huge, huge, meta_w)) == [
        f"WIDE_PIXEL_INDEX=False: the output pixels ({2 ** 32}) are below 2^31"]
    assert gather.promises(gather.constexprs, (x, w, None, None, torch.empty(2, 8, 7, 5))) == []


def _run_standin(tmp_path, code: str, check: str) -> str:
    """Run ``code`` on the stand-in sm_90 driver (no TRITON_INTERPRET) with MGIAD_KERNELS_CHECK_PROMISES=``check``."""
    script = tmp_path / "promises_case.py"
    script.write_text(textwrap.dedent(code))
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MGIAD_KERNELS_AUTOTUNE")}
    env["MGIAD_KERNELS_CHECK_PROMISES"] = check
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


_STANDIN_CONV = """
    import torch
    from mgiad_kernels.conv import launch as conv_launch
    from mgiad_kernels.conv.geometry import ConvGeometry
    from mgiad_kernels.runtime import launch_sites
    from tools.standin_driver import standin_cuda_driver

    x, w = torch.randn(2, 4, 8, 8), torch.randn(8, 2, 3, 3)
    geo = ConvGeometry.of(x.shape, w.shape, (1, 1), (1, 1, 1, 1), (1, 1), 2)
    y = torch.empty(2, 8, 8, 8)
    offset = torch.randn(2 * 4 * 8 * 8 + 1)[1:].view(2, 4, 8, 8)  # 4-byte aligned, not 16
    gather = lambda src=x: conv_launch._gather(src, w, None, y, geo, transposed=False)  # noqa: E731
"""


@_STANDIN
def test_a_launch_through_a_variant_specialized_on_an_alignment_its_tensors_lack_raises(tmp_path):
    """On the compiled launch path: a launch taking a variant Triton specialized on 16-byte aligned pointers
    with a misaligned tensor (a site's plans planted so), or a tensor where the site's first launch had the
    placeholder, raises before launching; every launch is checked and none goes through a generated function."""
    out = _run_standin(tmp_path, _STANDIN_CONV + """
    with standin_cuda_driver(arch=90) as rec:
        for src in (x, x, offset, x):
            gather(src)
        site, = launch_sites.SITES.values()
        assert launch_sites.checks_made() == len(rec.launches) == 4 and len(site.plans) == 2
        assert site.launch.__name__ == "launch" and "site_ref" in site.launch.__code__.co_freevars  # checking
        site.plans[1] = site.plans[0]  # the misaligned src would take the aligned variant
        try:
            gather(offset)
            raise SystemExit("no error for a misaligned src through the aligned variant")
        except launch_sites.BrokenPromise as error:
            message = str(error)
        assert message.startswith("conv2d_gather_kernel, launch site forward src (2, 4, 8, 8)"), message
        assert "src_ptr specialized as divisible by 16 bytes in the compiled variant this launch takes, at an " \\
               "address 4 bytes past a multiple" in message, message
        unused = conv_launch.scratch(x.device)
        pointers = [x, w, unused, torch.randn(8), y] + [unused] * 11  # a bias where the site has none
        try:
            site.launch(tuple(pointers), unused)
            raise SystemExit("no error for a bias where the placeholder was")
        except launch_sites.BrokenPromise as error:
            assert "bias_ptr is a tensor where the site's first launch had the placeholder" in str(error), error
        assert len(rec.launches) == 4
    print("ok")
    """, check="1")
    assert out.startswith("ok")


@_STANDIN
def test_with_the_switch_off_no_check_runs_and_warm_launches_are_generated(tmp_path):
    out = _run_standin(tmp_path, _STANDIN_CONV + """
    from mgiad_kernels.runtime.triton_support import promises_checked

    def refuse(*args):
        raise SystemExit("a promise checked with the switch off")
    launch_sites.check_promises = refuse
    with standin_cuda_driver(arch=90) as rec:
        for src in (x, x, offset, x, x):
            gather(src)
        site, = launch_sites.SITES.values()
        assert not promises_checked() and launch_sites.checks_made() == 0 and len(rec.launches) == 5
        assert site.promises is not None and site.launch.__name__ == "launch"
        assert "site_ref" not in site.launch.__code__.co_freevars and "run" in site.launch.__code__.co_names, \\
            site.launch.__code__.co_names  # generated: the compiled launcher called directly
    print("ok")
    """, check="0")
    assert out.startswith("ok")
