"""Benchmarks of the kernels and models against cuDNN and torch.compile, with the bandwidth roofline.

    python -m mgiad_kernels.bench [--quick] [--ops grouped_conv3x3,...] [--dtypes float32,bfloat16]

Measures the device's copy bandwidth first, then every case and provider; writes
``benchmarks/results/<device>-<date>.json``, a markdown table beside it and PNG plots. On a GPU
times are CUDA-event medians (``triton.testing.do_bench``) over inputs rotated through more
memory than L2 holds; on a CPU (``--quick`` shapes only) wall-clock medians, and the Triton
providers are skipped: the interpreter measures nothing worth reporting.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .functional import grouped_conv2d

MODEL_SHAPES = [(64, 32), (128, 16), (256, 8), (192, 32), (384, 16), (768, 8), (768, 4)]  # (C, H = W)
QUICK_SHAPES = [(16, 8), (32, 4)]
GROUP_SIZES = (4, 8, 16)
CONV_PROVIDERS = ("triton", "cudnn_nchw", "cudnn_channels_last", "torch_compile")
MODEL_PROVIDERS = ("triton", "torch", "torch_compile")
OPS = ("grouped_conv3x3", "transfer1x1", "depthwise_pool", "smoothing_step", "train_step_mgiad",
       "train_step_mgnet", "train_step_resnet18")
L2_ROTATION_BYTES = 256 << 20  # more than any lent GPU's L2


@dataclass
class Case:
    op: str
    pass_: str
    dtype: torch.dtype
    N: int
    C: int
    H: int
    W: int
    group_size: int
    extra: dict = field(default_factory=dict)

    @property
    def op_name(self) -> str:
        """The op, with the 1x1 transfer's direction where it has one."""
        return f"{self.op}_{self.extra['direction']}" if "direction" in self.extra else self.op

    @property
    def label(self) -> str:
        return (f"{self.op_name}-{self.pass_}-{str(self.dtype).replace('torch.', '')}-N{self.N}-C{self.C}"
                f"-H{self.H}-g{self.group_size}")


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


