"""The CUDA-graph path of the training step against the eager step (needs a GPU: pytest -m gpu)."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_args
from wubugen.config import build_config
from wubugen.data.batch import ClipBatch
from wubugen.train.optim import apply_lr_momentum_scales
from wubugen.train.players import build_players
from wubugen.train.step import LOSS_KEYS, StepRunner

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def make_runner(graphs: bool, optimizer: str = "riemannian_adam", **over) -> StepRunner:
    # dropout off and fp32: eager and replayed steps then run the same kernels on the same numbers
    cfg = build_config("tiny", overrides={"cuda_graphs": graphs, "precision": "fp32", "wubu_dropout": 0.0,
                                          "optimizer": optimizer, **over})
    torch.manual_seed(0)
    return StepRunner(build_players(cfg, torch.device("cuda")))


def clips(runner: StepRunner, n: int) -> list[torch.Tensor]:
    cfg = runner.cfg
    g = torch.Generator().manual_seed(1)
    shape = (cfg.train.batch_size, cfg.window_frames, cfg.data.num_channels, cfg.data.image_h, cfg.data.image_w)
    return [torch.randint(0, 256, shape, generator=g, dtype=torch.uint8) for _ in range(n)]


def weights(runner: StepRunner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in list(runner.players.model.parameters()) + list(runner.players.disc.parameters())]


@pytest.fixture(autouse=True)
def deterministic():
    old = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old


def run_sequence(graphs: bool, optimizer: str, **over) -> tuple[list[torch.Tensor], list[torch.Tensor], StepRunner]:
    """8 steps with hyper-parameters changing between steps as Q-control and the lambda_kl controller change them;
    the adversarial term comes on at step 4. Seeded alike: the posterior samples draw the same noise."""
    r = make_runner(graphs, optimizer, **over)
    data = clips(r, 8)
    flows = [None] * len(data)
    if r.cfg.model.use_wubu_motion_branch:  # cached flows (float16 on the host), as the flow cache serves them
        cfg, g = r.cfg, torch.Generator().manual_seed(2)
        shape = (cfg.train.batch_size, cfg.encoder_frames - 1, 2, cfg.data.image_h, cfg.data.image_w)
        flows = [(torch.randn(shape, generator=g) * 2).half() for _ in data]
    torch.cuda.manual_seed(123)
    losses = []
    for i, (batch, flow) in enumerate(zip(data, flows)):
        if i == 5:
            apply_lr_momentum_scales(r.players.opt_g, 0.5, 0.9)
            apply_lr_momentum_scales(r.players.opt_d, 2.0, 1.1)
        out, *_ = r.run([ClipBatch(batch, flow)], 1e-4 * (1 + i), i >= 4)
        losses.append(out)
    return losses, weights(r), r


MOTION = {"use_wubu_motion_branch": True, "optical_flow_net_type": "dis"}
PREDICT_SKIP = {"task": "predict", "backbone": "wubu_gaad"}  # the skip of the last context frames is its default
PREDICT_WARP = {**PREDICT_SKIP, "predict_warp": True, "predict_skip_frames": 0}


@pytest.mark.parametrize("optimizer,over,eager_over", [
    ("riemannian_adam", {}, {}), ("riemannian_sgd", {}, {}),
    ("riemannian_adam", {"activation_checkpointing": True}, {}),  # same math, recomputed inside the graph
    ("riemannian_adam", MOTION, MOTION),  # cached flows are a second static input
    # the region codes on a second stream (on by default) against the eager step with them on the current stream:
    # the capture records the fork and the join, the numbers stay the same; for both backbones
    pytest.param("riemannian_adam", {"wubu_side_stream": True}, {"wubu_side_stream": False}, id="side_stream"),
    pytest.param("riemannian_adam", {"backbone": "plain", "wubu_side_stream": True},
                 {"backbone": "plain", "wubu_side_stream": False}, id="side_stream_plain"),
    pytest.param("riemannian_adam", {"encoder_use_roi_align": True, "wubu_side_stream": True},
                 {"encoder_use_roi_align": True, "wubu_side_stream": False}, id="side_stream_roi"),  # reads the stem
    pytest.param("riemannian_adam", PREDICT_WARP, PREDICT_WARP, id="predict_warp"),  # grid_sample, static grid
    pytest.param("riemannian_adam", PREDICT_SKIP, PREDICT_SKIP, id="predict_skip"),  # context frames, a second input
])
def test_replayed_steps_match_eager_steps(optimizer, over, eager_over):
    losses_e, weights_e, eager = run_sequence(False, optimizer, **eager_over)
    losses_g, weights_g, graphed = run_sequence(True, optimizer, **over)
    assert graphed.graphs_on and not eager.graphs_on
    if "wubu_side_stream" in over:
        assert graphed.players.model.encoder.codes_stream and not eager.players.model.encoder.codes_stream
    # steps 0-2 eager warm-up, step 3 captures the graph without the adversarial term; steps 4-6 warm up the variant
    # with it, step 7 captures and replays that one
    assert len(graphed._graphs) == 2
    for a, b in zip(losses_e, losses_g):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    for a, b in zip(weights_e, weights_g):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("roi", [False, True])
def test_side_stream_codes_match_eagerly_in_training_and_eval(monkeypatch, roi):
    """The codes' second stream on its own, without graphs: a training step and an eval forward equal the same model's
    with the codes on the current stream. The codes first spin the GPU for a while on whatever stream they run on,
    so a missing wait before they are read would read unfinished codes and fail."""
    from wubugen.models.encoder import RegionalEncoder

    slow = RegionalEncoder.region_codes_of

    def late(self, *args):
        torch.cuda._sleep(50_000_000)  # tens of milliseconds of spinning
        return slow(self, *args)

    monkeypatch.setattr(RegionalEncoder, "region_codes_of", late)
    out = {}
    for side in (True, False):
        r = make_runner(False, wubu_side_stream=side, encoder_use_roi_align=roi)
        assert r.players.model.encoder.codes_stream is side
        data = clips(r, 2)
        torch.cuda.manual_seed(7)
        losses, *_ = r.run([data[0]], 1e-4, True)
        model = r.players.model.eval()
        with torch.no_grad():
            mu = model.encoder(r.prepare(data[1])[:, :r.cfg.encoder_frames])[0]
        out[side] = (losses, mu, weights(r))
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-5, atol=1e-6)
    for a, b in zip(out[True][2], out[False][2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_nonfinite_replayed_step_is_skipped_and_counted():
    r = make_runner(True)
    data = clips(r, 6)
    for batch in data[:5]:
        r.run([batch], 1e-4, True)
    assert r._graphs, "captured after the warm-up steps"
    before = weights(r)
    losses, skip, _, _ = r.run([data[5]], float("nan"), True)  # lambda_kl NaN reaches the graph: non-finite G loss
    assert bool(skip) and int(r.nonfinite_steps) == 1
    assert not torch.isfinite(losses[LOSS_KEYS.index("loss_g_total")])
    for a, b in zip(before, weights(r)):
        assert torch.equal(a, b)
    r.run([data[0]], 1e-4, True)
    assert int(r.consecutive_nonfinite) == 0


def test_returned_losses_are_not_overwritten_by_the_next_replay():
    r = make_runner(True)
    data = clips(r, 7)
    for batch in data[:5]:
        r.run([batch], 1e-4, True)
    first, *_ = r.run([data[5]], 1e-4, True)
    kept = first.clone()
    r.run([data[6]], 1e-4, True)
    assert torch.equal(first, kept)


@pytest.mark.parametrize("over", [
    {"compile": True},  # build_players compiles the step's players (and channels-last)
    {"compile_wubu_maps": True},  # only the WuBu levels' hyperbolic part, inside the captured eager step
    # only the norm-FiLM-activation of the plain backbone and D, likewise (with the adaptive GAN weight through D)
    {"compile_norms": True, "backbone": "plain", "gan_weighting": "adaptive", "gan_start_step": 0},
])
def test_compiled_players_are_captured_and_train(over):
    eager = make_runner(False, **{k: v for k, v in over.items() if not k.startswith("compile")})
    compiled = make_runner(True, **over)
    for option, switch in (("compile_wubu_maps", "fused_maps"), ("compile_norms", "fused_norms")):
        if option in over:
            nets = (compiled.players.model, compiled.players.disc)
            parts = [m for net in nets for m in net.modules() if hasattr(m, switch)]
            assert parts and all(getattr(m, switch) for m in parts)
    data = clips(eager, 6)
    out = {}
    for name, r in (("eager", eager), ("compiled", compiled)):
        torch.cuda.manual_seed(5)
        out[name] = torch.stack([r.run([b], 1e-4, True)[0] for b in data])
    assert compiled._graphs, "compiled players are captured like eager ones"
    assert torch.isfinite(out["compiled"]).all()
    # inductor reorders float arithmetic: close, not equal
    torch.testing.assert_close(out["compiled"], out["eager"], rtol=2e-2, atol=2e-3)


def test_trainer_on_cuda_with_graphs_validates_resumes_and_saves(tmp_path):
    """The whole trainer on the GPU: graph capture after the warm-up, a second graph when the adversarial term starts,
    validation (eval mode, EMA swap, RNG forks) between replays, a checkpoint and a resume."""
    import json

    from wubugen.cli import main

    run = tmp_path / "run"
    args = tiny_args(run, tmp_path / "cache", "--val_interval", "4", "--gan_start_step", "5", "--ema_decay", "0.9")
    assert main(args + ["--max_steps", "8"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["nonfinite_steps"] == 0
    assert summary["val"]["avg_val_psnr"] > 0
    assert main(args + ["--max_steps", "12", "--resume", str(run)]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 12


def test_flow_computed_inside_the_step_runs_eagerly():
    """Without cached flow the motion branch computes flow in the step (host-side grids/OpenCV): not capturable, so those
    steps stay eager while cached-flow steps of the same runner are captured."""
    r = make_runner(True, **MOTION)
    assert r.flow_in_step(None) and not r.flow_in_step(torch.zeros(1))
    for batch in clips(r, 5):
        out, *_ = r.run([ClipBatch(batch)], 1e-4, True)
        assert torch.isfinite(out).all()
    assert not r._graphs
