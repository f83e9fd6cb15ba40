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
