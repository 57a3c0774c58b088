"""One optimizer step of the VAE-GAN: micro-batches, both players, clipping, and the non-finite guard. No host syncs.

Per micro-batch there is ONE generator forward (the original ran extra full forwards). Its output is reused:
  * detached, for D on the concatenation [real target; fake] in a single forward (one spectral-norm power iteration and
    one set of DDP buffers per step), so real and fake are the same time positions (the original compared real context frames
    with fake targets);
  * with gradient, for the generator's adversarial term through a frozen, unwrapped D (its weights get no gradient and
    its DDP reducer expects none).
D's adversarial gradient for G is taken against the pre-update D, as in the original (a simultaneous update).

A step whose losses or gradients are non-finite is skipped as a whole on the device (parameters, moments and EMA stay
bit-identical; see optim.py) and counted; the trainer reads the counters at its health interval.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor, nn

from wubugen.data import to_model_range
from wubugen.data.batch import ClipBatch
from wubugen.errors import UserError
from wubugen.models.vaegan import VAEOutput
from wubugen.train.losses import LOSS_KEYS
from wubugen.train.optim import clip_grad_norm_
from wubugen.train.speed import use_cuda_graphs

if TYPE_CHECKING:  # pragma: no cover
    from wubugen.train.players import Players

__all__ = ["LOSS_KEYS", "StepOutput", "StepRunner", "players_forward_backward"]


def _no_sync(module: nn.Module, sync: bool):
    if not sync and hasattr(module, "no_sync"):
        return module.no_sync()
    return contextlib.nullcontext()


def _set_requires_grad(params: list[nn.Parameter], flag: bool) -> None:
    for p in params:
        p.requires_grad_(flag)


@dataclass
class _Captured:
    """One captured forward+backward: static input buffers, the static loss output and the gradients it writes."""

    graph: torch.cuda.CUDAGraph
    batch: Tensor
    flow: Tensor | None
    losses: Tensor
    grads: list[tuple[nn.Parameter, Tensor]]


@dataclass
class StepOutput:
    """One micro-batch's forward and backwards: the losses in LOSS_KEYS order (detached), the model's output and
    D's logits of the reconstruction (through the frozen D)."""

    losses: Tensor
    out: VAEOutput
    fake_logits: Tensor


def players_forward_backward(p: Players, clip: Tensor, flow: Tensor | None, lambda_kl: float | Tensor, adv_on: bool,
                             *, autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                             scale_d: Callable[[Tensor], Tensor] = lambda x: x,
                             scale_g: Callable[[Tensor], Tensor] = lambda x: x, k: int = 1) -> StepOutput:
    """The order of one micro-batch's passes (the trainer's step, `wubugen inspect` and the bench share it); the
    objective itself is `p.loss` (train/losses.py).

    One generator forward; G's adversarial term through `p.frozen_disc` (D's parameters get no gradient from it); D on
    [real; fake.detach()] in one forward. G's backward runs before D's forward: the generator's activations (the
    largest, at full resolution) are freed before D's double-batch forward allocates its own, which lowers the step's
    peak memory. Nothing is updated between the two (the optimizers step afterwards), so the gradients are those of the
    other order. Losses are divided by k (gradient accumulation) before backward."""
    with autocast():
        out = p.model_step(clip, flow)
    _set_requires_grad(p.d_params, False)
    try:
        with autocast():
            fake_logits = p.frozen_disc(out.recon)
        g = p.loss.generator(out.recon, out.target, out.mu, out.logvar, fake_logits, lambda_kl, adv_on)
        if adv_on and p.loss.adaptive:
            g = p.loss.backward_adaptive(g, out.recon, lambda_kl, lambda x: scale_g(x / k))
        else:
            scale_g(g.total / k).backward()
    finally:
        _set_requires_grad(p.d_params, True)

    with autocast():
        logits = p.disc_step(torch.cat([out.target, out.recon.detach()], 0))
    real_logits, fake = logits.chunk(2, 0)
    d = p.loss.discriminator(real_logits, fake)
    scale_d(d.total / k).backward()
    return StepOutput(p.loss.log_vector(g, d), out, fake_logits)


