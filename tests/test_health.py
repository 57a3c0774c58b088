"""The health monitor (train/health.py): every rule of the guide's §6 driven by synthetic metric streams, both ways (it
fires on the symptom and stays quiet on a healthy stream), its firing clock, its state across a resume, and the
--auto_remedy actions on a stand-in for the trainer's players."""
from types import SimpleNamespace

import pytest
import torch

from wubugen.config import build_config
from wubugen.train.health import Health, HealthMonitor

W = 4  # a short window keeps the streams readable


def healthy(**over):
    """One logged interval in the guide's Phase-1 ranges: D_tot 0.5, D_real/D_fake 0.45, Adv 0.9, Rec falling."""
    v = {"train/loss_d_total": 0.5, "train/loss_d_real": 0.45, "train/loss_d_fake": 0.45, "train/loss_g_adv": 0.9,
         "train/loss_recon": 0.2, "train/lambda_kl": 1e-4}
    v.update({f"train/{k}" if k == "lambda_kl" else f"train/loss_{k}": x for k, x in over.items()})
    return v


def feed(mon, n, **over):
    """n identical logs; -> the rules fired at each, in order."""
    return [[f.rule for f in mon.observe_log(healthy(**over))] for _ in range(n)]


def fired(mon, n, **over):
    return {r for rules in feed(mon, n, **over) for r in rules}


# ---- the GAN rules ---------------------------------------------------------------------------------------------------
def test_healthy_stream_is_quiet():
    mon = HealthMonitor(W)
    assert fired(mon, 3 * W) == set()
    assert mon.counts == {} and mon.active == set()


def test_d_guessing_fires_near_ln2_and_not_elsewhere():
    mon = HealthMonitor(W, phase1_ranges=False)
    per_log = feed(mon, W, d_total=0.693)
    assert per_log[:-1] == [[]] * (W - 1)  # nothing before the window is full
    assert per_log[-1] == ["d_guessing"]
    f = HealthMonitor(W, phase1_ranges=False)
    for _ in range(W - 1):
        f.observe_log(healthy(d_total=0.69))
    (finding,) = f.observe_log(healthy(d_total=0.69))
    assert "ln 2" in finding.symptom and "0.690" in finding.values and "poor fakes" in finding.diagnosis
    assert "1e-4" in finding.action and finding.remedy == "cap_lr_d"
    for d in (0.5, 0.62, 0.75):  # outside the band [0.66, 0.72]
        assert "d_guessing" not in fired(HealthMonitor(W, phase1_ranges=False), 2 * W, d_total=d)


def test_d_too_strong_needs_both_d_near_zero_and_adv_high():
    assert fired(HealthMonitor(W), W, d_total=0.01, g_adv=3.0) >= {"d_too_strong"}
    mon = HealthMonitor(W)
    found = [f for _ in range(W) for f in mon.observe_log(healthy(d_total=0.01, g_adv=3.0))]
    (f,) = [f for f in found if f.rule == "d_too_strong"]
    assert "max D_tot 0.010" in f.values and "mean Adv 3.00" in f.values and f.remedy == "d_strong"
    assert "lambda_gan" in f.action
    assert "d_too_strong" not in fired(HealthMonitor(W), 2 * W, d_total=0.01, g_adv=1.0)  # Adv not high
    assert "d_too_strong" not in fired(HealthMonitor(W), 2 * W, d_total=0.2, g_adv=3.0)  # D not near 0
    mon = HealthMonitor(W)  # one log of D above 0.05 in the window is enough to keep it quiet (the max is read)
    stream = [0.01, 0.01, 0.3, 0.01, 0.01]
    assert not any("d_too_strong" in [f.rule for f in mon.observe_log(healthy(d_total=d, g_adv=3.0))]
                   for d in stream)


