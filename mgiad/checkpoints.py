"""Run checkpoints: atomic writes that leave no temporary file behind, checked reads, RNG state."""
from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "epoch", "rng", "args", "best_acc")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or written, or does not hold what training needs."""


def save_atomic(obj, path: str) -> None:
    """Write to a temporary file, fsync, rename: a crash leaves the old file or the new, never half of one.
    A failed write (a full disk, a vanished folder) removes the temporary file and raises CheckpointError."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(exc, Exception):  # torch.save reports a full disk as a RuntimeError
            raise CheckpointError(f"cannot write {path} ({type(exc).__name__}: {exc})") from exc
        raise
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch.load raises many kinds on a damaged file or one of another format
        reason = " ".join(str(exc).split())  # torch's messages span lines: the error stays one line
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {reason})") from exc
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}: not a checkpoint written by mgiad train")
    return ckpt


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
