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
    done = subprocess.run([sys.executable, "-m", "mgiad_kernels.compile_check", "--arch", "90", "--dtypes", "fp32,bf16",
                           "--quick"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "kernel variants compiled for sm_90" in done.stdout


def test_compile_check_refuses_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-m", "mgiad_kernels.compile_check"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "unset TRITON_INTERPRET" in done.stderr


@pytest.mark.parametrize("setting,autotunes", [("1", True), ("0", False), (None, False)])
def test_autotune_is_opt_in(setting, autotunes):
    """Autotuning only with MGIAD_KERNELS_AUTOTUNE=1 (its lists stay available); by default one config per key."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MGIAD_KERNELS_AUTOTUNE")}
    if setting is not None:
        env["MGIAD_KERNELS_AUTOTUNE"] = setting
    code = ("from mgiad_kernels.kernels import conv; "
            "print(len(conv.conv2d_gather_kernel.configs), len(conv.conv2d_grad_weight_kernel.configs), "
            "conv.autotune_enabled(), conv.default_gather_config(4, 4).kwargs['BLOCK_DST'])")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    gather, grad_weight, enabled, tile = done.stdout.split()
    assert (int(gather), int(grad_weight), enabled, int(tile)) == (5, 4, str(autotunes), 16)
