"""A first MGiaD training step on an empty Triton cache compiles few kernels and benchmarks none.

The real launch path compiles for sm_90 under the stand-in driver (no GPU; launches are no-ops),
with the default policy: one config per key chosen from the shape, autotuning opt-in.
"""
import importlib.util

import pytest


@pytest.mark.skipif(importlib.util.find_spec("triton.backends.nvidia") is None,
                    reason="triton has no NVIDIA backend here")
def test_first_mgiad_step_compiles_at_most_60_kernels():
    from tools.host_bench import measure_cold_start  # the host benchmark's own measurement: a fresh process

    result = measure_cold_start(timeout=900)
    assert result["benchmarks"] == 0, result
    assert result["compiles"] <= 60, result
    assert result["compiles_per_kernel"]["conv2d_gather_kernel"] <= 30, result
