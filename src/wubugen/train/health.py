"""The training guide's troubleshooting (its section 6; SPEC §12.2 in checkable form) as live rules.

The rules read only what the trainer already reads on the host: the values it logs every --log_interval steps (the
train/ losses, lambda_kl) and each validation's metrics (PSNR and the colour statistics of the reconstructions). Nothing
here touches the device. A rule looks at the last --health_window logged values; it fires when its condition becomes
true, and again every window while it holds. A firing is one console line (symptom, values, the guide's diagnosis and
action) and a `health/<rule>` event to every tracker; with --auto_remedy the guide's action is applied, bounded, and the
line says what was done.

| rule          | condition (window: the last --health_window logs)                    | the guide's diagnosis  | remedy          |
|---------------|----------------------------------------------------------------------|------------------------|-----------------|
| noise_output  | at a validation: train Rec not improving (< 2 % between the window's | lambda_kl too high;    | lambda_kl to    |
| (T1)          | halves) and PSNR < 12 dB or colour statistics far from the data's    | else the final tanh    | 1e-4, then 1e-5 |
|               | (a channel's mean off by > 0.1 of the range, or its spread < 0.5x)   |                        |                 |
| d_guessing    | mean D_tot in [0.66, 0.72] (ln 2 = 0.693)                            | D guesses: poor fakes  | D's LR <= 1e-4  |
| (T3)          |                                                                      |                        |                 |
| d_too_strong  | max D_tot < 0.05 and mean Adv > 2                                    | D overpowers G         | D's LR x0.5 and |
| (T4)          |                                                                      |                        | lambda_gan x0.5 |
|               |                                                                      |                        | for a while     |
| d_collapsed   | max Adv < 0.05                                                       | D has collapsed        | D's LR x2,      |
| (T5)          |                                                                      |                        | G's LR x0.5     |
| phase1_ranges | mean D_tot outside [0.3, 0.65], or mean D_real or D_fake >= 0.7      | outside Phase 1's      | none (advice)   |
|               | (--health_phase1_ranges; the guide's plan checks them in phase 1)    | healthy ranges         |                 |
| nonfinite     | the trainer's rollback after --max_consecutive_nonfinite bad steps   | divergence             | (the rollback:  |
| (T2)          |                                                                      |                        | LRs halved)     |

The D and G numbers are the guide's, for its BCE loss: with --gan_loss hinge or lsgan those four rules are off.
Learning-rate remedies are factors on top of the Q-controller's scales and the rollback factor, kept in [1/8, 4].
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Mapping

LOG_KEYS = ("loss_recon", "loss_d_total", "loss_d_real", "loss_d_fake", "loss_g_adv")
D_GUESS_BAND = (0.66, 0.72)  # SPEC T3 (op): "stays at ~0.69", ln 2 for BCE
D_ZERO = 0.05  # SPEC T4 (op): "goes to zero"
ADV_HIGH = 2.0  # T4: "G_adv will be very high" (op: the guide calls > 0.7 expected in phase 1)
ADV_ZERO = 0.05  # SPEC T5 (op)
P1_D_TOTAL = (0.3, 0.65)  # the guide's Phase 1: "D_tot ... ideally in the 0.3 - 0.65 range"
P1_D_TERM = 0.7  # "D_real and D_fake ... < 0.7"
NOISE_PSNR = 12.0  # SPEC T1 (op)
COLOUR_MEAN_GAP = 0.1  # (op) a channel's mean off by a tenth of the range: a colour cast
COLOUR_STD_RATIO = 0.5  # (op) half the data's spread: washed out
RECON_PROGRESS = 0.02  # (op) the window's second half at least 2 % below its first
LR_FACTOR_RANGE = (0.125, 4.0)
GAN_RULES = ("d_guessing", "d_too_strong", "d_collapsed", "phase1_ranges")
REMEDY_HINT = {
    "lambda_kl": "lower lambda_kl to 1e-4 (then 1e-5)",
    "cap_lr_d": "bring D's learning rate down to 1e-4 if it is higher",
    "d_strong": "halve D's learning rate and lambda_gan for a while",
    "d_collapsed": "double D's learning rate and halve G's",
}


@dataclass(frozen=True)
class Finding:
    """One rule's verdict: what is seen, the numbers, the guide's diagnosis and action, and the remedy's name."""

    rule: str
    symptom: str
    values: str
    diagnosis: str
    action: str
    remedy: str | None = None

    def line(self) -> str:
        return f"{self.symptom} ({self.values}). Diagnosis: {self.diagnosis}. Action: {self.action}."


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


