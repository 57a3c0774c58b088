#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md in one script: CUDA-graph tests, step rows, batch/frame scaling, DDP on 2
# GPUs, and the loader on the GPU host. Results go to $OUT (default ./bench_out), one JSON per section.
#
#   bash benchmarks/gpu_suite.sh [tests] [step] [compile] [mfu] [autotune] [motionraw] [scaling] [ddp] [loader]     (no argument: all sections)
#
# Needs torch with CUDA, and PyAV for the loader section and the trainer test (pip install av). Keep NCCL's NVLink
# multicast off on shared hosts (set below). Each section is bounded by `timeout` so one slow compile cannot eat the rest.
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
sections=${*:-tests step compile mfu autotune motionraw scaling ddp loader}
B="benchmarks/bench_step.py --steps 30 --warmup 10"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
git log --oneline -1 >> "$OUT/gpu.txt" 2>/dev/null
one() { CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} "$@"; }
for s in $sections; do
  case $s in
    tests) one timeout 300 python3 -m pytest -q -m gpu tests/test_cuda_graphs.py -p no:cacheprovider 2>&1 | tail -5 ;;
    step) one timeout 300 python3 $B --json "$OUT/step.json" --rows \
        launcher-fp32-nocompile-eager,launcher-bf16-nocompile-eager,launcher-fp32-nocompile,launcher-bf16-nocompile,launcher-fp32-nocompile-ckpt,launcher-bf16-nocompile-ckpt ;;
    compile) one timeout 600 python3 $B --json "$OUT/compile.json" --rows \
        launcher-bf16,launcher-bf16-motion,launcher-fp32,launcher-fp32-ckpt ;;
    mfu) for b in 32 64; do  # compiling at these batches takes 4+ minutes: one process (and time slot) per row
           one timeout 600 python3 benchmarks/bench_step.py --steps 15 --warmup 6 --json "$OUT/mfu_b$b.json" --rows launcher-bf16-b$b
         done ;;
    autotune) one timeout 900 python3 $B --json "$OUT/autotune.json" --rows launcher-fp32-autotune,launcher-bf16-autotune ;;
    motionraw) one timeout 200 python3 $B --json "$OUT/motionraw.json" --rows launcher-bf16-motionraw-nocompile,launcher-bf16-nocompile ;;
    scaling) one timeout 400 python3 $B --json "$OUT/scaling.json" --rows \
        launcher-bf16-nocompile,launcher-bf16-nocompile-b8,launcher-bf16-nocompile-b16,launcher-bf16-nocompile-b32,launcher-bf16-nocompile-t4,launcher-bf16-nocompile-t22 ;;
    ddp) timeout 300 torchrun --standalone --nproc_per_node 2 $B --json "$OUT/ddp2.json" \
           --rows launcher-bf16-nocompile-eager,launcher-bf16-nocompile-b16-eager
         one timeout 200 python3 $B --json "$OUT/ddp1.json" --rows launcher-bf16-nocompile-eager,launcher-bf16-nocompile-b16-eager ;;
    loader) one timeout 300 python3 benchmarks/bench_loader.py --sizes 64 256 --workers 0 4 8 --seconds 5 | tee "$OUT/loader.txt" ;;
    *) echo "unknown section $s (tests step compile mfu autotune motionraw scaling ddp loader)"; exit 2 ;;
  esac
done
