"""Argument checking and shape arithmetic for 2-D convolutions, shared by every layer.

The accepted argument space is ``F.conv2d``'s: ints or int-likes (numpy ints, 0-d integer
tensors) or sequences of one or two of them for stride, padding and dilation; padding
'valid' or 'same' (asymmetric where the kernel needs it, the extra row and column at the
end, as ``F.conv2d`` pads); batched (N, C, H, W) or unbatched (C, H, W) input.
"""
from __future__ import annotations

import functools
import itertools
import operator
from dataclasses import dataclass
from typing import Sequence, Union

import torch

IntPair = Union[int, Sequence[int]]


def _as_int(value, name: str) -> int:
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        raise TypeError(f"{name} must be an int or a sequence of 1 or 2 ints, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of 1 or 2 ints, got {value!r}") from None


def as_pair(value, name: str, minimum: int) -> tuple[int, int]:
    """An int-like or a sequence of one or two, each at least ``minimum``, as a pair; else a clear error."""
    if isinstance(value, (tuple, list, torch.Size)):
        if len(value) not in (1, 2):
            raise ValueError(f"{name} must be an int or a sequence of 1 or 2 ints, got {value!r}")
        pair = tuple(_as_int(v, name) for v in value) * (3 - len(value))
        pair = pair[:2]
    else:
        pair = (_as_int(value, name),) * 2
    if min(pair) < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")
    return pair


def resolve_padding(padding, kernel_hw: tuple[int, int], stride: tuple[int, int],
                    dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    """F.conv2d's padding as (top, left, bottom, right): an int-like, a pair, 'valid' or 'same'.

    'same' (stride 1 only) splits dilation * (kernel - 1) with the odd row or column at the end.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' needs stride 1, got stride={stride}")
            total = [d * (k - 1) for d, k in zip(dilation, kernel_hw)]
            return (total[0] // 2, total[1] // 2, total[0] - total[0] // 2, total[1] - total[1] // 2)
        raise ValueError(f"padding must be an int, a pair of ints, 'valid' or 'same', got {padding!r}")
    top, left = as_pair(padding, "padding", 0)
    return (top, left, top, left)


_SITE_IDS = itertools.count()


@dataclass(frozen=True)
class ConvGeometry:
    """Sizes of one grouped convolution: what every kernel launch needs to know.

    ``padding`` is (top, left): the kernels only need where the first tap lands; the padding at
    the end (bottom, right) only changes ``out_hw``. ``site_id`` (not a field): a number of this object's
    own, which launch-site keys hold instead of the geometry (an int hashes in C, a geometry through a
    Python ``__hash__``); ConvGeometry.of keeps one object per sizes, so a layer's calls share it. Read
    once, it is a plain attribute.
    """

    in_channels: int
    out_channels: int
    groups: int
    kernel_h: int
    kernel_w: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    out_hw: tuple[int, int]

    def _fields(self) -> tuple:
        return (self.in_channels, self.out_channels, self.groups, self.kernel_h, self.kernel_w, self.stride,
                self.padding, self.dilation, self.out_hw)

    def __hash__(self) -> int:
        # hash the fields once, at the first use (not when built: under torch.compile hashing a symbolic size
        # would specialize it)
        fields_hash = self.__dict__.get("_hash")
        if fields_hash is None:
            fields_hash = hash(self._fields())
            object.__setattr__(self, "_hash", fields_hash)
        return fields_hash

    @functools.cached_property
    def site_id(self) -> int:
        # taken at the first launch (a launcher's, eager), never while torch.compile traces the geometry's
        # construction: a counter advanced there would be guarded on, and every call would recompile
        return next(_SITE_IDS)

    @property
    def in_per_group(self) -> int:
        return self.in_channels // self.groups

    @property
    def out_per_group(self) -> int:
        return self.out_channels // self.groups

    @staticmethod
    def of(x_shape: Sequence[int], weight_shape: Sequence[int], stride: Sequence[int],
           padding: Sequence[int], dilation: Sequence[int], groups: int) -> "ConvGeometry":
        """``padding``: (top, left, bottom, right) as resolve_padding returns it. Kept per distinct
        sizes (a geometry is built on every op call; a frozen dataclass costs ~4 us to make)."""
        sizes = (*x_shape[1:], *weight_shape, *stride, *padding, *dilation, groups)
        if torch.compiler.is_compiling():  # Dynamo traces past an lru_cache (and warns that it does): build it
            return _geometry_of.__wrapped__(*sizes)
        try:
            return _geometry_of(*sizes)
        except TypeError:  # a symbolic size (tracing with dynamic shapes) is not hashable
            return _geometry_of.__wrapped__(*sizes)


@functools.lru_cache(maxsize=4096)
def _geometry_of(c_in, h, w, c_out, _in_per_group, kh, kw, stride_h, stride_w, top, left, bottom, right,
                 dil_h, dil_w, groups) -> ConvGeometry:
    h_out = (h + top + bottom - dil_h * (kh - 1) - 1) // stride_h + 1
    w_out = (w + left + right - dil_w * (kw - 1) - 1) // stride_w + 1
    return ConvGeometry(c_in, c_out, groups, kh, kw, (stride_h, stride_w), (top, left), (dil_h, dil_w),
                        (h_out, w_out))


@dataclass(frozen=True)
class ConvArgs:
    """F.conv2d's arguments, checked and normalized: pairs, padding (top, left, bottom, right)."""

    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int]
    groups: int
    geometry: ConvGeometry

    def op_args(self) -> tuple[list[int], list[int], list[int], int]:
        """(stride, padding, dilation, groups) as the custom ops take them."""
        return list(self.stride), list(self.padding), list(self.dilation), self.groups


