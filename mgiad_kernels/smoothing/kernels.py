"""Triton kernels for the BatchNorm parts of the fused smoothing step (MGiaD paper eq. 3).

Batch statistics are reduced inside the kernels that produce them, in a fixed order
(runtime/split_reduction.py: deterministic, no float atomics). These kernels apply the elementwise
parts that cannot ride in a convolution (they need statistics of the whole batch first); the
running statistics are updated where the gathers merge the moments (conv/kernels.py, RUNNING_UPDATE).
Every tensor is addressed through its strides as a (pixels = N*H*W, channels) matrix, so NCHW
and channels_last both work.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..conv.bn_relu import bn_scale_shift, relu, relu_grad
from ..runtime.split_reduction import last_to_arrive, sum_rows
from ..runtime.triton_support import interpreter_enabled, patch_interpreter_index

if interpreter_enabled():
    patch_interpreter_index()


@triton.jit
def _tile_offsets(offs_p, offs_c, HW, W, stride_n, stride_c, stride_h, stride_w, PIXEL_DENSE: tl.constexpr):
    """(BLOCK_P, BLOCK_C) element offsets of flat pixel indices n*H*W + h*W + w and channels. PIXEL_DENSE:
    the tensor's pixels are evenly spaced (stride_h = W*stride_w, stride_n = H*W*stride_w: channels_last
    without gaps), so a flat index sits at index * stride_w, with no division."""
    if PIXEL_DENSE:
        pixel = offs_p * stride_w
    else:
        n = offs_p // HW
        rem = offs_p - n * HW
        h = rem // W
        pixel = n * stride_n + h * stride_h + (rem - h * W) * stride_w
    return pixel[:, None] + offs_c[None, :].to(tl.int64) * stride_c


@triton.jit
def _elementwise_tile(P, C, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's pixel and channel indices over the (P, C) matrix, the channel mask and the tile mask."""
    offs_p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    return offs_p, offs_c, c_mask, (offs_p < P)[:, None] & c_mask[None, :]


