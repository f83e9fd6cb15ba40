"""The gpu_check stages that read the machine or run the package's own tools: versions, pytest selections, benchmarks.

Each ``stage(out, dry_run)`` returns the stage's result (a dict; its ``failures``, if any, fail the stage).
Subprocesses write to this process's output, which gpu_check.sh keeps as the stage's log.
"""
from __future__ import annotations

import glob
import json
import os
import platform
import shutil
import subprocess
import sys

from stage import command

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))

# pytest selections, most valuable first: (paths and options, what a dry run runs of them besides collecting)
GRAPH_TESTS = [(["tests/test_cuda_graphs.py", "tests/test_training_step_graph.py"], ["-k", "recorder or refused"])]
CUDA_TESTS = [
    (["tests/test_launch_counts.py", "tests/test_direct_call.py", "tests/test_fast_launch.py"],
     ["-k", "launch_counts_here or counter"]),
    (["tests/test_smoothing.py", "-k", "g4-oddHW or dilated-channels_last or launch or deterministic or nonfinite "
      "or shared_A_B or running_statistics or fas_transfers"], None),
    (["tests/test_conv2d_semantics.py", "tests/test_grouped_conv.py"], None),
    (["tests/test_models.py", "tests/test_seed_models.py"], None),
]


def _first_line(argv: list[str]) -> str | None:
    """The first line a tool prints for ``argv`` (e.g. --version), or None where it is missing or fails."""
    if shutil.which(argv[0]) is None and not os.path.exists(argv[0]):
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [ln.strip() for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
    release = [ln for ln in lines if "release" in ln]  # nvcc and ptxas: "Cuda compilation tools, release X.Y, ..."
    return (release or lines or [None])[0]


def _device(dry_run: bool) -> dict:
    import torch

    if dry_run:
        return {"device": "none: the stand-in sm_90 driver (tools.standin_driver)"}
    props = torch.cuda.get_device_properties(0)
    smi = _first_line(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,"
                       "clocks.mem,temperature.gpu,power.draw,power.limit", "--format=csv,noheader"])
    return {"device": props.name, "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count, "memory_GiB": round(props.total_memory / 2**30, 1),
            "l2_MB": round(getattr(props, "L2_cache_size", 0) / 2**20, 1), "nvidia_smi": smi}


def environment(out: str, dry_run: bool) -> dict:
    """Versions, the device and the compilers."""
    import torch
    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    result = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
              "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "triton": triton.__version__,
              "cuda_available": torch.cuda.is_available(), "cpus": os.cpu_count(),
              "compilers": {"nvcc": _first_line(["nvcc", "--version"]),
                            "ptxas (triton's)": _first_line([ptxas, "--version"]),
                            "gcc": _first_line(["gcc", "--version"]), "c++": _first_line(["c++", "--version"])},
              **_device(dry_run)}
    if not dry_run and not result["cuda_available"]:
        result["failures"] = ["no CUDA device visible to torch"]
    print(json.dumps(result, indent=1))
    return result


def _pytest(args: list[str], jsonl: str, extra: list[str]) -> int:
    env = dict(os.environ, GPU_CHECK_JSONL=jsonl)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_HERE, _ROOT, env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "pytest", "-p", "jsonl_report", "-p", "no:cacheprovider", "-q", "-rfE", *args,
            *extra]
    print("$", " ".join(argv[1:]), flush=True)
    return subprocess.run(argv, cwd=_ROOT, env=env).returncode


def _run_selections(out: str, name: str, selections: list, dry_run: bool) -> dict:
    """Each selection through pytest (a dry run: collected, and its quick part run), each test's outcome
    appended to OUT/NAME.jsonl as it finishes (kept if the stage runs out of time)."""
    jsonl = os.path.join(out, f"{name}.jsonl")
    open(jsonl, "w").close()
    codes = []
    if dry_run:  # every selection's files collected in one run, then the quick parts
        files = [a for args, _ in selections for a in args if a.startswith("tests/")]
        codes.append(_pytest(files, jsonl, ["--collect-only"]))
        for args, quick in selections:
            if quick is not None:
                codes.append(_pytest([a for a in args if a.startswith("tests/")], jsonl, quick))
    else:
        codes += [_pytest(args, jsonl, []) for args, _ in selections]
    with open(jsonl) as f:
        reports = [json.loads(line) for line in f if line.strip()]
    outcomes = {}
    for r in reports:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    failures = [f"{r['nodeid']}: {r['outcome']}" for r in reports if r["outcome"] in ("failed", "error")]
    failures += [f"pytest exited {c}" for c in codes if c not in (0, 5) and not failures]
    if dry_run and not outcomes.get("collected"):
        failures.append("nothing collected")
    return {"exit_codes": codes, "outcomes": outcomes, "failures": failures, "reports": f"{name}.jsonl"}


