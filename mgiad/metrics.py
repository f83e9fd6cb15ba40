"""metrics.jsonl: one strict-JSON object per epoch (a non-finite number is written as null)."""
from __future__ import annotations

import json
import math
import os


def strict(record: dict) -> dict:
    """The record with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def to_json(record: dict) -> str:
    return json.dumps(strict(record), allow_nan=False)


def append_metrics(path: str, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(to_json(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_metrics(path: str) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def keep_epochs_through(path: str, last_epoch: int) -> None:
    """Drop the rows of epochs after ``last_epoch`` (the resumed checkpoint's), rewriting the file atomically.

    An epoch appends its row before it writes its checkpoint, so a run killed between the two left a row
    the resumed run writes again; a kill in the middle of an append leaves a torn last line, dropped too.
    """
    with open(path) as fh:
        lines = [line for line in fh.read().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise ValueError(f"{path}: line {i + 1} is not JSON: {line[:80]!r}") from None
    kept = [row for row in rows if row["epoch"] <= last_epoch]
    if len(kept) == len(lines):
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.writelines(to_json(row) + "\n" for row in kept)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
