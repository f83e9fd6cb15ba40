"""The split reduction's memory order, read from the PTX of every kernel that uses the last-to-arrive merge.

``split_reduction.last_to_arrive``: each program stores its partials, a barrier, then one thread's arrival
atomic; the program that arrives last reads every partial (``ld.global.cg``, past the L1 cache). That is
correct only if the atomic releases this program's stores and acquires the others' (acq_rel at GPU scope:
other CTAs may run on other SMs), if a CTA barrier orders the other threads' stores before it (release) and
its result before their loads (acquire), and if no partial is loaded before it. Compiled for sm_90 by
``tools.compile_check``'s variants (no GPU needed), fp32 and bf16.
"""
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BARRIER = re.compile(r"^(@!?%\w+\s+)?(bar|barrier)(\.cta)?\.sync\b")
_STORE = re.compile(r"^(@!?%\w+\s+)?st\.global\b")
_PARTIAL_LOAD = re.compile(r"^(@!?%\w+\s+)?ld\.global\.cg\b")
_ATOM = re.compile(r"^(@!?%\w+\s+)?(atom\.[\w:.]+)")


def _instructions(ptx: str) -> list[str]:
    lines = (line.split("//")[0].strip() for line in ptx.splitlines())
    return [line for line in lines if line]


def _arrivals(lines: list[str]) -> list[tuple[int, set]]:
    """(line, qualifiers) of each atomic add: the arrival counters' increments."""
    found = []
    for i, line in enumerate(lines):
        m = _ATOM.match(line)
        if m and ".add." in m.group(2) + ".":
            found.append((i, set(m.group(2).split("."))))
    return found


def merge_order_problems(ptx: str) -> list[str]:
    """What in ``ptx`` breaks the merge's order (see the module docstring); [] where nothing does."""
    lines = _instructions(ptx)
    arrivals = _arrivals(lines)
    loads = [i for i, line in enumerate(lines) if _PARTIAL_LOAD.match(line)]
    if not arrivals or not loads:
        return [f"{len(arrivals)} arrival atomics and {len(loads)} partial loads: no merge found"]
    problems = []
    for i, qualifiers in arrivals:
        if "acq_rel" not in qualifiers or not qualifiers & {"gpu", "sys"}:
            problems.append(f"arrival atomic without acq_rel at GPU scope: {lines[i]}")
        stores = [j for j in range(i) if _STORE.match(lines[j])]
        if stores and not any(_BARRIER.match(lines[j]) for j in range(stores[-1], i)):
            problems.append(f"no barrier between the partial stores and the arrival atomic: {lines[i]}")
    for j in loads:
        before = [i for i, _ in arrivals if i < j]
        if not before:
            problems.append(f"a partial load before every arrival atomic: {lines[j]}")
        elif not any(_BARRIER.match(lines[k]) for k in range(before[-1], j)):
            problems.append(f"no barrier between the arrival atomic and a partial load: {lines[j]}")
    return problems


_SYNTHETIC = """
    st.global.b32 [ %rd1 + 0 ], { %r1 };
    bar.sync 	0;
    @%p1 atom.global.gpu.acq_rel.add.u32 %r2, [ %rd2 + 0 ], %r3;
    bar.sync 	0;
    @%p2 bra 	$L__BB0_2;
    @%p3 ld.global.cg.b32 { %r4 }, [ %rd3 + 0 ];
"""


@pytest.mark.parametrize("change,problem", [
    (None, None),
    (("acq_rel", "relaxed"), "without acq_rel at GPU scope"),
    ((".gpu.", ".cta."), "without acq_rel at GPU scope"),
    (("bar.sync \t0;\n@%p1", "@%p1"), "between the partial stores and the arrival atomic"),
    (("%r3;\nbar.sync \t0;", "%r3;"), "between the arrival atomic and a partial load"),
    (("st.global", "ld.global.cg.b32 { %r9 }, [ %rd9 + 0 ];\nst.global"), "before every arrival atomic"),
    (("atom.global.gpu.acq_rel.add", "atom.global.gpu.acq_rel.exch"), "no merge found"),
], ids=["correct", "relaxed", "cta-scope", "no-release-barrier", "no-acquire-barrier", "load-first", "no-arrival"])
def test_the_order_check_finds_each_planted_fault(change, problem):
    ptx = textwrap.dedent(_SYNTHETIC)
    if change is not None:
        assert change[0] in ptx, change
        ptx = ptx.replace(change[0], change[1], 1)
    problems = merge_order_problems(ptx)
    assert (problems == []) if problem is None else any(problem in p for p in problems), problems


# Compiles compile_check's variants of the merge's users, and one that does not merge, writing each PTX.
_COMPILE = """
    import json, sys
    from triton.backends.compiler import GPUTarget
    from tools import compile_check
    from mgiad_kernels.conv.launch import _fusion_modes

    no_stats = _fusion_modes()[1]["none"]
    target, out, index = GPUTarget("cuda", 90, 32), sys.argv[1], {{}}
    jobs = compile_check.jobs({dtypes}, quick=True)
    for i, (label, kernel, consts, dtype, warps, stages, maxnreg) in enumerate(jobs):
        name = getattr(kernel, "fn", kernel).__name__
        merges = (name == "conv2d_grad_weight_kernel" or name == "bn_relu_grad_sums_kernel"
                  or (name == "conv2d_gather_kernel" and consts["STATS"] != no_stats))
        if merges or label == "bn_backward fixed stats":
            compiled = compile_check._compile(kernel, consts, dtype, target, warps, stages, maxnreg)
            with open(f"{{out}}/{{i}}.ptx", "w") as f:
                f.write(compiled.asm["ptx"])
            index[f"{{i}}.ptx"] = dict(label=f"[{{dtype}}] {{label}}", kernel=name, merges=merges)
    print(json.dumps(index))
"""


@pytest.mark.skipif(importlib.util.find_spec("triton.backends.nvidia") is None,
                    reason="triton has no NVIDIA backend here")
def test_every_merge_releases_its_partials_and_acquires_the_others_at_gpu_scope(tmp_path):
    script = tmp_path / "compile_merges.py"
    script.write_text(textwrap.dedent(_COMPILE.format(dtypes=["fp32", "bf16"])))
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MGIAD_KERNELS_AUTOTUNE")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    index = json.loads(done.stdout.strip().splitlines()[-1])
    merging = {entry["kernel"] for entry in index.values() if entry["merges"]}
    assert merging == {"conv2d_gather_kernel", "conv2d_grad_weight_kernel", "bn_relu_grad_sums_kernel"}, index
    # 5 gather (smoothing A also reading an NCHW f), 5 grad weight, 2 sums; x2
    assert sum(entry["merges"] for entry in index.values()) == 24, index
    for file, entry in index.items():
        problems = merge_order_problems((tmp_path / file).read_text())
        if entry["merges"]:
            assert problems == [], (entry["label"], problems)
        else:  # a kernel with no merge has no arrival atomic: the check sees what it checks
            assert problems and "no merge found" in problems[0], (entry["label"], problems)
