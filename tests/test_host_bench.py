"""The host-path benchmark (``python -m tools.model_bench --host``): launch counts, host microseconds per launch
and the results files, on CPU tensors through the stand-in sm_90 driver; its aten-op counter; its flags.

Launch counts are not pinned (the kernels keep changing): the files must agree with themselves."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from tools.host_bench import EXCLUDED_OPS, STEP_LAUNCHERS, TARGETS, AtenLaunchCounter
from tools.c_build import c_compiler

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_NVIDIA_BACKEND = importlib.util.find_spec("triton") is None or importlib.util.find_spec(
    "triton.backends.nvidia") is None


def _packet(op: str) -> str:
    """'aten.add.Tensor' -> 'add'."""
    return op.split(".")[1]


def test_counter_counts_compute_ops_not_views_or_allocations():
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    with AtenLaunchCounter() as counter:
        (a + b).view(-1).sum()
        torch.empty(4)
        a.t().transpose(0, 1).expand(2, 3).detach()
    assert dict(counter.counts) == {"aten.add.Tensor": 1, "aten.sum.default": 1}
    assert counter.total == 2


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" or importlib.util.find_spec("triton") is None,
                    reason="runs the Triton kernels on CPU tensors through the interpreter")
def test_counter_opens_the_custom_ops_and_counts_the_aten_ops_inside():
    """torch.ops.mgiad_kernels.* are not counted themselves, and do not recurse: their Python
    implementation runs under the counter (the backward's zero fills are aten ops)."""
    from mgiad_kernels.conv.functional import grouped_conv2d

    x = torch.randn(1, 4, 4, 4, requires_grad=True)
    w = torch.randn(4, 2, 3, 3, requires_grad=True)
    with AtenLaunchCounter() as counter:
        y = grouped_conv2d(x, w, None, 1, 1, 1, 2, backend="triton")
        y.sum().backward()
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w, None, 1, 1, 1, 2), rtol=1e-4, atol=1e-4)
    assert counter.counts["aten.sum.default"] == 1, counter.counts
    assert all(op.startswith("aten.") and _packet(op) not in EXCLUDED_OPS for op in counter.counts), counter.counts
    assert x.grad is not None and w.grad is not None


def test_a_bad_flag_is_refused_in_one_line_naming_it(capsys):
    from tools.model_bench import main

    for argv, flag in ((["--host", "--bogus-flag"], "--bogus-flag"), (["--host", "--repeats", "0"], "--repeats")):
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2, err
        assert flag in err and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no GPU is")
