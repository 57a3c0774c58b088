"""Q-learning controllers for learning rates, momenta and lambda_KL (the original's HAKMEMQController).

Each controller turns a handful of recent losses into a small discrete state, picks a scale per action type by
epsilon-greedy search over a tabular, factorised Q (every action type has its own Q vector and they share the reward),
and learns from the reward of its previous choice. Scales multiply the *base* values (LR/momentum: the optimizer's
`initial_*`; lambda_KL: the phase's value), so they never compound.

Fixed relative to the original:
* a metric's trend compares the new value with the history *before* the value is appended, and the first decision
  appends each value once (the padding of the first history to its full length with that value is kept).
* the lambda_KL reward follows the validation metric's direction (`higher_is_better`).
* lambda_KL stays in [base/band, base*band] intersected with [min, max], so it cannot random-walk away from the phase's
  value, and it is decided once per *new validation result* (see `LambdaKLController`).
* Rewards never mutate their inputs; non-finite losses are penalised (as the original's extreme-loss rule) instead of
  silently dropped; all randomness comes from each controller's own seeded `random.Random`, whose state is checkpointed.
* The Q-table's pruning clock counts decisions, not wall-clock time: a resumed run decides exactly as an unbroken one.
* `state_dict()` holds only dict/list/str/int/float/bool/None (state tuples are encoded as "LRM_G|2|2|...") so
  checkpoints load with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import math
import random
import statistics
from collections import deque
from dataclasses import dataclass, fields, replace
from typing import Any, Iterable, Mapping, Sequence

__all__ = [
    "EPS", "RewardWeights", "WEIGHTS", "QSettings", "DEFAULT_SETTINGS", "GEN_KEYS", "DISC_KEYS",
    "digitize", "trend_bin", "previous_value", "sanitize_losses", "oscillation_penalty",
    "gen_reward", "disc_reward", "lr_mom_reward", "lambda_kl_reward",
    "gen_state", "disc_state", "lambda_kl_state", "encode_state", "decode_state",
    "LRMomentumController", "LambdaKLController",
]

EPS = 1e-5

# Q-learning hyper-parameters (DEFAULT_CONFIG_QLEARN_HYBRID of the original)
ALPHA = 0.01
GAMMA = 0.90
EPSILON_START = 0.5
EPSILON_MIN = 0.05
EPSILON_DECAY = 0.9995
# lambda_KL decides once per validation, ~100x more rarely than the original's every 2 steps: at 0.9995 its epsilon
# would stay near 0.5 for a whole run. 0.955 reaches the floor after ~50 decisions (0.9995 took ~4600).
LAMBDA_KL_EPSILON_DECAY = 0.955
LR_SCALE_OPTIONS = (0.8, 0.9, 1.0, 1.1, 1.2)
MOMENTUM_SCALE_OPTIONS = (0.95, 0.98, 1.0, 1.01, 1.02)
LAMBDA_KL_SCALE_OPTIONS = (0.94, 0.97, 1.0, 1.03, 1.06)
MAX_Q_TABLE_SIZE = 20000
HISTORY_LEN = 5
LAMBDA_KL_HISTORY_LEN = 5
REWARD_CLIP = 2.0
Q_CLIP = 30.0
REWARD_HISTORY_LEN = 100
NO_MOMENTUM_BIN = -1  # the momentum feature of an optimizer without momentum (Adam)

GEN_KEYS = ("loss_g_total", "loss_recon", "loss_kl", "loss_g_adv", "loss_d_total")
DISC_KEYS = ("loss_d_total", "loss_g_total", "loss_d_real", "loss_d_fake", "loss_g_adv")
LAMBDA_KL_KEYS = ("loss_recon", "loss_kl", "loss_d_total")

LR, MOMENTUM, LAMBDA_KL = "lr_scale", "momentum_scale", "lambda_kl_scale"


@dataclass(frozen=True)
class RewardWeights:
    g_recon_improvement: float = 2.5
    g_adv_improvement: float = 1.2
    g_kl_control_penalty: float = 0.3
    g_loss_stability: float = 0.1
    d_balance_target: float = 1.5
    d_real_low_bonus: float = 0.7
    d_fake_low_meaningful_bonus: float = 0.7
    d_loss_stability: float = 0.1
    gan_balance_g_bonus: float = 0.3
    gan_balance_d_penalty: float = 0.3
    oscillation_penalty: float = 0.25
    extreme_loss_penalty: float = 0.75
    lambda_kl_recon_focus: float = 1.5
    lambda_kl_kl_target_range: float = 1.0
    lambda_kl_val_metric_improvement: float = 2.0
    lambda_kl_stability_penalty: float = 0.5


    @classmethod
    def with_overrides(cls, pairs: Iterable[str]) -> "RewardWeights":
        """The defaults with `NAME=VALUE` overrides (`--reward_weights`); an unknown name is a ValueError naming the
        known ones."""
        known = {f.name for f in fields(cls)}
        values: dict[str, float] = {}
        for pair in pairs:
            name, sep, value = str(pair).partition("=")
            name = name.strip()
            if not sep or name not in known:
                raise ValueError(f"--reward_weights: {pair!r} is not NAME=VALUE with NAME one of {', '.join(sorted(known))}")
            values[name] = float(value)
        return replace(cls(), **values)


WEIGHTS = RewardWeights()


@dataclass(frozen=True)
class QSettings:
    """What a user may set of the controllers (the guide §6-7: `lr_scale_options`, `reward_weights`, ...); the
    defaults are the original's DEFAULT_CONFIG_QLEARN_HYBRID."""

    lr_scale_options: tuple[float, ...] = LR_SCALE_OPTIONS
    momentum_scale_options: tuple[float, ...] = MOMENTUM_SCALE_OPTIONS
    lambda_kl_scale_options: tuple[float, ...] = LAMBDA_KL_SCALE_OPTIONS
    alpha: float = ALPHA
    gamma: float = GAMMA
    epsilon_start: float = EPSILON_START
    epsilon_min: float = EPSILON_MIN
    epsilon_decay: float = EPSILON_DECAY
    lambda_kl_epsilon_decay: float = LAMBDA_KL_EPSILON_DECAY
    weights: RewardWeights = WEIGHTS

    def options(self, action_type: str) -> tuple[float, ...]:
        return {LR: self.lr_scale_options, MOMENTUM: self.momentum_scale_options,
                LAMBDA_KL: self.lambda_kl_scale_options}[action_type]

    @property
    def epsilon_edges(self) -> tuple[float, float]:
        return (2 * self.epsilon_min, 0.6 * self.epsilon_start)


