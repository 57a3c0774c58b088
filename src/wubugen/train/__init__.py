"""Training: the trainer (steps, AMP, DDP, accumulation), losses, optimizers, Q-control, checkpoints, phases, health."""
