"""One optimizer step of the VAE-GAN: micro-batches, both players, clipping, and the non-finite guard. No host syncs.

Per micro-batch there is ONE generator forward (SPEC D15 fixed). Its output is reused:
  * detached, for D on the concatenation [real target; fake] in a single forward (one spectral-norm power iteration and
    one set of DDP buffers per step, FIELD §4 #10), so real and fake are the same time positions (SPEC D14 fixed);
  * with gradient, for the generator's adversarial term through a frozen, unwrapped D (its weights get no gradient and
    its DDP reducer expects none).
D's adversarial gradient for G is taken against the pre-update D, as in the original (a simultaneous update).

A step whose losses or gradients are non-finite is skipped as a whole on the device (parameters, moments and EMA stay
bit-identical; see optim.py) and counted; the trainer reads the counters at its health interval.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from wubugen.config import Config
from wubugen.data import to_model_range
from wubugen.errors import UserError
from wubugen.models.layers import to_channels_last
from wubugen.models.tapconv import set_tap_convs
from wubugen.train.losses import d_loss, g_adv_loss, kl_loss, recon_loss
from wubugen.train.optim import clip_grad_norm_

LOSS_KEYS = ("loss_recon", "loss_kl", "loss_g_adv", "loss_g_total", "loss_d_total", "loss_d_real", "loss_d_fake")


@dataclass
class Precision:
    """Autocast dtype (None: fp32) and whether fp16 loss scaling is on."""

    dtype: torch.dtype | None
    device_type: str

    @property
    def scaled(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self, cache: bool = True):
        """cache=False inside CUDA-graph capture: autocast's weight-cast cache would outlive the captured pool."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype, cache_enabled=cache)


def resolve_precision(cfg: Config, device: torch.device) -> Precision:
    p = cfg.train.precision
    if p == "auto":
        p = "bf16" if device.type == "cuda" else "fp32"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[p]
    if dtype == torch.float16 and device.type != "cuda":
        dtype = None  # fp16 autocast is a CUDA feature; the CPU runs fp32 (said once by the trainer)
    return Precision(dtype, device.type)


def _no_sync(module: nn.Module, sync: bool):
    if not sync and hasattr(module, "no_sync"):
        return module.no_sync()
    return contextlib.nullcontext()


def _set_requires_grad(params: list[nn.Parameter], flag: bool) -> None:
    for p in params:
        p.requires_grad_(flag)


