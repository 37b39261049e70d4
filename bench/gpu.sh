#!/usr/bin/env bash
# The GPU benchmark pass, prepared to finish in about 5 minutes on one H100/H200. First a one-minute
# smoke (bench/gpu_smoke.py: every stage, generator and the evaluation once, bf16 + compile + flash-attn
# when installed) so that a crash shows before any timing; then, most important first: training step
# (dense vs projected vs chunked CE, bf16), sampling (eager), then the training step compiled,
# flash-attn (when installed) and sampling with compiled networks and CUDA graphs. Results land in
# bench/results/*_cuda*.json and bench/results/gpu_smoke.json; tables print to stdout.
# Usage: bash bench/gpu.sh   (from the repository root, with the package installed)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY bench/gpu_smoke.py --device cuda --json bench/results/gpu_smoke.json || echo "gpu smoke: FAILURES above; continuing"
$PY bench/train_step.py --device cuda --rounds 1 --json bench/results/train_step_cuda.json
$PY bench/sampling.py --device cuda
$PY bench/train_step.py --device cuda --rounds 1 --paths projected projected+chunked-CE --compile \
  --json bench/results/train_step_cuda_compile.json
if $PY -c "import flash_attn" 2>/dev/null; then
  $PY bench/train_step.py --device cuda --rounds 1 --paths projected+chunked-CE --attn flash \
    --json bench/results/train_step_cuda_flash.json
else
  echo "flash-attn not installed: skipping the flash-attn row"
fi
$PY bench/sampling.py --device cuda --compile --cuda-graphs
