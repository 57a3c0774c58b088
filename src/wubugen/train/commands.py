"""`wubugen train`: train on footage (or the synthetic default), with checkpoints, validation, samples and metrics."""
from __future__ import annotations

import argparse
import os

import torch

from wubugen.config import add_config_arguments, config_from_args


def _last_good(run_dir: str) -> str:
    """Where a run stands after a failure: its last checkpoint (which writes never touch until a new one is whole)."""
    import json
    from pathlib import Path

    try:
        ptr = json.loads((Path(run_dir) / "last.json").read_text())
        name, step = ptr["checkpoint"], int(ptr["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return "no checkpoint of this run was written yet"
    return (f"the last checkpoint, {Path(run_dir) / name} (step {step}), is intact: continue with "
            f"wubugen train --resume {run_dir}")


def run_training(cfg, plan=None) -> dict:
    """Set up the process (torchrun's environment or one process), train, tear down. -> the run's summary.

    A config with `--resume` goes through resume_rules.plan_resume (unless `plan` is that already): the checkpoint,
    the options to go on with, what changed. The run holds its run dir's lock throughout (lock.py), and an OSError
    (a full disk, a read-only folder) is one line naming the path, with the last good checkpoint.
    """
    from wubugen.errors import UserError, os_error_message
    from wubugen.train.distributed import cleanup, init_distributed
    from wubugen.train.lock import hold_run_lock
    from wubugen.train.trainer import train

    if cfg.train.resume and plan is None:
        from wubugen.train.resume_rules import plan_resume

        plan = plan_resume(cfg)
    cfg = plan.cfg if plan is not None else cfg
    dist, device = init_distributed(cfg.train.device)
    log = print if dist.is_main else (lambda *a, **k: None)
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, dist.world_size)))
    run_dir = cfg.train.checkpoint_dir
    try:
        for line in plan.lines if plan is not None else ():
            log(line)
        with hold_run_lock(run_dir, dist, log):
            try:
                return train(cfg, dist, device, plan.checkpoint if plan is not None else None)
            except OSError as e:
                raise UserError(f"{os_error_message(e, run_dir)}; {_last_good(run_dir)}") from None
    finally:
        cleanup(dist)


def _cmd(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    plan = None
    if cfg.train.resume:  # the run's stored options, with the ones this command line gives over them
        from wubugen.train.resume_rules import given_options, plan_resume

        plan = plan_resume(cfg, given_options(args))
    run_training(cfg, plan)
    return 0


TRAIN_EXAMPLES = """examples:
  wubugen train --preset quickstart                     # minutes on 2 CPU cores, synthetic footage
  wubugen train --preset launcher --video_data_path footage/ --checkpoint_dir runs/phase1 --epochs 10
  wubugen train --preset launcher --video_data_path footage/ --checkpoint_dir runs/phase2a \\
      --load_checkpoint runs/phase1 --lambda_kl 0.001    # the guide's next phase
  torchrun --nproc_per_node 2 -m wubugen train --preset launcher   # NPROC_PER_NODE=2

The guide's launcher variables are the flags of the same name (LAMBDA_KL: --lambda_kl); CHECKPOINT_OUTPUT_DIR is
--checkpoint_dir and WANDB_ENABLED --wandb. scripts/train.sh and scripts/train.bat take them as variables."""


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train the VAE-GAN (no --video_data_path: on synthetic demo footage)",
        description="Train the WuBu-GAAD hybrid VAE-GAN. Options come from --preset, then --config FILE.toml, then flags. "
                    "Multi-GPU (launcher NPROC_PER_NODE): torchrun --nproc_per_node N -m wubugen train ...",
        epilog=TRAIN_EXAMPLES,
    )
    add_config_arguments(p)
    p.set_defaults(func=_cmd)
