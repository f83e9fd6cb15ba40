"""Benchmarks are timed only on a GPU at the model shapes; elsewhere they smoke-run tiny shapes
(``harness.py`` holds what the benchmark modules share)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
