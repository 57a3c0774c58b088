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
