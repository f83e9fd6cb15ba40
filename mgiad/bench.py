"""Whole-model training-step benchmarks: MGiaD, MgNet and ResNet18 images per second per provider.

    python -m mgiad.bench [--quick] [--ops train_step_mgiad,...] [--dtypes float32,bfloat16] [--out-dir DIR]
    python -m mgiad.bench --host [--out-dir DIR] [--repeats N] [--no-cold-start]

One SGD step (forward, backward, update; bf16 autocast for ``bfloat16``) of each model at CIFAR
shape, on the providers ``triton`` (every conv and smoothing step on the Triton kernels), ``torch``
(cuDNN) and ``torch_compile``. It runs on the kernel benchmark's machinery (``mgiad_kernels.bench``:
timers, report, flags) and writes ``benchmarks/results/<device>-<date>-models.json`` and ``.md`` in
the same format. Off-GPU it runs float32 only, at batch 4 and 16x16 (``--quick``), and times the torch
provider.

``--host`` runs the host-path benchmark instead (``mgiad.host_bench``; no GPU needed): the issue's
MGiaD step on CPU tensors through the real Triton launch path compiled for sm_90 by the stand-in
driver. It counts Triton launches and aten compute ops per forward+backward, times the host cost of
one launch against a tiny aten op, and measures a cold start (compiles on an empty Triton cache); it
writes ``benchmarks/results/host-<device>-<date>.json`` and ``.md``.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from mgiad_kernels.bench import Case, Suite
from mgiad_kernels.bench import main as bench_main

from .models import MGiaD, MgNet, resnet18_cifar

OPS = ("train_step_mgiad", "train_step_mgnet", "train_step_resnet18")
PROVIDERS = ("triton", "torch", "torch_compile")


def cases(quick: bool, ops, dtypes) -> list[Case]:
    """CIFAR-shaped batches of 128, or of 4 at 16x16 when ``quick`` (a smoke run)."""
    n, size = (4, 16) if quick else (128, 32)
    return [Case(op, "train", dtype, n, 3, size, size, 8) for dtype in dtypes for op in OPS if op in ops]


def providers_for(case: Case) -> tuple[str, ...]:
    return PROVIDERS


def runs_on(case: Case, device: torch.device) -> bool:
    """bf16 autocast steps are timed on GPUs only."""
    return device.type == "cuda" or case.dtype == torch.float32


def build_model(op: str, backend: str) -> torch.nn.Module:
    if op == "train_step_mgiad":
        return MGiaD(coarsest_channels=64, group_size=8, channel_scale=3, backend=backend)
    if op == "train_step_mgnet":
        return MgNet(backend=backend)
    if op == "train_step_resnet18":
        return resnet18_cifar(backend=backend)
    raise ValueError(f"unknown op {op!r}; choose from {OPS}")


def train_step_fn(case: Case, provider: str, device: torch.device):
    """One SGD step of the case's model on ``provider``; no minimum bytes or FLOPs (whole models)."""
    model = build_model(case.op, "triton" if provider == "triton" else "torch")
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


SUITE = Suite(OPS, cases, providers_for, train_step_fn, stem_suffix="-models", runs_on=runs_on)


def images_per_s(case: Case, median_ms: float) -> float:
    """Training throughput of a timed step."""
    return case.N / median_ms * 1e3


def main(argv=None) -> str | None:
    """The whole-model suite, or with ``--host`` the host-path benchmark; returns the results' stem."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--host" in argv:
        from . import host_bench

        return host_bench.main([a for a in argv if a != "--host"])
    return bench_main(argv, SUITE, __doc__, prog="python -m mgiad.bench")


if __name__ == "__main__":
    main(sys.argv[1:])
