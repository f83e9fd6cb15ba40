"""Train and evaluate the package's models with the MGiaD paper's recipe (Sec. IV a).

    mgiad train                                  # embedded default: digits, a small MGiaD, CPU, offline
    mgiad train --model mgiad --dataset cifar10 --data-dir ~/data --out runs/c10
    torchrun --nproc-per-node 8 -m mgiad.train --dataset cifar100 --data-dir ~/data ...
    mgiad eval runs/c10/checkpoint.pt --dataset cifar10 --data-dir ~/data
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .data import DATASETS, Dataset, DatasetError, load_dataset, prepare_batch
from .models import MGiaD, MgNet, PolyMgNet, mgic_resnet56, multigrid_net, resnet18_cifar, resnet20
from .models.multigrid import NETWORKS

MODELS = ("mgiad", "mgnet", "resnet18", "resnet20", "mgic-resnet56", "polymgnet", "multigrid")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mgiad train", description="Train a multigrid CNN (MGiaD paper recipe).")
    p.add_argument("--model", choices=MODELS, default="mgiad")
    p.add_argument("--backend", choices=("auto", "triton", "torch"), default="auto")
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset in torchvision's layout")
    p.add_argument("--out", default=None, help="run folder: metrics.jsonl, checkpoint.pt, best.pt, curves.png")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--epochs", type=int, default=None, help="default: 20 on digits, 400 otherwise (the paper)")
    p.add_argument("--batch-size", type=int, default=128, help="global batch, split over processes")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--no-augment", action="store_true", help="no random crop / flip")
    p.add_argument("--autoaugment", action="store_true", help="AutoAugment (CIFAR-10 policy) before crop / flip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--widths", type=_ints, default=None, help="per resolution level, e.g. 64,128,256,256")
    p.add_argument("--smoothing-steps", type=_ints, default=None)
    p.add_argument("--coarsest-channels", type=int, default=None)
    p.add_argument("--group-size", type=int, default=None)
    p.add_argument("--channel-scale", type=int, default=1)
    p.add_argument("--post-smoothing", type=int, default=1)
    p.add_argument("--share", choices=("AB", "A", "none"), default="AB", help="MgNet weight sharing")
    p.add_argument("--degree", type=int, choices=(1, 2), default=2, help="Poly-MgNet: degree of q (1 linear, 2 quadratic)")
    p.add_argument("--roots", choices=("real", "complex"), default="complex", help="Poly-MgNet quadratic block roots")
    p.add_argument("--network", choices=NETWORKS, default="R-MG-12", help="--model multigrid: a network of the "
                   "multigrid-convolution slides' CIFAR-100 table")
    p.add_argument("--max-steps-per-epoch", type=int, default=None, help=argparse.SUPPRESS)  # tests
    return p


def build_model(args, ds: Dataset) -> nn.Module:
    small = ds.name == "digits"
    widths = args.widths or ((16, 32, 64) if small else (64, 128, 256, 256))
    steps = args.smoothing_steps or (2,) * len(widths)
    common = dict(num_classes=ds.num_classes, in_channels=ds.in_channels, backend=args.backend)
    if args.model == "mgiad":
        return MGiaD(widths=widths, smoothing_steps=steps, coarsest_channels=args.coarsest_channels or (8 if small else 64),
                     group_size=args.group_size or (4 if small else 8), channel_scale=args.channel_scale,
                     post_smoothing=args.post_smoothing, **common)
    if args.model == "mgnet":
        return MgNet(widths=widths, smoothing_steps=steps, share=None if args.share == "none" else args.share,
                     group_size=args.group_size, **common)
    if args.model == "mgic-resnet56":
        return mgic_resnet56(group_size=args.group_size or 8, coarsest_channels=args.coarsest_channels or 16, **common)
    if args.model == "polymgnet":
        return PolyMgNet(widths=widths, smoothing_steps=steps, degree=args.degree, roots=args.roots, **common)
    if args.model == "multigrid":
        return multigrid_net(args.network, **common)
    return (resnet18_cifar if args.model == "resnet18" else resnet20)(**common)


class Distributed:
    """torchrun's environment: rank, world size; NCCL on GPUs, gloo on CPU."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def save_atomic(obj, path: str) -> None:
    """Write to a temporary file, fsync, rename: a crash leaves the old file or the new, never half of one."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not hold what training needs."""


CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "epoch", "rng", "args", "best_acc")


def load_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch.load raises many kinds on a damaged file
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc}); "
                              "delete it to start over, or restore it") from exc
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}: not a checkpoint written by mgiad train")
    return ckpt


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _progress(iterable, total: int, desc: str, enabled: bool):
    if enabled and sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=False)
    return iterable


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