def test_d_collapsed_fires_when_adv_stays_near_zero():
    mon = HealthMonitor(W)
    per_log = feed(mon, W, g_adv=0.01)
    assert "d_collapsed" in per_log[-1] and all("d_collapsed" not in p for p in per_log[:-1])
    assert "d_collapsed" not in fired(HealthMonitor(W), 2 * W, g_adv=0.3)
    mon = HealthMonitor(W)  # a single higher log in the window keeps it quiet
    rules = [f.rule for a in (0.01, 0.01, 0.5, 0.01) for f in mon.observe_log(healthy(g_adv=a))]
    assert "d_collapsed" not in rules


@pytest.mark.parametrize("over,needle", [
    ({"d_total": 0.8}, "outside [0.3, 0.65]"),
    ({"d_total": 0.2}, "outside [0.3, 0.65]"),
    ({"d_real": 0.75}, "mean D_real 0.750 >= 0.7"),
    ({"d_fake": 0.9}, "mean D_fake 0.900 >= 0.7"),
])
def test_phase1_ranges_fire_outside_the_guides_ranges(over, needle):
    mon = HealthMonitor(W, phase1_ranges=True)
    found = [f for _ in range(W) for f in mon.observe_log(healthy(**over)) if f.rule == "phase1_ranges"]
    assert len(found) == 1 and needle in found[0].values and found[0].remedy is None  # advice only


def test_phase1_ranges_quiet_inside_them_and_when_off():
    assert "phase1_ranges" not in fired(HealthMonitor(W, phase1_ranges=True), 2 * W, d_total=0.35, d_real=0.65,
                                        d_fake=0.3)
    assert "phase1_ranges" not in fired(HealthMonitor(W, phase1_ranges=False), 2 * W, d_total=0.9, d_real=0.9)


def test_gan_rules_are_off_for_other_gan_losses():
    mon = HealthMonitor(W, gan_kind="hinge")
    assert fired(mon, 2 * W, d_total=0.69) == set()
    assert fired(mon, 2 * W, d_total=0.01, g_adv=3.0) == set()
    assert fired(mon, 2 * W, g_adv=0.0) == set()


# ---- the noise / colour-cast rule ------------------------------------------------------------------------------------
def _stuck(mon, rec=0.5, lam=0.1):
    for _ in range(W):
        mon.observe_log(healthy(recon=rec, lambda_kl=lam))


def test_noise_output_fires_on_stuck_reconstruction_and_low_psnr():
    mon = HealthMonitor(W)
    _stuck(mon)
    (f,) = mon.observe_val({"avg_val_psnr": 9.5, "color_mean_gap": 0.02, "color_std_ratio": 0.9})
    assert f.rule == "noise_output" and "val PSNR 9.5 dB < 12" in f.values
    assert "lambda_kl 0.1 is too high" in f.diagnosis and "1e-4" in f.action and f.remedy == "lambda_kl"


@pytest.mark.parametrize("metrics,needle", [
    ({"avg_val_psnr": 18.0, "color_mean_gap": 0.25, "color_std_ratio": 0.9}, "mean off by 0.25"),
    ({"avg_val_psnr": 18.0, "color_mean_gap": 0.02, "color_std_ratio": 0.3}, "spread 0.30x"),
])
def test_noise_output_fires_on_colour_casts(metrics, needle):
    mon = HealthMonitor(W)
    _stuck(mon)
    (f,) = mon.observe_val(metrics)
    assert needle in f.values


def test_noise_output_with_low_lambda_kl_names_the_secondary_suspect():
    mon = HealthMonitor(W)
    _stuck(mon, lam=1e-5)
    (f,) = mon.observe_val({"avg_val_psnr": 8.0})
    assert "already low" in f.diagnosis and "tanh" in f.diagnosis


def test_noise_output_quiet_when_improving_or_when_output_is_fine():
    mon = HealthMonitor(W)  # reconstruction improving: quiet even at low PSNR
    for rec in (0.8, 0.7, 0.5, 0.4):
        mon.observe_log(healthy(recon=rec, lambda_kl=0.1))
    assert mon.observe_val({"avg_val_psnr": 9.0, "color_mean_gap": 0.3}) == []
    mon = HealthMonitor(W)  # stuck, but the output is fine: quiet
    _stuck(mon)
    assert mon.observe_val({"avg_val_psnr": 19.0, "color_mean_gap": 0.02, "color_std_ratio": 0.9}) == []
    mon = HealthMonitor(W)  # before the window is full: quiet
    mon.observe_log(healthy(recon=0.5))
    assert mon.observe_val({"avg_val_psnr": 5.0}) == []