def conv_cost(n, c_in, c_out, h, w, k, stride, groups, elem, with_backward) -> tuple[float, float]:
    """Minimum bytes (each tensor read once, each written once) and FLOPs of a convolution."""
    ho, wo = (h + 2 * (k // 2) - k) // stride + 1, (w + 2 * (k // 2) - k) // stride + 1
    x, y, wt = n * c_in * h * w, n * c_out * ho * wo, c_out * (c_in // groups) * k * k
    flops = 2.0 * n * c_out * ho * wo * (c_in // groups) * k * k
    if not with_backward:
        return (x + y + wt) * elem, flops
    # forward + grad input (read grad_y and w, write grad_x) + grad weight (read x and grad_y, write grad_w)
    return (x + y + wt + (y + wt + x) + (x + y + wt)) * elem, 3 * flops


def _timer(device: torch.device) -> Callable[[Callable[[], object]], tuple[float, float, float]]:
    if device.type == "cuda":
        import triton.testing

        def cuda_time(fn):
            q = triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
            return q[0], q[1], q[2]

        return cuda_time

    def cpu_time(fn):
        fn()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        times.sort()
        return statistics.median(times), times[1], times[-2]

    return cpu_time


def copy_bandwidth_gbs(device: torch.device) -> float:
    """Measured device-to-device copy bandwidth, bytes read plus bytes written."""
    n = (1 << 28) if device.type == "cuda" else (1 << 24)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms, _, _ = _timer(device)(lambda: dst.copy_(src))
    return 2 * n / ms / 1e6


class Rotation:
    """Copies of the inputs cycled through so that no timed call finds them in L2."""

    def __init__(self, make: Callable[[], tuple], bytes_per_copy: int, device: torch.device):
        copies = 1 if device.type != "cuda" else max(2, min(64, L2_ROTATION_BYTES // max(bytes_per_copy, 1) + 1))
        self.items = [make() for _ in range(copies)]
        self.i = 0

    def next(self) -> tuple:
        self.i = (self.i + 1) % len(self.items)
        return self.items[self.i]


def _conv_fn(provider: str, case: Case, c_in: int, c_out: int, k: int, stride: int, groups: int,
             device: torch.device) -> tuple[Callable[[], object], float, float] | None:
    """A callable timing one pass of one conv for ``provider``, with its bytes and FLOPs."""
    backward = case.pass_ == "fwd+bwd"
    fmt = torch.channels_last if provider in ("triton", "cudnn_channels_last", "torch_compile") else \
        torch.contiguous_format
    elem = torch.finfo(case.dtype).bits // 8

    def make():
        x = torch.randn(case.N, c_in, case.H, case.W, device=device, dtype=case.dtype).to(memory_format=fmt)
        w = torch.randn(c_out, c_in // groups, k, k, device=device, dtype=case.dtype)
        return x.requires_grad_(backward), w.requires_grad_(backward)

    conv = (lambda x, w: grouped_conv2d(x, w, None, stride, k // 2, 1, groups, backend="triton")) \
        if provider == "triton" else (lambda x, w: F.conv2d(x, w, None, stride, k // 2, 1, groups))
    if provider == "torch_compile":
        conv = torch.compile(conv, mode="max-autotune-no-cudagraphs", dynamic=False)
    nbytes, flops = conv_cost(case.N, c_in, c_out, case.H, case.W, k, stride, groups, elem, backward)
    rotation = Rotation(make, int(nbytes), device)
    grad_y = None

    def run():
        nonlocal grad_y
        x, w = rotation.next()
        y = conv(x, w)
        if backward:
            grad_y = torch.ones_like(y) if grad_y is None or grad_y.shape != y.shape else grad_y
            torch.autograd.grad(y, (x, w), grad_y)

    return run, nbytes, flops


def _conv_geometry(case: Case) -> tuple[int, int, int, int, int]:
    """(C_in, C_out, kernel, stride, groups) of an op's convolution."""
    c, g = case.C, case.group_size
    if case.op == "grouped_conv3x3":
        return c, c, 3, 1, c // g
    if case.op == "transfer1x1":
        return (c, c // 2, 1, 1, c // g) if case.extra["direction"] == "halving" else (c // 2, c, 1, 1, c // g)
    if case.op == "depthwise_pool":
        return c, 2 * c, 3, 2, c
    raise ValueError(case.op)


def _smoothing_fn(provider, case, device):
    from torch import nn

    from .modules import GroupedConv2d
    from .smoothing import SmoothingStep

    backend = "triton" if provider == "triton" else "torch"
    c, groups = case.C, case.C // case.group_size
    step = SmoothingStep(GroupedConv2d(c, c, 3, padding=1, groups=groups, bias=False, backend=backend),
                         GroupedConv2d(c, c, 3, padding=1, groups=groups, bias=False, backend=backend), c,
                         backend=backend).to(device=device, dtype=case.dtype)
    fmt = torch.channels_last if provider != "cudnn_nchw" else torch.contiguous_format
    step = step.to(memory_format=fmt)
    module: nn.Module = torch.compile(step, mode="max-autotune-no-cudagraphs") if provider == "torch_compile" else step
    elem = torch.finfo(case.dtype).bits // 8
    act = case.N * c * case.H * case.W
    # Minimum bytes of an exact training step, in activation passes. Without BatchNorm it would be
    # 8 (forward reads u, f, writes u_next; backward reads grad, u, f, writes grad_u, grad_f). Batch
    # statistics are global barriers, and each barrier costs another pass over what the next stage
    # recomputes from: forward 7 (bn1 moments: u, f; bn2 moments: u, f; update: u, f, write u_next),
    # backward 11 (bn2 sums: grad, u, f; bn1 sums: grad, u, f; gradients: grad, u, f, write grad_u,
    # grad_f), 18 in all. The fused kernels move 26 (forward 8: r and s are stored; backward 18).
    nbytes = 18 * act * elem
    flops = 2 * conv_cost(case.N, c, c, case.H, case.W, 3, 1, groups, elem, True)[1]

    def make():
        u = torch.randn(case.N, c, case.H, case.W, device=device, dtype=case.dtype).to(memory_format=fmt)
        return u.requires_grad_(), torch.randn_like(u).requires_grad_()

    rotation = Rotation(make, int(nbytes), device)

    def run():
        u, f = rotation.next()
        out = module(u, f)
        torch.autograd.grad(out.sum(), (u, f))

    return run, nbytes, flops


def _train_step_fn(provider, case, device):
    from mgiad import MGiaD, MgNet, resnet18_cifar

    backend = "triton" if provider == "triton" else "torch"
    if case.op == "train_step_mgiad":
        model = MGiaD(coarsest_channels=64, group_size=8, channel_scale=3, backend=backend)
    elif case.op == "train_step_mgnet":
        model = MgNet(backend=backend)
    else:
        model = resnet18_cifar(backend=backend)
    model = model.to(device).to(memory_format=torch.channels_last)
    module = torch.compile(model) if provider == "torch_compile" else model
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(case.N, 3, case.H, case.W, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (case.N,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=case.dtype == torch.bfloat16)

    def run():
        with autocast:
            loss = F.cross_entropy(module(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return run, 0.0, 0.0


def cases(quick: bool, ops, dtypes) -> list[Case]:
    shapes = QUICK_SHAPES if quick else MODEL_SHAPES
    batch = 2 if quick else 128
    out = []
    for dtype in dtypes:
        for c, h in shapes:
            for g in GROUP_SIZES:
                if c % g:
                    continue
                if "grouped_conv3x3" in ops:
                    out += [Case("grouped_conv3x3", p, dtype, batch, c, h, h, g) for p in ("fwd", "fwd+bwd")]
                if "transfer1x1" in ops:
                    out += [Case("transfer1x1", "fwd+bwd", dtype, batch, c, h, h, g, {"direction": d})
                            for d in ("halving", "doubling")]
                if "smoothing_step" in ops:
                    out.append(Case("smoothing_step", "train", dtype, batch, c, h, h, g))
            if "depthwise_pool" in ops:
                out.append(Case("depthwise_pool", "fwd+bwd", dtype, batch, c, h, h, 1))
        for op in ("train_step_mgiad", "train_step_mgnet", "train_step_resnet18"):
            if op in ops:
                out.append(Case(op, "train", dtype, 8 if quick else 128, 3, 32, 32, 8))
    return out


def providers_for(case: Case) -> tuple[str, ...]:
    return MODEL_PROVIDERS if case.op.startswith("train_step") else CONV_PROVIDERS


def skip_reason(provider: str, device: torch.device) -> str | None:
    if provider == "triton" and device.type != "cuda":
        return "Triton providers need a GPU (the CPU interpreter is for correctness, not timing)"
    if provider == "torch_compile" and device.type != "cuda":
        return "torch.compile max-autotune is timed on GPUs only"
    return None


def build(case: Case, provider: str, device: torch.device):
    if case.op == "smoothing_step":
        return _smoothing_fn(provider, case, device)
    if case.op.startswith("train_step"):
        return _train_step_fn(provider, case, device)
    c_in, c_out, k, stride, groups = _conv_geometry(case)
    return _conv_fn(provider, case, c_in, c_out, k, stride, groups, device)


def measure(case: Case, provider: str, device: torch.device, copy_gbs: float) -> Result:
    run, nbytes, flops = build(case, provider, device)
    median, p20, p80 = _timer(device)(run)
    gbs = nbytes / median / 1e6
    return Result(case.op_name, case.pass_,
                  str(case.dtype).replace("torch.", ""), case.N, case.C, case.H, case.W, case.group_size, provider,
                  median, p20, p80, gbs, flops / median / 1e9, gbs / copy_gbs if copy_gbs else 0.0)


def add_speedups(results: list[Result]) -> None:
    """Each result's speedup over the faster cuDNN layout (or the torch provider) of the same case."""
    key = lambda r: (r.op, r.pass_, r.dtype, r.N, r.C, r.H, r.group_size)  # noqa: E731
    baseline = {}
    for r in results:
        if r.provider in ("cudnn_nchw", "cudnn_channels_last", "torch"):
            baseline[key(r)] = min(baseline.get(key(r), float("inf")), r.median_ms)
    for r in results:
        if key(r) in baseline:
            r.speedup_vs_best_cudnn = baseline[key(r)] / r.median_ms


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu-{platform.machine()}"


def write_results(results: list[Result], device: torch.device, copy_gbs: float, out_dir: str) -> str:
    import triton

    today = datetime.date.today().isoformat()
    name = device_name(device)
    stem = os.path.join(out_dir, f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}-{today}")
    os.makedirs(out_dir, exist_ok=True)
    doc = {"device": name, "torch": torch.__version__, "triton": triton.__version__,
           "cudnn": torch.backends.cudnn.version() or 0, "date": today, "copy_bandwidth_gbs": copy_gbs,
           "results": [r.to_json() for r in results]}
    with open(stem + ".json.tmp", "w") as fh:
        json.dump(doc, fh, indent=1)
    os.replace(stem + ".json.tmp", stem + ".json")
    lines = [f"# Benchmarks on {name}, {today}", "",
             f"torch {torch.__version__}, triton {triton.__version__}, cuDNN {doc['cudnn']}; measured copy "
             f"bandwidth {copy_gbs:.0f} GB/s. Times are medians (p20-p80)."
             + ("" if device.type == "cuda" else " On a CPU the cudnn_* providers are PyTorch's CPU "
                "convolutions in each layout, and the Triton providers are not timed."), "",
             "| op | pass | dtype | N | C | H=W | g_s | provider | median ms | p20-p80 ms | GB/s | of copy BW "
             "| TFLOP/s | speedup |", "|" + "---|" * 14]
    for r in results:
        speed = f"{r.speedup_vs_best_cudnn:.2f}x" if r.speedup_vs_best_cudnn else ""
        lines.append(f"| {r.op} | {r.pass_} | {r.dtype} | {r.N} | {r.C} | {r.H} | {r.group_size} | {r.provider} | "
                     f"{r.median_ms:.3f} | {r.p20_ms:.3f}-{r.p80_ms:.3f} | {r.gbs:.2f} | "
                     f"{100 * r.fraction_of_copy_bandwidth:.0f}% | {r.tflops:.2f} | {speed} |")
    with open(stem + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    _plot(results, stem, copy_gbs)
    return stem


def _plot(results: list[Result], stem: str, copy_gbs: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tri = [r for r in results if r.provider == "triton" and r.speedup_vs_best_cudnn]
    if tri:
        fig, ax = plt.subplots(figsize=(max(6, len(tri) * 0.3), 4))
        ax.bar(range(len(tri)), [r.speedup_vs_best_cudnn for r in tri])
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(tri)), [f"{r.op} {r.pass_} {r.dtype} C{r.C} H{r.H} g{r.group_size}" for r in tri],
                      rotation=90, fontsize=6)
        ax.set_ylabel("speedup over the faster cuDNN layout")
        fig.tight_layout()
        fig.savefig(stem + "-speedup.png", dpi=100)
        plt.close(fig)
    rows = [r for r in results if r.gbs > 0]
    if rows:
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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny shapes (the default off-GPU)")
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--out-dir", default=os.path.join("benchmarks", "results"))
    a = p.parse_args(argv)
    ops = a.ops.split(",")
    unknown = sorted(set(ops) - set(OPS))
    if unknown:
        p.error(f"--ops: unknown {unknown}; choose from {OPS}")
    dtypes = []
    for name in a.dtypes.split(","):
        if name not in ("float32", "bfloat16", "float16"):
            p.error(f"--dtypes: expected float32, bfloat16 or float16, got {name!r}")
        dtypes.append(getattr(torch, name))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    quick = a.quick or device.type != "cuda"
    copy_gbs = copy_bandwidth_gbs(device)
    print(f"{device_name(device)}: copy bandwidth {copy_gbs:.0f} GB/s")
    results = []
    for case in cases(quick, ops, dtypes):
        if device.type != "cuda" and case.dtype != torch.float32 and case.op.startswith("train_step"):
            continue
        for provider in providers_for(case):
            reason = skip_reason(provider, device)
            if reason:
                continue
            r = measure(case, provider, device, copy_gbs)
            results.append(r)
            print(f"{case.label:<60} {provider:<20} {r.median_ms:9.3f} ms  {r.gbs:7.1f} GB/s", flush=True)
    add_speedups(results)
    stem = write_results(results, device, copy_gbs, a.out_dir)
    print(f"wrote {stem}.json, {stem}.md and plots")


if __name__ == "__main__":
    main()