class StepRunner:
    """Runs optimizer steps of the players (train/players.py): `run` performs one step over k micro-batches.

    With CUDA graphs on, the forward and both backwards of a step (everything up to the gradients) are captured once
    after `GRAPH_WARMUP_STEPS` eager steps (per variant) and replayed afterwards: the host launches one graph instead of thousands of
    small kernels (the WuBu stacks are many small ops). Parameters, optimizer state, lambda_kl and the learning rates
    live in device memory or outside the graph, so Q-control and checkpoint restores act on replayed steps as on eager
    ones. One graph per (adversarial term on/off, input shapes); they share one memory pool.
    """

    GRAPH_WARMUP_STEPS = 3

    def __init__(self, players: Players):
        self.players = p = players
        cfg, device = p.cfg, p.device
        self.cfg = cfg
        self.device = device
        self.precision = p.precision
        scaled = p.precision.scaled
        self.scaler_g = torch.amp.GradScaler(device.type, enabled=scaled)
        self.scaler_d = torch.amp.GradScaler(device.type, enabled=scaled)
        self.channels_last = cfg.train.channels_last and device.type == "cuda"
        # device-side counters, read by the trainer at its health interval
        self.nonfinite_steps = torch.zeros((), dtype=torch.int64, device=device)
        self.consecutive_nonfinite = torch.zeros((), dtype=torch.int64, device=device)
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        # --ddp_comm flat: the players are plain modules whose gradients this averages after the backward
        self.reducer = p.grad_sync
        self.graphs_on = use_cuda_graphs(cfg, device, 1 if self.reducer is not None else world)
        self._graphs: dict[tuple, _Captured] = {}
        self._graph_pool = None
        self._side_stream = torch.cuda.Stream(device) if self.graphs_on else None
        self._eager_steps: dict[tuple, int] = {}  # eager warm-up steps taken per graph key
        self._lambda_kl = torch.zeros((), device=device)  # read by captured graphs; filled before each replay

    def flow_in_step(self, flow: Tensor | None) -> bool:
        """True when the motion branch must compute flow inside the step (no cached flow given: trainable RAFT, or a
        frozen one without a cache). Such steps run eagerly: torchvision's RAFT copies host-built coordinate grids to
        the device on every call, which CUDA-graph capture forbids (and which syncs the host)."""
        motion = getattr(self.players.model, "motion", None)
        return motion is not None and flow is None

    def prepare(self, batch: Tensor) -> Tensor:
        """uint8 (B, T, C, H, W) on the host -> float [-1, 1] on the device (normalisation on the device)."""
        clip = to_model_range(batch.to(self.device, non_blocking=True))
        if self.channels_last:
            b, t = clip.shape[:2]
            clip = clip.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (b, t))
        return clip

    def prepare_flow(self, flow: Tensor | None) -> Tensor | None:
        """Motion branch: cached float16 flows (B, T_enc - 1, 2, H, W) on the host -> the device (the motion encoder
        reduces them in float32/64), or None (the model computes flow itself)."""
        return None if flow is None else flow.to(self.device, non_blocking=True)

    def run(self, batches: list[ClipBatch | Tensor], lambda_kl: float, adv_on: bool
            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One optimizer step over k micro-batches (ClipBatch from a loader; a bare tensor is frames without flows).
        -> (mean losses in LOSS_KEYS order, skipped flag, G grad norm, D grad norm), all device tensors (nothing is
        read on the host here)."""
        batches = [b if isinstance(b, ClipBatch) else ClipBatch(b) for b in batches]
        k = len(batches)
        if self.graphs_on and k == 1 and not self.flow_in_step(batches[0].flow):
            sums = self._graphed(batches[0].frames, batches[0].flow, lambda_kl, adv_on)
        else:
            sums = torch.zeros(len(LOSS_KEYS), device=self.device)
            for i, batch in enumerate(batches):
                sums += self._forward_backward(self.prepare(batch.frames), self.prepare_flow(batch.flow), lambda_kl,
                                               adv_on, k, i == k - 1)
            sums /= k
        if self.reducer is not None:
            self.reducer.reduce()
        return (sums, *self._apply(sums))

    def _forward_backward(self, clip: Tensor, flow: Tensor | None, lambda_kl: float | Tensor, adv_on: bool, k: int,
                          last: bool, cache: bool = True) -> Tensor:
        """Forward both players on one micro-batch and accumulate both players' gradients. -> losses (7,), detached."""
        p = self.players
        with _no_sync(p.model_step, last), _no_sync(p.disc_step, last):
            result = players_forward_backward(p, clip, flow, lambda_kl, adv_on,
                                              autocast=lambda: self.precision.autocast(cache),
                                              scale_d=self.scaler_d.scale, scale_g=self.scaler_g.scale, k=k)
        return result.losses

    # ---- CUDA graphs ----
    def _graphed(self, batch: Tensor, flow: Tensor | None, lambda_kl: float, adv_on: bool) -> Tensor:
        key = (adv_on, tuple(batch.shape), batch.dtype, None if flow is None else (tuple(flow.shape), flow.dtype))
        cap = self._graphs.get(key)
        if cap is None:
            if self._eager_steps.get(key, 0) < self.GRAPH_WARMUP_STEPS:
                # real training steps, run eagerly on a side stream (cuDNN autotuning, lazy cuBLAS set-up, and the
                # compilation of every forward/backward this variant runs: e.g. the frozen-D backward only exists once
                # the adversarial term is on): capture needs all of that done, and these steps are not wasted
                self._eager_steps[key] = self._eager_steps.get(key, 0) + 1
                side = self._side_stream
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    # autocast's cast cache off as in the capture: compiled players see the same autocast state
                    sums = self._forward_backward(self.prepare(batch), self.prepare_flow(flow), lambda_kl, adv_on, 1,
                                                  True, cache=False)
                torch.cuda.current_stream(self.device).wait_stream(side)
                return sums
            try:
                cap = self._capture(batch, flow, adv_on)
            except Exception as err:
                # a failed capture can leave CUDA's RNG in capture mode, so the step cannot go on eagerly in-process
                first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
                raise UserError(f"CUDA graph capture of the training step failed ({type(err).__name__}: {first}); "
                                "rerun with --cuda_graphs false (the same model, slower steps)") from err
            self._graphs[key] = cap
        cap.batch.copy_(batch, non_blocking=True)
        if cap.flow is not None:
            cap.flow.copy_(flow, non_blocking=True)
        self._lambda_kl.fill_(lambda_kl)
        cap.graph.replay()
        for p, g in cap.grads:
            p.grad = g
        return cap.losses.clone()  # the static output is overwritten by the next replay

    def _capture(self, batch: Tensor, flow: Tensor | None, adv_on: bool) -> _Captured:
        params = self.players.g_params + self.players.d_params
        for p in params:
            p.grad = None  # gradients are allocated inside the graph's pool: written, not accumulated, on replay
        static_batch = torch.empty(batch.shape, dtype=batch.dtype, device=self.device)
        static_batch.copy_(batch)
        static_flow = None
        if flow is not None:
            static_flow = torch.empty(flow.shape, dtype=flow.dtype, device=self.device)
            static_flow.copy_(flow)
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()  # hand the eager steps' cached blocks back, so the graph's pool can use that memory
        # thread_local: the DataLoader's pin-memory thread keeps allocating and querying pinned host blocks during the
        # capture; in the default global mode any such CUDA call from another thread invalidates it (a race: seen with
        # the progress bar's timing, step 3 of a phase run). This thread's own calls are still checked.
        with torch.cuda.graph(graph, pool=self._graph_pool, capture_error_mode="thread_local"):
            losses = self._forward_backward(self.prepare(static_batch), self.prepare_flow(static_flow),
                                            self._lambda_kl, adv_on, 1, True, cache=False)
        grads = [(p, p.grad) for p in params if p.grad is not None]
        return _Captured(graph, static_batch, static_flow, losses, grads)

    def _apply(self, losses: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t, p = self.cfg.train, self.players
        if self.precision.scaled:
            self.scaler_d.unscale_(p.opt_d)
            self.scaler_g.unscale_(p.opt_g)
        inf = float("inf")
        gn_d = clip_grad_norm_(p.d_params, t.global_max_grad_norm if t.global_max_grad_norm > 0 else inf)
        gn_g = clip_grad_norm_(p.g_params, t.global_max_grad_norm if t.global_max_grad_norm > 0 else inf)
        ok = torch.isfinite(gn_d) & torch.isfinite(gn_g) & torch.isfinite(losses).all()
        skip = ~ok
        p.opt_d.step(skip=skip)
        p.opt_g.step(skip=skip)
        if self.precision.scaled:
            self.scaler_d.update()
            self.scaler_g.update()
        p.opt_d.zero_grad(set_to_none=True)
        p.opt_g.zero_grad(set_to_none=True)
        if p.ema is not None:
            p.ema.update(p.model, ok.float())
        self.nonfinite_steps += skip.long()
        self.consecutive_nonfinite.mul_(skip.long()).add_(skip.long())
        return skip, gn_g, gn_d
