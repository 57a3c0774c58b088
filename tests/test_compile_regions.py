"""--no-compile_region_codes: under torch.compile the WuBu region codes run outside the compiled graphs (eagerly),
the conv path inside them, and the model computes what it computes uncompiled."""
from __future__ import annotations

import torch

from wubugen.config import build_config
from wubugen.models.layers import set_codes_outside_compile
from wubugen.models.vaegan import build_model


def _plain_tiny():
    cfg = build_config("tiny", overrides={"backbone": "plain", "encoder_targets_only": True, "region_codes": "gated"})
    torch.manual_seed(0)
    return cfg, build_model(cfg.model, cfg.geometry)


def _compiled_graphs(model, clip, outside: bool):
    """Run the model compiled with a backend that keeps every captured FX graph (and runs it as it is). -> (graphs,
    the output's recon and mu)"""
    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    set_codes_outside_compile(model, outside)
    torch.manual_seed(1)
    out = torch.compile(model, backend=keep)(clip, None)
    return graphs, out


def _module_paths(graphs) -> set[str]:
    paths = set()
    for gm in graphs:
        for node in gm.graph.nodes:
            for path, _ in (node.meta.get("nn_module_stack") or {}).values():
                paths.add(path)
    return paths


def test_region_codes_outside_compile_leave_the_graphs_and_the_outputs_alone():
    cfg, model = _plain_tiny()
    clip = torch.rand(2, cfg.window_frames, 3, cfg.data.image_h, cfg.data.image_w) * 2 - 1
    torch.manual_seed(1)
    eager = model(clip, None)

    inside, out_in = _compiled_graphs(model, clip, outside=False)
    outside, out_out = _compiled_graphs(model, clip, outside=True)
    set_codes_outside_compile(model, False)

    wubu = lambda paths: {p for p in paths if "wubu_s" in p or "wubu_t" in p}  # noqa: E731
    assert wubu(_module_paths(inside)), "the whole-model graph holds the WuBu stacks"
    assert not wubu(_module_paths(outside)), "with the switch on no compiled graph holds them"
    assert any("spatial" in p or "plain" in p for p in _module_paths(outside)), "the conv path is still compiled"
    n_in = sum(len(g.graph.nodes) for g in inside)
    n_out = sum(len(g.graph.nodes) for g in outside)
    assert n_out < n_in / 2, (n_in, n_out)  # the codes are most of the operators
    for got in (out_in, out_out):
        torch.testing.assert_close(got.recon, eager.recon, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.mu, eager.mu, rtol=1e-5, atol=1e-6)


def test_region_codes_outside_compile_get_gradients():
    cfg, model = _plain_tiny()
    clip = torch.rand(2, cfg.window_frames, 3, cfg.data.image_h, cfg.data.image_w) * 2 - 1
    _, out = _compiled_graphs(model, clip, outside=True)
    set_codes_outside_compile(model, False)
    (out.recon.square().mean() + out.mu.square().mean()).backward()
    for name, p in model.named_parameters():
        if p.requires_grad and ("wubu_s" in name or "wubu_t" in name or "region_gate" in name):
            assert p.grad is not None, name


def test_training_with_region_codes_outside_compile(tmp_path, cache, monkeypatch):
    """`wubugen train --compile --no-compile_region_codes` end to end (aot_eager: the graphs, not inductor's kernels)."""
    import json
    import math

    from conftest import tiny_args
    from wubugen.cli import main
    from wubugen.train import speed

    monkeypatch.setattr(speed, "COMPILE_BACKEND", "aot_eager")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    run = tmp_path / "run"
    assert main(tiny_args(run, cache, "--max_steps", "2", "--compile", "--no-compile_region_codes",
                          "--log_interval", "1")) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r["values"] for r in rows if "train/loss_recon" in r["values"]]
    assert len(train) == 2 and all(math.isfinite(v["train/loss_recon"]) for v in train)


