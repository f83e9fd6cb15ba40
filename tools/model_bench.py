"""Whole-model training-step benchmarks: MGiaD, MgNet, ResNet18 and ResNeXt-50 images per second per provider.

    python -m tools.model_bench [--quick] [--ops train_step_mgiad,...] [--dtypes float32,bfloat16] [--out-dir DIR]
    python -m tools.model_bench --host [--out-dir DIR] [--repeats N] [--no-cold-start] [--device cpu|cuda]

One SGD step (forward, backward, update; bf16 autocast for ``bfloat16``) of each model at CIFAR
shape, on the providers ``triton`` (every conv and smoothing step on the Triton kernels), ``torch``
(cuDNN on a GPU) and ``torch_compile``, and ``triton_graphs`` and ``torch_graphs``: the same steps captured in
a CUDA graph and replayed (``mgiad.graphs.CapturedStep``, as ``mgiad train --cuda-graphs``; warm-up
and capture happen before timing, each timed call copies the batch in and replays). It runs on the
kernel benchmark's machinery (``tools.kernel_bench``: timers, report, flags) and writes
``benchmarks/results/<device>-<date>-models.json`` and ``.md`` in the same format, each row with its
images per second. Off-GPU it runs float32 only, at batch 4 and 16x16 (``--quick``), and times the
torch provider; the others are skipped with their reason.

``train_step_resnext50`` is torchvision's ResNeXt-50 32x4d (weights=None, 1000 classes) at batch 128 and
224x224 (``--quick``: batch 2 at 32x32), on the providers ``triton`` (its grouped convs converted by
``mgiad_kernels.use_kernels``, channels_last), ``torch`` (cuDNN, NCHW) and ``torch_channels_last``; off-GPU
the torch provider alone is timed, as a smoke run.

``--host`` runs the host-path benchmark instead (``tools.host_bench``; no GPU needed): the benchmark's
MGiaD step on CPU tensors through the real Triton launch path compiled for sm_90 by the stand-in
driver. It counts Triton launches and aten compute ops per forward+backward, times the host cost of
one launch against a tiny aten op, and measures a cold start (compiles on an empty Triton cache); it
writes ``benchmarks/results/host-<device>-<date>.json`` and ``.md``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys

import torch

from tools.kernel_bench import Case, Suite
from tools.kernel_bench import main as bench_main
from tools.kernel_bench import skip_reason as kernel_skip_reason

from mgiad.graphs import CapturedStep, sgd_step
from mgiad.models import MGiaD, MgNet, resnet18_cifar
from mgiad_kernels import use_kernels

TORCHVISION_OPS = ("train_step_resnext50",)  # torchvision models, their grouped convs converted by use_kernels
OPS = ("train_step_mgiad", "train_step_mgnet", "train_step_resnet18", *TORCHVISION_OPS)
GRAPH_PROVIDERS = {"triton_graphs": "triton", "torch_graphs": "torch"}  # the eager provider each one captures
PROVIDERS = ("triton", "torch", "torch_compile", *GRAPH_PROVIDERS)
TORCHVISION_PROVIDERS = ("triton", "torch", "torch_channels_last")  # torch: NCHW; the others channels_last


def cases(quick: bool, ops, dtypes) -> list[Case]:
    """CIFAR-shaped batches of 128, or of 4 at 16x16 when ``quick`` (a smoke run); the torchvision models at
    ImageNet shape, batch 128 at 224x224, or batch 2 at 32x32 when ``quick``."""
    out = []
    for dtype in dtypes:
        for op in OPS:
            if op in ops:
                n, size = ((2, 32) if quick else (128, 224)) if op in TORCHVISION_OPS else \
                    ((4, 16) if quick else (128, 32))
                out.append(Case(op, "train", dtype, n, 3, size, size, 8 if op not in TORCHVISION_OPS else 4))
    return out


def providers_for(case: Case, device: torch.device) -> tuple[str, ...]:
    return TORCHVISION_PROVIDERS if case.op in TORCHVISION_OPS else PROVIDERS


def runs_on(case: Case, device: torch.device) -> bool:
    """bf16 autocast steps are timed on GPUs only."""
    return device.type == "cuda" or case.dtype == torch.float32


def skip_reason(provider: str, device: torch.device) -> str | None:
    """Why ``provider`` is not timed on ``device`` (None: it is): the kernel benchmark's reasons, and the
    CUDA-graph providers need a GPU."""
    if provider in GRAPH_PROVIDERS and device.type != "cuda":
        return "CUDA-graph providers capture GPU work: timed on GPUs only"
    if provider == "torch_channels_last" and device.type != "cuda":
        return "the torchvision models' layouts are compared on GPUs only (off-GPU the torch provider smoke-runs)"
    return kernel_skip_reason(provider, device)


def build_model(op: str, backend: str) -> torch.nn.Module:
    if op == "train_step_mgiad":
        return MGiaD(coarsest_channels=64, group_size=8, channel_scale=3, backend=backend)
    if op == "train_step_mgnet":
        return MgNet(backend=backend)
    if op == "train_step_resnet18":
        return resnet18_cifar(backend=backend)
    if op == "train_step_resnext50":
        import torchvision

        model = torchvision.models.resnext50_32x4d(weights=None)
        if backend == "triton":
            use_kernels(model, backend="triton")
        return model
    raise ValueError(f"unknown op {op!r}; choose from {OPS}")


def train_step_fn(case: Case, provider: str, device: torch.device):
    """One SGD step of the case's model on ``provider``; no minimum bytes or FLOPs (whole models). A graph
    provider's step is warmed up and captured here, so that every timed call is a replay."""
    eager_provider = GRAPH_PROVIDERS.get(provider, provider)
    model = build_model(case.op, "triton" if eager_provider == "triton" else "torch")
    fmt = torch.contiguous_format if case.op in TORCHVISION_OPS and provider == "torch" else torch.channels_last
    model = model.to(device).to(memory_format=fmt)
    module = torch.compile(model) if provider == "torch_compile" else model
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(case.N, 3, case.H, case.W, device=device).to(memory_format=fmt)
    y = torch.randint(0, 10, (case.N,), device=device)
    amp_dtype = torch.bfloat16 if case.dtype == torch.bfloat16 else None
    if provider in GRAPH_PROVIDERS:
        step = CapturedStep(model, opt, amp_dtype=amp_dtype)
        while step.replays == 0:  # warm-up steps, then the capture
            step(x, y)
        return lambda: step(x, y), 0.0, 0.0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp_dtype is not None)
    return lambda: sgd_step(module, opt, x, y, autocast), 0.0, 0.0


