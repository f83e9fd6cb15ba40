"""pytest-benchmark suite of whole-model training steps (MGiaD, MgNet, ResNet18): `python -m tools.model_bench`
as benchmarks. extra_info adds images per second to the kernel benchmarks' numbers."""
import pytest
from harness import params, run_benchmark

from tools import model_bench as bench

SUITE = bench.SUITE


@pytest.mark.parametrize("case,provider", params(SUITE))
def test_train_step(benchmark, case, provider):
    result = run_benchmark(benchmark, SUITE, case, provider, bench.skip_reason)
    benchmark.extra_info["images_per_s"] = bench.images_per_s(case.N, result.median_ms)
