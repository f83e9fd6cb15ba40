"""The convolution's launchers: allocate outputs, pick grids, splits, tiles and precision, launch the kernels
of ``kernels.py`` through launch sites (``runtime.launch_sites``).

Nothing here checks arguments for the user (``functional.py`` does); everything here assumes shapes that
already agree. The fused smoothing step launches the same gather kernel with its fusions (``_gather``).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..runtime import launch_sites
from ..runtime.buffers import arrival_counters, scratch
from ..runtime.triton_support import autotune_enabled, parallel_programs_wanted
from . import tiles
from .geometry import ConvGeometry
from .tiles import (_PIXEL_INDEX_LIMIT, _SMALLEST_CHANNEL_TILE, _UNITS_PER_SPLIT_MIN, _cdiv, _next_power_of_2,
                    channel_alignment, channel_range_alignment, full_channel_blocks, grad_weight_channel_blocks,
                    grad_weight_pixel_box, single_reduced_block, weight_alignment)


@functools.lru_cache(maxsize=None)
def _kernels():
    from . import kernels  # deferred: TRITON_INTERPRET must be read when kernels are defined

    return kernels


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


def channels_strided(t: torch.Tensor) -> bool:
    """Whether t's dim 1 (an activation's channels, a weight's in-channels) holds more than one element and is
    not contiguous: NCHW activations (channels H*W apart) and OIHW weights (KH*KW apart) but 1x1 ones."""
    return t.shape[1] > 1 and t.stride(1) != 1


def with_contiguous_channels(t: torch.Tensor) -> torch.Tensor:
    """t, or where ``channels_strided`` a channels_last copy of it (``relaid``). The convolution kernels load
    a tile's channels in 8- or 16-byte asynchronous copies only where they are contiguous; strided, each
    element is a load of its own and its address a register, and the gathers spill. The copy is one read and one
    write of t."""
    return relaid(t, torch.channels_last) if channels_strided(t) else t


def relaid(t: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """A copy of the (N, C, H, W) tensor t in ``memory_format``, by relayout_kernel (one launch)."""
    out = torch.empty_like(t, memory_format=memory_format)
    if not out.numel():
        return out
    key = ("relayout", t.shape, t.stride(), out.stride(), t.dtype, t.get_device())
    site = launch_sites.SITES.get(key)
    if site is None:
        n_batch, channels, h, w = t.shape
        block_c, block_hw, warps = tiles.relayout_tile(channels, h * w)
        hw_blocks = _cdiv(h * w, block_hw)
        site = launch_sites.add_site(
            key, _kernels().relayout_kernel, (n_batch * hw_blocks, _cdiv(channels, block_c)),
            (*t.stride(), *out.stride(), channels, h, w, hw_blocks),
            {"SRC_PIXELS_DENSE": tiles.rows_dense(t.shape, t.stride()),
             "DST_PIXELS_DENSE": tiles.rows_dense(out.shape, out.stride()),
             "BLOCK_C": block_c, "BLOCK_HW": block_hw}, {"num_warps": warps},
            promises=_relayout_promises, description=f"relayout {tuple(t.shape)} {t.stride()} -> {out.stride()}")
    site.launch((t, out), scratch(t.device))
    return out


_BAND_BLOCK = 1024  # elements per program of banded_weight_kernel


def banded_weight(weight: torch.Tensor, geo: ConvGeometry, vector: int,
                  adjoint_weight: torch.Tensor | None = None) -> torch.Tensor:
    """The band of ``weight`` a forward gather reading an NCHW src in pixel vectors of ``vector`` multiplies
    (banded_weight_kernel: (C_out, KH, D, V, I, V), V*V*D/KW times the weight's size), in one launch that also
    writes ``adjoint_weight`` where given (empty_adjoint_weight)."""
    c_out, in_per_group, kh, kw = weight.shape
    first, count = tiles.vector_offsets(kw, geo.padding[1], vector)
    band = weight.new_empty((c_out, kh, count, vector, in_per_group, vector))
    if not band.numel():
        return band
    key = ("band", weight.shape, weight.stride(), vector, geo.padding[1], geo.groups, weight.dtype,
           weight.get_device(), None if adjoint_weight is None else adjoint_weight.stride())
    site = launch_sites.SITES.get(key)
    if site is None:
        band_programs = _cdiv(band.numel(), _BAND_BLOCK)
        adjoint_programs = 0 if adjoint_weight is None else _cdiv(weight.numel(), _BAND_BLOCK)
        site = launch_sites.add_site(
            key, _kernels().banded_weight_kernel, (band_programs + adjoint_programs,),
            (*weight.stride(), *(adjoint_weight.stride() if adjoint_weight is not None else (0, 0, 0, 0)),
             c_out, in_per_group, kh, kw, c_out // geo.groups, band_programs),
            {"PAD_W": geo.padding[1], "V": vector, "D_MIN": first, "D": count,
             "WRITE_ADJOINT_WEIGHT": adjoint_weight is not None, "BLOCK": _BAND_BLOCK}, {"num_warps": 4},
            description=f"band of {tuple(weight.shape)} {weight.stride()}, pixel vectors of {vector}")
    unused = scratch(weight.device)
    site.launch((weight, band, unused if adjoint_weight is None else adjoint_weight), unused)
    return band


def _relayout_promises(c: dict, pointers: tuple) -> list[str]:
    """A relayout site's ``promises`` (LaunchSite): its pixel flags, from a launch's src and dst."""
    broken = []
    for flag, t in (("SRC_PIXELS_DENSE", pointers[0]), ("DST_PIXELS_DENSE", pointers[1])):
        broken += launch_sites.promise(not c[flag] or tiles.rows_dense(t.shape, t.stride()),
                                       f"{flag}: pixels of {tuple(t.shape)} "
                                       f"{t.stride()} are (h * W + w) * stride_w apart")
    return broken


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
    rows = _cdiv(n_batch * h * w, tiles.GATHER_MIN_BLOCK_P)
    return torch.empty((3, rows, channels), device=device, dtype=torch.float32)


def _gather(src, weight, bias, dst, geo: ConvGeometry, transposed: bool, *, prologue_bn: BatchNormArgs | None = None,
            other: torch.Tensor | None = None, other_mode: str = "none", alpha: float = 1.0,
            epilogue_bn: BatchNormArgs | None = None, epilogue_bn_relu: bool = False,
            stats: torch.Tensor | None = None, stats_mode: str = "none",
            reduced: torch.Tensor | None = None, running_update: RunningStatsUpdate | None = None,
            weight_is_adjoint: bool = False, adjoint_weight: torch.Tensor | None = None,
            band: torch.Tensor | None = None) -> launch_sites.LaunchSite:
    """Run conv2d_gather_kernel: the forward conv, or its adjoint for grad input, with optional fusions.

    ``prologue_bn``: src is read as relu(prologue_bn(src)). ``other_mode``: 'add' (other + alpha * y),
    'add_after_bn' (other + relu(epilogue_bn(y))), 'relu_grad' (y where epilogue_bn(other) > 0).
    ``epilogue_bn_relu``: y = relu(epilogue_bn(y)). ``stats_mode``: 'moments' (the batch mean and
    biased variance of y into ``reduced``, contiguous (2, C) fp32) or 'bn_grad' (sum y and
    sum y * bn_hat(other)), merged in the kernel through the scratch ``stats`` (gather_stats_buffer).
    ``running_update`` (with 'moments'): the merge also updates those running statistics.
    ``weight_is_adjoint`` (transposed): ``weight`` is the adjoint's own, (C_in, C_out // groups, KH, KW),
    as the forward wrote it into ``adjoint_weight`` (see adjoint_weight_wanted). ``band`` (a forward of an
    NCHW src: ``banded_weight``): src is read in pixel vectors against this band of ``weight``. Returns the
    launch's site.
    """
    bn = prologue_bn if prologue_bn is not None else epilogue_bn
    key = ("gather", src.shape, src.stride(), dst.shape, dst.stride(), weight.shape, weight.stride(), src.dtype,
           src.get_device(), geo.site_id, transposed, weight_is_adjoint,
           None if adjoint_weight is None else adjoint_weight.stride(),
           None if bias is None else (bias.stride(0), bias.dtype),
           None if other is None else (other.stride(), other.dtype), other_mode, alpha,
           prologue_bn is not None, epilogue_bn_relu, stats_mode, None if bn is None else bn.signature(),
           None if stats is None else stats.shape[1],
           None if running_update is None else running_update.signature(), _tf32_allowed(),
           None if band is None else band.shape)
    site = launch_sites.SITES.get(key)
    if site is None:
        site = _gather_site(key, src, weight, bias, dst, geo, transposed, prologue_bn, other, other_mode, alpha,
                            epilogue_bn, epilogue_bn_relu, stats, stats_mode, running_update, weight_is_adjoint,
                            adjoint_weight, band)
    unused = scratch(dst.device)
    if band is not None:  # the band where the weight goes, the weight (read by the exact recompute) after it
        weight, adjoint_weight = band, weight
    site.launch((src, weight, unused if adjoint_weight is None else adjoint_weight,
                 unused if bias is None else bias, dst, unused if other is None else other,
                 *((unused,) * 4 if bn is None else bn.pointers()),
                 unused if stats is None else stats, unused if reduced is None else reduced,
                 unused if stats is None else arrival_counters(dst.device, _cdiv(dst.shape[1], _SMALLEST_CHANNEL_TILE)),
                 *((unused,) * 3 if running_update is None else running_update.pointers())), unused)
    return site


def _gather_site(key, src, weight, bias, dst, geo: ConvGeometry, transposed: bool, prologue_bn, other, other_mode: str,
                 alpha: float, epilogue_bn, epilogue_bn_relu: bool, stats, stats_mode: str, running_update,
                 weight_is_adjoint: bool, adjoint_weight, band):
    """The launch site of one _gather key: its grid, runtime scalars, constexprs and tile."""
    kernels = _kernels()
    _check_gather_fusions(prologue_bn, epilogue_bn, epilogue_bn_relu, other_mode, stats_mode, running_update,
                          transposed, weight_is_adjoint, adjoint_weight, band)
    bn = prologue_bn or epilogue_bn
    n_batch, c_dst, h_dst, w_dst = dst.shape
    _, c_red, h_src, w_src = src.shape
    ws = weight.stride()
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
    running_mode, momentum, unbias = _running_update_scalars(running_update)
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
        WIDE_PIXEL_INDEX=pixels >= _PIXEL_INDEX_LIMIT, DST_PIXEL_RUN=tiles.pixel_run(dst.shape, dst.stride()),
        OTHER_PIXEL_RUN=1 if other is None else tiles.pixel_run(other.shape, other.stride()),
        **_vector_constexprs(band, geo),
        INPUT_PRECISION=_input_precision(src.dtype))
    grid = lambda meta: (_cdiv(pixels, meta["BLOCK_P"]), _cdiv(c_dst, meta["BLOCK_DST"]))  # noqa: E731
    # a BatchNorm across the tile: a prologue, the bn_grad sums, or an epilogue's with a store or load along NCHW
    # pixels (at the 16-bit 256-pixel tile's register cap those spilled 8-16 B, sm_90 codegen report)
    pixel_major = constexprs["DST_PIXEL_RUN"] > 1 or constexprs["OTHER_PIXEL_RUN"] > 1
    config = _gather_config(dst_per_group, red_per_group, src.element_size(), pixels, band is not None,
                            prologue_bn is not None or stats_mode == "bn_grad" or (epilogue_bn is not None and
                                                                                   pixel_major))
    constexprs.update(_gather_tile_flags(c_dst, dst_per_group, red_per_group, config))
    description = (f"{'grad input' if transposed else 'forward'} src {tuple(src.shape)} {src.stride()} weight "
                   f"{tuple(weight.shape)} {ws} dst {tuple(dst.shape)} {dst.stride()} {geo.groups} groups {src.dtype}")
    return launch_sites.SITES.put(key, _tiled_site(kernels.conv2d_gather_kernel, grid, rest, constexprs, config,
                                                   _gather_promises(weight_out_is_dst, band is not None),
                                                   description))


def _gather_config(dst_per_group: int, red_per_group: int, element_size: int, pixels: int, pixel_vectors: bool,
                   tile_batchnorm: bool):
    """A gather site's tile: None where launches autotune (MGIAD_KERNELS_AUTOTUNE=1), else the tile policy's."""
    if autotune_enabled():
        return None
    if pixel_vectors:
        return tiles.default_vector_gather_config(element_size)
    return tiles.default_gather_config(dst_per_group, red_per_group, element_size, tiles.gather_pixels_bucket(pixels),
                                       tile_batchnorm=tile_batchnorm)


def _vector_constexprs(band, geo: ConvGeometry) -> dict:
    """PIXEL_VECTOR, VECTOR_D_MIN, VECTOR_D of a gather reading ``band`` (None: no pixel vectors)."""
    if band is None:
        return {"PIXEL_VECTOR": 1, "VECTOR_D_MIN": 0, "VECTOR_D": 1}
    vector = band.shape[3]
    first, count = tiles.vector_offsets(geo.kernel_w, geo.padding[1], vector)
    return {"PIXEL_VECTOR": vector, "VECTOR_D_MIN": first, "VECTOR_D": count}


def _gather_promises(weight_out_is_dst: bool, vectors: bool = False) -> Callable:
    """A gather site's ``promises`` (LaunchSite): its alignment and whole-tile constexprs, recomputed by tiles.py's
    helpers from a launch's src, weight and dst (the group sizes from the weight's dim 1: reduced channels per
    group where ``weight_out_is_dst``, else dst ones) for the site's tile, or every tile of the autotune list."""

    def promises(c: dict, pointers: tuple) -> list[str]:
        src, weight, dst = pointers[0], pointers[2 if vectors else 1], pointers[4]
        other = pointers[5] if len(pointers) > 5 else None
        n_batch, c_dst, h_dst, w_dst = dst.shape
        c_red, per_group = src.shape[1], weight.shape[1]
        groups = (c_red if weight_out_is_dst else c_dst) // per_group
        dst_pg, red_pg = c_dst // groups, c_red // groups
        tile_shapes = _tile_shapes(c, "BLOCK_DST", "BLOCK_RED", _kernels().conv2d_gather_kernel)
        red_range = tiles.channel_range_alignment(c_dst, dst_pg, red_pg, sorted({t[0] for t in tile_shapes}))
        promise, pixels = launch_sites.promise, n_batch * h_dst * w_dst
        return [*promise(tiles.channel_alignment(red_pg) % c["RED_ALIGN"] == 0,
                         f"RED_ALIGN={c['RED_ALIGN']} divides the reduced channels per group ({red_pg})"),
                *promise(tiles.channel_alignment(dst_pg) % c["DST_ALIGN"] == 0,
                         f"DST_ALIGN={c['DST_ALIGN']} divides the dst channels per group ({dst_pg})"),
                *promise(tiles.weight_alignment(weight.stride()) % c["W_ALIGN"] == 0,
                         f"W_ALIGN={c['W_ALIGN']} divides the weight's out-channel and tap strides {weight.stride()}"),
                *promise(red_range % c["RED_RANGE_ALIGN"] == 0,
                         f"RED_RANGE_ALIGN={c['RED_RANGE_ALIGN']} divides every tile's reduced-channel range "
                         f"(multiples of {red_range} for tiles {tile_shapes})"),
                *promise(not c["FULL_CHANNEL_BLOCKS"] or tiles.full_channel_blocks(c_dst, dst_pg, red_pg, tile_shapes),
                         f"FULL_CHANNEL_BLOCKS: every channel tile of {tile_shapes} is whole and its reduced channels "
                         f"whole blocks ({c_dst} dst channels, groups of {dst_pg} and {red_pg})"),
                *promise(not c["SINGLE_RED_BLOCK"] or tiles.single_reduced_block(c_dst, dst_pg, red_pg, tile_shapes),
                         f"SINGLE_RED_BLOCK: every channel tile of {tile_shapes} reduces over one block "
                         f"({c_dst} dst channels, groups of {dst_pg} and {red_pg})"),
                *promise(c["WIDE_PIXEL_INDEX"] or pixels < _PIXEL_INDEX_LIMIT,
                         f"WIDE_PIXEL_INDEX=False: the dst pixels ({pixels}) are below 2^31"),
                *promise(tiles.pixel_run(dst.shape, dst.stride()) % c["DST_PIXEL_RUN"] == 0,
                         f"DST_PIXEL_RUN={c['DST_PIXEL_RUN']}: dst {tuple(dst.shape)} {dst.stride()} has its pixels "
                         f"unit-strided and dense, in runs of it"),
                *_other_pixel_run_promise(c["OTHER_PIXEL_RUN"], other),
                *promise(c["PIXEL_VECTOR"] == 1 or tiles.pixel_vector(
                    src.shape, src.stride(), dst.shape, src.element_size(), c["STRIDE_W"], c["DIL_W"], weight.shape[1])
                    == c["PIXEL_VECTOR"], f"PIXEL_VECTOR={c['PIXEL_VECTOR']}: src {tuple(src.shape)} {src.stride()} "
                    "is NCHW in dense rows, its widths and strides multiples of it")]

    return promises


