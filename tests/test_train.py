"""The training engine end to end on tiny configs: outputs, exact resume after SIGKILL, safe loading, non-finite steps,
new phases with changed modules, and DDP (gloo) weight equality."""
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import DOG_VIDEO, tiny_args
from wubugen.cli import main
from wubugen.config import build_config


def weights_digest(path: Path) -> str:
    w = load_file(str(path))
    h = hashlib.sha256()
    for k in sorted(w):
        if k.startswith(("model.", "disc.")):
            h.update(k.encode())
            h.update(w[k].contiguous().numpy().tobytes())
    return h.hexdigest()


def steps_per_epoch(cache: str) -> int:
    """Optimizer steps per epoch of the tiny preset on the demo footage (the loader drops the last partial batch)."""
    from wubugen.data import build_datasets

    cfg = build_config("tiny", overrides={"cache_dir": cache, "progress": False})
    return len(build_datasets(cfg).train) // cfg.train.batch_size


def last_checkpoint(run: Path) -> Path:
    return run / json.loads((run / "last.json").read_text())["checkpoint"]


def test_train_writes_checkpoints_samples_metrics(tmp_path, cache, capsys):
    run = tmp_path / "run"
    assert main(tiny_args(run, cache, "--max_steps", "12", "--save_interval", "6", "--log_interval", "3",
                          "--wandb_log_train_recon_interval", "6", "--q_controller_enabled",
                          "--q_control_interval", "3")) == 0
    out = capsys.readouterr().out
    assert "validation at step" in out and "done: 12 steps" in out
    assert (run / "last.json").exists() and (run / "best.json").exists()
    assert (last_checkpoint(run) / "weights.safetensors").exists()
    assert (run / "config.toml").exists() and (run / "report.png").exists()
    for suffix in ("png", "gif", "mp4"):
        assert (run / "samples" / f"final_step00000012.{suffix}").stat().st_size > 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*(r["values"].keys() for r in rows))
    for k in ("train/loss_recon", "train/loss_kl", "train/loss_g_adv", "train/loss_g_total", "train/loss_d_real",
              "train/loss_d_fake", "train/loss_d_total", "train/lr_gen", "train/lr_disc", "train/lambda_kl",
              "q_ctrl_gen/lrscale", "q_ctrl_disc/momentumscale", "val/avg_val_psnr", "val/avg_val_ssim",
              "train/nonfinite_steps"):
        assert k in keys, k
    assert any((run / "media").rglob("*.png"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 12
    val = [(r["step"], r["values"]) for r in rows if "val/avg_val_psnr" in r["values"]]
    step, last = val[-1]
    psnr, mse = summary["val"]["avg_val_psnr"], summary["val"]["avg_val_recon_mse"]
    assert psnr == last["val/avg_val_psnr"] and mse == last["val/avg_val_recon_mse"]  # the last validation
    assert 5.0 < psnr < 60.0 and 0.0 < mse < 0.5  # an untrained-ish tiny model: far from both noise and a perfect copy
    assert psnr >= 10 * math.log10(1 / mse) - 1e-9  # the mean of per-frame PSNRs is at least the PSNR of the mean MSE
    assert -1.0 <= summary["val"]["avg_val_ssim"] <= 1.0
    # validation ran at every save; best.json names the step of the best (highest) PSNR, which the summary reports
    assert summary["best_metric"] == max(v["val/avg_val_psnr"] for _, v in val)
    assert json.loads((run / "best.json").read_text())["step"] == summary["best_step"]
    assert summary["best_step"] in [s for s, _ in val] and step == 12


KILLER = textwrap.dedent("""
    import os, signal, sys
    import wubugen.checkpoint as ckpt
    from wubugen.cli import main
    real = ckpt.save_checkpoint
    def save_then_die(*a, **k):
        path = real(*a, **k)
        if a[1] == int(os.environ["KILL_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return path
    ckpt.save_checkpoint = save_then_die
    sys.exit(main(sys.argv[1:]))
""")


def test_resume_after_sigkill_is_bitwise_exact(tmp_path, cache):
    flags = ["--max_steps", "16", "--save_interval", "8", "--log_interval", "4", "--q_controller_enabled",
             "--q_control_interval", "2", "--lambda_kl_update_interval", "2", "--ema_decay", "0.9", "--val_interval",
             "5", "--augment_flip"]
    full = tmp_path / "full"
    assert main(tiny_args(full, cache, *flags)) == 0

    killed = tmp_path / "killed"
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    env = {**os.environ, "KILL_AT": "8"}
    proc = subprocess.run([sys.executable, str(script), *tiny_args(killed, cache, *flags)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert json.loads((killed / "last.json").read_text())["step"] == 8
    assert main(tiny_args(killed, cache, *flags, "--resume", str(killed))) == 0

    assert weights_digest(last_checkpoint(full) / "weights.safetensors") == \
        weights_digest(last_checkpoint(killed) / "weights.safetensors")


def test_crafted_pickle_checkpoint_is_refused(tmp_path, cache, capsys):
    run = tmp_path / "run"
    assert main(tiny_args(run, cache, "--max_steps", "2")) == 0
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    state = last_checkpoint(run) / "train_state.pt"
    torch.save({"step": Evil()}, state)
    capsys.readouterr()
    assert main(tiny_args(run, cache, "--max_steps", "4", "--resume", str(run))) == 2
    err = capsys.readouterr().err
    assert "refusing to unpickle" in err and not marker.exists()


def inject_nan(monkeypatch, bad_call) -> None:
    """Make the reconstruction loss NaN on the micro-steps (1-based calls) for which bad_call(n) is true."""
    import wubugen.train.losses as step_mod

    calls = {"n": 0}
    real = step_mod.recon_loss

    def maybe_nan(recon, target):
        calls["n"] += 1
        loss = real(recon, target)
        return loss * float("nan") if bad_call(calls["n"]) else loss

    monkeypatch.setattr(step_mod, "recon_loss", maybe_nan)


def test_nonfinite_steps_are_skipped_counted_then_rolled_back(tmp_path, cache, monkeypatch, capsys):
    inject_nan(monkeypatch, lambda n: n in (5, 6) or 9 <= n <= 14)
    run = tmp_path / "run"
    assert main(tiny_args(run, cache, "--max_steps", "12", "--save_interval", "4", "--log_interval", "1",
                          "--max_consecutive_nonfinite", "4")) == 0
    out = capsys.readouterr().out
    # checkpoints every 4 steps and at each epoch's end; the 4th consecutive non-finite step is step 12, whose own save
    # does not happen: the run returns to the newest checkpoint before it (derived from the data, not assumed)
    per_epoch = steps_per_epoch(cache)
    saved = [s for s in range(1, 12) if s % 4 == 0 or s % per_epoch == 0]
    assert f"rolled back to step {max(saved)}" in out and "learning rates halved" in out
    rows = [json.loads(line)["values"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    counts = [r["train/nonfinite_steps"] for r in rows if "train/nonfinite_steps" in r]
    assert max(counts) >= 2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rollbacks"] == 1 and summary["nonfinite_steps"] >= 6
    lrs = [r["train/lr_gen"] for r in rows if "train/lr_gen" in r]
    assert lrs[-1] == pytest.approx(lrs[0] / 2)


def test_nonfinite_again_after_rollback_stops_with_message(tmp_path, cache, monkeypatch, capsys):
    inject_nan(monkeypatch, lambda n: n > 4)
    run = tmp_path / "run"
    rc = main(tiny_args(run, cache, "--max_steps", "40", "--save_interval", "4", "--log_interval", "2",
                        "--max_consecutive_nonfinite", "4"))
    assert rc == 3
    assert "again after a rollback" in capsys.readouterr().err


def test_skipped_step_leaves_weights_unchanged(tmp_path, cache):
    from wubugen.data import make_loader
    from wubugen.train.distributed import DistInfo
    from wubugen.train.trainer import Trainer

    cfg = build_config("tiny", overrides={"cache_dir": cache, "checkpoint_dir": str(tmp_path / "run")})
    tr = Trainer(cfg, DistInfo(), torch.device("cpu"))
    batch = next(iter(make_loader(tr.data.train, cfg, True)))
    before = [p.detach().clone() for p in list(tr.players.model.parameters()) + list(tr.players.disc.parameters())]
    tr.runner.run([batch], float("nan"), True)  # lambda_kl NaN: a non-finite G loss
    after = list(tr.players.model.parameters()) + list(tr.players.disc.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert int(tr.runner.nonfinite_steps) == 1


def test_new_phase_with_film_lists_new_tensors_and_this_runs_flags_win(tmp_path, cache, capsys):
    p1 = tmp_path / "phase1"
    assert main(tiny_args(p1, cache, "--max_steps", "4", "--lambda_kl", "0.0001")) == 0
    capsys.readouterr()
    p2 = tmp_path / "phase2"
    assert main(tiny_args(p2, cache, "--max_steps", "3", "--lambda_kl", "0.001", "--learning_rate_gen", "0.0002",
                          "--disc_use_gaad_film_condition", "--load_checkpoint", str(p1))) == 0
    out = capsys.readouterr().out
    assert "missing from checkpoint: blocks.0.2.net.0.weight, blocks.0.2.net.0.bias" in out  # the new FiLM tensors
    assert "lambda_kl 0.001" in out
    rows = [json.loads(line)["values"] for line in (p2 / "metrics.jsonl").read_text().splitlines()]
    assert json.loads((p2 / "summary.json").read_text())["steps"] == 3
    assert all(r.get("train/lambda_kl", 0.001) == 0.001 for r in rows)
    assert main(tiny_args(tmp_path / "p3", cache, "--max_steps", "1", "--disc_use_gaad_film_condition",
                          "--load_checkpoint", str(p1), "--load_strict")) == 2
    assert "blocks.0.2.net" in capsys.readouterr().err


def test_new_phase_refuses_another_backbone(tmp_path, cache, capsys):
    """A phase plan begun before the presets moved to the plain backbone: its next phase must not load the WuBu and D
    weights alone and train the conv backbone from scratch."""
    p1 = tmp_path / "phase1"
    assert main(tiny_args(p1, cache, "--max_steps", "1", "--backbone", "wubu_gaad")) == 0
    capsys.readouterr()
    p2 = tmp_path / "phase2"
    assert main(tiny_args(p2, cache, "--max_steps", "1", "--backbone", "plain", "--load_checkpoint", str(p1))) == 2
    err = capsys.readouterr().err
    assert "trained with --backbone wubu_gaad" in err and "add --backbone wubu_gaad" in err
    assert not (p2 / "summary.json").exists()


DDP_WORKER = textwrap.dedent("""
    import hashlib, os, sys, torch
    from wubugen.config import build_config
    from wubugen.train.distributed import init_distributed, cleanup
    from wubugen.train.trainer import Trainer
    torch.set_num_threads(1)
    cfg = build_config("tiny", overrides={"cache_dir": sys.argv[1], "checkpoint_dir": sys.argv[2], "max_steps": 6,
                                          "progress": False, "log_interval": 2, "batch_size": 2,
                                          "ddp_comm": sys.argv[3]})
    dist, device = init_distributed("cpu")
    tr = Trainer(cfg, dist, device)
    assert (tr.runner.reducer is not None) == (sys.argv[3] == "flat")  # flat: one all-reduce after the backward
    tr.fit()
    h = hashlib.sha256()
    for p in list(tr.players.model.parameters()) + list(tr.players.disc.parameters()):
        h.update(p.detach().numpy().tobytes())
    open(os.path.join(sys.argv[2], f"rank{dist.rank}.sha"), "w").write(h.hexdigest())
    cleanup(dist)
""")


@pytest.mark.parametrize("comm", ["ddp", "flat"])
def test_ddp_gloo_ranks_hold_identical_weights(tmp_path, cache, comm):
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    run = tmp_path / "run"
    run.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(29517 + (comm == "flat")), str(script), cache, str(run), comm], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (run / "rank0.sha").read_text(), (run / "rank1.sha").read_text()
    assert a == b
    # and training moved the weights: a single-process run from the same seed differs (each rank saw other data)
    assert (run / "last.json").exists()


def test_sample_and_evaluate_commands(tmp_path, cache, capsys):
    run = tmp_path / "run"
    assert main(tiny_args(run, cache, "--max_steps", "3", "--ema_decay", "0.9")) == 0  # sample/evaluate use the EMA
    for name in ("s.png", "s.gif", "s.mp4"):
        assert main(["sample", "--checkpoint", str(run), "--num", "3", "--out", str(tmp_path / name)]) == 0
        assert (tmp_path / name).stat().st_size > 0
    assert main(["sample", "--checkpoint", str(run), "--num", "2", "--out", str(tmp_path / "bad.txt")]) == 2
    data = DOG_VIDEO
    if not data.exists():
        pytest.skip("../shared/data is not beside the repository")
    assert main(["sample", "--checkpoint", str(run), "--num", "2", "--out", str(tmp_path / "ctx.png"),
                 "--context", str(data)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run), "--data", str(data), "--out", str(tmp_path / "ev.json"),
                 "--max_batches", "2"]) == 0
    out = capsys.readouterr().out
    assert "PSNR (dB)" in out and "LPIPS" in out
    result = json.loads((tmp_path / "ev.json").read_text())
    assert result["avg_val_psnr"] > 0 and result["avg_val_lpips"] is None


def test_predict_task_reports_the_copy_last_frame_baseline(tmp_path, cache, capsys):
    """Validation in training and `wubugen evaluate` share one metric loop; both give the baseline in the predict task."""
    run = tmp_path / "run"
    assert main(tiny_args(run, cache, "--task", "predict", "--max_steps", "2", "--val_interval", "2")) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val"]["copy_last_avg_val_psnr"] > 0
    data = DOG_VIDEO
    if not data.exists():
        pytest.skip("../shared/data is not beside the repository")
    assert main(["evaluate", "--checkpoint", str(run), "--data", str(data), "--out", str(tmp_path / "ev.json"),
                 "--max_batches", "1"]) == 0
    result = json.loads((tmp_path / "ev.json").read_text())
    assert result["clips"] > 0 and result["copy_last_frame"]["avg_val_psnr"] > 0


def test_compiled_players_are_kept_as_the_step_s_modules():
    """torch.compile's wrapper proxies len() to the module in torch 2.14 (a TypeError for ours), so choosing the
    step's modules by truth value (`model_step or model`) crashed every --compile run before its first step."""
    from wubugen.models.discriminator import build_discriminator
    from wubugen.models.vaegan import build_model
    from wubugen.train.players import players_from_modules

    cfg = build_config("tiny")
    model, disc = build_model(cfg.model, cfg.geometry), build_discriminator(cfg.model, cfg.geometry)
    m_step, d_step, frozen = torch.compile(model), torch.compile(disc), torch.compile(disc)  # lazy: nothing compiles
    p = players_from_modules(cfg, torch.device("cpu"), model, disc, m_step, d_step, frozen)
    assert p.model_step is m_step and p.disc_step is d_step and p.frozen_disc is frozen
    plain = players_from_modules(cfg, torch.device("cpu"), model, disc)
    assert plain.model_step is model and plain.disc_step is disc and plain.frozen_disc is disc


def test_compiled_players_train_with_the_adaptive_gan_weight(tmp_path, cache, monkeypatch, capsys):
    """--compile with the GAN on from the first step and the adaptive weight (two autograd.grad calls through the
    compiled model and D, then the backward from recon), through AOTAutograd's compiled forward and backward graphs
    (aot_eager: inductor's kernels are not the point here, and take minutes on a CPU). Before the fix of
    players_from_modules every --compile run crashed before this; a compiled backward's refusal to be retained (its
    donated buffers) is covered by tests/test_normact.py, whose compiled blocks sit inside D (the whole tiny players
    here donate none)."""
    from wubugen.train import speed

    monkeypatch.setattr(speed, "COMPILE_BACKEND", "aot_eager")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # the user's choice is kept
    run = tmp_path / "run"
    assert main(tiny_args(run, cache, "--max_steps", "3", "--compile", "--gan_weighting", "adaptive",
                          "--gan_start_step", "0", "--lambda_gan", "1", "--log_interval", "1")) == 0
    said = capsys.readouterr().out
    assert "compiling at the first steps" in said and str(tmp_path / "inductor") in said
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r["values"] for r in rows if "train/loss_g_adv" in r["values"]]
    assert len(train) == 3
    assert all(math.isfinite(v["train/loss_g_adv"]) and v["train/loss_g_adv"] > 0 for v in train)
    assert all(v["train/gan_weight"] > 0 and v["train/nonfinite_steps"] == 0 for v in train)


@pytest.mark.slow
def test_compiled_training_runs_and_saves_plain_weight_names(tmp_path, cache):
    run = tmp_path / "run"
    assert main(tiny_args(run, cache, "--max_steps", "2", "--compile")) == 0
    keys = load_file(str(last_checkpoint(run) / "weights.safetensors")).keys()
    assert not any("_orig_mod" in k for k in keys)


def test_ema_tracks_trainable_parameters_by_name_and_reads_old_checkpoints():
    from torch import nn

    from wubugen.checkpoint import ema_state_by_name
    from wubugen.train.ema import EMA

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)  # frozen, like a frozen RAFT inside the motion branch
    ema = EMA(model, decay=0.5, warmup=False)
    assert ema.names == ["1.weight", "1.bias"]
    start = {n: p.clone() for n, p in ema.state_dict().items() if n in ema.names}
    with torch.no_grad():
        for p in model[1].parameters():
            p.add_(2.0)
    ema.update(model, torch.tensor(1.0))
    for n in ema.names:
        torch.testing.assert_close(ema.state_dict()[n], start[n] + 1.0)  # halfway to the moved weights
    ema.update(model, torch.tensor(0.0))  # a skipped step leaves it alone
    for n in ema.names:
        torch.testing.assert_close(ema.state_dict()[n], start[n] + 1.0)

    live = {n: p.clone() for n, p in model.named_parameters()}
    with ema.swapped_into(model):
        torch.testing.assert_close(model[1].weight, start["1.weight"] + 1.0)
        torch.testing.assert_close(model[0].weight, live["0.weight"])  # frozen: untouched
    for n, p in model.named_parameters():
        assert torch.equal(p, live[n])

    # earlier checkpoints held every parameter under its position
    legacy = {str(i): p.clone() + 7 for i, p in enumerate(model.parameters())}
    by_name = ema_state_by_name(legacy, model)
    assert set(by_name) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    fresh = EMA(model, 0.5)
    fresh.load_state_dict(by_name)
    torch.testing.assert_close(fresh.state_dict()["1.bias"], model[1].bias + 7)
    assert float(fresh.current_decay()) == 0.5  # no update count saved: taken as warmed up
    assert ema_state_by_name(ema.state_dict(), model).keys() == ema.state_dict().keys()


def test_ema_warmup_follows_the_update_count_and_is_saved():
    from torch import nn

    from wubugen.train.ema import EMA

    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.999)
    decays = []
    for keep in (1.0, 1.0, 0.0, 1.0):  # a skipped step (keep 0) does not count
        decays.append(float(ema.current_decay()))
        ema.update(model, torch.tensor(keep))
    assert decays == pytest.approx([1 / 10, 2 / 11, 3 / 12, 3 / 12])
    again = EMA(model, decay=0.999)
    again.load_state_dict(ema.state_dict())
    assert float(again.current_decay()) == pytest.approx(4 / 13)
    ema.num_updates.fill_(1e6)
    assert float(ema.current_decay()) == pytest.approx(0.999)