DEFAULT_SETTINGS = QSettings()


# ---------------------------------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------------------------------
def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _clip(x: float, lim: float) -> float:
    return min(max(x, -lim), lim)


def digitize(x: float, edges: Sequence[float]) -> int:
    """numpy.digitize(x, edges) for increasing edges: the number of edges <= x."""
    return sum(1 for e in edges if e <= x)


def trend_bin(history: Iterable[float], current: float | None) -> int:
    """Direction of `current` against the median of `history` (values *before* current), in 5 bins, 2 = flat.

    0: fell > 15 %, 1: fell 2-15 %, 2: within 2 %, 3: rose 2-15 %, 4: rose > 15 %. The denominator falls back to
    max(|current|, 0.01) when the median is near zero, so tiny losses do not make every wiggle a big trend.
    """
    past = [h for h in history if _finite(h)]
    if not _finite(current) or not past:
        return 2
    m = statistics.median(past)
    denom = abs(m)
    if denom < 0.01 + EPS:
        denom = max(abs(current), 0.01 + EPS)
    rel = (current - m) / (denom + EPS)
    if rel < -0.15:
        return 0
    if rel < -0.02:
        return 1
    if rel <= 0.02:
        return 2
    if rel <= 0.15:
        return 3
    return 4


def previous_value(history: Iterable[float], current: float) -> float:
    """The reference a reward compares `current` with: the median of the finite earlier values, or `current` itself."""
    past = [h for h in history if _finite(h)]
    return statistics.median(past) if past else current


def sanitize_losses(losses: Mapping[str, float], w: RewardWeights = WEIGHTS) -> tuple[dict[str, float], float]:
    """A copy with non-finite losses replaced by 100 and |loss| > 500 clipped to +-500, and the (negative) penalty.

    A non-finite loss costs 5 * extreme_loss_penalty; a huge one extreme_loss_penalty * |loss| / 500.
    """
    clean: dict[str, float] = {}
    penalty = 0.0
    for k, v in losses.items():
        if not math.isfinite(v):
            penalty -= w.extreme_loss_penalty * 5.0
            clean[k] = 100.0
        elif abs(v) > 500.0:
            penalty -= w.extreme_loss_penalty * abs(v) / 500.0
            clean[k] = _clip(v, 500.0)
        else:
            clean[k] = v
    return clean, penalty


