"""Networks: WuBu stacks, regional encoder, generator, discriminators, and the VAE-GAN that joins them."""
