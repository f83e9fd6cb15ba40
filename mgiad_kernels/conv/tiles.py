"""The convolution kernels' tile policy: the configs autotuning benchmarks, the default tile per launch key, the
pixel box of grad weight, and the alignment and whole-tile flags a launch derives from its tile.

Plain Python: triton is imported where a config is made, so importing this module needs no triton.
"""
from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Sequence

from ..runtime.triton_support import interpreter_enabled

if TYPE_CHECKING:
    import triton


def _config(blocks: dict, num_warps: int = 4, num_stages: int = 3, maxnreg: int | None = None):
    """A tile as the kernels' launch and autotuner take it (triton.Config)."""
    import triton

    return triton.Config(blocks, num_warps=num_warps, num_stages=num_stages, maxnreg=maxnreg)

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



GATHER_MIN_BLOCK_P = 64  # the smallest BLOCK_P of every gather tile: sizes the statistics buffers


# ptxas's own register choice for the 16-bit 256x32x32 gather tile is 165-176 registers, and from 169 on
# a 4-warp CTA fits 2 times per SM instead of 3; capped at 168 (.maxnreg) it spills in no launch that
# takes it by default (codegen report) and issues ~5% more instructions.
_WIDE_GATHER_MAX_REGISTERS = 168

# ptxas's own register choice for the 4-warp 16x16 grad-weight tile spilled 8 B at 128 registers (bf16 g_s = 4,
# BatchNorm recompute; 64-bit loads); told it may use 192 (.maxnreg: at least 2 CTAs of 4 warps per SM) it
# spills at no shape of the codegen report and issues 2-6% fewer instructions in bf16 (fp32: -6% to +2%). At
# 168 the fp32 tile spilled 32 B. The 32x32 tile (g_s >= 32) needs 237-255 and keeps ptxas's choice.
_GRAD_WEIGHT_MAX_REGISTERS = 192


def gather_configs() -> list:
    """The tiles MGIAD_KERNELS_AUTOTUNE=1 benchmarks (one under the interpreter): the default tiles (the
    16-bit 256x32x32 one spills in fp32, the 16-bit 512x16x16 one in fp32 with a BatchNorm prologue, where
    the autotuner's benchmarks weigh them) and others that spill
    at no shape of the codegen report (benchmarks/results/codegen-sm90.md; 64-128 wide channel tiles
    spilled 0.1-4 KB per thread on sm_90 and are not listed)."""
    if interpreter_enabled():  # large blocks keep the interpreter fast
        return [_config(_INTERPRETER_GATHER)]
    return [
        _config({"BLOCK_P": bp, "BLOCK_DST": bd, "BLOCK_RED": br}, num_warps=w, num_stages=s)
        for bp, bd, br, w, s in [
            (128, 32, 32, 4, 3), (64, 16, 16, 4, 3), (128, 16, 16, 4, 3), (256, 32, 32, 8, 3), (256, 16, 16, 4, 2),
            (512, 16, 16, 4, 2),
        ]
    ] + [_config({"BLOCK_P": 256, "BLOCK_DST": 32, "BLOCK_RED": 32}, num_warps=4, num_stages=2,
                       maxnreg=_WIDE_GATHER_MAX_REGISTERS)]  # the 16-bit default; it spills in fp32


def grad_weight_configs() -> list:
    """The tiles MGIAD_KERNELS_AUTOTUNE=1 benchmarks (one under the interpreter): the default tile and the
    others that spill at no shape of the codegen report (64 wide channel tiles spilled up to 352 B, the
    default tile at three stages 8-16 B with the BatchNorm recompute)."""
    if interpreter_enabled():
        return [_config(_INTERPRETER_GRAD_WEIGHT)]
    return [
        _config({"BLOCK_OUT": bo, "BLOCK_IN": bi}, num_warps=w, num_stages=s, maxnreg=r)
        for bo, bi, w, s, r in [(16, 16, 4, 2, _GRAD_WEIGHT_MAX_REGISTERS), (32, 16, 4, 3, None), (16, 16, 8, 3, None)]
    ]


# the interpreter's tiles: large blocks keep it fast
_INTERPRETER_GATHER = {"BLOCK_P": 128, "BLOCK_DST": 32, "BLOCK_RED": 32}
_INTERPRETER_GRAD_WEIGHT = {"BLOCK_OUT": 32, "BLOCK_IN": 32}