def oscillation_penalty(reward_hist: Sequence[float], w: RewardWeights = WEIGHTS) -> float:
    """-0.25 * flips/5 when the last 5 rewards flip sign at least twice (ignoring |r| <= 0.05), else 0."""
    if len(reward_hist) < 5:
        return 0.0
    last = list(reward_hist)[-5:]
    flips = sum(
        1 for a, b in zip(last, last[1:]) if abs(a) > 0.05 and abs(b) > 0.05 and (a > 0) != (b > 0)
    )
    return -w.oscillation_penalty * flips / 5.0 if flips >= 2 else 0.0


def _rel_drop(prev: float, cur: float) -> float:
    return (prev - cur) / (abs(prev) + EPS)


def gen_reward(
    cur: Mapping[str, float], prev: Mapping[str, float], lambda_kl: float, w: RewardWeights = WEIGHTS
) -> float:
    """The generator's reward terms (as the original's) from current and reference losses (keys of GEN_KEYS), unclipped."""
    recon, kl, adv, d, gtot = (cur[k] for k in ("loss_recon", "loss_kl", "loss_g_adv", "loss_d_total", "loss_g_total"))
    recon_scale = 1.0 + math.log1p(max(0.0, recon - 0.02) * 20.0)
    p_recon = prev["loss_recon"]
    r = w.g_recon_improvement * math.tanh((p_recon - recon) / (abs(p_recon) + 0.01 + EPS) * recon_scale)
    r += w.g_adv_improvement * math.tanh(_rel_drop(prev["loss_g_adv"], adv))
    if kl > 100.0 and lambda_kl >= 0.0005 and recon > 0.1:
        r -= w.g_kl_control_penalty * min(1.0, (kl - 100.0) / 200.0)
    if 0.4 < d < 0.75:
        r += w.gan_balance_g_bonus
    elif d <= 0.3:
        r -= w.gan_balance_d_penalty * 1.5
    r += w.g_loss_stability * math.tanh(_rel_drop(prev["loss_g_total"], gtot))
    return r


def disc_reward(cur: Mapping[str, float], prev: Mapping[str, float], w: RewardWeights = WEIGHTS) -> float:
    """The discriminator's reward terms (as the original's) from current and reference losses (keys of DISC_KEYS), unclipped."""
    d, d_real, d_fake, adv = (cur[k] for k in ("loss_d_total", "loss_d_real", "loss_d_fake", "loss_g_adv"))
    r = 0.0
    if 0.4 < d < 0.65:
        r += w.d_balance_target
    elif d < 0.3:
        r -= w.d_balance_target * 0.5
    elif d > 0.8:
        r -= w.d_balance_target * 0.75
    if d_real < 0.3:
        r += w.d_real_low_bonus * (0.3 - d_real) / 0.3
    if d_fake < 0.3 and adv > 0.4:
        r += w.d_fake_low_meaningful_bonus * (0.3 - d_fake) / 0.3
    if adv < 0.25:
        r -= w.gan_balance_g_bonus
    r += w.d_loss_stability * math.tanh(_rel_drop(prev["loss_d_total"], d))
    return r


def lr_mom_reward(
    role: str,
    losses: Mapping[str, float],
    histories: Mapping[str, Sequence[float]],
    lambda_kl: float,
    reward_hist: Sequence[float],
    w: RewardWeights = WEIGHTS,
) -> float:
    """The full LR/momentum reward in [-2, 2]: extreme-loss penalty + role terms + oscillation penalty.

    `histories` hold earlier values only (not `losses`); the reference of each loss is their median.
    """
    keys = GEN_KEYS if role == "gen" else DISC_KEYS
    clean, penalty = sanitize_losses({k: losses[k] for k in keys}, w)
    prev = {k: previous_value(histories.get(k, ()), clean[k]) for k in keys}
    base = gen_reward(clean, prev, lambda_kl, w) if role == "gen" else disc_reward(clean, prev, w)
    return _clip(penalty + base + oscillation_penalty(reward_hist, w), REWARD_CLIP)