SUITE = Suite(OPS, cases, providers_for, train_step_fn, stem_suffix="-models", runs_on=runs_on)


def images_per_s(batch: int, median_ms: float) -> float:
    """Training throughput of a timed step of ``batch`` images."""
    return batch / median_ms * 1e3


def add_images_per_s(stem: str) -> list[str]:
    """Each row of ``<stem>.json`` gets ``images_per_s``, and ``<stem>.md`` a table of them per model and
    dtype, a graph provider beside the eager one it captures; returns that table's lines."""
    with open(stem + ".json") as fh:
        doc = json.load(fh)
    rows = doc["results"]
    for row in rows:
        row["images_per_s"] = images_per_s(row["N"], row["median_ms"])
    eager = {(r["op"], r["dtype"], r["N"], r["provider"]): r["images_per_s"] for r in rows}
    lines = ["", "## Images per second", "", "| op | dtype | N | provider | images/s | vs eager |", "|---" * 6 + "|"]
    for r in rows:
        base = eager.get((r["op"], r["dtype"], r["N"], GRAPH_PROVIDERS.get(r["provider"])))
        lines.append(f"| {r['op']} | {r['dtype']} | {r['N']} | {r['provider']} | {r['images_per_s']:.1f} | "
                     + (f"{r['images_per_s'] / base:.2f}x |" if base else " |"))
    with open(stem + ".json.tmp", "w") as fh:
        json.dump(doc, fh, indent=1)
    os.replace(stem + ".json.tmp", stem + ".json")
    with open(stem + ".md", "a") as fh:
        fh.write("\n".join(lines) + "\n")
    return lines


def main(argv=None) -> str | None:
    """The whole-model suite, or with ``--host`` the host-path benchmark; returns the results' stem."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--host" in argv:
        from tools import host_bench

        return host_bench.main([a for a in argv if a != "--host"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # as tools.kernel_bench.main picks it
    skipped = {p: skip_reason(p, device) for p in dict.fromkeys(PROVIDERS + TORCHVISION_PROVIDERS)
               if skip_reason(p, device)}
    suite = dataclasses.replace(SUITE, providers_for=lambda case, device: tuple(
        p for p in providers_for(case, device) if p not in skipped))
    stem = bench_main(argv, suite, __doc__, prog="python -m tools.model_bench")
    print("\n".join(add_images_per_s(stem)[2:]))
    for provider, reason in skipped.items():
        print(f"{provider} skipped: {reason}")
    return stem


if __name__ == "__main__":
    main(sys.argv[1:])
