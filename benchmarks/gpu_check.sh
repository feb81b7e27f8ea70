#!/usr/bin/env bash
# The GPU checks of issues 2-6 as one prepared script, for a session lent the device machine:
#   device run: bash benchmarks/gpu_check.sh   (timeout ~540 s; results land in $OUT)
# It uses the image's own python3 (torch, lightning, torchmetrics, scipy, matplotlib are there).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/hadai . > "$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
export PYTHONPATH=/tmp/hadai:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
echo "== CUDA tests"; timeout 120 python3 -m pytest -q -p no:cacheprovider tests -k "cuda" 2>&1 | tail -5 | tee "$OUT/cuda_tests.txt"
echo "== benchmark suite on cuda"; timeout 240 python3 -m benchmarks --device cuda --out "$OUT/results_cuda.json" 2>&1 | tee "$OUT/bench_cuda.txt"
echo "== callback overhead"; timeout 180 python3 -m benchmarks.gpu_overhead --out "$OUT/results_gpu_overhead.json" 2>&1 | grep -v Warning | tail -8 | tee "$OUT/overhead.txt"
