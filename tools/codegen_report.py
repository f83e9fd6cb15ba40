"""Codegen report: what ptxas made of every kernel launch at the benchmark shapes, and a fixed cost model.

    python -m tools.compile_check --report [--report-quick] [--shapes 128,16,8] [--dtypes fp32]

Drives the real launch path (``launchers``) under the stand-in CUDA driver (``standin_driver``) with
CPU tensors of the real shapes (allocated, never computed), so argument specialization (divisibility by
16) and grids are those of an H100 (``parallel_programs_wanted`` is patched to 4 x 132). For each launch
(variant x config x dtype x shape) it reads the cubin: registers, local memory (spills), shared memory,
occupancy, and from ``cuobjdump -sass`` the main loop (the innermost backward-branch loop holding the
MMA instructions), its MMA instruction, its global loads (width, async or not) and its length. For the
gather and grad-weight kernels it also compiles every config of the autotune lists for the same
arguments (rows with ``launched_default`` False).

The cost model is fixed, so figures stay comparable across kernel versions; on a GPU the
measured figures rule and this model is checked against them:

    time = max(minimum bytes / 3.0 TB/s,
               SASS warp-instructions issued / (132 SMs x 4 warp-instructions per clock x 1.755 GHz),
               MMA FLOPs issued / dense peak (TF32 495, bf16 990 TFLOP/s))

Issued instructions are counted from the static SASS: every instruction is issued once per warp of
every CTA, except that an instruction inside a loop is issued (trip count) times per entry: the main
loop KH*KW*ceil(reduced channels of the tile's groups / BLOCK_RED) times per CTA (gather), or
the split's pixel boxes per input-channel block, itself ceil(input channels of the tile's groups /
BLOCK_IN) times (grad weight); loops holding no MMA in the MMA kernels (the cold NaN/Inf fallback, and
the split-reduction tail that only the last program of each tile runs) count zero times; other kernels'
loops once. Code skipped by forward branches is still counted once (a small overcount). MMA FLOPs include
the zero blocks of block-diagonal tiles: 2*BLOCK_P*BLOCK_DST*BLOCK_RED (gather) or
2*BLOCK_OUT*KW_BLOCK*BLOCK_IN*BLOCK_P (grad weight) per step.
Minimum bytes: each tensor the op needs read once or written once (weights once, fp32 partials and
per-channel vectors not counted).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import re
import sys
import time
from typing import Callable

REPORT_DATE = "2026-11-23"
N_BATCH = 128
SHAPES = [(64, 32, 8), (128, 16, 8), (256, 8, 8), (128, 16, 4), (128, 16, 16)]  # (C, H=W, group size)
QUICK_SHAPES = [(256, 8, 8)]
DTYPES = ("fp32", "bf16")
# (activations, weights): how a user may hold a layer's tensors. The first is how `mgiad train` and every mgiad
# model hold them; the others are what a dropped-in GroupedConv2d or a converted model meets.
LAYOUTS = ("channels_last/channels_last", "channels_last/OIHW", "NCHW/OIHW", "NCHW/channels_last")
QUICK_LAYOUTS = ("channels_last/channels_last",)
# a converted torchvision model's layouts: as built, and after .to(memory_format=torch.channels_last)
MODEL_LAYER_LAYOUTS = ("NCHW/OIHW", "channels_last/channels_last")

# the fixed model: do not change, or the figures stop being comparable
BANDWIDTH = 3.0e12  # bytes/s: H100 SXM copy bandwidth
SMS, ISSUE_PER_CLOCK, CLOCK = 132, 4, 1.755e9  # SMs, warp-instructions per SM per clock, Hz
PEAK_FLOPS = {"fp32": 495e12, "bf16": 990e12}  # dense TF32 (fp32 inputs, tf32 dots) and bf16 MMA
# sm_90 resources, for occupancy
REGS_PER_SM, SHARED_PER_SM, SHARED_RESERVED_PER_CTA = 65536, 228 * 1024, 1024
MAX_WARPS_PER_SM, MAX_CTAS_PER_SM = 64, 32
SMOOTHING_FLOOR_PASSES = 18  # the smoothing step forward+backward's floor: 18 activation passes

MMA_KERNELS = ("conv2d_gather_kernel", "conv2d_grad_weight_kernel")
# what makes the tensors the MMA kernels load fast: a channels_last copy, the weight's band for NCHW pixel vectors
RELAYOUT_KERNELS = ("relayout_kernel", "banded_weight_kernel")
ROW_FIELDS = ("kind", "layout", "shape", "C", "H", "W", "group_size", "N", "dtype", "kernel", "variant", "ops",
              "launches", "config", "launched_default", "grid", "ctas", "num_warps", "num_stages", "regs",
              "spill_bytes",
              "stack_bytes", "spill_instructions", "shared_bytes", "ctas_per_sm", "warps_per_sm", "occupancy",
              "occupancy_limit", "mma", "loop_instructions", "loop_trips_per_cta", "loop_loads", "load_bits",
              "loads_async", "sass_instructions", "issued_warp_instructions", "mma_flops", "min_bytes",
              "t_bytes_us", "t_issue_us", "t_mma_us", "predicted_us", "bound", "copy_fraction")
AGGREGATE_FIELDS = ("kind", "layout", "shape", "C", "H", "W", "group_size", "N", "dtype", "op", "launches", "min_bytes",
                    "floor_bytes", "predicted_us", "copy_fraction", "predicted_us_model_best",
                    "copy_fraction_model_best")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---- SASS analysis -------------------------------------------------------------------------------------------

_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")


@dataclasses.dataclass
class Sass:
    """A kernel's SASS: instructions (address, opcode with modifiers, operand text) and loops."""
    instructions: list  # (addr, opcode, operands)
    loops: list  # (start, end): a backward branch at `end` to `start`

    @property
    def addresses(self):
        return [a for a, _, _ in self.instructions]

    def within(self, loop) -> list:
        return [ins for ins in self.instructions if loop[0] <= ins[0] <= loop[1]]


def parse_sass(text: str) -> Sass:
    """Instructions up to the final EXIT's self-branch (padding dropped) and the backward-branch loops."""
    instructions = []
    for line in text.splitlines():
        m = _SASS_LINE.search(line)
        if not m:
            continue
        addr, body = int(m.group(1), 16), m.group(2).strip()
        if body.startswith("@"):
            body = body.split(None, 1)[1] if " " in body else ""
        opcode, _, operands = body.partition(" ")
        instructions.append((addr, opcode, operands.strip()))
    # the trailing "BRA self" after the last EXIT and its NOP padding are never issued
    while instructions and instructions[-1][1] == "NOP":
        instructions.pop()
    if instructions and instructions[-1][1] == "BRA" and _branch_target(instructions[-1][2]) == instructions[-1][0]:
        instructions.pop()
    loops = []
    for addr, opcode, operands in instructions:
        if opcode.split(".")[0] in ("BRA", "JMP", "BRX"):
            target = _branch_target(operands)
            if target is not None and target < addr:
                loops.append((target, addr))
    return Sass(instructions, loops)


