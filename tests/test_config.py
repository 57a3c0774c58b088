"""The typed config: the original's flag names, presets, TOML, precedence and one-line errors."""
import argparse
from typing import get_args, get_origin

import pytest

from wubugen.config import (
    PRESETS, Config, ConfigError, add_config_arguments, build_config, config_from_args, config_from_dict, flag_table,
)

# the original script's flags that still mean something (all of them but the two the original overwrote, which now mean what they say)
ORIGINAL_FLAGS = """video_data_path local_rank epochs batch_size image_h image_w num_channels num_input_frames
num_predict_frames frame_skip seed num_workers checkpoint_dir load_checkpoint load_strict wandb wandb_project wandb_run_name
log_interval save_interval gaad_num_regions gaad_decomposition_type gaad_min_size_px use_wubu_motion_branch
gaad_motion_num_regions gaad_motion_decomposition_type optical_flow_net_type freeze_flow_net flow_stats_components latent_dim
encoder_use_roi_align encoder_shallow_cnn_channels encoder_roi_align_output_h encoder_roi_align_output_w
encoder_pixel_patch_size encoder_initial_tangent_dim gen_temporal_kernel_size gen_final_conv_kernel_spatial
discriminator_type disc_apply_spectral_norm disc_base_disc_channels disc_max_disc_channels disc_temporal_kernel_size
disc_min_hidden_fc_dim disc_max_hidden_fc_dim disc_use_gaad_film_condition disc_gaad_condition_dim_disc disc_patch_size
disc_cnn_channels_2d wubu_dropout wubu_s_num_levels wubu_s_hyperbolic_dims wubu_s_initial_curvatures wubu_s_use_rotation
wubu_s_phi_influence_curvature wubu_s_phi_influence_rotation_init wubu_m_num_levels wubu_m_hyperbolic_dims
wubu_m_initial_curvatures wubu_m_use_rotation wubu_m_phi_influence_curvature wubu_m_phi_influence_rotation_init
wubu_t_num_levels wubu_t_hyperbolic_dims wubu_t_initial_curvatures wubu_t_use_rotation wubu_t_phi_influence_curvature
wubu_t_phi_influence_rotation_init wubu_s_output_dim wubu_m_output_dim lambda_recon lambda_kl lambda_gan learning_rate_gen
learning_rate_disc risgd_max_grad_norm global_max_grad_norm q_controller_enabled grad_accum_steps use_amp detect_anomaly
log_grad_norm lambda_kl_update_interval min_lambda_kl_q_control max_lambda_kl_q_control wandb_log_train_recon_interval
wandb_log_fixed_noise_samples_interval use_lpips_for_verification validation_video_path validation_split_fraction
val_block_size val_primary_metric num_val_samples_to_log demo_num_samples""".split()


def parse(argv):
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    return config_from_args(p.parse_args(argv))


def test_every_original_flag_keeps_its_name():
    table = flag_table()
    missing = [f for f in ORIGINAL_FLAGS if f not in table]
    assert missing == []


def test_launcher_style_command_line():
    cfg = parse("--image_h 256 --image_w 256 --num_input_frames 10 --num_predict_frames 3 --latent_dim 512 "
                "--gaad_num_regions 24 --wubu_s_hyperbolic_dims 128 64 --wubu_s_initial_curvatures 1.0 0.7 "
                "--disc_use_gaad_film_condition --lambda_kl 0.0001 --q_controller_enabled --disc_apply_spectral_norm "
                "--flow_stats_components mag_mean angle_mean --load_strict".split())
    assert cfg.data.image_h == 256 and cfg.data.num_input_frames == 10
    assert cfg.model.wubu_s.hyperbolic_dims == [128, 64] and cfg.model.wubu_s.initial_curvatures == [1.0, 0.7]
    assert cfg.model.disc_use_gaad_film_condition is True and cfg.train.lambda_kl == 1e-4
    assert cfg.train.load_strict is True


def test_bool_flag_forms():
    assert parse(["--disc_use_gaad_film_condition", "false"]).model.disc_use_gaad_film_condition is False
    assert parse(["--disc_use_gaad_film_condition=true"]).model.disc_use_gaad_film_condition is True
    assert parse(["--no-disc_apply_spectral_norm"]).model.disc_apply_spectral_norm is False


def test_presets_load_and_precedence(tmp_path):
    for name in PRESETS:
        assert isinstance(build_config(name), Config)
    launcher = build_config("launcher")
    assert (launcher.data.image_h, launcher.model.latent_dim, launcher.model.gaad_num_regions) == (256, 512, 24)
    assert launcher.model.wubu_t.hyperbolic_dims == [256, 128]
    toml = tmp_path / "run.toml"
    toml.write_text('lambda_kl = 0.01\n[data]\nimage_h = 128\n[model.wubu_s]\nnum_levels = 1\nhyperbolic_dims = [40]\n'
                    'initial_curvatures = [0.9]\n')
    cfg = build_config("launcher", str(toml), {"image_w": "96"})
    assert cfg.data.image_h == 128 and cfg.data.image_w == 96 and cfg.model.latent_dim == 512
    assert cfg.model.wubu_s.hyperbolic_dims == [40] and cfg.train.lambda_kl == 0.01


def test_toml_round_trip():
    cfg = build_config("launcher", overrides={"load_checkpoint": None, "lambda_kl": 0.003})
    again = config_from_dict(cfg.to_dict())
    assert again == cfg


