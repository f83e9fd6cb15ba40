"""The ``mgiad`` command: ``train`` (the default), ``eval`` and ``plot``.

Every flag is checked before any data is read or any model trained, and a bad one is refused in
one line (``mgiad train: error: ...``, exit status 2): numbers by the models' argument rules
(``mgiad.models.rules``), device strings, the output folder (created and probed for writing), and
the model configuration, built on the meta device with the dataset's nominal shape so that the
models' own rules give their own messages. Errors found later (a damaged dataset or checkpoint, a
failed checkpoint write) are one line too, with exit status 1.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile

import torch

from .argparsing import OneLineParser
from .checkpoints import CheckpointError, load_checkpoint
from .data import DATASETS, NOMINAL_SHAPES, READER_NEEDS, DatasetError, load_dataset
from .models.factory import MODELS, build_model
from .models.multigrid import NETWORKS
from .models.polymgnet import DEGREES, ROOTS
from .models.rules import check_int, check_int_tuple, check_real

COMMANDS = {"train": "train a model (the default command: `mgiad [flags]` trains)",
            "eval": "evaluate a checkpoint on a dataset's test split",
            "plot": "plot weight count against best test accuracy of run folders"}
SEED_MAX = 2**32 - 1


def _flag(rule, name: str, parse=int, **bounds):
    """An argparse type: parse the text, then check it with the models' rule (same message)."""
    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            kind = {int: "an int", float: "a number"}.get(parse, "comma-separated ints")
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        try:
            return rule(name, value, **bounds)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _device(text: str) -> str:
    """'cpu', 'cuda' or 'cuda:N', and a GPU that exists."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: no CUDA GPU is available here (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return text


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=MODELS, default="mgiad")
    p.add_argument("--backend", choices=("auto", "triton", "torch"), default="auto")
    p.add_argument("--widths", type=_flag(check_int_tuple, "widths", _ints), default=None,
                   help="per resolution level, e.g. 64,128,256,256")
    p.add_argument("--smoothing-steps", type=_flag(check_int_tuple, "smoothing_steps", _ints), default=None)
    p.add_argument("--coarsest-channels", type=_flag(check_int, "coarsest_channels"), default=None)
    p.add_argument("--group-size", type=_flag(check_int, "group_size"), default=None)
    p.add_argument("--channel-scale", type=_flag(check_int, "channel_scale"), default=1)
    p.add_argument("--post-smoothing", type=_flag(check_int, "post_smoothing", minimum=0), default=1)
    p.add_argument("--share", choices=("AB", "A", "none"), default="AB", help="MgNet weight sharing")
    p.add_argument("--degree", type=int, choices=DEGREES, default=2,
                   help="Poly-MgNet: degree of q (1 linear, 2 quadratic)")
    p.add_argument("--roots", choices=ROOTS, default="complex", help="Poly-MgNet quadratic block roots")
    p.add_argument("--network", choices=NETWORKS, default="R-MG-12", help="--model multigrid: a network of the "
                   "multigrid-convolution slides' CIFAR-100 table")


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="mgiad train", description="Train a multigrid CNN (MGiaD paper recipe).")
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset in torchvision's layout")
    p.add_argument("--out", default=None, help="run folder: metrics.jsonl, checkpoint.pt, best.pt, curves.png")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--epochs", type=_flag(check_int, "epochs"), default=None,
                   help="default: 20 on digits, 400 otherwise (the paper)")
    p.add_argument("--batch-size", type=_flag(check_int, "batch_size"), default=128,
                   help="global batch, split over processes")
    p.add_argument("--lr", type=_flag(check_real, "lr", float, low=0.0, low_closed=False), default=0.05)
    p.add_argument("--momentum", type=_flag(check_real, "momentum", float, low=0.0, high=1.0), default=0.9)
    p.add_argument("--weight-decay", type=_flag(check_real, "weight_decay", float, low=0.0), default=1e-4)
    p.add_argument("--no-augment", action="store_true", help="no random crop / flip")
    p.add_argument("--autoaugment", action="store_true", help="AutoAugment (CIFAR-10 policy) before crop / flip")
    p.add_argument("--seed", type=_flag(check_int, "seed", minimum=0, maximum=SEED_MAX), default=0)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="GPU, one process: capture the whole training step in a CUDA graph and replay it")
    p.add_argument("--device", type=_device, default=None, help="cpu, cuda or cuda:N; default: cuda if available")
    _add_model_flags(p)
    p.add_argument("--max-steps-per-epoch", type=_flag(check_int, "max_steps_per_epoch"), default=None,
                   help=argparse.SUPPRESS)  # tests
    return p


def check_out_dir(path: str) -> None:
    """The run folder exists (created here) and takes a new file; raises ValueError saying why not."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--out {path} is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {path} cannot be created ({exc.strerror or exc})") from None
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ValueError(f"--out {path} is not writable ({exc.strerror or exc})") from None


