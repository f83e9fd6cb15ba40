"""Test set-up: the Triton interpreter on CPU-only machines, every launch's promises checked, fp32 without TF32,
and a one-line summary of the tests skipped and why.

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


HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_terminal_summary(terminalreporter, config):
    """One line grouping this folder's skipped tests by reason (pytest itself lists them only with -rs)."""
    reasons = {}
    for report in terminalreporter.stats.get("skipped", []):
        if os.path.dirname(os.path.join(str(config.rootpath), report.location[0])) != HERE:
            continue
        text = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = text.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        terminalreporter.write_line(f"tests: {sum(reasons.values())} skipped: "
                                    + "; ".join(f"{n} ({reason})" for reason, n in reasons.items()))
