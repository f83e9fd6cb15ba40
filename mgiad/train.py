"""Training with the MGiaD paper's recipe (Sec. IV a): set-up, the epoch loop, evaluation, checkpoints.

    mgiad train                                  # embedded default: digits, a small MGiaD, CPU, offline
    mgiad train --model mgiad --dataset cifar10 --data-dir ~/data --out runs/c10
    mgiad train --dataset cifar10 --data-dir ~/data --out runs/c10 --resume --epochs 500  # 500 in total
    torchrun --nproc-per-node 8 -m mgiad train --dataset cifar100 --data-dir ~/data ...
    mgiad eval runs/c10/checkpoint.pt --dataset cifar10 --data-dir ~/data

The command line (flags, their checks, ``main``) is ``mgiad.cli``; this module is what it runs.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .checkpoints import CheckpointError, load_checkpoint, rng_state, save_atomic, set_rng_state
from .data import Dataset, load_dataset, prepare_batch
from .graphs import CapturedStep, sgd_step
from .metrics import append_metrics, keep_epochs_through, to_json
from .models.factory import MODELS, build_model

__all__ = ["MODELS", "CheckpointError", "Distributed", "NothingToTrain", "TrainingRun", "build_model", "evaluate",
           "load_checkpoint", "planned_epochs", "replan_schedule", "save_atomic", "setup_run", "train",
           "train_epoch"]


class NothingToTrain(Exception):
    """A resume that would train no epoch. ``finished``: the run has trained all its epochs (not an error);
    otherwise --epochs asks for fewer epochs in total than the run has trained."""

    def __init__(self, message: str, finished: bool):
        super().__init__(message)
        self.finished = finished


class Distributed:
    """torchrun's environment: rank, world size; NCCL on GPUs, gloo on CPU."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.owns_group = self.world > 1 and not dist.is_initialized()
        if self.owns_group:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def close(self) -> None:
        """Wait for every rank, then destroy the process group this object created: a process left to
        tear gloo down at interpreter exit can abort (SIGABRT) on its worker threads."""
        if self.owns_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
            self.owns_group = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _progress(iterable, total: int, desc: str, enabled: bool):
    """A tqdm bar on a terminal when tqdm is installed; the plain iterable otherwise."""
    if enabled and sys.stderr.isatty():
        try:
            from tqdm import tqdm
        except ImportError:
            return iterable
        return tqdm(iterable, total=total, desc=desc, leave=False)
    return iterable


def _autocast(device: torch.device):
    """bf16 autocast on GPUs; full precision on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def evaluate(model: nn.Module, ds: Dataset, device: torch.device, batch_size: int = 512) -> tuple[float, float]:
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad(), _autocast(device):
        for i in range(0, len(ds.test.labels), batch_size):
            x = prepare_batch(ds.test.images[i:i + batch_size], ds, False, None, device)
            y = ds.test.labels[i:i + batch_size].to(device)
            logits = model(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
    n = len(ds.test.labels)
    return loss_sum / n, correct / n


def _epoch_order(n: int, seed: int, epoch: int, dist_env: Distributed, global_batch: int) -> list[torch.Tensor]:
    """This process's batches of one epoch: a seeded permutation cut into global batches, each split by rank."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    batches = []
    for start in range(0, n, global_batch):
        chunk = order[start:start + global_batch]
        if len(chunk) < dist_env.world:
            continue
        batches.append(chunk.tensor_split(dist_env.world)[dist_env.rank])
    return batches


@dataclass
class TrainingRun:
    """Everything a run holds between epochs."""
    args: object
    device: torch.device
    dist_env: Distributed
    ds: Dataset
    model: nn.Module  # the plain model: evaluated and checkpointed
    train_model: nn.Module  # what the loop calls: the model, or it wrapped in DDP and/or torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    epochs: int
    params: int
    start_epoch: int = 0
    best_acc: float = 0.0
    autoaugment: object = None
    captured_step: CapturedStep | None = None  # --cuda-graphs: the step replayed from a CUDA graph
    history: list = field(default_factory=list)

    @property
    def writes(self) -> bool:
        """Whether this process writes the run folder (rank 0, and only with --out)."""
        return bool(self.args.out) and self.dist_env.is_main

    @property
    def metrics_path(self) -> str | None:
        return os.path.join(self.args.out, "metrics.jsonl") if self.args.out else None


def _device_and_processes(args) -> tuple[torch.device, Distributed]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dist_env = Distributed(device)
    if dist_env.world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device, dist_env