def _other_pixel_run_promise(run: int, other) -> list[str]:
    """The gather's OTHER_PIXEL_RUN promise (launch_sites.promise) for the tensor ``other`` (None: not passed)."""
    if run == 1:
        return []
    shown = "not given" if other is None else f"{tuple(other.shape)} {other.stride()}"
    return launch_sites.promise(other is not None and tiles.pixel_run(other.shape, other.stride()) % run == 0,
                                f"OTHER_PIXEL_RUN={run}: other ({shown}) has its pixels unit-strided and dense, "
                                "in runs of it")


def _tile_shapes(constexprs: dict, first: str, second: str, kernel) -> list[tuple[int, int]]:
    """The (first, second) channel tiles a site may launch: its own tile's, or (autotuned: no tile in its
    constexprs) those of every config of ``kernel``'s autotune list."""
    if first in constexprs:
        return [(constexprs[first], constexprs[second])]
    return sorted({(config.kwargs[first], config.kwargs[second]) for config in kernel.configs})


def _check_gather_fusions(prologue_bn, epilogue_bn, epilogue_bn_relu: bool, other_mode: str, stats_mode: str,
                          running_update, transposed: bool, weight_is_adjoint: bool, adjoint_weight, band) -> None:
    """The launcher's own promises about a gather's fusions (not the user's arguments: those are checked before)."""
    if band is not None and (transposed or prologue_bn is not None or adjoint_weight is not None):
        raise AssertionError("pixel vectors read a forward's src with no prologue; the band's builder writes the "
                             "adjoint weight")
    if prologue_bn is not None and epilogue_bn is not None:
        raise AssertionError("a gather launch applies at most one BatchNorm")
    if (epilogue_bn_relu or other_mode in ("add_after_bn", "relu_grad") or stats_mode == "bn_grad") \
            and epilogue_bn is None:
        raise AssertionError("this epilogue needs epilogue_bn")
    if running_update is not None and stats_mode != "moments":
        raise AssertionError("running statistics are updated from merged moments only")
    if weight_is_adjoint and (not transposed or adjoint_weight is not None):
        raise AssertionError("the adjoint's weight is read by grad input, written by the forward")