class HealthMonitor:
    """The rules over streams of logged values and validation metrics, and when each fires. Pure: tests drive it with
    synthetic streams; `Health` below connects it to a run."""

    def __init__(self, window: int = 20, phase1_ranges: bool = True, gan_kind: str = "bce"):
        self.window = max(2, int(window))
        self.phase1_ranges = phase1_ranges
        self.gan_rules = gan_kind == "bce"
        self.hist: dict[str, deque[float]] = {k: deque(maxlen=self.window) for k in LOG_KEYS}
        self.lambda_kl: float | None = None
        self.n_logs = 0
        self.active: set[str] = set()  # rules whose condition held at their last check
        self.last_fired: dict[str, int] = {}  # rule -> n_logs at its last firing
        self.counts: dict[str, int] = {}

    def _full(self, *keys: str) -> bool:
        return all(len(self.hist[k]) == self.window for k in keys)

    # ---- the rules ---------------------------------------------------------------------------------------------------
    def d_guessing(self) -> Finding | None:
        if not self._full("loss_d_total"):
            return None
        m = _mean(self.hist["loss_d_total"])
        lo, hi = D_GUESS_BAND
        if not lo <= m <= hi:
            return None
        return Finding("d_guessing", f"D loss near ln 2 for {self.window} logs",
                       f"mean D_tot {m:.3f} in [{lo}, {hi}]",
                       "D is guessing: G is likely producing poor fakes",
                       "focus on G's reconstruction first (low lambda_kl, an adequate learning_rate_gen); make sure "
                       "D's learning rate is not too high (1e-4 works once G improves)", "cap_lr_d")

    def d_too_strong(self) -> Finding | None:
        if not self._full("loss_d_total", "loss_g_adv"):
            return None
        top, adv = max(self.hist["loss_d_total"]), _mean(self.hist["loss_g_adv"])
        if not (top < D_ZERO and adv > ADV_HIGH):
            return None
        return Finding("d_too_strong", f"D loss near 0 for {self.window} logs with G's adversarial loss high",
                       f"max D_tot {top:.3f} < {D_ZERO}, mean Adv {adv:.2f} > {ADV_HIGH}",
                       "D has become too powerful and G cannot fool it",
                       "the D Q-controller should lower D's LR; if not, reduce learning_rate_disc or raise "
                       "learning_rate_gen, and consider lowering lambda_gan for a while so G can focus on "
                       "reconstruction", "d_strong")

    def d_collapsed(self) -> Finding | None:
        if not self._full("loss_g_adv"):
            return None
        top = max(self.hist["loss_g_adv"])
        if not top < ADV_ZERO:
            return None
        return Finding("d_collapsed", f"G's adversarial loss near 0 for {self.window} logs",
                       f"max Adv {top:.3f} < {ADV_ZERO}",
                       "G fools D perfectly: D has collapsed or is not learning",
                       "the Q-controllers should lower G's LR and raise D's; if not, raise learning_rate_disc or lower "
                       "learning_rate_gen", "d_collapsed")

    def phase1_out_of_range(self) -> Finding | None:
        if not self._full("loss_d_total", "loss_d_real", "loss_d_fake"):
            return None
        d, real, fake = (_mean(self.hist[k]) for k in ("loss_d_total", "loss_d_real", "loss_d_fake"))
        lo, hi = P1_D_TOTAL
        out, why = [], []
        if not lo <= d <= hi:
            out.append(f"mean D_tot {d:.3f} outside [{lo}, {hi}]")
            why.append("D barely tells real from fake yet" if d > hi else "D is getting ahead of G")
        for name, v in (("D_real", real), ("D_fake", fake)):
            if v >= P1_D_TERM:
                out.append(f"mean {name} {v:.3f} >= {P1_D_TERM}")
        if real >= P1_D_TERM or fake >= P1_D_TERM:
            why.append("D is not yet confident on " + " and ".join(
                n for n, v in (("real", real), ("fake", fake)) if v >= P1_D_TERM) + " clips")
        if not out:
            return None
        return Finding("phase1_ranges", "discriminator outside the guide's Phase-1 health ranges", ", ".join(out),
                       "; ".join(why),
                       "expected early on; if it persists, follow the advice for D guessing (D_tot high) or D too "
                       "strong (D_tot low), and let the Q-controllers adapt the learning rates")

    def noise_output(self, metrics: Mapping[str, Any]) -> Finding | None:
        if not self._full("loss_recon"):
            return None
        rec = list(self.hist["loss_recon"])
        half = len(rec) // 2
        first, second = _mean(rec[:half]), _mean(rec[-half:])
        if second < first * (1 - RECON_PROGRESS):
            return None  # reconstruction is improving
        psnr, gap, ratio = (metrics.get(k) for k in ("avg_val_psnr", "color_mean_gap", "color_std_ratio"))
        bad = []
        if _finite(psnr) and psnr < NOISE_PSNR:
            bad.append(f"val PSNR {psnr:.1f} dB < {NOISE_PSNR:g}")
        if _finite(gap) and gap > COLOUR_MEAN_GAP:
            bad.append(f"a colour channel's mean off by {gap:.2f} of the range (> {COLOUR_MEAN_GAP})")
        if _finite(ratio) and ratio < COLOUR_STD_RATIO:
            bad.append(f"a channel's spread {ratio:.2f}x the data's (< {COLOUR_STD_RATIO})")
        if not bad:
            return None
        lam = self.lambda_kl
        values = f"train Rec {first:.4f} -> {second:.4f} over {self.window} logs; " + "; ".join(bad)
        if lam is None or lam > 1e-4:
            diagnosis = f"lambda_kl{'' if lam is None else f' {lam:g}'} is too high (the guide's primary suspect)"
            action = "reduce lambda_kl drastically, to 1e-4 or 1e-5, as in Phase 1"
        else:
            diagnosis = (f"lambda_kl {lam:g} is already low: the guide's secondary suspect is the input to the "
                         "generator's final tanh")
            action = "inspect the generator's pre-tanh activations (hooks); try lambda_kl 1e-5"
        return Finding("noise_output", "output stuck at noise / colour casts, reconstruction not improving", values,
                       diagnosis, action, "lambda_kl")

    # ---- streams -----------------------------------------------------------------------------------------------------
    def observe_log(self, values: Mapping[str, Any]) -> list[Finding]:
        """One logged interval (the trainer's `train/...` values). -> the rules that fire now."""
        for k in LOG_KEYS:
            v = values.get(f"train/{k}")
            if _finite(v):  # a non-finite step is the rollback's business
                self.hist[k].append(float(v))
        lam = values.get("train/lambda_kl")
        self.lambda_kl = float(lam) if _finite(lam) else self.lambda_kl
        self.n_logs += 1
        checks: list[tuple[str, Callable[[], Finding | None]]] = []
        if self.gan_rules:
            checks += [("d_guessing", self.d_guessing), ("d_too_strong", self.d_too_strong),
                       ("d_collapsed", self.d_collapsed)]
            if self.phase1_ranges:
                checks.append(("phase1_ranges", self.phase1_out_of_range))
        return self._fire((rule, check()) for rule, check in checks)

    def observe_val(self, metrics: Mapping[str, Any]) -> list[Finding]:
        """One validation's metrics. -> the rules that fire now."""
        return self._fire([("noise_output", self.noise_output(metrics))])

    def _fire(self, checked) -> list[Finding]:
        out = []
        for rule, finding in checked:
            if finding is None:
                self.active.discard(rule)
                continue
            due = rule not in self.active or self.n_logs - self.last_fired.get(rule, -self.window) >= self.window
            self.active.add(rule)
            if due:
                self.last_fired[rule] = self.n_logs
                self.counts[rule] = self.counts.get(rule, 0) + 1
                out.append(finding)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"hist": {k: list(h) for k, h in self.hist.items()}, "lambda_kl": self.lambda_kl,
                "n_logs": self.n_logs, "active": sorted(self.active), "last_fired": dict(self.last_fired),
                "counts": dict(self.counts)}

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        for k, h in self.hist.items():
            h.clear()
            h.extend(float(x) for x in sd.get("hist", {}).get(k, ()))
        self.lambda_kl = sd.get("lambda_kl")
        self.n_logs = int(sd.get("n_logs", 0))
        self.active = set(sd.get("active", ()))
        self.last_fired = {k: int(v) for k, v in sd.get("last_fired", {}).items()}
        self.counts = {k: int(v) for k, v in sd.get("counts", {}).items()}