def _wrap(model: nn.Module, device: torch.device, dist_env: Distributed, compile_model: bool) -> nn.Module:
    """DDP (SyncBatchNorm on GPUs) across processes, then torch.compile on request."""
    if dist_env.world > 1:
        model = nn.parallel.DistributedDataParallel(
            nn.SyncBatchNorm.convert_sync_batchnorm(model) if device.type == "cuda" else model,
            device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(model) if compile_model else model


def _autoaugment(enabled: bool):
    if not enabled:
        return None
    from torchvision.transforms import AutoAugment, AutoAugmentPolicy

    return AutoAugment(AutoAugmentPolicy.CIFAR10)


def planned_epochs(args, ckpt: dict | None) -> int:
    """The run's total number of epochs: --epochs; without it a resumed run's own total, a new run 20 on digits
    and 400 otherwise (the paper). Raises NothingToTrain when a resumed run has trained that many already."""
    if ckpt is None:
        return args.epochs or (20 if args.dataset == "digits" else 400)
    epochs, done = args.epochs or ckpt["scheduler"]["T_max"], ckpt["epoch"]
    if done == epochs:
        raise NothingToTrain(f"{args.out} has trained all {epochs} of its epochs, nothing to train (--epochs is the "
                             f"run's total: pass a larger one to train on)", finished=True)
    if done > epochs:
        raise NothingToTrain(f"--epochs {epochs} is fewer than the {done} epochs {args.out} has trained "
                             f"(--epochs is the run's total: pass more than {done} to train on)", finished=False)
    return epochs


def replan_schedule(scheduler: torch.optim.lr_scheduler.CosineAnnealingLR, optimizer: torch.optim.Optimizer,
                    epochs: int) -> bool:
    """Put a cosine schedule on the curve of a run of ``epochs`` in total, at the epoch it stands at: each later
    epoch gets the learning rate a run started with that total has there. Returns whether it re-planned (the
    schedule's total differed)."""
    if scheduler.T_max == epochs:
        return False
    scheduler.T_max = epochs
    done, low = scheduler.last_epoch, scheduler.eta_min
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = low + (base - low) * (1 + math.cos(math.pi * done / epochs)) / 2
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports
    return True


def _restore(run: "TrainingRun", ckpt: dict) -> None:
    """The checkpoint's weights, optimizer, schedule (re-planned when --epochs gives another total), RNG and
    progress; a re-planned schedule is reported in one line on stderr."""
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    old_total = run.scheduler.T_max
    if replan_schedule(run.scheduler, run.optimizer, run.epochs) and run.dist_env.is_main:
        print(f"resuming {run.args.out} at epoch {ckpt['epoch']}: the cosine learning-rate schedule is re-planned "
              f"from {old_total} to {run.epochs} epochs in total", file=sys.stderr)
    set_rng_state(ckpt["rng"])
    run.start_epoch, run.best_acc = ckpt["epoch"], ckpt["best_acc"]


def setup_run(args) -> TrainingRun:
    """Device and processes, the checkpoint to resume (read first: a bad one, or a resume with nothing to
    train, fails before the data loads), the dataset, the seeded model, SGD with cosine annealing over the
    run's total epochs, restored state, the wrappers, and with --cuda-graphs the step captured in a CUDA
    graph (mgiad.graphs)."""
    device, dist_env = _device_and_processes(args)
    if args.resume and not args.out:
        raise CheckpointError("--resume needs --out, the run folder holding checkpoint.pt")
    ckpt = load_checkpoint(os.path.join(args.out, "checkpoint.pt")) if args.resume else None
    try:
        epochs = planned_epochs(args, ckpt)
    except NothingToTrain:
        dist_env.close()
        raise
    ds = load_dataset(args.dataset, args.data_dir)
    torch.manual_seed(args.seed)
    model = build_model(args, ds.name, ds.num_classes, ds.in_channels).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    run = TrainingRun(args, device, dist_env, ds, model, model, optimizer, scheduler, epochs,
                      sum(p.numel() for p in model.parameters()))
    if run.writes:
        os.makedirs(args.out, exist_ok=True)
    if ckpt is not None:
        _restore(run, ckpt)
    run.train_model = _wrap(model, device, dist_env, args.compile)
    if args.cuda_graphs:
        torch.cuda.set_device(device)  # capture and replay use the current device's streams
        run.captured_step = CapturedStep(model, optimizer, amp_dtype=torch.bfloat16)
    run.autoaugment = _autoaugment(args.autoaugment)
    if run.writes and run.start_epoch == 0 and os.path.exists(run.metrics_path):
        os.remove(run.metrics_path)
    elif run.writes and os.path.exists(run.metrics_path):  # the rows of epochs the checkpoint does not hold go
        keep_epochs_through(run.metrics_path, run.start_epoch)
    return run


def train_epoch(run: TrainingRun, epoch: int) -> dict:
    """One pass over this process's batches, each an eager ``sgd_step`` or, with --cuda-graphs, a replay of
    the captured step; the epoch's training loss, accuracy, images and seconds."""
    args, ds, device, dist_env = run.args, run.ds, run.device, run.dist_env
    run.train_model.train()
    batches = _epoch_order(len(ds.train.labels), args.seed, epoch, dist_env, args.batch_size)
    if args.max_steps_per_epoch:
        batches = batches[:args.max_steps_per_epoch]
    aug_gen = torch.Generator().manual_seed(args.seed * 7_919 + epoch * (dist_env.world + 1) + dist_env.rank)
    loss_sum, correct, seen, t0 = 0.0, 0, 0, time.perf_counter()
    for idx in _progress(batches, len(batches), f"epoch {epoch + 1}/{run.epochs}", dist_env.is_main):
        images = ds.train.images[idx]
        if run.autoaugment is not None:
            images = torch.stack([run.autoaugment(img) for img in images])
        x = prepare_batch(images, ds, not args.no_augment, aug_gen, device)
        y = ds.train.labels[idx].to(device)
        if run.captured_step is not None:  # the sums stay on the GPU: no sync per step
            loss, logits = run.captured_step(x, y)
            loss_sum += loss.detach().double() * len(y)
            correct += (logits.argmax(1) == y).sum()
        else:
            loss, logits = sgd_step(run.train_model, run.optimizer, x, y, _autocast(device))
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    loss_sum, correct = float(loss_sum), int(correct)
    return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1), "seen": seen,
            "seconds": time.perf_counter() - t0}


