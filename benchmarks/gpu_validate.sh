#!/usr/bin/env bash
# Everything CUDA of torchext on a GPU machine in one call of at most 8 minutes, build included,
# the evidence in one folder.
#
#   bash benchmarks/gpu_validate.sh OUT              # on the GPU machine, from a clean checkout
#   bash benchmarks/gpu_validate.sh --dry-run OUT    # anywhere: runs what needs no GPU (CI does)
#   options: --no-build   reuse the torchext/_C*.so (the library) already built in place
#            --budget S   the whole run's seconds (default 480; a dry run's limits are 4 times
#                         the table's, its budget 1920)
#
# Needs python3 with a CUDA build of torch, nvcc, ninja, setuptools, pytest; compute-sanitizer and
# cuobjdump (the CUDA toolkit's) for their steps. No network and no pip: the extension is built in
# place (setup.py build_ext --inplace, USE_CUDA=1 so that a build without CUDA kernels fails) and
# imported from the repository root through PYTHONPATH.
#
# Steps run in order of evidence per second. Each has a limit: SIGINT at the limit minus 5 s
# (pytest then prints its summary, the bandwidth script its markdown), SIGKILL at the limit; the
# whole run also stops at --budget, and the steps it cannot fit are written "skipped (budget)".
# Each step's line goes to OUT/summary.txt the moment it ends. Estimates for one H200 machine
# (16 cores, ~4.3 TB/s): they add up to ~4.5 minutes, the limits to 480 s:
#
#   step        estimate  limit  what
#   env              2 s    5 s  nvidia-smi, nvcc and torch versions (to logs.txt)
#   build           70 s  115 s  USE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16, in place
#   kernels          5 s   15 s  every operator has a CUDA kernel; every device kernel's name
#                                contains the sanitizers' filter (cuobjdump)
#   cases           12 s   30 s  sanitize_cases.py: every kernel path against float64
#   bandwidth       15 s   35 s  gpu_bandwidth.py: GB/s beside copy_, neg, mul; issue 17's goals
#   tests           45 s   70 s  pytest -k "cuda and not compile and not opcheck"
#   control          8 s   15 s  initcheck flags a torchext kernel reading uninitialized memory
#                                (so the --kernel-name filter reaches our kernels)
#   memcheck        20 s   35 s  compute-sanitizer on torchext's kernels only, over sanitize_cases
#   racecheck       15 s   25 s
#   initcheck       20 s   35 s
#   opcheck         12 s   20 s  pytest -k "cuda and (opcheck or graph_capture)": opcheck, CUDA graphs
#   compile         25 s   30 s  pytest -k "cuda and compile_fullgraph": torch.compile (Inductor)
#   large           15 s   25 s  gpu_large.py: every op at 2^31+5 elements
#   bench           15 s   25 s  python -m torchext bench --device cuda, one cell
#
# OUT gets at most 8 files (what the device tool brings back): summary.txt, logs.txt (every
# step's log, in order), sanitizers.txt (each tool's verdict and first reports),
# gpu_bandwidth.csv and .md, bench.csv and .md. In a dry run the steps that need a GPU are written
# "skipped (no GPU, dry run)" and run a CPU smoke version instead where they have one (the same
# scripts, arguments and case lists, small and on the CPU), so that they cannot rot; a dry run
# builds only when torchext does not import, with setup.py's defaults, outside the budget.
# Exit code: 0 when every step that ran passed (a dry run included), else 1.
# shellcheck disable=SC2317  # the cmd_* functions are called by name, from step
set -uo pipefail

usage() { echo "usage: bash benchmarks/gpu_validate.sh [--dry-run] [--no-build] [--budget S] OUT" >&2; exit 2; }
DRY=0 BUILD=1 BUDGET='' OUT=
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --no-build) BUILD=0 ;;
    --budget) [ $# -ge 2 ] || usage; BUDGET=$2; shift ;;
    -*) usage ;;
    *) [ -z "$OUT" ] || usage; OUT=$1 ;;
  esac
  shift
done
[ -n "$OUT" ] || usage
# A dry run is not held to the lease: its steps get 4 times their limits (CI machines are slow
# and busy), so that a timing never fails CI.
SCALE=1
[ "$DRY" = 1 ] && SCALE=4
BUDGET=${BUDGET:-$((480 * SCALE))}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
cd "$(dirname "$0")/.." || exit 2

export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
for dir in "${CUDA_HOME:-/usr/local/cuda}/bin" /usr/local/cuda/bin /usr/local/cuda/compute-sanitizer; do
  [ -d "$dir" ] && PATH=$PATH:$dir  # compute-sanitizer and cuobjdump, where nvcc's folder is not on PATH
