"""The sm_90 codegen report: its criteria, the committed report, and that it regenerates.

The criteria (no launched config spills; for g_s >= 8 the MMA kernels' main-loop operand loads are >= 64-bit
and async, fp32 and bf16) are checked by ``check_report``. The committed report records the violations it
found; the test holds it to them, so the report states honestly what fails (the current kernels spill in
fp32 grad weight and load 32 bits at a time: these are listed, not waived).
"""
import copy
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tools.codegen_report import (AGGREGATE_FIELDS, DTYPES, LAYOUTS, QUICK_LAYOUTS, QUICK_SHAPES, ROW_FIELDS,
                                  SHAPES, aggregates, check_report, check_targets)

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_REPORT = os.path.join(_ROOT, "benchmarks", "results", "codegen-sm90.json")
_STABLE = ("regs", "spill_bytes", "spill_instructions", "shared_bytes", "mma", "loop_instructions", "load_bits",
           "loads_async", "grid", "launches", "min_bytes")

_CLEAN = {
    "kind": "kernel", "shape": "C=128 H=16 g_s=8", "C": 128, "H": 16, "W": 16, "group_size": 8, "N": 128,
    "dtype": "fp32", "kernel": "conv2d_gather_kernel", "variant": "forward", "config": "BLOCK_P=128",
    "launched_default": True, "regs": 128, "spill_bytes": 0, "spill_instructions": 0,
    "mma": "HGMMA.64x32x8.F32.TF32", "load_bits": 128, "loads_async": True,
}


def _committed():
    if not os.path.exists(_REPORT):
        pytest.skip("no committed report: python -m tools.compile_check --report")
    with open(_REPORT) as f:
        return json.load(f)


def _skip_unless_same_triton(written_by):
    """Skip, naming both versions, unless the committed report was written by this Triton."""
    import triton

    if written_by is None:
        pytest.skip("the committed codegen report records no Triton version (meta.triton): regenerate it")
    if written_by != triton.__version__:
        pytest.skip(f"the committed codegen report was written by triton {written_by}, this is triton "
                    f"{triton.__version__}: its rows hold for {written_by} only")


def _with(**changes):
    row = copy.deepcopy(_CLEAN)
    row.update(changes)
    return row


def test_check_report_passes_a_clean_row():
    assert check_report([_CLEAN]) == []
    assert check_report([_with(load_bits=64)]) == []


@pytest.mark.parametrize("changes", [dict(spill_bytes=240), dict(spill_instructions=12),
                                     dict(spill_bytes=8, kernel="bn_backward_kernel", mma=None, load_bits=None)])
def test_check_report_flags_spills(changes):
    violations = check_report([_CLEAN, _with(**changes)])
    assert len(violations) == 1 and "spills" in violations[0]


@pytest.mark.parametrize("changes", [dict(load_bits=32), dict(loads_async=False), dict(load_bits=None),
                                     dict(dtype="bf16", load_bits=16, group_size=16),
                                     dict(kernel="conv2d_grad_weight_kernel", load_bits=32)])
def test_check_report_flags_narrow_or_synchronous_operand_loads_at_group_size_8_and_up(changes):
    violations = check_report([_with(**changes)])
    assert len(violations) == 1 and "operand loads" in violations[0], violations


def test_check_report_leaves_what_the_criteria_do_not_cover():
    assert check_report([_with(group_size=4, load_bits=32, loads_async=False),  # g_s < 8: no load criterion
                         _with(launched_default=False, spill_bytes=100, load_bits=32),  # not launched
                         _with(kernel="bn_backward_kernel", mma=None, load_bits=None, loads_async=None),
                         {"kind": "aggregate", "op": "conv forward"}]) == []
    both = check_report([_with(spill_bytes=4, load_bits=32)])
    assert len(both) == 2


def test_model_best_leaves_out_configs_that_spill():
    """The model does not price spill traffic, so a spilling swept config is never an op's model-best."""
    default = _with(predicted_us=30.0, min_bytes=1000, launched_default=True)
    spilling = _with(predicted_us=10.0, spill_bytes=168, spill_instructions=40, launched_default=False)
    slower = _with(predicted_us=20.0, launched_default=False)
    call = type("Call", (), {"op": "conv forward"})()
    conv_forward = [a for a in aggregates([(default, call)], [default, spilling, slower])
                    if a["op"] == "conv forward"]
    assert len(conv_forward) == 1
    assert conv_forward[0]["predicted_us"] == 30.0 and conv_forward[0]["predicted_us_model_best"] == 20.0
    alone = aggregates([(default, call)], [default, spilling])
    assert alone[0]["predicted_us_model_best"] == 30.0


def _aggregate(layout="channels_last/channels_last", op="conv forward", predicted_us=10.0, copy_fraction=0.8):
    return {"kind": "aggregate", "layout": layout, "shape": "C=128 H=16 g_s=8", "dtype": "bf16", "op": op,
            "predicted_us": predicted_us, "copy_fraction": copy_fraction}


