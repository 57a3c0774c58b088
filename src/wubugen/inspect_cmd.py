"""`wubugen inspect`: build the model and discriminator, run one full training-style step on random input on the CPU, and
report parameters per module, FLOPs per training clip, output shapes, and every trainable parameter that received no
gradient or a non-finite one (exit code 1 if there is any)."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from wubugen.config import Config, add_config_arguments, config_from_args
from wubugen.train.players import Players, build_players
from wubugen.train.step import LOSS_KEYS, players_forward_backward


@dataclass
class StepReport:
    shapes: dict[str, tuple[int, ...]]
    losses: dict[str, float]
    flops: int


def random_clip(cfg: Config, batch: int, generator: torch.Generator | None = None) -> Tensor:
    """Random frames in [-1, 1] with spatial structure (smoothed noise), never zeros. (B, T, C, H, W)"""
    d = cfg.data
    x = torch.rand(batch * cfg.window_frames, d.num_channels, d.image_h, d.image_w, generator=generator)
    x = nn.functional.avg_pool2d(x, 3, 1, 1)
    return (x * 2 - 1).reshape(batch, cfg.window_frames, d.num_channels, d.image_h, d.image_w)


def training_step_grads(players: Players, clip: Tensor, flow: Tensor | None = None) -> StepReport:
    """One generator forward reused for both players; D on [real; fake.detach()] in one forward; G through a frozen D.
    Leaves gradients in .grad of both networks."""
    r = players_forward_backward(players, clip, flow, players.cfg.train.lambda_kl, True)
    out = r.out
    shapes = {"input": tuple(clip.shape), "target": tuple(out.target.shape), "recon": tuple(out.recon.shape),
              "mu": tuple(out.mu.shape), "d_logits": tuple(r.fake_logits.shape)}
    losses = dict(zip(LOSS_KEYS, r.losses.tolist()))
    return StepReport(shapes, losses, 0)


def dead_parameters(named: list[tuple[str, nn.Parameter]]) -> list[tuple[str, str]]:
    """Trainable parameters whose gradient is missing, all zero, or non-finite. -> [(name, reason)]"""
    dead = []
    for name, p in named:
        if not p.requires_grad:
            continue
        if p.grad is None:
            dead.append((name, "no gradient"))
        elif not torch.isfinite(p.grad).all():
            dead.append((name, "non-finite gradient"))
        elif not p.grad.abs().sum() > 0:
            dead.append((name, "zero gradient"))
    return dead


def frozen_names(model: nn.Module) -> set[str]:
    """Parameters that are frozen on purpose (a frozen flow network keeps its pretrained weights)."""
    return {n for n, p in model.named_parameters() if not p.requires_grad}


def module_table(model: nn.Module, disc: nn.Module) -> list[tuple[str, int]]:
    rows = []
    for prefix, root in (("model", model), ("disc", disc)):
        for name, child in root.named_children():
            if isinstance(child, nn.Module) and not isinstance(child, (nn.ModuleList,)) and list(child.parameters()):
                sub = list(child.named_children())
                if prefix == "model" and sub and len(list(child.parameters())) > 0:
                    for sname, schild in sub:
                        n = sum(p.numel() for p in schild.parameters())
                        if n:
                            rows.append((f"{prefix}.{name}.{sname}", n))
                    direct = sum(p.numel() for p in child.parameters(recurse=False))
                    if direct:
                        rows.append((f"{prefix}.{name}.<own>", direct))
                else:
                    rows.append((f"{prefix}.{name}", sum(p.numel() for p in child.parameters())))
    return rows


def run_inspect(cfg: Config, batch: int = 2, seed: int = 0, out=None) -> int:
    out = out or sys.stdout
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    # the step as the trainer builds it, eagerly on the CPU (no torch.compile there)
    players = build_players(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=False)),
                            torch.device("cpu"), log=lambda *a: None)
    model, disc = players.model, players.disc
    model.train()
    disc.train()
    clip = random_clip(cfg, batch, torch.Generator().manual_seed(seed))
    with FlopCounterMode(display=False) as counter:
        report = training_step_grads(players, clip)
    flops = counter.get_total_flops()

    m = cfg.model
    print(f"wubugen inspect: task {m.task}, {cfg.data.image_h}x{cfg.data.image_w}, {cfg.data.num_input_frames}+"
          f"{cfg.data.num_predict_frames} frames, latent {m.latent_type} {tuple(model.latent_shape())}, "
          f"motion {'on' if m.use_wubu_motion_branch else 'off'}, D {m.discriminator_type}"
          f"{' + GAAD-FiLM' if m.disc_use_gaad_film_condition else ''}", file=out)
    print(f"\n{'module':<40} {'parameters':>14}", file=out)
    rows = module_table(model, disc)
    for name, n in rows:
        print(f"{name:<40} {n:>14,}", file=out)
    n_g = sum(p.numel() for p in model.parameters())
    n_d = sum(p.numel() for p in disc.parameters())
    print(f"{'generator + encoder (model)':<40} {n_g:>14,}\n{'discriminator':<40} {n_d:>14,}", file=out)
    print(f"\nFLOPs per training clip: {flops / batch / 1e9:.3f} GFLOP (one full step: G forward, D on real+fake, "
          f"D on fake for G, both backwards; torch.utils.flop_counter, batch {batch})", file=out)
    print("\nshapes: " + ", ".join(f"{k} {v}" for k, v in report.shapes.items()), file=out)
    print("losses: " + ", ".join(f"{k} {v:.4f}" for k, v in report.losses.items()), file=out)
    frozen = frozen_names(model)
    dead = dead_parameters([(f"model.{n}", p) for n, p in model.named_parameters()] +
                           [(f"disc.{n}", p) for n, p in disc.named_parameters()])
    if frozen:
        print(f"\nfrozen on purpose (not trained): {len(frozen)} tensors", file=out)
    if dead:
        print(f"\nparameters without a usable gradient ({len(dead)}):", file=out)
        for name, why in dead:
            print(f"  {name}: {why}", file=out)
    else:
        print("\nevery trainable parameter received a finite, non-zero gradient", file=out)
    print(f"({time.perf_counter() - t0:.1f} s on the CPU)", file=out)
    return 1 if dead else 0


def _cmd(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return run_inspect(cfg, batch=args.batch, seed=cfg.train.seed)


INSPECT_EXAMPLES = """examples:
  wubugen inspect --preset launcher                  # the launcher's model: parameters, FLOPs, dead parameters
  wubugen inspect --preset tiny --task predict --use_wubu_motion_branch --optical_flow_net_type dis"""


def register(sub) -> None:
    p = sub.add_parser("inspect", help="build the model, run one training-style step on the CPU, report parameters, "
                                       "FLOPs, shapes and dead parameters",
                       description=__doc__.split("\n\n")[0] + " The model options are those of `wubugen train`.",
                       epilog=INSPECT_EXAMPLES)
    p.add_argument("--batch", type=int, default=2, metavar="N", help="random clips in the step")
    add_config_arguments(p)
    p.set_defaults(func=_cmd)
