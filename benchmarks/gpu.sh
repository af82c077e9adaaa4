#!/usr/bin/env bash
# The benchmarks on one GPU (H100/H200), within 10 minutes: the estimator table, EP vs BPTT memory, the
# explicit vs autograd-of-Phi table at the paper's net on cuda (with achieved TFLOP/s), and one CIFAR-10
# epoch at the paper's settings projected from measured iterations. Results go to ${OUT:-.}/gpu_*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-.}
python -c "import torch; assert torch.cuda.is_available(), 'no GPU'; print(torch.cuda.get_device_name())"
timeout 300 python benchmarks/bench.py --device cuda --batch 128 --T 250 --K 25 --steps 50 --repeats 3 \
  --estimators one-sided symmetric kp-vf c-ep bptt --sections estimators reference \
  --json "$OUT/gpu_bench.json"
timeout 120 python benchmarks/bench.py --device cuda --batch 128 --K 25 --memory-T 25 50 100 250 \
  --sections memory --json "$OUT/gpu_memory.json"
timeout 150 python benchmarks/bench.py --device cuda --repeats 2 --sections epoch --compile-mode reduce-overhead \
  --json "$OUT/gpu_epoch.json"
