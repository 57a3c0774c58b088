#!/usr/bin/env bash
# The quality measurements of docs/results.md on one GPU, on real footage at 64x64 (made by
# ../shared/reference/peer/prep_gpu_data.py 64 .gpu/d64 train=... val=...; the peer's scripts copied to .gpu/peer/):
#
#   bash benchmarks/gpu_quality.sh sweep      ablations at once on one GPU with the peer, compared at equal steps
#   bash benchmarks/gpu_quality.sh speed      the peer and some configurations alone for a short while: steps/s, set-up
#   bash benchmarks/gpu_quality.sh generalise KL weight, clipping, weight decay, Euclidean WuBu on the recipe, at once
#   bash benchmarks/gpu_quality.sh backbone   GAN schedule, generator temporal stages, latent width, LR, widths, at once
#   bash benchmarks/gpu_quality.sh bisect     the peer's backbone piece by piece (3-D encoder, no FiLM, temporal stages)
#   bash benchmarks/gpu_quality.sh diagnose   depth, CUDA graphs, workers and the peer's exact objective, without the GAN
#   bash benchmarks/gpu_quality.sh plain      the peer's network inside wubugen (--backbone plain), with and without the GAN
#   bash benchmarks/gpu_quality.sh hybrid     region codes and FiLM on the plain backbone, GAN on
#   bash benchmarks/gpu_quality.sh candidates the launcher as shipped and its twin without codes, after the peer, alone
#   bash benchmarks/gpu_quality.sh codes      the launcher's WuBu codes: second stream, current stream, compiled level maps
#   bash benchmarks/gpu_quality.sh peer_alone / shipped_alone   the peer, or the launcher as shipped, alone for SECONDS_FINAL
#                                             (600 s each does not fit one call: two calls on the same warm card;
#                                             SIZE=256 for the launcher's own size)
#   bash benchmarks/gpu_quality.sh pair       both of those at once, the peer on GPU 0 and wubugen on GPU 1 (nvidia-h200-x2)
#   bash benchmarks/gpu_quality.sh final      the peer, then wubugen's recipe, each alone for SECONDS (equal GPU time)
#   bash benchmarks/gpu_quality.sh alone      wubugen's recipe with RECIPE's changes alone for SECONDS_FINAL (no peer)
#   bash benchmarks/gpu_quality.sh phases     the guide's phase plan end to end at 64x64 (shortened), prior samples
#   bash benchmarks/gpu_quality.sh predict_phases  the predict task against copy-last-frame, and the phase plan, at once
#   bash benchmarks/gpu_quality.sh predict_warp    the predict task with and without the warped start, at once
#   bash benchmarks/gpu_quality.sh predict_skip    the predict task with the last context frames skipped past the latent
#   bash benchmarks/gpu_quality.sh r256       256x256 (.gpu/d256): the peer, then the launcher preset, each alone
#
# Carry .whl (PyAV and tomli-w wheels for the GPU image's python) and .gpu. Results: $OUT (default ./bench_out).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
site=/tmp/wubugen_site
[ -d "$site" ] || python3 -m pip install --quiet --no-index --no-deps --target "$site" .whl/*.whl
export PYTHONPATH="$PWD/src:$site" PYTHONUNBUFFERED=1 WANDB_MODE=disabled
D=.gpu/d64
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
git log --oneline -1 >> "$OUT/gpu.txt" 2>/dev/null
clips() {  # $1: size, $2: footage folder: the peer's clip file /tmp/clips$1.npz, made only by the sections that run
  # the peer (make_clips.py's arrays, one process per footage file)
  [ -f /tmp/clips$1.npz ] || python3 benchmarks/peer_clips.py $1 /tmp/clips$1.npz $2/train $2/val
}
mirror() {  # $1: a sweep folder: copy its runs' metrics into $OUT every 15 s, so a call cut off at its limit still
  # brings back every validation so far (the table is written only at the end)
  ( while sleep 15; do for m in "$1"/*/metrics.jsonl; do [ -f "$m" ] && cp "$m" "$OUT/$(basename "$(dirname "$m")")_metrics.jsonl"; done; done ) &
  MIRROR=$!
}
COMMON="--preset launcher --image_h 64 --image_w 64 --no-compile --optimizer riemannian_adam --batch_size 32
 --no-disc_use_gaad_film_condition --no-q_controller_enabled --no-use_lpips_for_verification --log_interval 100
 --val_interval 500 --save_interval 0 --max_steps 1000000 --wandb_log_train_recon_interval 0
 --wandb_log_fixed_noise_samples_interval 0 --demo_num_samples 16"
