"""The benchmarks as a user runs them off a GPU (`python -m pytest benchmarks`): one line of what was timed and
what was skipped and why, provider names that say what ran, several rounds per case, a table within 120
columns, and under -q the line alone."""
import json
import os
import subprocess
import sys

import pytest
import torch

from tools import kernel_bench as bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASE = "grouped_conv3x3-fwd-float32-N2-C16-H8-g4"  # one tiny case: its four providers
LAYER_CASE = "convnext_tiny.features.1.0.block.0-fwd-float32-N2-C4-H8-g1"  # a model layer's tiny case
OFF_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="the tiny shapes are the benchmarks' off a GPU")


def _benchmarks(*args, case=CASE) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "pytest", "benchmarks/test_kernels.py", "-k", case,
                           "-p", "no:cacheprovider", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_provider_names_say_what_runs():
    case = bench.Case("grouped_conv3x3", "fwd", torch.float32, 2, 16, 8, 8, 4)
    assert bench.providers_for(case, torch.device("cuda")) == ("triton", "cudnn_nchw", "cudnn_channels_last",
                                                              "torch_compile")
    assert bench.providers_for(case, torch.device("cpu")) == ("triton", "torch_cpu_nchw", "torch_cpu_channels_last",
                                                             "torch_compile")
    layer = bench.Case("model_layers", "fwd", torch.float32, 2, 96, 56, 56, 1,
                       {"model": "convnext_tiny", "layer": "features.1.0.block.0", "kernel": 7})
    assert bench.providers_for(layer, torch.device("cuda")) == ("triton_nchw", "triton_channels_last", "cudnn_nchw",
                                                               "cudnn_channels_last")
    assert bench.providers_for(layer, torch.device("cpu")) == ("triton_nchw", "triton_channels_last", "torch_cpu_nchw",
                                                              "torch_cpu_channels_last")


def test_model_layers_are_the_stride_1_grouped_convs_of_torchvision_models():
    """Every distinct (C, H, channels per group, kernel) of the models' stride-1 grouped convs at 224x224, each
    under the name of its first layer, and the quick cases keep each kernel and group width."""
    models = pytest.importorskip("torchvision.models")
    found = []
    for name in ("resnext50_32x4d", "regnet_x_400mf", "mobilenet_v2", "convnext_tiny"):
        model = getattr(models, name)(weights=None).eval()
        for layer, m in model.named_modules():
            if isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.stride == (1, 1):
                assert m.padding[0] == m.kernel_size[0] // 2 and m.in_channels == m.out_channels
                m.register_forward_hook(lambda m, i, o, name=name, layer=layer: found.append(
                    (name, layer, m.in_channels, i[0].shape[-1], m.in_channels // m.groups, m.kernel_size[0])))
        with torch.no_grad():
            model(torch.randn(1, 3, 224, 224))
    seen = set()
    firsts = [row for row in found if (row[0], *row[2:]) not in seen and not seen.add((row[0], *row[2:]))]
    assert firsts == bench.MODEL_LAYERS
    quick = bench.cases(True, ["model_layers"], [torch.float32])
    assert {(c.extra["kernel"], c.group_size) for c in quick} == {(k, g) for *_, g, k in bench.MODEL_LAYERS}
    assert all(c.N == 2 and c.H <= 8 and c.C % c.group_size == 0 for c in quick)


@OFF_GPU
def test_benchmarks_say_what_ran_and_what_was_skipped_in_one_line(tmp_path):
    stats = tmp_path / "stats.json"
    lines = _benchmarks("--benchmark-only", f"--benchmark-json={stats}").stdout.splitlines()
    (summary,) = [line for line in lines if line.startswith("benchmarks: ")]
    assert summary.startswith("benchmarks: 2 timed on cpu-"), summary
    assert "at tiny shapes, 5 rounds each (1 torch_cpu_nchw, 1 torch_cpu_channels_last); 2 skipped: " \
           "1 triton (Triton providers need a GPU" in summary, summary
    assert summary.endswith("; 1 torch_compile (torch.compile max-autotune is timed on GPUs only)"), summary
    table = lines[lines.index(summary) - 4:lines.index(summary)]
    assert table[0].startswith("ms per call over 5 rounds") and table[1].split()[:2] == ["case", "provider"], table
    assert [row.split()[1] for row in table[2:]] == ["torch_cpu_nchw", "torch_cpu_channels_last"], table
    assert max(len(line) for line in table) <= 120, table
    assert not any("cudnn" in line for line in lines)
    rows = json.loads(stats.read_text())["benchmarks"]
    assert [row["stats"]["rounds"] for row in rows] == [5, 5]
    assert all(row["stats"]["stddev"] > 0 and "speedup_vs_best_torch_cpu" in row["extra_info"] for row in rows)


@OFF_GPU
def test_model_layer_benchmarks_time_the_torch_layouts_and_skip_both_triton_layouts():
    lines = _benchmarks("-q", case=LAYER_CASE).stdout.splitlines()
    (summary,) = [line for line in lines if line.startswith("benchmarks: ")]
    assert "5 rounds each (1 torch_cpu_nchw, 1 torch_cpu_channels_last); 2 skipped: 1 triton_nchw + " \
           "1 triton_channels_last (Triton providers need a GPU" in summary, summary


@OFF_GPU
def test_quiet_benchmarks_print_the_summary_line_without_the_table():
    lines = _benchmarks("-q").stdout.splitlines()
    assert sum(line.startswith("benchmarks: 2 timed on cpu-") for line in lines) == 1, lines
    assert not any(line.startswith(("ms per call", "case ", "Name (time")) for line in lines), lines


def test_the_resnext_train_step_converts_its_grouped_convs_and_times_both_torch_layouts_on_gpus():
    from mgiad_kernels import GroupedConv2d
    from tools import model_bench

    pytest.importorskip("torchvision")
    (case,) = model_bench.cases(True, ["train_step_resnext50"], [torch.float32])
    assert (case.N, case.H) == (2, 32) and model_bench.cases(False, [case.op], [torch.float32])[0].H == 224
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert model_bench.providers_for(case, cpu) == ("triton", "torch", "torch_channels_last")
    assert [model_bench.skip_reason(p, cuda) for p in ("triton", "torch", "torch_channels_last")] == [None] * 3
    assert "GPUs only" in model_bench.skip_reason("torch_channels_last", cpu)
    assert model_bench.skip_reason("torch", cpu) is None
    convs = [m for m in model_bench.build_model(case.op, "triton").modules() if isinstance(m, GroupedConv2d)]
    assert len(convs) == 16 and {m.groups for m in convs} == {32}
    assert not any(isinstance(m, GroupedConv2d) for m in model_bench.build_model(case.op, "torch").modules())
