"""Riemannian SGD and Adam for models mixing Euclidean parameters and Poincare-ball points, with sync-free skipping.

Euclidean parameters go through torch's fused SGD / AdamW kernels (`torch.optim.sgd.sgd`, `torch.optim.adamw.adamw`
with fused=True): one kernel launch per (device, dtype) instead of a Python loop over tensors. Ball parameters (tagged
with `hyperbolic.params.tag_ball`) are updated with the Poincare-ball maps on all their points at once: each param
group's ball parameters of one (device, ball dim) are concatenated row-wise (every row is an independent point with its
own curvature), so the cost does not grow with their number. The curvature is read at step time: it is learnable.

`step(skip)` takes a 0-dim bool tensor (the trainer's `~isfinite(total_grad_norm)`) and makes the whole step an exact
no-op when it is True, without reading it on the host: the fused kernels take it as `found_inf` (as with a GradScaler)
and return before touching anything, and ball updates are committed through `torch.where(skip, old, new)`, so NaN
gradients cannot leak. With `skip=None` nothing is masked: as in torch's optimizers, non-finite gradients then reach the
parameters, so a trainer that can meet them passes `skip`.

Deliberate differences from the original RiemannianEnhancedSGD:
* ball points move along the exact exponential map and the momentum is parallel-transported to the new point (the
  original took a projected Euclidean step and kept an untransported buffer);
* per-tensor clipping computes its coefficient on the device (no `.item()`) and never edits `p.grad` in place;
* no per-parameter failure guards (drop momentum / reset to origin): a bad step is skipped as a whole through `skip`.
"""
from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.adamw import adamw as _fused_capable_adamw
from torch.optim.sgd import sgd as _fused_capable_sgd

from wubugen.hyperbolic.params import ball_curvature, is_ball
from wubugen.hyperbolic.poincare import egrad2rgrad, expmap, inner, project, transport

if TYPE_CHECKING:
    from wubugen.config import TrainConfig

__all__ = [
    "RiemannianSGD",
    "RiemannianAdam",
    "clip_grad_norm_",
    "build_optimizer",
    "apply_lr_momentum_scales",
]

# Ball points are kept at |x| <= (1 - BALL_MARGIN)/sqrt(c) (geoopt's float32 margin). Closer to the edge, float32 loses
# 1 - c|x|^2 to cancellation and parallel transport (its gyration denominator ~ (1 - c|x|^2)^2) blows momentum up.
BALL_MARGIN = 4e-3
CLIP_EPS = 1e-6  # as torch.nn.utils.clip_grad_norm_: coefficient = max_norm / (norm + CLIP_EPS)


def _clip_per_tensor(grads: list[Tensor], max_norm: float) -> list[Tensor]:
    """Each tensor scaled to norm <= max_norm (the original's per-parameter RiSGD clip), out of place, sync-free."""
    coef = torch._foreach_norm(grads)
    torch._foreach_add_(coef, CLIP_EPS)
    torch._foreach_reciprocal_(coef)
    torch._foreach_mul_(coef, max_norm)
    torch._foreach_clamp_max_(coef, 1.0)
    return torch._foreach_mul(grads, coef)


# ---- ball parameters as one batch of rows: (sum of points, D) ----
def _rows(ts: list[Tensor]) -> Tensor:
    """The tensors' points stacked: [(..., D)] -> (N, D) (D = 1 for per-point scalars such as Adam's exp_avg_sq).

    In the tensors' own dtype, so that a skipped step writes back exactly what was there (float64 included); the
    Poincare maps compute in float32 whatever they are given.
    """
    return torch.cat([t.reshape(-1, t.shape[-1]) for t in ts])


def _rows_curvature(ps: list[Tensor]) -> Tensor:
    """The current curvature of every point, (N, 1); a scalar curvature is repeated over its tensor's points."""
    cs = []
    for p in ps:
        c = ball_curvature(p)
        assert c is not None
        cs.append(c.expand(*p.shape[:-1], 1).reshape(-1, 1))
    return torch.cat(cs)