@triton.jit(do_not_specialize=["P", "HW", "W", "C"])
def bn_relu_residual_kernel(
    x_ptr,  # (N, C, H, W): s = B(t), or r = f - A u (HAS_RESIDUAL False)
    residual_ptr,  # (N, C, H, W): u (HAS_RESIDUAL)
    out_ptr,  # (N, C, H, W) out: u + relu(bn(s)), or t = relu(bn(r)) (HAS_RESIDUAL False)
    bn_mean_ptr, bn_var_ptr, bn_gamma_ptr, bn_beta_ptr,  # (C,) the BatchNorm
    batches1_ptr, batches2_ptr,  # () int64 num_batches_tracked of the step's two BatchNorms (COUNT_BATCH)
    x_stride_n, x_stride_c, x_stride_h, x_stride_w,  # strides of x, elements
    res_stride_n, res_stride_c, res_stride_h, res_stride_w,  # strides of residual, elements
    out_stride_n, out_stride_c, out_stride_h, out_stride_w,  # strides of out, elements
    P, HW, W, C,  # pixels N*H*W, H*W, W, channels
    bn_eps,  # float
    HAS_RESIDUAL: tl.constexpr,  # add the residual (the update); else only relu(bn(x))
    COUNT_BATCH: tl.constexpr,  # training: add one to both num_batches_tracked, as nn.BatchNorm2d does
    PIXEL_DENSE: tl.constexpr,  # every tensor's pixels evenly spaced (see _tile_offsets)
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """The smoothing step's update u + relu(bn2(s)) (eq. 3), once bn2's batch statistics are known; or,
    without the residual, its t = relu(bn1(r)) once bn1's are.

    The gathers before it updated the running statistics from num_batches_tracked as it was before
    this batch; the count goes up here, after them in stream order."""
    if COUNT_BATCH:
        if (tl.program_id(0) == 0) & (tl.program_id(1) == 0):
            tl.store(batches1_ptr, tl.load(batches1_ptr) + 1)
            tl.store(batches2_ptr, tl.load(batches2_ptr) + 1)
    offs_p, offs_c, c_mask, mask = _elementwise_tile(P, C, BLOCK_P, BLOCK_C)
    _, _, scale, shift = bn_scale_shift(bn_mean_ptr, bn_var_ptr, bn_gamma_ptr, bn_beta_ptr, bn_eps, offs_c, c_mask)
    x_offs = _tile_offsets(offs_p, offs_c, HW, W, x_stride_n, x_stride_c, x_stride_h, x_stride_w, PIXEL_DENSE)
    x = tl.load(x_ptr + x_offs, mask=mask, other=0.0).to(tl.float32)
    out = relu(x * scale[None, :] + shift[None, :])
    if HAS_RESIDUAL:
        res_offs = _tile_offsets(offs_p, offs_c, HW, W, res_stride_n, res_stride_c, res_stride_h, res_stride_w,
                                 PIXEL_DENSE)
        out += tl.load(residual_ptr + res_offs, mask=mask, other=0.0).to(tl.float32)
    out_offs = _tile_offsets(offs_p, offs_c, HW, W, out_stride_n, out_stride_c, out_stride_h, out_stride_w,
                             PIXEL_DENSE)
    tl.store(out_ptr + out_offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["P", "HW", "W", "C", "ROWS"])
def bn_relu_grad_sums_kernel(
    grad_ptr,  # (N, C, H, W): gradient of relu(bn(x))
    x_ptr,  # (N, C, H, W): the BatchNorm's input
    partial_ptr,  # (2, ROWS, C) fp32 scratch: per-pixel-tile sum g and sum g * x_hat, g = grad * (bn(x) > 0)
    sums_ptr,  # (2, C) fp32 out: sum g and sum g * x_hat over the batch
    counter_ptr,  # (cdiv(C, BLOCK_C),) int32 arrival counters, zero
    bn_mean_ptr, bn_var_ptr, bn_gamma_ptr, bn_beta_ptr,  # (C,) the BatchNorm
    grad_stride_n, grad_stride_c, grad_stride_h, grad_stride_w,  # strides of grad, elements
    x_stride_n, x_stride_c, x_stride_h, x_stride_w,  # strides of x, elements
    P, HW, W, C, ROWS,  # pixels N*H*W, H*W, W, channels, rows of partial_ptr (pixel tiles)
    bn_eps,  # float
    PIXEL_DENSE: tl.constexpr,  # every tensor's pixels evenly spaced (see _tile_offsets)
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """BatchNorm-backward reductions through a ReLU: d gamma = sum g x_hat, d beta = sum g; the last pixel
    tile of each channel tile sums the tiles' partials in tile order."""
    pid_p = tl.program_id(0)
    offs_p, offs_c, c_mask, mask = _elementwise_tile(P, C, BLOCK_P, BLOCK_C)
    mean, rstd, scale, shift = bn_scale_shift(bn_mean_ptr, bn_var_ptr, bn_gamma_ptr, bn_beta_ptr, bn_eps,
                                              offs_c, c_mask)
    grad_offs = _tile_offsets(offs_p, offs_c, HW, W, grad_stride_n, grad_stride_c, grad_stride_h, grad_stride_w,
                              PIXEL_DENSE)
    grad = tl.load(grad_ptr + grad_offs, mask=mask, other=0.0).to(tl.float32)
    x_offs = _tile_offsets(offs_p, offs_c, HW, W, x_stride_n, x_stride_c, x_stride_h, x_stride_w, PIXEL_DENSE)
    x = tl.load(x_ptr + x_offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.where(mask, relu_grad(grad, x * scale[None, :] + shift[None, :]), 0.0)
    x_hat = (x - mean[None, :]) * rstd[None, :]
    tl.store(partial_ptr + pid_p * C + offs_c, tl.sum(g, axis=0), mask=c_mask)
    tl.store(partial_ptr + ROWS * C + pid_p * C + offs_c, tl.sum(g * x_hat, axis=0), mask=c_mask)
    if last_to_arrive(counter_ptr + tl.program_id(1), ROWS):
        tl.store(sums_ptr + offs_c, sum_rows(partial_ptr, ROWS, C, offs_c, c_mask, 32, BLOCK_C), mask=c_mask)
        tl.store(sums_ptr + C + offs_c, sum_rows(partial_ptr + ROWS * C, ROWS, C, offs_c, c_mask, 32, BLOCK_C),
                 mask=c_mask)


@triton.jit(do_not_specialize=["P", "HW", "W", "C"])
def bn_backward_kernel(
    grad_ptr,  # (N, C, H, W): gradient of bn(x), or of relu(bn(x)) when RELU_MASK
    x_ptr,  # (N, C, H, W): the BatchNorm's input
    out_ptr,  # (N, C, H, W) out: gradient of x
    carry_ptr, carry2_ptr,  # (N, C, H, W): gradients added to dx in total_ptr (CARRIES)
    total_ptr,  # (N, C, H, W) out, out's strides: dx + carry (+ carry2) (CARRIES)
    sums_ptr,  # (2, C) fp32: sum g and sum g * x_hat over the batch
    bn_mean_ptr, bn_var_ptr, bn_gamma_ptr, bn_beta_ptr,  # (C,) the BatchNorm
    grad_stride_n, grad_stride_c, grad_stride_h, grad_stride_w,  # strides of grad, elements
    x_stride_n, x_stride_c, x_stride_h, x_stride_w,  # strides of x, elements
    out_stride_n, out_stride_c, out_stride_h, out_stride_w,  # strides of out (and total), elements
    carry_stride_n, carry_stride_c, carry_stride_h, carry_stride_w,  # strides of carry, elements
    carry2_stride_n, carry2_stride_c, carry2_stride_h, carry2_stride_w,  # strides of carry2, elements
    P, HW, W, C,  # pixels N*H*W, H*W, W, channels
    bn_eps,  # float
    inv_count,  # float: 1 / (N*H*W)
    RELU_MASK: tl.constexpr,  # g = grad * (bn(x) > 0): backward through relu(bn(x))
    BATCH_STATS: tl.constexpr,  # normalized with batch statistics (training) or fixed ones (eval)
    CARRIES: tl.constexpr,  # 0-2: also store dx + the carries, x's gradient summed with other uses', in one pass
    PIXEL_DENSE: tl.constexpr,  # every tensor's pixels evenly spaced (see _tile_offsets)
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dx = gamma * rstd * (g - mean(g) - x_hat * mean(g x_hat)) with batch statistics, else gamma * rstd * g."""
    offs_p, offs_c, c_mask, mask = _elementwise_tile(P, C, BLOCK_P, BLOCK_C)
    mean, rstd, scale, shift = bn_scale_shift(bn_mean_ptr, bn_var_ptr, bn_gamma_ptr, bn_beta_ptr, bn_eps,
                                              offs_c, c_mask)
    grad_offs = _tile_offsets(offs_p, offs_c, HW, W, grad_stride_n, grad_stride_c, grad_stride_h, grad_stride_w,
                              PIXEL_DENSE)
    g = tl.load(grad_ptr + grad_offs, mask=mask, other=0.0).to(tl.float32)
    if RELU_MASK or BATCH_STATS:
        x_offs = _tile_offsets(offs_p, offs_c, HW, W, x_stride_n, x_stride_c, x_stride_h, x_stride_w, PIXEL_DENSE)
        x = tl.load(x_ptr + x_offs, mask=mask, other=0.0).to(tl.float32)
    if RELU_MASK:
        g = relu_grad(g, x * scale[None, :] + shift[None, :])
    if BATCH_STATS:
        mean_g = tl.load(sums_ptr + offs_c, mask=c_mask, other=0.0) * inv_count
        mean_gx = tl.load(sums_ptr + C + offs_c, mask=c_mask, other=0.0) * inv_count
        x_hat = (x - mean[None, :]) * rstd[None, :]
        g = g - mean_g[None, :] - x_hat * mean_gx[None, :]
    dx = g * scale[None, :]
    out_offs = _tile_offsets(offs_p, offs_c, HW, W, out_stride_n, out_stride_c, out_stride_h, out_stride_w, PIXEL_DENSE)
    tl.store(out_ptr + out_offs, dx.to(out_ptr.dtype.element_ty), mask=mask)
    if CARRIES >= 1:
        carry_offs = _tile_offsets(offs_p, offs_c, HW, W, carry_stride_n, carry_stride_c, carry_stride_h,
                                   carry_stride_w, PIXEL_DENSE)
        total = dx + tl.load(carry_ptr + carry_offs, mask=mask, other=0.0).to(tl.float32)
        if CARRIES >= 2:
            carry2_offs = _tile_offsets(offs_p, offs_c, HW, W, carry2_stride_n, carry2_stride_c, carry2_stride_h,
                                        carry2_stride_w, PIXEL_DENSE)
            total += tl.load(carry2_ptr + carry2_offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(total_ptr + out_offs, total.to(total_ptr.dtype.element_ty), mask=mask)
