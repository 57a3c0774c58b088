"""Q-controllers: features and rewards against hand-computed values (the original's rules), the trend and metric-direction fixes, lambda_KL band
and cadence, checkpoints (weights_only), purity and non-finite handling."""
import copy
import io
import math
import random

import pytest
import torch

from wubugen.train import qcontrol as qc
from wubugen.train.qcontrol import LambdaKLController, LRMomentumController


def losses(**kw):
    base = dict(
        loss_g_total=1.0, loss_recon=0.1, loss_kl=50.0, loss_g_adv=0.8,
        loss_d_total=0.5, loss_d_real=0.4, loss_d_fake=0.45, lambda_kl=1e-3,
    )
    base.update(kw)
    return base


def interval(recon=0.1, kl=50.0, d=0.5):
    return {"loss_recon": recon, "loss_kl": kl, "loss_d_total": d}


def random_losses(rng):
    return losses(
        loss_g_total=rng.uniform(0.5, 3), loss_recon=rng.uniform(0.01, 0.3), loss_kl=rng.uniform(1, 300),
        loss_g_adv=rng.uniform(0.1, 2), loss_d_total=rng.uniform(0.1, 1), loss_d_real=rng.uniform(0.1, 1),
        loss_d_fake=rng.uniform(0.1, 1),
    )


