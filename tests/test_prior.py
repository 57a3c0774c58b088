"""The aggregate-posterior prior: its math against float64 references, its storage, and `wubugen sample --prior`."""
from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from conftest import tiny_args
from wubugen.cli import main
from wubugen.models.prior import LatentPrior, draw_latents, fit_latent_prior, sample_latent_prior


def _gaussian(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n draws of a d-dim Gaussian with a random mean and a random dense covariance (float64)."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(d, generator=g, dtype=torch.float64) * 3
    a = torch.randn(d, d, generator=g, dtype=torch.float64) / d ** 0.5
    cov = a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64)
    x = mean + torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    return x, mean, cov


def test_full_rank_fit_is_the_sample_mean_and_covariance():
    x, _, _ = _gaussian(400, 12)
    p = fit_latent_prior(x, rank=12)
    ref_cov = torch.cov(x.T)  # float64 reference, unbiased
    assert torch.allclose(p.mean.double(), x.mean(0), atol=1e-5)
    assert torch.allclose(p.covariance(), ref_cov, rtol=1e-4, atol=1e-5)
    assert torch.allclose(p.residual_var, torch.zeros(12), atol=1e-4)  # nothing left outside the components
    assert torch.allclose(p.components.double() @ p.components.double().T, torch.eye(12, dtype=torch.float64),
                          atol=1e-5)


def test_low_rank_fit_keeps_the_top_directions_and_every_value_s_variance():
    x, _, _ = _gaussian(300, 20, seed=1)
    p = fit_latent_prior(x, rank=5)
    ref_cov = torch.cov(x.T)
    evals, evecs = torch.linalg.eigh(ref_cov)  # ascending
    assert torch.allclose(p.eigenvalues.double(), evals.flip(0)[:5], rtol=1e-4)
    top = evecs[:, -5:]  # the same subspace (signs and order may differ)
    proj = top @ top.T
    assert torch.allclose(p.components.double().T @ p.components.double(), proj, atol=1e-4)
    # per value: total variance preserved exactly (components' share + residual)
    assert torch.allclose(torch.diagonal(p.covariance()), torch.diagonal(ref_cov), rtol=1e-4)
    assert (p.residual_var >= 0).all()


def test_samples_have_the_fitted_mean_and_covariance():
    x, _, _ = _gaussian(500, 8, seed=2)
    p = fit_latent_prior(x, rank=3)
    z = draw_latents(p, 200_000, torch.Generator().manual_seed(0)).double()
    assert torch.allclose(z.mean(0), p.mean.double(), atol=0.03)
    assert torch.allclose(torch.cov(z.T), p.covariance(), atol=0.03 * p.covariance().abs().max())


def test_sampling_is_a_deterministic_function_of_the_draws():
    x, _, _ = _gaussian(50, 6, seed=3)
    p = fit_latent_prior(x, rank=4)
    eps_k, eps_d = torch.zeros(2, 4), torch.zeros(2, 6)
    assert torch.equal(sample_latent_prior(p, eps_k, eps_d), p.mean.expand(2, -1))
    a = draw_latents(p, 5, torch.Generator().manual_seed(7))
    b = draw_latents(p, 5, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_rank_is_capped_by_the_data_and_bad_shapes_are_refused():
    x, _, _ = _gaussian(4, 10, seed=4)
    assert fit_latent_prior(x, rank=100).rank == 3  # N - 1 directions carry variance
    assert fit_latent_prior(x, rank=0).rank == 0
    with pytest.raises(ValueError):
        fit_latent_prior(torch.zeros(1, 5), rank=2)
    p = fit_latent_prior(x, rank=2)
    bad = {**p.tensors(), "residual_var": torch.zeros(3)}
    with pytest.raises(ValueError, match="inconsistent"):
        LatentPrior.from_tensors(bad)


def test_sample_fits_stores_and_reuses_the_prior(tmp_path, cache, capsys):
    from wubugen.checkpoint import resolve_checkpoint
    from wubugen.eval.prior import PRIOR_FILE

    run = tmp_path / "run"
    assert main(tiny_args(run, cache, "--max_steps", "2")) == 0
    step_dir = resolve_checkpoint(run, prefer="best")
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(run), "--num", "4", "--out", str(tmp_path / "a.png")]) == 0
    said = capsys.readouterr()
    assert "latent prior: fitted on" in said.err and (step_dir / PRIOR_FILE).is_file()
    assert "aggregate prior" in said.out
    assert "closest pair of samples:" in said.out and "near copies" in said.out
    summary = json.loads((run / "summary.json").read_text())  # the run's own final prior samples (tiny: 2 of them)
    assert set(summary["samples"]) == {"max_pairwise_psnr", "near_duplicate_pairs"}
    stored = safetensors.torch.load_file(str(step_dir / PRIOR_FILE))
    assert stored["mean"].numel() == stored["residual_var"].numel() > 0
    first = (tmp_path / "a.png").read_bytes()
    # reused: no second fit, the same pixels for the same seed
    assert main(["sample", "--checkpoint", str(run), "--num", "4", "--out", str(tmp_path / "b.png")]) == 0
    assert "fitted" not in capsys.readouterr().err
    assert (tmp_path / "b.png").read_bytes() == first
    # N(0, I) is still there and gives other samples
    assert main(["sample", "--checkpoint", str(run), "--num", "4", "--prior", "normal",
                 "--out", str(tmp_path / "n.png")]) == 0
    assert "N(0, I) prior" in capsys.readouterr().out
    assert (tmp_path / "n.png").read_bytes() != first
    # a different fit (rank) is fitted again rather than a stale one reused
    assert main(["sample", "--checkpoint", str(run), "--num", "4", "--prior_rank", "3",
                 "--out", str(tmp_path / "c.png")]) == 0
    assert "rank 3 of" in capsys.readouterr().err


def test_aggregate_prior_needs_readable_footage(tmp_path, cache, capsys):
    run = tmp_path / "run"
    assert main(tiny_args(run, cache, "--max_steps", "1")) == 0
    capsys.readouterr()
    missing = str(tmp_path / "nowhere")
    assert main(["sample", "--checkpoint", str(run), "--num", "2", "--prior", "aggregate", "--prior_data", missing,
                 "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and not (tmp_path / "x.png").exists()
    # auto: a note, then N(0, I) samples
    assert main(["sample", "--checkpoint", str(run), "--num", "2", "--prior_data", missing,
                 "--out", str(tmp_path / "y.png")]) == 0
    assert "note: sampling from N(0, I)" in capsys.readouterr().err


def test_training_samples_come_from_the_aggregate_prior_deterministically(tmp_path, cache):
    """--sample_prior aggregate (the default): the final samples are decoded from the fitted prior, the same pixels for
    the same run; --sample_prior normal keeps the N(0, I) draws."""
    pngs = {}
    for name, extra in (("agg1", ()), ("agg2", ()), ("normal", ("--sample_prior", "normal"))):
        run = tmp_path / name
        assert main(tiny_args(run, cache, "--max_steps", "2", *extra)) == 0
        (png,) = (run / "samples").glob("final_*.png")
        pngs[name] = png.read_bytes()
    assert pngs["agg1"] == pngs["agg2"]
    assert pngs["agg1"] != pngs["normal"]
