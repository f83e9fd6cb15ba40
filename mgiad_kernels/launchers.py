"""Launchers: allocate outputs, pick grids, splits and precision, call the Triton kernels.

Nothing here checks arguments for the user (the functional layer does); everything here
assumes shapes that already agree.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from . import forward_dispatch, launch_plans
from ._triton_support import parallel_programs_wanted
from .conv_geometry import ConvGeometry

_PIXEL_INDEX_LIMIT = 2 ** 31  # pixel counts from which the gather and grad weight index pixels in 64 bits
_GRAD_WEIGHT_BOX = 64  # output pixels per step of grad weight's reduction
_GRAD_WEIGHT_BOX_SIDE = 4  # its rows and columns, at most
_UNITS_PER_SPLIT_MIN = 4  # the fewest pixel boxes a grad-weight split reduces over
_SMALLEST_CHANNEL_TILE = 16  # of every config: bounds the channel tiles a launch has (arrival counters)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def grad_weight_pixel_box(n_batch: int, h_out: int, w_out: int) -> tuple[int, int, int]:
    """(TILE_N, TILE_H, TILE_W): grad weight's box of _GRAD_WEIGHT_BOX output pixels, powers of two: 4x4
    pixels of 4 images, narrower only where the images are (then more images), so every level of a
    multigrid network from 4x4 up shares one compiled kernel per key."""
    tile_w = min(_next_power_of_2(max(w_out, 1)), _GRAD_WEIGHT_BOX_SIDE)
    tile_h = min(_next_power_of_2(max(h_out, 1)), _GRAD_WEIGHT_BOX_SIDE)
    return _GRAD_WEIGHT_BOX // (tile_w * tile_h), tile_h, tile_w


@functools.lru_cache(maxsize=None)
def _kernels():
    from .kernels import conv  # deferred: TRITON_INTERPRET must be read when kernels are defined

    return conv


def _input_precision(dtype: torch.dtype) -> str:
    """fp32 dots follow PyTorch's own setting for cuDNN convolutions (tf32 allowed by default)."""
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def strides_like_channels_last(t: torch.Tensor) -> bool:
    """ATen's is_channels_last_strides_2d: the stride order of t is that of channels_last."""
    sizes, strides = t.shape, t.stride()
    if t.dim() != 4 or strides[1] == 0:
        return False
    smallest = 0
    for d in (1, 3, 2, 0):
        if sizes[d] == 0 or strides[d] < smallest:
            return False
        if d == 0 and smallest == strides[1]:
            return False
        smallest = strides[d] * (sizes[d] if sizes[d] > 1 else 1)
    return True


def weight_memory_format(weight: torch.Tensor) -> torch.memory_format:
    """The layout a weight gradient gets: the weight's own, so autograd accumulates it without a copy."""
    return torch.channels_last if strides_like_channels_last(weight) else torch.contiguous_format


def conv_output_memory_format(x: torch.Tensor, weight: torch.Tensor) -> torch.memory_format:
    """F.conv2d's rule: channels_last output when the input or the weight has channels_last strides."""
    if strides_like_channels_last(x) or strides_like_channels_last(weight):
        return torch.channels_last
    return torch.contiguous_format


@dataclass(frozen=True)
class BatchNormArgs:
    """A BatchNorm as the kernels read it: per-channel statistics and affine parameters, and eps.

    ``var`` is the variance normalized with (the biased batch variance in training, the
    running variance in eval mode); bn(x) = (x - mean) / sqrt(var + eps) * gamma + beta.
    """

    mean: torch.Tensor
    var: torch.Tensor
    gamma: torch.Tensor
    beta: torch.Tensor
    eps: float

    def pointers(self) -> tuple:
        return self.mean, self.var, self.gamma, self.beta

    def signature(self) -> tuple:
        """What a launch site's key holds of it: eps and the tensors' dtypes."""
        return self.eps, self.mean.dtype, self.var.dtype, self.gamma.dtype, self.beta.dtype


@dataclass(frozen=True)
class RunningStatsUpdate:
    """A BatchNorm's running statistics to update from the batch moments a gather merges, as
    nn.BatchNorm2d does in training: ``num_batches`` is its num_batches_tracked (read, not
    incremented: the step's last kernel counts the batch), ``momentum`` None the cumulative average,
    ``count`` the values per channel (N*H*W, > 1)."""

    mean: torch.Tensor
    var: torch.Tensor
    num_batches: torch.Tensor
    momentum: float | None
    count: int

    def pointers(self) -> tuple:
        return self.mean, self.var, self.num_batches

    def signature(self) -> tuple:
        """What a launch site's key holds of it: the scalars and the tensors' dtypes."""
        return self.momentum, self.count, self.mean.dtype, self.var.dtype, self.num_batches.dtype


