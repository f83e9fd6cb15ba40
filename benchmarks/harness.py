"""What the benchmark modules share: the device, the (case, provider) parameters of a suite, and
``run_benchmark``, which files each benchmark's Result: its numbers go to pytest-benchmark's
extra_info, and every result of the session gets its speedup over the faster cuDNN layout (or
torch) from ``tools.kernel_bench.add_speedups``, the same computation as the command-line benchmark.
"""
import functools

import pytest
import torch

from tools import kernel_bench as bench

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
QUICK = DEVICE.type != "cuda"
DTYPES = [torch.float32, torch.bfloat16] if not QUICK else [torch.float32]


@functools.lru_cache(maxsize=1)
def copy_gbs() -> float:
    return bench.copy_bandwidth_gbs(DEVICE)


def params(suite):
    """(case, provider) pairs of a benchmark suite, with readable ids."""
    return [pytest.param(case, provider, id=f"{case.label}-{provider}")
            for case in suite.cases(QUICK, suite.ops, DTYPES) if suite.runs_on(case, DEVICE)
            for provider in suite.providers_for(case)]


_session: list = []  # (Result, extra_info) of every benchmark run so far


def run_benchmark(benchmark, suite, case, provider, skip_reason=bench.skip_reason):
    """Time one case on one provider through pytest-benchmark; returns the Result. ``skip_reason(provider,
    device)``: why a provider is not timed here (the suite's own, for providers the kernel benchmark lacks)."""
    reason = skip_reason(provider, DEVICE)
    if reason:
        pytest.skip(reason)
    torch.backends.cudnn.benchmark = True
    result = benchmark.pedantic(bench.measure, args=(case, provider, DEVICE, copy_gbs(), suite.build),
                                rounds=1, iterations=1)
    assert result.median_ms > 0
    benchmark.extra_info.update({k: v for k, v in result.to_json().items() if k.endswith(("_ms", "gbs", "tflops"))
                                 or k == "fraction_of_copy_bandwidth"})
    _session.append((result, benchmark.extra_info))
    bench.add_speedups([r for r, _ in _session])
    for r, info in _session:
        info["speedup_vs_best_cudnn"] = r.speedup_vs_best_cudnn
    return result
