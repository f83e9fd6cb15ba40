"""The backend switch: 'triton', 'torch' or 'auto'.

The library's functional and module layer decides with it; models pass ``backend`` through
(``mgiad_kernels.check_backend`` validates one at construction).
"""
from __future__ import annotations

import warnings

import torch

from .runtime.triton_support import triton_unavailable_reason

BACKENDS = ("auto", "triton", "torch")
_warned: set[str] = set()


def check_backend(backend) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def use_triton(backend: str, *tensors: torch.Tensor) -> bool:
    """Whether to run the Triton kernels on ``tensors``.

    'auto' takes Triton on CUDA tensors and torch elsewhere, silently. 'triton' also runs CPU
    tensors through Triton's interpreter when TRITON_INTERPRET=1; where it cannot run it falls
    back to torch with one warning per reason, never silently.
    """
    if backend == "torch":
        return False
    reason = triton_unavailable_reason(*tensors, interpreter=backend == "triton")
    if reason is None:
        return True
    if backend == "triton":
        warn_fallback(reason)
    return False


def warn_fallback(reason: str) -> None:
    """backend='triton' runs PyTorch instead: say why, once per reason."""
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"backend='triton' falls back to PyTorch: {reason}", RuntimeWarning, stacklevel=4)


def autocast_inputs(*tensors):
    """The tensors as autocast would feed a convolution: under torch.autocast for their device,
    floating tensors other than float64 in the autocast dtype (None passes through; devices autocast does
    not know, such as meta, pass through)."""
    device = next((t.device.type for t in tensors if t is not None), None)
    if device is None or not torch.amp.is_autocast_available(device) or not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t
                 for t in tensors)