def check_model_config(args) -> None:
    """Build the model on the meta device (no memory, no compute): the models' rules, their messages."""
    classes, channels = NOMINAL_SHAPES[args.dataset]
    with torch.device("meta"):
        build_model(args, args.dataset, classes, channels)


def _missing_modules(args) -> list[str]:
    needs = [READER_NEEDS[args.dataset]] if args.dataset in READER_NEEDS else []
    if args.autoaugment:
        needs.append(("torchvision", "torchvision"))
    return [f"{'--autoaugment' if module == 'torchvision' else args.dataset} needs {package} "
            f"(pip install {package})" for module, package in needs if importlib.util.find_spec(module) is None]


def cuda_graphs_conflict(args, world: int) -> str | None:
    """Why --cuda-graphs cannot run with these flags (None: it can): it needs a CUDA device, and
    captures the plain model in one process (torch.compile and DDP are not captured)."""
    if args.compile:
        return ("--cuda-graphs and --compile are exclusive: pass one of them (--cuda-graphs captures the "
                "eager step; torch.compile(mode='reduce-overhead') makes its own graphs)")
    if world > 1:
        return (f"--cuda-graphs runs in one process, got WORLD_SIZE={world} (DistributedDataParallel steps are "
                "not captured): drop --cuda-graphs or run a single process")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type != "cuda":
        where = f"got --device {args.device}" if args.device else "no CUDA GPU is available here"
        return f"--cuda-graphs needs a CUDA device (--device cuda or cuda:N), {where}"
    return None


def check_train_args(p: argparse.ArgumentParser, args) -> None:
    """What the flags' types cannot check alone, before anything is read or trained (p.error exits)."""
    missing = _missing_modules(args)
    if missing:
        p.error(missing[0])
    if args.dataset != "digits" and args.data_dir is None:
        p.error(f"dataset {args.dataset!r} is read from a local folder: pass --data-dir")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.batch_size < world:
        p.error(f"batch_size={args.batch_size} must be at least the number of processes ({world})")
    if args.cuda_graphs:
        message = cuda_graphs_conflict(args, world)
        if message:
            p.error(message)
    try:
        check_model_config(args)
    except ValueError as exc:
        p.error(str(exc))
    if args.resume and not args.out:
        p.error("--resume needs --out, the run folder holding checkpoint.pt")
    if args.out:
        try:
            check_out_dir(args.out)
        except ValueError as exc:
            p.error(str(exc))


def train_main(argv) -> None:
    from .train import train

    p = build_parser()
    args = p.parse_args(argv)
    check_train_args(p, args)
    result = train(args)
    if result["history"]:
        acc = result["history"][-1]["test_acc"]
        print(f"final test accuracy {acc:.4f}")


def eval_main(argv) -> None:
    from .train import evaluate

    p = OneLineParser(prog="mgiad eval", description="Evaluate a checkpoint on a dataset's test split.")
    p.add_argument("checkpoint")
    p.add_argument("--dataset", choices=DATASETS, default=None, help="default: the one it was trained on")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", type=_device, default=None)
    a = p.parse_args(argv)
    ckpt = load_checkpoint(a.checkpoint)
    args = argparse.Namespace(**ckpt["args"])
    ds = load_dataset(a.dataset or args.dataset, a.data_dir or args.data_dir)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_model(args, ds.name, ds.num_classes, ds.in_channels).to(device)
    model.load_state_dict(ckpt["model"])
    loss, acc = evaluate(model, ds, device)
    print(json.dumps({"checkpoint": a.checkpoint, "dataset": ds.name, "test_loss": loss, "test_acc": acc},
                     allow_nan=False))


def top_parser() -> OneLineParser:
    p = OneLineParser(prog="mgiad", description="Train, evaluate and compare the multigrid CNNs of mgiad.",
                      epilog="`mgiad COMMAND --help` lists a command's flags.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return p


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        return top_parser().print_help()
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        top_parser().error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)} "
                           "(with no command, mgiad trains)")
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "train"
    try:
        if command == "eval":
            return eval_main(argv)
        if command == "plot":
            from .plots import plot_main

            return plot_main(argv)
        return train_main(argv)
    except (DatasetError, CheckpointError) as exc:
        raise SystemExit(f"mgiad {command}: error: {exc}") from None


if __name__ == "__main__":
    main()
