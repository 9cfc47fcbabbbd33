#!/usr/bin/env bash
# Runs every CUDA path of torchext on a GPU machine and collects the evidence in one folder.
#
#   bash benchmarks/gpu_validate.sh OUT_DIR
#
# Needs: torch with CUDA, nvcc, ninja, pytest (no network: nothing is downloaded). Builds torchext,
# runs the full test suite (CUDA cases included), the CUDA kernels under compute-sanitizer
# (memcheck, racecheck, initcheck), and `python -m torchext bench --device cuda` (float32 and
# bfloat16, 2^10 to 2^28). Each step has a time limit; together they stay under 10 minutes. Exit code: non-zero if any step
# failed; every step still runs, and OUT_DIR/summary.txt says which failed.
set -uo pipefail
OUT="${1:?usage: bash benchmarks/gpu_validate.sh OUT_DIR}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
status=0
summary="$OUT/summary.txt"
: >"$summary"

step() {  # step NAME TIMEOUT_S COMMAND...: runs it, logs to OUT/NAME.log, records the result
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: rc=$rc ($((SECONDS - start)) s)" | tee -a "$summary"
  [ $rc -eq 0 ] || status=1
  return $rc
}

{
  nvidia-smi
  nvcc --version
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(), torch.cuda.get_device_capability())"
} >"$OUT/env.log" 2>&1

step build 150 env MAX_JOBS="$(nproc)" python3 -m pip install --no-build-isolation --no-deps -e . || {
  echo "build failed: see $OUT/build.log" | tee -a "$summary"
  exit 1
}
step info 30 python3 -m torchext info
step tests 120 python3 -m pytest -q -p no:cacheprovider tests -m "not slow"
# Uncached allocations, so that memcheck sees the bounds of each tensor.
for tool in memcheck racecheck initcheck; do
  step "sanitizer-$tool" 60 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    compute-sanitizer --tool "$tool" --error-exitcode 9 --print-limit 20 \
    python3 benchmarks/sanitize_cases.py
done
step bench 120 python3 -m torchext bench --device cuda --dtypes float32,bfloat16 --out "$OUT/bench"
exit $status
