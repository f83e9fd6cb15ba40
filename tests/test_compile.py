"""Every kernel variant compiles with Triton's real compiler for sm_90, with no GPU needed.

The interpreter checks the arithmetic; only the compiler checks what a GPU build will accept
(16-bit dot tiles, constexpr rules, dtype promotion). bf16 is compiled here because the
interpreter cannot run it.
"""
import importlib.util
import os
import subprocess
import sys

import pytest


@pytest.mark.skipif(importlib.util.find_spec("triton.backends.nvidia") is None,
                    reason="triton has no NVIDIA backend here")
def test_every_kernel_variant_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "tools.compile_check", "--arch", "90", "--dtypes", "fp32,bf16",
                           "--quick"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "kernel variants compiled for sm_90" in done.stdout


def test_compile_check_refuses_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-m", "tools.compile_check"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "unset TRITON_INTERPRET" in done.stderr


@pytest.mark.parametrize("setting,autotunes", [("1", True), ("0", False), (None, False)])
def test_autotune_is_opt_in(setting, autotunes):
    """Autotuning only with MGIAD_KERNELS_AUTOTUNE=1 (its lists stay available); by default one config per key."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MGIAD_KERNELS_AUTOTUNE")}
    if setting is not None:
        env["MGIAD_KERNELS_AUTOTUNE"] = setting
    code = ("from mgiad_kernels.conv import kernels, tiles; "
            "from mgiad_kernels.runtime.triton_support import autotune_enabled; "
            "print(len(kernels.conv2d_gather_kernel.configs), len(kernels.conv2d_grad_weight_kernel.configs), "
            "autotune_enabled(), tiles.default_gather_config(4, 4, 4, 1).kwargs['BLOCK_DST'])")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    gather, grad_weight, enabled, tile = done.stdout.split()
    assert (int(gather), int(grad_weight), enabled, int(tile)) == (7, 3, str(autotunes), 16)


_DEFAULT_GATHER_TILES = [  # (dst, red) per group, element size, pixel bucket, BatchNorm across the tile
    #                        -> (BLOCK_P, BLOCK_DST, BLOCK_RED, stages, maxnreg or 0)
    ((8, 8), 4, 3, False, (256, 16, 16, 2, 0)),  # fp32: 16-wide channel tiles at every group size up to 16
    ((8, 8), 4, 3, True, (256, 16, 16, 2, 0)),
    ((8, 8), 4, 1, False, (128, 32, 32, 3, 0)),  # fewer pixels: 128, 32 wide where that spans at most 4 groups
    ((8, 8), 4, 2, False, (128, 32, 32, 3, 0)),
    ((8, 8), 4, 1, True, (128, 16, 16, 3, 0)),  # but with a BatchNorm across the tile
    ((4, 4), 4, 1, False, (128, 16, 16, 3, 0)),  # 32 wide would span 8 groups: 8x the MMA work
    ((4, 4), 4, 2, False, (128, 16, 16, 3, 0)),
    ((8, 8), 4, 0, False, (64, 16, 16, 3, 0)),  # fewest: narrow tiles keep the SMs busy
    ((32, 32), 4, 1, False, (128, 32, 32, 3, 0)),
    ((32, 32), 4, 3, False, (128, 32, 32, 3, 0)),  # fp32 256x32x32 would take 8 warps or 239 registers
    ((8, 8), 2, 1, False, (128, 32, 32, 3, 0)),  # 16-bit: 32-wide tiles over 4 groups load 128 bits
    ((8, 8), 2, 2, False, (256, 32, 32, 2, 168)),  # 256 pixels at 3 CTAs' registers from 8192 pixels
    ((8, 8), 2, 3, False, (256, 32, 32, 2, 168)),
    ((8, 8), 2, 2, True, (128, 32, 32, 3, 0)),  # a BatchNorm across the tile would need 233-255
    ((8, 8), 2, 3, True, (128, 32, 32, 3, 0)),
    ((4, 4), 2, 1, False, (128, 16, 16, 3, 0)),  # 32 wide would span 8 groups: 8x the MMA work
    ((4, 4), 2, 2, False, (128, 16, 16, 3, 0)),
    ((4, 4), 2, 3, True, (256, 16, 16, 2, 0)),  # a BatchNorm across the tile would need 236-254 at 512
    ((4, 4), 2, 3, False, (512, 16, 16, 2, 0)),  # 16-bit 16x16 tiles: the fixed work per step over 512 pixels
    ((4, 8), 2, 0, False, (64, 16, 32, 3, 0)),  # a channel multiplier: each side on its own
    ((5, 64), 2, 1, False, (128, 16, 32, 3, 0)),
    ((5, 64), 2, 3, False, (128, 16, 32, 3, 0)),  # mixed widths keep 128 pixels
]


def _configs_off_the_interpreter(loop: str, call: str, tile: str) -> list[tuple]:
    """Run ``for {loop}: c = {call}; print({tile})`` in a process without the interpreter (the sm_90 configs)
    and return the printed rows as int tuples."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MGIAD_KERNELS_AUTOTUNE")}
    code = f"from mgiad_kernels.conv import tiles\nfor {loop}:\n    c = {call}\n    print({tile})"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return [tuple(map(int, line.split())) for line in done.stdout.splitlines()]