def _check_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def check_conv_args(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride,
                    padding, dilation, groups) -> ConvArgs:
    """Validate F.conv2d's arguments for a 4-D (batched) input; return them normalized.

    Refuses what F.conv2d refuses, each with a message naming the argument.
    """
    _check_tensor(x, "input")
    _check_tensor(weight, "weight")
    if x.dim() != 4:
        raise ValueError(f"input must be 3-D (C, H, W) or 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"weight must be 4-D (C_out, C_in // groups, KH, KW), got shape {tuple(weight.shape)}")
    groups = _as_int(groups, "groups")
    if groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    c_in, c_out = x.shape[1], weight.shape[0]
    if c_out == 0:
        raise ValueError(f"weight must have at least one output channel, got shape {tuple(weight.shape)}")
    if weight.shape[2] == 0 or weight.shape[3] == 0:
        raise ValueError(f"weight's kernel size must be at least 1x1, got shape {tuple(weight.shape)}")
    if c_in % groups:
        raise ValueError(f"groups={groups} must divide the input channels C_in={c_in}")
    if c_out % groups:
        raise ValueError(f"groups={groups} must divide the output channels C_out={c_out} (weight.shape[0])")
    if weight.shape[1] != c_in // groups:
        raise ValueError(
            f"weight.shape[1] must be C_in // groups = {c_in} // {groups} = {c_in // groups}, "
            f"got weight of shape {tuple(weight.shape)}")
    if weight.dtype != x.dtype:
        raise TypeError(f"weight dtype {weight.dtype} must match input dtype {x.dtype}")
    if weight.device != x.device:
        raise ValueError(f"weight is on {weight.device} but input is on {x.device}")
    if bias is not None:
        _check_tensor(bias, "bias")
        if bias.shape != (c_out,):
            raise ValueError(f"bias must have shape ({c_out},) to match C_out, got {tuple(bias.shape)}")
        if bias.dtype != x.dtype:
            raise TypeError(f"bias dtype {bias.dtype} must match input dtype {x.dtype}")
        if bias.device != x.device:
            raise ValueError(f"bias is on {bias.device} but input is on {x.device}")
    stride_pair = as_pair(stride, "stride", 1)
    dilation_pair = as_pair(dilation, "dilation", 1)
    padding4 = resolve_padding(padding, (weight.shape[2], weight.shape[3]), stride_pair, dilation_pair)
    geo = ConvGeometry.of(x.shape, weight.shape, stride_pair, padding4, dilation_pair, groups)
    if (x.shape[2] == 0 or x.shape[3] == 0) and x.shape[0] and c_in:
        raise ValueError(f"input has an empty spatial dimension, shape {tuple(x.shape)}: F.conv2d accepts "
                         "only zero batch or zero channel inputs")
    if min(geo.out_hw) < 1:
        raise ValueError(
            f"input spatial size {tuple(x.shape[2:])} is too small for kernel {tuple(weight.shape[2:])} "
            f"with padding {padding4[:2]} (top, left) + {padding4[2:]} (bottom, right) and dilation {dilation_pair}")
    return ConvArgs(stride_pair, padding4, dilation_pair, groups, geo)
