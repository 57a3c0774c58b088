"""The motion branch in the model: flow step t joins frame t, cached flow equals flow computed on the fly, every WuBu-M /
embed parameter gets gradient (`wubugen inspect` finds no dead parameter), a frozen RAFT keeps its file's weights and eval
mode, and `wubugen train --use_wubu_motion_branch --optical_flow_net_type dis` trains on real footage."""
from __future__ import annotations

import io
import json

import pytest
import torch

from conftest import VIDEOS, tiny_args
from wubugen.cli import main
from wubugen.config import build_config
from wubugen.inspect_cmd import random_clip, run_inspect
from wubugen.models.motion import MotionEncoder
from wubugen.models.vaegan import build_model
from wubugen.train.losses import kl_loss, recon_loss

SHARED = VIDEOS / "train"
SHORT_VIDEOS = ("intel__asl_eat.mkv", "intel__asl_hungry.mkv", "imageio__realshort.mp4")


def tiny_motion(**over):
    base = {"use_wubu_motion_branch": True, "optical_flow_net_type": "dis"}
    base.update(over)
    return build_config("tiny", overrides=base)


def test_motion_features_align_flow_step_t_with_frame_t() -> None:
    cfg = tiny_motion(num_input_frames=3, num_predict_frames=1, wubu_dropout=0.0)
    torch.manual_seed(0)
    enc = MotionEncoder(cfg.model, cfg.geometry).eval()
    b, t, h, w = 2, cfg.encoder_frames, cfg.data.image_h, cfg.data.image_w
    frames = random_clip(cfg, b)
    flow = torch.randn(b, t - 1, 2, h, w)
    out = enc(frames, flow)
    assert out.shape == (b, t, enc.out_dim)
    torch.testing.assert_close(out[:, -1], enc.no_next[None].expand(b, -1))  # the last frame has no next frame
    bumped = flow.clone()
    bumped[:, 1] += 3.0  # change flow step 1 only: only frame 1's motion vector changes
    out2 = enc(frames, bumped)
    changed = (out2 - out).abs().amax(-1) > 1e-6
    assert changed[:, 1].all() and not changed[:, [0, 2, 3]].any()
    with pytest.raises(ValueError, match="flow must be"):
        enc(frames, flow[:, :-1])


def test_cached_flow_gives_the_same_model_output_as_flow_on_the_fly() -> None:
    cfg = tiny_motion()
    torch.manual_seed(1)
    model = build_model(cfg.model, cfg.geometry).eval()
    clip = random_clip(cfg, 2)
    enc, _ = model.split(clip)
    flow = model.motion.compute_flow(enc).half()  # as the cache stores it
    with torch.no_grad():
        a = model(clip, None, sample_posterior=False)
        b = model(clip, flow, sample_posterior=False)
    torch.testing.assert_close(a.mu, b.mu, atol=2e-3, rtol=1e-3)


def test_gradient_reaches_every_motion_parameter() -> None:
    cfg = tiny_motion(task="predict", num_input_frames=3, num_predict_frames=2, flow_stats_components=[
        "mag_mean", "mag_std", "angle_mean", "angle_std"])
    torch.manual_seed(2)
    model = build_model(cfg.model, cfg.geometry).train()
    clip = random_clip(cfg, 2)
    enc, _ = model.split(clip)
    flow = torch.randn(2, cfg.encoder_frames - 1, 2, cfg.data.image_h, cfg.data.image_w) * 2
    out = model(clip, flow)
    (recon_loss(out.recon, out.target) + kl_loss(out.mu, out.logvar, "mean")).backward()
    params = dict(model.motion.named_parameters())
    assert any(n.startswith("wubu_m.") for n in params) and "embed.weight" in params and "no_next" in params
    for name, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_inspect_with_the_motion_branch_reports_no_dead_parameter() -> None:
    out = io.StringIO()
    assert run_inspect(tiny_motion(), batch=2, out=out) == 0
    text = out.getvalue()
    assert "motion on" in text and "model.motion.wubu_m" in text
    assert "every trainable parameter received a finite, non-zero gradient" in text


def test_frozen_raft_in_the_model(raft_small_file) -> None:
    cfg = tiny_motion(optical_flow_net_type="raft_small", flow_weights=str(raft_small_file))
    model = build_model(cfg.model, cfg.geometry)
    model.train()
    net = model.motion.flow.net
    assert not net.training and all(not p.requires_grad for p in net.parameters())
    state = torch.load(raft_small_file, weights_only=True)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())  # the file's weights, never re-initialised
    clip = random_clip(cfg, 1)
    out = model(clip)  # flow computed on the fly, all pairs in one call
    recon_loss(out.recon, out.target).backward()
    assert all(p.grad is None for p in net.parameters())
    assert all(p.grad is not None for p in model.motion.wubu_m.parameters())
    sd = model.state_dict()
    assert not any(".flow.net." in k for k in sd)  # checkpoints do not carry (or override) the flow net
    build_model(cfg.model, cfg.geometry).load_state_dict(sd, strict=True)
    assert not net.training


