@echo off
REM The guide's launcher variables (TRAINING_GUIDE.md section 2-4), for one phase. Copy per phase and edit.
SETLOCAL
SET "VIDEO_DATA_PATH="
SET "VALIDATION_VIDEO_PATH="
SET "CHECKPOINT_OUTPUT_DIR=runs\phase1"
SET "LOAD_CHECKPOINT="
SET "EPOCHS=10"
SET "LAMBDA_RECON=10.0"
SET "LAMBDA_KL=0.0001"
SET "LAMBDA_GAN=1.0"
SET "LEARNING_RATE_GEN=3e-4"
SET "LEARNING_RATE_DISC=1e-4"
SET "Q_CONTROLLER_ENABLED=true"
SET "DISC_USE_GAAD_FILM_CONDITION=false"
SET "DISC_APPLY_SPECTRAL_NORM=true"
SET "GLOBAL_MAX_GRAD_NORM=2.0"
SET "WANDB_ENABLED=false"
SET "PRESET=launcher"
SET "NPROC_PER_NODE=1"

SET "ARGS=train --preset %PRESET% --checkpoint_dir %CHECKPOINT_OUTPUT_DIR% --epochs %EPOCHS% --lambda_recon %LAMBDA_RECON% --lambda_kl %LAMBDA_KL% --lambda_gan %LAMBDA_GAN% --learning_rate_gen %LEARNING_RATE_GEN% --learning_rate_disc %LEARNING_RATE_DISC% --q_controller_enabled %Q_CONTROLLER_ENABLED% --disc_use_gaad_film_condition %DISC_USE_GAAD_FILM_CONDITION% --disc_apply_spectral_norm %DISC_APPLY_SPECTRAL_NORM% --global_max_grad_norm %GLOBAL_MAX_GRAD_NORM% --wandb %WANDB_ENABLED%"
IF NOT "%VIDEO_DATA_PATH%"=="" SET "ARGS=%ARGS% --video_data_path %VIDEO_DATA_PATH%"
IF NOT "%VALIDATION_VIDEO_PATH%"=="" SET "ARGS=%ARGS% --validation_video_path %VALIDATION_VIDEO_PATH%"
IF NOT "%LOAD_CHECKPOINT%"=="" SET "ARGS=%ARGS% --load_checkpoint %LOAD_CHECKPOINT%"

IF %NPROC_PER_NODE% GTR 1 (
  torchrun --standalone --nproc_per_node %NPROC_PER_NODE% -m wubugen %ARGS% %*
) ELSE (
  wubugen %ARGS% %*
)
ENDLOCAL
