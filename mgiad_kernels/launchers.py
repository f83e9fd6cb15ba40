"""Launchers: allocate outputs, pick grids, splits and precision, call the Triton kernels.

Nothing here checks arguments for the user (the functional layer does); everything here
assumes shapes that already agree.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ._triton_support import parallel_programs_wanted
from .conv_geometry import ConvGeometry

_PIXEL_ALIGN = 256  # splits cover multiples of the largest BLOCK_P, so tiles stay full


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


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


def conv_output_memory_format(x: torch.Tensor, weight: torch.Tensor) -> torch.memory_format:
    """F.conv2d's rule: channels_last output when the input or the weight has channels_last strides."""
    if strides_like_channels_last(x) or strides_like_channels_last(weight):
        return torch.channels_last
    return torch.contiguous_format


def _gather(src, weight, bias, dst, geo: ConvGeometry, transposed: bool) -> None:
    """Run conv2d_gather_kernel: the forward conv, or its adjoint for grad input."""
    n_batch, c_dst, h_dst, w_dst = dst.shape
    _, c_red, h_src, w_src = src.shape
    ws = weight.stride()
    if transposed:  # dst channel = input channel (in-group index on dim 1), reduced = output channel
        w_strides = (0, ws[1], ws[0], 0, ws[2], ws[3])
        dst_per_group, red_per_group = geo.in_per_group, geo.out_per_group
    else:
        w_strides = (ws[0], 0, 0, ws[1], ws[2], ws[3])
        dst_per_group, red_per_group = geo.out_per_group, geo.in_per_group
    kernel = _kernels().conv2d_gather_kernel
    grid = lambda meta: (  # noqa: E731
        _cdiv(n_batch * h_dst * w_dst, meta["BLOCK_P"]), _cdiv(c_dst, meta["BLOCK_DST"]))
    kernel[grid](
        src, weight, bias if bias is not None else weight, dst,
        *src.stride(), *dst.stride(), *w_strides,
        n_batch, h_src, w_src, h_dst, w_dst,
        c_dst, c_red, dst_per_group, red_per_group,
        KH=geo.kernel_h, KW=geo.kernel_w, STRIDE_H=geo.stride[0], STRIDE_W=geo.stride[1],
        PAD_H=geo.padding[0], PAD_W=geo.padding[1], DIL_H=geo.dilation[0], DIL_W=geo.dilation[1],
        TRANSPOSED=transposed, HAS_BIAS=bias is not None, INPUT_PRECISION=_input_precision(src.dtype),
    )


def conv2d_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                   groups: int) -> torch.Tensor:
    """y = conv2d(x, weight, bias) with F.conv2d's semantics, on the Triton gather kernel."""
    geo = ConvGeometry.of(x.shape, weight.shape, stride, padding, dilation, groups)
    y = torch.empty((x.shape[0], weight.shape[0], *geo.out_hw), device=x.device, dtype=x.dtype,
                    memory_format=conv_output_memory_format(x, weight))
    if y.numel():
        _gather(x, weight, bias, y, geo, transposed=False)
    return y


def conv2d_grad_input(grad_y: torch.Tensor, x_shape: Sequence[int], weight: torch.Tensor,
                      stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                      groups: int, memory_format: torch.memory_format) -> torch.Tensor:
    """grad_x = conv_transpose2d(grad_y, weight): the adjoint of the forward gather."""
    geo = ConvGeometry.of(x_shape, weight.shape, stride, padding, dilation, groups)
    grad_x = torch.empty(tuple(x_shape), device=grad_y.device, dtype=grad_y.dtype, memory_format=memory_format)
    if grad_x.numel():
        _gather(grad_y, weight, None, grad_x, geo, transposed=True)
    return grad_x


def conv2d_grad_weight(grad_y: torch.Tensor, x: torch.Tensor, weight_shape: Sequence[int],
                       stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                       groups: int, with_bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """grad_weight (and grad_bias) as split reductions over the N*H_out*W_out pixels."""
    geo = ConvGeometry.of(x.shape, weight_shape, stride, padding, dilation, groups)
    n_batch, c_in, h, w = x.shape
    c_out = weight_shape[0]
    h_out, w_out = geo.out_hw
    pixels = n_batch * h_out * w_out
    taps = geo.kernel_h * geo.kernel_w
    # enough splits to fill the device, none smaller than one aligned block of pixels
    max_splits = max(1, _cdiv(pixels, _PIXEL_ALIGN))
    splits = max(1, min(max_splits, _cdiv(parallel_programs_wanted(x.device), taps * _cdiv(c_out, 32))))
    pixels_per_split = _cdiv(_cdiv(max(pixels, 1), splits), _PIXEL_ALIGN) * _PIXEL_ALIGN
    splits = max(1, _cdiv(pixels, pixels_per_split))

    partial_w = torch.zeros((splits, c_out, geo.in_per_group, geo.kernel_h, geo.kernel_w),
                            device=x.device, dtype=torch.float32)
    partial_b = torch.zeros((splits, c_out), device=x.device, dtype=torch.float32) if with_bias else partial_w
    if pixels:
        kernel = _kernels().conv2d_grad_weight_kernel
        grid = lambda meta: (taps, _cdiv(c_out, meta["BLOCK_OUT"]), splits)  # noqa: E731
        kernel[grid](
            x, grad_y, partial_w, partial_b,
            *x.stride(), *grad_y.stride(),
            n_batch, h, w, h_out, w_out,
            c_out, c_in, geo.out_per_group, geo.in_per_group, pixels_per_split,
            KH=geo.kernel_h, KW=geo.kernel_w, STRIDE_H=geo.stride[0], STRIDE_W=geo.stride[1],
            PAD_H=geo.padding[0], PAD_W=geo.padding[1], DIL_H=geo.dilation[0], DIL_W=geo.dilation[1],
            HAS_BIAS=with_bias, INPUT_PRECISION=_input_precision(x.dtype),
        )
    grad_w = partial_w.sum(0).to(x.dtype)  # fixed-order reduction over splits: deterministic
    grad_b = partial_b.sum(0).to(x.dtype) if with_bias else None
    return grad_w, grad_b
