"""pytest-benchmark suite: one benchmark per case and provider (`pytest benchmarks/ --benchmark-only`).

GPU time comes from CUDA events (triton.testing.do_bench median) inside pedantic mode; extra_info
carries GB/s, TFLOP/s, the fraction of the measured copy bandwidth, and the speedup over the
faster cuDNN layout measured in the same session. Off-GPU the torch providers run on tiny shapes
and the Triton and torch.compile providers are skipped with the reason.
"""
import functools

import pytest
import torch

from mgiad_kernels import bench

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
QUICK = DEVICE.type != "cuda"
DTYPES = [torch.float32, torch.bfloat16] if not QUICK else [torch.float32]
CASES = bench.cases(QUICK, bench.OPS, DTYPES)
_medians: dict = {}


@functools.lru_cache(maxsize=1)
def copy_gbs() -> float:
    return bench.copy_bandwidth_gbs(DEVICE)


def _params():
    for case in CASES:
        for provider in bench.providers_for(case):
            yield pytest.param(case, provider, id=f"{case.label}-{provider}")


@pytest.mark.parametrize("case,provider", list(_params()))
def test_benchmark(benchmark, case, provider):
    reason = bench.skip_reason(provider, DEVICE)
    if reason:
        pytest.skip(reason)
    torch.backends.cudnn.benchmark = True
    result = benchmark.pedantic(bench.measure, args=(case, provider, DEVICE, copy_gbs()), rounds=1, iterations=1)
    assert result.median_ms > 0
    key = (case.label, tuple(sorted(case.extra.items())))
    _medians.setdefault(key, {})[provider] = result.median_ms
    cudnn = [v for p, v in _medians[key].items() if p in ("cudnn_nchw", "cudnn_channels_last", "torch")]
    benchmark.extra_info.update(
        median_ms=result.median_ms, p20_ms=result.p20_ms, p80_ms=result.p80_ms, gbs=result.gbs,
        tflops=result.tflops, fraction_of_copy_bandwidth=result.fraction_of_copy_bandwidth,
        speedup_vs_best_cudnn=(min(cudnn) / result.median_ms) if cudnn else None)
