"""Evaluation: validation metrics (PSNR, SSIM, LPIPS when its weights exist locally) and the evaluation runner."""