def _branch_target(operands: str):
    m = re.search(r"0x([0-9a-f]+)", operands)
    return int(m.group(1), 16) if m else None


def _is_mma(opcode: str) -> bool:
    return opcode.split(".")[0] in ("HGMMA", "HMMA", "IMMA", "DMMA", "QGMMA", "IGMMA", "BGMMA")


def _global_load(opcode: str):
    """(bits, async) of a global load (LDGSTS/LDG/TMA), or None for any other instruction."""
    parts = opcode.split(".")
    base = parts[0]
    if base in ("UTMALDG", "UBLKCP"):
        return (128, True)
    if base not in ("LDGSTS", "LDG"):
        return None
    mods = set(parts[1:])
    bits = 128 if "128" in mods else 64 if "64" in mods else 16 if mods & {"U16", "S16"} else \
        8 if mods & {"U8", "S8"} else 32
    return (bits, base == "LDGSTS")


def analyze_sass(text: str) -> dict:
    """Main loop (innermost backward-branch loop holding an MMA), its MMA, loads and length."""
    sass = parse_sass(text)
    mma_addrs = [a for a, op, _ in sass.instructions if _is_mma(op)]
    holding = [lp for lp in sass.loops if any(lp[0] <= a <= lp[1] for a in mma_addrs)]
    main = min(holding, key=lambda lp: lp[1] - lp[0]) if holding else None
    out = {"sass_instructions": len(sass.instructions), "main_loop": main, "sass": sass,
           "spill_instructions": sum(op.split(".")[0] in ("STL", "LDL") for _, op, _ in sass.instructions)}
    if main is None:
        out.update(mma=None, loop_instructions=0, loop_loads={}, load_bits=None, loads_async=None)
        return out
    body = sass.within(main)
    mmas = sorted({op for _, op, _ in body if _is_mma(op)})
    loads: dict = {}
    for _, op, _ in body:
        kind = _global_load(op)
        if kind is not None:
            loads[op] = loads.get(op, 0) + 1
    kinds = [_global_load(op) for op in loads]
    out.update(mma=",".join(mmas), loop_instructions=len(body), loop_loads=loads,
               load_bits=min(b for b, _ in kinds) if kinds else None,
               loads_async=all(a for _, a in kinds) if kinds else None)
    return out