class EMA:
    """Exponential moving average of the generator's trainable weights (validation and sampling use it when enabled).

    Keyed by parameter name; frozen parameters (a frozen RAFT) are left out: their average is themselves."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p.detach().clone() for p in _named(model, self.names)]
        self._live: tuple[nn.Module, list[Tensor]] | None = None  # the model's tensors, looked up once (hot path)

    @torch.no_grad()
    def update(self, model: nn.Module, keep: Tensor) -> None:
        if self._live is None or self._live[0] is not model:
            self._live = model, [p.detach() for p in _named(model, self.names)]
        live = self._live[1]
        diff = torch._foreach_sub(live, self.params)
        torch._foreach_mul_(diff, keep * (1.0 - self.decay))  # keep = 0 on a skipped step: no change
        torch._foreach_add_(self.params, diff)

    def state_dict(self) -> dict[str, Tensor]:
        return dict(zip(self.names, self.params))

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """`state`: name -> tensor (see ema_state_by_name for checkpoints of earlier versions)."""
        missing = [n for n in self.names if n not in state]
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} parameters, e.g. {missing[0]}")
        for n, p in zip(self.names, self.params):
            p.copy_(state[n])

    @contextlib.contextmanager
    def swapped_into(self, model: nn.Module):
        """Temporarily put the EMA weights into `model` (for validation and sampling)."""
        targets = _named(model, self.names)
        backup = [p.detach().clone() for p in targets]
        with torch.no_grad():
            for p, e in zip(targets, self.params):
                p.copy_(e)
        try:
            yield model
        finally:
            with torch.no_grad():
                for p, b in zip(targets, backup):
                    p.copy_(b)


def _named(model: nn.Module, names: list[str]) -> list[nn.Parameter]:
    params = dict(model.named_parameters())
    return [params[n] for n in names]


def ema_state_by_name(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """An EMA state from a checkpoint -> name -> tensor. Checkpoints written before EMA states were keyed by name hold
    every parameter of `model` under its position ("0", "1", ...); those positions are mapped to names."""
    if state and all(k.isdigit() for k in state):
        return {n: state[str(i)] for i, (n, _) in enumerate(model.named_parameters()) if str(i) in state}
    return dict(state)


@dataclass
class _Captured:
    """One captured forward+backward: static input buffers, the static loss output and the gradients it writes."""

    graph: torch.cuda.CUDAGraph
    batch: Tensor
    flow: Tensor | None
    losses: Tensor
    grads: list[tuple[nn.Parameter, Tensor]]


def players_forward_backward(model: nn.Module, disc: nn.Module, frozen_disc: nn.Module, d_params: list[nn.Parameter],
                             clip: Tensor, flow: Tensor | None, cfg: Config, lambda_kl: float | Tensor, adv_on: bool, *,
                             autocast=contextlib.nullcontext, scale_d=lambda x: x, scale_g=lambda x: x, k: int = 1
                             ) -> tuple[Tensor, object, Tensor]:
    """The step's losses and both backwards for one micro-batch (the trainer's step and `wubugen inspect` share it).

    One generator forward; G's adversarial term through `frozen_disc` (D's parameters `d_params` get no gradient from
    it); D on [real; fake.detach()] in one forward. G's backward runs before D's forward: the generator's activations
    (the largest, at full resolution) are freed before D's double-batch forward allocates its own, which lowers the
    step's peak memory. Nothing is updated between the two (the optimizers step afterwards), so the gradients are those
    of the other order. Losses are divided by k (gradient accumulation) before backward.
    -> (losses (7,) detached in LOSS_KEYS order, the model output, the frozen-D logits)."""
    t = cfg.train
    with autocast():
        out = model(clip, flow)
    loss_recon = recon_loss(out.recon, out.target)
    loss_kl = kl_loss(out.mu, out.logvar, cfg.model.kl_reduction)
    loss_g = t.lambda_recon * loss_recon + lambda_kl * loss_kl
    _set_requires_grad(d_params, False)
    try:
        with autocast():
            adv_logits = frozen_disc(out.recon)
        loss_adv = g_adv_loss(adv_logits, t.gan_loss)
        if adv_on:
            loss_g = loss_g + t.lambda_gan * loss_adv
        scale_g(loss_g / k).backward()
    finally:
        _set_requires_grad(d_params, True)

    with autocast():
        logits = disc(torch.cat([out.target, out.recon.detach()], 0))
    real_logits, fake_logits = logits.chunk(2, 0)
    loss_d, loss_d_real, loss_d_fake = d_loss(real_logits, fake_logits, t.gan_loss)
    scale_d(loss_d / k).backward()
    losses = torch.stack([loss_recon, loss_kl, loss_adv, loss_g, loss_d, loss_d_real, loss_d_fake]).detach()
    return losses, out, adv_logits


def speed_layout(cfg: Config, model: nn.Module, disc: nn.Module, device: torch.device, precision: Precision) -> None:
    """Kernel choices that leave the math alone, made once before DDP, EMA and the optimizers see the parameters:
    channels-last weights under torch.compile on CUDA (eagerly, GroupNorm's channels-last kernel made the step slower:
    56.1 vs 46.3 ms bf16 on an H100, docs/benchmarks.md) and, in fp32 on CUDA, the generator's output conv as taps."""
    t = cfg.train
    if device.type != "cuda":
        return
    if t.channels_last and t.compile:
        to_channels_last(model)
        to_channels_last(disc)
    if t.tap_convs and precision.dtype is None:
        set_tap_convs(model, True)


def compile_player(module: nn.Module, mode: str = "default") -> nn.Module:
    """torch.compile for the training step's players (`mode`: `--compile_mode`). Inductor draws random numbers with
    torch's own ops (fallback_random), so a compiled run samples the same posterior noise and dropout masks as an eager
    one, and the CUDA-graph capture sees ordinary RNG ops."""
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True
    return torch.compile(module, mode=mode)


def use_cuda_graphs(cfg: Config, device: torch.device, world_size: int) -> bool:
    """`--cuda_graphs`: on for one CUDA process without gradient accumulation (what capture supports here)."""
    if not cfg.train.cuda_graphs or device.type != "cuda":
        return False
    return world_size == 1 and cfg.train.grad_accum_steps == 1