# the launcher preset as a user runs it at 64x64 (Q-control on; LPIPS off: no weights on the GPU image)
SHIPPED="--preset launcher --image_h 64 --image_w 64 --batch_size 32 --no-use_lpips_for_verification --log_interval 100
 --val_interval 1000 --save_interval 0 --max_steps 1000000 --wandb_log_train_recon_interval 0
 --wandb_log_fixed_noise_samples_interval 0 --demo_num_samples 16"
NEW="$COMMON --encoder_shallow_cnn_channels 64 --encoder_channels 256 --encoder_res_blocks 1 --gen_res_blocks 1
 --encoder_targets_only --region_codes gated --augment_flip --disc_patch_logits --gan_weighting adaptive
 --lambda_gan 0.1 --gan_start_step 500 --ema_decay 0.999"
PIX="--region_codes gated --no-encoder_use_roi_align --encoder_pixel_patch_size 8"
CODELESS="$NEW --region_codes none --ema_decay 0"  # the recipe of calls 4-10 (docs/results.md)
# the launcher preset at its own size and batch (256x256, batch 8)
SHIPPED256="--preset launcher --no-use_lpips_for_verification --log_interval 100 --val_interval 500 --save_interval 0
 --max_steps 1000000 --wandb_log_train_recon_interval 0 --wandb_log_fixed_noise_samples_interval 0 --demo_num_samples 16"
