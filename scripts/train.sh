#!/usr/bin/env bash
# The guide's launcher variables (TRAINING_GUIDE.md §2-4), for one phase. Copy per phase and edit, as the guide says.
# Multi-GPU: NPROC_PER_NODE=2 ./scripts/train.sh ; extra flags pass through: ./scripts/train.sh --max_steps 100
# Runs from any directory; relative paths (CHECKPOINT_OUTPUT_DIR, VIDEO_DATA_PATH) are taken from the current one.
set -euo pipefail
VIDEO_DATA_PATH="${VIDEO_DATA_PATH:-}"                 # empty: synthetic demo footage
VALIDATION_VIDEO_PATH="${VALIDATION_VIDEO_PATH:-}"
CHECKPOINT_OUTPUT_DIR="${CHECKPOINT_OUTPUT_DIR:-runs/phase1}"
LOAD_CHECKPOINT="${LOAD_CHECKPOINT:-}"                 # a previous phase's run dir (its best) or checkpoint dir
EPOCHS="${EPOCHS:-10}"
LAMBDA_RECON="${LAMBDA_RECON:-10.0}"
LAMBDA_KL="${LAMBDA_KL:-0.0001}"
LAMBDA_GAN="${LAMBDA_GAN:-1.0}"
LEARNING_RATE_GEN="${LEARNING_RATE_GEN:-3e-4}"
LEARNING_RATE_DISC="${LEARNING_RATE_DISC:-1e-4}"
Q_CONTROLLER_ENABLED="${Q_CONTROLLER_ENABLED:-true}"
DISC_USE_GAAD_FILM_CONDITION="${DISC_USE_GAAD_FILM_CONDITION:-false}"
DISC_APPLY_SPECTRAL_NORM="${DISC_APPLY_SPECTRAL_NORM:-true}"
GLOBAL_MAX_GRAD_NORM="${GLOBAL_MAX_GRAD_NORM:-2.0}"
WANDB_ENABLED="${WANDB_ENABLED:-false}"
PRESET="${PRESET:-launcher}"
NPROC_PER_NODE="${NPROC_PER_NODE:-1}"

args=(train --preset "$PRESET" --checkpoint_dir "$CHECKPOINT_OUTPUT_DIR" --epochs "$EPOCHS"
      --lambda_recon "$LAMBDA_RECON" --lambda_kl "$LAMBDA_KL" --lambda_gan "$LAMBDA_GAN"
      --learning_rate_gen "$LEARNING_RATE_GEN" --learning_rate_disc "$LEARNING_RATE_DISC"
      --q_controller_enabled "$Q_CONTROLLER_ENABLED" --disc_use_gaad_film_condition "$DISC_USE_GAAD_FILM_CONDITION"
      --disc_apply_spectral_norm "$DISC_APPLY_SPECTRAL_NORM" --global_max_grad_norm "$GLOBAL_MAX_GRAD_NORM"
      --wandb "$WANDB_ENABLED")
[ -n "$VIDEO_DATA_PATH" ] && args+=(--video_data_path "$VIDEO_DATA_PATH")
[ -n "$VALIDATION_VIDEO_PATH" ] && args+=(--validation_video_path "$VALIDATION_VIDEO_PATH")
[ -n "$LOAD_CHECKPOINT" ] && args+=(--load_checkpoint "$LOAD_CHECKPOINT")

# Which wubugen: the one on PATH, else this checkout's .venv; in a fresh clone without either, the .venv is made once
# (as `make train` does). Paths are quoted throughout, so a checkout or run directory may contain spaces.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${WUBUGEN_VENV:-$REPO/.venv}"
if command -v wubugen >/dev/null 2>&1; then
  WUBUGEN="$(command -v wubugen)"
  PY="$(dirname "$WUBUGEN")/python"
  [ -x "$PY" ] || PY="python3"
else
  if [ ! -x "$VENV/bin/wubugen" ]; then
    echo "wubugen is not on PATH: setting up $VENV (once; later runs use it)" >&2
    "${PYTHON:-python3}" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet -e "$REPO"
  fi
  WUBUGEN="$VENV/bin/wubugen"
  PY="$VENV/bin/python"
fi

if [ "$NPROC_PER_NODE" -gt 1 ]; then
  exec "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC_PER_NODE" -m wubugen "${args[@]}" "$@"
fi
exec "$WUBUGEN" "${args[@]}" "$@"