def lambda_kl_reward(
    cur: Mapping[str, float], prev: Mapping[str, float], higher_is_better: bool, w: RewardWeights = WEIGHTS
) -> float:
    """The lambda_KL reward in [-2, 2] with the validation metric's direction respected (the original assumed higher is better for every metric).

    `cur`/`prev` hold loss_recon, loss_kl, loss_d_total, val_metric and lambda_kl of this and the previous decision.
    """
    dval = cur["val_metric"] - prev["val_metric"]
    r = w.lambda_kl_val_metric_improvement * math.tanh(5.0 * (dval if higher_is_better else -dval))
    delta = prev["loss_recon"] - cur["loss_recon"]
    f = 1.0 if delta >= -0.05 else 1.0 + abs(10.0 * delta)  # a recon rise is punished, but saturates less fast
    r += w.lambda_kl_recon_focus * math.tanh(10.0 * delta / f)
    kl, recon = cur["loss_kl"], cur["loss_recon"]
    if kl > 100.0:
        r += w.lambda_kl_kl_target_range * math.tanh((prev["loss_kl"] - kl) / 50.0)
    elif kl < 20.0 and recon > 0.05:
        r -= w.lambda_kl_stability_penalty
    dd = abs(cur["loss_d_total"] - prev["loss_d_total"])
    if dd > 0.2:
        r -= w.lambda_kl_stability_penalty * dd / 0.2
    if cur["lambda_kl"] > 0.5 and recon > 0.15:
        r -= w.lambda_kl_stability_penalty
    return _clip(r, REWARD_CLIP)


# ---------------------------------------------------------------------------------------------------------------------
# States
# ---------------------------------------------------------------------------------------------------------------------
State = tuple  # ("LRM_G" | "LRM_D" | "LKL", int, int, ...)


def _for_bins(losses: Mapping[str, float], keys: Iterable[str]) -> dict[str, float]:
    # not clipped to +-500 as in the reward: a KL of 1000 is a real value of a sum over latent dims and the bins need it
    return {k: losses[k] if math.isfinite(losses[k]) else 100.0 for k in keys}


def _lr_mom_bins(lr: float, momentum: float | None) -> tuple[int, int]:
    mom_bin = NO_MOMENTUM_BIN if momentum is None else digitize(momentum, (0.85, 0.95))
    return digitize(lr, (1e-5, 5e-5, 2e-4)), mom_bin


def gen_state(
    losses: Mapping[str, float], histories: Mapping[str, Sequence[float]], lambda_kl: float,
    lr: float, momentum: float | None, epsilon_bin: int,
) -> State:
    """("LRM_G", trend g_total, trend d_total, trend recon, kl_problem, adv bin, lr bin, momentum bin, epsilon bin).

    Trends take the raw losses (a non-finite one is "flat"); bins take them with non-finite ones read as 100.
    """
    clean = _for_bins(losses, GEN_KEYS)
    recon, kl = clean["loss_recon"], clean["loss_kl"]
    if lambda_kl * kl > 5.0 * recon and recon > 0.10 and lambda_kl > 0.0005:
        kl_problem = 1  # the KL term dominates the loss
    elif kl > 150.0 and recon > 0.15 and lambda_kl > 0.005:
        kl_problem = 2  # large KL while reconstruction is still poor
    else:
        kl_problem = 0
    t = {k: trend_bin(histories.get(k, ()), losses[k]) for k in ("loss_g_total", "loss_d_total", "loss_recon")}
    return (
        "LRM_G", t["loss_g_total"], t["loss_d_total"], t["loss_recon"], kl_problem,
        digitize(clean["loss_g_adv"], (0.3, 0.6, 1.0)), *_lr_mom_bins(lr, momentum), epsilon_bin,
    )


def disc_state(
    losses: Mapping[str, float], histories: Mapping[str, Sequence[float]],
    lr: float, momentum: float | None, epsilon_bin: int,
) -> State:
    """("LRM_D", trend d_total, trend g_total, d_total bin, fake/real bin, adv bin, lr, momentum, epsilon bins)."""
    clean = _for_bins(losses, DISC_KEYS)
    ratio = clean["loss_d_fake"] / (clean["loss_d_real"] + EPS)
    return (
        "LRM_D",
        trend_bin(histories.get("loss_d_total", ()), losses["loss_d_total"]),
        trend_bin(histories.get("loss_g_total", ()), losses["loss_g_total"]),
        digitize(clean["loss_d_total"], (0.35, 0.65, 0.85)),
        digitize(ratio, (0.8, 1.2, 2.0)),
        digitize(clean["loss_g_adv"], (0.2, 0.5)),
        *_lr_mom_bins(lr, momentum),
        epsilon_bin,
    )