def gather_stats_buffer(dst_shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """(3, rows, C) fp32 scratch for a fused gather's per-tile partial statistics, a row per
    GATHER_MIN_BLOCK_P pixels (the most pixel tiles any config makes). Uninitialised: the gather
    writes the rows of its tiles and reads no other."""
    n_batch, channels, h, w = dst_shape
    rows = _cdiv(n_batch * h * w, _kernels().GATHER_MIN_BLOCK_P.value)
    return torch.empty((3, rows, channels), device=device, dtype=torch.float32)


_SCRATCH: dict[torch.device, torch.Tensor] = {}
_COUNTERS: dict[tuple, torch.Tensor] = {}
_MIN_COUNTERS = 4096


def arrival_counters(device: torch.device, count: int) -> torch.Tensor:
    """At least ``count`` int32 arrival counters for a split reduction finished in the kernel
    (kernels/split_reduction.py), all zero. The kernel leaves them at zero, so one buffer per device
    and stream serves every launch in stream order; launches on another stream get their own."""
    # the raw handle, as Triton's CUDA driver asks it (a torch.cuda.Stream object costs microseconds)
    stream = torch._C._cuda_getCurrentRawStream(device.index) if device.type == "cuda" else 0
    key = (device, stream)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < count:
        buf = _COUNTERS[key] = torch.zeros(max(count, _MIN_COUNTERS), device=device, dtype=torch.int32)
    return buf


def scratch(device: torch.device) -> torch.Tensor:
    """The package's own placeholder for pointer arguments a launch does not use (no bias, no
    BatchNorm, no statistics): never a user's tensor, so no kernel or autotuner hook can touch one."""
    buf = _SCRATCH.get(device)
    if buf is None:
        buf = _SCRATCH[device] = torch.zeros(16, device=device, dtype=torch.float32)
    return buf


def channel_alignment(per_group: int) -> int:
    """The largest power of two, at most 16, dividing ``per_group``: a group's channel range starts
    and ends on it, which the kernels assert so loads along channels vectorize (16 B at g_s >= 4 fp32,
    g_s >= 8 16-bit)."""
    return min(16, per_group & -per_group)


def channel_range_alignment(c_dst: int, dst_per_group: int, red_per_group: int, block_dsts) -> int:
    """The largest power of two, at most 16, dividing the start and the end of the reduced channels (all
    channels of the groups it touches) of every tile of BLOCK_DST dst channels, for each of ``block_dsts``.
    A tile spanning whole groups starts on a multiple of the channels of the groups before it, so 4-channel
    groups in 16-wide tiles still load 16 channels at once (16-bit: 128-bit loads, not 64)."""
    align = 16
    for block_dst in block_dsts:
        for c0 in range(0, c_dst, block_dst):
            start = (c0 // dst_per_group) * red_per_group
            end = ((min(c0 + block_dst, c_dst) - 1) // dst_per_group + 1) * red_per_group
            align = min(align, channel_alignment(start) if start else 16, channel_alignment(end))
    return align


def grad_weight_channel_blocks(c_out: int, out_per_group: int, in_per_group: int, tiles) -> tuple[int, int, bool]:
    """The grad-weight kernel's (OUT_ALIGN, IN_ALIGN, FULL_CHANNEL_BLOCKS) for each (BLOCK_OUT, BLOCK_IN) of
    ``tiles``: the largest powers of two, at most 16, dividing C_OUT and the input-channel range of every
    tile of BLOCK_OUT output channels (``channel_range_alignment``); whether every such tile is whole and its
    input channels whole blocks of BLOCK_IN."""
    full = full_channel_blocks(c_out, out_per_group, in_per_group, tiles)
    in_align = channel_range_alignment(c_out, out_per_group, in_per_group, sorted({t[0] for t in tiles}))
    return channel_alignment(c_out), in_align, full


def full_channel_blocks(c_dst: int, dst_per_group: int, red_per_group: int, tiles) -> bool:
    """The gather kernel's FULL_CHANNEL_BLOCKS for each (BLOCK_DST, BLOCK_RED) of ``tiles``: every tile of
    BLOCK_DST dst channels is whole, and the channels it reduces over (all of the groups it touches) are whole
    blocks of BLOCK_RED."""
    return all(c_dst % block_dst == 0 and all(groups * red_per_group % block_red == 0
                                              for groups in _groups_per_tile(c_dst, dst_per_group, block_dst))
               for block_dst, block_red in tiles)


def _groups_per_tile(c_dst: int, dst_per_group: int, block_dst: int):
    """The number of groups each tile of BLOCK_DST dst channels touches, over one period of the pattern:
    it repeats every lcm(BLOCK_DST, dst_per_group) channels, and a last, partial tile touches no more groups
    than a whole one."""
    period = block_dst * dst_per_group // math.gcd(block_dst, dst_per_group)
    for c0 in range(0, min(c_dst, period), block_dst):
        yield (min(c0 + block_dst, c_dst) - 1) // dst_per_group - c0 // dst_per_group + 1


def single_reduced_block(c_dst: int, dst_per_group: int, red_per_group: int, tiles) -> bool:
    """The gather kernel's SINGLE_RED_BLOCK for each (BLOCK_DST, BLOCK_RED) of ``tiles``: the channels every
    tile of BLOCK_DST dst channels reduces over (all of the groups it touches) fit one block of BLOCK_RED."""
    return all(groups * red_per_group <= block_red
               for block_dst, block_red in tiles for groups in _groups_per_tile(c_dst, dst_per_group, block_dst))


def weight_alignment(strides: Sequence[int]) -> int:
    """The largest power of two, at most 16, dividing a weight's out-channel and tap strides (0 divides by
    anything): 16 / element size of it make a vector load along the in-channels aligned where their stride is 1
    (channels_last weights: strides (I*KH*KW, 1, KW*I, I))."""
    align = 16
    for stride in (strides[0], strides[2], strides[3]):
        while stride % align:
            align //= 2
    return align


def _gather(src, weight, bias, dst, geo: ConvGeometry, transposed: bool, *, prologue_bn: BatchNormArgs | None = None,
            other: torch.Tensor | None = None, other_mode: str = "none", alpha: float = 1.0,
            epilogue_bn: BatchNormArgs | None = None, epilogue_bn_relu: bool = False,
            stats: torch.Tensor | None = None, stats_mode: str = "none",
            reduced: torch.Tensor | None = None, running_update: RunningStatsUpdate | None = None,
            weight_is_adjoint: bool = False, adjoint_weight: torch.Tensor | None = None
            ) -> launch_plans.LaunchSite:
    """Run conv2d_gather_kernel: the forward conv, or its adjoint for grad input, with optional fusions.

    ``prologue_bn``: src is read as relu(prologue_bn(src)). ``other_mode``: 'add' (other + alpha * y),
    'add_after_bn' (other + relu(epilogue_bn(y))), 'relu_grad' (y where epilogue_bn(other) > 0).
    ``epilogue_bn_relu``: y = relu(epilogue_bn(y)). ``stats_mode``: 'moments' (the batch mean and
    biased variance of y into ``reduced``, contiguous (2, C) fp32) or 'bn_grad' (sum y and
    sum y * bn_hat(other)), merged in the kernel through the scratch ``stats`` (gather_stats_buffer).
    ``running_update`` (with 'moments'): the merge also updates those running statistics.
    ``weight_is_adjoint`` (transposed): ``weight`` is the adjoint's own, (C_in, C_out // groups, KH, KW),
    as the forward wrote it into ``adjoint_weight`` (see adjoint_weight_wanted). Returns the launch's site.
    """
    bn = prologue_bn if prologue_bn is not None else epilogue_bn
    key = ("gather", src.shape, src.stride(), dst.shape, dst.stride(), weight.shape, weight.stride(), src.dtype,
           src.get_device(), geo.site_id, transposed, weight_is_adjoint,
           None if adjoint_weight is None else adjoint_weight.stride(),
           None if bias is None else (bias.stride(0), bias.dtype),
           None if other is None else (other.stride(), other.dtype), other_mode, alpha,
           prologue_bn is not None, epilogue_bn_relu, stats_mode, None if bn is None else bn.signature(),
           None if stats is None else stats.shape[1],
           None if running_update is None else running_update.signature(), _tf32_allowed())
    site = launch_plans.SITES.get(key)
    if site is None:
        site = _gather_site(key, src, weight, bias, dst, geo, transposed, prologue_bn, other, other_mode, alpha,
                            epilogue_bn, epilogue_bn_relu, stats, stats_mode, running_update, weight_is_adjoint,
                            adjoint_weight)
    unused = scratch(dst.device)
    site.launch((src, weight, unused if adjoint_weight is None else adjoint_weight,
                 unused if bias is None else bias, dst, unused if other is None else other,
                 *((unused,) * 4 if bn is None else bn.pointers()),
                 unused if stats is None else stats, unused if reduced is None else reduced,
                 unused if stats is None else arrival_counters(dst.device, _cdiv(dst.shape[1], _SMALLEST_CHANNEL_TILE)),
                 *((unused,) * 3 if running_update is None else running_update.pointers())), unused)
    return site


def _gather_site(key, src, weight, bias, dst, geo: ConvGeometry, transposed: bool, prologue_bn, other, other_mode: str,
                 alpha: float, epilogue_bn, epilogue_bn_relu: bool, stats, stats_mode: str, running_update,
                 weight_is_adjoint: bool, adjoint_weight):
    """The launch site of one _gather key: its grid, runtime scalars, constexprs and tile."""
    conv = _kernels()
    if prologue_bn is not None and epilogue_bn is not None:
        raise AssertionError("a gather launch applies at most one BatchNorm")
    if (epilogue_bn_relu or other_mode in ("add_after_bn", "relu_grad") or stats_mode == "bn_grad") \
            and epilogue_bn is None:
        raise AssertionError("this epilogue needs epilogue_bn")
    if running_update is not None and stats_mode != "moments":
        raise AssertionError("running statistics are updated from merged moments only")
    bn = prologue_bn or epilogue_bn
    n_batch, c_dst, h_dst, w_dst = dst.shape
    _, c_red, h_src, w_src = src.shape
    ws = weight.stride()
    if weight_is_adjoint and (not transposed or adjoint_weight is not None):
        raise AssertionError("the adjoint's weight is read by grad input, written by the forward")
    weight_out_is_dst = weight_is_adjoint or not transposed
    if weight_out_is_dst:  # dst channel = the weight's dim 0, reduced = its dim 1 (in-group index)
        w_strides = (ws[0], 0, 0, ws[1], ws[2], ws[3])
    else:  # dst channel = input channel (in-group index on dim 1), reduced = output channel
        w_strides = (0, ws[1], ws[0], 0, ws[2], ws[3])
    if transposed:
        dst_per_group, red_per_group = geo.in_per_group, geo.out_per_group
    else:
        dst_per_group, red_per_group = geo.out_per_group, geo.in_per_group
    if c_red * red_per_group >= 2 ** 31:  # the kernel finds a channel's group by a 31-bit multiply-shift
        raise ValueError(f"the Triton convolution supports reduced channels x channels per group below 2^31, "
                         f"got {c_red} x {red_per_group}")
    other_modes, stats_modes, running_modes = _fusion_modes()
    pixels = n_batch * h_dst * w_dst
    if running_update is None:
        running_mode, momentum, unbias = "none", 0.0, 1.0
    else:
        cumulative = running_update.momentum is None
        running_mode = "cumulative" if cumulative else "momentum"
        momentum = 0.0 if cumulative else float(running_update.momentum)
        unbias = running_update.count / (running_update.count - 1)
    rest = (*src.stride(), *dst.stride(), *(other.stride() if other is not None else dst.stride()),
            bias.stride(0) if bias is not None else 0,
            *(adjoint_weight.stride() if adjoint_weight is not None else (0, 0, 0, 0)), *w_strides,
            n_batch, h_src, w_src, h_dst, w_dst, c_dst, c_red, dst_per_group, red_per_group,
            float(alpha), float(bn.eps) if bn is not None else 0.0, momentum, unbias,
            stats.shape[1] if stats is not None else 0)
    constexprs = dict(
        KH=geo.kernel_h, KW=geo.kernel_w, STRIDE_H=geo.stride[0], STRIDE_W=geo.stride[1],
        PAD_H=geo.padding[0], PAD_W=geo.padding[1], DIL_H=geo.dilation[0], DIL_W=geo.dilation[1],
        TRANSPOSED=transposed, WEIGHT_OUT_IS_DST=weight_out_is_dst,
        WRITE_ADJOINT_WEIGHT=adjoint_weight is not None, HAS_BIAS=bias is not None,
        PROLOGUE_BN_RELU=prologue_bn is not None,
        OTHER_MODE=other_modes[other_mode], EPILOGUE_BN_RELU=epilogue_bn_relu,
        EPILOGUE_NEEDS_BN=epilogue_bn is not None, STATS=stats_modes[stats_mode],
        RUNNING_UPDATE=running_modes[running_mode], RED_ALIGN=channel_alignment(red_per_group),
        DST_ALIGN=channel_alignment(dst_per_group), W_ALIGN=weight_alignment(ws),
        WIDE_PIXEL_INDEX=pixels >= _PIXEL_INDEX_LIMIT, INPUT_PRECISION=_input_precision(src.dtype))
    grid = lambda meta: (_cdiv(pixels, meta["BLOCK_P"]), _cdiv(c_dst, meta["BLOCK_DST"]))  # noqa: E731
    config = None if conv.autotune_enabled() else conv.default_gather_config(
        dst_per_group, red_per_group, src.element_size(), conv.gather_pixels_bucket(pixels),
        tile_batchnorm=prologue_bn is not None or stats_mode == "bn_grad")
    # autotuned, the flag must hold for whichever config the autotuner picks
    configs = conv.conv2d_gather_kernel.configs if config is None else (config,)
    tiles = [(c.kwargs["BLOCK_DST"], c.kwargs["BLOCK_RED"]) for c in configs]
    constexprs["FULL_CHANNEL_BLOCKS"] = full_channel_blocks(c_dst, dst_per_group, red_per_group, tiles)
    # a register-capped tile keeps the flat loop: the block's offsets and masks held across the taps spill at
    # the cap (sm_90 codegen report, bf16 256x32x32 at 168 registers: 16 bytes)
    constexprs["SINGLE_RED_BLOCK"] = single_reduced_block(c_dst, dst_per_group, red_per_group, tiles) and not (
        config is not None and config.maxnreg)
    constexprs["RED_RANGE_ALIGN"] = channel_range_alignment(c_dst, dst_per_group, red_per_group,
                                                            sorted({c.kwargs["BLOCK_DST"] for c in configs}))
    return launch_plans.SITES.put(key, _tiled_site(conv.conv2d_gather_kernel, grid, rest, constexprs, config))


@functools.lru_cache(maxsize=None)
def _fusion_modes() -> tuple[dict, dict, dict]:
    """OTHER_MODE, STATS and RUNNING_UPDATE by name, as the plain ints the kernel compares with its
    constexpr globals."""
    conv = _kernels()
    return ({"none": conv.OTHER_NONE.value, "add": conv.OTHER_ADD.value,
             "add_after_bn": conv.OTHER_ADD_AFTER_BN.value, "relu_grad": conv.OTHER_RELU_GRAD.value},
            {"none": conv.STATS_NONE.value, "moments": conv.STATS_MOMENTS.value, "bn_grad": conv.STATS_BN_GRAD.value},
            {"none": conv.RUNNING_NONE.value, "momentum": conv.RUNNING_MOMENTUM.value,
             "cumulative": conv.RUNNING_CUMULATIVE.value})


def _tiled_site(kernel, grid, rest: tuple, constexprs: dict, config) -> launch_plans.LaunchSite:
    """The site of an autotuned kernel: through the autotuner when ``config`` is None
    (MGIAD_KERNELS_AUTOTUNE=1), else with ``config``'s tile (no benchmarking, no Triton dispatch once warm).
    The caller keeps it in its own cache."""
    if config is None:
        return launch_plans.LaunchSite(kernel, grid, rest, constexprs, {}, through_triton=True)
    constexprs = {**constexprs, **config.kwargs}
    return launch_plans.LaunchSite(kernel.fn, grid(constexprs), rest, constexprs,
                                   {"num_warps": config.num_warps, "num_stages": config.num_stages,
                                    **({"maxnreg": config.maxnreg} if config.maxnreg else {})})


# What every site key holds besides its arguments: fp32 dots' precision, PyTorch's tf32 switch for cuDNN
# (``torch.backends.cudnn.allow_tf32``), read at each launch (the C getter: a Python wrapper would cost a frame
# per launch). Whether launches autotune is read once per process, when the first site is made.
_tf32_allowed = torch._C._get_cudnn_allow_tf32


_FORWARD_SITES = launch_plans.SiteCache()  # conv2d_forward's key (the device by index: x.get_device() is
#                                            cheaper than x.device) -> its call (_forward_call)


def _not_dispatched(x, weight, bias, other, adjoint_weight, site_id, alpha):
    """conv2d_forward's C++ dispatch before any warm call registered with it: serves nothing."""
    return None


# forward_dispatch's C++ call (y, or None where it does not serve the call) once a warm call registered
_DISPATCH = {"call": _not_dispatched}


def conv2d_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, other: torch.Tensor | None,
                   alpha: float, geo: ConvGeometry, adjoint_weight: torch.Tensor | None = None) -> torch.Tensor:
    """y = other + alpha * (conv2d(x, weight) + bias) in one launch (``other`` None: no sum).

    F.conv2d's semantics; the sum is the FAS residual and correction (MGiaD eq. 6-7, Alg. 2).
    ``adjoint_weight`` (empty_adjoint_weight): the launch also writes the weight of grad input's
    convolution into it, for conv2d_grad_input. Warm, a call is one call of the C++ dispatch
    (forward_dispatch: key, allocation and launch), else a key lookup, the output's allocation and the launch.
    """
    y = _DISPATCH["call"](x, weight, bias, other, adjoint_weight, geo.site_id, alpha)
    if y is not None:
        return y
    # the geometry (by its site_id) fixes the weight's shape and the output's
    key = (geo.site_id, x.shape, x.stride(), weight.stride(), x.dtype, x.get_device(),
           None if bias is None else (bias.stride(0), bias.dtype),
           None if other is None else (other.stride(), other.dtype), alpha,
           None if adjoint_weight is None else adjoint_weight.stride(), _tf32_allowed())
    call = _FORWARD_SITES.get(key)
    if call is not None:
        return call(x, weight, bias, other, adjoint_weight)
    y = torch.empty((x.shape[0], weight.shape[0], *geo.out_hw), device=x.device, dtype=x.dtype,
                    memory_format=conv_output_memory_format(x, weight))
    gather = None
    if y.numel():  # else N = 0 (grad input is empty too) or C_out = 0 (so is the adjoint's weight)
        gather = _gather(x, weight, bias, y, geo, transposed=False, other=other,
                         other_mode="none" if other is None else "add", alpha=alpha, adjoint_weight=adjoint_weight)
    like_input = y.shape == x.shape and y.stride() == x.stride()  # so x is dense as y is
    _FORWARD_SITES.put(key, _forward_call(key, y.shape, y.stride(), gather, scratch(x.device), like_input,
                                          (geo.site_id, alpha)))
    return y


# conv2d_forward's pointers (the gather kernel's): src, weight, adjoint weight, bias, dst, other, then ten the
# forward never uses; as source, in the warm call's names
_FORWARD_POINTERS = ("x", "weight", "adjoint_weight", "bias", "y", "other") + ("unused",) * 10


def _forward_call(key: tuple, shape, strides, gather, unused, like_input: bool, site: tuple) -> Callable:
    """conv2d_forward's call for one site key: call(x, weight, bias, other, adjoint_weight) -> y (allocated
    with ``shape`` and ``strides``, launched on the ``gather`` site). Once that site has made its warm launch,
    the key's call becomes one generated function, allocation and launch (launch_plans.warm_function), and
    where the launch has a fast plan, the key is registered with the C++ dispatch (forward_dispatch, with
    ``site``: conv2d_forward's site_id and alpha), which then serves the calls before any Python key is made.

    ``like_input``: y has x's shape and strides (a same-size conv, as the smoothing steps' are), x dense; the
    warm call then allocates it as ``torch.empty_like(x)``, which gives a dense input's strides and is cheaper
    than ``new_empty_strided``'s shape and strides parsed at each call."""

    def call(x, weight, bias, other, adjoint_weight):
        y = x.new_empty_strided(shape, strides)  # x's dtype and device: cheaper than torch.empty_strided's keywords
        if gather is not None:
            gather.launch((x, weight, unused if adjoint_weight is None else adjoint_weight,
                           unused if bias is None else bias, y, unused if other is None else other,
                           unused, unused, unused, unused, unused, unused, unused, unused, unused, unused), unused)
            allocation = "    y = empty_like(x)\n" if like_input else "    y = x.new_empty_strided(shape, strides)\n"
            warm = launch_plans.warm_function(
                gather, "x, weight, bias, other, adjoint_weight", _FORWARD_POINTERS, allocation, "y",
                bound=dict(shape=shape, strides=strides, empty_like=torch.empty_like), name="conv2d_forward_call")
            if warm is not None:
                warm.launch_site = gather  # held: the warm function refers to it weakly
                _FORWARD_SITES[key] = warm
                if forward_dispatch.register(gather, x, weight, bias, other, adjoint_weight, *site, shape, strides,
                                             like_input):
                    _DISPATCH["call"] = forward_dispatch.module().call
        return y

    call.launch_site = gather
    return call


def adjoint_weight_wanted(dtype: torch.dtype) -> bool:
    """Whether a forward that grad input will follow writes the adjoint's weight for it (fp32).

    Grad input convolves grad_y with the weight's taps, its out-channels reduced over. A tf32 dot needs
    that operand K-major in shared memory, but a channels_last weight has its in-channels contiguous, so
    it loaded 4 bytes per async copy (sm_90 codegen report, issue 13: grad input, B^T and A^T at every
    g_s). The copy, channels_last (C_in, C_out // groups, KH, KW), loads in 8- or 16-byte vectors; the
    forward's first pixel tiles write it (the weight is tiny), so it costs no launch. 16-bit dots
    transpose in shared memory and need no copy."""
    return dtype == torch.float32


def empty_adjoint_weight(weight: torch.Tensor, geo: ConvGeometry) -> torch.Tensor:
    """The buffer the forward writes the adjoint's weight into: (C_in, C_out // groups, KH, KW),
    channels_last (out-channels contiguous)."""
    c_in, o, kh, kw = geo.in_channels, geo.out_per_group, geo.kernel_h, geo.kernel_w
    return weight.new_empty_strided((c_in, o, kh, kw), (kh * kw * o, 1, kw * o, o))


def conv2d_grad_input(grad_y: torch.Tensor, x_shape: Sequence[int], weight: torch.Tensor, geo: ConvGeometry,
                      memory_format: torch.memory_format, alpha: float = 1.0,
                      adjoint_weight: torch.Tensor | None = None) -> torch.Tensor:
    """grad_x = alpha * conv_transpose2d(grad_y, weight): the adjoint of the forward gather, through
    ``adjoint_weight`` where the forward wrote it (conv2d_forward), else through ``weight``."""
    grad_x = torch.empty(tuple(x_shape), device=grad_y.device, dtype=grad_y.dtype, memory_format=memory_format)
    if grad_x.numel():
        weight, is_adjoint = _adjoint_or_weight(weight, adjoint_weight)
        _gather(grad_y, weight, None, grad_x, geo, transposed=True, alpha=alpha, weight_is_adjoint=is_adjoint)
    return grad_x


def _adjoint_or_weight(weight: torch.Tensor, adjoint_weight: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
    """(the weight grad input reads, whether it is the adjoint's): the adjoint weight where the forward wrote
    one (not None, not empty), else the weight itself."""
    if adjoint_weight is not None and adjoint_weight.numel():
        return adjoint_weight, True
    return weight, False


def conv2d_grad_weight(grad_y: torch.Tensor, x: torch.Tensor, geo: ConvGeometry, with_bias: bool, *,
                       x_bn: BatchNormArgs | None = None, alpha: float = 1.0,
                       memory_format: torch.memory_format = torch.contiguous_format,
                       carries: Sequence[tuple[torch.Tensor | None, torch.Tensor | None]] = (),
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """grad_weight (and grad_bias) as split reductions over the N*H_out*W_out pixels, finished in the
    kernel (one launch): grad_weight in x's dtype and ``memory_format`` (the weight's, so autograd
    accumulates it without a copy).

    ``x_bn``: the convolution's input was relu(x_bn(x)), recomputed as x is loaded.
    ``alpha``: the gradients of alpha * conv (-1: a convolution that entered with a minus sign).
    ``carries``: up to two (weight, bias) gradients of other uses of the same parameters, any strides,
    added to the results in the kernel's final store (None for a gradient that use did not have).
    """
    w_shape = (geo.out_channels, geo.in_per_group, geo.kernel_h, geo.kernel_w)
    carries = _weight_carries(carries, w_shape, with_bias, x) if carries else ()
    pixels = x.shape[0] * geo.out_hw[0] * geo.out_hw[1]
    if not pixels:  # an empty sum: the carried gradients alone
        grad_w = torch.zeros(w_shape, device=x.device, dtype=x.dtype).contiguous(memory_format=memory_format)
        grad_b = torch.zeros(geo.out_channels, device=x.device, dtype=x.dtype) if with_bias else None
        for carry_w, carry_b in carries:
            grad_w += carry_w
            if grad_b is not None:
                grad_b += carry_b
        return grad_w, grad_b
    key = ("grad_weight", x.shape, x.stride(), grad_y.shape, grad_y.stride(), x.dtype, x.get_device(),
           geo.site_id, w_shape, with_bias, None if x_bn is None else x_bn.signature(), alpha, memory_format,
           *[(w.stride(), None if b is None else b.stride()) for w, b in carries], _tf32_allowed())
    site = _GRAD_WEIGHT_SITES.get(key)
    if site is None:
        site = _GRAD_WEIGHT_SITES.put(key, _grad_weight_site(grad_y, x, geo, w_shape, with_bias, x_bn, alpha,
                                                             memory_format, carries))
    launch, w_strides, partial_shapes, counters, unused = site
    grad_w = x.new_empty_strided(w_shape, w_strides)
    grad_b = x.new_empty(w_shape[0]) if with_bias else None
    partial_w = torch.empty(partial_shapes[0], device=x.device, dtype=torch.float32)
    partial_b = torch.empty(partial_shapes[1], device=x.device, dtype=torch.float32) if with_bias else unused
    carry_ws = [w for w, _ in carries] + [unused, unused]
    carry_bs = [b for _, b in carries] + [unused, unused] if with_bias else (unused, unused)
    launch.launch((x, grad_y, grad_w, unused if grad_b is None else grad_b, partial_w, partial_b,
                   arrival_counters(x.device, counters), carry_ws[0], carry_ws[1], carry_bs[0], carry_bs[1],
                   *(x_bn.pointers() if x_bn is not None else (unused,) * 4)), unused)
    return grad_w, grad_b


_GRAD_WEIGHT_SITES = launch_plans.SiteCache()  # conv2d_grad_weight's key -> (site, grad_w strides, partials'
#                                                shapes, arrival counters, placeholder)


def _grad_weight_site(grad_y, x, geo: ConvGeometry, w_shape: tuple, with_bias: bool, x_bn, alpha: float,
                      memory_format, carries) -> tuple:
    """The launch site of one conv2d_grad_weight key, with what its calls allocate."""
    n_batch, c_in, h, w = x.shape
    c_out = geo.out_channels
    h_out, w_out = geo.out_hw
    pixels = n_batch * h_out * w_out
    tile = grad_weight_pixel_box(n_batch, h_out, w_out)
    units = _cdiv(n_batch, tile[0]) * _cdiv(h_out, tile[1]) * _cdiv(w_out, tile[2])
    conv = _kernels()
    config = None if conv.autotune_enabled() else conv.default_grad_weight_config(geo.out_per_group,
                                                                                   geo.in_per_group)
    # enough splits that the grid offers the programs the device wants (kernel rows x channel tiles x
    # splits; the autotuner's tile is not known yet: its widest), none smaller than _UNITS_PER_SPLIT_MIN boxes
    channel_tiles = _cdiv(c_out, config.kwargs["BLOCK_OUT"] if config is not None else 32)
    max_splits = max(1, _cdiv(units, _UNITS_PER_SPLIT_MIN))
    splits = max(1, min(max_splits, _cdiv(parallel_programs_wanted(x.device), geo.kernel_h * channel_tiles)))
    units_per_split = _cdiv(max(units, 1), splits)
    splits = max(1, _cdiv(units, units_per_split))
    w_strides = torch.empty(w_shape, device="meta", memory_format=memory_format).stride()
    g_shape = (c_out,)
    carry_w_strides = tuple(s for i in range(2) for s in (carries[i][0].stride() if i < len(carries) else (0,) * 4))
    carry_b_strides = tuple(carries[i][1].stride(0) if with_bias and i < len(carries) else 0 for i in range(2))
    rest = (*x.stride(), *grad_y.stride(), *w_strides, 1 if with_bias else 0,
            *carry_w_strides, *carry_b_strides,
            n_batch, h, w, h_out, w_out, c_out, c_in, geo.out_per_group, geo.in_per_group, units_per_split,
            float(alpha), float(x_bn.eps) if x_bn is not None else 0.0)
    constexprs = dict(
        KH=geo.kernel_h, KW=geo.kernel_w, KW_BLOCK=_next_power_of_2(geo.kernel_w), STRIDE_H=geo.stride[0],
        STRIDE_W=geo.stride[1], PAD_H=geo.padding[0], PAD_W=geo.padding[1], DIL_H=geo.dilation[0],
        DIL_W=geo.dilation[1], HAS_BIAS=with_bias, X_BN_RELU=x_bn is not None, CARRIES=len(carries),
        WIDE_PIXEL_INDEX=pixels >= _PIXEL_INDEX_LIMIT,
        INPUT_PRECISION=_input_precision(x.dtype), TILE_N=tile[0], TILE_H=tile[1], TILE_W=tile[2])
    # autotuned, the flags must hold for whichever tile the autotuner picks
    configs = conv.conv2d_grad_weight_kernel.configs if config is None else (config,)
    constexprs["OUT_ALIGN"], constexprs["IN_ALIGN"], constexprs["FULL_CHANNEL_BLOCKS"] = grad_weight_channel_blocks(
        c_out, geo.out_per_group, geo.in_per_group, sorted({(c.kwargs["BLOCK_OUT"], c.kwargs["BLOCK_IN"])
                                                            for c in configs}))
    constexprs["FULL_BOXES"] = n_batch % tile[0] == 0 and h_out % tile[1] == 0 and w_out % tile[2] == 0
    grid = lambda meta: (geo.kernel_h, _cdiv(c_out, meta["BLOCK_OUT"]), splits)  # noqa: E731
    site = _tiled_site(conv.conv2d_grad_weight_kernel, grid, rest, constexprs, config)
    counters = geo.kernel_h * _cdiv(c_out, _SMALLEST_CHANNEL_TILE) * _cdiv(c_in, _SMALLEST_CHANNEL_TILE)
    return site, w_strides, ((splits, *w_shape), (splits, *g_shape)), counters, scratch(x.device)


def _carry_arguments(tensors: list, unused: torch.Tensor, rank: int) -> tuple[tuple, tuple]:
    """The kernels' two carried-gradient pointer slots and their strides: ``tensors`` (at most two),
    then the placeholder with zero strides."""
    pointers = tuple(tensors[i] if i < len(tensors) else unused for i in range(2))
    strides = tuple(s for i in range(2) for s in (tensors[i].stride() if i < len(tensors) else (0,) * rank))
    return pointers, strides


def _weight_carries(carries, w_shape, with_bias: bool, x: torch.Tensor) -> list:
    """The (weight, bias) gradient pairs to add, at most two, each complete: a use that differentiated
    only one of the two gets zeros for the other; pairs with neither are dropped."""
    out = []
    for carry_w, carry_b in carries:
        if carry_b is not None and not with_bias:
            raise AssertionError("a carried bias gradient needs with_bias")
        if carry_w is None and carry_b is None:
            continue
        if carry_w is None:
            carry_w = torch.zeros(w_shape, device=x.device, dtype=x.dtype)
        if with_bias and carry_b is None:
            carry_b = torch.zeros(w_shape[0], device=x.device, dtype=x.dtype)
        for name, t, shape in (("weight", carry_w, w_shape), ("bias", carry_b, (w_shape[0],))):
            if t is not None and (tuple(t.shape) != tuple(shape) or t.dtype != x.dtype or t.device != x.device):
                raise AssertionError(f"carried {name} gradient {tuple(t.shape)} {t.dtype} on {t.device}, expected "
                                     f"{tuple(shape)} {x.dtype} on {x.device}")
        out.append((carry_w, carry_b))
    if len(out) > 2:
        raise AssertionError(f"the grad-weight kernel adds at most two carried gradients, got {len(out)}")
    return out


# ---- the fused smoothing step u + relu(bn2(B(relu(bn1(f - A u))))) (MGiaD paper eq. 3) -------------------------

_ELEMENTWISE_BLOCK_P, _ELEMENTWISE_BLOCK_C = 64, 32


def _elementwise_grid(pixels: int, channels: int, block_p: int = _ELEMENTWISE_BLOCK_P) -> tuple[int, int]:
    return _cdiv(pixels, block_p), _cdiv(channels, _ELEMENTWISE_BLOCK_C)


@functools.lru_cache(maxsize=None)
def _batchnorm_kernels():
    from .kernels import batchnorm  # deferred like _kernels()

    return batchnorm


# bn_relu_grad_sums stores no tile, only two sums per channel: 256 pixels share each tile's fixed work (the
# BatchNorm's parameters, the cross-warp sums, the partial row, the arrival) four times as widely as 64 (sm_90
# codegen report, bf16: 16.3M -> 8.7M issued instructions, 184 registers, no spill)
_GRAD_SUMS_BLOCK_P, _GRAD_SUMS_WARPS = 256, 4


def _pixels_evenly_spaced(t: torch.Tensor) -> bool:
    """Pixel (n, h, w) of the (N, C, H, W) tensor at (n*H*W + h*W + w) * stride_w: channels_last with no gaps
    between rows or images."""
    n, _, h, w = t.shape
    stride_n, _, stride_h, stride_w = t.stride()
    return (h == 1 or stride_h == w * stride_w) and (n == 1 or stride_n == h * w * stride_w)


def _elementwise(kernel, grid: tuple, pointers: tuple, rest: tuple, activations: tuple,
                 block_p: int = _ELEMENTWISE_BLOCK_P, num_warps: int = 4, **flags) -> None:
    """Launch a BatchNorm kernel on the (pixels, channels) tile grid through its launch site. The flags
    fix which pointers are the scratch placeholder; ``activations``: the (N, C, H, W) tensors it indexes by
    pixel, whose strides and sizes ``rest`` holds (PIXEL_DENSE when all are evenly spaced)."""
    device = pointers[0].device
    key = (id(kernel), grid, rest, *flags.values(), *[t.dtype for t in pointers], device)
    site = launch_plans.SITES.get(key)
    if site is None:
        dense = all(_pixels_evenly_spaced(t) for t in activations)
        site = launch_plans.add_site(key, kernel, grid, rest, {**flags, "PIXEL_DENSE": dense, "BLOCK_P": block_p,
                                                               "BLOCK_C": _ELEMENTWISE_BLOCK_C},
                                     {"num_warps": num_warps})
    site.launch(pointers, scratch(device))


def _empty_activation(like: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    return torch.empty_like(like, memory_format=memory_format)


def materializes_t(dtype: torch.dtype) -> bool:
    """Whether the training smoothing step writes t = relu(bn1(r)) in a launch of its own (16-bit) rather
    than recomputing it in B's prologue and again in B's grad weight (fp32).

    From the sm_90 codegen report (issue-13 model, N=128, bf16 C=64 H=32 g_s=8): B with the prologue
    issues 280 SASS instructions per 128x32x32 step, as every tap renormalizes its shifted tile (each
    element 9 times), 38.6 us, against 19.6 for B reading t plus 11.2 for the pass writing it (two
    activation passes, at their floor); B's grad weight reading t takes 11.2 us where recomputing t took
    28.8 (before its whole-box path). t is kept for the backward pass: one more activation saved per step.
    In fp32 the pass moves twice the bytes while the prologue costs the same instructions, and the two
    come out even (C=64 H=32: 44.6 + 34.1 us against about 22.4 + 33 + 22.4), so fp32 keeps the fused
    prologue and saves no t."""
    return dtype in (torch.float16, torch.bfloat16)


def smoothing_step_forward(u: torch.Tensor, f: torch.Tensor, weight_a: torch.Tensor, bias_a: torch.Tensor | None,
                           geo_a: ConvGeometry, weight_b: torch.Tensor, bias_b: torch.Tensor | None,
                           geo_b: ConvGeometry, bn1_affine: tuple, bn2_affine: tuple, eps: tuple[float, float],
                           running: tuple | None,
                           running_updates: tuple[RunningStatsUpdate, RunningStatsUpdate] | None = None,
                           adjoint_weights: bool = False) -> tuple[torch.Tensor, ...]:
    """One smoothing step that keeps r = f - A u, s = B(t) and, in 16-bit, t = relu(bn1(r)) for the
    backward pass.

    ``running`` None: training, normalized with the batch statistics computed in the convolutions'
    epilogues, which also update ``running_updates`` (bn1's, bn2's) if given. Else (running_mean1,
    running_var1, running_mean2, running_var2) are used. Launches: A (+ residual, + bn1 batch
    statistics and running update), B (+ bn1/relu prologue, or after a launch writing t where
    ``materializes_t``; + bn2's), the update u + relu(bn2(s)) (+ num_batches_tracked). Returns
    (out, r, s, stats, t, adjoint_a, adjoint_b) with stats = (mean1, var1, mean2, var2), (4, C) fp32, t
    empty unless materialized, and A's and B's adjoint weights for the backward's A^T and B^T, written by
    A and B if ``adjoint_weights`` and ``adjoint_weight_wanted``, else empty.
    """
    if running is not None and running_updates is not None:
        raise AssertionError("running statistics are updated in training (batch statistics) only")
    fmt = conv_output_memory_format(u, weight_a)
    n_batch, channels, h, w = u.shape
    pixels = n_batch * h * w
    r, s, out = (_empty_activation(u, fmt) for _ in range(3))
    t = _empty_activation(u, fmt) if materializes_t(u.dtype) else u.new_empty(0)
    if adjoint_weights and adjoint_weight_wanted(u.dtype):
        adjoint_a, adjoint_b = empty_adjoint_weight(weight_a, geo_a), empty_adjoint_weight(weight_b, geo_b)
    else:
        adjoint_a, adjoint_b = u.new_empty(0), u.new_empty(0)  # distinct: custom-op outputs may not alias
    written_a = adjoint_a if adjoint_a.numel() else None
    written_b = adjoint_b if adjoint_b.numel() else None
    bnk = _batchnorm_kernels()
    unused = scratch(u.device)

    def b_of_relu_bn1(bn1, **stats_args):
        if not t.numel():
            _gather(r, weight_b, bias_b, s, geo_b, False, prologue_bn=bn1, adjoint_weight=written_b, **stats_args)
            return
        _elementwise(bnk.bn_relu_residual_kernel, _elementwise_grid(pixels, channels),
                     (r, unused, t, *bn1.pointers(), unused, unused),
                     (*r.stride(), 0, 0, 0, 0, *t.stride(), pixels, h * w, w, channels, bn1.eps), (r, t),
                     HAS_RESIDUAL=False, COUNT_BATCH=False)
        _gather(t, weight_b, bias_b, s, geo_b, False, adjoint_weight=written_b, **stats_args)

    if running is None:
        stats = torch.empty((4, channels), device=u.device, dtype=torch.float32)
        partials = gather_stats_buffer(u.shape, u.device)  # reused by B: launches run in stream order
        update1, update2 = running_updates if running_updates is not None else (None, None)
        _gather(u, weight_a, bias_a, r, geo_a, False, other=f, other_mode="add", alpha=-1.0,
                stats=partials, stats_mode="moments", reduced=stats[:2], running_update=update1,
                adjoint_weight=written_a)
        b_of_relu_bn1(BatchNormArgs(stats[0], stats[1], *bn1_affine, eps[0]), stats=partials,
                      stats_mode="moments", reduced=stats[2:], running_update=update2)
    else:
        stats = torch.stack([v.float() for v in running])
        _gather(u, weight_a, bias_a, r, geo_a, False, other=f, other_mode="add", alpha=-1.0,
                adjoint_weight=written_a)
        b_of_relu_bn1(BatchNormArgs(stats[0], stats[1], *bn1_affine, eps[0]))
    bn2 = BatchNormArgs(stats[2], stats[3], *bn2_affine, eps[1])
    batches = ((running_updates[0].num_batches, running_updates[1].num_batches) if running_updates is not None
               else (unused,) * 2)
    _elementwise(bnk.bn_relu_residual_kernel, _elementwise_grid(pixels, channels),
                 (s, u, out, *bn2.pointers(), *batches),
                 (*s.stride(), *u.stride(), *out.stride(), pixels, h * w, w, channels, bn2.eps), (s, u, out),
                 HAS_RESIDUAL=True, COUNT_BATCH=running_updates is not None)
    return out, r, s, stats, t, adjoint_a, adjoint_b


def smoothing_step_inference(u: torch.Tensor, f: torch.Tensor, weight_a: torch.Tensor, bias_a: torch.Tensor | None,
                             geo_a: ConvGeometry, weight_b: torch.Tensor, bias_b: torch.Tensor | None,
                             geo_b: ConvGeometry, bn1: BatchNormArgs, bn2: BatchNormArgs) -> torch.Tensor:
    """Eval mode, BatchNorm folded into the convolutions' epilogues: two launches.

    t = relu(bn1(f - A u)) in A's epilogue; u + relu(bn2(B t)) in B's.
    """
    fmt = conv_output_memory_format(u, weight_a)
    t, out = _empty_activation(u, fmt), _empty_activation(u, fmt)
    _gather(u, weight_a, bias_a, t, geo_a, False, other=f, other_mode="add", alpha=-1.0, epilogue_bn=bn1,
            epilogue_bn_relu=True)
    _gather(t, weight_b, bias_b, out, geo_b, False, other=u, other_mode="add_after_bn", epilogue_bn=bn2)
    return out


def smoothing_step_backward(grad_out: torch.Tensor, u: torch.Tensor, weight_a: torch.Tensor, geo_a: ConvGeometry,
                            weight_b: torch.Tensor, geo_b: ConvGeometry, r: torch.Tensor, s: torch.Tensor,
                            t: torch.Tensor, stats: torch.Tensor, bn1_affine: tuple, bn2_affine: tuple,
                            eps: tuple[float, float], batch_stats: bool, has_bias: tuple[bool, bool],
                            needs_weight_grads: tuple[bool, bool], carries: Sequence[tuple] = (),
                            adjoint_weights: tuple = (None, None)) -> tuple:
    """Gradients of the smoothing step, recomputing the relu masks from r and s, and t = relu(bn1(r)) in
    B's grad weight unless the forward pass kept it (``t`` not empty: ``materializes_t``). A^T and B^T
    read A's and B's adjoint weights where the forward wrote them (``adjoint_weights``, not empty).

    Launches: bn2-backward sums, grad s, B^T (+ relu mask of bn1, + bn1-backward sums),
    grad B, grad r, A^T (+ grad_out), grad A. Returns (grad_u, grad_f, grad_weight_a,
    grad_bias_a, grad_weight_b, grad_bias_b, grad_bn1, grad_bn2), grad_bn* (2, C) fp32 holding the
    gradients of beta (row 0) and gamma (row 1).

    ``carries``: up to two gradients of (f, weight_a, bias_a, weight_b, bias_b) from other uses, None
    where a use had none, added to the step's own in the kernels that write them (bn1's backward, the
    grad-weight reductions).
    """
    if len(carries) > 2:
        raise AssertionError(f"a step adds at most two carried gradients per input, got {len(carries)}")
    carry_fs = [c[0] for c in carries if c[0] is not None]
    for carry_f in carry_fs:
        if carry_f.shape != u.shape or carry_f.dtype != u.dtype or carry_f.device != u.device:
            raise AssertionError(f"carried f gradient {tuple(carry_f.shape)} {carry_f.dtype}, expected u's "
                                 f"{tuple(u.shape)} {u.dtype}")
    bnk = _batchnorm_kernels()
    fmt = conv_output_memory_format(u, weight_a)
    n_batch, channels, h, w = u.shape
    pixels = n_batch * h * w
    bn1 = BatchNormArgs(stats[0], stats[1], *bn1_affine, eps[0])
    bn2 = BatchNormArgs(stats[2], stats[3], *bn2_affine, eps[1])
    grid = _elementwise_grid(pixels, channels)

    sums_grid = _elementwise_grid(pixels, channels, _GRAD_SUMS_BLOCK_P)
    partial2 = torch.empty((2, sums_grid[0], channels), device=u.device, dtype=torch.float32)
    sums2 = torch.empty((2, channels), device=u.device, dtype=torch.float32)  # sum g, sum g * s_hat
    _elementwise(bnk.bn_relu_grad_sums_kernel, sums_grid,
                 (grad_out, s, partial2, sums2, arrival_counters(u.device, sums_grid[1]), *bn2.pointers()),
                 (*grad_out.stride(), *s.stride(), pixels, h * w, w, channels, sums_grid[0], bn2.eps), (grad_out, s),
                 block_p=_GRAD_SUMS_BLOCK_P, num_warps=_GRAD_SUMS_WARPS)
    grad_s = _empty_activation(u, fmt)
    unused = scratch(u.device)
    _elementwise(bnk.bn_backward_kernel, grid, (grad_out, s, grad_s, unused, unused, unused, sums2, *bn2.pointers()),
                 (*grad_out.stride(), *s.stride(), *grad_s.stride(), *(0,) * 8, pixels, h * w, w, channels,
                  bn2.eps, 1.0 / pixels), (grad_out, s, grad_s), RELU_MASK=True, BATCH_STATS=batch_stats, CARRIES=0)

    grad_x1 = _empty_activation(u, fmt)  # gradient of bn1(r), through the relu
    sums1 = torch.empty((2, channels), device=u.device, dtype=torch.float32)
    (weight_at, adjoint_a), (weight_bt, adjoint_b) = (_adjoint_or_weight(w, adjoint)
                                                      for w, adjoint in zip((weight_a, weight_b), adjoint_weights))
    _gather(grad_s, weight_bt, None, grad_x1, geo_b, True, other=r, other_mode="relu_grad", epilogue_bn=bn1,
            stats=gather_stats_buffer(u.shape, u.device), stats_mode="bn_grad", reduced=sums1,
            weight_is_adjoint=adjoint_b)
    grad_weight_b = grad_bias_b = None
    if needs_weight_grads[1]:
        b_input, b_input_bn = (t, None) if t.numel() else (r, bn1)  # kept t, or r with bn1 + relu recomputed
        grad_weight_b, grad_bias_b = conv2d_grad_weight(grad_s, b_input, geo_b, has_bias[1], x_bn=b_input_bn,
                                                        memory_format=weight_memory_format(weight_b),
                                                        carries=[c[3:5] for c in carries])
    grad_r = _empty_activation(u, fmt)
    grad_f = _empty_activation(u, fmt) if carry_fs else grad_r  # grad r + f's gradients from other uses
    carry_ptrs, carry_strides = _carry_arguments(carry_fs, unused, 4)
    _elementwise(bnk.bn_backward_kernel, grid,
                 (grad_x1, r, grad_r, *carry_ptrs, grad_f if carry_fs else unused, sums1, *bn1.pointers()),
                 (*grad_x1.stride(), *r.stride(), *grad_r.stride(), *carry_strides,
                  pixels, h * w, w, channels, bn1.eps, 1.0 / pixels),
                 (grad_x1, r, grad_r, *carry_fs, *([grad_f] if carry_fs else [])),
                 RELU_MASK=False, BATCH_STATS=batch_stats, CARRIES=len(carry_fs))

    grad_u = _empty_activation(u, fmt)  # grad_out - A^T grad_r
    _gather(grad_r, weight_at, None, grad_u, geo_a, True, other=grad_out, other_mode="add", alpha=-1.0,
            weight_is_adjoint=adjoint_a)
    grad_weight_a = grad_bias_a = None
    if needs_weight_grads[0]:
        grad_weight_a, grad_bias_a = conv2d_grad_weight(grad_r, u, geo_a, has_bias[0], alpha=-1.0,
                                                        memory_format=weight_memory_format(weight_a),
                                                        carries=[c[1:3] for c in carries])
    return grad_u, grad_f, grad_weight_a, grad_bias_a, grad_weight_b, grad_bias_b, sums1, sums2
