"""`--ddp_comm flat`: one all-reduce of a flat gradient buffer gives DDP's averaged gradients (gloo, 2 CPU ranks). A
whole flat-mode torchrun training is tests/test_train.py's DDP test, run for both modes."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def _grads_of(players) -> dict[str, torch.Tensor]:
    named = [("model." + n, p) for n, p in players.model.named_parameters()]
    named += [("disc." + n, p) for n, p in players.disc.named_parameters()]
    return {n: p.grad.detach().clone() for n, p in named if p.grad is not None}


def _worker(rank: int, init_file: str, out: str) -> None:
    from wubugen.config import build_config
    from wubugen.inspect_cmd import random_clip
    from wubugen.train.distributed import DistInfo
    from wubugen.train.players import build_players
    from wubugen.train.step import StepRunner, players_forward_backward

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    info, cpu = DistInfo(rank, rank, WORLD), torch.device("cpu")
    clip = random_clip(build_config("tiny"), 2, torch.Generator().manual_seed(100 + rank))  # other data per rank
    grads = {}
    for mode in ("local", "ddp", "flat"):  # local: this rank's own gradients, no averaging
        cfg = build_config("tiny", overrides={"ddp_comm": "ddp" if mode == "local" else mode, "gan_start_step": 0})
        torch.manual_seed(0)
        players = build_players(cfg, cpu, None if mode == "local" else info, log=lambda *a: None)
        runner = StepRunner(players)
        players_forward_backward(players, clip, None, 1e-3, True)
        if mode == "flat":
            assert runner.reducer is not None
            runner.reducer.reduce()
        else:
            assert runner.reducer is None
        grads[mode] = _grads_of(players)
    torch.save(grads, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_flat_all_reduce_equals_ddp_gradients_on_gloo(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD))
    assert r0["ddp"].keys() == r0["flat"].keys() and len(r0["flat"]) > 10
    for name, g in r0["ddp"].items():
        # DDP divides before its bucketed sum, flat after its one sum: equal up to float rounding
        assert torch.allclose(r0["flat"][name], g, rtol=1e-5, atol=1e-7), name
        assert torch.equal(r0["flat"][name], r1["flat"][name]), name  # every rank holds the same average
    # the average of both ranks' own gradients (they saw different clips), not rank 0's alone
    for name, g in r0["flat"].items():
        assert torch.allclose(g, (r0["local"][name] + r1["local"][name]) / 2, rtol=1e-5, atol=1e-7), name
    assert any(not torch.allclose(r0["flat"][n], r0["local"][n]) for n in r0["flat"])


def test_flat_reducer_keeps_none_gradients_and_averages(tmp_path):
    mp.spawn(_reducer_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    for r in range(WORLD):
        a, b, c_is_none = torch.load(tmp_path / f"red{r}.pt")
        assert torch.equal(a, torch.full((3,), 1.5)) and torch.equal(b, torch.full((2, 2), 3.0)) and c_is_none


def _reducer_worker(rank: int, init_file: str, out: str) -> None:
    from wubugen.train.grad_sync import FlatGradReducer

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    a, b, c = (torch.nn.Parameter(torch.zeros(s)) for s in ((3,), (2, 2), (4,)))
    a.grad = torch.full((3,), 1.0 + rank)  # ranks 1 and 2 -> 1.5
    b.grad = torch.full((2, 2), 2.0 + 2 * rank)  # 2 and 4 -> 3
    red = FlatGradReducer([a, b, c], WORLD)
    red.reduce()
    torch.save((a.grad, b.grad, c.grad is None), os.path.join(out, f"red{rank}.pt"))
    dist.destroy_process_group()
