"""pytest-benchmark suite of the kernels: one benchmark per case and provider (`pytest benchmarks/ --benchmark-only`).

GPU time comes from CUDA events (triton.testing.do_bench median) inside pedantic mode; extra_info
carries GB/s, TFLOP/s, the fraction of the measured copy bandwidth, and the speedup over the
faster cuDNN layout measured in the same session (harness.run_benchmark). Off-GPU the torch
providers run on tiny shapes and the Triton and torch.compile providers are skipped with the reason.
"""
import pytest
from harness import params, run_benchmark

from tools import kernel_bench as bench

SUITE = bench.kernel_suite()


@pytest.mark.parametrize("case,provider", params(SUITE))
def test_benchmark(benchmark, case, provider):
    run_benchmark(benchmark, SUITE, case, provider)