def test_check_targets_holds_every_layout_to_its_bound():
    reference = [_aggregate(), _aggregate(op="conv forward+backward", predicted_us=30.0)]
    assert check_targets(reference + [_aggregate("channels_last/OIHW", predicted_us=10.5)]) == []
    slower = check_targets(reference + [_aggregate("channels_last/OIHW", predicted_us=10.6)])
    assert len(slower) == 1 and "1.06x" in slower[0] and "channels_last/OIHW" in slower[0]
    nchw = [_aggregate("NCHW/OIHW", copy_fraction=0.5), _aggregate("NCHW/channels_last", copy_fraction=0.49),
            _aggregate("NCHW/OIHW", op="conv forward+backward", copy_fraction=0.39),
            _aggregate("NCHW/OIHW", op="smoothing step forward+backward over its 18-pass floor", copy_fraction=0.4)]
    misses = check_targets(reference + nchw)
    assert len(misses) == 2 and "NCHW/channels_last" in misses[0] and "0.49" in misses[0], misses
    assert "conv forward+backward: 0.39" in misses[1]


def test_committed_report_covers_every_layout_shape_dtype_and_kernel():
    report = _committed()
    rows = [r for r in report["rows"] if r["kind"] == "kernel"]
    aggs = [r for r in report["rows"] if r["kind"] == "aggregate"]
    assert all(set(ROW_FIELDS) <= set(r) for r in rows)
    assert all(set(AGGREGATE_FIELDS) <= set(r) for r in aggs)
    assert {r["layout"] for r in rows} == set(LAYOUTS)
    want = {"conv2d_gather_kernel", "conv2d_grad_weight_kernel", "bn_relu_residual_kernel",
            "bn_relu_grad_sums_kernel", "bn_backward_kernel"}
    for c, h, gs in SHAPES:
        for dtype in DTYPES:
            here = [r for r in rows if (r["C"], r["H"], r["group_size"], r["dtype"], r["layout"]) == (
                c, h, gs, dtype, LAYOUTS[0])]
            launched = [r for r in here if r["launched_default"]]
            assert want <= {r["kernel"] for r in launched}, (c, h, gs, dtype)
            for layout in LAYOUTS[1:]:
                assert {"relayout_kernel"} | want <= {r["kernel"] for r in rows if r["launched_default"] and (
                    r["C"], r["H"], r["group_size"], r["dtype"], r["layout"]) == (c, h, gs, dtype, layout)}
            variants = {r["variant"] for r in launched if r["kernel"] == "conv2d_gather_kernel"}
            # fp32 trains through the adjoint weight (conv_launch.adjoint_weight_wanted), 16-bit through the weight
            plain = {"forward", "grad input"} if dtype != "fp32" else {"forward, writes the adjoint weight",
                                                                       "grad input, adjoint weight"}
            assert plain <= variants and len(variants) >= 8, variants
            assert any(not r["launched_default"] for r in here), "autotune-list configs missing"
            for layout in LAYOUTS:
                ops = {a["op"] for a in aggs if (a["C"], a["H"], a["group_size"], a["dtype"], a["layout"]) == (
                    c, h, gs, dtype, layout)}
                assert {"conv forward", "conv forward+backward"} <= ops and any("18-pass" in op for op in ops)
    for r in rows:
        assert r["predicted_us"] == pytest.approx(max(r["t_bytes_us"], r["t_issue_us"], r["t_mma_us"]))
        assert 0 < r["copy_fraction"] <= 1 + 1e-9
        if r["kernel"].startswith("conv2d_"):
            assert r["mma"] and r["loop_instructions"] > 0 and r["load_bits"] in (16, 32, 64, 128)


def test_committed_report_states_its_violations():
    """The violations recorded in the report are exactly what check_report finds in its rows, and there are
    none: in every layout no launched config spills, and for g_s >= 8 every MMA kernel's main-loop operand loads
    are at least 64-bit and async, fp32 and bf16."""
    report = _committed()
    assert report["violations"] == check_report(report["rows"]) == []


def test_committed_report_states_its_layout_target_misses():
    """The layout targets' misses recorded are exactly what check_targets finds in its aggregate rows."""
    report = _committed()
    aggs = [r for r in report["rows"] if r["kind"] == "aggregate"]
    assert report["target_misses"] == check_targets(aggs)


@pytest.mark.skipif(importlib.util.find_spec("triton.backends.nvidia") is None,
                    reason="triton has no NVIDIA backend here")
def test_report_regenerates_like_the_committed_one(tmp_path):
    """One shape, fp32, launched configs only, regenerated: the same rows as the committed report's
    (a kernel or launcher change that alters the codegen must come with a regenerated report). Only against a
    report written by the same Triton version: another release compiles the same kernels differently."""
    committed = _committed()
    _skip_unless_same_triton(committed["meta"].get("triton"))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-m", "tools.compile_check", "--report-quick", "--dtypes", "fp32",
                           "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=600, cwd=_ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with open(tmp_path / "codegen-sm90.json") as f:
        fresh = json.load(f)
    assert fresh["meta"]["triton"] == committed["meta"]["triton"], fresh["meta"]
    c, h, gs = QUICK_SHAPES[0]

    def launched(report):
        return {(r["kernel"], r["variant"], r["config"]): r for r in report["rows"]
                if r["kind"] == "kernel" and r["launched_default"] and r["dtype"] == "fp32"
                and (r["C"], r["H"], r["group_size"]) == (c, h, gs) and r["layout"] in QUICK_LAYOUTS}

    new, old = launched(fresh), launched(committed)
    assert new.keys() == old.keys()
    for key in new:
        assert {f: new[key][f] for f in _STABLE} == {f: old[key][f] for f in _STABLE}, key
        assert new[key]["predicted_us"] == pytest.approx(old[key]["predicted_us"])
    assert fresh["violations"] == check_report(fresh["rows"])
    assert set(fresh["violations"]) <= set(committed["violations"])