done
FILTER=torchext  # in every torchext kernel's name, mangled (8torchext) or not; in no torch kernel
SANITIZE=(compute-sanitizer --kernel-name "kns=$FILTER" --error-exitcode 9 --print-limit 20)
TESTS_K="cuda and not compile and not opcheck"
OPCHECK_K="cuda and (opcheck or graph_capture)"
COMPILE_K="cuda and compile_fullgraph"
GRACE=5
START=$SECONDS
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
SUMMARY=$OUT/summary.txt LOGS=$OUT/logs.txt SANITIZERS=$OUT/sanitizers.txt
: >"$SUMMARY"; : >"$LOGS"; : >"$SANITIZERS"
FAILED=0 ABORT='' LAST_RC=-
# A process started with SIGINT ignored (a background job of a non-interactive shell) keeps it
# ignored, and Python then installs no KeyboardInterrupt handler: set it back to the default.
UNIGNORE_INT='import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])'

record() {  # record NAME RC SECONDS VERDICT: one line of the summary, at once
  printf '%-10s rc=%-4s %4s s  %s\n' "$1" "$2" "$3" "$4" | tee -a "$SUMMARY"
}

verdict() {  # verdict NAME LOG RC: one line saying how the step went
  local line
  case $1 in
    memcheck|racecheck|initcheck|control)
      if ! grep -aq 'ERROR SUMMARY' "$2"; then
        line="no sanitizer verdict: $(grep -a -v '^[[:space:]]*$' "$2" | tail -n 1)"
      elif [ "$1" != control ]; then
        line="$(grep -a 'ERROR SUMMARY' "$2" | tail -n 1 | sed 's/^=* *//'); $(grep -a '^sanitize_cases:' "$2" | tail -n 1)"
      elif grep -aqi 'uninitialized .*memory read' "$2"; then
        line="initcheck flagged the control's uninitialized reads in a torchext kernel: the filter works"
      else
        line="initcheck did NOT flag the control: --kernel-name kns=$FILTER checks nothing, the sanitizer verdicts are void"
      fi ;;
    build)
      if [ "$3" = 0 ]; then line="built in place"; else
        line=$(grep -a -m 1 -E 'error|Error|fatal' "$2" || tail -n 1 "$2"); fi ;;
    *) line=$(grep -a -v '^[[:space:]]*$' "$2" | tail -n 1) ;;
  esac
  printf '%s' "$line" | tr -d '\r' | sed 's/\x1b\[[0-9;]*m//g' | cut -c 1-200
}

append_log() {  # append_log NAME LOG: into logs.txt, at most ~2 MB of it (its head and its end)
  {
    echo "===== $1 ($(date -u +%H:%M:%S) UTC) ====="
    if [ "$(wc -c <"$2")" -gt 2000000 ]; then
      head -c 200000 "$2"; echo; echo "[... cut ...]"; tail -c 1800000 "$2"
    else
      cat "$2"
    fi
    echo
  } >>"$LOGS"
}

# step NAME LIMIT KIND: runs the command the function cmd_NAME puts in CMD. KIND gpu: in a dry run,
# written "skipped (no GPU, dry run)" and its CPU smoke version (cmd_NAME sets CMD empty if none)
# runs instead.
step() {
  local name=$1 limit=$(($2 * SCALE)) kind=$3 note="" left rc secs log="$WORK/$1.log" t0
  LAST_RC=-
  if [ -n "$ABORT" ]; then record "$name" - 0 "skipped ($ABORT)"; return; fi
  left=$((BUDGET - (SECONDS - START)))
  if [ "$left" -lt 10 ]; then record "$name" - 0 "skipped (budget)"; return; fi
  [ "$limit" -le "$left" ] || limit=$left
  CMD=()
  "cmd_$name"
  if [ "$DRY" = 1 ] && [ "$kind" = gpu ]; then
    note="skipped (no GPU, dry run)"
    if [ ${#CMD[@]} -eq 0 ]; then record "$name" - 0 "$note"; return; fi
    note="$note; CPU smoke: "
  fi
  t0=$SECONDS
  echo "\$ $(printf '%q ' "${CMD[@]}")" >"$log"
  timeout -s INT -k "$GRACE" "$((limit - GRACE))" "$PY" -c "$UNIGNORE_INT" "${CMD[@]}" >>"$log" 2>&1
  rc=$?
  secs=$((SECONDS - t0))
  local v; v=$(verdict "$name" "$log" "$rc")
  case $rc in
    124|137) v="TIMEOUT at ${limit} s; $v" ;;
  esac
  if [ "$name" = control ]; then  # the control passes when initcheck reports its errors
    if [ "$rc" = 9 ] && [[ $v != *NOT* ]]; then rc=0; else rc=1; fi
  fi
  LAST_RC=$rc
  [ "$rc" = 0 ] || FAILED=1
  record "$name" "$rc" "$secs" "$note$v"
  append_log "$name" "$log"
  case $name in
    memcheck|racecheck|initcheck|control)
      { echo "== $name: rc=$rc, $v"; grep -a '^=========' "$log" | head -n 60; echo; } >>"$SANITIZERS" ;;
  esac
}

# ---- the steps: each cmd_NAME sets CMD (for a dry run, its CPU smoke version or nothing) --------

dry() { [ "$DRY" = 1 ]; }

cmd_env() {
  CMD=(bash -c "nvidia-smi || true; nvcc --version || true; command -v compute-sanitizer cuobjdump || true
    $PY -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"gpu\", torch.cuda.is_available() and torch.cuda.get_device_name())'")
}

