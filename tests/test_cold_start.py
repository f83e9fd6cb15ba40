"""A first MGiaD training step on an empty Triton cache compiles few kernels and benchmarks none.

The real launch path compiles for sm_90 under the stand-in driver (no GPU; launches are no-ops),
with the default policy: one config per key chosen from the shape, autotuning opt-in.
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, sys
import torch, torch.nn.functional as F
import mgiad_kernels.backend as backend
import mgiad_kernels.launchers as launchers
from mgiad_kernels.standin_driver import standin_cuda_driver
from mgiad import MGiaD

backend.triton_unavailable_reason = lambda *tensors, **kwargs: None  # CPU tensors stand in for CUDA ones
launchers.parallel_programs_wanted = lambda device: 4 * 132  # an H100's grids
model = MGiaD(num_classes=10, widths=(64, 128, 256, 256), smoothing_steps=(2, 2, 2, 2), coarsest_channels=64,
              group_size=8, channel_scale=3, backend="triton").to(memory_format=torch.channels_last)
x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
with standin_cuda_driver() as rec:
    F.cross_entropy(model(x), torch.tensor([1, 7])).backward()
per_kernel = {}
for c in rec.compiles:
    per_kernel[c.name] = per_kernel.get(c.name, 0) + 1
print(json.dumps({"compiles": len(rec.compiles), "per_kernel": per_kernel, "benchmarks": len(rec.benchmarks),
                  "launches": len(rec.launches)}))
"""


@pytest.mark.skipif(importlib.util.find_spec("triton.backends.nvidia") is None,
                    reason="triton has no NVIDIA backend here")
def test_first_mgiad_step_compiles_at_most_60_kernels(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MGIAD_KERNELS_AUTOTUNE")}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # empty: every kernel compiles
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["benchmarks"] == 0, result
    assert result["compiles"] <= 60, result
    assert result["per_kernel"]["conv2d_gather_kernel"] <= 30, result