# ---- the firing clock ------------------------------------------------------------------------------------------------
def test_a_rule_fires_on_onset_then_once_per_window_while_it_holds_and_again_after_it_clears():
    mon = HealthMonitor(W, phase1_ranges=False)
    hits = [bool(r) for r in feed(mon, 3 * W, d_total=0.69)]
    # fires when the window first fills (log W), then every W logs while it holds
    assert [i + 1 for i, h in enumerate(hits) if h] == [W, 2 * W, 3 * W]
    assert "d_guessing" in mon.active and mon.counts["d_guessing"] == 3
    feed(mon, W, d_total=0.5)  # healthy again: the rule clears
    assert "d_guessing" not in mon.active
    assert [bool(r) for r in feed(mon, W, d_total=0.69)][-1]  # and fires anew on its next onset
    assert mon.counts["d_guessing"] == 4


def test_non_finite_logs_are_left_to_the_rollback():
    mon = HealthMonitor(W, phase1_ranges=False)
    feed(mon, W - 1, d_total=0.69)
    assert mon.observe_log(healthy(d_total=float("nan"))) == []  # not appended: the window is not full yet
    assert [f.rule for f in mon.observe_log(healthy(d_total=0.69))] == ["d_guessing"]


def test_monitor_state_round_trips():
    mon = HealthMonitor(W, phase1_ranges=False)
    feed(mon, W + 1, d_total=0.69)
    other = HealthMonitor(W, phase1_ranges=False)
    other.load_state_dict(mon.state_dict())
    # the resumed monitor is on the same clock: both fire (or not) on the same next logs
    assert feed(other, 2 * W, d_total=0.69) == feed(mon, 2 * W, d_total=0.69)


# ---- Health in a run: console line, tracker event, --auto_remedy -----------------------------------------------------
class Events:
    def __init__(self):
        self.events = []

    def log_event(self, key, text, step):
        self.events.append((key, text, step))


def _health(auto, lr_g=3e-4, lr_d=2e-4, lam=0.1, **opts):
    cfg = build_config("tiny", overrides={"auto_remedy": auto, "health_window": W, "health_phase1_ranges": False,
                                          "log_interval": 5, **opts})
    players = SimpleNamespace(opt_g=SimpleNamespace(param_groups=[{"lr": lr_g}]),
                              opt_d=SimpleNamespace(param_groups=[{"lr": lr_d}]),
                              loss=SimpleNamespace(gan_scale=torch.ones(())), q_lkl=None)
    state = SimpleNamespace(health=None, lambda_kl=lam, step=0, rollbacks=0, lr_factor=1.0)
    lines, tracker, reapplied = [], Events(), []

    def reapply():  # as the trainer's _apply_lrs: base LR x the remedy factors
        fg, fd = h.lr_factors()
        players.opt_g.param_groups[0]["lr"], players.opt_d.param_groups[0]["lr"] = lr_g * fg, lr_d * fd
        reapplied.append((fg, fd))

    h = Health(cfg, players, state, tracker, lines.append, reapply)
    return h, players, state, lines, tracker, reapplied


def _drive(h, n, start=0, **over):
    for i in range(n):
        h.observe_log(healthy(**over), start + (i + 1) * 5)
    return start + n * 5


def test_firing_is_one_console_line_and_a_health_event_in_the_tracker_without_remedy():
    h, players, _, lines, tracker, reapplied = _health(auto=False)
    _drive(h, W, d_total=0.01, g_adv=3.0)
    assert len(lines) == 1 and lines[0].startswith(f"health: step {W * 5}: D loss near 0")
    assert "Diagnosis: D has become too powerful" in lines[0] and "Action:" in lines[0]
    assert "--auto_remedy would halve D's learning rate" in lines[0]
    assert [(k, s) for k, _, s in tracker.events] == [("health/d_too_strong", W * 5)]
    assert tracker.events[0][1] in lines[0]
    assert reapplied == [] and players.opt_d.param_groups[0]["lr"] == 2e-4 and float(players.loss.gan_scale) == 1.0