def _channel_tile(per_group: int) -> int:
    """A channel tile for groups of ``per_group``: the group size rounded up to a power of two, at least
    16 (the narrowest dot) and at most 32. A tile spanning k groups is block-diagonal and does k times
    the MMA work it needs, so small groups get the narrowest tile."""
    return min(32, max(16, _next_power_of_2(max(per_group, 1))))


GATHER_WIDE_PIXELS = 4096  # the pixel-count bucket from which the default gather tile is 128 pixels wide
GATHER_WIDE_HALF_PIXELS = 8192  # from which a 16-bit 32x32 one is 256 pixels wide
GATHER_WIDEST_PIXELS = 32768  # and from which the 16x16 ones are 256 (fp32) or 512 (16-bit) pixels wide


def _wide_channel_tile(per_group: int) -> int:
    """A gather channel tile 32 wide wherever it spans at most 4 groups (at most 4x the MMA work it needs,
    the codegen report), else the narrowest tile: each step's weight tile and pixel addressing serve twice the
    channels. A 16-wide 16-bit weight tile is 2 elements per thread, so its loads are 32-bit; at 32 wide
    they are 128-bit (codegen report, 128x32x32 at g_s = 8)."""
    return 32 if 4 * per_group >= 32 else _channel_tile(per_group)


def gather_pixels_bucket(pixels: int) -> int:
    """The pixel-count bucket of a gather launch's output: 0 below GATHER_WIDE_PIXELS, 1 below
    GATHER_WIDE_HALF_PIXELS, 2 below GATHER_WIDEST_PIXELS, else 3."""
    return sum(pixels >= bound for bound in (GATHER_WIDE_PIXELS, GATHER_WIDE_HALF_PIXELS, GATHER_WIDEST_PIXELS))


@functools.lru_cache(maxsize=None)
def default_gather_config(dst_per_group: int, red_per_group: int, element_size: int, pixels_bucket: int,
                          tile_batchnorm: bool = False) -> "triton.Config":
    """The gather tile launched when autotuning is off (the default), from what changes the best tile:
    the group sizes, the element size, the pixel-count bucket (``gather_pixels_bucket``) and whether the
    launch applies a BatchNorm across its tile (``tile_batchnorm``: a prologue relu(bn(src)) or the
    bn_grad sums of the smoothing step's B^T), so a first training step compiles one variant per key and
    benchmarks nothing.

    From the codegen report's sweep on sm_90 (benchmarks/results/codegen-sm90.md, N=128, every shape):
    wider pixel tiles issue fewer instructions per pixel, as a CTA's fixed work (the pixel decomposition,
    the pipeline's prologue, the epilogue) and each step's weight tile are shared by more pixels. fp32
    256x16x16 at two stages takes 128 registers, 4 CTAs per SM, 0.63 of copy bandwidth at C=64 H=32 g_s=8
    by the codegen report's model, against 0.47 at 128x16x16 and 0.26 at 64x16x16. 16-bit 16x16 tiles (g_s = 4)
    take 512 pixels from GATHER_WIDEST_PIXELS: 0.70 against 0.50 at 256 pixels and 0.27 at 128 (C=128
    H=16; 219 SASS instructions per step for 512 pixels against 160 for 256, the weight tile and the tap's
    bookkeeping shared by twice the pixels) at 176-180 registers, 2 CTAs per SM; a BatchNorm across the
    tile takes 236-254 there, so those launches keep 256. 16-bit 256x32x32 (g_s >= 8) at most 168 registers
    (_WIDE_GATHER_MAX_REGISTERS) 0.65 against 0.47 (C=64 H=32), and from GATHER_WIDE_HALF_PIXELS on: at
    C=256 H=8 (8192 pixels, 256 CTAs on 132 SMs at 3 CTAs per SM) 0.73 against 0.49 at 128 pixels; with a
    BatchNorm across the tile that tile spills or needs 233-255 registers, so those launches keep 128
    pixels. Below GATHER_WIDEST_PIXELS fp32 tiles are 32 channels wide where that spans at most 4 groups
    (C=256 H=8 g_s=8: 128x32x32 0.63, 128-162 registers, against 0.48 at 128x16x16), but for a BatchNorm
    across the tile (206 registers). Fewer pixels keep narrower tiles, so the grid still fills the SMs:
    64 pixels below GATHER_WIDE_PIXELS, else 128 but where given above."""
    if interpreter_enabled():
        return _config(_INTERPRETER_GATHER)
    wide_channels = element_size == 2 or (pixels_bucket in (1, 2) and not tile_batchnorm)
    channel_tile = _wide_channel_tile if wide_channels else _channel_tile
    block_dst, block_red = channel_tile(dst_per_group), channel_tile(red_per_group)
    narrow = block_dst == block_red == 16
    # 32-wide 16-bit tiles capped at 3 CTAs' registers; the swept fp32 256-pixel tiles with 32-wide ones
    # take 8 warps or 239 registers
    wide_half = element_size == 2 and block_dst == block_red == 32 and not tile_batchnorm
    if pixels_bucket == 0:
        block_p = 64
    elif pixels_bucket == 3 and narrow:
        block_p = 512 if element_size == 2 and not tile_batchnorm else 256
    elif pixels_bucket >= 2 and wide_half:
        block_p = 256
    else:
        block_p = 128
    return _config({"BLOCK_P": block_p, "BLOCK_DST": block_dst, "BLOCK_RED": block_red}, num_warps=4,
                         num_stages=2 if block_p >= 256 else 3,
                         maxnreg=_WIDE_GATHER_MAX_REGISTERS if block_p == 256 and not narrow else None)


