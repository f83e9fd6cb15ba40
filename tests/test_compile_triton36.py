"""Every kernel variant compiles for sm_90 under triton 3.6 too (the release GPU machines run), all three dtypes.

Runs where ``MGIAD_TRITON36_PATH`` names a directory from which triton 3.6 imports, e.g. after
``pip install --no-deps --target /tmp/triton36 triton==3.6.0``: ``MGIAD_TRITON36_PATH=/tmp/triton36``.
That directory goes first on the compile check's PYTHONPATH. About 110 s on 2 cores with an empty cache.
"""
import os
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PATH = os.environ.get("MGIAD_TRITON36_PATH")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MGIAD_KERNELS_AUTOTUNE")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PATH, _ROOT, env.get("PYTHONPATH")]))
    return env


@pytest.mark.skipif(not _PATH, reason="MGIAD_TRITON36_PATH is not set (a directory holding triton 3.6)")
def test_every_kernel_variant_compiles_for_sm90_under_triton_36():
    version = subprocess.run([sys.executable, "-c", "import triton; print(triton.__version__, triton.__file__)"],
                             env=_env(), capture_output=True, text=True, timeout=120)
    assert version.returncode == 0, version.stderr[-2000:]
    assert version.stdout.startswith("3.6."), f"MGIAD_TRITON36_PATH={_PATH} imports triton {version.stdout}"
    assert os.path.realpath(version.stdout.split()[1]).startswith(os.path.realpath(_PATH)), version.stdout
    done = subprocess.run([sys.executable, "-m", "tools.compile_check", "--arch", "90",
                           "--dtypes", "fp32,fp16,bf16"], env=_env(), capture_output=True, text=True, timeout=900,
                          cwd=_ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "kernel variants compiled for sm_90" in done.stdout