def _running_update_scalars(running_update) -> tuple[str, float, float]:
    """(RUNNING_UPDATE mode, momentum, unbiasing factor N/(N-1)) of a gather that updates running statistics."""
    if running_update is None:
        return "none", 0.0, 1.0
    if running_update.momentum is None:
        return "cumulative", 0.0, running_update.count / (running_update.count - 1)
    return "momentum", float(running_update.momentum), running_update.count / (running_update.count - 1)


def _gather_tile_flags(c_dst: int, dst_per_group: int, red_per_group: int, config) -> dict:
    """FULL_CHANNEL_BLOCKS, SINGLE_RED_BLOCK and RED_RANGE_ALIGN for ``config``'s tile, or (autotuned: None)
    for whichever tile of the autotune list the autotuner picks."""
    configs = _kernels().conv2d_gather_kernel.configs if config is None else (config,)
    tile_shapes = [(c.kwargs["BLOCK_DST"], c.kwargs["BLOCK_RED"]) for c in configs]
    # a register-capped tile keeps the flat loop: the block's offsets and masks held across the taps spill at
    # the cap (sm_90 codegen report, bf16 256x32x32 at 168 registers: 16 bytes)
    single = single_reduced_block(c_dst, dst_per_group, red_per_group, tile_shapes) and not (
        config is not None and config.maxnreg)
    return {"FULL_CHANNEL_BLOCKS": full_channel_blocks(c_dst, dst_per_group, red_per_group, tile_shapes),
            "SINGLE_RED_BLOCK": single,
            "RED_RANGE_ALIGN": channel_range_alignment(c_dst, dst_per_group, red_per_group,
                                                       sorted({c.kwargs["BLOCK_DST"] for c in configs}))}


