"""The training step against a golden record: losses and updated weights of two optimizer steps (GAN term on) of the
tiny preset on the CPU, recorded at commit a634ee6 (before the architecture split into players, losses and step).

The record holds the whole config of that run, so later changes of presets or defaults do not move it; options added
since then whose defaults change the model or the losses are pinned to their old values in LEGACY below.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from wubugen.config import build_config
from wubugen.config.loading import flatten_options
from wubugen.train.players import build_players
from wubugen.train.step import LOSS_KEYS, StepRunner

RECORD = json.loads((Path(__file__).parent / "golden" / "step_tiny_a634ee6.json").read_text())
# option -> the value that reproduces a634ee6, for options added after it whose defaults changed the model or losses
# float32 on different CPUs (AVX-512 against AVX2 kernels) sums in different orders: the KL term of the record's
# second step came out 1.2e-6 relative apart on an AMD EPYC. A change of the math moves the losses by far more
# (reordering two layers' initialisation moved it by 40%).
LOSS_REL = 1e-5
# Adam's first steps are about lr * sign(gradient): where a gradient is near zero, the same float noise flips whole
# lr-sized steps, so weight sums and sums of squares came out up to about 1e-4 relative apart there on the EPYC
# (SGD's about 3e-5, on tensors whose sums are near zero); the first values moved by up to 2e-7
PARAM_REL = 2e-4
LEGACY: dict[str, object] = {
    "encoder_targets_only": False, "encoder_res_blocks": 0, "gen_res_blocks": 0, "region_codes": "add",
    "gen_region_film": True, "disc_patch_logits": False, "gan_weighting": "fixed",
}


@pytest.mark.parametrize("optimizer", ["riemannian_adam", "riemannian_sgd"])
def test_two_steps_match_the_a634ee6_record(optimizer):
    rec = RECORD[optimizer]
    cfg = build_config(overrides={**flatten_options(rec["config"], "golden record"), **LEGACY})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as recorded: one thread's float summation order
    try:
        torch.manual_seed(0)
        players = build_players(cfg, torch.device("cpu"), log=lambda *a: None)
        runner = StepRunner(players)
        g = torch.Generator().manual_seed(123)
        shape = (cfg.train.batch_size, cfg.window_frames, 3, cfg.data.image_h, cfg.data.image_w)
        torch.manual_seed(5)
        losses = []
        for _ in range(2):
            batch = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
            values, skip, _, _ = runner.run([batch], cfg.train.lambda_kl, True)
            assert not bool(skip)
            losses.append(dict(zip(LOSS_KEYS, values.tolist())))
    finally:
        torch.set_num_threads(threads)
    for got, want in zip(losses, rec["losses"]):
        assert {k: got[k] for k in want} == pytest.approx(want, rel=LOSS_REL, abs=1e-7)
    params = {f"{prefix}.{n}": p for prefix, mod in (("model", players.model), ("disc", players.disc))
              for n, p in mod.named_parameters()}
    assert sorted(params) == sorted(rec["params"])
    for name, (total, squares, first) in rec["params"].items():
        x = params[name].detach().double()
        assert x.sum().item() == pytest.approx(total, rel=PARAM_REL, abs=1e-6), name
        assert (x * x).sum().item() == pytest.approx(squares, rel=PARAM_REL, abs=1e-8), name
        assert x.flatten()[:3].tolist() == pytest.approx(first, rel=1e-6, abs=1e-6), name
