"""Test set-up: the Triton interpreter on CPU-only machines, every launch's promises checked, the device and
dtype tables.

TRITON_INTERPRET must be set before any @triton.jit function is defined; the package defines
its kernels lazily, so setting it here, before the tests import anything, is enough.
MGIAD_KERNELS_CHECK_PROMISES=1 (read once per process, at the first launch site): every launch checks the
alignment and contiguity promises its launcher makes to the kernel (``launch_sites.check_promises``). The
subprocesses tests start inherit it, but for those that check or time the warm launch path, which the switch
bypasses: they set it to 0.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("MGIAD_KERNELS_CHECK_PROMISES", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _exact_fp32():
    """fp32 checks compare against float64 with TF32 off, on both backends."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