def test_single_values_broadcast_like_the_original():
    cfg = build_config(overrides={"wubu_t_num_levels": 3, "wubu_t_hyperbolic_dims": "64", "wubu_t_initial_curvatures": "0.5"})
    assert cfg.model.wubu_t.hyperbolic_dims == [64, 64, 64]


@pytest.mark.parametrize("overrides,needle", [
    ({"image_h": "abc"}, "--image_h"),
    ({"resize": "zoom"}, "--resize must be one of"),
    ({"wubu_s_num_levels": 3, "wubu_s_hyperbolic_dims": "8 8"}, "--wubu_s_hyperbolic_dims has 2 values"),
    ({"flow_stats_components": "speed"}, "--flow_stats_components"),
    ({"batch_size": 0}, "--batch_size must be positive"),
    ({"latent_downsample": 3}, "power of two"),
    ({"bogus_option": 1}, "unknown option"),
    ({"resume": "a", "load_checkpoint": "b"}, "give one of them"),
    ({"disc_use_gaad_film_condition": "maybe"}, "true or false"),
])
def test_bad_values_are_one_line_errors(overrides, needle):
    with pytest.raises(ConfigError) as e:
        build_config(overrides=overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_bad_config_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("image_h = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        build_config(config_file=str(bad))
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(config_file=str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="unknown preset"):
        build_config("huge")


def test_compile_mode_is_checked_and_reaches_torch_compile(monkeypatch):
    import torch

    from wubugen.config import ConfigError
    from wubugen.train.speed import compile_player

    with pytest.raises(ConfigError, match="compile_mode"):
        build_config("tiny", overrides={"compile_mode": "reduce-overhead"})  # torch's CUDA graphs would clash with ours
    cfg = build_config("tiny", overrides={"compile_mode": "max-autotune-no-cudagraphs"})
    seen = {}
    monkeypatch.setattr(torch, "compile", lambda module, **kw: seen.update(kw) or module)
    compile_player(torch.nn.Linear(2, 2), cfg.train.compile_mode)
    assert seen == {"mode": "max-autotune-no-cudagraphs", "dynamic": False}


# ---- the schema's metadata: descriptions, groups, ranges -------------------------------------------------------------
def test_every_option_carries_its_description_group_and_a_valid_range():
    from wubugen.config import GROUPS, options

    for o in options():
        assert o.help and "{stack}" not in o.help and o.group in GROUPS, o.name
        assert o.default is None or o.range is None or all(
            v in o.range for v in (o.default if isinstance(o.default, tuple) else [o.default])), o.name
    guides = [o.guide for o in options() if o.guide]
    assert len(guides) == len(set(guides)) == 15  # + NPROC_PER_NODE, which is torchrun's: the guide's 16


def _outside(o):
    """A value just outside the option's range, of its type (a list: every element)."""
    from wubugen.config.loading import base_type

    r = o.range
    if r.allowed:
        bad = max(r.allowed) + 1
    elif r.lo is not None:
        bad = r.lo - 1 if r.lo_closed else r.lo
    else:
        bad = r.hi + 1 if r.hi_closed else r.hi
    inner, _ = base_type(o.type)
    if get_origin(inner) is list:
        (inner,) = get_args(inner)
    return [inner(bad)] * max(1, len(o.default)) if isinstance(o.default, tuple) else inner(bad)


def _ranged():
    from wubugen.config import options

    return [o for o in options() if o.range is not None]


@pytest.mark.parametrize("option", _ranged(), ids=lambda o: o.name)
def test_every_range_is_checked_with_a_one_line_error_naming_the_option(option):
    with pytest.raises(ConfigError) as e:
        build_config(overrides={option.name: _outside(option)})
    assert f"--{option.name}" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("overrides,needle", [
    ({"learning_rate_gen": "nan"}, "--learning_rate_gen must be a finite number, not nan"),
    ({"learning_rate_disc": float("inf")}, "--learning_rate_disc must be a finite number, not inf"),
    ({"lambda_kl": "inf"}, "--lambda_kl must be a finite number"),
    ({"global_max_grad_norm": "-inf"}, "--global_max_grad_norm must be a finite number"),  # no range, still finite
    ({"adam_betas": "0.9 nan"}, "--adam_betas values must be finite numbers"),
    ({"wubu_dropout": 1.0}, "--wubu_dropout must be in [0, 1), not 1"),
    ({"num_channels": 2}, "--num_channels must be 1 or 3, not 2"),
    ({"q_control_interval": 0}, "--q_control_interval must be positive, not 0"),
    ({"epochs": -1}, "--epochs must be >= 0, not -1"),
])
def test_non_finite_and_out_of_range_values_are_refused_up_front(overrides, needle):
    with pytest.raises(ConfigError) as e:
        build_config("tiny", overrides=overrides)
    assert needle in str(e.value)


def test_non_finite_values_from_toml_and_flags(tmp_path, capsys):
    from wubugen.cli import main

    toml = tmp_path / "run.toml"
    toml.write_text("[train]\nlambda_gan = nan\n")
    with pytest.raises(ConfigError, match="--lambda_gan must be a finite number"):
        build_config(config_file=str(toml))
    assert main(["inspect", "--preset", "tiny", "--learning_rate_gen", "nan"]) == 2  # before any model is built
    err = capsys.readouterr().err.strip()
    assert err == "wubugen: error: --learning_rate_gen must be a finite number, not nan"