def test_default_gather_tile_follows_the_codegen_study():
    """The default gather tile (no autotuning, sm_90 compiler path): 128 pixels from the first pixel bucket
    on; 256 at two stages with 32-wide 16-bit channel tiles (registers capped) from the second unless a
    BatchNorm spans the tile; from the last, 256 with 16-wide ones (512 in 16-bit unless a BatchNorm spans
    the tile). Tiles 32 wide where they span at most 4 groups in 16-bit, and in fp32 in the middle pixel
    buckets without a BatchNorm across the tile."""
    got = _configs_off_the_interpreter(
        f"(dst, red), size, wide, bn, _ in {_DEFAULT_GATHER_TILES!r}",
        "tiles.default_gather_config(dst, red, size, wide, tile_batchnorm=bn)",
        "c.kwargs['BLOCK_P'], c.kwargs['BLOCK_DST'], c.kwargs['BLOCK_RED'], c.num_warps, c.num_stages, c.maxnreg or 0")
    assert got == [(*tile[:3], 4, *tile[3:]) for *_, tile in _DEFAULT_GATHER_TILES]


def test_default_grad_weight_tile_caps_registers_only_where_that_cannot_spill():
    """16x16 channel tiles at two stages; ptxas may use 192 registers for them (it stopped at 128 and spilled),
    while 32-wide tiles, which need 237-255, keep its own choice."""
    got = _configs_off_the_interpreter(
        "out_pg, in_pg in [(4, 4), (8, 8), (16, 16), (8, 32), (32, 32), (64, 64)]",
        "tiles.default_grad_weight_config(out_pg, in_pg)",
        "c.kwargs['BLOCK_OUT'], c.kwargs['BLOCK_IN'], c.num_warps, c.num_stages, c.maxnreg or 0")
    assert got == [(16, 16, 4, 2, 192), (16, 16, 4, 2, 192), (16, 16, 4, 2, 192), (16, 32, 4, 2, 0),
                   (32, 32, 4, 2, 0), (32, 32, 4, 2, 0)]


def test_grad_weight_grid_offers_the_programs_the_device_wants():
    """Kernel rows x channel tiles of the launched tile x splits = parallel_programs_wanted (4 per SM) at the
    codegen report's shapes: not twice that, as when the splits assumed 32-wide channel tiles."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MGIAD_KERNELS_AUTOTUNE")}
    code = ("import torch\n"
            "from mgiad_kernels.conv import launch as conv_launch\n"
            "from mgiad_kernels.conv.geometry import ConvGeometry\n"
            "conv_launch.parallel_programs_wanted = lambda device: 4 * 132\n"
            "for c, hw in [(64, 32), (128, 16), (256, 8)]:\n"
            "    x = torch.empty(128, c, hw, hw).contiguous(memory_format=torch.channels_last)\n"
            "    geo = ConvGeometry.of(x.shape, (c, 8, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), c // 8)\n"
            "    site = conv_launch._grad_weight_site(x, x, geo, (c, 8, 3, 3), False, None, 1.0,\n"
            "                                       torch.channels_last, ())[0]\n"
            "    print(*site.grid)")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    grids = [tuple(map(int, line.split())) for line in done.stdout.splitlines()]
    assert [g[:2] for g in grids] == [(3, 4), (3, 8), (3, 16)]  # 16-wide tiles at g_s = 8
    assert [g[0] * g[1] * g[2] for g in grids] == [4 * 132] * 3, grids
