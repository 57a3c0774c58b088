@echo off
REM The guide's launcher variables (TRAINING_GUIDE.md section 2-4), for one phase. Copy per phase and edit.
REM Extra flags pass through: scripts\train.bat --max_steps 100. Paths may contain spaces (they are quoted below).
REM Which wubugen: the one on PATH, else this checkout's .venv; in a fresh clone without either, the .venv is made once.
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

SET "ARGS=train --preset %PRESET% --checkpoint_dir "%CHECKPOINT_OUTPUT_DIR%" --epochs %EPOCHS% --lambda_recon %LAMBDA_RECON% --lambda_kl %LAMBDA_KL% --lambda_gan %LAMBDA_GAN% --learning_rate_gen %LEARNING_RATE_GEN% --learning_rate_disc %LEARNING_RATE_DISC% --q_controller_enabled %Q_CONTROLLER_ENABLED% --disc_use_gaad_film_condition %DISC_USE_GAAD_FILM_CONDITION% --disc_apply_spectral_norm %DISC_APPLY_SPECTRAL_NORM% --global_max_grad_norm %GLOBAL_MAX_GRAD_NORM% --wandb %WANDB_ENABLED%"
IF NOT "%VIDEO_DATA_PATH%"=="" SET ARGS=%ARGS% --video_data_path "%VIDEO_DATA_PATH%"
IF NOT "%VALIDATION_VIDEO_PATH%"=="" SET ARGS=%ARGS% --validation_video_path "%VALIDATION_VIDEO_PATH%"
IF NOT "%LOAD_CHECKPOINT%"=="" SET ARGS=%ARGS% --load_checkpoint "%LOAD_CHECKPOINT%"

REM labels rather than ( ) blocks: a path with parentheses, e.g. "Program Files (x86)", would end a block early
SET "VENV=%~dp0..\.venv"
SET "WUBUGEN=wubugen"
SET "PY=python"
WHERE wubugen >NUL 2>&1
IF NOT ERRORLEVEL 1 GOTO run
SET "WUBUGEN=%VENV%\Scripts\wubugen.exe"
SET "PY=%VENV%\Scripts\python.exe"
IF EXIST "%WUBUGEN%" GOTO run
echo wubugen is not on PATH: setting up %VENV% (once; later runs use it)
python -m venv "%VENV%" || GOTO failed
"%PY%" -m pip install --quiet -e "%~dp0.." || GOTO failed

:run
IF %NPROC_PER_NODE% GTR 1 GOTO multi
"%WUBUGEN%" %ARGS% %*
GOTO end
:multi
"%PY%" -m torch.distributed.run --standalone --nproc_per_node %NPROC_PER_NODE% -m wubugen %ARGS% %*
GOTO end
:failed
echo setting up %VENV% failed: install wubugen by hand (pip install -e .) and run again
EXIT /B 1
:end
ENDLOCAL
