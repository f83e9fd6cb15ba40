"""Triton kernels for grouped 2-D convolution, forward and backward.

The kernels are written for the small groups of multigrid networks (MGiaD paper Sec. III d,
Fig. 5: 4-64 channels per group, depthwise pooling, grouped 1x1 transfers). A tile of
output channels may span several groups: the weight tile is loaded block-diagonally (zero
where the input channel's group differs from the output channel's), so every ``tl.dot`` has
tiles of at least 16 in each dimension without padding the tensors in memory. The KH*KW taps
are folded into the reduction loop.

Import this module only when Triton can run: ``TRITON_INTERPRET=1`` must be set before it is
imported for the CPU interpreter to take over.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..runtime.split_reduction import exponential_average, last_to_arrive, merge_moments, sum_rows
from ..runtime.triton_support import interpreter_enabled, patch_interpreter_index
from . import tiles
from .bn_relu import bn_scale_shift, relu, relu_grad

if interpreter_enabled():
    patch_interpreter_index()

# Autotune keys: what changes the best tile (channels, groups, kernel size, stride, direction,
# fusions, dot precision), never H, W. tests/test_autotune.py checks every such constexpr is here.
_GATHER_KEY = ["C_DST", "C_RED", "DST_PER_GROUP", "RED_PER_GROUP", "KH", "KW", "STRIDE_H", "STRIDE_W",
               "TRANSPOSED", "WEIGHT_OUT_IS_DST", "WRITE_ADJOINT_WEIGHT", "HAS_BIAS", "PROLOGUE_BN_RELU", "OTHER_MODE",
               "EPILOGUE_BN_RELU", "STATS",
               "RUNNING_UPDATE", "RED_ALIGN", "RED_RANGE_ALIGN", "DST_ALIGN", "W_ALIGN", "FULL_CHANNEL_BLOCKS",
               "SINGLE_RED_BLOCK", "WIDE_PIXEL_INDEX", "DST_PIXEL_RUN", "OTHER_PIXEL_RUN",
               "PIXEL_VECTOR", "VECTOR_D_MIN", "VECTOR_D", "INPUT_PRECISION"]
_GRAD_WEIGHT_KEY = ["C_OUT", "C_IN", "OUT_PER_GROUP", "IN_PER_GROUP", "KH", "KW", "KW_BLOCK", "STRIDE_H", "STRIDE_W",
                    "HAS_BIAS", "X_BN_RELU", "CARRIES", "OUT_ALIGN", "IN_ALIGN", "FULL_CHANNEL_BLOCKS", "FULL_BOXES",
                    "WIDE_PIXEL_INDEX", "INPUT_PRECISION", "TILE_N", "TILE_H", "TILE_W"]

# OTHER_MODE: what the epilogue does with the tensor `other` read at the output positions
OTHER_NONE = tl.constexpr(0)  # nothing
OTHER_ADD = tl.constexpr(1)  # y = other + alpha * conv, before the epilogue BatchNorm (residual f - A u, FAS sums)
OTHER_ADD_AFTER_BN = tl.constexpr(2)  # y = other + relu(bn(conv)) (the smoothing step's residual update)
OTHER_RELU_GRAD = tl.constexpr(3)  # y = conv where bn(other) > 0, else 0 (backward through relu(bn(other)))

# STATS: statistics of the stored output over the whole batch, from per-tile partials merged in the kernel
STATS_NONE = tl.constexpr(0)
STATS_MOMENTS = tl.constexpr(1)  # per channel: batch mean and biased variance (BatchNorm batch statistics)
STATS_BN_GRAD = tl.constexpr(2)  # per channel: sum y and sum y * bn_hat(other) (BatchNorm backward reductions)

# RUNNING_UPDATE: with STATS_MOMENTS, the merge also updates a BatchNorm's running statistics as
# nn.BatchNorm2d does: running = (1 - factor) * running + factor * batch (variance unbiased)
RUNNING_NONE = tl.constexpr(0)
RUNNING_MOMENTUM = tl.constexpr(1)  # factor = momentum
RUNNING_CUMULATIVE = tl.constexpr(2)  # momentum=None: factor = 1 / (num_batches_tracked + 1)

_MERGE_BLOCK_ROWS: tl.constexpr = tl.constexpr(32)  # partial rows per step of the in-kernel merge

GATHER_MIN_BLOCK_P: tl.constexpr = tl.constexpr(tiles.GATHER_MIN_BLOCK_P)  # sizes the statistics buffers


@triton.jit
def _pixel_rows(src_ptr, n, oh, ow, p_mask, src_stride_n, src_stride_h, src_stride_w,
                STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
                TRANSPOSED: tl.constexpr):
    """What every tap of dst pixel (n, oh, ow) shares: its origin (ih0, iw0), int32, and a pointer into src.

    Forward: tap (kh, kw) reads src pixel (ih0 + kh*D, iw0 + kw*D), ih0 = oh*S - P. Adjoint (grad input):
    it reads ((ih0 - kh*D) / S, ...) where that division is exact, ih0 = oh + P. Unless a division is
    needed (the adjoint of a strided conv) the pointer is that of the origin, so a tap adds one scalar
    offset; a pixel past the end gets an origin no tap reaches, so the taps' masks need no p_mask.
    """
    if TRANSPOSED:
        ih0 = oh + PAD_H
        iw0 = ow + PAD_W
    else:
        ih0 = oh * STRIDE_H - PAD_H
        iw0 = ow * STRIDE_W - PAD_W
    ih0 = tl.where(p_mask, ih0, -(2 ** 30))
    rows = src_ptr + n.to(tl.int64) * src_stride_n
    if not (TRANSPOSED and STRIDE_H * STRIDE_W > 1):
        rows += ih0.to(tl.int64) * src_stride_h + iw0.to(tl.int64) * src_stride_w
    return ih0, iw0, rows


@triton.jit
def _tap_rows(rows, ih0, iw0, kh, kw, src_stride_h, src_stride_w, H_src, W_src,
              STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, DIL_H: tl.constexpr, DIL_W: tl.constexpr,
              TRANSPOSED: tl.constexpr):
    """Pointers to the src pixels the tile's dst pixels read at tap (kh, kw), and whether they exist
    (rows, ih0, iw0: _pixel_rows). Int32 compares and, but for a strided adjoint, one scalar offset."""
    dh = kh * DIL_H
    dw = kw * DIL_W
    if TRANSPOSED:
        dh = -dh
        dw = -dw
    th = ih0 + dh
    tw = iw0 + dw
    if TRANSPOSED and STRIDE_H * STRIDE_W > 1:
        ih = th // STRIDE_H
        iw = tw // STRIDE_W
        valid = (th >= 0) & (tw >= 0) & (th % STRIDE_H == 0) & (tw % STRIDE_W == 0)
        valid = valid & (ih < H_src) & (iw < W_src)
        return rows + (ih.to(tl.int64) * src_stride_h + iw.to(tl.int64) * src_stride_w), valid
    # 0 <= th < H_src as one unsigned compare (a negative th wraps past any size)
    valid = (th.to(tl.uint32) < H_src.to(tl.uint32)) & (tw.to(tl.uint32) < W_src.to(tl.uint32))
    return rows + (dh.to(tl.int64) * src_stride_h + dw.to(tl.int64) * src_stride_w), valid


@triton.jit
def _exact_grouped_tile(rows, ih0, iw0, weight_ptr, bn_mean_ptr, bn_var_ptr, bn_gamma_ptr, bn_beta_ptr, bn_eps,
                        offs_c, group_c, local_c, c_mask, red_start, red_end,
                        src_stride_c, src_stride_h, src_stride_w,
                        w_stride_dst, w_stride_dst_local, w_stride_red, w_stride_red_local, w_stride_kh, w_stride_kw,
                        H_src, W_src, RED_PER_GROUP,
                        KH: tl.constexpr, KW: tl.constexpr, STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
                        DIL_H: tl.constexpr, DIL_W: tl.constexpr, TRANSPOSED: tl.constexpr, PROLOGUE_BN_RELU: tl.constexpr,
                        BLOCK_P: tl.constexpr, BLOCK_DST: tl.constexpr):
    """The tile's convolution one reduced channel at a time, each product kept only within its group.

    The block-diagonal dot multiplies a NaN or Inf of one group by the zero weights of the
    others (0 * NaN = NaN), so a tile whose accumulator came out non-finite is recomputed here:
    elementwise fp32 products, selected (not multiplied) by group, give F.conv2d's NaN/Inf pattern.
    """
    acc = tl.zeros([BLOCK_P, BLOCK_DST], dtype=tl.float32)
    for tap in range(0, KH * KW):
        kh = tap // KW
        kw = tap - kh * KW
        pixels, valid = _tap_rows(rows, ih0, iw0, kh, kw, src_stride_h, src_stride_w, H_src, W_src,
                                  STRIDE_H, STRIDE_W, DIL_H, DIL_W, TRANSPOSED)
        for r in range(red_start, red_end):
            col = tl.load(pixels + tl.cast(r, tl.int64) * src_stride_c, mask=valid, other=0.0).to(tl.float32)
            if PROLOGUE_BN_RELU:
                _, _, scale_r, shift_r = bn_scale_shift(bn_mean_ptr, bn_var_ptr, bn_gamma_ptr, bn_beta_ptr, bn_eps,
                                                        r, True)
                col = tl.where(valid, relu(col * scale_r + shift_r), 0.0)
            group_r = r // RED_PER_GROUP
            in_group = (group_c == group_r) & c_mask
            w_offs = (offs_c * w_stride_dst + local_c * w_stride_dst_local + r * w_stride_red
                      + (r - group_r * RED_PER_GROUP) * w_stride_red_local + kh * w_stride_kh + kw * w_stride_kw)
            w_row = tl.load(weight_ptr + w_offs, mask=in_group, other=0.0).to(tl.float32)
            acc += tl.where(in_group[None, :], col[:, None] * w_row[None, :], 0.0)
    return acc


@triton.jit
def _reduced_block(r0, red_end, red_group_magic, offs_c, local_c, group_c, c_mask, src_stride_c, w_stride_dst,
                   w_stride_dst_local, w_stride_red, w_stride_red_local, RED_PER_GROUP,
                   WEIGHT_OUT_IS_DST: tl.constexpr, RED_ALIGN: tl.constexpr, FULL_CHANNEL_BLOCKS: tl.constexpr,
                   BLOCK_RED: tl.constexpr):
    """What a block of BLOCK_RED reduced channels from r0 fixes for every tap: its mask, the channels'
    offsets in src, the block-diagonal weight tile's offsets (before the tap's) and mask."""
    offs_r = r0 + tl.arange(0, BLOCK_RED)
    if FULL_CHANNEL_BLOCKS:  # the launcher checked that every block is whole: no mask to compute per row
        r_mask = tl.full([BLOCK_RED], 1, tl.int1)
    else:
        r_mask = offs_r < red_end
    group_r = ((offs_r.to(tl.int64) * red_group_magic) >> 31).to(tl.int32)  # offs_r // RED_PER_GROUP
    local_r = tl.max_contiguous(tl.multiple_of(offs_r - group_r * RED_PER_GROUP, RED_ALIGN), RED_ALIGN)
    group_r = tl.max_constancy(group_r, RED_ALIGN)
    # the two strides that are zero by construction (see the launcher) are left out, so the compiler
    # sees the in-channel run's contiguity
    if WEIGHT_OUT_IS_DST:  # dst: the weight's out-channels, reduced: its in-channels (in-group index)
        w_block = offs_c[None, :] * w_stride_dst + local_r[:, None] * w_stride_red_local
    else:  # grad input through the forward's weight. dst: in-channels (in-group index), reduced: out-channels
        w_block = offs_r[:, None] * w_stride_red + local_c[None, :] * w_stride_dst_local
    w_mask = (group_r[:, None] == group_c[None, :]) & r_mask[:, None] & c_mask[None, :]
    return r_mask, offs_r.to(tl.int64) * src_stride_c, w_block, w_mask


@triton.jit
def _tap_product(acc, rows, ih0, iw0, weight_ptr, kh, kw, r_mask, src_channel, w_block, w_mask,
                 scale_r, shift_r, src_stride_h, src_stride_w, w_stride_kh, w_stride_kw, H_src, W_src,
                 STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, DIL_H: tl.constexpr, DIL_W: tl.constexpr,
                 TRANSPOSED: tl.constexpr,
                 PROLOGUE_BN_RELU: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """acc + (the src tile tap (kh, kw) reads, as relu(scale * src + shift) with PROLOGUE_BN_RELU) @ (the
    block's weight tile at that tap)."""
    pixels, valid = _tap_rows(rows, ih0, iw0, kh, kw, src_stride_h, src_stride_w, H_src, W_src,
                              STRIDE_H, STRIDE_W, DIL_H, DIL_W, TRANSPOSED)
    a_mask = valid[:, None] & r_mask[None, :]
    a = tl.load(pixels[:, None] + src_channel[None, :], mask=a_mask, other=0.0)
    if PROLOGUE_BN_RELU:
        # t = relu(bn1(r)) as it is loaded, rounded like a stored t. Padding (r = 0 loaded) is zeroed by a
        # product with the row's 0/1 validity, packed two to a register in 16 bits: exact wherever t is
        # finite (a non-finite t leaves NaN in the accumulator, and the tile is recomputed exactly)
        t = relu(a.to(tl.float32) * scale_r[None, :] + shift_r[None, :]).to(a.dtype)
        a = t * valid.to(a.dtype)[:, None]
    b = tl.load(weight_ptr + (w_block + kh * w_stride_kh + kw * w_stride_kw), mask=w_mask, other=0.0)
    return tl.dot(a, b.to(a.dtype), acc, input_precision=INPUT_PRECISION)


@triton.jit
def _block_taps(acc, taps, rows, ih0, iw0, weight_ptr, r_mask, src_channel, w_block, w_mask, scale_r, shift_r,
                src_stride_h, src_stride_w, w_stride_kh, w_stride_kw, H_src, W_src, KW: tl.constexpr,
                STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, DIL_H: tl.constexpr, DIL_W: tl.constexpr,
                TRANSPOSED: tl.constexpr, PROLOGUE_BN_RELU: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """acc + one reduced-channel block's products over ``taps`` taps (KH * KW, known to the compiler or not),
    the tap (kh, kw) carried from step to step: no division."""
    kh = 0
    kw = 0
    for tap in range(0, taps):
        acc = _tap_product(acc, rows, ih0, iw0, weight_ptr, kh, kw, r_mask, src_channel, w_block, w_mask,
                           scale_r, shift_r, src_stride_h, src_stride_w, w_stride_kh, w_stride_kw,
                           H_src, W_src, STRIDE_H, STRIDE_W, DIL_H, DIL_W, TRANSPOSED,
                           PROLOGUE_BN_RELU, INPUT_PRECISION)
        kw += 1
        next_row = kw == KW
        kw = tl.where(next_row, 0, kw)
        kh = tl.where(next_row, kh + 1, kh)
    return acc


@triton.jit
def _vector_block(r0, red_end, red_group_magic, k_red, k_lane, group_c, c_mask, band_row, band_len, src_stride_c,
                  RED_PER_GROUP, V: tl.constexpr, RED_ALIGN: tl.constexpr, FULL_CHANNEL_BLOCKS: tl.constexpr):
    """What a block of reduced channels from r0 fixes for every (kh, d) step of _pixel_vector_conv: the k axis's
    mask and src channel offsets, the band tile's offsets at kh = d = 0 and its mask."""
    r = r0 + k_red
    if FULL_CHANNEL_BLOCKS:  # the launcher checked that every block is whole
        r_mask = tl.full([r.shape[0]], 1, tl.int1)
    else:
        r_mask = r < red_end
    group_r = ((r.to(tl.int64) * red_group_magic) >> 31).to(tl.int32)  # r // RED_PER_GROUP
    in_group = tl.max_contiguous(tl.multiple_of((r - group_r * RED_PER_GROUP) * V + k_lane, RED_ALIGN * V),
                                 RED_ALIGN * V)
    channels = r.to(tl.int64) * (src_stride_c // V * V) + k_lane
    band = band_row[None, :] * band_len + in_group[:, None]
    b_mask = (group_r[:, None] == group_c[None, :]) & r_mask[:, None] & c_mask[None, :]
    return r_mask, channels, band, b_mask


@triton.jit
def _pixel_vector_conv(src_ptr, band_ptr, pid_p, c0, red_start, red_end, red_group_magic,
                       src_stride_n, src_stride_c, src_stride_h, N, H_src, W_src, H_dst, W_dst, C_DST,
                       DST_PER_GROUP, RED_PER_GROUP, KH: tl.constexpr, STRIDE_H: tl.constexpr, PAD_H: tl.constexpr,
                       DIL_H: tl.constexpr, V: tl.constexpr, D_MIN: tl.constexpr, D: tl.constexpr,
                       RED_ALIGN: tl.constexpr, FULL_CHANNEL_BLOCKS: tl.constexpr, SINGLE_RED_BLOCK: tl.constexpr,
                       WIDE_PIXEL_INDEX: tl.constexpr,
                       INPUT_PRECISION: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_DST: tl.constexpr,
                       BLOCK_RED: tl.constexpr):
    """The tile's convolution from an NCHW src read in aligned vectors of V pixels of a row (stride and dilation
    1 along the rows), [BLOCK_P, BLOCK_DST] fp32.

    Output pixels ow = V*j + l read src columns V*(j + d) + m; tap kw joins lane m of src vector j + d to lane l
    of output vector j where kw = V*d + m - l + PAD_W. Folding the lanes into the dot, (reduced channel, m)
    against (dst channel, l), with the weight's band E[c, kh, d, l, i, m] = w[c, i, kh, kw] (0 where kw is
    no tap), every load is a whole aligned vector: no tap shifts one off its alignment. The band does V*D/KW
    times the MMA work of the taps, whose products it holds as zeros.
    """
    BLOCK_M: tl.constexpr = BLOCK_P // V  # vectors of the tile
    if WIDE_PIXEL_INDEX:
        first = (pid_p.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)) * V
        m_mask = first < N.to(tl.int64) * (H_dst * W_dst)
    else:
        first = (pid_p * BLOCK_M + tl.arange(0, BLOCK_M)) * V
        m_mask = first < N * (H_dst * W_dst)
    n = first // (H_dst * W_dst)
    rem = (first - n * (H_dst * W_dst)).to(tl.int32)
    oh = rem // W_dst
    ow = rem - oh * W_dst  # a multiple of V: W_dst is
    ih0 = tl.where(m_mask, oh * STRIDE_H - PAD_H, -(2 ** 30))
    # src's strides rounded to V (exact: the launcher checked that V divides them), so the compiler sees every
    # vector's alignment
    # each vector's first src pixel at (kh, d) = (0, 0); a step adds a scalar
    vector_row = tl.multiple_of(n.to(tl.int64) * (src_stride_n // V * V) + ow.to(tl.int64) + D_MIN * V
                                + ih0.to(tl.int64) * (src_stride_h // V * V), V)
    k = tl.arange(0, BLOCK_RED * V)  # (reduced channel, lane m)
    k_lane = k % V
    k_red = k // V
    j = tl.arange(0, BLOCK_DST * V)  # (dst channel, lane l)
    c = c0 + j // V
    group_c = c // DST_PER_GROUP
    if FULL_CHANNEL_BLOCKS:
        c_mask = tl.full([BLOCK_DST * V], 1, tl.int1)
    else:
        c_mask = c < C_DST
    band_row = c.to(tl.int64) * KH * D * V + (j % V)  # E's row (c, kh, d, l) at kh = d = 0
    band_len = RED_PER_GROUP * V // (RED_ALIGN * V) * (RED_ALIGN * V)  # E's row length, I*V, said aligned
    band_step = V * band_len  # from (kh, d) to (kh, d + 1)
    r_mask, channels, band, b_mask = _vector_block(red_start, red_end, red_group_magic, k_red, k_lane, group_c,
                                                   c_mask, band_row, band_len, src_stride_c, RED_PER_GROUP, V,
                                                   RED_ALIGN, FULL_CHANNEL_BLOCKS)
    acc = tl.zeros([BLOCK_M, BLOCK_DST * V], dtype=tl.float32)
    kh = 0
    d = 0
    r0 = red_start
    # (kh, d) inside the reduced-channel blocks, one flat loop (a run-time trip count: the pipeliner's loop)
    for step in range(0, KH * D * tl.cdiv(red_end - red_start, BLOCK_RED)):
        if not SINGLE_RED_BLOCK:
            r_mask, channels, band, b_mask = _vector_block(r0, red_end, red_group_magic, k_red, k_lane, group_c,
                                                           c_mask, band_row, band_len, src_stride_c,
                                                           RED_PER_GROUP, V, RED_ALIGN, FULL_CHANNEL_BLOCKS)
        ih = ih0 + kh * DIL_H
        col = ow + (d + D_MIN) * V
        valid = (ih.to(tl.uint32) < H_src.to(tl.uint32)) & (col.to(tl.uint32) < W_src.to(tl.uint32))
        rows = vector_row + (kh * DIL_H * (src_stride_h // V * V) + d * V).to(tl.int64)
        a = tl.load(src_ptr + (rows[:, None] + channels[None, :]), mask=valid[:, None] & r_mask[None, :], other=0.0)
        b = tl.load(band_ptr + (band + (kh * D + d) * band_step), mask=b_mask, other=0.0)
        acc = tl.dot(a, b.to(a.dtype), acc, input_precision=INPUT_PRECISION)
        d += 1
        next_kh = d == D
        d = tl.where(next_kh, 0, d)
        kh = tl.where(next_kh, kh + 1, kh)
        if not SINGLE_RED_BLOCK:
            next_block = kh == KH
            kh = tl.where(next_block, 0, kh)
            r0 = tl.where(next_block, r0 + BLOCK_RED, r0)
    # (vector, dst channel, lane l) -> (pixel V*vector + l, dst channel)
    return tl.reshape(tl.permute(tl.reshape(acc, [BLOCK_M, BLOCK_DST, V]), [0, 2, 1]), [BLOCK_P, BLOCK_DST])


@triton.jit
def banded_weight_kernel(
    weight_ptr,  # (C_out, I, KH, KW), any strides
    band_ptr,  # (C_out, KH, D, V, I, V) out, contiguous: E[c, kh, d, l, i, m] = weight[c, i, kh, V*(d+D_MIN)+m-l+P]
    adjoint_weight_ptr,  # (C_in, C_out // groups, KH, KW) out (WRITE_ADJOINT_WEIGHT)
    w_stride_out, w_stride_in, w_stride_kh, w_stride_kw,  # strides of weight, elements
    adj_stride_out, adj_stride_in, adj_stride_kh, adj_stride_kw,  # strides of adjoint_weight, elements
    C_OUT, I, KH, KW, OUT_PER_GROUP,  # the weight's sizes, out-channels per group
    BAND_PROGRAMS,  # programs writing the band; the others write the adjoint weight
    PAD_W: tl.constexpr,  # the convolution's left padding
    V: tl.constexpr, D_MIN: tl.constexpr, D: tl.constexpr,  # pixel vector, the band's vector offsets
    WRITE_ADJOINT_WEIGHT: tl.constexpr,  # also write the weight of grad input's convolution
    BLOCK: tl.constexpr,  # elements per program
):
    """The band of the weight the gather's pixel vectors multiply (see _pixel_vector_conv), and where asked the
    adjoint's weight, adjoint[g*I + i, o, kh, kw] = weight[g*O + o, i, kh, kw]: one small launch per forward."""
    pid = tl.program_id(0)
    if pid < BAND_PROGRAMS:
        e = pid * BLOCK + tl.arange(0, BLOCK)
        mask = e < C_OUT * KH * D * V * I * V
        m = e % V
        t = e // V
        i = t % I
        t = t // I
        lane = t % V
        t = t // V
        d = t % D
        t = t // D
        kh = t % KH
        c = t // KH
        kw = (d + D_MIN) * V + m - lane + PAD_W
        tap = mask & (kw >= 0) & (kw < KW)
        w = tl.load(weight_ptr + (c.to(tl.int64) * w_stride_out + i * w_stride_in + kh * w_stride_kh
                                  + kw * w_stride_kw), mask=tap, other=0.0)
        tl.store(band_ptr + e, w, mask=mask)
    elif WRITE_ADJOINT_WEIGHT:
        e = (pid - BAND_PROGRAMS) * BLOCK + tl.arange(0, BLOCK)
        mask = e < C_OUT * I * KH * KW
        kw = e % KW
        t = e // KW
        kh = t % KH
        t = t // KH
        i = t % I
        c = t // I
        g = c // OUT_PER_GROUP
        w = tl.load(weight_ptr + (c.to(tl.int64) * w_stride_out + i * w_stride_in + kh * w_stride_kh
                                  + kw * w_stride_kw), mask=mask)
        tl.store(adjoint_weight_ptr + ((g * I + i).to(tl.int64) * adj_stride_out + (c - g * OUT_PER_GROUP)
                                       * adj_stride_in + kh * adj_stride_kh + kw * adj_stride_kw), w, mask=mask)


# Sizes whose divisibility by 16 changes no load or store (alignment follows the strides, which stay
# specialized): not specializing them keeps a training step at one compiled variant per key and layout.
_SIZES_NOT_SPECIALIZED = ["N", "H_src", "W_src", "H_dst", "W_dst", "C_DST", "C_RED", "STATS_ROWS"]


# benchmarking a config runs the kernel: the running statistics it updates in place are restored after
@triton.autotune(configs=tiles.gather_configs(), key=_GATHER_KEY, cache_results=True,
                 restore_value=["running_mean_ptr", "running_var_ptr"])
@triton.jit(do_not_specialize=_SIZES_NOT_SPECIALIZED)
def conv2d_gather_kernel(
    src_ptr,  # (N, C_RED, H_src, W_src): x for the forward pass, grad_y for grad input
    weight_ptr,  # (C_out, C_in // groups, KH, KW) convolution weight; (C_in, C_out // groups, KH, KW) its adjoint's
    adjoint_weight_ptr,  # (C_in, C_out // groups, KH, KW) out (WRITE_ADJOINT_WEIGHT): the adjoint's weight
    bias_ptr,  # (C_DST,) bias, read only when HAS_BIAS
    dst_ptr,  # (N, C_DST, H_dst, W_dst): y for the forward pass, grad_x for grad input
    other_ptr,  # (N, C_DST, H_dst, W_dst) read by the epilogue at the output positions (OTHER_MODE)
    bn_mean_ptr, bn_var_ptr, bn_gamma_ptr, bn_beta_ptr,  # (C,) fp32 BatchNorm of the prologue or epilogue
    stats_ptr,  # (3, STATS_ROWS, C_DST) fp32 scratch: a row of partial statistics per pixel tile (STATS)
    reduced_ptr,  # (2, C_DST) fp32 out (STATS): mean and biased variance, or sum y and sum y * bn_hat(other)
    counter_ptr,  # (cdiv(C_DST, BLOCK_DST),) int32 arrival counters, zero (STATS)
    running_mean_ptr, running_var_ptr,  # (C_DST,) a BatchNorm's running statistics, updated (RUNNING_UPDATE)
    batches_ptr,  # () int64 its num_batches_tracked before this batch, read (RUNNING_CUMULATIVE)
    src_stride_n, src_stride_c, src_stride_h, src_stride_w,  # strides of src, elements
    dst_stride_n, dst_stride_c, dst_stride_h, dst_stride_w,  # strides of dst, elements
    other_stride_n, other_stride_c, other_stride_h, other_stride_w,  # strides of other, elements
    bias_stride,  # stride of bias, elements
    adj_stride_out, adj_stride_in, adj_stride_kh, adj_stride_kw,  # strides of adjoint_weight, elements
    # weight strides seen from the dst channel (global and in-group index), the reduced
    # channel (global and in-group index) and the taps; two of the first four are zero
    w_stride_dst, w_stride_dst_local, w_stride_red, w_stride_red_local, w_stride_kh, w_stride_kw,
    N, H_src, W_src, H_dst, W_dst,  # batch and spatial sizes
    C_DST, C_RED,  # channels written and channels reduced over
    DST_PER_GROUP, RED_PER_GROUP,  # the same per group
    alpha,  # float: the convolution is scaled by alpha before the epilogue (-1: other - conv)
    bn_eps,  # float: the BatchNorm's epsilon
    momentum,  # float: the running statistics' factor (RUNNING_MOMENTUM)
    unbias,  # float: N*H_dst*W_dst / (N*H_dst*W_dst - 1), the running variance is unbiased (RUNNING_UPDATE)
    STATS_ROWS,  # rows of stats_ptr: cdiv(N*H_dst*W_dst, GATHER_MIN_BLOCK_P)
    KH: tl.constexpr, KW: tl.constexpr,  # kernel size
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,  # convolution stride
    PAD_H: tl.constexpr, PAD_W: tl.constexpr,  # zero padding at the top and left
    DIL_H: tl.constexpr, DIL_W: tl.constexpr,  # dilation
    TRANSPOSED: tl.constexpr,  # False: y = conv(x, w); True: grad_x = conv_transpose(grad_y, w)
    WEIGHT_OUT_IS_DST: tl.constexpr,  # weight's dim 0 indexes dst channels: the forward's, or (TRANSPOSED) the
    #                                   adjoint's weight; False: TRANSPOSED through the forward's weight
    WRITE_ADJOINT_WEIGHT: tl.constexpr,  # forward: the first pixel tiles also write the adjoint's weight
    HAS_BIAS: tl.constexpr,  # add bias_ptr[c] to every output
    PROLOGUE_BN_RELU: tl.constexpr,  # src is loaded as relu(bn(src)) (zero padding stays zero)
    OTHER_MODE: tl.constexpr,  # one of OTHER_* above
    EPILOGUE_BN_RELU: tl.constexpr,  # y = relu(bn(y)) after OTHER_ADD (BatchNorm folded, eval mode)
    EPILOGUE_NEEDS_BN: tl.constexpr,  # the epilogue reads the BatchNorm (any of the three flags above use it)
    STATS: tl.constexpr,  # one of STATS_* above
    RUNNING_UPDATE: tl.constexpr,  # one of RUNNING_* above (with STATS_MOMENTS)
    RED_ALIGN: tl.constexpr,  # the largest power of two (at most 16) dividing RED_PER_GROUP
    RED_RANGE_ALIGN: tl.constexpr,  # and every tile's red_start and red_end (a multiple of RED_ALIGN)
    DST_ALIGN: tl.constexpr,  # the same for DST_PER_GROUP
    W_ALIGN: tl.constexpr,  # a power of two (at most 16) dividing the weight's out-channel and tap strides
    FULL_CHANNEL_BLOCKS: tl.constexpr,  # every channel tile is whole and its reduced channels whole BLOCK_REDs
    SINGLE_RED_BLOCK: tl.constexpr,  # every channel tile's reduced channels fit one BLOCK_RED
    WIDE_PIXEL_INDEX: tl.constexpr,  # N*H_dst*W_dst >= 2^31: the tile's pixel indices in 64 bits
    DST_PIXEL_RUN: tl.constexpr,  # > 1: dst's pixels are unit-strided and dense (NCHW), and this power of two
    #                               (at most 16) divides H_dst * W_dst and BLOCK_P: the store vectorizes along them
    OTHER_PIXEL_RUN: tl.constexpr,  # the same for other's pixels and its load
    PIXEL_VECTOR: tl.constexpr,  # > 1: src is NCHW, read in vectors of this many pixels of a row
    #                              against weight_ptr's band of the weight (banded_weight_kernel); the weight
    #                              itself at adjoint_weight_ptr (the exact recompute reads it)
    VECTOR_D_MIN: tl.constexpr, VECTOR_D: tl.constexpr,  # the band's vector offsets: VECTOR_D from VECTOR_D_MIN
    INPUT_PRECISION: tl.constexpr,  # "ieee" or "tf32", for fp32 dots
    BLOCK_P: tl.constexpr, BLOCK_DST: tl.constexpr, BLOCK_RED: tl.constexpr,  # tile sizes
):
    """dst[n, c, p] = sum over taps and the group's reduced channels of src * weight, then the epilogue.

    Forward: dst pixel (oh, ow) reads src at (oh*S - P + kh*D, ...). Grad input (the adjoint):
    dst pixel (ih, iw) reads src at oh = (ih + P - kh*D) / S where that division is exact.
    The prologue and epilogue flags fuse the smoothing step's elementwise work (MGiaD eq. 3)
    and the FAS sums (eq. 6-7) into the convolution; at most one BatchNorm per launch. With
    STATS, the last pixel tile of each channel tile merges every tile's partials in tile order.
    """
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)

    hw_dst = H_dst * W_dst
    if WIDE_PIXEL_INDEX:
        offs_p = pid_p.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
        p_mask = offs_p < N.to(tl.int64) * hw_dst
    else:
        offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        p_mask = offs_p < N * hw_dst
    n = offs_p // hw_dst
    rem = (offs_p - n * hw_dst).to(tl.int32)
    n = n.to(tl.int32)
    oh = rem // W_dst
    ow = rem - oh * W_dst

    c0 = pid_c * BLOCK_DST
    offs_c = c0 + tl.arange(0, BLOCK_DST)
    if FULL_CHANNEL_BLOCKS:
        c_mask = tl.full([BLOCK_DST], 1, tl.int1)
    else:
        c_mask = offs_c < C_DST // DST_ALIGN * DST_ALIGN  # C_DST itself: groups divide it; the rounding says so
    group_c = offs_c // DST_PER_GROUP
    local_c = offs_c - group_c * DST_PER_GROUP
    # the reduced channels this tile needs: all channels of the groups it touches
    # (multiples of RED_RANGE_ALIGN, checked by the launcher: the src loads along channels vectorize)
    red_start = tl.multiple_of((c0 // DST_PER_GROUP) * RED_PER_GROUP, RED_RANGE_ALIGN)
    red_end = tl.multiple_of(((tl.minimum(c0 + BLOCK_DST, C_DST) - 1) // DST_PER_GROUP + 1) * RED_PER_GROUP,
                             RED_RANGE_ALIGN)

    # Aligned runs of DST_ALIGN dst channels (RED_ALIGN reduced ones) lie in one group: along them the in-group
    # index is contiguous and the group constant. Said to the compiler, with the weight's strides rounded to
    # W_ALIGN (exact: the launcher's W_ALIGN divides them), a weight whose in-channel stride is 1 (channels_last)
    # loads in vectors along the in-channels: the reduced ones (forward) or the dst ones (grad input).
    local_c = tl.max_contiguous(tl.multiple_of(local_c, DST_ALIGN), DST_ALIGN)
    group_c = tl.max_constancy(group_c, DST_ALIGN)
    w_stride_dst = w_stride_dst // W_ALIGN * W_ALIGN
    w_stride_red = w_stride_red // W_ALIGN * W_ALIGN
    w_stride_kh = w_stride_kh // W_ALIGN * W_ALIGN
    w_stride_kw = w_stride_kw // W_ALIGN * W_ALIGN

    if PIXEL_VECTOR == 1:
        ih0, iw0, rows = _pixel_rows(src_ptr, n, oh, ow, p_mask, src_stride_n, src_stride_h, src_stride_w,
                                     STRIDE_H, STRIDE_W, PAD_H, PAD_W, TRANSPOSED)
    acc = tl.zeros([BLOCK_P, BLOCK_DST], dtype=tl.float32)
    # The group of a reduced channel is a multiply-shift by ceil(2^31 / RED_PER_GROUP), exact while
    # C_RED * RED_PER_GROUP < 2^31 (the launcher checks): no division in the loops.
    red_group_magic = (tl.full([], 2 ** 31 - 1, tl.int64) + RED_PER_GROUP) // RED_PER_GROUP
    if PIXEL_VECTOR > 1:
        acc = _pixel_vector_conv(src_ptr, weight_ptr, pid_p, c0, red_start, red_end, red_group_magic,
                                 src_stride_n, src_stride_c, src_stride_h, N, H_src, W_src, H_dst, W_dst, C_DST,
                                 DST_PER_GROUP, RED_PER_GROUP, KH, STRIDE_H, PAD_H, DIL_H, PIXEL_VECTOR,
                                 VECTOR_D_MIN, VECTOR_D, RED_ALIGN, FULL_CHANNEL_BLOCKS, SINGLE_RED_BLOCK,
                                 WIDE_PIXEL_INDEX,
                                 INPUT_PRECISION, BLOCK_P, BLOCK_DST, BLOCK_RED)
    elif PROLOGUE_BN_RELU:
        # Reduced-channel blocks outside, taps inside: the block's BatchNorm scale and shift, groups and weight
        # offsets are computed once per block, not once per tap (with small groups a tile has one block).
        for r0 in range(red_start, red_end, BLOCK_RED):
            r_mask, src_channel, w_block, w_mask = _reduced_block(
                r0, red_end, red_group_magic, offs_c, local_c, group_c, c_mask, src_stride_c, w_stride_dst,
                w_stride_dst_local, w_stride_red, w_stride_red_local, RED_PER_GROUP, WEIGHT_OUT_IS_DST, RED_ALIGN,
                FULL_CHANNEL_BLOCKS, BLOCK_RED)
            _, _, scale_r, shift_r = bn_scale_shift(bn_mean_ptr, bn_var_ptr, bn_gamma_ptr, bn_beta_ptr, bn_eps,
                                                    r0 + tl.arange(0, BLOCK_RED), r_mask)
            acc = _block_taps(acc, KH * KW, rows, ih0, iw0, weight_ptr, r_mask, src_channel, w_block, w_mask,
                              scale_r, shift_r, src_stride_h, src_stride_w, w_stride_kh, w_stride_kw, H_src, W_src,
                              KW, STRIDE_H, STRIDE_W, DIL_H, DIL_W, TRANSPOSED, PROLOGUE_BN_RELU, INPUT_PRECISION)
    elif SINGLE_RED_BLOCK:
        # The launcher checked that every tile's reduced channels are one block (small groups): its groups,
        # weight offsets and masks are computed once, not at every tap (the adjoint weight's in-group offsets
        # take a multiply-shift per channel). The trip count, KH * KW times the one block, is left to the
        # run time: 9 taps the compiler could count came out fully unrolled (sm_90, 3 stages), no loop left
        # to pipeline or to model.
        r_mask, src_channel, w_block, w_mask = _reduced_block(
            red_start, red_end, red_group_magic, offs_c, local_c, group_c, c_mask, src_stride_c, w_stride_dst,
            w_stride_dst_local, w_stride_red, w_stride_red_local, RED_PER_GROUP, WEIGHT_OUT_IS_DST, RED_ALIGN,
            FULL_CHANNEL_BLOCKS, BLOCK_RED)
        acc = _block_taps(acc, KH * KW * tl.cdiv(red_end - red_start, BLOCK_RED), rows, ih0, iw0, weight_ptr,
                          r_mask, src_channel, w_block, w_mask, 1.0, 0.0, src_stride_h, src_stride_w, w_stride_kh,
                          w_stride_kw, H_src, W_src, KW, STRIDE_H, STRIDE_W, DIL_H, DIL_W, TRANSPOSED,
                          PROLOGUE_BN_RELU, INPUT_PRECISION)
    else:
        # One flat loop over (tap, reduced-channel block): with small groups a tap has one or two channel
        # blocks, so the pipeliner overlaps loads across taps and the code stays small (taps inside a block
        # loop came out fully unrolled in fp32 on sm_90, on twice the registers). The tap and the block are
        # carried from step to step: no division.
        red_blocks = tl.cdiv(red_end - red_start, BLOCK_RED)
        kh = 0
        kw = 0
        r0 = red_start
        for step in range(0, KH * KW * red_blocks):
            r_mask, src_channel, w_block, w_mask = _reduced_block(
                r0, red_end, red_group_magic, offs_c, local_c, group_c, c_mask, src_stride_c, w_stride_dst,
                w_stride_dst_local, w_stride_red, w_stride_red_local, RED_PER_GROUP, WEIGHT_OUT_IS_DST, RED_ALIGN,
                FULL_CHANNEL_BLOCKS, BLOCK_RED)
            acc = _tap_product(acc, rows, ih0, iw0, weight_ptr, kh, kw, r_mask, src_channel, w_block, w_mask,
                               1.0, 0.0, src_stride_h, src_stride_w, w_stride_kh, w_stride_kw,
                               H_src, W_src, STRIDE_H, STRIDE_W, DIL_H, DIL_W, TRANSPOSED,
                               PROLOGUE_BN_RELU, INPUT_PRECISION)
            r0 += BLOCK_RED
            next_tap = r0 >= red_end
            r0 = tl.where(next_tap, red_start, r0)
            kw = tl.where(next_tap, kw + 1, kw)
            next_row = kw == KW
            kw = tl.where(next_row, 0, kw)
            kh = tl.where(next_row, kh + 1, kh)

    # A tile spanning several groups multiplied every group's inputs by the others' zero weights, and the
    # prologue multiplied padding by zero: exact unless a NaN or Inf went in, which leaves its mark on the
    # accumulator; then redo it.
    # The pixel vectors' band multiplied pixels no tap reads by zero weights too; the weight itself is then at
    # adjoint_weight_ptr.
    if (red_end - red_start > RED_PER_GROUP) | PROLOGUE_BN_RELU | (PIXEL_VECTOR > 1):
        if tl.max(tl.where(tl.abs(acc) < float("inf"), 0, 1)) > 0:  # over the whole tile, in any order
            exact_weight_ptr = weight_ptr
            if PIXEL_VECTOR > 1:
                exact_weight_ptr = adjoint_weight_ptr
                ih0, iw0, rows = _pixel_rows(src_ptr, n, oh, ow, p_mask, src_stride_n, src_stride_h, src_stride_w,
                                             STRIDE_H, STRIDE_W, PAD_H, PAD_W, TRANSPOSED)
            acc = _exact_grouped_tile(rows, ih0, iw0, exact_weight_ptr, bn_mean_ptr, bn_var_ptr, bn_gamma_ptr,
                                      bn_beta_ptr,
                                      bn_eps, offs_c, group_c, local_c, c_mask, red_start, red_end,
                                      src_stride_c, src_stride_h, src_stride_w,
                                      w_stride_dst, w_stride_dst_local, w_stride_red, w_stride_red_local,
                                      w_stride_kh, w_stride_kw, H_src, W_src, RED_PER_GROUP,
                                      KH, KW, STRIDE_H, STRIDE_W, DIL_H, DIL_W, TRANSPOSED, PROLOGUE_BN_RELU,
                                      BLOCK_P, BLOCK_DST)

    # Where dst (other) has its pixels unit-strided and dense (NCHW), the tile's pixels lie in aligned runs of
    # DST_PIXEL_RUN (OTHER_PIXEL_RUN) within one image (the launcher checked that the run divides H_dst * W_dst
    # and BLOCK_P; both runs are 1 or the same power of two): said to the compiler, the store (load) goes in
    # vectors along the pixels.
    n64, oh64, ow64 = n.to(tl.int64), oh.to(tl.int64), ow.to(tl.int64)
    if DST_PIXEL_RUN * OTHER_PIXEL_RUN > 1:
        run: tl.constexpr = DST_PIXEL_RUN * OTHER_PIXEL_RUN // min(DST_PIXEL_RUN, OTHER_PIXEL_RUN)
        rem = tl.max_contiguous(tl.multiple_of(rem, run), run)
        n_run = tl.max_constancy(n64, run)
        p_mask = tl.max_constancy(p_mask, run)
    if DST_PIXEL_RUN > 1:
        dst_pixel = n_run * dst_stride_n + rem.to(tl.int64)
    else:
        dst_pixel = n64 * dst_stride_n + oh64 * dst_stride_h + ow64 * dst_stride_w
    if OTHER_PIXEL_RUN > 1:
        other_pixel = n_run * other_stride_n + rem.to(tl.int64)
    else:
        other_pixel = n64 * other_stride_n + oh64 * other_stride_h + ow64 * other_stride_w
    _epilogue(acc, dst_ptr, bias_ptr, other_ptr, bn_mean_ptr, bn_var_ptr, bn_gamma_ptr, bn_beta_ptr, stats_ptr,
              reduced_ptr, counter_ptr, running_mean_ptr, running_var_ptr, batches_ptr,
              dst_pixel, other_pixel, p_mask, offs_c, c_mask, pid_p, pid_c,
              dst_stride_n, dst_stride_c, dst_stride_h, dst_stride_w,
              other_stride_n, other_stride_c, other_stride_h, other_stride_w, bias_stride, C_DST, alpha, bn_eps,
              momentum, unbias, STATS_ROWS, HAS_BIAS, OTHER_MODE, EPILOGUE_BN_RELU, EPILOGUE_NEEDS_BN, STATS,
              RUNNING_UPDATE, BLOCK_DST)

    if WRITE_ADJOINT_WEIGHT:
        if tl.program_id(0) == 0:  # after the epilogue, from the channel tile's index alone: nothing it
            #                        computes stays live across the main loop
            _write_adjoint_weight(weight_ptr, adjoint_weight_ptr, tl.program_id(1), C_DST,
                                  w_stride_dst, w_stride_red_local, w_stride_kh, w_stride_kw,
                                  adj_stride_out, adj_stride_in, adj_stride_kh, adj_stride_kw,
                                  DST_PER_GROUP, RED_PER_GROUP, KH, KW, BLOCK_DST, BLOCK_RED)


@triton.jit
def _write_adjoint_weight(weight_ptr, adjoint_weight_ptr, pid_c, C_DST,
                          w_stride_dst, w_stride_red_local, w_stride_kh, w_stride_kw,
                          adj_stride_out, adj_stride_in, adj_stride_kh, adj_stride_kw, DST_PER_GROUP, RED_PER_GROUP,
                          KH: tl.constexpr, KW: tl.constexpr, BLOCK_DST: tl.constexpr, BLOCK_RED: tl.constexpr):
    """adjoint[g*I + i, o, kh, kw] = weight[g*O + o, i, kh, kw] for channel tile pid_c's out-channels g*O + o.

    Grad input = conv_transpose(grad_y, weight) is a convolution of grad_y with this weight (same taps,
    the adjoint's pixel map). Stored channels_last, its reduced channels o are contiguous, which a tf32
    dot needs along its reduction (K-major) to load the tile in vectors; the forward's weight has its
    in-channels contiguous instead. Written once by the forward's first pixel tiles (it is tiny)."""
    offs_c = pid_c * BLOCK_DST + tl.arange(0, BLOCK_DST)
    c_mask = offs_c < C_DST
    group_c = offs_c // DST_PER_GROUP
    local_c = offs_c - group_c * DST_PER_GROUP
    for tap in range(0, KH * KW):
        kh = tap // KW
        kw = tap - kh * KW
        for i0 in range(0, RED_PER_GROUP, BLOCK_RED):
            offs_i = i0 + tl.arange(0, BLOCK_RED)
            mask = (offs_i < RED_PER_GROUP)[:, None] & c_mask[None, :]
            w = tl.load(weight_ptr + (offs_c[None, :] * w_stride_dst + offs_i[:, None] * w_stride_red_local
                                      + kh * w_stride_kh + kw * w_stride_kw), mask=mask)
            tl.store(adjoint_weight_ptr + ((group_c[None, :] * RED_PER_GROUP + offs_i[:, None]) * adj_stride_out
                                           + local_c[None, :] * adj_stride_in + kh * adj_stride_kh
                                           + kw * adj_stride_kw), w, mask=mask)


@triton.jit
def _epilogue(acc, dst_ptr, bias_ptr, other_ptr, bn_mean_ptr, bn_var_ptr, bn_gamma_ptr, bn_beta_ptr, stats_ptr,
              reduced_ptr, counter_ptr, running_mean_ptr, running_var_ptr, batches_ptr,
              dst_pixel, other_pixel, p_mask, offs_c, c_mask, pid_p, pid_c,
              dst_stride_n, dst_stride_c, dst_stride_h, dst_stride_w,
              other_stride_n, other_stride_c, other_stride_h, other_stride_w, bias_stride, C_DST, alpha, bn_eps,
              momentum, unbias, STATS_ROWS, HAS_BIAS: tl.constexpr, OTHER_MODE: tl.constexpr,
              EPILOGUE_BN_RELU: tl.constexpr, EPILOGUE_NEEDS_BN: tl.constexpr, STATS: tl.constexpr,
              RUNNING_UPDATE: tl.constexpr, BLOCK_DST: tl.constexpr):
    """The gather's epilogue on the fp32 tile: bias, alpha, the sum with ``other``, the BatchNorm and ReLU
    of the fused step (eq. 3), one cast and store, then the batch statistics (STATS)."""
    other = acc  # placeholders for what the flags below load; read only where a flag set them
    mean_c = acc
    rstd_c = acc
    scale_c = acc
    shift_c = acc
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_c * bias_stride, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    out_mask = p_mask[:, None] & c_mask[None, :]
    if OTHER_MODE != OTHER_NONE:
        other_offs = other_pixel[:, None] + offs_c[None, :].to(tl.int64) * other_stride_c
        other = tl.load(other_ptr + other_offs, mask=out_mask, other=0.0).to(tl.float32)
    acc = acc * alpha
    if OTHER_MODE == OTHER_ADD:
        acc = other + acc
    if EPILOGUE_NEEDS_BN:
        mean_c, rstd_c, scale_c, shift_c = bn_scale_shift(bn_mean_ptr, bn_var_ptr, bn_gamma_ptr, bn_beta_ptr,
                                                          bn_eps, offs_c, c_mask)
    if EPILOGUE_BN_RELU:
        acc = relu(acc * scale_c[None, :] + shift_c[None, :])
    if OTHER_MODE == OTHER_ADD_AFTER_BN:
        acc = other + relu(acc * scale_c[None, :] + shift_c[None, :])
    if OTHER_MODE == OTHER_RELU_GRAD:
        acc = relu_grad(acc, other * scale_c[None, :] + shift_c[None, :])
    out = acc.to(dst_ptr.dtype.element_ty)
    dst_offs = dst_pixel[:, None] + offs_c[None, :].to(tl.int64) * dst_stride_c
    tl.store(dst_ptr + dst_offs, out, mask=out_mask)

    if STATS != STATS_NONE:  # statistics of the values as stored, so they match an unfused pass
        _batch_statistics(stats_ptr, reduced_ptr, counter_ptr, running_mean_ptr, running_var_ptr, batches_ptr,
                          out, other, mean_c, rstd_c, p_mask, c_mask, offs_c, pid_p, pid_c, C_DST, momentum, unbias,
                          STATS_ROWS, STATS, RUNNING_UPDATE, BLOCK_DST)


@triton.jit
def _batch_statistics(stats_ptr, reduced_ptr, counter_ptr, running_mean_ptr, running_var_ptr, batches_ptr,
                      out, other, mean_c, rstd_c, p_mask, c_mask, offs_c, pid_p, pid_c, C_DST, momentum, unbias,
                      STATS_ROWS, STATS: tl.constexpr, RUNNING_UPDATE: tl.constexpr, BLOCK_DST: tl.constexpr):
    """Per-channel statistics of the stored output over the batch: this tile's partials go to row pid_p of
    the (3, STATS_ROWS, C_DST) scratch, and the channel tile's last pixel tile merges the rows of all tiles
    in order: the BatchNorm moments (STATS_MOMENTS), or the BatchNorm-backward sums against
    bn_hat(other) (STATS_BN_GRAD), into reduced_ptr (2, C_DST). With RUNNING_UPDATE the merged moments
    also update the running statistics, so a training step needs no separate update launch."""
    out_mask = p_mask[:, None] & c_mask[None, :]
    y = tl.where(out_mask, out.to(tl.float32), 0.0)
    if STATS == STATS_MOMENTS:
        count = tl.sum(p_mask.to(tl.float32), axis=0)
        tile_mean = tl.sum(y, axis=0) / count
        centred = tl.where(out_mask, y - tile_mean[None, :], 0.0)
        first = count + tl.zeros([BLOCK_DST], dtype=tl.float32)
        second = tile_mean
        third = tl.sum(centred * centred, axis=0)
    else:
        x_hat = (other - mean_c[None, :]) * rstd_c[None, :]
        first = tl.sum(y, axis=0)
        second = tl.sum(y * x_hat, axis=0)
        third = tl.zeros([BLOCK_DST], dtype=tl.float32)
    plane = STATS_ROWS * C_DST
    row = stats_ptr + pid_p * C_DST + offs_c
    tl.store(row, first, mask=c_mask)
    tl.store(row + plane, second, mask=c_mask)
    if STATS == STATS_MOMENTS:
        tl.store(row + 2 * plane, third, mask=c_mask)
    tiles = tl.num_programs(0)
    if last_to_arrive(counter_ptr + pid_c, tiles):
        if STATS == STATS_MOMENTS:
            mean, var = merge_moments(stats_ptr, tiles, plane, offs_c, c_mask, reduced_ptr, reduced_ptr + C_DST,
                                      C_DST, _MERGE_BLOCK_ROWS, BLOCK_DST)
            if RUNNING_UPDATE != RUNNING_NONE:
                factor = momentum
                if RUNNING_UPDATE == RUNNING_CUMULATIVE:
                    factor = 1.0 / (tl.load(batches_ptr) + 1).to(tl.float32)
                exponential_average(running_mean_ptr, offs_c, c_mask, mean, factor)
                exponential_average(running_var_ptr, offs_c, c_mask, var * unbias, factor)
        else:
            tl.store(reduced_ptr + offs_c, sum_rows(stats_ptr, tiles, C_DST, offs_c, c_mask, _MERGE_BLOCK_ROWS,
                                                    BLOCK_DST), mask=c_mask)
            tl.store(reduced_ptr + C_DST + offs_c, sum_rows(stats_ptr + plane, tiles, C_DST, offs_c, c_mask,
                                                            _MERGE_BLOCK_ROWS, BLOCK_DST), mask=c_mask)


@triton.jit
def _grad_weight_block_sums(x_ptr, grad_y_ptr, u_start, u_end, kh, corner, steps, lanes, sizes, co_mask, ci_mask,
                            scale_ci, shift_ci, STRIDE_H: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
                            STRIDE_W: tl.constexpr, DIL_H: tl.constexpr, HAS_BIAS: tl.constexpr,
                            X_BN_RELU: tl.constexpr, PADDING_BY_PRODUCT: tl.constexpr, FULL_BOXES: tl.constexpr,
                            INPUT_PRECISION: tl.constexpr, TILE_N: tl.constexpr, TILE_H: tl.constexpr,
                            TILE_W: tl.constexpr, BLOCK_OUT: tl.constexpr, COLUMNS: tl.constexpr):
    """grad_y tile @ x tile summed over the pixel boxes u_start..u_end of one kernel row and input-channel
    block (see conv2d_grad_weight_kernel), and grad_y's sums for the bias.

    ``corner``: the first box (box_n, box_h, box_w) and its offsets in grad_y and x; ``steps``: how those
    offsets change to the next box along W, at the end of a box row, at the end of an image; ``lanes``: a
    lane's (n, h, w), its input row, its offsets from the corner in grad_y and (with each column's) in x, and
    its input column with each column's; ``sizes``: N, H, W, H_out, W_out and the boxes along H and W.
    X_BN_RELU: x is loaded as relu(scale_ci * x + shift_ci), padding zeroed by a product with the 0/1 mask,
    two 16-bit values per instruction (PADDING_BY_PRODUCT: exact where that t is finite), or selected.
    FULL_BOXES: no box holds a pixel past the end, so only the padding masks x."""
    box_n, box_h, box_w, gy_corner, x_corner = corner
    gy_next_w, gy_next_h, gy_next_n, x_next_w, x_next_h, x_next_n = steps
    lane_n, lane_h, lane_w, lane_ih, gy_lane, x_lane_col, lane_col_iw = lanes
    N, H, W, H_out, W_out, tiles_h, tiles_w = sizes
    acc = tl.zeros([BLOCK_OUT, COLUMNS], dtype=tl.float32)
    bias_acc = tl.zeros([BLOCK_OUT], dtype=tl.float32)
    for unit in range(u_start, u_end):
        oh0 = box_h * TILE_H
        ow0 = box_w * TILE_W
        ih0 = oh0 * STRIDE_H - PAD_H + kh * DIL_H  # the corner's input row and column
        iw0 = ow0 * STRIDE_W - PAD_W
        # 0 <= i < size as one unsigned compare (a negative i wraps past any size)
        row_valid = (ih0 + lane_ih).to(tl.uint32) < H.to(tl.uint32)
        if FULL_BOXES:
            gy_t = tl.load(grad_y_ptr + gy_corner + gy_lane, mask=co_mask[:, None], other=0.0)
        else:
            p_mask = (lane_n < N - box_n * TILE_N) & (lane_h < H_out - oh0) & (lane_w < W_out - ow0)
            gy_t = tl.load(grad_y_ptr + gy_corner + gy_lane, mask=co_mask[:, None] & p_mask[None, :], other=0.0)
            row_valid = row_valid & p_mask
        x_mask = row_valid[:, None] & ((iw0 + lane_col_iw).to(tl.uint32) < W.to(tl.uint32)) & ci_mask[None, :]
        x_tile = tl.load(x_ptr + x_corner + x_lane_col, mask=x_mask, other=0.0)
        if X_BN_RELU:
            t = relu(x_tile.to(tl.float32) * scale_ci[None, :] + shift_ci[None, :])
            if PADDING_BY_PRODUCT:  # packed two to a register in 16 bits
                x_tile = t.to(x_tile.dtype) * x_mask.to(x_tile.dtype)
            else:
                x_tile = tl.where(x_mask, t, 0.0).to(x_tile.dtype)
        acc = tl.dot(gy_t, x_tile.to(gy_t.dtype), acc, input_precision=INPUT_PRECISION)
        if HAS_BIAS:
            bias_acc += tl.sum(gy_t.to(tl.float32), axis=1)
        box_w += 1  # the next box: along W, then H, then the batch
        row_done = box_w == tiles_w
        box_w = tl.where(row_done, 0, box_w)
        box_h += row_done.to(tl.int32)
        image_done = box_h == tiles_h
        box_h = tl.where(image_done, 0, box_h)
        box_n += image_done.to(box_n.dtype)
        gy_corner += tl.where(image_done, gy_next_n, tl.where(row_done, gy_next_h, gy_next_w))
        x_corner += tl.where(image_done, x_next_n, tl.where(row_done, x_next_h, x_next_w))
    return acc, bias_acc


@triton.autotune(configs=tiles.grad_weight_configs(), key=_GRAD_WEIGHT_KEY, cache_results=True)
@triton.jit(do_not_specialize=["N", "H", "W", "H_out", "W_out", "C_OUT", "C_IN", "UNITS_PER_SPLIT"])
def conv2d_grad_weight_kernel(
    x_ptr,  # (N, C_IN, H, W) forward input
    grad_y_ptr,  # (N, C_OUT, H_out, W_out) gradient of the output
    grad_w_ptr,  # (C_OUT, IN_PER_GROUP, KH, KW) out: alpha * the weight gradient
    grad_b_ptr,  # (C_OUT,) out: alpha * the bias gradient, written if HAS_BIAS
    partial_w_ptr,  # (splits, C_OUT, IN_PER_GROUP, KH, KW) fp32 scratch, contiguous: per-split sums
    partial_b_ptr,  # (splits, C_OUT) fp32 scratch, contiguous: per-split bias sums (HAS_BIAS)
    counter_ptr,  # (KH*cdiv(C_OUT, BLOCK_OUT)*cdiv(C_IN, BLOCK_IN),) int32 arrival counters, zero
    carry_w_ptr, carry2_w_ptr,  # (C_OUT, IN_PER_GROUP, KH, KW): weight gradients added to grad_w (CARRIES)
    carry_b_ptr, carry2_b_ptr,  # (C_OUT,): bias gradients added to grad_b (CARRIES and HAS_BIAS)
    bn_mean_ptr, bn_var_ptr, bn_gamma_ptr, bn_beta_ptr,  # (C_IN,) BatchNorm applied to x (X_BN_RELU)
    x_stride_n, x_stride_c, x_stride_h, x_stride_w,  # strides of x, elements
    gy_stride_n, gy_stride_c, gy_stride_h, gy_stride_w,  # strides of grad_y, elements
    gw_stride_out, gw_stride_in, gw_stride_kh, gw_stride_kw,  # strides of grad_w, elements
    gb_stride,  # stride of grad_b, elements
    cw_stride_out, cw_stride_in, cw_stride_kh, cw_stride_kw,  # strides of carry_w, elements
    c2w_stride_out, c2w_stride_in, c2w_stride_kh, c2w_stride_kw,  # strides of carry2_w, elements
    cb_stride, c2b_stride,  # strides of carry_b and carry2_b, elements
    N, H, W, H_out, W_out,  # batch and spatial sizes
    C_OUT, C_IN, OUT_PER_GROUP, IN_PER_GROUP,  # channels, in total and per group
    UNITS_PER_SPLIT,  # pixel boxes (TILE_N x TILE_H x TILE_W output pixels) each split reduces over
    alpha,  # float: the gradients are those of alpha * conv (-1: a convolution entering with a minus sign)
    bn_eps,  # float: the BatchNorm's epsilon
    KH: tl.constexpr, KW: tl.constexpr,  # kernel size
    KW_BLOCK: tl.constexpr,  # KW rounded up to a power of two: the taps a tile's columns hold
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,  # convolution stride
    PAD_H: tl.constexpr, PAD_W: tl.constexpr,  # zero padding
    DIL_H: tl.constexpr, DIL_W: tl.constexpr,  # dilation
    HAS_BIAS: tl.constexpr,  # also write the bias gradient's partial sums
    X_BN_RELU: tl.constexpr,  # x is loaded as relu(bn(x)) (zero padding stays zero)
    CARRIES: tl.constexpr,  # 0-2: grad_w (grad_b) = alpha * the sums + carry_w (+ carry2_w), added before the cast
    OUT_ALIGN: tl.constexpr,  # the largest power of two (at most 16) dividing C_OUT
    IN_ALIGN: tl.constexpr,  # and every output-channel tile's in_start and in_end (at most 16)
    FULL_CHANNEL_BLOCKS: tl.constexpr,  # C_OUT a multiple of BLOCK_OUT, every tile's input channels whole blocks
    FULL_BOXES: tl.constexpr,  # N, H_out, W_out multiples of TILE_N, TILE_H, TILE_W: every box whole
    WIDE_PIXEL_INDEX: tl.constexpr,  # N*H_out*W_out >= 2^31: box indices in 64 bits
    INPUT_PRECISION: tl.constexpr,  # "ieee" or "tf32", for fp32 dots
    TILE_N: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,  # the pixel box, powers of two
    BLOCK_OUT: tl.constexpr, BLOCK_IN: tl.constexpr,  # channel tile sizes
):
    """grad_w[co, ci, kh, kw] = alpha * sum over pixels of grad_y[co] * x[ci] at tap (kh, kw).

    Grid (kernel rows, output-channel tiles, splits): a program computes the KW taps of one kernel row
    as one product, grad_y tile @ an x tile whose columns are (tap, in-channel) pairs, so a grad_y tile
    is read once per kernel row, not once per tap, and the pixel index arithmetic is shared by the row's
    taps. The rows vary fastest, so the KH programs reading one grad_y tile run together and share it
    through L2. Splits give the pixel reduction its parallelism: each writes its fp32 partial, and the
    last split of a (row, channel tile, input-channel block) to finish sums them in split order
    (deterministic), scales, casts and stores them in grad_w's layout.
    """
    kh = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_split = tl.program_id(2)

    c0 = pid_c * BLOCK_OUT
    offs_co = c0 + tl.arange(0, BLOCK_OUT)
    # C_OUT and the input-channel range are multiples of OUT_ALIGN and IN_ALIGN (the launcher's
    # grad_weight_channel_alignment): the grad_y and x loads along channels vectorize
    if FULL_CHANNEL_BLOCKS:
        co_mask = tl.full([BLOCK_OUT], 1, tl.int1)
    else:
        co_mask = offs_co < tl.multiple_of((C_OUT // OUT_PER_GROUP) * OUT_PER_GROUP, OUT_ALIGN)  # (a hint needs an op)
    group_co = offs_co // OUT_PER_GROUP
    in_start = tl.multiple_of((c0 // OUT_PER_GROUP) * IN_PER_GROUP, IN_ALIGN)
    in_end = tl.multiple_of(((tl.minimum(c0 + BLOCK_OUT, C_OUT) - 1) // OUT_PER_GROUP + 1) * IN_PER_GROUP, IN_ALIGN)

    # The pixels come in (TILE_N, TILE_H, TILE_W) boxes of the output, all powers of two: a box's pixel
    # (n, oh, ow) is its corner plus shifts and masks of the lane index. A split reduces over UNITS_PER_SPLIT
    # consecutive boxes, stepping the corner box by box (no division in the loop); an offset is the corner's
    # (a scalar) plus the lane's (hoisted), a pixel's bounds the lane's index against what the corner leaves.
    tiles_w = tl.cdiv(W_out, TILE_W)
    tiles_h = tl.cdiv(H_out, TILE_H)
    tiles_hw = tiles_h * tiles_w
    if WIDE_PIXEL_INDEX:
        units = tl.cdiv(N, TILE_N).to(tl.int64) * tiles_hw
        u_start = pid_split.to(tl.int64) * UNITS_PER_SPLIT
    else:  # fewer than 2^31 pixels, so fewer boxes: 32-bit divisions
        units = tl.cdiv(N, TILE_N) * tiles_hw
        u_start = pid_split * UNITS_PER_SPLIT
    u_end = tl.minimum(u_start + UNITS_PER_SPLIT, units)
    start_n = u_start // tiles_hw  # the first box's corner, in boxes
    start_hw = (u_start - start_n * tiles_hw).to(tl.int32)
    start_h = start_hw // tiles_w
    start_w = start_hw - start_h * tiles_w
    lane = tl.arange(0, TILE_N * TILE_H * TILE_W)
    lane_n = lane // (TILE_H * TILE_W)
    lane_h = (lane // TILE_W) % TILE_H
    lane_w = lane % TILE_W
    # a lane's offsets from its box's corner (int64: a box may span images of more than 2^31 elements)
    gy_lane = lane_n.to(tl.int64) * gy_stride_n + (lane_h * gy_stride_h).to(tl.int64) \
        + (lane_w * gy_stride_w).to(tl.int64)
    gy_lane = gy_lane[None, :] + offs_co[:, None].to(tl.int64) * gy_stride_c
    x_lane = lane_n.to(tl.int64) * x_stride_n + (lane_h * STRIDE_H).to(tl.int64) * x_stride_h \
        + (lane_w * STRIDE_W).to(tl.int64) * x_stride_w
    lane_ih = lane_h * STRIDE_H
    lane_iw = lane_w * STRIDE_W
    # how a corner's offsets change from one box to the next: along W, wrapping to the next box row, wrapping
    # to the next image
    # (tl.cast: a stride of 1 is a constexpr int)
    gy_next_w = TILE_W * tl.cast(gy_stride_w, tl.int64)
    gy_next_h = gy_next_w + TILE_H * tl.cast(gy_stride_h, tl.int64) - tiles_w.to(tl.int64) * TILE_W * gy_stride_w
    gy_next_n = gy_next_h + TILE_N * tl.cast(gy_stride_n, tl.int64) - tiles_h.to(tl.int64) * TILE_H * gy_stride_h
    x_next_w = (TILE_W * STRIDE_W) * tl.cast(x_stride_w, tl.int64)
    x_next_h = x_next_w + (TILE_H * STRIDE_H) * tl.cast(x_stride_h, tl.int64) \
        - tiles_w.to(tl.int64) * (TILE_W * STRIDE_W) * x_stride_w
    x_next_n = x_next_h + TILE_N * tl.cast(x_stride_n, tl.int64) \
        - tiles_h.to(tl.int64) * (TILE_H * STRIDE_H) * x_stride_h
    taps = KH * KW
    w_split_stride = C_OUT * IN_PER_GROUP * taps
    splits = tl.num_programs(2)

    # the tile's columns: (kw, in-channel) pairs, KW_BLOCK taps of BLOCK_IN channels; along a run of BLOCK_IN
    # columns the tap is constant and the channel contiguous, so the x loads vectorize along channels
    col = tl.arange(0, KW_BLOCK * BLOCK_IN)
    col_kw = tl.max_constancy(col // BLOCK_IN, BLOCK_IN)
    col_ci = tl.max_contiguous(tl.multiple_of(col % BLOCK_IN, BLOCK_IN), BLOCK_IN)
    col_dw = col_kw * DIL_W
    for ci0 in range(in_start, in_end, BLOCK_IN):
        offs_ci = ci0 + col_ci
        if FULL_CHANNEL_BLOCKS:
            ci_mask = col_kw < KW
        else:
            ci_mask = (offs_ci < in_end) & (col_kw < KW)
        group_ci = offs_ci // IN_PER_GROUP
        # one x tile serves the row's KW taps: pixel (ih, iw) and its KW - 1 neighbours along W
        x_lane_col = x_lane[:, None] + (col_dw.to(tl.int64) * x_stride_w + offs_ci.to(tl.int64) * x_stride_c)[None, :]
        lane_col_iw = lane_iw[:, None] + col_dw[None, :]
        gy_corner = (start_n * TILE_N).to(tl.int64) * gy_stride_n + (start_h * TILE_H).to(tl.int64) * gy_stride_h \
            + (start_w * TILE_W).to(tl.int64) * gy_stride_w
        x_corner = (start_n * TILE_N).to(tl.int64) * x_stride_n \
            + (start_h * TILE_H * STRIDE_H - PAD_H + kh * DIL_H).to(tl.int64) * x_stride_h \
            + (start_w * TILE_W * STRIDE_W - PAD_W).to(tl.int64) * x_stride_w
        corner = (start_n, start_h, start_w, gy_corner, x_corner)
        steps = (gy_next_w, gy_next_h, gy_next_n, x_next_w, x_next_h, x_next_n)
        lanes = (lane_n, lane_h, lane_w, lane_ih, gy_lane, x_lane_col, lane_col_iw)
        sizes = (N, H, W, H_out, W_out, tiles_h, tiles_w)
        if X_BN_RELU:
            _, _, scale_ci, shift_ci = bn_scale_shift(bn_mean_ptr, bn_var_ptr, bn_gamma_ptr, bn_beta_ptr, bn_eps,
                                                      offs_ci, ci_mask)
            # 16-bit padding (x = 0 loaded) is zeroed by a product with the 0/1 mask where that is exact: every
            # t = relu(scale * 0 + shift) finite; else (a cold path) selected. fp32 selects: a product per
            # element costs what a select does there.
            if x_ptr.dtype.element_ty == tl.float32:
                acc, bias_acc = _grad_weight_block_sums(
                    x_ptr, grad_y_ptr, u_start, u_end, kh, corner, steps, lanes, sizes, co_mask, ci_mask,
                    scale_ci, shift_ci, STRIDE_H, PAD_H, PAD_W, STRIDE_W, DIL_H, HAS_BIAS, True, False, FULL_BOXES,
                    INPUT_PRECISION, TILE_N, TILE_H, TILE_W, BLOCK_OUT, KW_BLOCK * BLOCK_IN)
            elif tl.sum((scale_ci * 0.0 + shift_ci * 0.0 != 0.0).to(tl.int32), axis=0) == 0:
                acc, bias_acc = _grad_weight_block_sums(
                    x_ptr, grad_y_ptr, u_start, u_end, kh, corner, steps, lanes, sizes, co_mask, ci_mask,
                    scale_ci, shift_ci, STRIDE_H, PAD_H, PAD_W, STRIDE_W, DIL_H, HAS_BIAS, True, True, FULL_BOXES,
                    INPUT_PRECISION, TILE_N, TILE_H, TILE_W, BLOCK_OUT, KW_BLOCK * BLOCK_IN)
            else:
                acc, bias_acc = _grad_weight_block_sums(
                    x_ptr, grad_y_ptr, u_start, u_end, kh, corner, steps, lanes, sizes, co_mask, ci_mask,
                    scale_ci, shift_ci, STRIDE_H, PAD_H, PAD_W, STRIDE_W, DIL_H, HAS_BIAS, True, False, FULL_BOXES,
                    INPUT_PRECISION, TILE_N, TILE_H, TILE_W, BLOCK_OUT, KW_BLOCK * BLOCK_IN)
        else:
            acc, bias_acc = _grad_weight_block_sums(
                x_ptr, grad_y_ptr, u_start, u_end, kh, corner, steps, lanes, sizes, co_mask, ci_mask,
                co_mask, co_mask, STRIDE_H, PAD_H, PAD_W, STRIDE_W, DIL_H, HAS_BIAS, False, False, FULL_BOXES,
                INPUT_PRECISION, TILE_N, TILE_H, TILE_W, BLOCK_OUT, KW_BLOCK * BLOCK_IN)
        local_ci = offs_ci - group_ci * IN_PER_GROUP
        tap = kh * KW + col_kw
        tile_offs = offs_co[:, None] * (IN_PER_GROUP * taps) + (local_ci * taps + tap)[None, :]
        keep = (group_co[:, None] == group_ci[None, :]) & co_mask[:, None] & ci_mask[None, :]
        tl.store(partial_w_ptr + pid_split * w_split_stride + tile_offs, acc, mask=keep)
        bias_block = (kh == 0) & (ci0 + BLOCK_IN >= in_end)  # one block of one kernel row carries the bias
        if HAS_BIAS:
            tl.store(partial_b_ptr + pid_split * C_OUT + offs_co, bias_acc, mask=co_mask & bias_block)
        # this block's last split to finish sums the splits (a counter per kernel row, channel tile and block:
        # reducing here, not after the loop, keeps no tile bounds alive across it)
        counter = (kh * tl.num_programs(1) + pid_c) * tl.cdiv(C_IN, BLOCK_IN) + ci0 // BLOCK_IN
        if last_to_arrive(counter_ptr + counter, splits):
            total = tl.zeros([BLOCK_OUT, KW_BLOCK * BLOCK_IN], dtype=tl.float32)
            for split in range(0, splits):
                total += tl.load(partial_w_ptr + split * w_split_stride + tile_offs, mask=keep, other=0.0,
                                 cache_modifier=".cg")
            gw_offs = offs_co[:, None] * gw_stride_out + (local_ci * gw_stride_in + col_kw * gw_stride_kw)[None, :] \
                + kh * gw_stride_kh
            total = total * alpha
            if CARRIES >= 1:
                cw_offs = offs_co[:, None] * cw_stride_out + (local_ci * cw_stride_in + col_kw * cw_stride_kw)[None, :] \
                    + kh * cw_stride_kh
                total += tl.load(carry_w_ptr + cw_offs, mask=keep, other=0.0).to(tl.float32)
            if CARRIES >= 2:
                c2w_offs = offs_co[:, None] * c2w_stride_out \
                    + (local_ci * c2w_stride_in + col_kw * c2w_stride_kw)[None, :] + kh * c2w_stride_kh
                total += tl.load(carry2_w_ptr + c2w_offs, mask=keep, other=0.0).to(tl.float32)
            tl.store(grad_w_ptr + gw_offs, total.to(grad_w_ptr.dtype.element_ty), mask=keep)
            if HAS_BIAS:
                if bias_block:
                    total_b = tl.zeros([BLOCK_OUT], dtype=tl.float32)
                    for split in range(0, splits):
                        total_b += tl.load(partial_b_ptr + split * C_OUT + offs_co, mask=co_mask, other=0.0,
                                           cache_modifier=".cg")
                    total_b = total_b * alpha
                    if CARRIES >= 1:
                        total_b += tl.load(carry_b_ptr + offs_co * cb_stride, mask=co_mask, other=0.0).to(tl.float32)
                    if CARRIES >= 2:
                        total_b += tl.load(carry2_b_ptr + offs_co * c2b_stride, mask=co_mask,
                                           other=0.0).to(tl.float32)
                    tl.store(grad_b_ptr + offs_co * gb_stride, total_b.to(grad_b_ptr.dtype.element_ty), mask=co_mask)



@triton.jit
def relayout_kernel(
    src_ptr,  # (N, C, H, W), any strides
    dst_ptr,  # (N, C, H, W) out, any strides
    src_stride_n, src_stride_c, src_stride_h, src_stride_w,  # strides of src, elements
    dst_stride_n, dst_stride_c, dst_stride_h, dst_stride_w,  # strides of dst, elements
    C, H, W,  # channels and spatial sizes
    HW_BLOCKS,  # cdiv(H * W, BLOCK_HW): the pixel tiles of one image
    SRC_PIXELS_DENSE: tl.constexpr,  # src pixel (h, w) of an image at (h * W + w) * src_stride_w
    DST_PIXELS_DENSE: tl.constexpr,  # the same for dst
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,  # tile: channels x pixels of one image
):
    """dst[n, c, h, w] = src[n, c, h, w]: a tensor in another memory format (an NCHW activation or an OIHW
    weight in channels_last, whose channels the convolution kernels load in vectors). One image's
    BLOCK_C x BLOCK_HW tile per program, read along src's contiguous dimension and written along dst's (the
    compiler transposes the tile in shared memory)."""
    pid = tl.program_id(0)
    n = pid // HW_BLOCKS
    offs_hw = (pid - n * HW_BLOCKS) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (offs_c < C)[:, None] & (offs_hw < H * W)[None, :]
    h = offs_hw // W
    w = offs_hw - h * W
    if SRC_PIXELS_DENSE:
        src_pixel = offs_hw.to(tl.int64) * src_stride_w
    else:
        src_pixel = h.to(tl.int64) * src_stride_h + w.to(tl.int64) * src_stride_w
    if DST_PIXELS_DENSE:
        dst_pixel = offs_hw.to(tl.int64) * dst_stride_w
    else:
        dst_pixel = h.to(tl.int64) * dst_stride_h + w.to(tl.int64) * dst_stride_w
    n64 = n.to(tl.int64)
    c64 = offs_c.to(tl.int64)
    values = tl.load(src_ptr + n64 * src_stride_n + (c64[:, None] * src_stride_c + src_pixel[None, :]), mask=mask)
    tl.store(dst_ptr + n64 * dst_stride_n + (c64[:, None] * dst_stride_c + dst_pixel[None, :]), values, mask=mask)
