"""Benchmarks are timed only on a GPU at the model shapes; elsewhere they smoke-run tiny shapes
(``harness.py`` holds what the benchmark modules share).

The session ends with one line saying what was timed (device, shapes, rounds, providers) and what was
skipped and why, and, unless -q, a table of the timed rows within 120 columns in place of pytest-benchmark's
(which is over 250 wide; ``--benchmark-verbose`` prints it as well).
"""
import collections
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import harness  # noqa: E402  (TRITON_INTERPRET is set before the package defines its kernels)

from tools import kernel_bench as bench  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(autouse=True)
def _cpu_threads():
    """Each benchmark on a CPU runs on ``harness.CPU_THREADS`` threads; the session's count is restored after."""
    if harness.CPU_THREADS is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(harness.CPU_THREADS)
    yield
    torch.set_num_threads(before)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """Before pytest-benchmark reads its options: its own table gives way to the compact one below."""
    if config.pluginmanager.hasplugin("benchmark"):
        config.option.benchmark_quiet = True


def _in_this_folder(report, config) -> bool:
    return os.path.dirname(os.path.join(str(config.rootpath), report.location[0])) == HERE


def _skip_reason(report) -> str:
    text = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return text.removeprefix("Skipped: ")


def summary_line(results: list, skipped: list) -> str:
    """What was timed, on which device, at which shapes, how often and on which providers; how many were
    skipped, on which providers and why."""
    shapes = "tiny shapes" if harness.QUICK else "model shapes"
    threads = f" ({harness.CPU_THREADS} thread{'s' * (harness.CPU_THREADS != 1)})" if harness.CPU_THREADS else ""
    timed = collections.Counter(r.provider for r in results)
    line = (f"benchmarks: {len(results)} timed on {bench.device_name(harness.DEVICE)}{threads} at {shapes}, "
            f"{harness.ROUNDS} rounds each (" + ", ".join(f"{n} {p}" for p, n in timed.items()) + f"); "
            f"{len(skipped)} skipped")
    reasons = collections.defaultdict(collections.Counter)
    for report in skipped:
        provider = report.nodeid.rpartition("[")[2].rstrip("]").rpartition("-")[2]
        reasons[_skip_reason(report)][provider] += 1
    return line + "".join(f"{'; ' if i else ': '}{' + '.join(f'{n} {p}' for p, n in c.items())} ({reason})"
                          for i, (reason, c) in enumerate(reasons.items()))


def table(results: list) -> list[str]:
    """The timed rows: case, provider, median and p20-p80 in ms, speedup over the case's faster baseline."""
    labels = [f"{r.op}-{r.pass_}-{r.dtype}-N{r.N}-C{r.C}-H{r.H}-g{r.group_size}" for r in results]
    width = max(len(label) for label in labels)
    baseline = "cuDNN layout" if harness.DEVICE.type == "cuda" else "torch_cpu layout (or torch)"
    lines = [f"ms per call over {harness.ROUNDS} rounds; speedup over the case's faster {baseline}",
             f"{'case':<{width}} {'provider':<23} {'median':>9} {'p20-p80':>15} {'speedup':>7}"]
    for label, r in zip(labels, results):
        speed = f"{r.speedup_vs_best_cudnn:.2f}x" if r.speedup_vs_best_cudnn else ""
        lines.append(f"{label:<{width}} {r.provider:<23} {r.median_ms:>9.3f} "
                     f"{f'{r.p20_ms:.3f}-{r.p80_ms:.3f}':>15} {speed:>7}")
    return lines


def pytest_terminal_summary(terminalreporter, config):
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if _in_this_folder(r, config)]
    results = [r for r, _ in harness._session]
    if not results and not skipped:
        return
    if results and terminalreporter.verbosity >= 0:
        terminalreporter.section("benchmarks", sep="-")
        for line in table(results):
            terminalreporter.write_line(line)
    terminalreporter.write_line(summary_line(results, skipped))