def assert_plain(obj):
    """Only dict/list/str/int/float/bool/None, as a weights_only checkpoint wants."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, str), k
            assert_plain(v)
    elif isinstance(obj, list):
        for v in obj:
            assert_plain(v)
    else:
        assert obj is None or type(obj) in (str, int, float, bool), (type(obj), obj)


def weights_only_copy(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# ---------------------------------------------------------------------------------------------------------------------
# Trend bins and the fix of the trend's reference (the history before the new value)
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "history, current, expected",
    [
        ([1.0, 1.0, 1.0], 0.8, 0),  # rel = -0.2 / (1 + EPS)
        ([1.0, 1.0, 1.0], 0.9, 1),  # -0.1
        ([1.0, 1.0, 1.0], 1.01, 2),  # +0.01
        ([1.0, 1.0, 1.0], 0.99, 2),
        ([1.0, 1.0, 1.0], 1.1, 3),  # +0.1
        ([1.0, 1.0, 1.0], 1.2, 4),  # +0.19999
        ([2.0, 4.0], 3.6, 4),  # median 3 (mean of the middle two): rel = 0.6 / 3.00001 = 0.19999
        ([2.0, 4.0], 3.3, 3),  # rel = 0.09999
        ([0.001, 0.002, 0.003], 0.004, 4),  # median 0.002 < 0.01: denom max(0.004, 0.01001) + EPS; rel = 0.1996
        ([0.001, 0.002, 0.003], 0.0025, 3),  # rel = 0.0005 / 0.01002 = 0.0499
        ([0.001, 0.002, 0.003], 0.0021, 2),  # rel = 0.00998
        ([], 5.0, 2),  # no history
        ([float("nan")], 5.0, 2),  # no finite history
        ([1.0], float("nan"), 2),  # non-finite current
        ([1.0], None, 2),
        ([1.0, float("nan"), float("inf"), 1.0], 0.5, 0),  # non-finite history entries are ignored
    ],
)
def test_trend_bin(history, current, expected):
    assert qc.trend_bin(history, current) == expected


def test_trend_is_taken_before_appending():
    # D22: the original appended first, so the current value sat in its own median
    assert qc.trend_bin([1.0, 2.0], 2.0) == 4  # median 1.5: rel = 0.333
    assert qc.trend_bin([1.0, 2.0, 2.0], 2.0) == 2  # what the original computed (median 2)

    ctrl = LRMomentumController("gen", seed=0)
    bins = []
    for g in (1.0, 3.0, 3.0, 3.0):
        ctrl.decide(losses(loss_g_total=g), lr=3e-4, momentum=0.9)
        bins.append(ctrl.last_state[1])  # trend of g_total
    # history after each decision: [1]*5 (first value padded once), [1,1,1,1,3], [1,1,1,3,3]
    # 4th decision: median([1,1,1,3,3]) = 1 -> rising; the original (median of [1,1,3,3,3] = 3) said flat
    assert bins == [2, 4, 4, 4]
    assert list(ctrl._hist["loss_g_total"]) == [1.0, 1.0, 3.0, 3.0, 3.0]


def test_first_decision_appends_once():
    ctrl = LRMomentumController("disc", seed=0)
    ctrl.decide(losses(loss_d_total=0.7), lr=1e-4, momentum=0.9)
    assert list(ctrl._hist["loss_d_total"]) == [0.7] * 5  # one value, padded to full length
    ctrl.decide(losses(loss_d_total=0.6), lr=1e-4, momentum=0.9)
    assert list(ctrl._hist["loss_d_total"]) == [0.7] * 4 + [0.6]


def test_digitize_is_numpy_right_open():
    assert [qc.digitize(x, (0.3, 0.6, 1.0)) for x in (0.0, 0.3, 0.59, 0.6, 1.0, 7.0)] == [0, 1, 1, 2, 3, 3]


def test_state_features():
    hist = {k: [1.0] * 5 for k in qc.GEN_KEYS}
    s = qc.gen_state(losses(loss_recon=0.2, loss_kl=900.0, loss_g_adv=0.7), hist, 1e-3, 3e-4, 0.9, 2)
    # trends vs 1.0: g_total flat, d_total 0.5 (-50 %) -> 0, recon 0.2 -> 0
    # kl_problem: lambda*kl = 0.9 < 5*recon = 1.0; kl > 150 and recon > 0.15 but lambda 1e-3 <= 0.005 -> 0
    assert s == ("LRM_G", 2, 0, 0, 0, 2, 3, 1, 2)
    s = qc.gen_state(losses(loss_recon=0.2, loss_kl=1000.0), hist, 2e-3, 3e-5, None, 0)
    assert s[4] == 1 and s[6] == 1 and s[7] == qc.NO_MOMENTUM_BIN  # KL dominates; lr bin; Adam has no momentum
    s = qc.disc_state(losses(loss_d_total=0.7, loss_d_real=0.2, loss_d_fake=0.5, loss_g_adv=0.3), hist, 1e-4, 0.96, 1)
    assert s == ("LRM_D", 0, 2, 2, 3, 1, 2, 2, 1)  # d_total fell 30 % -> 0; fake/real = 2.5 -> 3
    assert qc.decode_state(qc.encode_state(s)) == s


# ---------------------------------------------------------------------------------------------------------------------
# Rewards, hand-computed
# ---------------------------------------------------------------------------------------------------------------------
def test_gen_reward():
    cur = dict(loss_g_total=1.0, loss_recon=0.11, loss_kl=200.0, loss_g_adv=0.8, loss_d_total=0.5)
    prev = dict(loss_g_total=1.2, loss_recon=0.12, loss_kl=150.0, loss_g_adv=1.0, loss_d_total=0.5)
    # recon: 2.5 tanh(0.01/0.13001 * (1 + log1p(1.8)))  = 0.387141
    # adv:   1.2 tanh(0.2/1.00001)                      = 0.236848
    # kl:    -0.3 min(1, 100/200)                       = -0.15
    # GAN balance (0.4 < 0.5 < 0.75):                   = +0.3
    # total: 0.1 tanh(0.2/1.20001)                      = 0.016514
    assert qc.gen_reward(cur, prev, 1e-3) == pytest.approx(0.790503461, abs=1e-8)
    assert qc.gen_reward({**cur, "loss_d_total": 0.3}, prev, 1e-3) == pytest.approx(0.790503461 - 0.3 - 0.45, abs=1e-8)
    # lambda too small for the kl term
    assert qc.gen_reward(cur, prev, 1e-4) == pytest.approx(0.790503461 + 0.15, abs=1e-8)


def test_disc_reward():
    prev = dict(loss_d_total=0.6)
    cur = dict(loss_d_total=0.5, loss_d_real=0.2, loss_d_fake=0.25, loss_g_adv=0.5, loss_g_total=1.0)
    # 1.5 + 0.7*(0.1/0.3) + 0.7*(0.05/0.3) + 0.1 tanh(0.1/0.60001)
    assert qc.disc_reward(cur, prev) == pytest.approx(1.866513771, abs=1e-8)
    cur = dict(loss_d_total=0.9, loss_d_real=0.5, loss_d_fake=0.25, loss_g_adv=0.2, loss_g_total=1.0)
    # -1.125 (D too weak), no fake bonus (adv <= 0.4), -0.3 (adv < 0.25), 0.1 tanh(-0.3/0.60001)
    assert qc.disc_reward(cur, prev) == pytest.approx(-1.471211060, abs=1e-8)


def test_sanitize_and_oscillation():
    raw = {"a": float("nan"), "b": 1000.0, "c": -600.0, "d": 1.0}
    clean, pen = qc.sanitize_losses(raw)
    assert clean == {"a": 100.0, "b": 500.0, "c": -500.0, "d": 1.0}
    assert pen == pytest.approx(-3.75 - 0.75 * 2.0 - 0.75 * 1.2)
    assert qc.oscillation_penalty([1, -1, 1, -1, 1]) == pytest.approx(-0.2)
    assert qc.oscillation_penalty([0.5, 1, -1, 1, -1, 1]) == pytest.approx(-0.2)  # only the last 5 count
    assert qc.oscillation_penalty([1, 0.01, -1, 1, 1]) == 0.0  # one flip: |0.01| <= 0.05 does not count
    assert qc.oscillation_penalty([1, -1, 1, -1]) == 0.0  # fewer than 5


def test_lr_mom_reward_uses_history_median_and_clips():
    cur = dict(loss_g_total=1.0, loss_recon=0.11, loss_kl=200.0, loss_g_adv=0.8, loss_d_total=0.5)
    hist = {"loss_g_total": [1.3, 1.2, 1.1], "loss_recon": [0.12], "loss_g_adv": [1.0, 0.9, 1.1], "loss_d_total": [0.5]}
    # medians of the histories are the references of test_gen_reward; oscillation: 4 flips -> -0.25 * 4/5
    r = qc.lr_mom_reward("gen", cur, hist, 1e-3, [1, -1, 1, -1, 1])
    assert r == pytest.approx(0.790503461 - 0.2, abs=1e-8)
    assert qc.lr_mom_reward("gen", {**cur, "loss_recon": float("nan")}, hist, 1e-3, []) == -2.0


def test_lambda_kl_reward():
    prev = dict(loss_recon=0.11, loss_kl=160.0, loss_d_total=0.55, val_metric=20.0, lambda_kl=1e-3)
    cur = dict(loss_recon=0.10, loss_kl=150.0, loss_d_total=0.5, val_metric=20.05, lambda_kl=1e-3)
    # 2 tanh(5*0.05) + 1.5 tanh(10*0.01) + 1.0 tanh(10/50)
    assert qc.lambda_kl_reward(cur, prev, higher_is_better=True) == pytest.approx(0.836714637, abs=1e-8)
    prev = dict(loss_recon=0.1, loss_kl=10.0, loss_d_total=0.5, val_metric=20.0, lambda_kl=1e-3)
    cur = dict(loss_recon=0.2, loss_kl=10.0, loss_d_total=0.8, val_metric=20.0, lambda_kl=1e-3)
    # recon rose by 0.1: f = 2 -> 1.5 tanh(-0.5); low kl with poor recon -0.5; |dD| = 0.3 -> -0.5*1.5
    assert qc.lambda_kl_reward(cur, prev, True) == pytest.approx(-1.943175736, abs=1e-8)
    flat = dict(loss_recon=0.2, loss_kl=50.0, loss_d_total=0.5, val_metric=20.0, lambda_kl=0.6)
    assert qc.lambda_kl_reward(flat, flat, True) == pytest.approx(-0.5)  # large lambda with poor recon
    assert qc.lambda_kl_reward({**flat, "val_metric": 30.0, "lambda_kl": 1e-3}, flat, True) == 2.0  # clipped


def test_lambda_kl_reward_respects_metric_direction():
    prev = dict(loss_recon=0.1, loss_kl=50.0, loss_d_total=0.5, val_metric=0.02, lambda_kl=1e-3)
    mse_fell = {**prev, "val_metric": 0.01}
    assert qc.lambda_kl_reward(mse_fell, prev, higher_is_better=False) == pytest.approx(2 * math.tanh(0.05))
    assert qc.lambda_kl_reward(mse_fell, prev, higher_is_better=True) < 0
    prev_psnr = {**prev, "val_metric": 20.0}
    psnr_fell = {**prev, "val_metric": 19.0}
    assert qc.lambda_kl_reward(psnr_fell, prev_psnr, higher_is_better=True) == pytest.approx(2 * math.tanh(-5.0))


def test_rewards_do_not_mutate_inputs():
    cur = losses(loss_recon=float("nan"), loss_g_total=1e4)
    hist = {"loss_recon": [0.1, 0.2], "loss_g_total": [1.0]}
    rh = [1.0, -1.0, 1.0, -1.0, 1.0]
    before = copy.deepcopy((cur, hist, rh))
    qc.sanitize_losses(cur)
    qc.lr_mom_reward("gen", cur, hist, 1e-3, rh)
    qc.gen_state(cur, hist, 1e-3, 3e-4, 0.9, 0)
    ctrl = LRMomentumController("gen", seed=0)
    ctrl.decide(cur, 3e-4, 0.9)
    ctrl.decide(cur, 3e-4, 0.9)
    assert repr((cur, hist, rh)) == repr(before)  # repr: NaN == NaN

    lk = LambdaKLController(1e-3, 4.0, 1e-6, 0.5, seed=0, higher_is_better=True)
    iv = interval(recon=float("inf"))
    iv_before = dict(iv)
    lk.decide(iv, 20.0)
    assert repr(iv) == repr(iv_before)


# ---------------------------------------------------------------------------------------------------------------------
# The LR/momentum controller
# ---------------------------------------------------------------------------------------------------------------------
def test_epsilon_decay_and_scales():
    ctrl = LRMomentumController("gen", seed=1)
    assert ctrl.info()["epsilon"] == 0.5
    for n in range(1, 3001):
        lr_s, mom_s = ctrl.decide(losses(), 3e-4, 0.9)
        assert lr_s in qc.LR_SCALE_OPTIONS and mom_s in qc.MOMENTUM_SCALE_OPTIONS
        if n in (1, 10, 1000, 3000):
            assert ctrl.info()["epsilon"] == pytest.approx(0.5 * 0.9995**n, rel=1e-9)
    info = ctrl.info()
    assert set(info) == {"lrscale", "momentumscale", "epsilon", "qtablesize", "avgreward"}
    assert all(type(v) is float for v in info.values())


def test_epsilon_floor():
    ctrl = LRMomentumController("disc", seed=1)
    for _ in range(4700):  # 0.5 * 0.9995^n reaches 0.05 at n = 4604
        ctrl.decide(losses(), 1e-4, 0.9)
    assert ctrl.info()["epsilon"] == 0.05


def test_adam_has_no_momentum_action():
    ctrl = LRMomentumController("disc", seed=2)
    rng = random.Random(0)
    for _ in range(200):
        lr_s, mom_s = ctrl.decide(random_losses(rng), 1e-4, None)
        assert mom_s == 1.0 and ctrl.info()["momentumscale"] == 1.0
    assert all(q == 0.0 for entry in ctrl._agent.q.values() for q in entry["momentum_scale"])  # never learned


def test_q_learning_follows_the_reward():
    # D always in the sweet spot (reward +1.5) whatever it does: the Q of chosen actions must climb towards r/(1-gamma)
    ctrl = LRMomentumController("disc", seed=3)
    for _ in range(500):
        ctrl.decide(losses(loss_d_total=0.5, loss_d_real=0.5, loss_d_fake=0.5), 1e-4, 0.9)
    qs = [q for entry in ctrl._agent.q.values() for q in entry["lr_scale"]]
    assert max(qs) > 0.5 and min(qs) >= 0.0
    assert ctrl.info()["avgreward"] == pytest.approx(1.5, abs=0.01)


def test_nonfinite_losses_are_penalised():
    ctrl = LRMomentumController("gen", seed=4)
    ctrl.decide(losses(), 3e-4, 0.9)
    for bad in (float("nan"), float("inf"), -float("inf")):
        ctrl.decide(losses(loss_recon=bad, loss_g_total=bad), 3e-4, 0.9)
        assert ctrl._agent.reward_hist[-1] == -2.0
    assert all(math.isfinite(v) for h in ctrl._hist.values() for v in h)  # not recorded in the histories
    ctrl.decide(losses(loss_d_total=1e6), 3e-4, 0.9)  # extreme but finite: no exception either


def test_missing_keys_raise():
    with pytest.raises(KeyError):
        LRMomentumController("gen", 0).decide({"loss_g_total": 1.0}, 3e-4, 0.9)
    gen_losses = losses()
    del gen_losses["lambda_kl"]
    with pytest.raises(KeyError):
        LRMomentumController("gen", 0).decide(gen_losses, 3e-4, 0.9)
    LRMomentumController("disc", 0).decide(gen_losses, 1e-4, 0.9)  # D does not need lambda_kl
    with pytest.raises(ValueError):
        LRMomentumController("enc", 0)


@pytest.mark.parametrize("role", ["gen", "disc"])
def test_lr_controller_state_dict_round_trip(role):
    rng = random.Random(5)
    ctrl = LRMomentumController(role, seed=5)
    for _ in range(300):
        ctrl.decide(random_losses(rng), 3e-4, 0.9)
    sd = ctrl.state_dict()
    assert_plain(sd)
    twin = LRMomentumController(role, seed=999)
    twin.load_state_dict(weights_only_copy(sd))
    assert twin.state_dict() == sd
    for _ in range(300):
        ls = random_losses(rng)
        assert twin.decide(ls, 3e-4, 0.9) == ctrl.decide(ls, 3e-4, 0.9)
    assert twin.state_dict() == ctrl.state_dict()
    with pytest.raises(ValueError):
        LRMomentumController("disc" if role == "gen" else "gen", 0).load_state_dict(sd)


def test_pruning_keeps_table_bounded(monkeypatch):
    monkeypatch.setattr(qc, "MAX_Q_TABLE_SIZE", 20)
    ctrl = LRMomentumController("gen", seed=6)
    rng = random.Random(6)
    for _ in range(400):
        ctrl.decide(random_losses(rng), rng.choice([1e-6, 2e-5, 1e-4, 1e-3]), rng.choice([0.8, 0.9, 0.99]))
        assert len(ctrl._agent.q) <= 20
        assert ctrl._agent.prev_state in ctrl._agent.q


# ---------------------------------------------------------------------------------------------------------------------
# The lambda_KL controller
# ---------------------------------------------------------------------------------------------------------------------
def test_lambda_kl_waits_for_validation_and_acts_once_per_result():
    lk = LambdaKLController(1e-3, 4.0, 1e-6, 0.5, seed=7, higher_is_better=True)
    for _ in range(50):
        assert lk.decide(interval(), None) == 1e-3  # before the first validation: inert
    assert lk.info()["epsilon"] == 0.5 and lk.info()["qtablesize"] == 0.0
    lk.decide(interval(), 20.0)
    assert lk._agent.clock == 1
    for _ in range(50):
        lk.decide(interval(), 20.0)  # the same validation result: no new decision
    assert lk._agent.clock == 1
    lk.decide(interval(), 20.5)
    assert lk._agent.clock == 2 and len(lk._agent.reward_hist) == 1
    assert lk.info()["epsilon"] == pytest.approx(0.5 * qc.LAMBDA_KL_EPSILON_DECAY**2)  # decays per decision only


def test_lambda_kl_pools_intervals_between_validations():
    lk = LambdaKLController(1e-3, 4.0, 1e-6, 0.5, seed=8, higher_is_better=False)
    lk.decide(interval(recon=0.2), 0.05)
    for r in (0.1, 0.2, float("nan"), 0.3):
        lk.decide(interval(recon=r), None)
    lk.decide(interval(recon=0.4), 0.04)
    assert lk._prev_metrics["loss_recon"] == pytest.approx((0.1 + 0.2 + 0.3 + 0.4) / 4)  # NaN interval left out
    # the NaN interval is penalised: -3.75 on top of the reward, clipped
    assert lk._agent.reward_hist[-1] == -2.0


@pytest.mark.parametrize(
    "base, band, lo, hi", [(1e-3, 4.0, 2.5e-4, 4e-3), (0.3, 4.0, 0.075, 0.5), (1e-6, 10.0, 1e-6, 1e-5)]
)
def test_lambda_kl_stays_in_band(base, band, lo, hi):
    lk = LambdaKLController(base, band, 1e-6, 0.5, seed=9, higher_is_better=True)
    rng = random.Random(9)
    seen = []
    for _ in range(10_000):  # a new validation result every call: 10,000 decisions
        lam = lk.decide(interval(rng.uniform(0, 0.3), rng.uniform(0, 300), rng.uniform(0, 1)), rng.uniform(10, 30))
        assert lo * (1 - 1e-12) <= lam <= hi * (1 + 1e-12)
        seen.append(lam)
    assert min(seen) <= base <= max(seen) and min(seen) < max(seen)  # it moves


@pytest.mark.parametrize("scale, edge", [(1.06, 4e-3), (0.94, 2.5e-4)])
def test_lambda_kl_saturates_at_band_edge(monkeypatch, scale, edge):
    settings = qc.QSettings(lambda_kl_scale_options=(scale,) * 5)  # every action pushes the same way
    lk = LambdaKLController(1e-3, 4.0, 1e-6, 0.5, seed=12, higher_is_better=True, settings=settings)
    for i in range(100):
        lam = lk.decide(interval(), 20.0 + i)
    assert lam == pytest.approx(edge)


def test_lambda_kl_band_validation():
    with pytest.raises(ValueError):
        LambdaKLController(0.0, 4.0, 1e-6, 0.5, 0, True)  # nothing to scale
    with pytest.raises(ValueError):
        LambdaKLController(1e-8, 4.0, 1e-6, 0.5, 0, True)  # below min
    with pytest.raises(ValueError):
        LambdaKLController(1.0, 4.0, 1e-6, 0.5, 0, True)  # above max
    with pytest.raises(ValueError):
        LambdaKLController(1e-3, 0.5, 1e-6, 0.5, 0, True)


def test_lambda_kl_state_dict_round_trip_and_new_phase():
    rng = random.Random(10)
    lk = LambdaKLController(1e-3, 4.0, 1e-6, 0.5, seed=10, higher_is_better=False)
    for i in range(400):
        iv = interval(rng.uniform(0, 0.3), rng.uniform(0, 300), rng.uniform(0, 1))
        lk.decide(iv, rng.uniform(0, 0.1) if i % 3 else None)
    lk.decide(interval(), None)  # a pending pool
    sd = lk.state_dict()
    assert_plain(sd)
    twin = LambdaKLController(1e-3, 4.0, 1e-6, 0.5, seed=0, higher_is_better=False)
    twin.load_state_dict(weights_only_copy(sd))
    assert twin.state_dict() == sd
    for i in range(200):
        iv, val = interval(rng.uniform(0, 0.3), rng.uniform(0, 300), rng.uniform(0, 1)), rng.uniform(0, 0.1)
        assert twin.decide(iv, val) == lk.decide(iv, val)
    assert twin.info() == lk.info()

    phase2 = LambdaKLController(1e-2, 4.0, 1e-6, 0.5, seed=0, higher_is_better=False)
    phase2.load_state_dict(weights_only_copy(lk.state_dict()))
    assert phase2.lambda_kl == 1e-2  # the new phase's value wins
    assert len(phase2._agent.q) == len(lk._agent.q) and phase2._agent.epsilon == lk._agent.epsilon
    lam = phase2.decide(interval(), 0.5)
    assert 2.5e-3 <= lam <= 4e-2
    assert len(phase2._agent.reward_hist) == len(lk._agent.reward_hist)  # no reward across the phase change


# ---- the guide's §6-7 settings as flags and TOML keys ----------------------------------------------------------------
def test_q_settings_from_flags_and_toml_reach_the_controllers(tmp_path):
    from wubugen.config import ConfigError, build_config
    from wubugen.train.players import q_settings

    cfg = build_config("tiny", overrides={"lr_scale_options": "0.5 2.0", "reward_weights": "g_recon_improvement=7",
                                          "q_epsilon_start": 0.9, "q_discount": 0.5})
    s = q_settings(cfg)
    assert s.lr_scale_options == (0.5, 2.0) and s.weights.g_recon_improvement == 7.0
    assert s.epsilon_start == 0.9 and s.gamma == 0.5 and s.weights.d_balance_target == qc.WEIGHTS.d_balance_target
    ctrl = LRMomentumController("gen", seed=3, settings=s)
    rng = random.Random(0)
    chosen = {ctrl.decide(random_losses(rng), 1e-4, None)[0] for _ in range(60)}
    assert chosen <= {0.5, 2.0} and len(chosen) == 2  # only the narrowed options, and both are explored

    toml = tmp_path / "c.toml"
    toml.write_text("[train]\nlr_scale_options = [0.9, 1.0, 1.1]\n"
                    "reward_weights = { g_recon_improvement = 3.0, d_balance_target = 1.5 }\n")
    s = q_settings(build_config("tiny", config_file=str(toml)))
    assert s.lr_scale_options == (0.9, 1.0, 1.1)
    assert (s.weights.g_recon_improvement, s.weights.d_balance_target) == (3.0, 1.5)
    with pytest.raises(ConfigError, match="g_recon_improvement"):
        q_settings(build_config("tiny", overrides={"reward_weights": "g_recon=3"}))
