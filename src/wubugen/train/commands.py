"""`wubugen train`: train on footage (or the synthetic default), with checkpoints, validation, samples and metrics."""
from __future__ import annotations

import argparse
import os

import torch

from wubugen.config import add_config_arguments, config_from_args


def run_training(cfg) -> dict:
    """Set up the process (torchrun's environment or one process), train, tear down. -> the run's summary."""
    from wubugen.train.distributed import cleanup, init_distributed
    from wubugen.train.trainer import train

    dist, device = init_distributed(cfg.train.device)
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, dist.world_size)))
    try:
        return train(cfg, dist, device)
    finally:
        cleanup(dist)


def _cmd(args: argparse.Namespace) -> int:
    run_training(config_from_args(args))
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train the VAE-GAN (no --video_data_path: on synthetic demo footage)",
        description="Train the WuBu-GAAD hybrid VAE-GAN. Options come from --preset, then --config FILE.toml, then flags. "
                    "Multi-GPU: torchrun --nproc_per_node=N -m wubugen train ...",
    )
    add_config_arguments(p)
    p.set_defaults(func=_cmd)