def test_trainable_raft_gets_gradient(raft_small_file) -> None:
    cfg = tiny_motion(optical_flow_net_type="raft_small", flow_weights=str(raft_small_file), freeze_flow_net=False)
    model = build_model(cfg.model, cfg.geometry).train()
    net = model.motion.flow.net
    assert net.training and all(p.requires_grad for p in net.parameters())
    assert any(".flow.net." in k for k in model.state_dict())  # trained weights are the model's
    out = model(random_clip(cfg, 1))
    recon_loss(out.recon, out.target).backward()
    assert sum(float(p.grad.abs().sum()) for p in net.parameters() if p.grad is not None) > 0


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"real footage not found at {SHARED}")
def test_train_with_dis_motion_on_real_footage(tmp_path, capsys) -> None:
    listing = tmp_path / "short.txt"
    listing.write_text("".join(f"{SHARED / name}\n" for name in SHORT_VIDEOS))
    run, cache = tmp_path / "run", tmp_path / "cache"
    args = tiny_args(run, cache, "--use_wubu_motion_branch", "--optical_flow_net_type", "dis", "--video_data_path",
                     str(listing), "--max_steps", "4", "--log_interval", "2")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "flow cache (dis): 3 sources computed" in out and "done: 4 steps" in out
    assert len(list((cache / "flow").glob("*.npy"))) == 3
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["nonfinite_steps"] == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss_recon" in r["values"] for r in rows)


def test_step_runner_knows_when_flow_is_computed_in_the_step() -> None:
    """Steps whose flow is not cached are not captured in CUDA graphs (checked on the GPU in test_cuda_graphs)."""
    from wubugen.models.discriminator import build_discriminator
    from wubugen.train.players import players_from_modules
    from wubugen.train.step import StepRunner

    cpu = torch.device("cpu")
    for motion in (False, True):
        cfg = build_config("tiny", overrides={"use_wubu_motion_branch": motion, "optical_flow_net_type": "dis"})
        model, disc = build_model(cfg.model, cfg.geometry), build_discriminator(cfg.model, cfg.geometry)
        r = StepRunner(players_from_modules(cfg, cpu, model, disc))
        assert r.flow_in_step(None) is motion
        assert not r.flow_in_step(torch.zeros(2, 3, 2, 8, 8))


def test_a_checkpoint_with_the_dropped_region_score_bias_loads_and_resumes_its_optimizer(tmp_path) -> None:
    """Earlier versions had a bias on the motion branch's region scores, which the softmax over regions ignores (it
    never had a gradient: `wubugen inspect` found it dead where float sums cancelled exactly, as with 2 threads). Their
    checkpoints, written and read back as files (safetensors lists keys by name, not in the module's order), still load
    strictly; their optimizer state loses that entry and a positional EMA state (an older format) maps by name, every
    other tensor kept."""
    from torch import nn

    from wubugen import checkpoint as ckpt
    from wubugen.train.optim import build_optimizer

    cfg = tiny_motion()
    torch.manual_seed(0)
    old = build_model(cfg.model, cfg.geometry)
    score = old.motion.region_score
    assert score.bias is None
    old.motion.region_score = nn.Linear(score.in_features, 1)  # the earlier layout
    with torch.no_grad():
        old.motion.region_score.weight.copy_(score.weight)
    names = [n for n, p in old.named_parameters() if p.requires_grad]
    assert names[names.index("motion.region_score.weight") + 1] == "motion.region_score.bias"
    opt = build_optimizer(cfg.train.optimizer, [p for p in old.parameters() if p.requires_grad], 1e-3, cfg.train)
    for p in old.parameters():
        p.grad = torch.randn_like(p) if p.requires_grad else None
    opt.step()
    moments = {n: {k: v.clone() for k, v in opt.state_dict()["state"][i].items()} for i, n in enumerate(names)}
    ema = {str(i): p.detach() + 1.0 for i, (_, p) in enumerate(old.named_parameters())}  # positional, as once saved
    ckpt.save_checkpoint(tmp_path, 1, {"model": old, "ema": ema}, {"opt_g": opt.state_dict()}, {}, keep_last=1)
    c = ckpt.load_checkpoint(tmp_path)

    new = build_model(cfg.model, cfg.geometry)
    report = ckpt.load_module_weights(new, c.weights["model"], strict=True, name="model")
    assert report.clean and report.loaded == len(new.state_dict())
    new_opt = build_optimizer(cfg.train.optimizer, [p for p in new.parameters() if p.requires_grad], 1e-3, cfg.train)
    new_opt.load_state_dict(ckpt.without_dropped_parameters(c.train_state["opt_g"], c.weights["model"], new))
    trainable = [(n, p) for n, p in new.named_parameters() if p.requires_grad]
    assert len(trainable) == len(names) - 1 and "motion.region_score.bias" not in dict(trainable)
    for n, p in trainable:
        for k, v in moments[n].items():
            assert torch.equal(new_opt.state[p][k], v), (n, k)
    by_name = ckpt.ema_state_by_name(c.weights["ema"], new)
    assert sorted(by_name) == sorted(n for n, _ in new.named_parameters())
    for n, p in new.named_parameters():
        assert torch.equal(by_name[n], p.detach() + 1.0), n
    # a checkpoint of this version goes through unchanged
    same = new_opt.state_dict()
    assert ckpt.without_dropped_parameters(same, new.state_dict(), new) is same