@functools.lru_cache(maxsize=None)
def _fusion_modes() -> tuple[dict, dict, dict]:
    """OTHER_MODE, STATS and RUNNING_UPDATE by name, as the plain ints the kernel compares with its
    constexpr globals."""
    kernels = _kernels()
    return ({"none": kernels.OTHER_NONE.value, "add": kernels.OTHER_ADD.value,
             "add_after_bn": kernels.OTHER_ADD_AFTER_BN.value, "relu_grad": kernels.OTHER_RELU_GRAD.value},
            {"none": kernels.STATS_NONE.value, "moments": kernels.STATS_MOMENTS.value,
             "bn_grad": kernels.STATS_BN_GRAD.value},
            {"none": kernels.RUNNING_NONE.value, "momentum": kernels.RUNNING_MOMENTUM.value,
             "cumulative": kernels.RUNNING_CUMULATIVE.value})


def _tiled_site(kernel, grid, rest: tuple, constexprs: dict, config, promises: Callable,
                description: str) -> launch_sites.LaunchSite:
    """The site of an autotuned kernel: through the autotuner when ``config`` is None
    (MGIAD_KERNELS_AUTOTUNE=1), else with ``config``'s tile (no benchmarking, no Triton dispatch once warm).
    ``promises``, ``description``: the site's (LaunchSite). The caller keeps it in its own cache."""
    if config is None:
        return launch_sites.LaunchSite(kernel, grid, rest, constexprs, {}, through_triton=True, promises=promises,
                                       description=description)
    constexprs = {**constexprs, **config.kwargs}
    return launch_sites.LaunchSite(kernel.fn, grid(constexprs), rest, constexprs,
                                   {"num_warps": config.num_warps, "num_stages": config.num_stages,
                                    **({"maxnreg": config.maxnreg} if config.maxnreg else {})},
                                   promises=promises, description=description)


