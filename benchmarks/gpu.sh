#!/usr/bin/env bash
# The GPU check, within 10 minutes on one H100/H200; every figure into $OUT (default benchmarks/gpu_out):
#   1. gpu_env.json       torch, CUDA, NCCL, the GPU, the host CPU
#   2. gpu_bench.json     the estimator table on the paper's net: eager and compiled, fp32 and bf16
#   3. gpu_memory.json    EP vs BPTT peak memory against T
#   4. run-ce-symmetric/  one real CIFAR-10 epoch of ce-symmetric at the paper's settings, end to end
#                         (metrics.jsonl: epoch_seconds, and first_step_seconds = the first call's compile)
#   5. run-cifar10-cpu/   the recipe preset's seconds per epoch on the GPU
#   6. gpu_graphs.json    the projected ce-symmetric epoch, compiled as above and with CUDA graphs
#                         (torch.compile mode reduce-overhead), side by side
#   7. run-resnet13/      the Hopfield-ResNet13 preset at full width: 20 iterations and 1,000 test images
#   8. gpu_ddp.json       a two-process accelerate launch (NCCL, two GPUs), or why it did not run
#   9. gpu.json           all of it, collated and printed as a table
# Usage:
#   bash benchmarks/gpu.sh --data-root .gpu_data/cifar10-jpeg.tar.gz    # on the GPU machine
#   bash benchmarks/gpu.sh --dry-run                                    # on the CPU, tiny sizes (CI runs it)
#   bash benchmarks/gpu.sh --only graphs,resnet13 --data-root ...       # some steps (env always runs)
# The device machine sees only the repository: copy ../shared/data/cifar10-jpeg.tar.gz into an ignored
# folder of it (e.g. .gpu_data/, listed in .git/info/exclude) and carry that folder. Without
# --data-root, steps 4-5 are skipped and say so.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/gpu_out}
DRY=0
DATA=""
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --data-root) DATA="$2"; shift ;;
    --only) ONLY=",$2,"; shift ;;
    *) echo "gpu.sh: unknown argument $1 (expected --dry-run, --data-root PATH, --only STEP,...)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ "$DRY" = 1 ]; then
  DEV=cpu
  BENCH=(--device cpu --arch digits --batch 8 --T 5 --K 2 --steps 2 --repeats 1 --eager-only)
  EST=(one-sided symmetric bptt)
  MEM=(--memory-T 5 10)
  EPOCH=(--preset digits-ce-symmetric --dataset digits --epochs 1 --train-subset 128 --test-subset 64 --T 5 --K 2 --no-compile --cpu)
  RECIPE=(--preset digits-ce-symmetric --epochs 1 --train-subset 128 --test-subset 64 --T 5 --K 2 --no-compile --cpu)
  DDP=(--preset digits-ce-symmetric --epochs 1 --train-subset 128 --test-subset 64 --T 5 --K 2 --no-compile --cpu)
  GRAPHS=(--device cpu --arch digits --repeats 1)
  # a tiny CIFAR-shaped image tree (32x32 RGB, 10 classes) for the 32x32 preset, narrowed to 4 channels
  python -c "
import sys, torch
from pathlib import Path
from PIL import Image
g = torch.Generator().manual_seed(0)
for split, n in (('train', 4), ('test', 2)):
    for c in range(10):
        d = Path(sys.argv[1]) / split / f'class{c}'
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()).save(d / f'{i}.png')
" "$OUT/tiny-cifar"
  RESNET=(--preset cifar10-hopfield-resnet13 --data-root "$OUT/tiny-cifar" --cache-dir "$OUT/cache" --channels 4 4 4 4 4 4 4 4
    --epochs 1 --T 3 --K 2 --batch-size 8 --no-compile --cpu)
  LIMIT=60
