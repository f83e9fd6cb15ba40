"""Benchmarks of the kernels against cuDNN (on a CPU: PyTorch's CPU convolutions) and torch.compile, with the
bandwidth roofline.

    python -m tools.kernel_bench [--quick] [--ops grouped_conv3x3,...] [--dtypes float32,bfloat16] [--out-dir DIR]

Measures the device's copy bandwidth first, then every case and provider; writes
``benchmarks/results/<device>-<date>.json``, a markdown table beside it and PNG plots. On a GPU
times are CUDA-event medians (``triton.testing.do_bench``) over inputs rotated through more
memory than L2 holds; on a CPU (``--quick`` shapes only) wall-clock medians, and the Triton
providers are skipped: the interpreter measures nothing worth reporting. Whole-model training
steps are the application's: ``python -m tools.model_bench``.

Modules, one concern each: ``cases`` (the grid of ops, shapes, dtypes, providers), ``cost``
(minimum bytes and FLOPs), ``timing`` (timers, copy bandwidth, input rotation, ``measure``),
``providers`` (what is timed per op and provider), ``report`` (results, speedups, JSON, markdown,
plots) and ``cli`` (flags and the run loop, reusable by other suites).
"""
from .cases import (CONV_PROVIDERS, CPU_NAMES, GROUP_SIZES, MODEL_LAYER_PROVIDERS, MODEL_LAYERS, MODEL_SHAPES, OPS,
                    QUICK_SHAPES, Case, cases, providers_for, skip_reason)
from .cli import Suite, kernel_suite, main, run_suite
from .cost import SMOOTHING_STEP_MIN_PASSES, conv_cost, smoothing_step_cost
from .providers import build
from .report import Result, add_speedups, device_name, write_results
from .timing import L2_ROTATION_BYTES, Rotation, copy_bandwidth_gbs, measure, timer

__all__ = ["CONV_PROVIDERS", "CPU_NAMES", "GROUP_SIZES", "L2_ROTATION_BYTES", "MODEL_LAYERS",
           "MODEL_LAYER_PROVIDERS", "MODEL_SHAPES", "OPS", "QUICK_SHAPES",
           "SMOOTHING_STEP_MIN_PASSES", "Case", "Result", "Rotation", "Suite", "add_speedups", "build", "cases",
           "conv_cost", "copy_bandwidth_gbs", "device_name", "kernel_suite", "main", "measure", "providers_for",
           "run_suite", "skip_reason", "smoothing_step_cost", "timer", "write_results"]
