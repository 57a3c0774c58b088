#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md in one script: CUDA-graph tests, step rows, batch/frame scaling, DDP on 2
# GPUs, and the loader on the GPU host. Results go to $OUT (default ./bench_out), one JSON per section.
#
#   bash benchmarks/gpu_suite.sh [tests] [step] [compile] [mfu] [autotune] [motionraw] [scaling] [ddp] [loader]     (no argument: these)
#   bash benchmarks/gpu_suite.sh round2      (issue 19: the original, then the launcher as shipped, set-up, batch rows)
#   bash benchmarks/gpu_suite.sh profile     (issue 19: a kernel-by-kernel profile of the launcher's batch-4 step)
#   bash benchmarks/gpu_suite.sh round3      (issue 19: fused norms, whole-player compilation, fp32 checkpointing; repeats)
#   bash benchmarks/gpu_suite.sh round4      (issue 19: the original, then whole-player compilation in fp32 and at batch 32)
#   bash benchmarks/gpu_suite.sh diag        (issue 19: each conv alone, profiles of the eager and compiled step, compiled fp32)
#   bash benchmarks/gpu_suite.sh codes       (issue 19: --compile with the WuBu codes uncompiled, cold and repeat, beside whole-player compilation)
#   bash benchmarks/gpu_suite.sh round5      (issue 19: the original, whole-player compilation, with --channels_last_maps and
#                                             --split_norm_stats, and with the first alone; GroupNorm alone)
#   bash benchmarks/gpu_suite.sh round6      (issue 19: the original, fp32 compiled, bf16 compiled at batch 32)
#   bash benchmarks/gpu_suite.sh cols        (issue 19: the 3-channel convs as patches + a 1x1x1 conv, or taps, against cuDNN)
#   bash benchmarks/gpu_suite.sh setup       (issue 19: compiled set-up cold and repeated, cuDNN timing fewer candidates; the shipped path too)
#   bash benchmarks/gpu_suite.sh bars        (issue 19: cost against batch and frames, the motion branch with cached flow)
#   bash benchmarks/gpu_suite.sh kernels     (the fp32 output conv: taps against cuDNN alone and in the step; copies)
#   bash benchmarks/gpu_suite.sh ddpscale ddpcurve     (issue 7, on a machine with 4 or 8 GPUs: DDP on 1, 2, 4, 8 GPUs)
#
# ddpscale: bench_step rows (bf16, eager kernels, equal per-GPU batch; DDP_ROWS overrides) on 1 GPU, then under torchrun
#   on 2, 4 and 8 GPUs as far as the machine has them, with each step's compute / exposed all-reduce breakdown, and the
#   table of ddp_report.py. ddpcurve: CURVE_STEPS (500) training steps of the launcher preset on the synthetic demo footage
#   with N GPUs at batch 4 each and on one GPU at batch 4N (the same global batch), and the curves' comparison.
#
# Needs torch with CUDA, and PyAV for the loader section and the trainer test (pip install av). Keep NCCL's NVLink
# multicast off on shared hosts (set below). Each section is bounded by `timeout` so one slow compile cannot eat the rest.
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
# the GPU image lacks tomli-w (the config loader's) and PyAV: carried wheels (.whl) go into a site of their own once
site=/tmp/wubugen_site
if ! python3 -c "import tomli_w" 2>/dev/null && [ -d .whl ]; then
  [ -d "$site" ] || python3 -m pip install --quiet --no-index --no-deps --target "$site" .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:$site"