class StepRunner:
    """Holds the two players and their optimizers; `run` performs one optimizer step over k micro-batches.

    With CUDA graphs on, the forward and both backwards of a step (everything up to the gradients) are captured once
    after `GRAPH_WARMUP_STEPS` eager steps (per variant) and replayed afterwards: the host launches one graph instead of thousands of
    small kernels (the WuBu stacks are many small ops). Parameters, optimizer state, lambda_kl and the learning rates
    live in device memory or outside the graph, so Q-control and checkpoint restores act on replayed steps as on eager
    ones. One graph per (adversarial term on/off, input shapes); they share one memory pool.
    """

    GRAPH_WARMUP_STEPS = 3

    def __init__(self, cfg: Config, model: nn.Module, disc: nn.Module, model_ddp: nn.Module, disc_ddp: nn.Module,
                 opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, precision: Precision,
                 device: torch.device, ema: EMA | None = None):
        self.cfg = cfg
        self.model, self.disc = model, disc
        self.model_ddp, self.disc_ddp = model_ddp, disc_ddp
        self.opt_g, self.opt_d = opt_g, opt_d
        self.precision = precision
        self.device = device
        self.ema = ema
        self.g_params = [p for p in model.parameters() if p.requires_grad]
        self.d_params = [p for p in disc.parameters() if p.requires_grad]
        scaled = precision.scaled
        self.scaler_g = torch.amp.GradScaler(device.type, enabled=scaled)
        self.scaler_d = torch.amp.GradScaler(device.type, enabled=scaled)
        self.channels_last = cfg.train.channels_last and device.type == "cuda"
        # device-side counters, read by the trainer at its health interval
        self.nonfinite_steps = torch.zeros((), dtype=torch.int64, device=device)
        self.consecutive_nonfinite = torch.zeros((), dtype=torch.int64, device=device)
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        self.graphs_on = use_cuda_graphs(cfg, device, world)
        self._graphs: dict[tuple, _Captured] = {}
        self._graph_pool = None
        self._side_stream = torch.cuda.Stream(device) if self.graphs_on else None
        self._eager_steps: dict[tuple, int] = {}  # eager warm-up steps taken per graph key
        self._lambda_kl = torch.zeros((), device=device)  # read by captured graphs; filled before each replay

    def flow_in_step(self, flow: Tensor | None) -> bool:
        """True when the motion branch must compute flow inside the step (no cached flow given: trainable RAFT, or a
        frozen one without a cache). Such steps run eagerly: torchvision's RAFT copies host-built coordinate grids to
        the device on every call, which CUDA-graph capture forbids (and which syncs the host)."""
        motion = getattr(self.model, "motion", None)
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

    def run(self, batches: list[Tensor], lambda_kl: float, adv_on: bool, flows: list[Tensor | None] | None = None
            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One optimizer step. -> (mean losses (7,) in LOSS_KEYS order, skipped flag, G grad norm, D grad norm),
        all device tensors (nothing is read on the host here)."""
        k = len(batches)
        flows = flows or [None] * k
        if self.graphs_on and k == 1 and not self.flow_in_step(flows[0]):
            sums = self._graphed(batches[0], flows[0], lambda_kl, adv_on)
        else:
            sums = torch.zeros(len(LOSS_KEYS), device=self.device)
            for i, (batch, flow) in enumerate(zip(batches, flows)):
                sums += self._forward_backward(self.prepare(batch), self.prepare_flow(flow), lambda_kl, adv_on, k,
                                               i == k - 1)
            sums /= k
        return (sums, *self._apply(sums))

    def _forward_backward(self, clip: Tensor, flow: Tensor | None, lambda_kl: float | Tensor, adv_on: bool, k: int,
                          last: bool, cache: bool = True) -> Tensor:
        """Forward both players on one micro-batch and accumulate both players' gradients. -> losses (7,), detached."""
        with _no_sync(self.model_ddp, last), _no_sync(self.disc_ddp, last):
            losses, _, _ = players_forward_backward(
                self.model_ddp, self.disc_ddp, self.disc, self.d_params, clip, flow, self.cfg, lambda_kl, adv_on,
                autocast=lambda: self.precision.autocast(cache), scale_d=self.scaler_d.scale,
                scale_g=self.scaler_g.scale, k=k)
        return losses

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
        for p in self.g_params + self.d_params:
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
        with torch.cuda.graph(graph, pool=self._graph_pool):
            losses = self._forward_backward(self.prepare(static_batch), self.prepare_flow(static_flow),
                                            self._lambda_kl, adv_on, 1, True, cache=False)
        grads = [(p, p.grad) for p in self.g_params + self.d_params if p.grad is not None]
        return _Captured(graph, static_batch, static_flow, losses, grads)

    def _apply(self, losses: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t = self.cfg.train
        if self.precision.scaled:
            self.scaler_d.unscale_(self.opt_d)
            self.scaler_g.unscale_(self.opt_g)
        inf = float("inf")
        gn_d = clip_grad_norm_(self.d_params, t.global_max_grad_norm if t.global_max_grad_norm > 0 else inf)
        gn_g = clip_grad_norm_(self.g_params, t.global_max_grad_norm if t.global_max_grad_norm > 0 else inf)
        ok = torch.isfinite(gn_d) & torch.isfinite(gn_g) & torch.isfinite(losses).all()
        skip = ~ok
        self.opt_d.step(skip=skip)
        self.opt_g.step(skip=skip)
        if self.precision.scaled:
            self.scaler_d.update()
            self.scaler_g.update()
        self.opt_d.zero_grad(set_to_none=True)
        self.opt_g.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model, ok.float())
        self.nonfinite_steps += skip.long()
        self.consecutive_nonfinite.mul_(skip.long()).add_(skip.long())
        return skip, gn_g, gn_d