@dataclass
class Remedies:
    """What --auto_remedy changed: factors on the learning rates, a temporary factor on lambda_gan (until a step)."""

    lr_g: float = 1.0
    lr_d: float = 1.0
    gan: float = 1.0
    gan_until: int = -1
    applied: int = 0

    def state_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        for k, v in sd.items():
            if hasattr(self, k):
                setattr(self, k, type(getattr(self, k))(v))


def _bounded(x: float) -> float:
    return min(max(x, LR_FACTOR_RANGE[0]), LR_FACTOR_RANGE[1])


class Health:
    """The monitor in a run: feeds it the trainer's logged values and validations, reports what fires (console and
    every tracker) and, with --auto_remedy, applies the guide's action. `reapply_lrs` is the trainer's: it sets both
    optimizers' learning rates from the Q-controller's scales and `lr_factors()`."""

    def __init__(self, cfg: Any, players: Any, state: Any, tracker: Any, log: Callable[[str], Any],
                 reapply_lrs: Callable[[], None]):
        t = cfg.train
        self.on, self.auto = t.health_checks, t.auto_remedy
        self.players, self.state, self.tracker, self.log, self.reapply_lrs = players, state, tracker, log, reapply_lrs
        self.monitor = HealthMonitor(t.health_window, t.health_phase1_ranges, t.gan_loss)
        self.remedies = Remedies()
        self.remedy_steps = t.health_remedy_steps or t.health_window * cfg.log.log_interval
        if state.health:  # a resumed run: the windows, the firing clock and the remedies in effect
            self.load_state_dict(state.health)

    def lr_factors(self) -> tuple[float, float]:
        return self.remedies.lr_g, self.remedies.lr_d

    def observe_log(self, values: Mapping[str, Any], step: int) -> None:
        if self.on:
            self._expire(step)
            self._react(self.monitor.observe_log(values), step)

    def observe_val(self, metrics: Mapping[str, Any], step: int) -> None:
        if self.on:
            self._react(self.monitor.observe_val(metrics), step)

    def rolled_back(self, consecutive: int, bad_step: int) -> None:
        """The trainer's rollback after non-finite steps (T2), reported as the other findings."""
        s = self.state
        f = Finding("nonfinite", f"{consecutive} consecutive non-finite steps at step {bad_step}",
                    f"rollbacks {s.rollbacks}, learning-rate factor {s.lr_factor:g}", "the losses diverged",
                    "lower both base learning rates, narrow lr_scale_options, keep global_max_grad_norm in 1.0-5.0, "
                    "and run once with --detect_anomaly to find the operation")
        self._emit(f, s.step, f"rolled back to step {s.step}, learning rates halved (factor {s.lr_factor:g})")
        self.monitor.counts["nonfinite"] = self.monitor.counts.get("nonfinite", 0) + 1

    def _react(self, findings: list[Finding], step: int) -> None:
        for f in findings:
            done = ""
            if self.auto and f.remedy:
                done, lrs = self._apply(f.remedy, step)
                if lrs:  # at once: a second finding of the same log reads the learning rates this one set
                    self.reapply_lrs()
            self._emit(f, step, done)

    def _emit(self, f: Finding, step: int, done: str) -> None:
        text = f.line()
        if done:
            text += f" {'Done' if f.rule == 'nonfinite' else 'Auto-remedy'}: {done}."
        elif self.auto and f.remedy:
            text += " Auto-remedy: nothing to change."
        elif f.remedy and f.rule != "nonfinite":
            text += f" (--auto_remedy would {REMEDY_HINT[f.remedy]}.)"
        self.log(f"health: step {step}: {text}")
        self.tracker.log_event(f"health/{f.rule}", text, step)

    def _lr(self, opt) -> float:
        return float(opt.param_groups[0]["lr"])

    def _apply(self, remedy: str, step: int) -> tuple[str, bool]:
        """The guide's action for a finding. -> (what was done, for the log line; whether learning rates changed)."""
        p, s, r = self.players, self.state, self.remedies
        r.applied += 1
        if remedy == "lambda_kl":
            lam = s.lambda_kl
            new = 1e-4 if lam > 1e-4 else 1e-5 if lam > 1e-5 else None
            if new is None:
                return "", False
            s.lambda_kl = p.q_lkl.rebase(new) if p.q_lkl is not None else new
            return f"lambda_kl {lam:g} -> {s.lambda_kl:g}", False
        lr_g, lr_d = self._lr(p.opt_g), self._lr(p.opt_d)
        if remedy == "cap_lr_d":
            if lr_d <= 1e-4 * (1 + 1e-9):
                return "", False
            old = r.lr_d
            r.lr_d = _bounded(old * 1e-4 / lr_d)
            return f"D's learning rate {lr_d:g} -> {lr_d * r.lr_d / old:g}", True
        if remedy == "d_strong":
            old = r.lr_d
            r.lr_d = _bounded(old * 0.5)
            r.gan, r.gan_until = 0.5, step + self.remedy_steps
            p.loss.gan_scale.fill_(r.gan)
            return (f"D's learning rate {lr_d:g} -> {lr_d * r.lr_d / old:g}, lambda_gan x0.5 until step "
                    f"{r.gan_until}"), True
        if remedy == "d_collapsed":
            old_g, old_d = r.lr_g, r.lr_d
            r.lr_d, r.lr_g = _bounded(old_d * 2.0), _bounded(old_g * 0.5)
            return (f"D's learning rate {lr_d:g} -> {lr_d * r.lr_d / old_d:g}, G's {lr_g:g} -> "
                    f"{lr_g * r.lr_g / old_g:g}"), True
        raise ValueError(f"unknown remedy {remedy!r}")

    def _expire(self, step: int) -> None:
        r = self.remedies
        if r.gan < 1.0 and step >= r.gan_until:
            r.gan = 1.0
            self.players.loss.gan_scale.fill_(1.0)
            self.log(f"health: step {step}: lambda_gan back to its full weight (the temporary remedy ended)")

    def summary(self) -> dict[str, Any]:
        """For summary.json: how often each rule fired, which held at the end, the remedies in effect."""
        m = self.monitor
        return {"fired": dict(m.counts), "active": sorted(m.active), "window_full": m._full(*LOG_KEYS),
                "remedies": self.remedies.state_dict() if self.auto else None}

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor.state_dict(), "remedies": self.remedies.state_dict()}

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        self.monitor.load_state_dict(sd.get("monitor", {}))
        self.remedies.load_state_dict(sd.get("remedies", {}))
        self.players.loss.gan_scale.fill_(self.remedies.gan)
