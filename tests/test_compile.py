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
