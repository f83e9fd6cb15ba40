"""The command line: parse --quick/--ops/--dtypes/--out-dir, run a suite of cases, write the results.

A suite is the case grid, the providers per case and the builders of what is timed; the kernel
suite is here, and an application can time its own (whole models) through ``main(argv, suite)``.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Callable

import torch

from .cases import OPS, Case, cases, providers_for, skip_reason
from .report import Result, add_speedups, device_name, write_results
from .timing import copy_bandwidth_gbs, measure

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Suite:
    ops: tuple[str, ...]
    cases: Callable[[bool, list[str], list[torch.dtype]], list[Case]]
    providers_for: Callable[[Case, torch.device], tuple[str, ...]]
    build: Callable  # (case, provider, device) -> (run, bytes, FLOPs)
    stem_suffix: str = ""  # results go to <device>-<date><suffix>.json / .md
    runs_on: Callable[[Case, torch.device], bool] = lambda case, device: True


def kernel_suite() -> Suite:
    from .providers import build

    return Suite(OPS, cases, providers_for, build)


# whole-model ops that ``python -m tools.kernel_bench`` does not time, and the command that does
MODEL_OPS = {op: "python -m tools.model_bench (the application's whole-model benchmarks)"
             for op in ("train_step_mgiad", "train_step_mgnet", "train_step_resnet18", "train_step_resnext50")}


def parse_args(argv, suite: Suite, description: str | None, prog: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny shapes (the default off-GPU)")
    p.add_argument("--ops", default=",".join(suite.ops))
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--out-dir", default=os.path.join("benchmarks", "results"))
    a = p.parse_args(argv)
    a.ops = a.ops.split(",")
    elsewhere = [f"{op} is timed by {MODEL_OPS[op]}" for op in a.ops if op in MODEL_OPS and op not in suite.ops]
    if elsewhere:
        p.error(f"--ops: {'; '.join(elsewhere)}")
    unknown = sorted(set(a.ops) - set(suite.ops))
    if unknown:
        p.error(f"--ops: unknown {unknown}; choose from {suite.ops}")
    bad = [name for name in a.dtypes.split(",") if name not in DTYPES]
    if bad:
        p.error(f"--dtypes: expected float32, bfloat16 or float16, got {bad[0]!r}")
    a.dtypes = [getattr(torch, name) for name in a.dtypes.split(",")]
    return a


def run_suite(suite: Suite, quick: bool, ops, dtypes, device: torch.device, copy_gbs: float) -> list[Result]:
    """Time every case and provider that runs on ``device``, printing one line each; speedups added."""
    results = []
    for case in suite.cases(quick, ops, dtypes):
        if not suite.runs_on(case, device):
            continue
        for provider in suite.providers_for(case, device):
            if skip_reason(provider, device):
                continue
            r = measure(case, provider, device, copy_gbs, suite.build)
            results.append(r)
            print(f"{case.label:<60} {provider:<20} {r.median_ms:9.3f} ms  {r.gbs:7.1f} GB/s", flush=True)
    add_speedups(results)
    return results


def main(argv=None, suite: Suite | None = None, description: str | None = None, prog: str | None = None) -> str:
    """Measure the copy bandwidth, then every case; write the results. Returns the results' stem."""
    if suite is None:
        description, suite = sys.modules[__package__].__doc__, kernel_suite()
    a = parse_args(argv, suite, description, prog)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    quick = a.quick or device.type != "cuda"
    copy_gbs = copy_bandwidth_gbs(device)
    print(f"{device_name(device)}: copy bandwidth {copy_gbs:.0f} GB/s")
    results = run_suite(suite, quick, a.ops, a.dtypes, device, copy_gbs)
    stem = write_results(results, device, copy_gbs, a.out_dir, suite.stem_suffix)
    print(f"wrote {stem}.json, {stem}.md and plots")
    return stem
