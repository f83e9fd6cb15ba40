"""benchmarks/gpu_check.sh --dry-run: every stage runs on this CPU through the stand-in sm_90 driver and writes its
JSON; with no time left, every stage is recorded as skipped and the script fails."""
import importlib.util
import json
import os
import subprocess

import pytest
import torch

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STAGES = ("env", "launch", "determinism", "graphs", "cuda_tests", "host_bench", "kernel_bench", "model_bench",
           "model_layers_bench", "resnext50_bench")


def _script(*args, env=None, timeout=600):
    return subprocess.run(["bash", os.path.join(_ROOT, "benchmarks", "gpu_check.sh"), *args], cwd=_ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


def _stage(out, name) -> dict:
    with open(out / f"{name}.json") as f:
        return json.load(f)


@pytest.mark.skipif(importlib.util.find_spec("triton.backends.nvidia") is None,
                    reason="triton has no NVIDIA backend here")
@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is for machines without a GPU")
def test_the_dry_run_runs_every_stage_and_writes_its_json(tmp_path):
    done = _script("--dry-run", str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with open(tmp_path / "summary.json") as f:
        summary = json.load(f)
    assert list(summary["stages"]) == list(_STAGES)
    for name in _STAGES:
        doc = _stage(tmp_path, name)
        assert doc["status"] == "ok" and doc["dry_run"] is True and doc["error"] is None, doc
        assert (tmp_path / f"{name}.log").stat().st_size > 0
    assert _stage(tmp_path, "env")["result"]["triton"]
    launch = _stage(tmp_path, "launch")["result"]["checks"]
    for case in ("conv fp32", "smoothing step fp32", "conv bf16", "smoothing step bf16"):
        assert launch[case]["compared"] >= 3 and launch[case]["warm_fallbacks"] == 0, launch[case]
    assert "conv bf16, side stream after a matmul" in launch and "conv fp32, fresh thread" in launch
    assert launch["conv fp32, more than 48 KB of shared memory"]["max_shared_bytes"] > 48 * 1024
    assert set(_stage(tmp_path, "determinism")["result"]["checks"]) == {"conv grad weight", "BatchNorm statistics"}
    for name in ("graphs", "cuda_tests"):
        outcomes = _stage(tmp_path, name)["result"]["outcomes"]
        assert outcomes.get("collected", 0) > 10 and outcomes.get("passed", 0) > 0, (name, outcomes)
    host = _stage(tmp_path, "host_bench")["result"]["documents"]
    assert len(host) == 1 and next(iter(host.values()))["launches"]["triton"] > 0, host
    assert _stage(tmp_path, "kernel_bench")["result"]["documents"]
    assert _stage(tmp_path, "model_layers_bench")["result"]["documents"]


def test_with_no_time_left_every_stage_is_skipped_and_the_script_fails(tmp_path):
    done = _script("--dry-run", str(tmp_path), env=dict(os.environ, GPU_CHECK_BUDGET_S="0"), timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    for name in _STAGES:
        doc = _stage(tmp_path, name)
        assert doc["status"] == "skipped" and "out of time" in doc["error"], doc


def test_usage_is_refused_without_an_out_dir():
    done = _script(timeout=60)
    assert done.returncode == 2 and "usage:" in done.stderr
