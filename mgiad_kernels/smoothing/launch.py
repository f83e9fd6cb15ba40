"""The fused smoothing step's launchers: u + relu(bn2(B(relu(bn1(f - A u))))) (MGiaD paper eq. 3) as the
convolution's gather kernel with its BatchNorm fusions (``conv.launch._gather``) and the BatchNorm kernels of
``kernels.py``, forward, backward and eval mode."""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch

from ..conv.geometry import ConvGeometry
from ..conv import launch as conv_launch
from ..conv.launch import BatchNormArgs, RunningStatsUpdate
from ..conv.tiles import _cdiv
from ..runtime import launch_sites
from ..runtime.buffers import arrival_counters, scratch

_ELEMENTWISE_BLOCK_P, _ELEMENTWISE_BLOCK_C = 64, 32


def _elementwise_grid(pixels: int, channels: int, block_p: int = _ELEMENTWISE_BLOCK_P) -> tuple[int, int]:
    return _cdiv(pixels, block_p), _cdiv(channels, _ELEMENTWISE_BLOCK_C)


@functools.lru_cache(maxsize=None)
def _batchnorm_kernels():
    from . import kernels  # deferred: TRITON_INTERPRET must be read when kernels are defined

    return kernels


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
    site = launch_sites.SITES.get(key)
    if site is None:
        dense = all(_pixels_evenly_spaced(t) for t in activations)
        positions = tuple(next(i for i, p in enumerate(pointers) if p is t) for t in activations)
        site = launch_sites.add_site(key, kernel, grid, rest, {**flags, "PIXEL_DENSE": dense, "BLOCK_P": block_p,
                                                               "BLOCK_C": _ELEMENTWISE_BLOCK_C},
                                     {"num_warps": num_warps}, promises=_elementwise_promises(positions),
                                     description=f"grid {grid} {flags} activations " + ", ".join(
                                         f"{tuple(t.shape)} {t.stride()}" for t in activations))
    site.launch(pointers, scratch(device))


def _elementwise_promises(positions: tuple) -> Callable:
    """A BatchNorm kernel site's ``promises`` (LaunchSite): PIXEL_DENSE, every activation (the pointers at
    ``positions``) with its pixels evenly spaced."""

    def promises(c: dict, pointers: tuple) -> list[str]:
        return launch_sites.promise(not c["PIXEL_DENSE"] or all(_pixels_evenly_spaced(pointers[i]) for i in positions),
                                    "PIXEL_DENSE: every activation's pixels are evenly spaced ("
                                    + ", ".join(f"{tuple(pointers[i].shape)} {pointers[i].stride()}" for i in positions)
                                    + ")")

    return promises


def _carry_arguments(tensors: list, unused: torch.Tensor, rank: int) -> tuple[tuple, tuple]:
    """The kernels' two carried-gradient pointer slots and their strides: ``tensors`` (at most two),
    then the placeholder with zero strides."""
    pointers = tuple(tensors[i] if i < len(tensors) else unused for i in range(2))
    strides = tuple(s for i in range(2) for s in (tensors[i].stride() if i < len(tensors) else (0,) * rank))
    return pointers, strides


