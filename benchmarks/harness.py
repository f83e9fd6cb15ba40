"""What the benchmark modules share: the device, the (case, provider) parameters of a suite, and
``run_benchmark``, which files each benchmark's Result: its numbers go to pytest-benchmark's
extra_info, and every result of the session gets its speedup over the faster baseline layout (cuDNN on a
GPU, PyTorch's CPU convolutions on a CPU, or torch) from ``tools.kernel_bench.add_speedups``, the same
computation as the command-line benchmark.

pytest-benchmark times ``ROUNDS`` calls of each case after one warm-up call, so that its table has a spread.
On a CPU those timings are the Result's (median, p20, p80); on a GPU the Result's are CUDA-event quantiles
(``triton.testing.do_bench``, as the command line's), and pytest-benchmark's rounds are wall-clock calls that
end in a device synchronize.
"""
import functools

import pytest
import torch

from mgiad.cli import default_threads
from tools import kernel_bench as bench
from tools.kernel_bench.timing import CPU_ROUNDS, quantiles_ms

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
QUICK = DEVICE.type != "cuda"
DTYPES = [torch.float32, torch.bfloat16] if not QUICK else [torch.float32]
ROUNDS = CPU_ROUNDS if QUICK else 20
SPEEDUP_KEY = "speedup_vs_best_cudnn" if DEVICE.type == "cuda" else "speedup_vs_best_torch_cpu"
# On a CPU the benchmarks run on `mgiad train`'s default thread count (half the CPUs): threads that outnumber
# the free cores wait on one another: on a shared 2-core machine a 0.04 ms convolution took 12-36 ms on 2 threads.
CPU_THREADS = default_threads() if DEVICE.type != "cuda" else None


@functools.lru_cache(maxsize=1)
def copy_gbs() -> float:
    return bench.copy_bandwidth_gbs(DEVICE)


def params(suite):
    """(case, provider) pairs of a benchmark suite, with readable ids."""
    return [pytest.param(case, provider, id=f"{case.label}-{provider}")
            for case in suite.cases(QUICK, suite.ops, DTYPES) if suite.runs_on(case, DEVICE)
            for provider in suite.providers_for(case, DEVICE)]


_session: list = []  # (Result, extra_info) of every benchmark run so far


def _timer(benchmark):
    """A timer (``bench.timing.Timer``) that has pytest-benchmark time ``ROUNDS`` calls after a warm-up call;
    with --benchmark-disable the device's own timer."""
    device_timer = bench.timer(DEVICE)

    def time_fn(fn):
        if benchmark.disabled:
            return device_timer(fn)
        if DEVICE.type == "cuda":
            benchmark.pedantic(lambda: (fn(), torch.cuda.synchronize()), rounds=ROUNDS, warmup_rounds=1)
            return device_timer(fn)
        benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=1)
        return quantiles_ms([1e3 * t for t in benchmark.stats.stats.data])

    return time_fn


def run_benchmark(benchmark, suite, case, provider, skip_reason=bench.skip_reason):
    """Time one case on one provider through pytest-benchmark; returns the Result. ``skip_reason(provider,
    device)``: why a provider is not timed here (the suite's own, for providers the kernel benchmark lacks)."""
    reason = skip_reason(provider, DEVICE)
    if reason:
        pytest.skip(reason)
    torch.backends.cudnn.benchmark = True
    result = bench.measure(case, provider, DEVICE, copy_gbs(), suite.build, _timer(benchmark))
    assert result.median_ms > 0
    benchmark.extra_info.update({k: v for k, v in result.to_json().items() if k.endswith(("_ms", "gbs", "tflops"))
                                 or k == "fraction_of_copy_bandwidth"})
    _session.append((result, benchmark.extra_info))
    bench.add_speedups([r for r, _ in _session])
    for r, info in _session:
        info[SPEEDUP_KEY] = r.speedup_vs_best_cudnn
    return result