def test_auto_remedy_d_too_strong_halves_lr_d_and_lambda_gan_for_a_while():
    h, players, _, lines, tracker, reapplied = _health(auto=True, health_remedy_steps=30)
    step = _drive(h, W, d_total=0.01, g_adv=3.0)
    assert reapplied == [(1.0, 0.5)] and players.opt_d.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert float(players.loss.gan_scale) == 0.5
    assert f"Auto-remedy: D's learning rate 0.0002 -> 0.0001, lambda_gan x0.5 until step {step + 30}" in lines[0]
    step = _drive(h, 5, start=step)  # healthy for 25 steps: still within the remedy
    assert float(players.loss.gan_scale) == 0.5
    _drive(h, 1, start=step)  # step + 5 >= until: lambda_gan returns to its full weight, and says so
    assert float(players.loss.gan_scale) == 1.0 and "lambda_gan back to its full weight" in lines[-1]
    assert h.summary()["remedies"]["lr_d"] == 0.5  # the LR factor stays (the Q-controller works on top of it)


def test_auto_remedy_d_collapsed_raises_d_and_lowers_g():
    h, players, *_ , reapplied = _health(auto=True)
    _drive(h, W, g_adv=0.0)
    assert reapplied == [(0.5, 2.0)]
    assert players.opt_g.param_groups[0]["lr"] == pytest.approx(1.5e-4)
    assert players.opt_d.param_groups[0]["lr"] == pytest.approx(4e-4)


def test_auto_remedy_factors_are_bounded():
    h, players, *_ , reapplied = _health(auto=True)
    step = 0
    for _ in range(6):  # six firings: 2**6 would be 64, the bound is 4
        step = _drive(h, W, start=step, g_adv=0.0)
    assert h.lr_factors() == (0.125, 4.0)


def test_auto_remedy_caps_d_lr_when_d_guesses_and_leaves_a_low_one():
    h, players, _, lines, _, reapplied = _health(auto=True, lr_d=4e-4)
    _drive(h, W, d_total=0.69)
    assert players.opt_d.param_groups[0]["lr"] == pytest.approx(1e-4) and "0.0004 -> 0.0001" in lines[0]
    h, players, _, lines, _, reapplied = _health(auto=True, lr_d=1e-4)
    _drive(h, W, d_total=0.69)
    assert reapplied == [] and "Auto-remedy: nothing to change" in lines[0]


def test_auto_remedy_lowers_lambda_kl_on_noise_output():
    h, _, state, lines, tracker, _ = _health(auto=True, lam=0.1)
    _drive(h, W, recon=0.5, lambda_kl=0.1)
    h.observe_val({"avg_val_psnr": 8.0}, 25)
    assert state.lambda_kl == 1e-4 and "Auto-remedy: lambda_kl 0.1 -> 0.0001" in lines[-1]
    assert tracker.events[-1][0] == "health/noise_output"


def test_health_checks_off_is_silent():
    h, _, _, lines, tracker, _ = _health(auto=True, health_checks=False)
    _drive(h, 3 * W, d_total=0.01, g_adv=3.0)
    assert lines == [] and tracker.events == []


def test_health_state_resumes_with_the_remedy_in_effect():
    h, players, state, *_ = _health(auto=True, health_remedy_steps=100)
    _drive(h, W, d_total=0.01, g_adv=3.0)
    state.health = h.state_dict()
    h2, players2, *_ = _health(auto=True, health_remedy_steps=100)
    h2.load_state_dict(state.health)
    assert h2.lr_factors() == (1.0, 0.5) and float(players2.loss.gan_scale) == 0.5
    assert h2.monitor.counts == {"d_too_strong": 1}