def _commit_rows(dsts: list[Tensor], new: Tensor, skip: Tensor | None) -> None:
    """Write the rows back into the tensors; where skip, leave them bit for bit as they were (whatever `new` holds)."""
    if skip is not None:
        new = torch.where(skip, _rows(dsts), new)
    parts = new.split([d.numel() // d.shape[-1] for d in dsts])
    torch._foreach_copy_(dsts, [part.reshape(d.shape).to(d.dtype) for part, d in zip(parts, dsts)])


def _by_device_and_dim(ps: list[Tensor]) -> list[list[Tensor]]:
    out: dict[tuple[torch.device, int], list[Tensor]] = defaultdict(list)
    for p in ps:
        out[(p.device, p.shape[-1])].append(p)
    return list(out.values())


class _RiemannianBase(Optimizer):
    """Shared plumbing: the ball / Euclidean split, the skip argument, and device placement of step counters on load."""

    def _split(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
        ball, euclid = [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            (ball if is_ball(p) else euclid).append(p)
        return ball, euclid

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # torch leaves "step" where torch.load put it; fused kernels and the ball update need it beside the parameter
        for p, st in self.state.items():
            if "step" in st:
                st["step"] = st["step"].to(device=p.device, dtype=torch.float32)

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, skip: Tensor | None = None, closure: Callable[[], Tensor] | None = None
    ) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if skip is not None and (skip.dim() != 0 or skip.dtype != torch.bool):
            raise ValueError(f"skip must be a 0-dim bool tensor, got shape {tuple(skip.shape)} and {skip.dtype}")
        splits = [(group, *self._split(group)) for group in self.param_groups]
        # Ball points first, with the curvature read before any parameter (the curvature included) moves this step:
        # the gradients were taken at the current curvature, so that is the metric that converts them.
        for group, ball, _ in splits:
            for ps in _by_device_and_dim(ball):
                self._ball_step(ps, group, None if skip is None else skip.to(ps[0].device, non_blocking=True))
        # Fused kernels: found_inf makes the step an exact no-op on the device (params, moments, step counts unchanged).
        found_inf = None if skip is None else skip.float()
        for group, _, euclid in splits:
            if euclid:
                self._euclid_step(euclid, group, found_inf)
        return loss

    def _ball_step(self, ps: list[Tensor], group: dict[str, Any], skip: Tensor | None) -> None:
        raise NotImplementedError

    def _euclid_step(self, params: list[Tensor], group: dict[str, Any], found_inf: Tensor | None) -> None:
        raise NotImplementedError


class RiemannianSGD(_RiemannianBase):
    """Heavy-ball SGD with coupled L2 weight decay and per-tensor gradient clipping; Riemannian on ball parameters.

    Euclidean: g <- clip(g); g <- g + wd p; buf <- mu buf + g; p <- p - lr buf (or Nesterov), as torch.optim.SGD with
    dampening 0. Ball: r = egrad2rgrad(x, clip(g) + wd x); buf <- mu buf + r; x' = expmap_x(-lr buf);
    buf <- transport_{x->x'}(buf), as geoopt.optim.RiemannianSGD over PoincareBallExact (whose first buffer differs,
    see tests).

    `lr` and `momentum` of a param group may be changed between steps (the Q-controller does); `initial_lr` and
    `initial_momentum` keep the values the group started with, the bases the controller's scales multiply.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        max_grad_norm: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        defaults = dict(
            lr=float(lr), momentum=float(momentum), weight_decay=float(weight_decay),
            max_grad_norm=float(max_grad_norm), nesterov=bool(nesterov),
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            group.setdefault("initial_lr", float(group["lr"]))
            group.setdefault("initial_momentum", float(group["momentum"]))

    def _buffer(self, p: Tensor) -> Tensor:
        st = self.state[p]
        if "momentum_buffer" not in st:
            # zeros, not a copy of the first gradient: mu * 0 + g == g exactly, and a skipped first step stays a no-op
            st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return st["momentum_buffer"]

    def _grads(self, params: list[Tensor], group: dict[str, Any]) -> list[Tensor]:
        grads = [p.grad for p in params]
        if group["max_grad_norm"] > 0:
            grads = _clip_per_tensor(grads, group["max_grad_norm"])  # NaN on a skipped step: never used then
        return grads

    def _ball_step(self, ps: list[Tensor], group: dict[str, Any], skip: Tensor | None) -> None:
        lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
        bufs = [self._buffer(p) for p in ps]
        c = _rows_curvature(ps)
        x = project(_rows(ps), c, BALL_MARGIN)  # also: the curvature may have grown since the last step
        g = _rows(self._grads(ps, group))
        r = egrad2rgrad(x, g + wd * x if wd else g, c)
        buf = mu * _rows(bufs).float() + r
        direction = r + mu * buf if group["nesterov"] else buf
        new_x = project(expmap(x, -lr * direction, c), c, BALL_MARGIN)
        _commit_rows(bufs, transport(x, new_x, buf, c), skip)
        _commit_rows(ps, new_x, skip)

    def _euclid_step(self, params: list[Tensor], group: dict[str, Any], found_inf: Tensor | None) -> None:
        _fused_capable_sgd(
            params, self._grads(params, group), [self._buffer(p) for p in params], fused=True, found_inf=found_inf,
            weight_decay=group["weight_decay"], momentum=group["momentum"], lr=group["lr"], dampening=0.0,
            nesterov=group["nesterov"], maximize=False,
        )


class RiemannianAdam(_RiemannianBase):
    """AdamW on Euclidean parameters; Riemannian Adam (Becigneul & Ganea 2019) on ball parameters.

    Euclidean: decoupled weight decay p <- p (1 - lr wd), then Adam, as torch.optim.AdamW. Ball: as geoopt's
    RiemannianAdam over PoincareBallExact: coupled L2 (g + wd x, a decay that stays on the manifold), first moment of
    the Riemannian gradient, second moment of its squared Riemannian norm (one scalar per point), a step by the
    exponential map, and the first moment transported to the new point.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two values in [0, 1), got {betas}")
        if eps <= 0 or weight_decay < 0:
            raise ValueError(f"need eps > 0 and weight_decay >= 0, got {eps}, {weight_decay}")
        defaults = dict(
            lr=float(lr), betas=(float(betas[0]), float(betas[1])), eps=float(eps), weight_decay=float(weight_decay)
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            group.setdefault("initial_lr", float(group["lr"]))

    def _state(self, p: Tensor, sq_shape: torch.Size | None = None) -> dict[str, Tensor]:
        st = self.state[p]
        if not st:
            st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)  # a tensor: fused kernels, no syncs
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = (
                torch.zeros_like(p, memory_format=torch.preserve_format) if sq_shape is None
                else torch.zeros(sq_shape, dtype=p.dtype, device=p.device)
            )
        return st

    def _ball_step(self, ps: list[Tensor], group: dict[str, Any], skip: Tensor | None) -> None:
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        states = [self._state(p, p.shape[:-1] + (1,)) for p in ps]
        steps = [s["step"] for s in states]
        exp_avgs, exp_avg_sqs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        c = _rows_curvature(ps)
        x = project(_rows(ps), c, BALL_MARGIN)
        g = _rows([p.grad for p in ps])
        r = egrad2rgrad(x, g + wd * x if wd else g, c)
        t = _rows([(s + 1).expand(*p.shape[:-1], 1) for s, p in zip(steps, ps)])  # each point's step number (float32)
        m = _rows(exp_avgs).float().lerp(r, 1 - b1)
        v = _rows(exp_avg_sqs).float() * b2 + (1 - b2) * inner(x, r, r, c, keepdim=True)
        direction = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        new_x = project(expmap(x, -lr * direction, c), c, BALL_MARGIN)
        _commit_rows(exp_avgs, transport(x, new_x, m, c), skip)
        _commit_rows(exp_avg_sqs, v, skip)
        # a list of the same 0-dim tensor: foreach add with one CUDA scalar tensor syncs, with a tensor list it does not
        torch._foreach_add_(steps, 1.0 if skip is None else [(~skip).float()] * len(steps))
        _commit_rows(ps, new_x, skip)

    def _euclid_step(self, params: list[Tensor], group: dict[str, Any], found_inf: Tensor | None) -> None:
        states = [self._state(p) for p in params]
        b1, b2 = group["betas"]
        _fused_capable_adamw(
            params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [],
            [s["step"] for s in states], fused=True, found_inf=found_inf,
            amsgrad=False, beta1=b1, beta2=b2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
            maximize=False,
        )


def clip_grad_norm_(params: Iterable[Tensor], max_norm: float) -> Tensor:
    """Clip the global 2-norm of the gradients to `max_norm` (<= 0: measure only) and return the norm before clipping.

    No host sync. The returned norm is non-finite when any gradient is, so the trainer can take
    `skip = ~torch.isfinite(norm)`; in that case the gradients are left as they are (torch's own clip would multiply
    every gradient by NaN), so finite gradients never become NaN here.
    """
    by_device: dict[torch.device, list[Tensor]] = defaultdict(list)
    for p in params:
        if p.grad is not None:
            by_device[p.grad.device].append(p.grad)
    if not by_device:
        return torch.zeros(())
    first = next(iter(by_device))
    norms = [n.to(first) for grads in by_device.values() for n in torch._foreach_norm(grads)]
    total = torch.linalg.vector_norm(torch.stack(norms))
    if max_norm > 0:
        coef = torch.where(torch.isfinite(total), (max_norm / (total + CLIP_EPS)).clamp(max=1.0), 1.0)
        for device, grads in by_device.items():
            torch._foreach_mul_(grads, coef.to(device))
    return total


def build_optimizer(
    kind: str, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float, cfg_train: TrainConfig
) -> Optimizer:
    """The optimizer `--optimizer` names, with the run's momentum, weight decay, betas and per-tensor clip."""
    if kind == "riemannian_sgd":
        return RiemannianSGD(
            params, lr, momentum=cfg_train.momentum, weight_decay=cfg_train.weight_decay,
            max_grad_norm=cfg_train.risgd_max_grad_norm,
        )
    if kind == "riemannian_adam":
        b1, b2 = cfg_train.adam_betas
        return RiemannianAdam(params, lr, betas=(b1, b2), weight_decay=cfg_train.weight_decay)
    raise ValueError(f"unknown optimizer {kind!r}: expected 'riemannian_adam' or 'riemannian_sgd'")


LR_RANGE = (1e-8, 1.0)
MOMENTUM_RANGE = (0.0, 0.999)


def apply_lr_momentum_scales(optimizer: Optimizer, lr_scale: float, momentum_scale: float = 1.0) -> None:
    """Set every group's lr (and momentum, where the optimizer has one) to its initial value times the scale.

    The scales multiply the *initial* values, so Q-control never compounds; ranges as the original.
    """
    for group in optimizer.param_groups:
        group["lr"] = min(max(group["initial_lr"] * lr_scale, LR_RANGE[0]), LR_RANGE[1])
        if "momentum" in group:
            mom = group["initial_momentum"] * momentum_scale
            group["momentum"] = min(max(mom, MOMENTUM_RANGE[0]), MOMENTUM_RANGE[1])