else
  DEV=cuda
  python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "gpu.sh: no GPU (use --dry-run on a CPU)" >&2; exit 2; }
  BENCH=(--device cuda --batch 128 --T 250 --K 25 --steps 50 --repeats 3 --compiled-estimators symmetric bptt)
  EST=(one-sided symmetric kp-vf holomorphic bptt)
  MEM=(--memory-T 25 100 250)
  EPOCH=(--preset ce-symmetric --epochs 1 --data-root "$DATA")
  RECIPE=(--preset cifar10-cpu --epochs 1 --data-root "$DATA")
  DDP=(--preset ce-symmetric --epochs 1 --train-subset 2560 --test-subset 1000 --T 50 --K 10 --data-root "$DATA")
  GRAPHS=(--device cuda --repeats 2)
  RESNET=(--preset cifar10-hopfield-resnet13 --epochs 1 --train-subset 2560 --test-subset 1000 --data-root "$DATA")
  LIMIT=300
fi
# the time limits add up to 555 s on a GPU (bench 120, memory 45, epoch 300, recipe 90; the two-GPU
# launch 60 more), the whole script within 10 minutes; graphs (120) and resnet13 (120) make 795 s, so on
# one 10-minute call run them apart: --only graphs,resnet13. A step that overruns is cut and reported

step() { # name, then the command: runs it under its time limit, never stops the script
  local name=$1; shift
  if [ -n "$ONLY" ] && [ "$name" != env ] && [[ "$ONLY" != *",$name,"* ]]; then return; fi
  echo "== $name"
  local t0=$SECONDS
  "$@" 2>&1 | tail -n 40
  local rc=${PIPESTATUS[0]}
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}" >> "$OUT/steps.jsonl"
}
rm -f "$OUT/steps.jsonl"

step env python -c "
import json, torch
from ep_compile.machine import describe
d = describe()
d['nccl'] = '.'.join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else None
open('$OUT/gpu_env.json', 'w').write(json.dumps(d, indent=1)); print(d)"
step bench timeout 120 python benchmarks/bench.py "${BENCH[@]}" --estimators "${EST[@]}" --precisions fp32 bf16 \
  --sections estimators --json "$OUT/gpu_bench.json"
step memory timeout 45 python benchmarks/bench.py "${BENCH[@]}" --sections memory "${MEM[@]}" --json "$OUT/gpu_memory.json"
if [ "$DRY" = 1 ] || [ -n "$DATA" ]; then
  step epoch timeout "$LIMIT" python experiments/cifar.py "${EPOCH[@]}" --out "$OUT/run-ce-symmetric" --overwrite
  step recipe timeout 90 python experiments/cifar.py "${RECIPE[@]}" --out "$OUT/run-cifar10-cpu" --overwrite
else
  echo "== epoch, recipe: skipped (no --data-root)"
fi
step graphs timeout 120 python benchmarks/bench.py "${GRAPHS[@]}" \
  --sections epoch --compile-modes default reduce-overhead --json "$OUT/gpu_graphs.json"
if [ "$DRY" = 1 ] || [ -n "$DATA" ]; then
  step resnet13 timeout 120 python experiments/cifar.py "${RESNET[@]}" --out "$OUT/run-resnet13" --overwrite
fi
GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
# the dry run launches two CPU processes (gloo) with the same line as two GPUs (NCCL)
if [ "$DRY" = 1 ] || { [ "$GPUS" -ge 2 ] && [ -n "$DATA" ]; }; then
  step ddp timeout "$([ "$DRY" = 1 ] && echo 120 || echo 60)" accelerate launch --multi_gpu --num_processes 2 \
    experiments/cifar.py "${DDP[@]}" --out "$OUT/run-ddp" --overwrite
  cp "$OUT/run-ddp/ranks.json" "$OUT/gpu_ddp.json" 2>/dev/null
else
  echo "{\"ran\": false, \"why\": \"$GPUS GPU(s): NCCL needs one GPU per process, so two processes need two GPUs\"}" \
    > "$OUT/gpu_ddp.json"
  echo "== ddp: not run ($GPUS GPU(s); NCCL needs one GPU per process)"
fi
python benchmarks/gpu_report.py "$OUT" --dry-run "$DRY"