def test_channels_last_maps_pin_every_conv_input_after_a_norm_and_change_no_value(monkeypatch):
    """--channels_last_maps (the runtime switch cl_maps): the plain backbone's and the spatio-temporal D's maps leave
    every norm channels-last-3d, so each conv after one reads (and its backward saves) that layout; the values and
    gradients are the ones without it. The norms return contiguous maps here, as their CUDA kernels do (on the CPU
    GroupNorm keeps a channels-last input's layout)."""
    from wubugen.models.discriminator import build_discriminator
    from wubugen.models.layers import set_channels_last_maps, to_channels_last

    for norm in (torch.nn.GroupNorm, torch.nn.InstanceNorm3d):
        monkeypatch.setattr(norm, "forward", lambda self, x, _f=norm.forward: _f(self, x).contiguous())
    cfg, model = _plain_tiny()
    disc = build_discriminator(cfg.model, cfg.geometry)
    to_channels_last(model)
    to_channels_last(disc)
    clip = torch.rand(2, cfg.window_frames, 3, cfg.data.image_h, cfg.data.image_w) * 2 - 1
    layouts: dict[str, bool] = {}

    def record(name):
        return lambda mod, args: layouts.__setitem__(name, args[0].is_contiguous(memory_format=torch.channels_last_3d))

    hooks = [m.register_forward_pre_hook(record(f"{i}:{n}")) for i, net in enumerate((model, disc))
             for n, m in net.named_modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    start = {k: v.clone() for k, v in disc.state_dict().items()}  # spectral norm's power iteration moves its vectors
    results = []
    for on in (False, True):
        disc.load_state_dict(start)
        for net in (model, disc):
            assert set_channels_last_maps(net, on) >= 1
            net.zero_grad()
        layouts.clear()
        torch.manual_seed(1)
        out = model(clip, None)
        logits = disc(out.recon)
        (out.recon.square().mean() + logits.mean()).backward()
        grads = [p.grad.clone() for net in (model, disc) for p in net.parameters() if p.grad is not None]
        results.append((out.recon.detach(), logits.detach(), grads, dict(layouts)))
    for h in hooks:
        h.remove()
    (r0, l0, g0, lay_off), (r1, l1, g1, lay_on) = results
    # the same function; a conv's kernel may differ with its input's layout, so float32 rounding may too
    torch.testing.assert_close(r1, r0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
    assert len(g0) == len(g1)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    # every conv that reads a norm's output: all but each network's first (the frames, the latent), the model's 1x1
    # maps of the latent, and the generator's first 3-D conv (it reads the 1x1 expand's output, whose layout is the
    # CPU kernel's choice); in the encoder, the generator and D alike, contiguous without the switch
    first = {"0:encoder.plain_path.body.0.0", "0:encoder.to_mu", "0:encoder.to_logvar", "0:generator.expand",
             "0:generator.convs.0", "1:blocks.0.0"}
    after_norm = sorted(set(lay_on) - first)
    assert {n.split(":")[1].split(".")[0] for n in after_norm} >= {"encoder", "generator", "blocks", "head"}, after_norm
    assert all(lay_on[n] for n in after_norm), [n for n in after_norm if not lay_on[n]]
    assert not any(lay_off[n] for n in after_norm), lay_off


def test_players_compile_with_static_shapes_when_d_sees_two_batch_sizes(monkeypatch):
    """D runs at two batch sizes in a step (the generator's term on B fakes with input gradients, D's own step on 2B
    detached clips): each gets its own static graph, where dynamo's automatic dynamic shapes had recompiled the second
    with a symbolic batch dim."""
    from wubugen.models.discriminator import build_discriminator
    from wubugen.train import speed

    graphs = []

    def keep(gm, example_inputs):
        graphs.append([tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor)])
        assert not any(isinstance(d, torch.SymInt) for t in example_inputs if isinstance(t, torch.Tensor)
                       for d in t.shape), "a symbolic dim"
        assert not any(isinstance(t, torch.SymInt) for t in example_inputs), "a symbolic size argument"
        return gm.forward

    cfg, _ = _plain_tiny()
    disc = build_discriminator(cfg.model, cfg.geometry)
    torch._dynamo.reset()
    monkeypatch.setattr(speed, "COMPILE_BACKEND", keep)
    frozen, step = speed.compile_player(disc), speed.compile_player(disc)
    clip = torch.rand(2, cfg.window_frames, 3, cfg.data.image_h, cfg.data.image_w) * 2 - 1
    frozen(clip.clone().requires_grad_()).sum().backward()
    step(torch.cat([clip, clip], 0)).sum()
    step(torch.cat([clip, clip], 0)).sum()  # the same shape again: no third graph
    torch._dynamo.reset()
    assert len(graphs) == 2, graphs


def test_every_run_in_a_process_compiles_its_players(monkeypatch):
    """A plan's phases each build and compile their players in one process. Dynamo keeps compiled code per code object,
    guarded on the module instances, so each build added entries to D's forward, and past torch's recompile limit (8)
    later phases ran D uncompiled, silently: build_players now starts each compiled run from a clean slate."""
    from wubugen.train import speed
    from wubugen.train.players import build_players

    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(speed, "COMPILE_BACKEND", keep)
    cfg = build_config("tiny", overrides={"backbone": "plain", "compile": True})
    clip = torch.rand(2, cfg.window_frames, 3, cfg.data.image_h, cfg.data.image_w) * 2 - 1
    for run in range(5):  # 5 runs x 2 D graphs (batch B and 2B) would be 10 entries of one code object
        players = build_players(cfg, torch.device("cpu"), log=lambda _: None)
        before = len(graphs)
        players.frozen_disc(clip)
        players.disc_step(torch.cat([clip, clip]))
        assert len(graphs) - before == 2, f"run {run + 1} compiled {len(graphs) - before} of D's 2 graphs"
    torch._dynamo.reset()
