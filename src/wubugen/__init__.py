"""wubugen: train, evaluate and sample the WuBu-GAAD hybrid VAE-GAN for short video clips."""

__version__ = "0.1.0"
