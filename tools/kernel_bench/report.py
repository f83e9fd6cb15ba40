"""Results: one row per (case, provider), speedups over the faster cuDNN layout, JSON, markdown and plots."""
from __future__ import annotations

import datetime
import json
import os
import re
from dataclasses import asdict, dataclass

import torch

BASELINE_PROVIDERS = ("cudnn_nchw", "cudnn_channels_last", "torch_cpu_nchw", "torch_cpu_channels_last", "torch")


@dataclass
class Result:
    op: str
    pass_: str
    dtype: str
    N: int
    C: int
    H: int
    W: int
    group_size: int
    provider: str
    median_ms: float
    p20_ms: float
    p80_ms: float
    gbs: float
    tflops: float
    fraction_of_copy_bandwidth: float
    speedup_vs_best_cudnn: float | None = None

    def to_json(self) -> dict:
        d = asdict(self)
        d["pass"] = d.pop("pass_")
        return d


def add_speedups(results: list[Result]) -> None:
    """Each result's speedup over the faster cuDNN layout (on a CPU the faster torch_cpu layout, or the torch
    provider) of the same case."""
    key = lambda r: (r.op, r.pass_, r.dtype, r.N, r.C, r.H, r.group_size)  # noqa: E731
    baseline = {}
    for r in results:
        if r.provider in BASELINE_PROVIDERS:
            baseline[key(r)] = min(baseline.get(key(r), float("inf")), r.median_ms)
    for r in results:
        if key(r) in baseline:
            r.speedup_vs_best_cudnn = baseline[key(r)] / r.median_ms


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu-{platform.machine()}"


def results_stem(out_dir: str, device: torch.device, suffix: str = "", prefix: str = "",
                 date: datetime.date | None = None) -> str:
    """``out_dir/<prefix><device>-<date><suffix>``: where a run's .json, .md and plots go (date: today)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", device_name(device))
    return os.path.join(out_dir, f"{prefix}{name}-{(date or datetime.date.today()).isoformat()}{suffix}")


def _versions() -> dict:
    import triton

    return {"torch": torch.__version__, "triton": triton.__version__, "cudnn": torch.backends.cudnn.version() or 0}


def write_json(results: list[Result], device: torch.device, copy_gbs: float, stem: str) -> dict:
    doc = {"device": device_name(device), **_versions(), "date": datetime.date.today().isoformat(),
           "copy_bandwidth_gbs": copy_gbs, "results": [r.to_json() for r in results]}
    with open(stem + ".json.tmp", "w") as fh:
        json.dump(doc, fh, indent=1)
    os.replace(stem + ".json.tmp", stem + ".json")
    return doc


def markdown(results: list[Result], doc: dict, on_gpu: bool) -> str:
    lines = [f"# Benchmarks on {doc['device']}, {doc['date']}", "",
             f"torch {doc['torch']}, triton {doc['triton']}, cuDNN {doc['cudnn']}; measured copy "
             f"bandwidth {doc['copy_bandwidth_gbs']:.0f} GB/s. Times are medians (p20-p80)."
             + ("" if on_gpu else " On a CPU the torch_cpu_* providers are PyTorch's CPU "
                "convolutions in each layout, and the Triton providers are not timed."), "",
             "| op | pass | dtype | N | C | H=W | g_s | provider | median ms | p20-p80 ms | GB/s | of copy BW "
             "| TFLOP/s | speedup |", "|" + "---|" * 14]
    for r in results:
        speed = f"{r.speedup_vs_best_cudnn:.2f}x" if r.speedup_vs_best_cudnn else ""
        lines.append(f"| {r.op} | {r.pass_} | {r.dtype} | {r.N} | {r.C} | {r.H} | {r.group_size} | {r.provider} | "
                     f"{r.median_ms:.3f} | {r.p20_ms:.3f}-{r.p80_ms:.3f} | {r.gbs:.2f} | "
                     f"{100 * r.fraction_of_copy_bandwidth:.0f}% | {r.tflops:.2f} | {speed} |")
    return "\n".join(lines) + "\n"


def write_results(results: list[Result], device: torch.device, copy_gbs: float, out_dir: str,
                  suffix: str = "") -> str:
    """``<stem>.json``, ``<stem>.md`` and the PNG plots; returns the stem."""
    os.makedirs(out_dir, exist_ok=True)
    stem = results_stem(out_dir, device, suffix)
    doc = write_json(results, device, copy_gbs, stem)
    with open(stem + ".md", "w") as fh:
        fh.write(markdown(results, doc, device.type == "cuda"))
    plot(results, stem, copy_gbs)
    return stem


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_speedups(plt, results: list[Result], stem: str) -> None:
    tri = [r for r in results if r.provider == "triton" and r.speedup_vs_best_cudnn]
    if not tri:
        return
    fig, ax = plt.subplots(figsize=(max(6, len(tri) * 0.3), 4))
    ax.bar(range(len(tri)), [r.speedup_vs_best_cudnn for r in tri])
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(tri)), [f"{r.op} {r.pass_} {r.dtype} C{r.C} H{r.H} g{r.group_size}" for r in tri],
                  rotation=90, fontsize=6)
    ax.set_ylabel("speedup over the faster cuDNN layout")
    fig.tight_layout()
    fig.savefig(stem + "-speedup.png", dpi=100)
    plt.close(fig)


def _plot_bandwidth(plt, results: list[Result], stem: str, copy_gbs: float) -> None:
    rows = [r for r in results if r.gbs > 0]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for provider in sorted({r.provider for r in rows}):
        pts = [r for r in rows if r.provider == provider]
        ax.scatter([r.median_ms for r in pts], [r.gbs for r in pts], label=provider, s=10)
    ax.axhline(copy_gbs, color="k", ls="--", label="measured copy bandwidth")
    ax.set_xscale("log")
    ax.set_xlabel("median ms")
    ax.set_ylabel("achieved GB/s (minimum bytes)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(stem + "-bandwidth.png", dpi=100)
    plt.close(fig)


def plot(results: list[Result], stem: str, copy_gbs: float) -> None:
    """``<stem>-speedup.png`` (Triton over the faster cuDNN layout) and ``<stem>-bandwidth.png`` (GB/s
    against the measured copy bandwidth); skipped with a note when matplotlib is not installed."""
    try:
        plt = _pyplot()
    except ImportError:
        print("plots skipped: matplotlib is not installed")
        return
    _plot_speedups(plt, results, stem)
    _plot_bandwidth(plt, results, stem, copy_gbs)