cmd_build() {
  CMD=(env USE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
       "$PY" setup.py build_ext --inplace)
  # A dry run builds only what is missing, with setup.py's defaults (CUDA where it can).
  dry && CMD=(env MAX_JOBS="${MAX_JOBS:-2}" "$PY" setup.py build_ext --inplace)
}

cmd_kernels() {
  local key=CUDA
  dry && key=CPU
  CMD=("$PY" benchmarks/gpu_cases.py kernels --key "$key" --sanitizer-filter "$FILTER")
}

cmd_cases() {
  CMD=("$PY" benchmarks/sanitize_cases.py)
  dry && CMD+=(--device cpu --dry-run)
}

cmd_bandwidth() {
  CMD=("$PY" benchmarks/gpu_bandwidth.py --out "$OUT")
  dry && CMD+=(--device cpu --sizes 2^10 --rounds 2)
}

cmd_tests() {
  CMD=("$PY" -m pytest -q -p no:cacheprovider tests -k "$TESTS_K")
}

cmd_control() {
  CMD=(env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "${SANITIZE[@]}" --tool initcheck
       "$PY" benchmarks/sanitize_cases.py --control)
  dry && CMD=()
}

# Uncached allocations for memcheck and initcheck: each tensor is its own allocation, so that an
# access past its end is out of bounds and a fresh one is uninitialized.
cmd_memcheck() {
  CMD=(env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "${SANITIZE[@]}" --tool memcheck
       "$PY" benchmarks/sanitize_cases.py)
  dry && CMD=()
}

cmd_racecheck() {
  CMD=("${SANITIZE[@]}" --tool racecheck "$PY" benchmarks/sanitize_cases.py)
  dry && CMD=()
}

cmd_initcheck() {
  CMD=(env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "${SANITIZE[@]}" --tool initcheck
       "$PY" benchmarks/sanitize_cases.py --tensor-coefs-only)
  dry && CMD=()
}

cmd_opcheck() {
  CMD=("$PY" -m pytest -q -p no:cacheprovider tests -k "$OPCHECK_K")
}

cmd_compile() {
  CMD=("$PY" -m pytest -q -p no:cacheprovider tests -k "$COMPILE_K")
}

cmd_large() {
  CMD=("$PY" benchmarks/gpu_large.py)
  dry && CMD+=(--device cpu --n 2^12+5)
}

cmd_bench() {
  local args=(--ops cubic --dtypes float32 --passes 'fwd,fwdbwd' --rounds 2 --out "$WORK/bench"
              --channels 32x197x768,64x64x56x56)
  if dry; then
    args+=(--sizes 2^10 --min-run-time 0.01)
  else
    args+=(--device cuda --sizes 2^24 --min-run-time 0.1)
  fi
  CMD=(bash -c "$PY -m torchext bench $(printf '%q ' "${args[@]}") &&
    cp '$WORK/bench/results.csv' '$OUT/bench.csv' && cp '$WORK/bench/results.md' '$OUT/bench.md'")
}

# ---- the run --------------------------------------------------------------------------------------

echo "gpu_validate: $(git rev-parse --short HEAD 2>/dev/null || echo '?') $(date -u +%FT%TZ)$([ "$DRY" = 1 ] && echo ', dry run'), budget $BUDGET s" | tee -a "$SUMMARY"
step env 5 any
if [ "$BUILD" = 0 ]; then
  record build - 0 "skipped (--no-build)"
elif dry && "$PY" -c "import torchext" 2>/dev/null; then
  record build - 0 "skipped (dry run: torchext already loads)"
elif dry; then
  step build 120 any  # 480 s: CI's machine may be slow; the budget counts from after it
  START=$SECONDS
else
  step build 115 any
fi
"$PY" -c "import torchext" 2>/dev/null || ABORT="torchext does not import (its library is not built or does not load)"
step kernels 15 any
# gpu_cases.py kernels: 0 fine, 3 only the sanitizer filter misses kernels, else kernels missing.
if ! dry && [ "$LAST_RC" != 0 ] && [ "$LAST_RC" != 3 ]; then
  ABORT="torchext has no CUDA kernels"
  echo "gpu_validate: CUDA kernels are NOT compiled in (or not registered): nothing below can run" | tee -a "$SUMMARY"
elif ! dry && [ -z "$ABORT" ] && ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  ABORT="no CUDA GPU visible; --dry-run runs what can run without one"
  FAILED=1
fi
step cases 30 gpu
step bandwidth 35 gpu
step tests 70 gpu
step control 15 gpu
step memcheck 35 gpu
step racecheck 25 gpu
step initcheck 35 gpu
step opcheck 20 gpu
step compile 30 gpu
step large 25 gpu
step bench 25 gpu
skipped=$(grep -c ' rc=- ' "$SUMMARY")
echo "gpu_validate: $([ "$FAILED" = 0 ] && echo passed || echo FAILED) in $((SECONDS - START)) s ($skipped steps skipped)" | tee -a "$SUMMARY"
exit "$FAILED"
