#!/usr/bin/env bash
# GPU checks for issue 15, in under 10 minutes on one GPU: the GPU-relevant tests, then
# benchmarks/gpu_check.py (CUDA graphs vs the plain inverse at the ImageNet 64 configuration) and
# benchmarks/scale.py on cuda. Output goes to benchmarks/results/ (commit it with the machine named).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/results
mkdir -p "$OUT"
PY=${PYTHON:-python3}
# torch with CUDA: use the one installed if it sees a GPU, else install the project's requirements.
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  "$PY" -m pip install -q -r requirements.txt
fi
"$PY" -m pip install -q pytest 2>/dev/null || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu_machine.txt"
timeout 240 "$PY" -m pytest -q tests/test_cuda_engine.py tests/test_jacobi.py tests/test_sampling.py \
  2>&1 | tail -5 | tee "$OUT/gpu_tests.txt"
timeout 240 "$PY" benchmarks/gpu_check.py --images 16 --tokens 64 --out "$OUT"
timeout 120 "$PY" benchmarks/scale.py --device cuda --images 1 4 16 --tokens 32 --plain \
  --json "$OUT/scale_cuda.json" | tee "$OUT/scale_cuda.txt"