def test_device_cuda_without_a_gpu_is_refused_in_one_line(capsys, tmp_path):
    from tools.model_bench import main

    with pytest.raises(SystemExit) as info:
        main(["--host", "--device", "cuda", "--out-dir", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--device cuda" in err and err.count("\n") == 1, err
    assert not (tmp_path / "results").exists()  # refused before anything is written


@pytest.mark.skipif(NO_NVIDIA_BACKEND, reason="triton has no NVIDIA backend here")
def test_host_bench_writes_consistent_results(tmp_path):
    out = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["MGIAD_KERNELS_AUTOTUNE"] = "0"  # the default policy: warm launches through the sites' plans
    env["MGIAD_KERNELS_CHECK_PROMISES"] = "0"  # timed and counted: the warm launches, no promise checks
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-m", "tools.model_bench", "--host", "--no-cold-start", "--repeats", "3",
                           "--out-dir", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 2 and files[0].startswith("host-") and files[0].endswith(".json"), files
    assert files[1] == files[0][:-len(".json")] + ".md", files
    doc = json.loads((out / files[0]).read_text())
    assert "launches per MGiaD fwd+bwd" in done.stdout and files[0] in done.stdout

    for key in ("date", "cpu", "platform", "python", "torch", "triton", "model", "settings", "launches", "host_us",
                "mgiad_step_ms", "cold_start", "targets", "all_targets_met"):
        assert key in doc, key
    assert doc["model"]["widths"] == [64, 128, 256, 256] and doc["model"]["backend"] == "triton"
    assert doc["settings"]["repeats"] == 3 and doc["cold_start"] is None

    launches = doc["launches"]
    assert launches["triton"] > 0 and launches["triton"] == sum(launches["triton_per_kernel"].values())
    assert launches["aten"] == sum(launches["aten_per_op"].values())
    assert launches["triton_plus_aten"] == launches["triton"] + launches["aten"]
    for kind in ("triton", "aten"):
        assert launches["forward"][kind] + launches["backward"][kind] == launches[kind], launches
    assert not {_packet(op) for op in launches["aten_per_op"]} & EXCLUDED_OPS, launches["aten_per_op"]
    assert all(op.startswith("aten.") for op in launches["aten_per_op"]), launches["aten_per_op"]
    # The package adds no aten op of its own: split sums, alpha, casts and layouts are done in the kernels and
    # no gradient is zero-filled; what is left is autograd's accumulation of gradients of tensors used several
    # times (add.Tensor) and the stem, head and loss, which run on aten (one op each, mm twice).
    per_op = launches["aten_per_op"]
    assert not {op for op in ("aten.zeros.default", "aten.mul_.Tensor", "aten.neg_.default") if op in per_op}, per_op
    assert {op: n for op, n in per_op.items() if op != "aten.add.Tensor" and n > 2} == {}, per_op

    host = doc["host_us"]
    # timed through Triton's own launcher on the no-op libcuda wherever it can be built (no GPU, a C compiler)
    buildable = not torch.cuda.is_available() and c_compiler() is not None
    part = "output_allocation"
    assert set(host) == {"aten_add_16", "aten_add_16_allocating", "triton_conv2d_launch", part,
                         "compiled_launcher", "custom_op_conv2d", "direct_call_conv2d",
                         "mgiad_step_per_triton_launch"}
    # the launch's parts timed alone are parts of it
    whole, launch_alone = host["triton_conv2d_launch"]["median_us"], host["compiled_launcher"]["median_us"]
    assert host[part]["median_us"] + launch_alone < whole, host
    for name, entry in host.items():
        assert entry["median_us"] > 0 and entry["p20_us"] <= entry["median_us"] <= entry["p80_us"], (name, entry)
        assert entry["ratio_to_aten_add"] == pytest.approx(entry["median_us"] / host["aten_add_16"]["median_us"])
    assert doc["mgiad_step_ms"]["median"] > 0

    targets = doc["targets"]
    assert set(targets) == set(TARGETS)
    assert targets["aten_launches"]["value"] == launches["aten"]
    assert targets["aten_launches"]["met"] == (launches["aten"] <= 100)
    assert targets["triton_plus_aten_launches"]["met"] == (launches["triton_plus_aten"] <= 650)
    assert targets["launch_us_ratio"]["met"] == (host["triton_conv2d_launch"]["ratio_to_aten_add"] <= 2.5)
    assert targets["cold_start_compiles"]["met"] is None  # skipped
    assert doc["all_targets_met"] in (None, False)  # None: every measured target met, the cold start skipped
    md = (out / files[1]).read_text()
    assert "| measurement | value | target | met |" in md and str(launches["triton_plus_aten"]) in md
    assert doc["launcher"] == ("triton" if buildable else "noop")
    assert ("Triton's own CUDA launcher" in md) == buildable
    # where Triton's launcher runs, the warm launch is the fast launcher's (built with the same compiler)
    assert doc["warm_launch"] == ("fast" if buildable else "triton")
    assert ("the fast launcher on the site's packed plan" in md) == buildable

    # measurement 4: each launcher's calls and launches per step add up to the step's, its time its own
    rows = doc["launchers"]
    assert set(rows) == set(STEP_LAUNCHERS), rows
    assert sum(r["calls_per_step"] * r["launches_per_call"] for r in rows.values()) == pytest.approx(
        launches["triton"]), rows  # every Triton launch of the step is one of theirs
    for name, r in rows.items():
        assert r["calls_per_step"] > 0 and r["launches_per_call"] >= 1 and r["median_us_per_call"] > 0, (name, r)
        assert r["us_per_launch"] == pytest.approx(r["median_us_per_call"] / r["launches_per_call"])
        assert r["per_launch_ratio_to_aten_add"] == pytest.approx(r["us_per_launch"] / host["aten_add_16"]["median_us"])
        assert f"| {name} | {r['calls_per_step']} |" in md


@pytest.mark.skipif(NO_NVIDIA_BACKEND, reason="triton has no NVIDIA backend here")
def test_gpu_mode_counts_launches_through_the_hook_and_tables_its_times():
    """``--device cuda``'s measurement run on the stand-in with CPU tensors (no GPU here): the launch hook
    counts as many launches per step as the stand-in records, every host time is there, the warm launches
    it times are the sites' generated ones once the hook is gone, and its table and summary read it."""
    script = """
import datetime, json, torch
from tools.host_bench import build_step, describe, markdown, measure_cuda, summary, targets
from tools.host_bench import triton_on_cpu
from mgiad_kernels.runtime import launch_sites
with triton_on_cpu() as rec:
    result = measure_cuda(2, log=lambda *a: None, device=torch.device("cpu"), sync=lambda: None)
    _, step = build_step()
    step()
    start = len(rec.launches)
    step()
    recorded = len([x for x in rec.launches[start:] if not x.bench])
    generated = sum("launch" in vars(site) for site in launch_sites.SITES.values())
    sites = len(launch_sites.SITES)
doc = describe(torch.device("cpu"), datetime.datetime(2026, 11, 24), 2, cold_start=False)
doc.update(result, device_type="cuda", cold_start=None)
doc["targets"] = targets(doc)
print(json.dumps({"doc": doc, "recorded": recorded, "generated": generated, "sites": sites,
                  "md": markdown(doc), "summary": summary(doc)}))
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["MGIAD_KERNELS_AUTOTUNE"] = "0"  # the default policy: warm launches through the sites' plans
    env["MGIAD_KERNELS_CHECK_PROMISES"] = "0"  # timed and counted: the warm launches, no promise checks
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    doc = out["doc"]
    assert doc["launches"]["triton"] == out["recorded"] > 0, (doc["launches"], out["recorded"])
    assert out["generated"] == out["sites"] > 0, out  # every site warm: its generated launch
    host = doc["host_us"]
    # the stand-in's recorded no-op launcher: no fast plan
    assert set(host) == {"aten_add_16", "aten_add_16_allocating", "triton_conv2d_launch", "output_allocation",
                         "compiled_launcher", "custom_op_conv2d", "direct_call_conv2d",
                         "mgiad_step_per_triton_launch"}
    for name, entry in host.items():
        assert entry["median_us"] > 0 and entry["ratio_to_aten_add"] == pytest.approx(
            entry["median_us"] / host["aten_add_16"]["median_us"]), (name, entry)
    assert doc["mgiad_step_wall_ms"]["median"] >= doc["mgiad_step_ms"]["median"] > 0
    assert doc["targets"]["launch_us_ratio"]["met"] == (host["triton_conv2d_launch"]["ratio_to_aten_add"] <= 2.5)
    assert doc["targets"]["cold_start_compiles"]["met"] is None and doc["targets"]["aten_launches"]["met"] is None
    md = out["md"]
    assert "Triton's own launcher" in md and f"| Triton launches per fwd+bwd (launch hook) | {out['recorded']} |" in md
    assert f"{host['triton_conv2d_launch']['median_us']:.2f}" in md and "wall time" in md
    assert f"Triton launches per MGiaD fwd+bwd: {out['recorded']}" in out["summary"]
    rows = doc["launchers"]  # measurement 4, launches counted through the hook
    assert set(rows) == set(STEP_LAUNCHERS), rows
    assert sum(r["calls_per_step"] * r["launches_per_call"] for r in rows.values()) == pytest.approx(out["recorded"])
    assert all(f"| {name} | {r['calls_per_step']} |" in md for name, r in rows.items())