def save_checkpoints(run: TrainingRun, epoch: int, test_acc: float) -> None:
    """checkpoint.pt after every epoch, best.pt when the test accuracy is the best so far (``end_epoch`` has
    counted it in ``run.best_acc``)."""
    ckpt = {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "epoch": epoch + 1, "rng": rng_state(),
            "args": vars(run.args), "best_acc": run.best_acc}
    if test_acc >= run.best_acc:
        save_atomic(ckpt, os.path.join(run.args.out, "best.pt"))
    save_atomic(ckpt, os.path.join(run.args.out, "checkpoint.pt"))


def end_epoch(run: TrainingRun, epoch: int, stats: dict) -> dict:
    """Step the schedule, evaluate, log the epoch's record (strict JSON) and write the checkpoints."""
    lr = run.optimizer.param_groups[0]["lr"]
    run.scheduler.step()
    test_loss, test_acc = evaluate(run.model, run.ds, run.device)
    run.best_acc = max(run.best_acc, test_acc)
    record = {"epoch": epoch + 1, "train_loss": stats["train_loss"], "train_acc": stats["train_acc"],
              "test_loss": test_loss, "test_acc": test_acc, "lr": lr,
              "images_per_s": stats["seen"] * run.dist_env.world / stats["seconds"], "params": run.params}
    if run.dist_env.is_main:
        if not math.isfinite(stats["train_loss"]):
            print(f"warning: epoch {epoch + 1}: the training loss is not finite (logged as null); "
                  "try a smaller --lr", file=sys.stderr)
        print(to_json(record), flush=True)
    if run.writes:
        append_metrics(run.metrics_path, record)
        save_checkpoints(run, epoch, test_acc)
    return record


def write_curves(run: TrainingRun) -> None:
    """curves.png from metrics.jsonl; skipped with a one-line note when matplotlib is not installed."""
    from .plots import plot_curves, pyplot_or_none

    if pyplot_or_none() is None:
        print("curves.png skipped: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return
    plot_curves(run.metrics_path, os.path.join(run.args.out, "curves.png"))


def train(args) -> dict:
    """Train as ``args`` (``mgiad.cli.build_parser``'s namespace) says; returns the history (this process's
    epochs), the run's best test accuracy (a resumed run's earlier epochs included) and the model."""
    run = setup_run(args)
    for epoch in range(run.start_epoch, run.epochs):
        run.history.append(end_epoch(run, epoch, train_epoch(run, epoch)))
    if run.writes:
        write_curves(run)
    run.dist_env.close()
    return {"history": run.history, "best_acc": run.best_acc, "model": run.model}
