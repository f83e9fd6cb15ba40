"""Compile every kernel variant the launchers use for a CUDA target, with no GPU present.

    python -m tools.compile_check [--arch 90] [--dtypes fp32,fp16,bf16]
    python -m tools.compile_check --report [--report-quick] [--shapes C,H,G;...] [--sweep base|all|none]

The Triton interpreter runs the kernels' arithmetic on CPU but not Triton's compiler, which
rejects constructs the interpreter accepts (chained boolean operators, non-constexpr globals,
dot tiles under 16 for 16-bit inputs, dtype mismatches). This compiles each (kernel, fusion
flags, dtype) the launchers can launch down to a cubin for ``sm_<arch>`` and exits non-zero on
the first failure. Must run without TRITON_INTERPRET=1.

``--report`` writes the codegen report ``benchmarks/results/codegen-sm90.{json,md}`` instead (see
``tools.codegen_report``): every launch of the launchers at the benchmark shapes compiled for
sm_90, with registers, spills, occupancy, the main loop's SASS and a fixed cost model.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

POINTER_FP32 = {"bn_mean_ptr", "bn_var_ptr", "bn_gamma_ptr", "bn_beta_ptr", "stats_ptr", "reduced_ptr",
                "partial_w_ptr", "partial_b_ptr", "partial_ptr", "sums_ptr", "running_mean_ptr", "running_var_ptr"}
POINTER_I64 = {"batches_ptr", "batches1_ptr", "batches2_ptr"}
POINTER_I32 = {"counter_ptr"}
FLOAT_ARGS = {"alpha", "bn_eps", "momentum", "unbias", "inv_count"}
TRITON_DTYPE = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}


def _gather_variants():
    """(description, constexprs) of every conv2d_gather_kernel launch the launchers make; the fusion
    modes by the names the launchers use (conv_launch._fusion_modes), not as raw integers."""
    from mgiad_kernels.conv.launch import _fusion_modes

    other, stats, running = _fusion_modes()
    conv3x3 = dict(KH=3, KW=3, STRIDE_H=1, STRIDE_W=1, PAD_H=1, PAD_W=1, DIL_H=1, DIL_W=1)
    pool = dict(conv3x3, STRIDE_H=2, STRIDE_W=2)
    conv1x1 = dict(KH=1, KW=1, STRIDE_H=1, STRIDE_W=1, PAD_H=0, PAD_W=0, DIL_H=1, DIL_W=1)
    plain = dict(HAS_BIAS=False, PROLOGUE_BN_RELU=False, OTHER_MODE=other["none"], EPILOGUE_BN_RELU=False,
                 STATS=stats["none"], RUNNING_UPDATE=running["none"], RED_ALIGN=8, RED_RANGE_ALIGN=8, DST_ALIGN=8,
                 W_ALIGN=8, FULL_CHANNEL_BLOCKS=True, SINGLE_RED_BLOCK=True, WIDE_PIXEL_INDEX=False, DST_PIXEL_RUN=1,
                 OTHER_PIXEL_RUN=1, PIXEL_VECTOR=1, VECTOR_D_MIN=0, VECTOR_D=1)

    def variant(geometry, transposed, **flags):
        needs_bn = (flags.get("EPILOGUE_BN_RELU", False) or flags.get("STATS") == stats["bn_grad"]
                    or flags.get("OTHER_MODE") in (other["add_after_bn"], other["relu_grad"]))
        return {**geometry, **plain, "TRANSPOSED": transposed, "WEIGHT_OUT_IS_DST": not transposed,
                "WRITE_ADJOINT_WEIGHT": False, "EPILOGUE_NEEDS_BN": needs_bn, **flags}

    return [
        ("conv3x3 forward + bias", variant(conv3x3, False, HAS_BIAS=True)),
        ("conv3x3 forward, channel tiles not whole (masked)", variant(conv3x3, False, FULL_CHANNEL_BLOCKS=False)),
        ("conv3x3 forward, reduced channels in several blocks (large groups)",
         variant(conv3x3, False, SINGLE_RED_BLOCK=False)),
        ("conv3x3 forward, NCHW output stored along the pixels", variant(conv3x3, False, DST_PIXEL_RUN=16)),
        ("conv3x3 forward of an NCHW src in pixel vectors, NCHW output",
         variant(conv3x3, False, DST_PIXEL_RUN=16, PIXEL_VECTOR=4, VECTOR_D_MIN=-1, VECTOR_D=3)),
        ("conv3x3 forward of an NCHW src in pixel vectors + bias + residual, several reduced blocks",
         variant(conv3x3, False, DST_PIXEL_RUN=16, PIXEL_VECTOR=4, VECTOR_D_MIN=-1, VECTOR_D=3, HAS_BIAS=True,
                 OTHER_MODE=other["add"], OTHER_PIXEL_RUN=16, SINGLE_RED_BLOCK=False, FULL_CHANNEL_BLOCKS=False)),
        ("conv3x3 grad input", variant(conv3x3, True)),
        ("conv3x3 forward writing the adjoint weight", variant(conv3x3, False, WRITE_ADJOINT_WEIGHT=True)),
        ("conv3x3 grad input through the adjoint weight", variant(conv3x3, True, WEIGHT_OUT_IS_DST=True)),
        ("stride-2 pool grad input", variant(pool, True)),
        ("1x1 + residual (FAS)", variant(conv1x1, False, OTHER_MODE=other["add"])),
        ("smoothing A reading an NCHW f", variant(conv3x3, False, OTHER_MODE=other["add"], STATS=stats["moments"],
                                                  OTHER_PIXEL_RUN=16)),
        ("smoothing A: f - A u, bn1 moments, running update",
         variant(conv3x3, False, OTHER_MODE=other["add"], STATS=stats["moments"], RUNNING_UPDATE=running["momentum"])),
        ("smoothing B: bn1/relu prologue, bn2 moments, cumulative running update, writing the adjoint weight",
         variant(conv3x3, False, PROLOGUE_BN_RELU=True, STATS=stats["moments"], RUNNING_UPDATE=running["cumulative"],
                 WRITE_ADJOINT_WEIGHT=True)),
        ("eval A: relu(bn1(f - A u))", variant(conv3x3, False, OTHER_MODE=other["add"], EPILOGUE_BN_RELU=True)),
        ("eval B: u + relu(bn2(B t))", variant(conv3x3, False, OTHER_MODE=other["add_after_bn"])),
        ("backward B^T: relu mask, bn1 grad sums",
         variant(conv3x3, True, OTHER_MODE=other["relu_grad"], STATS=stats["bn_grad"])),
        ("backward B^T through the adjoint weight: relu mask, bn1 grad sums",
         variant(conv3x3, True, OTHER_MODE=other["relu_grad"], STATS=stats["bn_grad"], WEIGHT_OUT_IS_DST=True)),
        ("backward A^T: grad_out - A^T g", variant(conv3x3, True, OTHER_MODE=other["add"])),
    ]


def _grad_weight_variants():
    conv3x3 = dict(KH=3, KW=3, KW_BLOCK=4, STRIDE_H=1, STRIDE_W=1, PAD_H=1, PAD_W=1, DIL_H=1, DIL_W=1, OUT_ALIGN=8,
                   IN_ALIGN=8, FULL_CHANNEL_BLOCKS=False, FULL_BOXES=False, WIDE_PIXEL_INDEX=False, TILE_N=4,
                   TILE_H=4, TILE_W=4)
    return [("grad weight + bias", {**conv3x3, "HAS_BIAS": True, "X_BN_RELU": False, "CARRIES": 0}),
            ("grad weight, whole boxes and channel blocks",
             {**conv3x3, "HAS_BIAS": False, "X_BN_RELU": False, "CARRIES": 0, "FULL_CHANNEL_BLOCKS": True,
              "FULL_BOXES": True}),
            ("grad weight of B, relu(bn1(r)) recomputed",
             {**conv3x3, "HAS_BIAS": False, "X_BN_RELU": True, "CARRIES": 0}),
            ("grad weight + bias of a run's step, two carried gradients added",
             {**conv3x3, "HAS_BIAS": True, "X_BN_RELU": False, "CARRIES": 2}),
            ("grad weight over 2^31 or more pixels (64-bit pixel indices)",
             {**conv3x3, "HAS_BIAS": False, "X_BN_RELU": False, "CARRIES": 0, "WIDE_PIXEL_INDEX": True})]


def _signature(jit_fn, constexprs: dict, dtype: str) -> dict:
    signature = {}
    for param in jit_fn.params:
        name = param.name
        if name in constexprs or param.is_constexpr:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = ("*fp32" if name in POINTER_FP32 else "*i64" if name in POINTER_I64
                               else "*i32" if name in POINTER_I32 else f"*{dtype}")
        else:
            signature[name] = "fp32" if name in FLOAT_ARGS else "i32"
    return signature


def _compile(kernel, constexprs: dict, dtype: str, target, num_warps: int = 4, num_stages: int = 3,
             maxnreg: int | None = None):
    import triton
    from triton.compiler import ASTSource
    from triton.runtime.autotuner import Autotuner

    jit_fn = kernel.fn if isinstance(kernel, Autotuner) else kernel
    src = ASTSource(fn=jit_fn, signature=_signature(jit_fn, constexprs, dtype), constexprs=constexprs)
    options = {"num_warps": num_warps, "num_stages": num_stages}
    if maxnreg:
        options["maxnreg"] = maxnreg
    return triton.compile(src, target=target, options=options)


def jobs(dtypes, quick: bool = False):
    """Every (label, kernel, constexprs, dtype, num_warps, num_stages, maxnreg) to compile.

    Gather variants compile with the first and the last config of the autotune list, or the last only if ``quick``.
    """
    from mgiad_kernels.conv import kernels as conv, tiles
    from mgiad_kernels.smoothing import kernels as batchnorm
    from mgiad_kernels.smoothing import launch as smoothing_launch

    out = []
    gather_configs = tiles.gather_configs()
    grad_configs = tiles.grad_weight_configs()
    for dtype in dtypes:
        precision = "tf32" if dtype == "fp32" else "ieee"
        for label, flags in _gather_variants():
            for cfg in (gather_configs[-1],) if quick else (gather_configs[0], gather_configs[-1]):
                consts = {**flags, "INPUT_PRECISION": precision, **cfg.kwargs}
                out.append((f"gather: {label} {cfg.kwargs}", conv.conv2d_gather_kernel, consts, dtype,
                            cfg.num_warps, cfg.num_stages, cfg.maxnreg))
        for label, flags in _grad_weight_variants():
            cfg = grad_configs[0]
            out.append((f"{label} {cfg.kwargs}", conv.conv2d_grad_weight_kernel,
                        {**flags, "INPUT_PRECISION": precision, **cfg.kwargs}, dtype, cfg.num_warps, cfg.num_stages,
                        cfg.maxnreg))
        # channels_last activations, as mgiad trains
        block = dict(BLOCK_P=smoothing_launch._ELEMENTWISE_BLOCK_P, BLOCK_C=smoothing_launch._ELEMENTWISE_BLOCK_C,
                     PIXEL_DENSE=True)
        sums_block = dict(block, BLOCK_P=smoothing_launch._GRAD_SUMS_BLOCK_P)
        sums_warps = smoothing_launch._GRAD_SUMS_WARPS
        out += [
            ("bn_relu_residual, batch counted", batchnorm.bn_relu_residual_kernel, dict(block, COUNT_BATCH=True),
             dtype, 4, 3, None),
            ("bn_relu_grad_sums", batchnorm.bn_relu_grad_sums_kernel, sums_block, dtype, sums_warps, 3, None),
            ("bn_relu_residual, pixels by (n, h, w)", batchnorm.bn_relu_residual_kernel,
             dict(block, COUNT_BATCH=False, PIXEL_DENSE=False), dtype, 4, 3, None),
            ("bn_relu_grad_sums, pixels by (n, h, w)", batchnorm.bn_relu_grad_sums_kernel,
             dict(sums_block, PIXEL_DENSE=False), dtype, sums_warps, 3, None),
            ("bn_backward relu, batch stats, pixels by (n, h, w)", batchnorm.bn_backward_kernel,
             dict(block, RELU_MASK=True, BATCH_STATS=True, CARRIES=0, PIXEL_DENSE=False), dtype, 4, 3, None),
            ("bn_backward relu, batch stats", batchnorm.bn_backward_kernel,
             dict(block, RELU_MASK=True, BATCH_STATS=True, CARRIES=0), dtype, 4, 3, None),
            ("bn_backward fixed stats", batchnorm.bn_backward_kernel,
             dict(block, RELU_MASK=False, BATCH_STATS=False, CARRIES=0), dtype, 4, 3, None),
            ("bn_backward batch stats, a run's two carried f gradients added", batchnorm.bn_backward_kernel,
             dict(block, RELU_MASK=False, BATCH_STATS=True, CARRIES=2), dtype, 4, 3, None),
        ]
        out += [(f"banded weight{', adjoint weight' if adjoint else ''}", conv.banded_weight_kernel,
                 dict(PAD_W=1, V=tiles.PIXEL_VECTOR, D_MIN=-1, D=3, WRITE_ADJOINT_WEIGHT=adjoint, BLOCK=1024), dtype,
                 4, 3, None) for adjoint in (False, True)]
        for channels, pixels in ((128, 256), (8, 9)):  # an activation, a 3x3 weight
            block_c, block_hw, warps = tiles.relayout_tile(channels, pixels)
            out += [(f"relayout {channels}x{pixels}, pixels dense {dense}", conv.relayout_kernel,
                     dict(BLOCK_C=block_c, BLOCK_HW=block_hw, SRC_PIXELS_DENSE=dense[0], DST_PIXELS_DENSE=dense[1]),
                     dtype, warps, 3, None) for dense in ((True, True), (False, True), (True, False))]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.compile_check", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (90: H100/H200)")
    parser.add_argument("--dtypes", default=None,
                        help="comma-separated subset of fp32,fp16,bf16 (default: all three; fp32,bf16 for --report)")
    parser.add_argument("--quick", action="store_true", help="one tile config per gather variant (the widest)")
    parser.add_argument("--report", action="store_true",
                        help="write the codegen report benchmarks/results/codegen-sm90.{json,md}")
    parser.add_argument("--report-quick", action="store_true",
                        help="--report for one shape (C=256 H=8 g_s=8), launched configs only (--sweep none)")
    parser.add_argument("--shapes", default=None,
                        help="report shapes as C,H,G;C,H,G (default: the five report shapes)")
    parser.add_argument("--sweep", choices=("base", "all", "none"), default=None,
                        help="report: also compile every autotune-list config for the plain conv, grad weight and "
                             "fused-prologue variants (base, the default), every launched variant (all), or none")
    parser.add_argument("--layouts", default=None,
                        help="report: activation/weight layouts, comma-separated (default: all of "
                             "channels_last/channels_last,channels_last/OIHW,NCHW/OIHW,NCHW/channels_last; "
                             "--report-quick: the first)")
    parser.add_argument("--no-model-layers", action="store_true",
                        help="report: leave out the model layers (ResNeXt-50, RegNetX-400MF, MobileNetV2, ConvNeXt-T "
                             "grouped convolutions; --report-quick leaves them out)")
    parser.add_argument("--out", default=None, help="report directory (default benchmarks/results)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter replaces the compiler this checks")
    report = args.report or args.report_quick
    dtypes = (args.dtypes or ("fp32,bf16" if report else "fp32,fp16,bf16")).split(",")
    unknown = [d for d in dtypes if d not in TRITON_DTYPE]
    if unknown:
        parser.error(f"--dtypes must be a subset of {sorted(TRITON_DTYPE)}, got {unknown}")
    if report:
        return _report(parser, args, dtypes, argv)
    from triton.backends.compiler import GPUTarget

    target = GPUTarget("cuda", args.arch, 32)
    start = time.perf_counter()
    todo = jobs(dtypes, args.quick)
    for i, (label, kernel, consts, dtype, warps, stages, maxnreg) in enumerate(todo, 1):
        try:
            compiled = _compile(kernel, consts, dtype, target, warps, stages, maxnreg)
        except Exception as exc:  # report which variant failed, then fail
            print(f"FAILED [{dtype}] {label}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        print(f"[{i}/{len(todo)}] ok [{dtype}] {label}: {len(compiled.asm['cubin'])} bytes of sm_{args.arch} cubin")
    print(f"all {len(todo)} kernel variants compiled for sm_{args.arch} in {time.perf_counter() - start:.0f} s")
    return 0


def _report(parser, args, dtypes, argv) -> int:
    from tools import codegen_report

    if args.arch != 90:
        parser.error("--report models an H100: --arch 90 only")
    if args.shapes:
        try:
            shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";") if s]
            assert shapes and all(len(s) == 3 for s in shapes)
        except (ValueError, AssertionError):
            parser.error(f"--shapes wants C,H,G;C,H,G..., got {args.shapes!r}")
    else:
        shapes = codegen_report.QUICK_SHAPES if args.report_quick else codegen_report.SHAPES
    sweep = args.sweep or ("none" if args.report_quick else "base")
    if args.layouts:
        layouts = tuple(args.layouts.split(","))
        unknown = [layout for layout in layouts if layout not in codegen_report.LAYOUTS]
        if unknown:
            parser.error(f"--layouts must be a subset of {','.join(codegen_report.LAYOUTS)}, got {unknown}")
    else:
        layouts = codegen_report.QUICK_LAYOUTS if args.report_quick else codegen_report.LAYOUTS
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out_dir = args.out or os.path.join(root, "benchmarks", "results")
    command = "python -m tools.compile_check " + " ".join(sys.argv[1:] if argv is None else argv)
    violations = codegen_report.run_report(shapes, dtypes, sweep, out_dir, command,
                                          log=lambda msg: print(msg, flush=True), layouts=layouts,
                                          model_layers=not (args.no_model_layers or args.report_quick or args.shapes))
    for v in violations:
        print(f"VIOLATION {v}")
    return 0  # the report states the violations; tests/test_codegen_report.py checks them


if __name__ == "__main__":
    sys.exit(main())
