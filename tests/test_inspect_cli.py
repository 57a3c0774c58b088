"""`wubugen inspect` end to end, and the CLI's error contract."""
from wubugen.cli import main


def test_inspect_tiny_reports_no_dead_parameter(capsys):
    assert main(["inspect", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "FLOPs per training clip" in out and "model.encoder.wubu_s" in out
    assert "every trainable parameter received a finite, non-zero gradient" in out


def test_inspect_flags_override_preset(capsys):
    assert main(["inspect", "--preset", "tiny", "--task", "predict", "--image_h", "24", "--image_w", "40"]) == 0
    assert "recon (2, 1, 3, 24, 40)" in capsys.readouterr().out


def test_inspect_exit_code_1_on_dead_parameter(capsys, monkeypatch):
    import wubugen.train.players as players

    real = players.build_model

    def with_dead(model_cfg, geometry):
        m = real(model_cfg, geometry)
        import torch

        m.register_parameter("unused", torch.nn.Parameter(torch.zeros(3)))
        return m

    monkeypatch.setattr(players, "build_model", with_dead)
    assert main(["inspect", "--preset", "tiny"]) == 1
    assert "model.unused: no gradient" in capsys.readouterr().out


def test_bad_option_is_one_line_and_exit_2(capsys):
    assert main(["inspect", "--preset", "tiny", "--gaad_num_regions", "-3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wubugen: error:") and "--gaad_num_regions" in err and "\n" not in err