@functools.lru_cache(maxsize=None)
def default_grad_weight_config(out_per_group: int, in_per_group: int) -> "triton.Config":
    """The grad-weight tile launched when autotuning is off (the default), chosen from the group sizes.
    Two stages: on sm_90 (codegen report, 16x16 channel tile, a kernel row of 3 taps, g_s = 8) the loop
    issues 5-10% fewer instructions than with three, and the bf16 BatchNorm-recompute variant does not
    spill (it spilled 8 B at three stages); wider channel tiles or 8 warps issue more per pixel.
    16x16 tiles capped at _GRAD_WEIGHT_MAX_REGISTERS (see there)."""
    if interpreter_enabled():
        return _config(_INTERPRETER_GRAD_WEIGHT)
    block_out, block_in = _channel_tile(out_per_group), _channel_tile(in_per_group)
    narrow = block_out == block_in == 16  # 32-wide tiles take 237-255 registers: capped at 192 they spill
    return _config({"BLOCK_OUT": block_out, "BLOCK_IN": block_in}, num_warps=4, num_stages=2,
                         maxnreg=_GRAD_WEIGHT_MAX_REGISTERS if narrow else None)


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


def relayout_tile(channels: int, pixels: int) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_HW, warps) of relayout_kernel for images of ``channels`` x ``pixels``: 32 x 64 over 4 warps
    for activations (bytes-bound by the codegen report's model), narrower for a weight's few in-channels and
    taps (a 3x3 weight of 8 in-channels: 8 x 16 over one warp), whose copy is one program per out-channel and
    otherwise issues mostly masked lanes."""
    block_c = min(32, _next_power_of_2(max(channels, 1)))
    block_hw = min(64, max(16, _next_power_of_2(max(pixels, 1))))
    return block_c, block_hw, max(1, min(4, block_c * block_hw // 512))


# The pixels of a vector of the gather's NCHW reads: 16 bytes in fp32, 8 in 16-bit (the codegen criteria's 64-bit
# floor). Wider vectors do more of the band's MMA work (V*D/KW times the taps'); 16-bit vectors of 8 leave 32
# vectors per 256-pixel tile, under wgmma's 64 rows.
PIXEL_VECTOR = 4


# The most in-channels per group read in pixel vectors: the band does PIXEL_VECTOR*D/KW times the taps' MMA work
# (4x at 3x3) and holds PIXEL_VECTOR**2*D/KW times the weight (16x), both growing with the group; the codegen
# report's shapes and model layers hold the layout targets up to 16 (it bounds the band below 2^31 elements too).
VECTOR_MAX_GROUP = 16


def rows_dense(shape: Sequence[int], strides: Sequence[int]) -> bool:
    """Pixel (h, w) of each image of an (N, C, H, W) tensor at (h * W + w) * stride_w: no gap between rows."""
    return shape[2] == 1 or strides[2] == shape[3] * strides[3]


def unit_stride_rows(shape: Sequence[int], strides: Sequence[int]) -> bool:
    """An (N, C, H, W) tensor's pixels unit-strided in dense rows, its channels strided (NCHW within each image)."""
    return strides[3] == 1 and rows_dense(shape, strides) and (shape[1] == 1 or strides[1] != 1)


def pixel_vector(src_shape, src_strides, dst_shape, element_size: int, stride_w: int, dilation_w: int,
                 in_per_group: int) -> int:
    """The gather's PIXEL_VECTOR for a forward convolution of an NCHW src: PIXEL_VECTOR pixels where src has its
    channels strided and its pixels unit-strided in dense rows, the convolution steps and dilates its rows by 1,
    the vector divides both images' widths and src's strides (every vector lies in one row, aligned) and the
    groups are at most VECTOR_MAX_GROUP in-channels; else 1 (src is then read from a channels_last copy)."""
    vector = PIXEL_VECTOR if element_size in (2, 4) and in_per_group <= VECTOR_MAX_GROUP else 1
    _, channels, _, w = src_shape
    stride_n, stride_c, stride_h, _ = src_strides
    fits = (vector > 1 and stride_w == 1 and dilation_w == 1 and channels > 1
            and unit_stride_rows(src_shape, src_strides) and w % vector == 0 and dst_shape[3] % vector == 0
            and stride_n % vector == 0 and stride_c % vector == 0 and stride_h % vector == 0)
    return vector if fits else 1


def vector_offsets(kernel_w: int, pad_w: int, vector: int) -> tuple[int, int]:
    """(first, count) of the src vector offsets d whose lanes a row of ``kernel_w`` taps reaches from an output
    vector: src column V*(j + d) + m for output column V*j + l, tap kw = V*d + m - l + pad_w."""
    first = -pad_w // vector
    return first, (vector - 1 + kernel_w - 1 - pad_w) // vector - first + 1


@functools.lru_cache(maxsize=None)
def default_vector_gather_config(element_size: int) -> "triton.Config":
    """The gather tile launched with pixel vectors when autotuning is off: 16x16 channel tiles, as the band's dots
    are PIXEL_VECTOR times as wide and deep (64x64), over 256 pixels in fp32 and 512 in 16-bit.

    From the sm_90 codegen report (N=128, g_s=8, NCHW/OIHW): fp32 256 pixels, 0.65-0.68 of copy bandwidth for
    the conv forward (band launch included), 2 CTAs per SM; 512 pixels reached 0.76-0.83 on 145 KB of shared
    memory, one CTA of 4 warps per SM, too few to hide a GPU's latency, which the model does not price. bf16 512
    pixels 0.55-0.59 at 195 registers, against 0.38-0.41 at 256 (a band tile serves twice the pixels)."""
    if interpreter_enabled():
        return _config(_INTERPRETER_GATHER)
    block_p = 256 if element_size == 4 else 512
    return _config({"BLOCK_P": block_p, "BLOCK_DST": 16, "BLOCK_RED": 16}, num_warps=4, num_stages=3)


def pixel_run(shape: Sequence[int], strides: Sequence[int]) -> int:
    """The gather's DST_PIXEL_RUN for a dst of ``shape`` and ``strides``: where its pixels are unit-strided and
    dense (NCHW), the largest power of two, at most 16, dividing H * W (it divides every BLOCK_P too, all
    multiples of GATHER_MIN_BLOCK_P); else 1. The tile's pixels then lie in aligned runs of it within one image,
    and its store goes in vectors along them."""
    pixels = shape[2] * shape[3]
    if not unit_stride_rows(shape, strides) or not pixels:
        return 1
    return min(16, GATHER_MIN_BLOCK_P, pixels & -pixels)


def weight_alignment(strides: Sequence[int]) -> int:
    """The largest power of two, at most 16, dividing a weight's out-channel and tap strides (0 divides by
    anything): 16 / element size of it make a vector load along the in-channels aligned where their stride is 1
    (channels_last weights: strides (I*KH*KW, 1, KW*I, I))."""
    align = 16
    for stride in (strides[0], strides[2], strides[3]):
        while stride % align:
            align //= 2
    return align