def _autocast(device: torch.device):
    """bf16 autocast on GPUs; full precision on the CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


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


def train(args) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dist_env = Distributed(device)
    if dist_env.world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    ds = load_dataset(args.dataset, args.data_dir)
    epochs = args.epochs or (20 if args.dataset == "digits" else 400)
    torch.manual_seed(args.seed)
    model = build_model(args, ds).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    start_epoch, best_acc = 0, 0.0
    out = args.out
    if out and dist_env.is_main:
        os.makedirs(out, exist_ok=True)
    if args.resume:
        if not out:
            raise CheckpointError("--resume needs --out, the run folder holding checkpoint.pt")
        ckpt = load_checkpoint(os.path.join(out, "checkpoint.pt"))
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"])
        start_epoch, best_acc = ckpt["epoch"], ckpt["best_acc"]
    train_model = model
    if dist_env.world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            nn.SyncBatchNorm.convert_sync_batchnorm(model) if device.type == "cuda" else model,
            device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        train_model = torch.compile(train_model)
    autoaugment = None
    if args.autoaugment:
        from torchvision.transforms import AutoAugment, AutoAugmentPolicy

        autoaugment = AutoAugment(AutoAugmentPolicy.CIFAR10)

    metrics_path = os.path.join(out, "metrics.jsonl") if out else None
    if metrics_path and dist_env.is_main and start_epoch == 0 and os.path.exists(metrics_path):
        os.remove(metrics_path)
    history = []
    for epoch in range(start_epoch, epochs):
        train_model.train()
        batches = _epoch_order(len(ds.train.labels), args.seed, epoch, dist_env, args.batch_size)
        if args.max_steps_per_epoch:
            batches = batches[:args.max_steps_per_epoch]
        aug_gen = torch.Generator().manual_seed(args.seed * 7_919 + epoch * (dist_env.world + 1) + dist_env.rank)
        loss_sum, correct, seen, t0 = 0.0, 0, 0, time.perf_counter()
        for idx in _progress(batches, len(batches), f"epoch {epoch + 1}/{epochs}", dist_env.is_main):
            images = ds.train.images[idx]
            if autoaugment is not None:
                images = torch.stack([autoaugment(img) for img in images])
            x = prepare_batch(images, ds, not args.no_augment, aug_gen, device)
            y = ds.train.labels[idx].to(device)
            with _autocast(device):
                logits = train_model(x)
                loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        test_loss, test_acc = evaluate(model, ds, device)
        record = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
                  "test_loss": test_loss, "test_acc": test_acc, "lr": lr,
                  "images_per_s": seen * dist_env.world / elapsed, "params": params}
        history.append(record)
        if dist_env.is_main:
            print(json.dumps(record), flush=True)
            if out:
                with open(metrics_path, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                best_acc = max(best_acc, test_acc)
                ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "rng": _rng_state(),
                        "args": vars(args), "best_acc": best_acc}
                if test_acc >= best_acc:
                    save_atomic(ckpt, os.path.join(out, "best.pt"))
                save_atomic(ckpt, os.path.join(out, "checkpoint.pt"))
    if out and dist_env.is_main:
        from .plots import plot_curves

        plot_curves(metrics_path, os.path.join(out, "curves.png"))
    if dist_env.world > 1:
        dist.barrier()
    return {"history": history, "model": model}


def eval_main(argv) -> None:
    p = argparse.ArgumentParser(prog="mgiad eval", description="Evaluate a checkpoint on a dataset's test split.")
    p.add_argument("checkpoint")
    p.add_argument("--dataset", choices=DATASETS, default=None, help="default: the one it was trained on")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default=None)
    a = p.parse_args(argv)
    ckpt = load_checkpoint(a.checkpoint)
    args = argparse.Namespace(**ckpt["args"])
    ds = load_dataset(a.dataset or args.dataset, a.data_dir or args.data_dir)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_model(args, ds).to(device)
    model.load_state_dict(ckpt["model"])
    loss, acc = evaluate(model, ds, device)
    print(json.dumps({"checkpoint": a.checkpoint, "dataset": ds.name, "test_loss": loss, "test_acc": acc}))


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "eval":
            return eval_main(argv[1:])
        if argv and argv[0] == "plot":
            from .plots import plot_main

            return plot_main(argv[1:])
        if argv and argv[0] == "train":
            argv = argv[1:]
        args = build_parser().parse_args(argv)
        if args.epochs is not None and args.epochs < 1:
            raise SystemExit("mgiad train: --epochs must be at least 1")
        result = train(args)
        if result["history"]:
            print(f"final test accuracy {result['history'][-1]['test_acc']:.4f}")
    except (DatasetError, CheckpointError) as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