def occupancy(regs: int, shared: int, warps: int) -> tuple[int, str]:
    """(CTAs per SM, the limiting resource) on sm_90: registers (256-register warp allocation units),
    shared memory (228 KB, 1 KB reserved per CTA), 64 warps, 32 CTAs."""
    regs_per_warp = _cdiv(max(regs, 1) * 32, 256) * 256
    limits = {"registers": REGS_PER_SM // (regs_per_warp * warps),
              "shared": SHARED_PER_SM // (shared + SHARED_RESERVED_PER_CTA),
              "warps": MAX_WARPS_PER_SM // warps, "ctas": MAX_CTAS_PER_SM}
    limit = min(limits, key=limits.get)
    return limits[limit], limit


# ---- trip counts, issued instructions, FLOPs, bytes ----------------------------------------------------------

def _gather_work(a: dict, cfg: dict, grid: tuple) -> list:
    """[(CTAs, main-loop trips per CTA, outer trips, MMA FLOPs per CTA)] per channel tile of the gather."""
    out = []
    bp, bd, br = cfg["BLOCK_P"], cfg["BLOCK_DST"], cfg["BLOCK_RED"]
    for pid_c in range(grid[1]):
        c0 = pid_c * bd
        red_start = (c0 // a["DST_PER_GROUP"]) * a["RED_PER_GROUP"]
        red_end = ((min(c0 + bd, a["C_DST"]) - 1) // a["DST_PER_GROUP"] + 1) * a["RED_PER_GROUP"]
        blocks = _cdiv(red_end - red_start, br)
        trips = a["KH"] * a["KW"] * blocks
        # with the BatchNorm prologue the taps are the main loop, inside a loop over the blocks
        out.append((grid[0], trips, blocks if a["PROLOGUE_BN_RELU"] else 1, trips * 2 * bp * bd * br))
    return out


def _grad_weight_work(a: dict, cfg: dict, grid: tuple) -> list:
    out = []
    bo, bi, bp = cfg["BLOCK_OUT"], cfg["BLOCK_IN"], a["TILE_N"] * a["TILE_H"] * a["TILE_W"]
    units = _cdiv(a["N"], a["TILE_N"]) * _cdiv(a["H_out"], a["TILE_H"]) * _cdiv(a["W_out"], a["TILE_W"])
    for pid_c in range(grid[1]):
        c0 = pid_c * bo
        in_start = (c0 // a["OUT_PER_GROUP"]) * a["IN_PER_GROUP"]
        in_end = ((min(c0 + bo, a["C_OUT"]) - 1) // a["OUT_PER_GROUP"] + 1) * a["IN_PER_GROUP"]
        outer = _cdiv(in_end - in_start, bi)
        for split in range(grid[2]):
            u_start = split * a["UNITS_PER_SPLIT"]
            inner = max(0, min(u_start + a["UNITS_PER_SPLIT"], units) - u_start)
            out.append((grid[0], outer * inner, outer, outer * inner * 2 * bo * a["KW_BLOCK"] * bi * bp))
    return out


def issued_instructions(analysis: dict, name: str, a: dict, cfg: dict, grid: tuple, warps: int):
    """(warp-instructions issued, MMA FLOPs issued, main-loop trips per CTA (mean)) of one launch."""
    sass, main = analysis["sass"], analysis["main_loop"]
    ctas = grid[0] * grid[1] * grid[2]
    if name == "conv2d_gather_kernel":
        work = _gather_work(a, cfg, grid)
    elif name == "conv2d_grad_weight_kernel":
        work = _grad_weight_work(a, cfg, grid)
    else:
        work = None
    if work is not None:
        enclosing = [lp for lp in sass.loops if main and lp != main and lp[0] <= main[0] and main[1] <= lp[1]]
        buckets: dict = {}  # (in the main loop, enclosing loops around it, other loops around it) -> count
        for addr, _, _ in sass.instructions:
            around = [lp for lp in sass.loops if lp[0] <= addr <= lp[1]]
            key = (main in around, sum(lp in enclosing for lp in around),
                   sum(lp != main and lp not in enclosing for lp in around))
            buckets[key] = buckets.get(key, 0) + 1
        issued = flops = trips_sum = 0
        for n_ctas, trips, outer, mma_flops in work:
            inner = trips // max(outer, 1)
            per_cta = sum(n * (inner if in_main else 1) * outer ** n_enc * (0 if n_other else 1)
                          for (in_main, n_enc, n_other), n in buckets.items())
            issued += n_ctas * per_cta * warps
            flops += n_ctas * mma_flops
            trips_sum += n_ctas * trips
        return issued, flops, trips_sum / max(ctas, 1)
    # elementwise kernels: straight-line code, and a merge loop only the last program of a tile runs
    return ctas * len(sass.instructions) * warps, 0, (1 if sass.loops else 0)


def _nbytes(t) -> int:
    return t.numel() * t.element_size()


def min_bytes(name: str, a: dict) -> int:
    """Bytes the op must move at least: its tensors each read or written once (see the module docstring)."""
    import torch

    if name == "conv2d_gather_kernel":
        total = _nbytes(a["src_ptr"]) + _nbytes(a["dst_ptr"]) + _nbytes(a["weight_ptr"])
        return total + (_nbytes(a["other_ptr"]) if a["OTHER_MODE"] else 0)
    if name == "conv2d_grad_weight_kernel":
        weight = a["C_OUT"] * a["IN_PER_GROUP"] * a["KH"] * a["KW"] * a["x_ptr"].element_size()
        return _nbytes(a["x_ptr"]) + _nbytes(a["grad_y_ptr"]) + weight
    tensors = [v for v in a.values() if isinstance(v, torch.Tensor)]
    if "P" in a and "C" in a:  # elementwise BatchNorm kernels: their activation-sized tensors
        tensors = [t for t in tensors if t.numel() == a["P"] * a["C"]]
    seen, total = set(), 0
    for t in tensors:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += _nbytes(t)
    return total


def predict(min_b: int, issued: int, flops: int, dtype: str) -> dict:
    t_bytes, t_issue = min_b / BANDWIDTH, issued / (SMS * ISSUE_PER_CLOCK * CLOCK)
    t_mma = flops / PEAK_FLOPS[dtype]
    t = max(t_bytes, t_issue, t_mma)
    bound = "bytes" if t == t_bytes else "issue" if t == t_issue else "mma"
    return {"t_bytes_us": t_bytes * 1e6, "t_issue_us": t_issue * 1e6, "t_mma_us": t_mma * 1e6,
            "predicted_us": t * 1e6, "bound": bound, "copy_fraction": t_bytes / t if t else 0.0}


# ---- driving the launchers -----------------------------------------------------------------------------------

_GATHER_VARIANTS = {  # (TRANSPOSED, PROLOGUE_BN_RELU, OTHER_MODE, EPILOGUE_BN_RELU, STATS) -> name
    (False, False, 0, False, 0): "forward",
    (True, False, 0, False, 0): "grad input",
    (False, False, 1, False, 1): "smoothing A: f - A u, bn1 moments",
    (False, True, 0, False, 1): "smoothing B: bn1/relu prologue, bn2 moments",
    (False, False, 0, False, 1): "smoothing B of t = relu(bn1(r)): bn2 moments",
    (True, False, 3, False, 2): "smoothing B^T: relu mask, bn1 grad sums",
    (True, False, 1, False, 0): "smoothing A^T: grad_out - A^T g",
    (False, False, 1, True, 0): "eval A: relu(bn1(f - A u))",
    (False, False, 2, False, 0): "eval B: u + relu(bn2(B t))",
}


_READS_ADJOINT = ", adjoint weight"  # grad input through the adjoint weight (conv_launch.adjoint_weight_wanted)
_WRITES_ADJOINT = ", writes the adjoint weight"  # the forward that writes it


def variant_name(name: str, k: dict) -> str:
    if name == "conv2d_gather_kernel":
        key = (bool(k["TRANSPOSED"]), bool(k["PROLOGUE_BN_RELU"]), int(k["OTHER_MODE"]),
               bool(k["EPILOGUE_BN_RELU"]), int(k["STATS"]))
        label = _GATHER_VARIANTS.get(key, "gather T=%d prologue=%d other=%d epilogue=%d stats=%d" % key)
        if k.get("TRANSPOSED") and k.get("WEIGHT_OUT_IS_DST"):
            label += _READS_ADJOINT
        if k.get("WRITE_ADJOINT_WEIGHT"):
            label += _WRITES_ADJOINT
        return label + (" + bias" if k.get("HAS_BIAS") else "")
    if name == "conv2d_grad_weight_kernel":
        return ("grad weight of B, relu(bn1(r)) recomputed" if k["X_BN_RELU"] else "grad weight") + \
            (" + bias" if k.get("HAS_BIAS") else "")
    flags = [f"{f}={int(k[f])}" for f in ("RELU_MASK", "BATCH_STATS", "CUMULATIVE", "HAS_RESIDUAL") if f in k]
    return name.replace("_kernel", "") + (" " + ",".join(flags) if flags else "")


_CONFIG_KEYS = ("BLOCK_P", "BLOCK_DST", "BLOCK_RED", "BLOCK_OUT", "BLOCK_IN", "BLOCK_C", "BLOCK_HW")


def config_label(k: dict, warps: int, stages: int, maxnreg: int | None = None) -> str:
    parts = [f"{key}={k[key]}" for key in _CONFIG_KEYS if key in k]
    return " ".join(parts + [f"warps={warps}", f"stages={stages}"] + ([f"maxnreg={maxnreg}"] if maxnreg else []))


@dataclasses.dataclass(eq=False)
class Call:
    """One JITFunction.run: the kernel it returned and its arguments by name."""
    name: str
    args: dict  # every argument by name, constexprs and the config's BLOCK_* included
    kwargs: dict  # keyword arguments as passed (the config's included)
    posargs: tuple
    grid: tuple
    kernel: object  # CompiledKernel
    bench: bool
    op: str = ""


def _jit_functions():
    from triton.runtime.jit import JITFunction

    from mgiad_kernels.conv import kernels as conv
    from mgiad_kernels.smoothing import kernels as batchnorm

    out = []
    for module in (conv, batchnorm):
        for value in vars(module).values():
            fn = value
            while not isinstance(fn, JITFunction) and hasattr(fn, "fn"):
                fn = fn.fn
            if isinstance(fn, JITFunction) and fn.fn.__name__.endswith("_kernel") and fn not in out:
                out.append(fn)
    return out


def _install_recorders(calls: list):
    """Record every kernel run (name, arguments, grid, compiled kernel); returns an uninstaller."""
    from mgiad_kernels.runtime import launch_sites
    from tools import standin_driver

    jits = _jit_functions()
    plans_were_enabled = launch_sites.set_enabled(False)  # every launch through JITFunction.run, recorded
    for jit in jits:
        original = jit.run

        def run(*args, grid, warmup, _jit=jit, _original=original, **kwargs):
            kernel = _original(*args, grid=grid, warmup=warmup, **kwargs)
            if not warmup:
                named = dict(zip(_jit.arg_names, args))
                named.update(kwargs)
                g = grid(named) if callable(grid) else grid
                g = tuple(g) + (1,) * (3 - len(tuple(g)))
                rec = standin_driver._RECORDERS[-1] if standin_driver._RECORDERS else None
                calls.append(Call(_jit.fn.__name__, named, dict(kwargs), args, g, kernel,
                                  bool(rec and rec.in_bench)))
            return kernel

        jit.run = run

    def uninstall():
        for jit in jits:
            jit.__dict__.pop("run", None)
        launch_sites.set_enabled(plans_were_enabled)
    return uninstall


def _full_config_lists():
    """The autotune lists (MGIAD_KERNELS_AUTOTUNE=1), whatever the default policy launches."""
    from mgiad_kernels.conv import tiles

    saved = os.environ.get("MGIAD_KERNELS_AUTOTUNE")
    os.environ["MGIAD_KERNELS_AUTOTUNE"] = "1"
    try:
        return {"conv2d_gather_kernel": list(tiles.gather_configs()),
                "conv2d_grad_weight_kernel": list(tiles.grad_weight_configs())}
    finally:
        if saved is None:
            del os.environ["MGIAD_KERNELS_AUTOTUNE"]
        else:
            os.environ["MGIAD_KERNELS_AUTOTUNE"] = saved


def _memory_formats(layout: str):
    """(activations' memory format, weights' memory format) of a LAYOUTS entry."""
    import torch

    formats = {"channels_last": torch.channels_last, "NCHW": torch.contiguous_format,
               "OIHW": torch.contiguous_format}
    act, weight = layout.split("/")
    return formats[act], formats[weight]


def _conv_ops(c: int, h: int, gs: int, k: int, dtype, layout: str) -> tuple[list, dict]:
    """([(op name, thunk)] of a k x k convolution's forward, grad input and grad weight, as the autograd Function
    calls them (grad_y re-laid once for both gradients, the gradients in their tensors' layouts, outputs by
    F.conv2d's rule); its tensors by name), on empty CPU tensors."""
    import torch

    from mgiad_kernels.conv import launch as conv_launch
    from mgiad_kernels.conv.geometry import ConvGeometry

    act_format, weight_format = _memory_formats(layout)
    t = {"x": torch.empty((N_BATCH, c, h, h), dtype=dtype).to(memory_format=act_format)}
    t.update({name: torch.empty((c, gs, k, k), dtype=dtype).to(memory_format=weight_format) for name in ("w_a", "w_b")})
    out_format = conv_launch.conv_output_memory_format(t["x"], t["w_a"])
    t["gy"] = torch.empty((N_BATCH, c, h, h), dtype=dtype).to(memory_format=out_format)
    pad = k // 2
    geo = t["geo"] = ConvGeometry.of(t["x"].shape, t["w_a"].shape, (1, 1), (pad, pad, pad, pad), (1, 1), c // gs)
    x, w_a, gy, state = t["x"], t["w_a"], t["gy"], {}

    def backward_gy():
        if "gy" not in state:
            state["gy"] = conv_launch.with_contiguous_channels(gy)
        return state["gy"]

    # as in training: where wanted (fp32), the forward writes the adjoint weight that grad input reads
    adjoint = conv_launch.empty_adjoint_weight(w_a, geo) if conv_launch.adjoint_weight_wanted(dtype) else None
    return [
        ("conv forward", lambda: conv_launch.conv2d_forward(x, w_a, None, None, 1.0, geo, adjoint)),
        ("conv grad input", lambda: conv_launch.conv2d_grad_input(backward_gy(), x.shape, w_a, geo, act_format,
                                                                   adjoint_weight=adjoint)),
        ("conv grad weight", lambda: conv_launch.conv2d_grad_weight(backward_gy(), x, geo, False,
                                                                    memory_format=weight_format)),
    ], t


def _shape_ops(c: int, h: int, gs: int, dtype, layout: str = LAYOUTS[0]):
    """[(op name, thunk)] for one shape and layout: every launcher the report covers (a 3x3 convolution's and
    the smoothing step's), on empty CPU tensors."""
    import torch

    from mgiad_kernels.conv import launch as conv_launch
    from mgiad_kernels.smoothing import launch as smoothing_launch

    conv_ops, t = _conv_ops(c, h, gs, 3, dtype, layout)
    w_a, w_b, gy, geo = t["w_a"], t["w_b"], t["gy"], t["geo"]
    u, f = (torch.empty_like(t["x"]) for _ in range(2))  # x's layout
    vec = lambda: torch.ones(c, dtype=torch.float32)  # noqa: E731
    bn1_affine, bn2_affine, eps = (vec(), vec()), (vec(), vec()), (1e-5, 1e-5)
    state = {}

    def smoothing_forward():
        updates = tuple(conv_launch.RunningStatsUpdate(vec(), vec(), torch.zeros((), dtype=torch.int64), 0.1,
                                                       N_BATCH * h * h) for _ in range(2))
        state["fwd"] = smoothing_launch.smoothing_step_forward(u, f, w_a, None, geo, w_b, None, geo, bn1_affine,
                                                               bn2_affine, eps, None, updates, adjoint_weights=True)

    def smoothing_backward():
        _, r, s, stats, t_kept, adjoint_a, adjoint_b = state["fwd"]
        smoothing_launch.smoothing_step_backward(gy, u, w_a, geo, w_b, geo, r, s, t_kept, stats, bn1_affine,
                                                 bn2_affine, eps, True, (False, False), (True, True),
                                                 adjoint_weights=(adjoint_a, adjoint_b))

    def smoothing_eval():
        bn = conv_launch.BatchNormArgs(vec(), vec(), vec(), vec(), 1e-5)
        smoothing_launch.smoothing_step_inference(u, f, w_a, None, geo, w_b, None, geo, bn, bn)

    return conv_ops + [
        ("smoothing step forward (training)", smoothing_forward),
        ("smoothing step backward", smoothing_backward),
        ("smoothing step eval", smoothing_eval),
    ]


def model_layer_shapes() -> list:
    """(C, H, g_s, kernel size, 'model layer') of the grouped layers the kernel benchmark times
    (tools.kernel_bench.cases.MODEL_LAYERS: ResNeXt-50 32x4d, RegNetX-400MF, MobileNetV2, ConvNeXt-T)."""
    from tools.kernel_bench.cases import MODEL_LAYERS

    return [(c, h, gs, k, f"{model} {layer}") for model, layer, c, h, gs, k in MODEL_LAYERS]


def _ops(shape, dtype, layout: str) -> list:
    """The ops of a report shape (C, H, g_s) or a model layer (C, H, g_s, k, name): its convolution's only."""
    if len(shape) == 3:
        return _shape_ops(*shape, dtype, layout)
    return _conv_ops(*shape[:4], dtype, layout)[0]


def _shape_label(shape) -> str:
    c, h, gs = shape[:3]
    return f"C={c} H={h} g_s={gs}" + (f" {shape[3]}x{shape[3]} ({shape[4]})" if len(shape) > 3 else "")


def _row(call: Call, shape, dtype: str, layout: str, launched: bool, analysis_cache: dict) -> dict:
    from tools.standin_driver import cubin_resources

    c, h, gs = shape[:3]
    kernel = call.kernel
    cubin = kernel.asm["cubin"]
    if cubin not in analysis_cache:
        analysis_cache[cubin] = analyze_sass(_sass(cubin))
    analysis = analysis_cache[cubin]
    res = cubin_resources(cubin)
    warps, stages = kernel.metadata.num_warps, kernel.metadata.num_stages
    shared = kernel.metadata.shared + res.get("SHARED", 0)
    ctas_sm, limit = occupancy(res["REG"], shared, warps)
    issued, flops, trips = issued_instructions(analysis, call.name, call.args, call.args, call.grid, warps)
    mb = min_bytes(call.name, call.args)
    row = {
        "kind": "kernel", "layout": layout, "shape": _shape_label(shape), "C": c, "H": h, "W": h,
        "group_size": gs, "N": N_BATCH, "model_layer": len(shape) > 3,
        "dtype": dtype, "kernel": call.name, "variant": variant_name(call.name, call.args), "ops": [call.op],
        "launches": 1, "config": config_label(call.args, warps, stages, getattr(kernel.metadata, "maxnreg", None)),
        "launched_default": launched,
        "grid": list(call.grid), "ctas": call.grid[0] * call.grid[1] * call.grid[2], "num_warps": warps,
        "num_stages": stages, "regs": res["REG"], "spill_bytes": res.get("STACK", 0) + res.get("LOCAL", 0),
        "stack_bytes": res.get("STACK", 0), "spill_instructions": analysis["spill_instructions"],
        "shared_bytes": shared, "ctas_per_sm": ctas_sm, "warps_per_sm": ctas_sm * warps,
        "occupancy": ctas_sm * warps / MAX_WARPS_PER_SM, "occupancy_limit": limit, "mma": analysis["mma"],
        "loop_instructions": analysis["loop_instructions"], "loop_trips_per_cta": round(trips, 2),
        "loop_loads": analysis["loop_loads"], "load_bits": analysis["load_bits"],
        "loads_async": analysis["loads_async"], "sass_instructions": analysis["sass_instructions"],
        "issued_warp_instructions": issued, "mma_flops": flops, "min_bytes": mb,
    }
    row.update(predict(mb, issued, flops, dtype))
    return row


def _sass(cubin: bytes) -> str:
    from tools.standin_driver import _cuobjdump
    return _cuobjdump(cubin, "-sass")


def _merge(rows: list) -> list:
    """One row per (shape, dtype, kernel, variant, config, launched_default): repeated launches counted."""
    merged: dict = {}
    for row in rows:
        key = (row["layout"], row["shape"], row["dtype"], row["kernel"], row["variant"], row["config"],
               row["launched_default"])
        if key in merged:
            m = merged[key]
            m["launches"] += row["launches"]
            m["ops"] = sorted(set(m["ops"]) | set(row["ops"]))
        else:
            merged[key] = dict(row)
    return list(merged.values())


def collect(shapes=SHAPES, dtypes=DTYPES, sweep: str = "base", log: Callable = print,
            layouts=LAYOUTS, model_layers: bool = False) -> tuple[list, list]:
    """(kernel rows, aggregate rows) for every layout x dtype x shape. ``sweep``: which gather/grad-weight
    variants also compile every config of the autotune lists: 'all' launched variants, 'base' (forward, grad
    input, grad weight: the plain conv and smoothing B's fused prologue), or 'none'. ``model_layers``: also the
    convolutions of ``model_layer_shapes`` in MODEL_LAYER_LAYOUTS (launched configs only)."""
    from mgiad_kernels.conv import launch as conv_launch

    full_configs = _full_config_lists() if sweep != "none" else {}
    saved_programs = conv_launch.parallel_programs_wanted
    conv_launch.parallel_programs_wanted = lambda device: 4 * SMS  # an H100's grids
    calls: list = []
    uninstall = _install_recorders(calls)
    kernel_rows, per_launch = [], []
    analysis_cache: dict = {}
    try:
        work = [(layout, dtype, shape, sweep) for layout in layouts for dtype in dtypes for shape in shapes]
        if model_layers:
            work += [(layout, dtype, shape, "none") for layout in MODEL_LAYER_LAYOUTS if layout in layouts
                     for dtype in dtypes for shape in model_layer_shapes()]
        for layout, dtype, shape, shape_sweep in work:
            start_t = time.perf_counter()
            rows, launched, swept = _collect_one(shape, dtype, layout, shape_sweep, full_configs, calls,
                                                 analysis_cache)
            per_launch += list(zip(rows, launched))
            kernel_rows += _merge(rows)
            log(f"[{layout} {dtype} {_shape_label(shape)}] {len(launched)} launches, {swept} swept configs, "
                f"{time.perf_counter() - start_t:.0f} s")
            calls.clear()
    finally:
        uninstall()
        conv_launch.parallel_programs_wanted = saved_programs
    return kernel_rows, aggregates(per_launch, kernel_rows)


def _collect_one(shape, dtype: str, layout: str, sweep: str, full_configs: dict, calls: list,
                 analysis_cache: dict) -> tuple[list, list, int]:
    """(rows: one per launch, then the swept configs'; the launches; how many configs were swept) of one
    layout, dtype and shape, its ops run under the stand-in driver."""
    import torch

    from tools.standin_driver import standin_cuda_driver

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    with standin_cuda_driver(arch=90):
        launched = []
        for op, thunk in _ops(shape, torch_dtype, layout):
            first = len(calls)
            thunk()
            for call in calls[first:]:
                call.op = op
            launched += [cl for cl in calls[first:] if not cl.bench]
        rows = [_row(cl, shape, dtype, layout, True, analysis_cache) for cl in launched]
        swept, done = 0, set()
        for i, cl in enumerate(launched):
            variant = variant_name(cl.name, cl.args)
            if cl.name not in full_configs or variant in done or not _sweeps(sweep, variant):
                continue
            done.add(variant)
            for cfg in full_configs[cl.name]:
                call = _compile_config(cl, cfg)
                if call is None:
                    continue
                row = _row(call, shape, dtype, layout, False, analysis_cache)
                if row["config"] != rows[i]["config"]:
                    rows.append(row)
                    swept += 1
    return rows, launched, swept


def _sweeps(sweep: str, variant: str) -> bool:
    if sweep == "all":
        return True
    if sweep == "base":  # with or without the adjoint weight (the fp32 training path writes and reads it)
        variant = variant.replace(_READS_ADJOINT, "").replace(_WRITES_ADJOINT, "")
        return variant in ("forward", "grad input", "grad weight", "smoothing B: bn1/relu prologue, bn2 moments",
                           "smoothing B of t = relu(bn1(r)): bn2 moments", "grad weight of B, relu(bn1(r)) recomputed")
    return False


def _compile_config(call: Call, cfg) -> Call | None:
    """``call``'s arguments compiled (not launched) with another config of the autotune list."""
    from triton.runtime.jit import JITFunction

    from mgiad_kernels.conv import kernels as conv

    jit = getattr(conv, call.name)
    while not isinstance(jit, JITFunction):
        jit = jit.fn
    drop = set(cfg.all_kwargs()) | {"num_warps", "num_stages", "num_ctas", "maxnreg", "num_buffers_warp_spec",
                                    "num_consumer_groups", "reg_dec_producer", "reg_inc_consumer",
                                    "ir_override", "minRegAutoWS", "maxRegAutoWS", "pingpongAutoWS"}
    kwargs = {k: v for k, v in call.kwargs.items() if k not in drop and k not in ("debug", "instrumentation_mode")}
    kwargs.update(cfg.all_kwargs())
    try:
        kernel = JITFunction.run(jit, *call.posargs, grid=None, warmup=True, **kwargs)
    except Exception as exc:  # a config ptxas rejects is reported, not fatal
        print(f"  config {cfg} of {call.name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    named = dict(zip(jit.arg_names, call.posargs))
    named.update(kwargs)
    grid = _regrid(call, named)
    return Call(call.name, named, kwargs, call.posargs, grid, kernel, False, call.op)


def _regrid(call: Call, named: dict) -> tuple:
    """The grid the launcher's lambda would give this config (the gather's and grad weight's grids)."""
    a = named
    if call.name == "conv2d_gather_kernel":
        return (_cdiv(a["N"] * a["H_dst"] * a["W_dst"], a["BLOCK_P"]), _cdiv(a["C_DST"], a["BLOCK_DST"]), 1)
    return (call.grid[0], _cdiv(a["C_OUT"], a["BLOCK_OUT"]), call.grid[2])


# ---- aggregates ----------------------------------------------------------------------------------------------

_AGGREGATES = [
    ("conv forward", ("conv forward",), None),
    ("conv forward+backward", ("conv forward", "conv grad input", "conv grad weight"), None),
    ("smoothing step forward+backward over its 18-pass floor",
     ("smoothing step forward (training)", "smoothing step backward"), SMOOTHING_FLOOR_PASSES),
    ("smoothing step eval", ("smoothing step eval",), None),
]


def aggregates(per_launch: list, kernel_rows: list) -> list:
    """Per op: summed predicted time of its launches (default configs, and each gather/grad-weight launch at
    its model-best swept config among those that do not spill: the model does not price spill traffic)."""
    best: dict = {}
    for row in kernel_rows:
        if row["spill_bytes"] or row["spill_instructions"]:
            continue
        key = (row.get("layout"), row["shape"], row["dtype"], row["kernel"], row["variant"])
        best[key] = min(best.get(key, math.inf), row["predicted_us"])
    out = []
    groups: dict = {}
    for row, call in per_launch:
        groups.setdefault((row.get("layout"), row["shape"], row["dtype"]), []).append((row, call))
    for (layout, shape, dtype), launches in groups.items():
        r0 = launches[0][0]
        for name, ops, floor_passes in _AGGREGATES:
            chosen = [r for r, cl in launches if cl.op in ops]
            if not chosen:
                continue
            t = sum(r["predicted_us"] for r in chosen)
            t_best = sum(min(r["predicted_us"], best.get((layout, r["shape"], r["dtype"], r["kernel"],
                                                          r["variant"]), math.inf)) for r in chosen)
            mb = sum(r["min_bytes"] for r in chosen)
            esize = 4 if dtype == "fp32" else 2
            # the op's own floor: the copies that re-lay its tensors (RELAYOUT_KERNELS) are time, not floor
            own = sum(r["min_bytes"] for r in chosen if r["kernel"] not in RELAYOUT_KERNELS)
            floor = floor_passes * N_BATCH * r0["C"] * r0["H"] * r0["W"] * esize if floor_passes else own
            out.append({"kind": "aggregate", "layout": layout, "shape": shape, "model_layer": r0.get("model_layer"),
                        "C": r0["C"], "H": r0["H"],
                        "W": r0["W"], "group_size": r0["group_size"], "N": N_BATCH, "dtype": dtype, "op": name,
                        "launches": len(chosen), "min_bytes": mb, "floor_bytes": floor, "predicted_us": t,
                        "copy_fraction": floor / BANDWIDTH * 1e6 / t, "predicted_us_model_best": t_best,
                        "copy_fraction_model_best": floor / BANDWIDTH * 1e6 / t_best})
    return out


# ---- the criteria --------------------------------------------------------------------------------------------

def check_report(rows: list) -> list:
    """Violations of: no launched config spills; for g_s >= 8 the main-loop operand loads of the MMA kernels
    are at least 64-bit and async (fp32 and bf16). Rows: the report's kernel rows (others ignored)."""
    out = []
    for r in rows:
        if r.get("kind", "kernel") != "kernel" or not r.get("launched_default"):
            continue
        where = (f"{r.get('layout', LAYOUTS[0])} {r['dtype']} {r['shape']} {r['kernel']} [{r['variant']}] "
                 f"{r['config']}")
        if r["spill_bytes"] > 0 or r.get("spill_instructions", 0) > 0:
            out.append(f"{where}: spills ({r['spill_bytes']} bytes of stack/local memory per thread, "
                       f"{r.get('spill_instructions', 0)} STL/LDL instructions)")
        if r["kernel"] in MMA_KERNELS and r["group_size"] >= 8 and r["dtype"] in ("fp32", "bf16"):
            bits, is_async = r.get("load_bits"), r.get("loads_async")
            if bits is None or bits < 64 or not is_async:
                out.append(f"{where}: main-loop operand loads {bits}-bit, "
                           f"{'async' if is_async else 'synchronous'} (want >= 64-bit async)")
    return out


# The figures every layout must reach (the channels_last/channels_last ones are the reference): by the model,
# an op with OIHW weights within 5% of its all-channels_last time; with NCHW activations conv forward at >= 0.5
# and forward+backward at >= 0.4 of copy bandwidth, the training smoothing step at >= 0.4 of its 18-pass floor.
OIHW_SLOWDOWN_MAX = 1.05
NCHW_FRACTION_MIN = {"conv forward": 0.5, "conv forward+backward": 0.4,
                     "smoothing step forward+backward over its 18-pass floor": 0.4}


def check_targets(aggs: list) -> list:
    """Misses of the layout targets (OIHW_SLOWDOWN_MAX, NCHW_FRACTION_MIN) among the aggregate rows, at the
    default configs, each naming the figure and its bound."""
    reference = {(a["shape"], a["dtype"], a["op"]): a for a in aggs if a.get("layout", LAYOUTS[0]) == LAYOUTS[0]}
    out = []
    for a in aggs:
        if a.get("model_layer"):  # predictions only
            continue
        layout = a.get("layout", LAYOUTS[0])
        act, weight = layout.split("/")
        where = f"{layout} {a['dtype']} {a['shape']} {a['op']}"
        ref = reference.get((a["shape"], a["dtype"], a["op"]))
        if act == "channels_last" and weight == "OIHW" and ref is not None:
            ratio = a["predicted_us"] / ref["predicted_us"]
            if ratio > OIHW_SLOWDOWN_MAX:
                out.append(f"{where}: {a['predicted_us']:.1f} us, {ratio:.2f}x the channels_last weights' "
                           f"{ref['predicted_us']:.1f} us (want <= {OIHW_SLOWDOWN_MAX:.2f}x)")
        want = NCHW_FRACTION_MIN.get(a["op"])
        if act == "NCHW" and want is not None and a["copy_fraction"] < want:
            out.append(f"{where}: {a['copy_fraction']:.2f} of copy bandwidth (want >= {want})")
    return out


def lowest_fractions(aggs: list) -> list:
    """(layout, dtype, op, lowest copy fraction over the shapes, at which shape), default configs."""
    lowest: dict = {}
    for a in aggs:
        if a.get("model_layer"):
            continue
        key = (a.get("layout", LAYOUTS[0]), a["dtype"], a["op"])
        if key not in lowest or a["copy_fraction"] < lowest[key][0]:
            lowest[key] = (a["copy_fraction"], a["shape"])
    return [(*key, frac, shape) for key, (frac, shape) in lowest.items()]


# ---- output --------------------------------------------------------------------------------------------------

def _fmt_loads(loads: dict) -> str:
    return ", ".join(f"{n}x {op}" for op, n in sorted(loads.items())) or "-"


def markdown(meta: dict, rows: list, aggs: list, violations: list, misses: list) -> str:
    lines = [f"# Codegen report, sm_90 (H100 model), {meta['date']}", "",
             f"Triton {meta['triton']}, torch {meta['torch']}; compiled for sm_90 by the stand-in CUDA driver "
             "through the real launchers (N=128, 3x3 grouped convs, stride 1, pad 1) in every layout a user holds "
             "(activations / weights: " + ", ".join(meta.get("layouts", LAYOUTS)) + "; channels_last/channels_last "
             "is how `mgiad train` and the mgiad models hold them); "
             f"`{meta['command']}` in {meta['seconds']:.0f} s. Default config policy: {meta['config_policy']}.",
             "", "## Model (fixed)", "",
             "time = max(minimum bytes / 3.0 TB/s, SASS warp-instructions issued / (132 SMs x 4 per clock x "
             "1.755 GHz), MMA FLOPs issued / dense peak (TF32 495, bf16 990 TFLOP/s)); fraction of copy "
             "bandwidth = (minimum bytes / 3.0 TB/s) / time. On a GPU the measured figures rule.", "",
             meta["counting"], "",
             "Occupancy: CTAs per SM = min(64K registers / (registers rounded to 256 per warp x warps), "
             "228 KB / (shared + 1 KB), 64 warps / warps per CTA, 32). Spill bytes: STACK + LOCAL of "
             "`cuobjdump -res-usage` (bytes per thread; ptxas spills to the stack frame), and the STL/LDL count. Load width and async: the global loads in the main "
             "loop (LDGSTS = cp.async, async; LDG = synchronous; width from the suffix, plain = 32-bit), all of "
             "them, BatchNorm-parameter loads of a fused prologue included.", "",
             "## Criteria", "",
             "No launched config spills; for g_s >= 8 the main-loop operand loads of the gather and grad-weight "
             f"kernels are >= 64-bit and async. **{len(violations)} violations:**", ""]
    lines += [f"- {v}" for v in violations] or ["- none"]
    lines += _targets_markdown(aggs, misses)
    lines += ["", "## Per op (default configs; model-best: each gather/grad-weight launch at its best swept "
              "config that does not spill)", "",
              "| layout | dtype | shape | op | launches | min MB | floor MB | predicted us | copy fraction | "
              "model-best us | model-best fraction |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in (a for a in aggs if not a.get("model_layer")):
        lines.append(f"| {a.get('layout', LAYOUTS[0])} | {a['dtype']} | {a['shape']} | {a['op']} | {a['launches']} | "
                     f"{a['min_bytes'] / 1e6:.1f} | "
                     f"{a['floor_bytes'] / 1e6:.1f} | {a['predicted_us']:.1f} | {a['copy_fraction']:.2f} | "
                     f"{a['predicted_us_model_best']:.1f} | {a['copy_fraction_model_best']:.2f} |")
    lines += _model_layers_markdown(aggs)
    header = ("| layout | dtype | shape | kernel / variant | config | default | launches | regs | spill B | "
              "shared KB | "
              "CTAs/SM (warps) | limit | MMA | loop instr | trips/CTA | loads in loop | bits | async | "
              "issued Minstr | predicted us | bound | copy fraction |")
    for title, launched in (("Launched kernels (default configs)", True),
                            ("Autotune-list configs compiled for the same arguments (not launched by default)",
                             False)):
        sel = [r for r in rows if r["launched_default"] == launched]
        if not sel:
            continue
        lines += ["", f"## {title}", "", header, "|" + "---|" * 22]
        for r in sel:
            lines.append(
                f"| {r.get('layout', LAYOUTS[0])} | {r['dtype']} | {r['shape']} | "
                f"{r['kernel'].replace('_kernel', '')}: {r['variant']} | "
                f"{r['config']} | {'yes' if r['launched_default'] else 'no'} | {r['launches']} | {r['regs']} | "
                f"{r['spill_bytes']} | {r['shared_bytes'] / 1024:.1f} | {r['ctas_per_sm']} ({r['warps_per_sm']}) | "
                f"{r['occupancy_limit']} | {r['mma'] or '-'} | {r['loop_instructions'] or '-'} | "
                f"{r['loop_trips_per_cta']} | {_fmt_loads(r['loop_loads'])} | {r['load_bits'] or '-'} | "
                f"{'-' if r['loads_async'] is None else 'yes' if r['loads_async'] else 'no'} | "
                f"{r['issued_warp_instructions'] / 1e6:.2f} | {r['predicted_us']:.1f} | {r['bound']} | "
                f"{r['copy_fraction']:.2f} |")
    return "\n".join(lines) + "\n"


def _model_layers_markdown(aggs: list) -> list:
    """The model layers' section: each layer's conv forward and forward+backward, in a converted model's two
    layouts (predictions: not held to the layout targets)."""
    rows = [a for a in aggs if a.get("model_layer")]
    if not rows:
        return []
    lines = ["", "## Model layers (default configs)", "",
             "The grouped convolutions the kernel benchmark times (`python -m tools.kernel_bench --ops "
             "model_layers`), at N=128, as a model converted by `use_kernels` holds them (NCHW/OIHW) and after "
             "`.to(memory_format=torch.channels_last)`.", "",
             "| layout | dtype | layer | op | launches | floor MB | predicted us | copy fraction |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {a['layout']} | {a['dtype']} | {a['shape']} | {a['op']} | {a['launches']} | "
              f"{a['floor_bytes'] / 1e6:.1f} | {a['predicted_us']:.1f} | {a['copy_fraction']:.2f} |" for a in rows]
    return lines


def _targets_markdown(aggs: list, misses: list) -> list:
    """The layout targets' section: the bounds, the misses, the lowest figure of each layout, dtype and op."""
    lines = ["", "## Layout targets", "",
             f"By the model, at every shape and the default configs: with OIHW weights (channels_last activations) "
             f"each op within {OIHW_SLOWDOWN_MAX:.2f}x of its channels_last/channels_last time; with NCHW "
             "activations (either weight layout) " + ", ".join(f"{op} >= {v}" for op, v in NCHW_FRACTION_MIN.items())
             + f" of copy bandwidth. **{len(misses)} misses:**", ""]
    lines += [f"- {m}" for m in misses] or ["- none"]
    lines += ["", "Lowest copy fraction over the shapes (default configs):", "",
              "| layout | dtype | op | lowest fraction | at |", "|---|---|---|---|---|"]
    lines += [f"| {layout} | {dtype} | {op} | {frac:.2f} | {shape} |"
              for layout, dtype, op, frac, shape in lowest_fractions(aggs)]
    return lines


COUNTING = ("Issued warp-instructions = sum over CTAs of warps x (static SASS count, an instruction in a loop "
            "counted trip-count times): main loop KH*KW*ceil(reduced channels of the tile's groups / BLOCK_RED) "
            "per CTA (gather); the split's pixel boxes per input-channel block, ceil(input channels of the "
            "tile's groups / BLOCK_IN) blocks (grad weight); MMA-free loops of the MMA kernels (the cold NaN/Inf "
            "fallback, the split-reduction tail run by the last program of a tile) zero times; other loops once; "
            "code behind forward branches once. "
            "MMA FLOPs issued include the zero blocks of block-diagonal tiles (2*BLOCK_P*BLOCK_DST*BLOCK_RED per "
            "gather step, 2*BLOCK_OUT*KW_BLOCK*BLOCK_IN*BLOCK_P per grad-weight step). Minimum bytes: each tensor "
            "once "
            "(gather: src + dst + weight (+ other); grad weight: x + grad_y + weight; BatchNorm elementwise: "
            "their activations; relayout, band: their source and copy); an op's floor is its own minimum bytes, the "
            "copies that re-lay an NCHW activation or an OIHW weight and the weight's band left out (their time "
            "counts); the "
            "smoothing step's floor is 18 activation passes. Split partials are reduced "
            "in the kernels that write them (no separate launch).")


def run_report(shapes, dtypes, sweep: str, out_dir: str, command: str, log: Callable = print,
               layouts=LAYOUTS, model_layers: bool = False) -> list:
    """Collect, write ``codegen-sm90.{json,md}`` under ``out_dir``; returns the violations."""
    import torch
    import triton

    from mgiad_kernels.runtime.triton_support import autotune_enabled

    start = time.perf_counter()
    rows, aggs = collect(shapes, dtypes, sweep, log, layouts, model_layers)
    violations, misses = check_report(rows), check_targets(aggs)
    meta = {"date": REPORT_DATE, "generated": datetime.datetime.now().isoformat(timespec="seconds"),
            "triton": triton.__version__, "torch": torch.__version__, "arch": 90, "command": command,
            "seconds": time.perf_counter() - start, "sweep": sweep, "shapes": [list(s) for s in shapes],
            "dtypes": list(dtypes), "layouts": list(layouts), "model_layers": model_layers, "N": N_BATCH,
            "config_policy": ("autotuning (the stand-in's fake timings pick the first config: the launched "
                              "config on a GPU may differ)" if autotune_enabled() else
                              "no autotuning (MGIAD_KERNELS_AUTOTUNE unset or 0): the launchers' configs"),
            "model": {"bandwidth_Bps": BANDWIDTH, "sms": SMS, "issue_per_clock": ISSUE_PER_CLOCK, "clock_Hz": CLOCK,
                      "peak_flops": PEAK_FLOPS, "smoothing_floor_passes": SMOOTHING_FLOOR_PASSES},
            "counting": COUNTING, "row_fields": list(ROW_FIELDS), "aggregate_fields": list(AGGREGATE_FIELDS)}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "codegen-sm90.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows + aggs, "violations": violations, "target_misses": misses}, f,
                  indent=1)
    with open(os.path.join(out_dir, "codegen-sm90.md"), "w") as f:
        f.write(markdown(meta, rows, aggs, violations, misses))
    log(f"codegen report: {len(rows)} kernel rows, {len(aggs)} aggregate rows, {len(violations)} violations, "
        f"{len(misses)} layout-target misses; "
        f"wrote {out_dir}/codegen-sm90.json and .md in {meta['seconds']:.0f} s")
    return violations