def lambda_kl_state(metrics: Mapping[str, float], histories: Mapping[str, Sequence[float]], epsilon_bin: int) -> State:
    """("LKL", trend recon, trend kl, trend val_metric, lambda_kl bin, d_total bin, epsilon bin)."""
    t = {k: trend_bin(histories.get(k, ()), metrics[k]) for k in ("loss_recon", "loss_kl", "val_metric")}
    return (
        "LKL", t["loss_recon"], t["loss_kl"], t["val_metric"],
        digitize(metrics["lambda_kl"], (0.0005, 0.005, 0.05)),
        digitize(metrics["loss_d_total"], (0.35, 0.65, 0.85)),
        epsilon_bin,
    )


def encode_state(state: State) -> str:
    return "|".join(str(s) for s in state)


def decode_state(key: str) -> State:
    name, *bins = key.split("|")
    return (name, *(int(b) for b in bins))


# ---------------------------------------------------------------------------------------------------------------------
# The tabular agent shared by both controllers
# ---------------------------------------------------------------------------------------------------------------------
def _isclose(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-8 + 1e-5 * abs(b)  # numpy.isclose defaults, as the original


class _QAgent:
    """Q-table, epsilon-greedy choice, factorised update, pruning and the seeded RNG."""

    def __init__(self, seed: int, action_types: tuple[str, ...], epsilon_decay: float = EPSILON_DECAY,
                 settings: QSettings = DEFAULT_SETTINGS) -> None:
        self.action_types = action_types
        self.epsilon_decay = epsilon_decay
        self.settings = settings
        self.rng = random.Random(seed)
        self.epsilon = settings.epsilon_start
        self.q: dict[str, dict[str, list[float]]] = {}
        self.meta: dict[str, list[int]] = {}  # key -> [access count, created at, last access] on the decision clock
        self.clock = 0
        self.reward_hist: deque[float] = deque(maxlen=REWARD_HISTORY_LEN)
        self.prev_state: str | None = None
        self.prev_action: dict[str, int] | None = None

    def epsilon_bin(self) -> int:
        return digitize(self.epsilon, self.settings.epsilon_edges)

    def touch(self, key: str) -> None:
        self.clock += 1
        if key not in self.q:
            self.q[key] = {t: [0.0] * len(self.settings.options(t)) for t in self.action_types}
            self.meta[key] = [0, self.clock, self.clock]
        self.meta[key][0] += 1
        self.meta[key][2] = self.clock

    def choose(self, key: str, types: Iterable[str]) -> dict[str, int]:
        """Decay epsilon once, then pick an option index per action type independently."""
        self.epsilon = max(self.settings.epsilon_min, self.epsilon * self.epsilon_decay)
        action = {}
        for t in types:
            qs = self.q[key][t]
            if self.rng.random() < self.epsilon:
                action[t] = self.rng.randrange(len(qs))
            else:
                best = max((q for q in qs if math.isfinite(q)), default=None)
                ties = [i for i, q in enumerate(qs) if best is not None and _isclose(q, best)]
                action[t] = self.rng.choice(ties or list(range(len(qs))))
        return action

    def learn(self, reward: float, next_key: str) -> None:
        """Q(s, a_t) += alpha (r + gamma max_b Q(s', b_t) - Q(s, a_t)) for each action type t of the previous action."""
        reward = _clip(reward, REWARD_CLIP)
        self.reward_hist.append(reward)
        if self.prev_state not in self.q or self.prev_action is None:
            return
        for t, idx in self.prev_action.items():
            nxt = [q for q in self.q.get(next_key, {}).get(t, []) if math.isfinite(q)]
            target = reward + self.settings.gamma * (max(nxt) if nxt else 0.0)
            old = self.q[self.prev_state][t][idx]
            new = _clip(old + self.settings.alpha * (target - old), Q_CLIP)
            if math.isfinite(new):
                self.q[self.prev_state][t][idx] = new

    def prune(self, keep: str) -> None:
        """Drop the least used, longest idle states while the table is over MAX_Q_TABLE_SIZE (never `keep`)."""
        excess = len(self.q) - MAX_Q_TABLE_SIZE
        if excess <= 0:
            return

        def score(k: str) -> float:
            count, created, last = self.meta[k]
            return count * (1 + math.log1p(self.clock - created)) / (1 + math.log1p(self.clock - last))

        for k in sorted((k for k in self.q if k != keep), key=score)[:excess]:
            del self.q[k], self.meta[k]

    def avg_reward(self) -> float:
        return sum(self.reward_hist) / len(self.reward_hist) if self.reward_hist else 0.0

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {
            "rng": [version, list(internal), gauss],
            "epsilon": self.epsilon,
            "q_table": {k: {t: list(v) for t, v in d.items()} for k, d in self.q.items()},
            "q_meta": {k: list(v) for k, v in self.meta.items()},
            "clock": self.clock,
            "reward_hist": list(self.reward_hist),
            "prev_state": self.prev_state,
            "prev_action": None if self.prev_action is None else dict(self.prev_action),
        }

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        version, internal, gauss = sd["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.epsilon = float(sd["epsilon"])
        self.q = {k: {t: [float(x) for x in v] for t, v in d.items()} for k, d in sd["q_table"].items()}
        self.meta = {k: [int(x) for x in v] for k, v in sd["q_meta"].items()}
        self.clock = int(sd["clock"])
        self.reward_hist = deque((float(r) for r in sd["reward_hist"]), maxlen=REWARD_HISTORY_LEN)
        self.prev_state = sd["prev_state"]
        self.prev_action = None if sd["prev_action"] is None else {t: int(i) for t, i in sd["prev_action"].items()}


def _histories(keys: Iterable[str], maxlen: int) -> dict[str, deque[float]]:
    return {k: deque(maxlen=maxlen) for k in keys}


def _append(histories: dict[str, deque[float]], values: Mapping[str, float], first: bool) -> None:
    """Append the finite values once; on the first decision pad each history to full length with its oldest value."""
    for k, h in histories.items():
        v = values.get(k)
        if _finite(v):
            h.append(float(v))
        if first and h:
            while len(h) < h.maxlen:
                h.appendleft(h[0])


def _load_histories(histories: dict[str, deque[float]], saved: Mapping[str, Sequence[float]]) -> None:
    for k, h in histories.items():
        h.clear()
        h.extend(float(x) for x in saved.get(k, ()))


# ---------------------------------------------------------------------------------------------------------------------
# Controllers
# ---------------------------------------------------------------------------------------------------------------------
class LRMomentumController:
    """Chooses the LR and momentum scales of one optimizer ("gen" or "disc") from interval-averaged losses.

    Call `decide` every `q_control_interval` optimizer steps with the losses averaged over that interval; apply the
    returned scales to the optimizer's initial LR and momentum (`optim.apply_lr_momentum_scales`). With
    `momentum=None` (Adam) the momentum action is not taken and its scale is 1.0.
    """

    def __init__(self, role: str, seed: int, settings: QSettings = DEFAULT_SETTINGS) -> None:
        if role not in ("gen", "disc"):
            raise ValueError(f"role must be 'gen' or 'disc', got {role!r}")
        self.role = role
        self.keys = GEN_KEYS if role == "gen" else DISC_KEYS
        self.settings = settings
        self._agent = _QAgent(seed, (LR, MOMENTUM), settings.epsilon_decay, settings)
        self._hist = _histories(self.keys, HISTORY_LEN)
        self._scales = (1.0, 1.0)
        self.last_state: State | None = None  # the state of the latest decision, for logs and tests

    def decide(self, losses: Mapping[str, float], lr: float, momentum: float | None) -> tuple[float, float]:
        """(lr_scale, momentum_scale) for the coming interval; `losses` needs the role's keys (gen: and `lambda_kl`)."""
        needed = self.keys + (("lambda_kl",) if self.role == "gen" else ())
        missing = [k for k in needed if k not in losses]
        if missing:
            raise KeyError(f"Q-controller ({self.role}) needs losses {missing}")
        cur = {k: float(losses[k]) for k in self.keys}
        lam = float(losses["lambda_kl"]) if self.role == "gen" else 0.0
        a = self._agent
        if self.role == "gen":
            state = gen_state(cur, self._hist, lam, lr, momentum, a.epsilon_bin())
        else:
            state = disc_state(cur, self._hist, lr, momentum, a.epsilon_bin())
        self.last_state = state
        key = encode_state(state)
        a.touch(key)
        first = a.prev_state is None
        if not first:
            a.learn(lr_mom_reward(self.role, cur, self._hist, lam, a.reward_hist, self.settings.weights), key)
        _append(self._hist, cur, first)
        types = (LR,) if momentum is None else (LR, MOMENTUM)
        action = a.choose(key, types)
        a.prev_state, a.prev_action = key, action
        a.prune(keep=key)
        self._scales = (
            self.settings.lr_scale_options[action[LR]],
            self.settings.momentum_scale_options[action[MOMENTUM]] if MOMENTUM in action else 1.0,
        )
        return self._scales

    def info(self) -> dict[str, float]:
        """Tracking values; the trainer prefixes them with q_ctrl_gen/ or q_ctrl_disc/."""
        return {
            "lrscale": self._scales[0],
            "momentumscale": self._scales[1],
            "epsilon": self._agent.epsilon,
            "qtablesize": float(len(self._agent.q)),
            "avgreward": self._agent.avg_reward(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "agent": self._agent.state_dict(),
            "histories": {k: list(h) for k, h in self._hist.items()},
            "scales": list(self._scales),
        }

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        if sd["role"] != self.role:
            raise ValueError(f"a {sd['role']!r} controller state cannot be loaded into a {self.role!r} controller")
        self._agent.load_state_dict(sd["agent"])
        _load_histories(self._hist, sd["histories"])
        self._scales = (float(sd["scales"][0]), float(sd["scales"][1]))


class LambdaKLController:
    """Rescales lambda_KL within [base/band, base*band] (and [min, max]) from validation and interval losses.

    Cadence: the trainer calls `decide` every `lambda_kl_update_interval` steps with that interval's averaged losses
    and the latest validation metric (None before the first validation). The controller pools the intervals and acts
    only when the metric is a *new* validation result (it differs from the last one acted on). The metric is the
    reward's strongest term and changes only when validation runs: deciding between validations (the original rescaled
    every 2 steps) credits and blames actions on a metric they could not have moved, and a multiplicative walk with no
    signal drifts. One decision per validation makes each action's reward the change it produced over its whole period.
    `lambda_kl_update_interval` then only sets how often losses are read from the device.
    """

    def __init__(
        self, base_lambda_kl: float, band: float, min_lambda_kl: float, max_lambda_kl: float, seed: int,
        higher_is_better: bool, settings: QSettings = DEFAULT_SETTINGS,
    ) -> None:
        if band < 1.0:
            raise ValueError(f"lambda_kl band must be >= 1, got {band}")
        self.base = float(base_lambda_kl)
        self.band, self.min_lambda_kl, self.max_lambda_kl = band, min_lambda_kl, max_lambda_kl
        self.low = max(self.base / band, min_lambda_kl)
        self.high = min(self.base * band, max_lambda_kl)
        if not (self.base > 0 and min_lambda_kl <= self.base <= max_lambda_kl):
            raise ValueError(
                f"lambda_kl Q-control needs 0 < lambda_kl within [min_lambda_kl_q_control, max_lambda_kl_q_control] = "
                f"[{min_lambda_kl}, {max_lambda_kl}], got {base_lambda_kl}"
            )
        self.higher_is_better = bool(higher_is_better)
        self.lambda_kl = self.base
        self.settings = settings
        self._agent = _QAgent(seed, (LAMBDA_KL,), settings.lambda_kl_epsilon_decay, settings)
        self._hist = _histories(LAMBDA_KL_KEYS + ("val_metric",), LAMBDA_KL_HISTORY_LEN)
        self._prev_metrics: dict[str, float] | None = None
        self._last_val: float | None = None
        self._scale = 1.0
        self.last_state: State | None = None
        self._reset_pool()

    def _reset_pool(self) -> None:
        self._sums = [0.0] * len(LAMBDA_KL_KEYS)
        self._count = 0
        self._nonfinite = 0

    def decide(self, interval: Mapping[str, float], val_metric: float | None) -> float:
        """The lambda_KL to use from now on; `interval` holds loss_recon, loss_kl, loss_d_total averaged over it."""
        missing = [k for k in LAMBDA_KL_KEYS if k not in interval]
        if missing:
            raise KeyError(f"lambda_KL Q-controller needs interval losses {missing}")
        vals = [float(interval[k]) for k in LAMBDA_KL_KEYS]
        if all(math.isfinite(v) for v in vals):
            self._sums = [s + v for s, v in zip(self._sums, vals)]
            self._count += 1
        else:
            self._nonfinite += 1
        if not _finite(val_metric) or val_metric == self._last_val:
            return self.lambda_kl
        self._last_val = float(val_metric)
        if self._count == 0:  # every interval since the last decision diverged: no state to build
            self._reset_pool()
            return self.lambda_kl
        cur = {k: s / self._count for k, s in zip(LAMBDA_KL_KEYS, self._sums)}
        cur.update(val_metric=float(val_metric), lambda_kl=self.lambda_kl)
        w = self.settings.weights
        penalty = -w.extreme_loss_penalty * 5.0 if self._nonfinite else 0.0
        self._reset_pool()

        a = self._agent
        self.last_state = lambda_kl_state(cur, self._hist, a.epsilon_bin())
        key = encode_state(self.last_state)
        a.touch(key)
        first = a.prev_state is None or self._prev_metrics is None
        if not first:
            a.learn(_clip(lambda_kl_reward(cur, self._prev_metrics, self.higher_is_better, w) + penalty, REWARD_CLIP),
                    key)
        _append(self._hist, cur, first)
        action = a.choose(key, (LAMBDA_KL,))
        a.prev_state, a.prev_action = key, action
        a.prune(keep=key)
        self._prev_metrics = cur
        self._scale = self.settings.lambda_kl_scale_options[action[LAMBDA_KL]]
        self.lambda_kl = min(max(self.lambda_kl * self._scale, self.low), self.high)
        return self.lambda_kl

    def rebase(self, base_lambda_kl: float) -> float:
        """A new base value mid-run (the health monitor's remedy for noisy output): the band moves with it, within
        [min, max]; what was learned stays, the pending transition is dropped (the jump is no consequence of the last
        action). -> the lambda_kl now in use."""
        self.base = min(max(float(base_lambda_kl), self.min_lambda_kl), self.max_lambda_kl)
        self.low = max(self.base / self.band, self.min_lambda_kl)
        self.high = min(self.base * self.band, self.max_lambda_kl)
        self.lambda_kl, self._scale, self._prev_metrics = self.base, 1.0, None
        self._agent.prev_state, self._agent.prev_action = None, None
        return self.lambda_kl

    def info(self) -> dict[str, float]:
        """Tracking values; the trainer prefixes them with q_ctrl_lkl/."""
        return {
            "lambdakl": self.lambda_kl,
            "lambdaklscale": self._scale,
            "epsilon": self._agent.epsilon,
            "qtablesize": float(len(self._agent.q)),
            "avgreward": self._agent.avg_reward(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "base_lambda_kl": self.base,
            "lambda_kl": self.lambda_kl,
            "scale": self._scale,
            "agent": self._agent.state_dict(),
            "histories": {k: list(h) for k, h in self._hist.items()},
            "prev_metrics": None if self._prev_metrics is None else dict(self._prev_metrics),
            "last_val": self._last_val,
            "pool": {"sums": list(self._sums), "count": self._count, "nonfinite": self._nonfinite},
        }

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        """Restore; if the saved run had another base lambda_KL (a new phase), the new phase's value wins.

        The Q-table, epsilon and RNG carry over (the state includes a lambda_KL bin, so what was learned stays
        meaningful), but lambda_KL restarts at the new base and the pending transition is dropped: the jump to the new
        phase's value is no consequence of the last action.
        """
        self._agent.load_state_dict(sd["agent"])
        _load_histories(self._hist, sd["histories"])
        self._last_val = None if sd["last_val"] is None else float(sd["last_val"])
        if float(sd["base_lambda_kl"]) == self.base:
            self.lambda_kl = min(max(float(sd["lambda_kl"]), self.low), self.high)
            self._scale = float(sd["scale"])
            prev = sd["prev_metrics"]
            self._prev_metrics = None if prev is None else {k: float(v) for k, v in prev.items()}
            pool = sd["pool"]
            self._sums = [float(s) for s in pool["sums"]]
            self._count, self._nonfinite = int(pool["count"]), int(pool["nonfinite"])
        else:
            self.lambda_kl, self._scale, self._prev_metrics = self.base, 1.0, None
            self._agent.prev_state, self._agent.prev_action = None, None
            self._reset_pool()