# What every site key holds besides its arguments: fp32 dots' precision, PyTorch's tf32 switch for cuDNN
# (``torch.backends.cudnn.allow_tf32``), read at each launch (the C getter: a Python wrapper would cost a frame
# per launch). Whether launches autotune is read once per process, when the first site is made.
_tf32_allowed = torch._C._get_cudnn_allow_tf32


_FORWARD_SITES = launch_sites.SiteCache()  # conv2d_forward's key (the device by index: x.get_device() is
#                                            cheaper than x.device) -> its call (_forward_call)


def conv2d_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, other: torch.Tensor | None,
                   alpha: float, geo: ConvGeometry, adjoint_weight: torch.Tensor | None = None) -> torch.Tensor:
    """y = other + alpha * (conv2d(x, weight) + bias) in one launch (``other`` None: no sum), after the weight's
    band (an NCHW x read in pixel vectors) or channels_last copies of x and the weight (their channels strided
    otherwise): docs/design.md, "Every layout".

    F.conv2d's semantics; the sum is the FAS residual and correction (MGiaD eq. 6-7, Alg. 2).
    ``adjoint_weight`` (empty_adjoint_weight): the launch (or the band's) also writes the weight of grad input's
    convolution into it, for conv2d_grad_input. A call is a key lookup, the output's allocation and the launches
    (warm: one generated function, ``_forward_call``).
    """
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
    # an NCHW x in pixel vectors (against a band of the weight), else x and the weight as channels_last copies
    vector = tiles.pixel_vector(x.shape, x.stride(), y.shape, x.element_size(), geo.stride[1], geo.dilation[1],
                                geo.in_per_group)
    prepare = _forward_inputs((vector, channels_strided(x) and vector == 1, channels_strided(weight) and vector == 1),
                              geo)
    gather = None
    if y.numel():  # else N = 0 (grad input is empty too) or C_out = 0 (so is the adjoint's weight)
        fusions = dict(other=other, other_mode="none" if other is None else "add", alpha=alpha)
        src, read_weight, third = (x, weight, adjoint_weight) if prepare is None else prepare(x, weight,
                                                                                               adjoint_weight)
        if vector > 1:  # the band in the weight's slot, the weight in the adjoint weight's
            gather = _gather(src, third, bias, y, geo, transposed=False, band=read_weight, **fusions)
        else:
            gather = _gather(src, read_weight, bias, y, geo, transposed=False, adjoint_weight=third, **fusions)
    like_input = y.shape == x.shape and y.stride() == x.stride()  # so x is dense as y is
    _FORWARD_SITES.put(key, _forward_call(key, y.shape, y.stride(), gather, scratch(x.device), like_input, prepare))
    return y