PEERLIKE="--encoder_temporal_kernel_size 3 --no-gen_region_film --gen_temporal_stages all"  # the peer's layout, pieces
collect() {  # $1: a sweep folder -> its table, summary and the first run's final samples into $OUT
  cp "$1/table.md" "$OUT/$2_table.md"; cp "$1/summary.json" "$OUT/$2_summary.json"
}
sweep() {  # $1: the section, $2: seconds, $3: footage folder, then quality_sweep.py's own options; results into $OUT
  local name=$1 secs=$2 data=$3; shift 3
  rm -rf /tmp/$name  # a warm machine keeps the last call's runs: their rows would mix into this table
  mirror /tmp/$name
  python3 benchmarks/quality_sweep.py --data "$data" --out /tmp/$name --seconds "$secs" "$@" | tee "$OUT/$name.txt"
  kill $MIRROR 2>/dev/null
  collect /tmp/$name $name
}
solo() {  # $1: the section, $2: seconds, then quality_sweep.py's own options: each run alone on the card, no peer
  local name=$1 secs=$2; shift 2
  sweep $name "$secs" $D --sequential "$@"
}
with_peer() {  # $1: the section, $2: seconds, then quality_sweep.py's own options: the peer runs beside them
  local name=$1 secs=$2; shift 2
  clips 64 $D
  sweep $name "$secs" $D --peer /tmp/clips64.npz --peer_script .gpu/peer/peer_vae.py "$@"
}
phases_run() {  # the guide's phase plan end to end at 64x64 with the launcher as shipped, shortened (--phase-steps),
  # then the plan's status, aggregate-prior samples of the last KL phase and of the last phase, and one archive
  rm -rf /tmp/plan
  S="--set video_data_path=$D/train --set validation_video_path=$D/val --set image_h=64 --set image_w=64
 --set batch_size=32 --set use_lpips_for_verification=false --set log_interval=100 --set save_interval=0
 --set demo_num_samples=16 --set wandb_log_train_recon_interval=0 --set wandb_log_fixed_noise_samples_interval=0"
  python3 -m wubugen phases configs/phases/guide.toml --root /tmp/plan --phase-steps "${PHASE_STEPS:-2400}" $S \
    2>&1 | grep -v "it/s\|step/s" | tee "$OUT/phases.txt"
  python3 -m wubugen phases status /tmp/plan | tee "$OUT/phases_status.txt"
  for ph in phase1 phase2a phase2b phase2c phase3 phase4; do
    cp /tmp/plan/$ph/summary.json "$OUT/summary_$ph.json" 2>/dev/null
  done
  for ph in phase2c phase2b phase4; do  # after the KL annealing (phase 2c is optional), and the plan's end
    [ -d /tmp/plan/$ph ] || continue
    python3 -m wubugen sample --checkpoint /tmp/plan/$ph --num 16 --out "$OUT/prior_$ph.png" 2>&1 | tail -2
  done
  mkdir -p "$OUT/plan" && (cd /tmp/plan && find . \( -name "*.jsonl" -o -name "*.json" -o -name "*.toml" -o -name "*.html" \
    -o -name "*.png" \) -not -path "./*/step_*" | head -400 | xargs -r cp --parents -t "$OUT/plan")
}
for s in ${*:-sweep}; do
  case $s in
    sweep)  # concurrent runs: compare at equal steps
      with_peer sweep "${SECONDS_SWEEP:-330}" \
        --run "nocodes=$NEW --region_codes none" \
        --run "nocodes_noema=$NEW --region_codes none --ema_decay 0" \
        --run "nocodes_noflip=$NEW --region_codes none --no-augment_flip" \
        --run "pix=$NEW $PIX" \
        --run "pix_nogan=$NEW $PIX --lambda_gan 0" \
        --run "pix_gan1=$NEW $PIX --lambda_gan 1" \
        --run "pix_euclid=$NEW $PIX --wubu_euclidean" \
        --run "pix_cw=$NEW $PIX --compile_wubu"
      for r in pix pix_nogan; do cp /tmp/sweep/$r/samples/final_*.png "$OUT/samples_$r.png" 2>/dev/null; done ;;
    generalise)  # the next questions (docs/results.md "Not yet done"): what closes the gap to the peer, at equal steps
      R="$CODELESS --lambda_gan 1 --val_interval 600"
      with_peer generalise "${SECONDS_SWEEP:-330}" --prebuild 64 --run "base=$R" --run "kl1e-3=$R --lambda_kl 1e-3" --run "kl6e-3=$R --lambda_kl 6e-3" \
        --run "noclip=$R --global_max_grad_norm 0" --run "nogan=$R --lambda_gan 0" \
        --run "wd1e-2=$R --weight_decay 1e-2" --run "pix_cw=$R $PIX --compile_wubu" \
        --run "pix_cw_euclid=$R $PIX --compile_wubu --wubu_euclidean" ;;
    backbone)  # the next session's ablations (docs/results.md "What is left"): the backbone and the GAN, at equal steps
      R="$CODELESS --lambda_gan 1 --val_interval 600"
      with_peer backbone "${SECONDS_SWEEP:-330}" --prebuild 64 --run "base=$R" --run "nogan=$R --lambda_gan 0" --run "gan_late=$R --lambda_gan 0.1 --gan_start_step 3000" \
        --run "gen_t_all=$R --gen_temporal_stages all" --run "lat16=$R --latent_channels 16" \
        --run "lr6e-4=$R --learning_rate_gen 6e-4" --run "wide=$R --gen_base_channels 96 --encoder_shallow_cnn_channels 96" ;;
    bisect)  # the peer's backbone piece by piece on the recipe (docs/results.md "What is left"), at equal steps
      R="$CODELESS --lambda_gan 1 --val_interval 600"
      P=$PEERLIKE
      with_peer bisect "${SECONDS_SWEEP:-330}" --prebuild 64 --run "base=$R" --run "enc3d=$R --encoder_temporal_kernel_size 3" \
        --run "nofilm=$R --no-gen_region_film" --run "gen_t_all=$R --gen_temporal_stages all" --run "peerlike=$R $P" \
        --run "peerlike_gan01=$R $P --lambda_gan 0.1 --gan_start_step 2000" --run "peerlike_nogan=$R $P --lambda_gan 0" ;;
    diagnose)  # why the peer's own pieces lose inside wubugen (call 8): depth, the step's machinery, the peer's exact objective
      R="$CODELESS --lambda_gan 0 --val_interval 600"
      P="$R $PEERLIKE"
      with_peer diagnose "${SECONDS_SWEEP:-330}" --prebuild 64 --run "base=$R" --run "base_nographs=$R --no-cuda_graphs" \
        --run "peerlike=$P" --run "peerlike_r0=$P --encoder_res_blocks 0" \
        --run "peerlike_r0_obj=$P --encoder_res_blocks 0 --global_max_grad_norm 0 --kl_reduction sum --lambda_kl 1e-6" \
        --run "peerlike_nographs=$P --no-cuda_graphs" --run "peerlike_w0=$P --num_workers 0" ;;
    plain)  # the peer's own network inside wubugen's training (--backbone plain, call 10): backbone or training?
      R="$CODELESS --lambda_gan 0 --val_interval 600"
      O="--global_max_grad_norm 0 --kl_reduction sum --lambda_kl 1e-6"
      with_peer plain "${SECONDS_SWEEP:-330}" --prebuild 64 --run "base=$R" --run "base_r0=$R --encoder_res_blocks 0 --gen_res_blocks 0" \
        --run "plain=$R --backbone plain" --run "plain_obj=$R --backbone plain $O" \
        --run "plain_gan=$R --backbone plain --lambda_gan 1" --run "plain_obj_gan01=$R --backbone plain $O --lambda_gan 0.1" ;;
    hybrid)  # the WuBu-GAAD parts on the plain backbone, GAN on: what each adds to the bare network (after call 10)
      R="$CODELESS --lambda_gan 1 --val_interval 400 --backbone plain --no-compile_wubu"
      with_peer hybrid "${SECONDS_SWEEP:-330}" --prebuild 64 --run "plain=$R --no-gen_region_film" \
        --run "plain_gan01=$R --no-gen_region_film --lambda_gan 0.1" --run "film=$R" \
        --run "codes=$R $PIX --no-gen_region_film" --run "codes_film=$R $PIX" \
        --run "codes_film_euclid=$R $PIX --wubu_euclidean" --run "codes_film_q=$R $PIX --q_controller_enabled"
      for r in plain codes_film; do cp /tmp/hybrid/$r/samples/final_*.png "$OUT/samples_$r.png" 2>/dev/null; done ;;
    speed)  # each alone for a short while: steps/s and set-up, to turn equal steps into equal GPU time
      with_peer speed "${SECONDS_SPEED:-45}" --sequential --run "nocodes=$NEW --region_codes none" \
        --run "pix=$NEW $PIX" --run "pix_cw=$NEW $PIX --compile_wubu" ;;
    candidates)  # the launcher preset as shipped (plain backbone, FiLM, gated WuBu codes, Q-control) and its codeless,
      # Q-less twin, each alone after the peer for SECONDS_FINAL: equal GPU time, set-up counted
      with_peer candidates "${SECONDS_FINAL:-150}" --sequential --prebuild 64 --run "launcher=$SHIPPED" \
        --run "film=$SHIPPED --region_codes none --no-q_controller_enabled"
      cp /tmp/candidates/launcher/samples/final_*.png "$OUT/candidates_samples.png" 2>/dev/null
      cp -r /tmp/candidates/launcher/media "$OUT/candidates_media" 2>/dev/null ;;
    codes)  # the shipped launcher's WuBu codes eager on a second stream or the current one, or with compiled level maps
      timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_cuda_graphs.py -k side_stream 2>&1 \
        | tail -4 | tee "$OUT/gpu_tests.txt"
      with_peer codes "${SECONDS_FINAL:-150}" --sequential --prebuild 64 --run "side=$SHIPPED --no-compile_wubu" \
        --run "noside=$SHIPPED --no-compile_wubu --no-wubu_side_stream" --run "maps=$SHIPPED --compile_wubu_maps"
      cp /tmp/codes/side/samples/final_*.png "$OUT/codes_samples.png" 2>/dev/null
      cp -r /tmp/codes/side/media "$OUT/codes_media" 2>/dev/null ;;
    codes_alone)  # the same without the peer, for a short budget: the second stream for SECONDS_FINAL, then the
      # current stream for SECONDS_NOSIDE (enough for its steps/s)
      timeout 90 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_cuda_graphs.py -k side_stream 2>&1 \
        | tail -4 | tee "$OUT/gpu_tests.txt"
      solo side "${SECONDS_FINAL:-150}" --prebuild 64 --run "side=$SHIPPED --no-compile_wubu"
      cp /tmp/side/side/samples/final_*.png "$OUT/side_samples.png" 2>/dev/null
      solo noside "${SECONDS_NOSIDE:-70}" --run "noside=$SHIPPED --no-compile_wubu --no-wubu_side_stream" ;;
    peer_alone)  # the peer alone for SECONDS_FINAL (its validation every 30 s): one half of a budget too long for one call
      # (SIZE=256: the launcher's own size, .gpu/d256)
      Z=${SIZE:-64}; F=$D; [ "$Z" = 256 ] && F=.gpu/d256
      clips $Z $F; timeout $(( ${SECONDS_FINAL:-150} + 60 )) python3 .gpu/peer/peer_vae.py /tmp/clips$Z.npz "${SECONDS_FINAL:-150}" 1e-6 \
        | tee "$OUT/peer_alone.jsonl" ;;
    shipped_alone)  # the other half: the launcher preset as shipped, alone for SECONDS_FINAL, its samples and strips
      # (SIZE=256: at its own size and batch, .gpu/d256; decoding that footage into the frame cache before the timer
      # takes about 55 s of the call, so with SECONDS_FINAL=540 the 600 s call ended before the run and its final samples
      # did: 480 fits)
      if [ "${SIZE:-64}" = 256 ]; then
        sweep shipped "${SECONDS_FINAL:-150}" .gpu/d256 --sequential --prebuild 256 --run "shipped=$SHIPPED256"
      else
        solo shipped "${SECONDS_FINAL:-150}" --prebuild 64 --run "shipped=$SHIPPED"
      fi
      cp /tmp/shipped/shipped/samples/final_*.png "$OUT/shipped_samples.png" 2>/dev/null
      cp /tmp/shipped/shipped/media/*.png "$OUT/" 2>/dev/null ;;
    pair)  # on a 2-GPU machine (device kind nvidia-h200-x2): peer_alone on GPU 0 and shipped_alone on GPU 1 at the same
      # time, each for SECONDS_FINAL on its own card of one host: both halves of a budget too long for one call, in one
      [ "$(nvidia-smi -L | wc -l)" -ge 2 ] || { echo "pair needs 2 GPUs (device kind nvidia-h200-x2)"; exit 2; }
      Z=${SIZE:-64}; F=$D; [ "$Z" = 256 ] && F=.gpu/d256; S=${SECONDS_FINAL:-150}
      clips $Z $F
      CUDA_VISIBLE_DEVICES=0 timeout $(( S + 60 )) python3 .gpu/peer/peer_vae.py /tmp/clips$Z.npz "$S" 1e-6 \
        > "$OUT/peer_alone.jsonl" 2> "$OUT/peer_alone_err.txt" &
      PEER=$!
      if [ "$Z" = 256 ]; then
        ( export CUDA_VISIBLE_DEVICES=1; sweep shipped "$S" .gpu/d256 --sequential --prebuild 256 --run "shipped=$SHIPPED256" )
      else
        ( export CUDA_VISIBLE_DEVICES=1; solo shipped "$S" --prebuild 64 --run "shipped=$SHIPPED" )
      fi
      wait $PEER; tail -3 "$OUT/peer_alone.jsonl"
      cp /tmp/shipped/shipped/samples/final_*.png "$OUT/shipped_samples.png" 2>/dev/null
      cp /tmp/shipped/shipped/media/*.png "$OUT/" 2>/dev/null ;;
    final)
      with_peer final "${SECONDS_FINAL:-150}" --sequential --prebuild 64 --run "recipe=$NEW ${RECIPE:-}"
      cp /tmp/final/recipe/samples/final_*.png "$OUT/final_samples.png" 2>/dev/null
      cp -r /tmp/final/recipe/media "$OUT/final_media" 2>/dev/null ;;
    alone)  # wubugen's recipe with RECIPE's changes alone for SECONDS_FINAL, no peer: a probe against a final call's curve
      solo alone "${SECONDS_FINAL:-150}" --prebuild 64 --run "recipe=$NEW ${RECIPE:-}" ;;
    phases) phases_run ;;
    predict_phases)  # at once on the card: the predict task (the launcher on the wubu_gaad backbone, which predicts)
      # for SECONDS_PREDICT against copy-last-frame, and the phase plan in the background
      for split in train val; do python3 -m wubugen data inspect $D/$split --image_h 64 --image_w 64 >/dev/null; done
      phases_run > "$OUT/phases_section.txt" 2>&1 &
      solo predict "${SECONDS_PREDICT:-400}" --run "predict=$SHIPPED --task predict --backbone wubu_gaad"
      cp /tmp/predict/predict/samples/final_*.png "$OUT/predict_samples.png" 2>/dev/null
      cp -r /tmp/predict/predict/media "$OUT/predict_media" 2>/dev/null
      wait ;;
    predict_warp|predict_skip)  # at once on the card, compared at equal steps: the predict task as it was (the change
      # from the last context frame), with the warped last frame as the start (--predict_warp), its twin without the GAN
      # and with EMA weights; predict_skip: the last context frames at full resolution in the generator's last stage
      # (--predict_skip_frames), alone, with EMA weights, on a finer latent grid; the phase plan in the background (NO_PHASES=1: none)
      for split in train val; do python3 -m wubugen data inspect $D/$split --image_h 64 --image_w 64 >/dev/null; done
      [ -n "${NO_PHASES:-}" ] || phases_run > "$OUT/phases_section.txt" 2>&1 &
      timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_cuda_graphs.py \
        -k "predict_warp or predict_skip" 2>&1 | tail -4 > "$OUT/gpu_tests.txt" &
      P="$SHIPPED --task predict --backbone wubu_gaad"
      # since c418471 the skip is the predict default: every run has it unless its flags say --predict_skip_frames 0
      # (calls 20-22's warp runs had none)
      declare -A flags=([residual]="--predict_skip_frames 0" [warp]="--predict_warp" [warp_nogan]="--predict_warp --lambda_gan 0"
        [warp_ema]="--predict_warp --ema_decay 0.999" [skip2]="--predict_skip_frames 2"
        [skip2_warp]="--predict_skip_frames 2 --predict_warp" [skip2_ema]="--predict_skip_frames 2 --ema_decay 0.999"
        [skip4]="--predict_skip_frames 4" [skip2_ds2]="--predict_skip_frames 2 --latent_downsample 2"
        [recipe]="--ema_decay 0.999")  # recipe: the predict default (the skip since c418471) with EMA
      default="residual warp warp_nogan warp_ema"
      [ $s = predict_skip ] && default="residual skip2 skip2_ema skip2_ds2"
      runs=(); for r in ${PREDICT_RUNS:-$default}; do  # a subset: PREDICT_RUNS="warp warp_ema"
        runs+=(--run "$r=$P ${flags[$r]}"); done
      sweep predict "${SECONDS_PREDICT:-400}" $D "${runs[@]}"
      mkdir -p "$OUT/media"
      for r in /tmp/predict/*/; do r=$(basename "$r")  # pictures, not the GIF/MP4s (the archive has a size limit)
        mkdir -p "$OUT/media/$r" && cp /tmp/predict/$r/media/*.png "$OUT/media/$r/" 2>/dev/null
        cp /tmp/predict/$r/samples/final_*.png "$OUT/media/${r}_samples.png" 2>/dev/null
        cp /tmp/predict/$r.log "$OUT/media/" 2>/dev/null; done
      wait ;;
    r256)  # the launcher's own size, 256x256: the peer, then the launcher as shipped, each alone for SECONDS_256
      clips 256 .gpu/d256
      sweep r256 "${SECONDS_256:-240}" .gpu/d256 --sequential --prebuild 256 --peer /tmp/clips256.npz \
        --peer_script .gpu/peer/peer_vae.py --run "launcher=$SHIPPED256"
      cp /tmp/r256/launcher/samples/final_*.png "$OUT/r256_samples.png" 2>/dev/null
      cp -r /tmp/r256/launcher/media "$OUT/r256_media" 2>/dev/null ;;
    *) echo "unknown section $s (sweep generalise backbone bisect diagnose plain hybrid speed candidates codes codes_alone peer_alone shipped_alone pair final alone phases predict_phases predict_warp predict_skip r256)"; exit 2 ;;
  esac
done
# the device tool brings back a limited number of files: everything but the text tables goes into one archive
(cd "$OUT" && find . -type f ! -name "*.txt" ! -name "*.tgz" | tar czf results.tgz -T - && find . -mindepth 1 \
  -type f ! -name "*.txt" ! -name "*.tgz" -delete; find . -mindepth 1 -type d -empty -delete 2>/dev/null; ls)
