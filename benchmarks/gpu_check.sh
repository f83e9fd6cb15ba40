#!/usr/bin/env bash
# Check and measure the package on a GPU machine in at most 8 minutes, compiles included (see GPU_CHECK.md).
#
#   bash benchmarks/gpu_check.sh OUT_DIR            # on a GPU
#   bash benchmarks/gpu_check.sh --dry-run OUT_DIR  # on a CPU: every stage through the stand-in sm_90 driver
#
# Each stage runs in a process of its own under `timeout` and writes OUT_DIR/<stage>.json and <stage>.log as it
# finishes, most valuable first; a stage that runs out of time loses only itself, and none starts once the
# budget (GPU_CHECK_BUDGET_S, default 460 s) has less than 15 s left. OUT_DIR/summary.json lists every stage.
# GPU_CHECK_ONLY="stage ..." runs those stages alone.
# Exits 0 when every stage passed.

# The package's tooling by module name: update here when modules move.
export GPU_CHECK_PACKAGE="mgiad_kernels"                 # GroupedConv2d, SmoothingStep
export GPU_CHECK_LAUNCH_SITES="mgiad_kernels.runtime.launch_sites"
export GPU_CHECK_STANDIN="tools.host_bench"             # triton_on_cpu(): CPU tensors on the stand-in sm_90 driver
export GPU_CHECK_HOST_BENCH="tools.host_bench"
export GPU_CHECK_KERNEL_BENCH="tools.kernel_bench"
export GPU_CHECK_MODEL_BENCH="tools.model_bench"

# stage and its time limit on a GPU, seconds
STAGES="env:30 launch:120 determinism:60 graphs:120 cuda_tests:150 host_bench:60 kernel_bench:90 model_bench:90
model_layers_bench:90 resnext50_bench:90"
# stages that check or time the warm launch path: they run with MGIAD_KERNELS_CHECK_PROMISES=0 (the switch sends
# every launch through LaunchSite.launch); the test stages check every launch's promises (tests/conftest.py)
WARM_STAGES=" launch host_bench kernel_bench model_bench model_layers_bench resnext50_bench "
# stages run only with budget to spare: skipped for time, they do not fail the check
OPTIONAL_STAGES=" model_layers_bench resnext50_bench "

set -u
if [[ -n ${GPU_CHECK_ONLY:-} ]]; then  # e.g. GPU_CHECK_ONLY="launch determinism": those stages alone
  STAGES=$(for entry in $STAGES; do [[ " $GPU_CHECK_ONLY " == *" ${entry%%:*} "* ]] && echo "$entry"; done | xargs)
fi
DRY=()
if [[ ${1:-} == --dry-run ]]; then DRY=(--dry-run); shift; fi
if [[ $# -ne 1 ]]; then echo "usage: bash benchmarks/gpu_check.sh [--dry-run] OUT_DIR" >&2; exit 2; fi
OUT=$1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
cd "$ROOT" || exit 2
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [[ ${#DRY[@]} -gt 0 ]]; then unset TRITON_INTERPRET; export MGIAD_KERNELS_AUTOTUNE=0; fi
START=$(date +%s)
DEADLINE=$((START + ${GPU_CHECK_BUDGET_S:-460}))
FAILED=0

stage_json() {  # name status seconds message: what the shell knows of a stage that wrote no JSON
  printf '{"stage": "%s", "status": "%s", "dry_run": %s, "seconds": %s, "result": null, "error": "%s"}\n' \
    "$1" "$2" "$([[ ${#DRY[@]} -gt 0 ]] && echo true || echo false)" "$3" "$4" > "$OUT/$1.json"
}

for entry in $STAGES; do
  name=${entry%%:*} limit=${entry##*:}
  left=$((DEADLINE - $(date +%s)))
  rm -f "$OUT/$name.json"
  if ((left < 15)); then
    stage_json "$name" skipped 0 "out of time: ${left} s of the budget left"
    [[ $OPTIONAL_STAGES == *" $name "* ]] || FAILED=1
    continue
  fi
  ((limit > left)) && limit=$left
  echo "== $name (at most $limit s)"
  t0=$(date +%s)
  warm=(); [[ $WARM_STAGES == *" $name "* ]] && warm=(env MGIAD_KERNELS_CHECK_PROMISES=0)
  timeout -k 10 "$limit" ${warm[@]+"${warm[@]}"} python tools/gpu_check/stage.py "${DRY[@]}" "$name" "$OUT" \
    > "$OUT/$name.log" 2>&1
  rc=$? seconds=$(($(date +%s) - t0))
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    stage_json "$name" timeout "$seconds" "stopped after $limit s (see $name.log)"
  elif [[ ! -f $OUT/$name.json ]]; then
    stage_json "$name" failed "$seconds" "exit code $rc and no JSON (see $name.log)"
  fi
  ((rc != 0)) && FAILED=1
  tail -n 1 "$OUT/$name.log"
done

python - "$OUT" "$STAGES" "$(($(date +%s) - START))" <<'EOF'
import json, os, sys
out, stages, seconds = sys.argv[1], [s.split(":")[0] for s in sys.argv[2].split()], int(sys.argv[3])
docs = [json.load(open(os.path.join(out, f"{name}.json"))) for name in stages]
summary = {"seconds": seconds, "stages": {d["stage"]: {"status": d["status"], "seconds": d["seconds"]} for d in docs}}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
for d in docs:
    print(f"{d['stage']:<14} {d['status']:<8} {d['seconds']:>7} s")
print(f"total {seconds} s")
EOF
exit $FAILED
