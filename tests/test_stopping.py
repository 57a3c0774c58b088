"""The guide's "when to proceed" as stop rules (train/stopping.py): plateau, threshold, in the metric's direction."""
import math

from wubugen.train.stopping import StopRule


def test_inactive_rule_never_stops():
    rule = StopRule("avg_val_psnr")
    assert not rule.active and rule.describe() == "its length"
    assert rule.check([10.0, 10.0, 10.0, 10.0, 10.0]) is None


def test_plateau_stops_when_the_best_gains_less_than_min_delta_over_patience_validations():
    rule = StopRule("avg_val_psnr", patience=3, min_delta=0.2)
    assert rule.check([]) is None
    assert rule.check([12.0, 12.05, 12.1]) is None  # not patience + 1 values yet
    assert rule.check([12.0, 13.0, 14.0, 15.0]) is None  # improving
    end = rule.check([12.0, 14.0, 14.05, 14.1, 14.15])  # best 14.15 vs 14.0 three validations back: 0.15 < 0.2
    assert end["kind"] == "plateau" and "gained 0.15 dB (< 0.2) over the last 3 validations" in end["detail"]
    assert "best 14.15 dB" in end["detail"]
    assert rule.check([12.0, 14.0, 14.05, 14.1, 14.3]) is None  # 0.3 >= 0.2: still going


def test_plateau_counts_a_dip_as_no_gain():
    rule = StopRule("avg_val_psnr", patience=2, min_delta=0.1)
    assert rule.check([15.0, 14.0, 14.5])["kind"] == "plateau"  # the best is still the first


def test_plateau_for_a_lower_is_better_metric():
    rule = StopRule("avg_val_lpips", patience=2, min_delta=0.01)
    assert rule.check([0.5, 0.4, 0.3]) is None
    end = rule.check([0.5, 0.3, 0.299, 0.3])
    assert end["kind"] == "plateau" and "avg_val_lpips gained 0.001" in end["detail"]


def test_threshold_in_the_metrics_direction():
    psnr = StopRule("avg_val_psnr", threshold=20.0)
    assert psnr.check([18.0, 19.9]) is None
    end = psnr.check([18.0, 20.4])
    assert end["kind"] == "threshold" and end["detail"] == "avg_val_psnr 20.4 dB reached the threshold 20 dB"
    mse = StopRule("avg_val_recon_mse", threshold=0.01)
    assert mse.check([0.02]) is None and mse.check([0.009])["kind"] == "threshold"


def test_threshold_wins_over_plateau_and_both_are_described():
    rule = StopRule("avg_val_psnr", patience=1, min_delta=5.0, threshold=20.0)
    assert rule.check([21.0, 21.0])["kind"] == "threshold"
    assert rule.describe() == "a gain below 5 over 1 validations or avg_val_psnr reaching 20"


def test_unavailable_and_non_finite_values_are_left_out():
    rule = StopRule("avg_val_psnr", patience=2, min_delta=0.2)
    assert rule.check([None, math.nan, 10.0]) is None
    assert rule.check([10.0, None, 10.05, math.inf, 10.1])["kind"] == "plateau"  # 10.0, 10.05, 10.1


def test_from_config_reads_the_phase_options():
    from wubugen.config import build_config

    t = build_config("tiny", overrides={"stop_plateau_patience": 3, "stop_plateau_min_delta": 0.5,
                                        "stop_metric_threshold": 22.0, "val_primary_metric": "avg_val_ssim"}).train
    assert StopRule.from_config(t) == StopRule("avg_val_ssim", 3, 0.5, 22.0)
