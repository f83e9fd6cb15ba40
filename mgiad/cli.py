"""The ``mgiad`` command: ``train`` (the default), ``eval`` and ``plot``.

Every flag is checked before any data is read or any model trained, and a bad one is refused in
one line (``mgiad train: error: ...``, exit status 2): numbers by the models' argument rules
(``mgiad.models.rules``), device strings, the output folder (created and probed for writing), and
the model configuration, built on the meta device with the dataset's nominal shape so that the
models' own rules give their own messages. Errors found later (a damaged dataset or checkpoint, a
failed checkpoint write) are one line too, with exit status 1.

Every training run keeps its metrics: without --out it gets a new folder ``runs/<date>-<time>``, and the last
line ``mgiad train`` prints names its metrics.jsonl. ``--epochs`` is the run's total: ``--resume`` trains up to
it, re-planning the cosine schedule when it differs from the checkpoint's (``mgiad.train.replan_schedule``),
and says in one line when the run has trained that many epochs already.
"""
from __future__ import annotations

import argparse
import datetime
import errno
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
RUNS_DIR = "runs"  # where runs without --out go, one new folder each
THREADS_HELP = ("CPU threads of torch's intra-op pool (default: OMP_NUM_THREADS when set, else half the CPUs this "
                "process may use, at least 1). Threads that outnumber the free cores wait on one another: one "
                "digits epoch on a 2-core machine took 3.6 s with 1 thread and 2.2 s with 2 while the other core "
                "was free, but 7-15 s with 1 and 30-94 s with 2 beside other jobs")


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
    p.add_argument("--out", default=None, help="run folder: metrics.jsonl, checkpoint.pt, best.pt, curves.png "
                   f"(default: a new folder {RUNS_DIR}/<date>-<time> here); the last line printed names it")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT from OUT/checkpoint.pt up to "
                   "--epochs in total; a run that has trained them all says so and trains nothing")
    p.add_argument("--epochs", type=_flag(check_int, "epochs"), default=None,
                   help="the run's total number of epochs (default: 20 on digits, 400 otherwise, the paper's; "
                   "with --resume the run's own total). The cosine learning rate anneals to zero at this total; "
                   "resuming with another total re-plans it from the epoch reached, each later epoch taking "
                   "the rate a run of the new total has there")
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
    p.add_argument("--threads", type=_flag(check_int, "threads"), default=None, help=THREADS_HELP)
    _add_model_flags(p)
    p.add_argument("--max-steps-per-epoch", type=_flag(check_int, "max_steps_per_epoch"), default=None,
                   help=argparse.SUPPRESS)  # tests
    return p


def _file_system(path: str) -> str | None:
    """The type of the file system holding ``path`` (Linux: /proc/self/mounts); None where it is not known."""
    try:
        with open("/proc/self/mounts") as fh:
            mounts = [fields[1:3] for fields in (line.split() for line in fh) if len(fields) > 2]
    except OSError:
        return None
    real = os.path.realpath(path)
    holding = [(point, kind) for point, kind in mounts if real == point or real.startswith(point.rstrip("/") + "/")]
    return max(holding, key=lambda mount: len(mount[0]))[1] if holding else None


def creation_failure(path: str, exc: OSError) -> str:
    """Why ``os.makedirs(path)`` raised ``exc``, told of the deepest part of ``path`` that exists: a file or broken
    link in the way, a read-only file system, permissions, or a file system that takes no new folders (procfs
    answers "No such file or directory" for a folder whose parent exists)."""
    existing = os.path.abspath(path)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing} is {'a broken link' if os.path.islink(existing) else 'a file'}, not a folder"
    if exc.errno == errno.EROFS:
        return f"{existing} is on a read-only file system"
    if exc.errno == errno.EACCES:
        return f"{existing} does not let this user create folders (permission denied)"
    if exc.errno in (errno.EPERM, errno.ENOENT):
        kind = _file_system(existing)
        return f"{existing} takes no new folders" + (f" (a {kind} file system)" if kind else f" ({exc.strerror})")
    return exc.strerror or str(exc)


def check_out_dir(path: str) -> bool:
    """The run folder exists and takes a new file; returns whether it was created here, raises ValueError
    saying why it cannot be used."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--out {path} is a file, not a folder")
    created = not os.path.exists(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {path} cannot be created: {creation_failure(path, exc)}") from None
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ValueError(f"--out {path} is not writable ({exc.strerror or exc})") from None
    return created


def new_run_dir(root: str = RUNS_DIR) -> str:
    """Create and return a new folder ``root/<date>-<time>`` (``-2``, ``-3``, ... after the time when a run
    started in the same second has it); raises ValueError saying why it cannot be created."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    for n in range(1, 1000):
        path = os.path.join(root, stamp if n == 1 else f"{stamp}-{n}")
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise ValueError(f"the default run folder {path} cannot be created: {creation_failure(path, exc)} "
                             "(pass --out)") from None
    raise ValueError(f"{root} holds 999 runs started at {stamp}: pass --out")


def default_threads() -> int:
    """OMP_NUM_THREADS when it is a positive int, else half the CPUs this process may use, at least 1."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // 2)


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


def check_train_args(p: argparse.ArgumentParser, args) -> bool:
    """What the flags' types cannot check alone, before anything is read or trained (p.error exits); without
    --out, ``args.out`` becomes a new run folder. Returns whether the run folder was created here."""
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
    try:
        if args.out is None and _main_process():  # the other processes of a torchrun run write nothing
            args.out = new_run_dir()
            return True
        return check_out_dir(args.out) if args.out else False
    except ValueError as exc:
        p.error(str(exc))


def _main_process() -> bool:
    """Rank 0 of a torchrun run, or a run of one process: the one that writes the run folder and reports."""
    return int(os.environ.get("RANK", "0")) == 0


def _train_keeping_threads(args, threads: int) -> dict:
    """``mgiad.train.train`` on ``threads`` CPU threads, the caller's thread count restored after it."""
    from .train import train

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return train(args)
    finally:
        torch.set_num_threads(before)


def train_main(argv) -> None:
    """Check the flags, train, and (the main process) print a last line naming the run's metrics.jsonl. A resume
    with nothing to train says so (exit 0 for a finished run, 2 for an --epochs below the epochs trained); a run
    folder created here is removed again when training fails before writing to it."""
    from .train import NothingToTrain

    p = build_parser()
    args = p.parse_args(argv)
    created = check_train_args(p, args)
    metrics = os.path.abspath(os.path.join(args.out, "metrics.jsonl")) if args.out else None
    try:
        result = _train_keeping_threads(args, args.threads or default_threads())
    except NothingToTrain as exc:
        if not exc.finished:
            p.error(str(exc))
        if _main_process():
            print(f"mgiad train: {exc}; metrics in {metrics}")
        return
    except BaseException:
        if created and not os.listdir(args.out):
            os.rmdir(args.out)
        raise
    if _main_process():
        acc = result["history"][-1]["test_acc"]
        print(f"final test accuracy {acc:.4f} (best {result['best_acc']:.4f}); metrics in {metrics}")


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