def _empty_activation(like: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    return torch.empty_like(like, memory_format=memory_format)


def materializes_t(dtype: torch.dtype) -> bool:
    """Whether the training smoothing step writes t = relu(bn1(r)) in a launch of its own (16-bit) rather
    than recomputing it in B's prologue and again in B's grad weight (fp32).

    From the sm_90 codegen report (its bandwidth model, N=128, bf16 C=64 H=32 g_s=8): B with the prologue
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
                           running: tuple | None, running_updates: tuple[RunningStatsUpdate, ...] | None = None,
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
    fmt = conv_launch.conv_output_memory_format(u, weight_a)
    u, weight_a, weight_b, inner = _with_contiguous_channels(u, weight_a, weight_b)
    n_batch, channels, h, w = u.shape
    pixels = n_batch * h * w
    r, s, out = _empty_activation(u, inner), _empty_activation(u, inner), _empty_activation(u, fmt)
    t = _empty_activation(u, inner) if materializes_t(u.dtype) else u.new_empty(0)
    if adjoint_weights and conv_launch.adjoint_weight_wanted(u.dtype):
        adjoint_a, adjoint_b = conv_launch.empty_adjoint_weight(weight_a, geo_a), conv_launch.empty_adjoint_weight(
            weight_b, geo_b)
    else:
        adjoint_a, adjoint_b = u.new_empty(0), u.new_empty(0)  # distinct: custom-op outputs may not alias
    written_a, written_b = (adjoint if adjoint.numel() else None for adjoint in (adjoint_a, adjoint_b))
    unused = scratch(u.device)

    def b_of_relu_bn1(bn1, **stats_args):
        if not t.numel():
            conv_launch._gather(r, weight_b, bias_b, s, geo_b, False, prologue_bn=bn1, adjoint_weight=written_b,
                                **stats_args)
            return
        _elementwise(_batchnorm_kernels().bn_relu_residual_kernel, _elementwise_grid(pixels, channels),
                     (r, unused, t, *bn1.pointers(), unused, unused),
                     (*r.stride(), 0, 0, 0, 0, *t.stride(), pixels, h * w, w, channels, bn1.eps), (r, t),
                     HAS_RESIDUAL=False, COUNT_BATCH=False)
        conv_launch._gather(t, weight_b, bias_b, s, geo_b, False, adjoint_weight=written_b, **stats_args)

    a_of_u = dict(other=f, other_mode="add", alpha=-1.0, adjoint_weight=written_a)
    if running is None:
        stats = torch.empty((4, channels), device=u.device, dtype=torch.float32)
        partials = conv_launch.gather_stats_buffer(u.shape, u.device)  # reused by B: launches run in stream order
        update1, update2 = running_updates if running_updates is not None else (None, None)
        conv_launch._gather(u, weight_a, bias_a, r, geo_a, False, stats=partials, stats_mode="moments",
                            reduced=stats[:2], running_update=update1, **a_of_u)
        b_of_relu_bn1(BatchNormArgs(stats[0], stats[1], *bn1_affine, eps[0]), stats=partials,
                      stats_mode="moments", reduced=stats[2:], running_update=update2)
    else:
        stats = torch.stack([v.float() for v in running])
        conv_launch._gather(u, weight_a, bias_a, r, geo_a, False, **a_of_u)
        b_of_relu_bn1(BatchNormArgs(stats[0], stats[1], *bn1_affine, eps[0]))
    _residual_update(s, u, out, BatchNormArgs(stats[2], stats[3], *bn2_affine, eps[1]),
                     None if running_updates is None else tuple(update.num_batches for update in running_updates))
    return out, r, s, stats, t, adjoint_a, adjoint_b


def intermediate_memory_format(u: torch.Tensor, weight_a: torch.Tensor) -> torch.memory_format:
    """The memory format of the step's intermediates r, s, t and of its backward's: that of u and weight_a as
    the convolutions read them (channels_last where either is re-laid, ``_with_contiguous_channels``). Its
    outputs and gradients keep F.conv2d's rule on u and weight_a as given."""
    if conv_launch.channels_strided(u) or conv_launch.channels_strided(weight_a):
        return torch.channels_last
    return conv_launch.conv_output_memory_format(u, weight_a)


def _with_contiguous_channels(u: torch.Tensor, weight_a: torch.Tensor, weight_b: torch.Tensor) -> tuple:
    """(u, weight_a, weight_b, the intermediates' memory format): each tensor or its channels_last copy where
    its channels are strided (``conv_launch.with_contiguous_channels``: NCHW activations, OIHW weights), as the
    convolutions read them. f is read as is, by A's epilogue (along its pixels where it is NCHW)."""
    inner = intermediate_memory_format(u, weight_a)
    u, weight_a, weight_b = (conv_launch.with_contiguous_channels(t) for t in (u, weight_a, weight_b))
    return u, weight_a, weight_b, inner


def _residual_update(s: torch.Tensor, u: torch.Tensor, out: torch.Tensor, bn2: BatchNormArgs,
                     num_batches: tuple | None) -> None:
    """out = u + relu(bn2(s)), counting the batch in both BatchNorms' num_batches_tracked where given."""
    n_batch, channels, h, w = u.shape
    pixels = n_batch * h * w
    batches = num_batches if num_batches is not None else (scratch(u.device),) * 2
    _elementwise(_batchnorm_kernels().bn_relu_residual_kernel, _elementwise_grid(pixels, channels),
                 (s, u, out, *bn2.pointers(), *batches),
                 (*s.stride(), *u.stride(), *out.stride(), pixels, h * w, w, channels, bn2.eps), (s, u, out),
                 HAS_RESIDUAL=True, COUNT_BATCH=num_batches is not None)


def smoothing_step_inference(u: torch.Tensor, f: torch.Tensor, weight_a: torch.Tensor, bias_a: torch.Tensor | None,
                             geo_a: ConvGeometry, weight_b: torch.Tensor, bias_b: torch.Tensor | None,
                             geo_b: ConvGeometry, bn1: BatchNormArgs, bn2: BatchNormArgs) -> torch.Tensor:
    """Eval mode, BatchNorm folded into the convolutions' epilogues: two launches.

    t = relu(bn1(f - A u)) in A's epilogue; u + relu(bn2(B t)) in B's.
    """
    fmt = conv_launch.conv_output_memory_format(u, weight_a)
    u, weight_a, weight_b, inner = _with_contiguous_channels(u, weight_a, weight_b)
    t, out = _empty_activation(u, inner), _empty_activation(u, fmt)
    conv_launch._gather(u, weight_a, bias_a, t, geo_a, False, other=f, other_mode="add", alpha=-1.0, epilogue_bn=bn1,
            epilogue_bn_relu=True)
    conv_launch._gather(t, weight_b, bias_b, out, geo_b, False, other=u, other_mode="add_after_bn", epilogue_bn=bn2)
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
    fmt = conv_launch.conv_output_memory_format(u, weight_a)  # the gradients of u and f
    grad_out = conv_launch.with_contiguous_channels(grad_out)
    inner = intermediate_memory_format(u, weight_a)  # the intermediates', as the forward's
    bn1 = BatchNormArgs(stats[0], stats[1], *bn1_affine, eps[0])
    grad_s, sums2 = _bn_relu_backward(grad_out, s, BatchNormArgs(stats[2], stats[3], *bn2_affine, eps[1]),
                                      _empty_activation(u, inner), batch_stats)
    grad_x1 = _empty_activation(u, inner)  # gradient of bn1(r), through the relu
    sums1 = torch.empty((2, u.shape[1]), device=u.device, dtype=torch.float32)
    (weight_at, adjoint_a), (weight_bt, adjoint_b) = (conv_launch._adjoint_or_weight(w, adjoint)
                                                      for w, adjoint in zip((weight_a, weight_b), adjoint_weights))
    weight_at, weight_bt = (conv_launch.with_contiguous_channels(w) for w in (weight_at, weight_bt))
    conv_launch._gather(grad_s, weight_bt, None, grad_x1, geo_b, True, other=r, other_mode="relu_grad",
                        epilogue_bn=bn1, stats=conv_launch.gather_stats_buffer(u.shape, u.device),
                        stats_mode="bn_grad", reduced=sums1, weight_is_adjoint=adjoint_b)
    grad_weight_b = grad_bias_b = None
    if needs_weight_grads[1]:
        b_input, b_input_bn = (t, None) if t.numel() else (r, bn1)  # kept t, or r with bn1 + relu recomputed
        grad_weight_b, grad_bias_b = conv_launch.conv2d_grad_weight(
            grad_s, b_input, geo_b, has_bias[1], x_bn=b_input_bn,
            memory_format=conv_launch.weight_memory_format(weight_b), carries=[c[3:5] for c in carries])
    grad_r = _empty_activation(u, inner)
    grad_f = _empty_activation(u, inner) if carry_fs else grad_r  # grad r + f's gradients from other uses
    _bn_backward(grad_x1, r, grad_r, bn1, sums1, batch_stats, carry_fs, grad_f)
    if inner != fmt:
        grad_f = conv_launch.relaid(grad_f, fmt)
    grad_u = _empty_activation(u, fmt)  # grad_out - A^T grad_r
    conv_launch._gather(grad_r, weight_at, None, grad_u, geo_a, True, other=grad_out, other_mode="add", alpha=-1.0,
                        weight_is_adjoint=adjoint_a)
    grad_weight_a = grad_bias_a = None
    if needs_weight_grads[0]:
        grad_weight_a, grad_bias_a = conv_launch.conv2d_grad_weight(  # u re-laid there if NCHW
            grad_r, u, geo_a, has_bias[0], alpha=-1.0, memory_format=conv_launch.weight_memory_format(weight_a),
            carries=[c[1:3] for c in carries])
    return grad_u, grad_f, grad_weight_a, grad_bias_a, grad_weight_b, grad_bias_b, sums1, sums2


def _bn_relu_backward(grad_out: torch.Tensor, s: torch.Tensor, bn2: BatchNormArgs, grad_s: torch.Tensor,
                      batch_stats: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """grad_s, the gradient of relu(bn2(s)) with respect to s, written into ``grad_s``, and the sums
    (sum g, sum g * s_hat), (2, C) fp32, it needs: two launches."""
    n_batch, channels, h, w = s.shape
    pixels = n_batch * h * w
    sums_grid = _elementwise_grid(pixels, channels, _GRAD_SUMS_BLOCK_P)
    partial2 = torch.empty((2, sums_grid[0], channels), device=s.device, dtype=torch.float32)
    sums2 = torch.empty((2, channels), device=s.device, dtype=torch.float32)  # sum g, sum g * s_hat
    kernels = _batchnorm_kernels()
    _elementwise(kernels.bn_relu_grad_sums_kernel, sums_grid,
                 (grad_out, s, partial2, sums2, arrival_counters(s.device, sums_grid[1]), *bn2.pointers()),
                 (*grad_out.stride(), *s.stride(), pixels, h * w, w, channels, sums_grid[0], bn2.eps), (grad_out, s),
                 block_p=_GRAD_SUMS_BLOCK_P, num_warps=_GRAD_SUMS_WARPS)
    unused = scratch(s.device)
    _elementwise(kernels.bn_backward_kernel, _elementwise_grid(pixels, channels),
                 (grad_out, s, grad_s, unused, unused, unused, sums2, *bn2.pointers()),
                 (*grad_out.stride(), *s.stride(), *grad_s.stride(), *(0,) * 8, pixels, h * w, w, channels,
                  bn2.eps, 1.0 / pixels), (grad_out, s, grad_s), RELU_MASK=True, BATCH_STATS=batch_stats, CARRIES=0)
    return grad_s, sums2


def _bn_backward(grad_x1: torch.Tensor, r: torch.Tensor, grad_r: torch.Tensor, bn1: BatchNormArgs,
                 sums1: torch.Tensor, batch_stats: bool, carry_fs: list, grad_f: torch.Tensor) -> None:
    """grad_r, the gradient of bn1(r) with respect to r from ``grad_x1`` and B^T's ``sums1``, into ``grad_r``;
    with ``carry_fs`` (f's gradients from other uses) their sum with grad_r into ``grad_f`` as well."""
    n_batch, channels, h, w = r.shape
    pixels = n_batch * h * w
    unused = scratch(r.device)
    carry_ptrs, carry_strides = _carry_arguments(carry_fs, unused, 4)
    _elementwise(_batchnorm_kernels().bn_backward_kernel, _elementwise_grid(pixels, channels),
                 (grad_x1, r, grad_r, *carry_ptrs, grad_f if carry_fs else unused, sums1, *bn1.pointers()),
                 (*grad_x1.stride(), *r.stride(), *grad_r.stride(), *carry_strides,
                  pixels, h * w, w, channels, bn1.eps, 1.0 / pixels),
                 (grad_x1, r, grad_r, *carry_fs, *([grad_f] if carry_fs else [])),
                 RELU_MASK=False, BATCH_STATS=batch_stats, CARRIES=len(carry_fs))