fi
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
sections=${*:-tests step compile mfu autotune motionraw scaling ddp loader}
B="benchmarks/bench_step.py --steps 30 --warmup 10"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
git log --oneline -1 >> "$OUT/gpu.txt" 2>/dev/null
one() { CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} "$@"; }
for s in $sections; do
  case $s in
    tests) one timeout 300 python3 -m pytest -q -m gpu tests/ -p no:cacheprovider 2>&1 | tail -5 ;;
    round2)  # issue 19: the original script (ref.py and bench_ref.py copied into .gpu/original), then the launcher's rows
      # as it now ships (plain backbone, eager kernels, CUDA graphs), a repeat run for set-up, and larger batches for MFU
      [ -f .gpu/original/ref.py ] && one timeout 150 bash .gpu/original/run_launcher.sh | tee "$OUT/original.txt"
      # -b4: the issue's batch (the launcher preset's is 8 now; the call of 2026-12-02 ran these rows at 8 by mistake)
      # (the WuBu parts' cost: no region codes, no region FiLM); R2_ROWS overrides the first list
      one timeout 200 python3 $B --json "$OUT/r2_rows.json" --rows \
        ${R2_ROWS:-launcher-bf16-b4,launcher-fp32-b4,launcher-bf16-b4-nocodes,launcher-bf16-b4-nocodes-nofilm}
      one timeout 60 python3 $B --json "$OUT/r2_repeat.json" --rows launcher-bf16-b4
      one timeout 150 python3 benchmarks/bench_step.py --steps 15 --warmup 6 --json "$OUT/r2_batch.json" --rows \
        ${R2_BATCH:-launcher-bf16-b32,launcher-bf16-b64} ;;
    profile)  # issue 19's next question: where the launcher's b4 step spends its GPU time, kernel by kernel (eager
      # steps: a replayed graph hides its kernels from the profiler); one archive (the device tool brings back 8 files)
      one timeout 240 python3 $B --json "$OUT/prof_rows.json" --profile /tmp/prof --rows \
        ${PROF_ROWS:-launcher-bf16-b4-eager,launcher-bf16-b4-nocodes-eager,launcher-bf16-b4-cnorm-eager}
      (cd /tmp && tar czf "$OUT/prof.tgz" prof) ;;
    round3)  # issue 19 after round2: the norm-FiLM-activation of the plain backbone and D compiled (--compile_norms), fp32 with
      # activation checkpointing (the memory bar), whole-player compilation; each compiled row again in a new process
      # for the repeat-run set-up (inductor's caches under the cache dir). R3_ROWS overrides the first list. The
      # timeouts add up to 540 s: the section fits one device call (600 s) with its set-up
      # (cnorm also puts the conv weights of the model and D channels-last; -nocl keeps every layout as it was)
      one timeout 270 python3 $B --json "$OUT/r3_rows.json" --rows \
        ${R3_ROWS:-launcher-bf16-b4,launcher-bf16-b4-cnorm,launcher-bf16-b4-cnorm-nocl,launcher-fp32-b4-ckpt,launcher-fp32-b4-ckpt-cnorm}
      one timeout 50 python3 $B --json "$OUT/r3_repeat.json" --rows launcher-bf16-b4-cnorm
      one timeout 170 python3 $B --json "$OUT/r3_compile.json" --rows launcher-bf16-b4-compile
      one timeout 50 python3 $B --json "$OUT/r3_compile_repeat.json" --rows launcher-bf16-b4-compile ;;
    round4)  # issue 19 after round3 (call 28: --compile was the fastest step, 23.2 ms, and the leanest, 1.53 GiB, in bf16):
      # the original first, then the compiled players in fp32 (the 10x-at-2.51-GiB bar) with a repeat run, and in bf16
      # at batch 32 (MFU). The fp32 step without CUDA graphs (-eager), plain and checkpointed, first: how much of its peak
      # (4.23 GiB in call 24, 3.32 checkpointed in call 28) is the graphs' private pool. The timeouts add up to 530 s
      [ -f .gpu/original/ref.py ] && one timeout 120 bash .gpu/original/run_launcher.sh | tee "$OUT/original.txt"
      one timeout 170 python3 $B --json "$OUT/r4_fp32.json" --rows \
        ${R4_ROWS:-launcher-fp32-b4-eager,launcher-fp32-b4-ckpt-eager,launcher-fp32-b4-compile}
      one timeout 50 python3 $B --json "$OUT/r4_fp32_repeat.json" --rows launcher-fp32-b4-compile
      one timeout 190 python3 benchmarks/bench_step.py --steps 15 --warmup 6 --json "$OUT/r4_batch.json" --rows \
        ${R4_BATCH:-launcher-bf16-b32-compile} ;;
    diag)  # issue 19, session 10: where the step's time goes. Each conv of the step alone in four formulations
      # (benchmarks/conv_layers.py), then a kernel-by-kernel profile of the eager and the compiled batch-4 step (no
      # graphs: a replayed graph hides its kernels) with the compilation's phases, then compiled fp32 with graphs
      one timeout 110 python3 benchmarks/conv_layers.py --json "$OUT/conv_layers.json"
      one timeout 290 python3 $B --json "$OUT/diag_rows.json" --profile /tmp/prof --rows \
        ${DIAG_ROWS:-launcher-bf16-b4-eager,launcher-bf16-b4-compile-eager}
      (cd /tmp && tar czf "$OUT/prof.tgz" prof)
      one timeout 170 python3 $B --json "$OUT/diag_fp32.json" --rows ${DIAG_FP32:-launcher-fp32-b4-compile} ;;
    codes)  # issue 19, session 10: the WuBu region codes uncompiled on the side stream under --compile
      # (--no-compile_region_codes): cold set-up with inductor's generated code kept, a repeat run, then whole-player
      # compilation in the same call as the baseline (its D is a cache hit by then: its set-up is not a cold one);
      # the original first, as the issue's bars ask (.gpu/original: ../shared/reference/original/README.md)
      [ -f .gpu/original/ref.py ] && one timeout 110 bash .gpu/original/run_launcher.sh | tee "$OUT/original.txt"
      one timeout 170 env TORCH_LOGS=output_code python3 $B --json "$OUT/codes_cold.json" --rows \
        launcher-bf16-b4-compile-eagercodes 2> /tmp/output_code.txt || tail -20 /tmp/output_code.txt
      gzip -c /tmp/output_code.txt > "$OUT/output_code.txt.gz"
      one timeout 70 python3 $B --json "$OUT/codes_repeat.json" --rows launcher-bf16-b4-compile-eagercodes
      one timeout 170 python3 $B --json "$OUT/codes_whole.json" --rows launcher-bf16-b4-compile ;;
    round5)  # issue 19 after session 10 (the copies before every 3-D conv's backward; GroupNorm's few-row reductions):
      # the original first; whole-player compilation as it was, and with the norms' maps pinned channels-last
      # (--channels_last_maps) and GroupNorm's statistics in chunks (--split_norm_stats), each cold, and a repeat run;
      # GroupNorm alone at the step's map shapes; last (the call may cut it), --channels_last_maps alone, which says
      # what each option brings. Timeouts add up to 590 s (a call: 600; a cold compiled row took 92-125 s of set-up).
      # Session 12's run on an H100 lost every compiled row to these timeouts (the cold set-up outlasted 140 s); its
      # numbers came from reruns on the same machine with 245 s (docs/benchmarks.md)
      # (each row its own empty inductor cache, so every set-up is a cold one; the repeat reuses its row's)
      [ -f .gpu/original/ref.py ] && one timeout 70 bash .gpu/original/run_launcher.sh | tee "$OUT/original.txt"
      c=/tmp/r5_inductor
      one timeout 140 env TORCHINDUCTOR_CACHE_DIR=$c/whole python3 $B --json "$OUT/r5_whole.json" \
        --rows launcher-bf16-b4-compile
      one timeout 140 env TORCHINDUCTOR_CACHE_DIR=$c/split python3 $B --json "$OUT/r5_split.json" \
        --rows launcher-bf16-b4-compile-clmaps-splitgn
      one timeout 40 env TORCHINDUCTOR_CACHE_DIR=$c/split python3 $B --json "$OUT/r5_repeat.json" \
        --rows launcher-bf16-b4-compile-clmaps-splitgn
      one timeout 60 python3 -u benchmarks/norm_kernels.py --json "$OUT/r5_norms.json" | tee "$OUT/r5_norms.txt"
      one timeout 140 env TORCHINDUCTOR_CACHE_DIR=$c/clmaps python3 $B --json "$OUT/r5_clmaps.json" \
        --rows launcher-bf16-b4-compile-clmaps ;;
    round6)  # issue 19's other bars with round5's options (the fastest step of session 12, 22.1 ms on an H100): the original
      # first; fp32 compiled without a memory budget (with -mb50 it was 42.4 ms at 2.28 GiB, session 12: under the
      # original's 2.51 GiB, 9.4x); bf16 compiled at batch 32 (MFU at scale; its cold set-up outlasted 230 s in session
      # 12). R6_OPTS: the option suffix. A cold compile took 185 s (fp32) on an H100. Timeouts: 570 s
      o=${R6_OPTS--clmaps-splitgn}; c=/tmp/r6_inductor
      [ -f .gpu/original/ref.py ] && one timeout 70 bash .gpu/original/run_launcher.sh | tee "$OUT/original.txt"
      one timeout 250 env TORCHINDUCTOR_CACHE_DIR=$c/fp32 python3 $B --json "$OUT/r6_fp32.json" \
        --rows launcher-fp32-b4-compile$o
      one timeout 250 env TORCHINDUCTOR_CACHE_DIR=$c/b32 python3 benchmarks/bench_step.py --steps 15 --warmup 6 \
        --json "$OUT/r6_b32.json" --rows launcher-bf16-b32-compile$o ;;
    setup)  # issue 19's set-up bars (60 s first run, 15 s repeat) with round5's options (--channels_last_maps
      # --split_norm_stats, the fastest step of session 12). cuDNN's autotuning was 13 s of a compiled repeat's 23 s and
      # 9 of the shipped path's 11 s, and without it (-nobench) the step took 2-3x as long (session 12): does timing
      # fewer of its candidates (-bl<N>) keep the fast algorithms? A cold compile took 185 s (fp32) and over 140 s
      # (bf16) on an H100 in session 12, hence 250 s. Each row its own process. Timeouts add up to 550 s
      c=/tmp/setup_inductor; rm -rf "$c"  # cold means cold, also on a machine that ran this before
      o=${SETUP_OPTS--clmaps-splitgn}
      one timeout 250 env TORCHINDUCTOR_CACHE_DIR=$c python3 $B --json "$OUT/setup_cold.json" --rows launcher-bf16-b4-compile$o
      for bl in 10 3 1; do  # 10: torch's default
        one timeout 60 env TORCHINDUCTOR_CACHE_DIR=$c python3 $B --json "$OUT/setup_repeat_bl$bl.json" \
          --rows launcher-bf16-b4-compile$o-bl$bl
      done
      one timeout 60 python3 $B --json "$OUT/setup_eager_bl3.json" --rows launcher-bf16-b4-bl3
      one timeout 60 python3 $B --json "$OUT/setup_eager_bl1.json" --rows launcher-bf16-b4-bl1 ;;
    bars)  # issue 19's last two bars, as shipped (eager kernels, CUDA graphs: seconds of set-up a row): cost against batch
      # and frames (no faster than linear), and the motion branch with cached flow (at most 1.1x the step without it;
      # last measured in session 2, before the plain backbone); then --compile_wubu_maps. Timeouts add up to 480 s
      one timeout 240 python3 $B --json "$OUT/bars_scaling.json" --rows \
        launcher-bf16-b4,launcher-bf16-b8,launcher-bf16-b16,launcher-bf16-b4-t4,launcher-bf16-b4-t22
      one timeout 120 python3 $B --json "$OUT/bars_motion.json" --rows launcher-bf16-b4,launcher-bf16-b4-motion
      # as shipped with the WuBu levels' maps compiled once (--compile_wubu_maps; never timed on a GPU), cold: does
      # the shipped path gain speed for seconds, not minutes, of set-up?
      rm -rf /tmp/maps_inductor
      one timeout 120 env TORCHINDUCTOR_CACHE_DIR=/tmp/maps_inductor python3 $B --json "$OUT/bars_maps.json" \
        --rows launcher-bf16-b4-maps ;;
    cols) one timeout 150 python3 benchmarks/conv_layers.py --formats cl,cols --json "$OUT/cols.json" | tee "$OUT/cols.txt" ;;
    kernels) one timeout 120 python3 benchmarks/micro_convs.py --only-out | tee "$OUT/micro_convs.txt"
         one timeout 500 python3 $B --json "$OUT/kernels.json" --rows launcher-fp32,launcher-fp32-notap
         one timeout 300 python3 benchmarks/probe_copies.py --precision bf16 | tee "$OUT/copies_bf16.txt" ;;
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
    ddpscale)
      ngpu=$(nvidia-smi -L | wc -l)
      R=${DDP_ROWS:-launcher-bf16-nocompile-eager,launcher-bf16-nocompile-b16-eager,launcher-bf16-nocompile-b32-eager,launcher-bf16-nocompile-b64-eager}
      D="benchmarks/bench_step.py --steps 20 --warmup 8 --rows $R"
      one timeout 300 python3 $D --json "$OUT/ddp_n1.json"
      for w in 2 4 8; do
        [ "$w" -le "$ngpu" ] && timeout 400 torchrun --standalone --nproc_per_node $w $D --json "$OUT/ddp_n$w.json"
      done
      python3 benchmarks/ddp_report.py scaling "$OUT"/ddp_n*.json | tee "$OUT/ddp_scaling.md" ;;
    ddpcurve)
      ngpu=$(nvidia-smi -L | wc -l); w=$(( ngpu >= 8 ? 8 : (ngpu >= 4 ? 4 : ngpu) )); steps=${CURVE_STEPS:-500}
      runs=${CURVE_DIR:-/tmp/wubugen_curves}; rm -rf "$runs"
      T="-m wubugen train --preset launcher --compile false --max_steps $steps --val_interval $steps --log_interval 5 --progress false"
      timeout 400 torchrun --standalone --nproc_per_node $w $T --batch_size 4 --checkpoint_dir "$runs/n$w" 2>&1 | tail -3
      one timeout 400 python3 $T --batch_size $((4 * w)) --checkpoint_dir "$runs/n1" 2>&1 | tail -3
      cp "$runs/n$w/metrics.jsonl" "$OUT/curve_n${w}xb4.jsonl"; cp "$runs/n1/metrics.jsonl" "$OUT/curve_n1xb$((4 * w)).jsonl"
      python3 benchmarks/ddp_report.py curves --out "$OUT/ddp_curves.png" "1xb$((4 * w))=$runs/n1/metrics.jsonl" \
        "${w}xb4=$runs/n$w/metrics.jsonl" | tee "$OUT/ddp_curves.md" ;;
    *) echo "unknown section $s (tests step compile mfu autotune motionraw scaling ddp loader ddpscale ddpcurve round2 profile round3 round4 diag codes round5 round6 setup bars cols kernels)"; exit 2 ;;
  esac
done
