"""One stage of benchmarks/gpu_check.sh in a process of its own.

    python tools/gpu_check/stage.py [--dry-run] NAME OUT

Runs the stage, then writes ``OUT/NAME.json``: {"stage", "status" ('ok' or 'failed'), "dry_run", "seconds",
"result" (what the stage found), "error"}; exits 1 where the stage failed. The shell script writes the JSON of
a stage that ran out of time or was skipped. ``--dry-run``: on this CPU, through the stand-in sm_90 driver,
tiny shapes, nothing timed (see each stage).

The package's modules are named by the environment variables the script's table sets (``module()``), so that
a module that moves is renamed in one place.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback


def module(variable: str):
    """The module named by the environment variable ``GPU_CHECK_<variable>`` (benchmarks/gpu_check.sh's table)."""
    name = os.environ.get(f"GPU_CHECK_{variable}")
    if not name:
        raise RuntimeError(f"GPU_CHECK_{variable} is not set: run the stages through benchmarks/gpu_check.sh")
    return importlib.import_module(name)


def command(variable: str) -> list[str]:
    """``python -m`` and the module (and its leading arguments) named by ``GPU_CHECK_<variable>``."""
    words = os.environ.get(f"GPU_CHECK_{variable}", "").split()
    if not words:
        raise RuntimeError(f"GPU_CHECK_{variable} is not set: run the stages through benchmarks/gpu_check.sh")
    return [sys.executable, "-m", *words]


def _stages() -> dict:
    import commands
    import launch_check

    return {"env": commands.environment, "launch": launch_check.launch_stage,
            "determinism": launch_check.determinism_stage, "graphs": commands.graph_tests,
            "cuda_tests": commands.cuda_tests, "host_bench": commands.host_bench,
            "kernel_bench": commands.kernel_bench, "model_bench": commands.model_bench,
            "model_layers_bench": commands.model_layers_bench, "resnext50_bench": commands.resnext50_bench}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="stage.py", description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("name")
    parser.add_argument("out")
    args = parser.parse_args(argv)
    stages = _stages()
    if args.name not in stages:
        parser.error(f"unknown stage {args.name!r}; stages: {', '.join(stages)}")
    start = time.perf_counter()
    doc = {"stage": args.name, "status": "ok", "dry_run": args.dry_run, "result": None, "error": None}
    try:
        doc["result"] = stages[args.name](args.out, args.dry_run)
        failures = (doc["result"] or {}).get("failures")
        if failures:
            doc["status"], doc["error"] = "failed", "; ".join(failures)[:4000]
    except Exception:  # the stage's own failure: recorded, and the next stage runs
        doc["status"], doc["error"] = "failed", traceback.format_exc()[-4000:]
        traceback.print_exc()
    doc["seconds"] = round(time.perf_counter() - start, 2)
    path = os.path.join(args.out, f"{args.name}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f, indent=1, default=str)
    os.replace(path + ".tmp", path)
    print(f"{args.name}: {doc['status']} in {doc['seconds']} s" + (f": {doc['error']}" if doc["error"] else ""))
    return 0 if doc["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