# conv2d_forward's pointers (the gather kernel's): src, weight, adjoint weight, bias, dst, other, then ten the
# forward never uses; as source, in the warm call's names
_FORWARD_POINTERS = ("x", "weight", "adjoint_weight", "bias", "y", "other") + ("unused",) * 10


def _forward_call(key: tuple, shape, strides, gather, unused, like_input: bool,
                  prepare: Callable | None) -> Callable:
    """conv2d_forward's call for one site key: call(x, weight, bias, other, adjoint_weight) -> y (allocated
    with ``shape`` and ``strides``, launched on the ``gather`` site). Once that site has made its warm launch,
    the key's call becomes one generated function: allocation, the inputs' preparation, launch
    (launch_sites.warm_function).

    ``like_input``: y has x's shape and strides (a same-size conv, as the smoothing steps' are), x dense; the
    warm call then allocates it as ``torch.empty_like(x)``, which gives a dense input's strides and is cheaper
    than ``new_empty_strided``'s shape and strides parsed at each call. ``prepare`` (``_forward_inputs``): what the
    launch reads in x's, the weight's and the adjoint weight's slots, made after the allocation."""

    def call(x, weight, bias, other, adjoint_weight):
        y = x.new_empty_strided(shape, strides)  # x's dtype and device: cheaper than torch.empty_strided's keywords
        if gather is not None:
            if prepare is not None:
                x, weight, adjoint_weight = prepare(x, weight, adjoint_weight)
            gather.launch((x, weight, unused if adjoint_weight is None else adjoint_weight,
                           unused if bias is None else bias, y, unused if other is None else other,
                           unused, unused, unused, unused, unused, unused, unused, unused, unused, unused), unused)
            before = "    y = empty_like(x)\n" if like_input else "    y = x.new_empty_strided(shape, strides)\n"
            if prepare is not None:
                before += "    x, weight, adjoint_weight = prepare(x, weight, adjoint_weight)\n"
            warm = launch_sites.warm_function(
                gather, "x, weight, bias, other, adjoint_weight", _FORWARD_POINTERS, before, "y",
                bound=dict(shape=shape, strides=strides, empty_like=torch.empty_like, prepare=prepare),
                name="conv2d_forward_call")
            if warm is not None:
                warm.launch_site = gather  # held: the warm function refers to it weakly
                _FORWARD_SITES[key] = warm
        return y

    call.launch_site = gather
    return call