def graph_tests(out: str, dry_run: bool) -> dict:
    """The CUDA-graph step tests (tests/test_cuda_graphs.py, tests/test_training_step_graph.py)."""
    return _run_selections(out, "graphs", GRAPH_TESTS, dry_run)


def cuda_tests(out: str, dry_run: bool) -> dict:
    """A chosen subset of the test suite on CUDA: launch paths, the smoothing step, the convolutions, models."""
    return _run_selections(out, "cuda_tests", CUDA_TESTS, dry_run)


def _tool(out: str, name: str, argv: list[str]) -> dict:
    """Run a package tool writing its results under OUT/NAME/; its exit code and the JSON documents it wrote."""
    directory = os.path.join(out, name)
    os.makedirs(directory, exist_ok=True)
    argv = [*argv, "--out-dir", directory]
    print("$", " ".join(argv[1:]), flush=True)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = subprocess.run(argv, cwd=_ROOT, env=env).returncode
    documents = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        with open(path) as f:
            documents[os.path.relpath(path, out)] = json.load(f)
    failures = [f"exit code {code}"] if code else []
    if not documents:
        failures.append(f"no results written under {name}/")
    return {"exit_code": code, "documents": documents, "failures": failures}


def host_bench(out: str, dry_run: bool) -> dict:
    """The host-path benchmark: CUDA tensors on a GPU; a dry run, one repeat on the stand-in, no cold start."""
    extra = ["--device", "cpu", "--repeats", "1", "--no-cold-start"] if dry_run else [
        "--device", "cuda", "--repeats", "10"]
    return _tool(out, "host_bench", command("HOST_BENCH") + extra)


def kernel_bench(out: str, dry_run: bool) -> dict:
    """The kernel benchmark (grouped conv, smoothing step); a dry run, the grouped conv's tiny fp32 shapes on a CPU."""
    extra = ["--quick", "--ops", "grouped_conv3x3", "--dtypes", "float32"] if dry_run else [
        "--ops", "grouped_conv3x3,smoothing_step", "--dtypes", "bfloat16,float32"]
    return _tool(out, "kernel_bench", command("KERNEL_BENCH") + extra)


def model_layers_bench(out: str, dry_run: bool) -> dict:
    """The kernel benchmark's model layers (the grouped convolutions of ResNeXt-50, RegNetX-400MF, MobileNetV2,
    ConvNeXt-T), bf16, Triton and cuDNN in NCHW and channels_last; a dry run, their tiny fp32 shapes on a CPU."""
    extra = ["--quick", "--ops", "model_layers", "--dtypes", "float32"] if dry_run else [
        "--ops", "model_layers", "--dtypes", "bfloat16"]
    return _tool(out, "model_layers_bench", command("KERNEL_BENCH") + extra)


def model_bench(out: str, dry_run: bool, op: str = "train_step_mgiad", stage: str = "model_bench") -> dict:
    """A whole-model training-step benchmark, bf16 (MGiaD's by default). A dry run checks its command line only
    (``--help``, and that it names the op): off-GPU it times the torch provider alone, seconds a step."""
    argv = command("MODEL_BENCH") + ["--ops", op]
    if not dry_run:
        return _tool(out, stage, argv + ["--dtypes", "bfloat16"])
    done = subprocess.run(argv + ["--help"], cwd=_ROOT, capture_output=True, text=True)
    print(done.stdout + done.stderr, flush=True)
    failures = [] if done.returncode == 0 and op in done.stdout else [
        f"--help exited {done.returncode} or did not name {op}"]
    return {"exit_code": done.returncode, "documents": {}, "checked": "the command line", "failures": failures}


def resnext50_bench(out: str, dry_run: bool) -> dict:
    """The training step of torchvision's ResNeXt-50 32x4d converted by use_kernels, against cuDNN."""
    return model_bench(out, dry_run, "train_step_resnext50", "resnext50_bench")
