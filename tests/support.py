"""Shared test tables: the device, the dtypes each path is tested in, and per-dtype tolerances."""
import functools

import numpy as np
import torch

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
# The interpreter cannot do bf16 arithmetic and is slow: fp32 on CPU, every dtype on a GPU.
TRITON_DTYPES = [torch.float32, torch.float16, torch.bfloat16] if ON_GPU else [torch.float32]
ALL_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# ||out - ref|| / ||ref|| against a float64 reference, per dtype (fp32 with tf32 off).
REL_TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2, torch.float64: 1e-12}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert torch.isfinite(out).all(), "non-finite values in the output"
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def assert_close_rel(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    err = rel_err(out, ref)
    assert err <= REL_TOL[dtype], f"{what}: relative error {err:.2e} > {REL_TOL[dtype]:.0e} for {dtype}"


def nonfinite_on_purpose(test):
    """For a test that feeds NaN or Inf on purpose: Triton's CPU interpreter computes with numpy, whose
    RuntimeWarnings (invalid value, overflow, division by zero) that arithmetic raises are expected there,
    and silenced by np.errstate (on a GPU numpy computes nothing of it)."""
    @functools.wraps(test)
    def run(*args, **kwargs):
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            return test(*args, **kwargs)
    return run