def _forward_inputs(relay: tuple, geo: ConvGeometry) -> Callable | None:
    """What a forward launch reads in the pointer slots of x, the weight and the adjoint weight, from the inputs
    (None: the inputs themselves): with pixel vectors (``relay[0]`` > 1) x, the weight's band and the weight (the
    band's launch writes the adjoint weight); else channels_last copies of x and the weight where ``relay[1:]``
    says, and the adjoint weight."""
    vector, copy_x, copy_weight = relay
    if vector > 1:
        return lambda x, weight, adjoint_weight: (x, banded_weight(weight, geo, vector, adjoint_weight), weight)
    if not (copy_x or copy_weight):
        return None
    return lambda x, weight, adjoint_weight: (relaid(x, torch.channels_last) if copy_x else x,
                                             relaid(weight, torch.channels_last) if copy_weight else weight,
                                             adjoint_weight)


def adjoint_weight_wanted(dtype: torch.dtype) -> bool:
    """Whether a forward that grad input will follow writes the adjoint's weight for it (fp32).

    Grad input convolves grad_y with the weight's taps, its out-channels reduced over. A tf32 dot needs
    that operand K-major in shared memory, but a channels_last weight has its in-channels contiguous, so
    it loaded 4 bytes per async copy (sm_90 codegen report: grad input, B^T and A^T at every
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
        _gather(with_contiguous_channels(grad_y), with_contiguous_channels(weight), None, grad_x, geo,
                transposed=True, alpha=alpha, weight_is_adjoint=is_adjoint)
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
    x, grad_y = with_contiguous_channels(x), with_contiguous_channels(grad_y)
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


_GRAD_WEIGHT_SITES = launch_sites.SiteCache()  # conv2d_grad_weight's key -> (site, grad_w strides, partials'
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
    kernels = _kernels()
    config = None if autotune_enabled() else tiles.default_grad_weight_config(geo.out_per_group,
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
    configs = kernels.conv2d_grad_weight_kernel.configs if config is None else (config,)
    constexprs["OUT_ALIGN"], constexprs["IN_ALIGN"], constexprs["FULL_CHANNEL_BLOCKS"] = grad_weight_channel_blocks(
        c_out, geo.out_per_group, geo.in_per_group, sorted({(c.kwargs["BLOCK_OUT"], c.kwargs["BLOCK_IN"])
                                                            for c in configs}))
    constexprs["FULL_BOXES"] = n_batch % tile[0] == 0 and h_out % tile[1] == 0 and w_out % tile[2] == 0
    grid = lambda meta: (geo.kernel_h, _cdiv(c_out, meta["BLOCK_OUT"]), splits)  # noqa: E731
    site = _tiled_site(kernels.conv2d_grad_weight_kernel, grid, rest, constexprs, config, _grad_weight_promises,
                       f"x {tuple(x.shape)} {x.stride()} grad_y {tuple(grad_y.shape)} {grad_y.stride()} weight "
                       f"{w_shape} {w_strides} {geo.groups} groups {x.dtype}")
    counters = geo.kernel_h * _cdiv(c_out, _SMALLEST_CHANNEL_TILE) * _cdiv(c_in, _SMALLEST_CHANNEL_TILE)
    return site, w_strides, ((splits, *w_shape), (splits, *g_shape)), counters, scratch(x.device)


def _grad_weight_promises(c: dict, pointers: tuple) -> list[str]:
    """A grad-weight site's ``promises`` (LaunchSite): its channel flags, recomputed by tiles.py's helper from a
    launch's x, grad_y and grad_w (the group sizes from grad_w's dim 1, the in-channels per group) for the site's
    tile, or every tile of the autotune list; its pixel flags from grad_y's sizes and the site's pixel box."""
    x, grad_y, grad_w = pointers[0], pointers[1], pointers[2]
    n_batch, c_out, h_out, w_out = grad_y.shape
    in_pg = grad_w.shape[1]
    groups = x.shape[1] // in_pg
    tile_shapes = _tile_shapes(c, "BLOCK_OUT", "BLOCK_IN", _kernels().conv2d_grad_weight_kernel)
    out_align, in_align, full = tiles.grad_weight_channel_blocks(c_out, c_out // groups, in_pg, tile_shapes)
    box = (c["TILE_N"], c["TILE_H"], c["TILE_W"])
    promise, pixels = launch_sites.promise, n_batch * h_out * w_out
    return [*promise(out_align % c["OUT_ALIGN"] == 0, f"OUT_ALIGN={c['OUT_ALIGN']} divides C_out ({c_out})"),
            *promise(in_align % c["IN_ALIGN"] == 0,
                     f"IN_ALIGN={c['IN_ALIGN']} divides every tile's input-channel range (multiples of {in_align} "
                     f"for tiles {tile_shapes})"),
            *promise(not c["FULL_CHANNEL_BLOCKS"] or full,
                     f"FULL_CHANNEL_BLOCKS: every tile of {tile_shapes} is whole and its input channels whole blocks "
                     f"({c_out} out channels, {groups} groups)"),
            *promise(not c["FULL_BOXES"] or all(size % side == 0 for size, side in zip((n_batch, h_out, w_out), box)),
                     f"FULL_BOXES: N, H_out, W_out {(n_batch, h_out, w_out)} are multiples of the pixel box {box}"),
            *promise(c["WIDE_PIXEL_INDEX"] or pixels < _PIXEL_INDEX_LIMIT,
                     f"WIDE_PIXEL_INDEX=False: the output pixels ({pixels}) are below 2^31")]


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


