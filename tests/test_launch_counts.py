"""Launch counts are the same on every launch path: here (the interpreter, or a GPU), and on the stand-in
driver's real launch path, counted by the launch hook, by the stand-in's record, and, with no hook set, by the
launches Triton's own launcher and the package's fast launcher hand the no-op libcuda."""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from launch_counter import counting_launches
from launch_scenarios import EXPECTED, SCENARIOS, count_phases
from support import DEVICE

from mgiad_kernels.runtime import launch_sites
from tools.c_build import c_compiler

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_launch_counts_here(name):
    launch_sites.clear()
    try:
        with counting_launches() as names:
            counts = count_phases(name, DEVICE, lambda: len(names))
    finally:
        launch_sites.clear()
    assert counts == EXPECTED[name], names


def test_the_counter_counts_each_launch_once_by_kernel_name():
    with counting_launches() as names:
        counts = count_phases("smoothing eval, no grad", DEVICE, lambda: len(names))
    assert counts == [2] and set(names) == {"conv2d_gather_kernel"}, names
    with counting_launches() as outer, counting_launches() as inner:
        count_phases("smoothing eval, no grad", DEVICE, lambda: 0)
    assert len(outer) == len(inner) == 2


# Every scenario on the stand-in sm_90 driver, warm (a first run compiles and makes the launch plans; the second is
# counted): with the launch hook (counting_launches) and the stand-in's record of its no-op launches; then, where a
# C compiler builds the no-op libcuda, with no hook, the launches it receives from Triton's own launcher and the
# package's fast launcher (the path a GPU's warm launches take).
_STANDIN = """
    import json, sys

    import torch
    from launch_counter import counting_launches
    from launch_scenarios import SCENARIOS, count_phases
    from tools.host_bench import triton_on_cpu

    torch.set_num_threads(1)
    cpu, out = torch.device("cpu"), {{"hook": {{}}, "record": {{}}, "driver": {{}}}}
    with triton_on_cpu() as rec:
        for name in SCENARIOS:
            count_phases(name, cpu, lambda: 0)
            with counting_launches() as names:
                out["hook"][name] = count_phases(name, cpu, lambda: len(names))
            out["record"][name] = count_phases(name, cpu, lambda: len([x for x in rec.launches if not x.bench]))
    if {driver}:
        from tools.standin_driver import noop_libcuda
        with triton_on_cpu(launcher="triton"):
            for name in SCENARIOS:
                count_phases(name, cpu, lambda: 0)
                out["driver"][name] = count_phases(name, cpu, noop_libcuda().noop_launches)
    print(json.dumps(out))
"""


@pytest.mark.skipif(importlib.util.find_spec("triton.backends.nvidia") is None,
                    reason="triton has no NVIDIA backend here")
@pytest.mark.skipif(torch.cuda.is_available(), reason="the stand-in driver runs where no GPU is visible")
def test_launch_counts_on_the_standin_drivers_real_launch_path(tmp_path):
    driver = c_compiler() is not None
    script = tmp_path / "standin_launch_counts.py"
    script.write_text(textwrap.dedent(_STANDIN.format(driver=driver)))
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MGIAD_KERNELS_AUTOTUNE")}
    env["MGIAD_KERNELS_CHECK_PROMISES"] = "0"  # the warm launch path (the switch sends launches through the sites)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, os.path.join(_ROOT, "tests"), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["hook"] == EXPECTED, out
    assert out["record"] == EXPECTED, out
    if driver:
        assert out["driver"] == EXPECTED, out
